"""SIGTERM at random moments (the run handles signals, grace period 10 s): the child stops
reading, drains what is in flight, writes a final checkpoint and exits well within the grace
period; a resume then finishes the run exactly once, re-processing nothing.

A moment is random in progress (a random target of committed sink records, as in
test_crash) plus a random 0-50 ms, so the signal falls mid-write, between commits, or in the
skip phase of a resume.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import pytest
from _faultkit import FULL, chain, record_figures

N = 1_000_000 if FULL else 200_000
SIGNALS = 20 if FULL else 10
PER_CHAIN = 5
GRACE = 10.0
SINKS = ["sqlite", "pg"]

pytestmark = pytest.mark.timeout(1800 if FULL else 300)


@pytest.mark.parametrize("sink", SINKS)
def test_sigterm_drains_checkpoints_and_resumes_exactly_once(tmp_path: Path, sink: str) -> None:
    total = sum(1 for i in range(N) if i % 100 != 13)
    delivered, chains, runs, figures, exits, replayed_after_term = 0, 0, 0, [], [], []
    for c in range(math.ceil(SIGNALS / PER_CHAIN) * 2):
        if delivered >= SIGNALS:
            break
        chains += 1
        # (a throttle of 4 ms every 1,000 records: a run of 200k lasts a second or more, so
        # that a quiet machine does not finish it between the target and the signal)
        config = {
            "every": 0.2,
            "handle_signals": True,
            "grace_period": GRACE,
            "pause": [1000, 0.004],
        }
        with chain(tmp_path / f"chain{c}", sink, N, name=f"term_{sink}", **config) as ch:
            want = min(PER_CHAIN, SIGNALS - delivered)
            targets = sorted(int(ch.rng.uniform(0.0, 0.9) * total) for _ in range(want))
            print(f"[faults] chain {c}: SIGTERM targets (committed sink records) {targets}")
            interrupted = False
            for j, target in enumerate(targets):
                child = ch.start(resume=None if j == 0 else True)
                assert ch.wait_started(child)
                while child.running() and ch.committed() < target:
                    time.sleep(0.003)
                time.sleep(ch.rng.uniform(0.0, 0.05))
                sent_at = time.monotonic()
                if not child.send(signal.SIGTERM):
                    child.wait()
                    break  # it finished first: the chain is complete
                child.proc.wait(timeout=GRACE + 20)
                took = time.monotonic() - sent_at
                child.wait()
                result = child.result
                if result is None or result["status"] == "completed":
                    # It had read everything already. The signal may even have come after
                    # the run's final checkpoint, once its handlers were removed: then it
                    # ends the process (before or after the child printed its result).
                    assert child.returncode in (0, -signal.SIGTERM), child.describe()
                    stored = ch.checkpoint()
                    assert stored is not None, child.describe()
                    assert stored["finished"], child.describe()
                    break
                assert child.returncode == 0, child.describe()
                delivered += 1
                exits.append(took)
                print(f"[faults]   SIGTERM {j}: exit after {took:.3f}s, {result['summary']!r}")
                assert took < GRACE, f"exit {took:.1f}s after SIGTERM (seed {ch.seed})"
                assert result["status"] == "interrupted", child.describe()
                cp = result["checkpoint"]
                assert cp is not None, child.describe()
                assert not cp["finished"], child.describe()
                # drained: everything read left the pipeline, the final checkpoint says so
                assert cp["position"] == cp["read"], cp
                assert cp["done"] == [], cp
                stored = ch.checkpoint()
                assert stored is not None
                assert stored["position"] == cp["position"], stored
                interrupted = True
            ch.resume_to_end()
            if interrupted:  # nothing a drained run read is processed again by a resume
                replayed_after_term.append(ch.replayed())
                assert ch.replayed() == 0, [c.result for c in ch.children]
            runs += len(ch.children)
            figures.append(ch.verify())
    assert delivered >= SIGNALS, f"only {delivered} of {SIGNALS} SIGTERMs landed mid-run"
    record_figures(
        f"sigterm/{sink}",
        trials=delivered,
        chains=chains,
        runs=runs,
        max_exit_seconds=round(max(exits), 3),
        grace_period=GRACE,
        I=sum(f["I"] for f in figures),
        S=sum(f["S"] for f in figures),
        Q=sum(f["Q"] for f in figures),
        duplicates=sum(f["duplicates"] + f["letter_duplicates"] for f in figures),
        missing=sum(f["missing"] for f in figures),
        replayed=sum(replayed_after_term),
    )


@pytest.mark.parametrize("sink", SINKS)
def test_sigterm_while_a_resume_skips_keeps_the_checkpoint(tmp_path: Path, sink: str) -> None:
    """A resume that re-reads a source which cannot seek first reads past what is done; a
    SIGTERM then must not write a final checkpoint *behind* the one it resumed (found by
    the test above: the checkpoint went back from position 96000 to 70000, where the
    skipping had got to, and the next resume wrote 25,740 rows a second time)."""
    n = 100_000
    config = {
        "every": 0.2,
        "handle_signals": True,
        "grace_period": GRACE,
        "source_pause": [5000, 0.02],  # reading past 50,000 records takes about 0.2 s
    }
    with chain(tmp_path, sink, n, name=f"skip_{sink}", **config) as ch:
        first = ch.start()
        assert ch.wait_started(first)
        while first.running() and ch.committed() < 0.5 * n:
            time.sleep(0.003)
        assert first.send(signal.SIGTERM)
        first.wait()
        assert first.result is not None
        assert first.result["status"] == "interrupted"
        before = first.result["checkpoint"]["position"]
        resume = ch.start(resume=True)
        assert ch.wait_started(resume)
        time.sleep(ch.rng.uniform(0.02, 0.1))  # still reading past the done records
        assert resume.send(signal.SIGTERM)
        resume.wait()
        result = resume.result
        assert resume.returncode == 0, resume.describe()
        assert result is not None, resume.describe()
        assert result["records_in"] == 0, "the signal came after the skip phase: retune"
        after = ch.checkpoint()
        assert after is not None
        print(
            f"[faults] checkpoint position before {before}, after the SIGTERM {after['position']}"
        )
        assert after["position"] >= before, (
            f"the checkpoint went back from {before} to {after['position']} (seed {ch.seed})"
        )
        ch.resume_to_end()
        f = ch.verify()
        record_figures(
            f"sigterm/during-resume-skip/{sink}",
            trials=1,
            runs=len(ch.children),
            position_before=before,
            position_after=after["position"],
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"] + f["letter_duplicates"],
            missing=f["missing"],
            replayed=ch.replayed(),
        )
