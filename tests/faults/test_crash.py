"""SIGKILL at random moments during a run into the SQLite and PostgreSQL sinks, then resume
to completion: every record ends up exactly once in the sink or the dead-letter queue.

A kill moment is chosen by progress: the parent polls the records the sink has committed
(the checkpoint the sink writes in the same transaction as its rows) until a random target
is passed, waits a random extra 0-40 ms (so the kill falls anywhere between two commits:
mid-write, mid-transaction, in the skip phase of a resume) and sends SIGKILL. A chain of
runs is killed several times, each resume picking up from the last checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from _faultkit import FULL, Chain, chain, record_figures

N = 1_000_000 if FULL else 200_000
KILLS = 20 if FULL else 10
PER_CHAIN = 5  # kill points in one run (each resume of it killed again)
EVERY = "5000r"
JITTER = 0.04
SINKS = ["sqlite", "pg"]

pytestmark = pytest.mark.timeout(1800 if FULL else 300)


def out_records(n: int) -> int:
    """Records the sink receives for ``n`` inputs (1% fail)."""
    return sum(1 for i in range(n) if i % 100 != 13)


def kill_at(ch: Chain, target: int, *, resume: bool | None) -> tuple[bool, int]:
    """Start a run, SIGKILL it once ``target`` sink records are committed (plus jitter);
    returns whether it was killed and the records committed after the kill."""
    child = ch.start(resume=resume)
    killed = ch.kill_when(child, lambda: ch.committed() >= target, jitter=JITTER)
    return killed, ch.committed()


@pytest.mark.parametrize("sink", SINKS)
def test_sigkill_at_random_points_then_resume(tmp_path: Path, sink: str) -> None:
    total = out_records(N)
    chains_planned = math.ceil(KILLS / PER_CHAIN)
    kills, runs, figures, replayed, chains = 0, 0, [], 0, 0
    for c in range(chains_planned * 2):  # a chain may end before all its kills: redo
        if kills >= KILLS:
            break
        chains += 1
        with chain(tmp_path / f"chain{c}", sink, N, name=f"crash_{sink}", every=EVERY) as ch:
            want = min(PER_CHAIN, KILLS - kills)
            targets = sorted(int(ch.rng.uniform(0.02, 0.92) * total) for _ in range(want))
            print(f"[faults] chain {c}: kill targets (committed sink records) {targets}")
            for j, target in enumerate(targets):
                killed, committed = kill_at(ch, target, resume=None if j == 0 else True)
                print(f"[faults]   kill {j}: killed={killed} committed after it={committed}")
                if not killed:
                    break  # it finished first: the chain is complete
                kills += 1
            ch.resume_to_end()
            runs += len(ch.children)
            figures.append(ch.verify())
            replayed += ch.replayed()
    assert kills >= KILLS, f"only {kills} of {KILLS} kills landed"
    record_figures(
        f"crash/random-sigkill/{sink}",
        trials=kills,
        chains=chains,
        runs=runs,
        I=sum(f["I"] for f in figures),
        S=sum(f["S"] for f in figures),
        Q=sum(f["Q"] for f in figures),
        duplicates=sum(f["duplicates"] + f["letter_duplicates"] for f in figures),
        missing=sum(f["missing"] for f in figures),
        replayed=replayed,
    )


@pytest.mark.parametrize("sink", SINKS)
def test_three_kills_each_after_20_percent_more_progress(tmp_path: Path, sink: str) -> None:
    total = out_records(N)
    with chain(tmp_path, sink, N, name=f"three_{sink}", every=EVERY) as ch:
        progress = [0]
        for j in range(3):
            target = progress[-1] + int(ch.rng.uniform(0.2, 0.22) * total)
            killed, committed = kill_at(ch, target, resume=None if j == 0 else True)
            assert killed, f"kill {j} missed: the run finished first (seed {ch.seed})"
            cp = ch.checkpoint()
            assert cp is not None
            # kills 2 and 3 land during a resume: its checkpoint chain names it
            assert len(cp["runs"]) == j + 1, (ch.seed, cp["runs"])
            assert committed >= progress[-1] + 0.2 * total, (
                f"kill {j} after too little progress: {committed} vs {progress} (seed {ch.seed})"
            )
            progress.append(committed)
        print(f"[faults] committed sink records at the three kills: {progress[1:]} of {total}")
        ch.resume_to_end()
        f = ch.verify()
        record_figures(
            f"crash/three-kills/{sink}",
            trials=3,
            progress=[round(p / total, 3) for p in progress[1:]],
            runs=len(ch.children),
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"] + f["letter_duplicates"],
            missing=f["missing"],
            replayed=ch.replayed(),
        )


@pytest.mark.parametrize("sink", SINKS)
def test_kill_before_the_first_checkpoint(tmp_path: Path, sink: str) -> None:
    # No periodic checkpoint within the run's life: the only one stored is the one a run
    # writes before its first record ("this run exists", position 0).
    with chain(tmp_path, sink, N, name=f"first_{sink}", every=600) as ch:
        child = ch.start()
        assert ch.wait_started(child)
        killed = ch.kill_when(child, lambda: True, jitter=0.25)
        assert killed, f"the run finished before the kill (seed {ch.seed})"
        cp = ch.checkpoint()
        assert cp is not None
        assert cp["position"] == 0
        assert cp["records"].get("written", 0) == 0
        assert ch.sink_rows() == [], "rows committed before the first checkpoint"
        letters_before = len(ch.letter_ids())
        # A plain run stops rather than write twice.
        plain = ch.run()
        assert plain.returncode == 4, plain.describe()
        assert plain.result is not None
        assert plain.result["error"] == "ResumeRequired"
        final = ch.resume_to_end(every=EVERY)
        assert final.result is not None
        f = ch.verify()
        record_figures(
            f"crash/before-first-checkpoint/{sink}",
            trials=1,
            letters_of_killed_run=letters_before,
            superseded=final.result["resumed"]["superseded_letters"],
            runs=len(ch.children),
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"] + f["letter_duplicates"],
            missing=f["missing"],
            replayed=ch.replayed(),
        )


@pytest.mark.parametrize("sink", SINKS)
def test_kill_during_the_resume(tmp_path: Path, sink: str) -> None:
    total = out_records(N)
    with chain(tmp_path, sink, N, name=f"resume_{sink}", every=EVERY) as ch:
        killed, at_first = kill_at(ch, int(ch.rng.uniform(0.3, 0.6) * total), resume=None)
        assert killed, f"seed {ch.seed}"
        # The resume is killed early: while it skips what is done, or in its first writes.
        child = ch.start(resume=True)
        assert ch.wait_started(child)
        assert ch.kill_when(child, lambda: True, jitter=0.1), f"seed {ch.seed}"
        cp = ch.checkpoint()
        assert cp is not None
        assert len(cp["runs"]) == 2, cp
        at_second = ch.committed()
        assert at_second >= at_first
        print(f"[faults] committed at the kills: {at_first}, during the resume {at_second}")
        ch.resume_to_end()
        f = ch.verify()
        record_figures(
            f"crash/kill-during-resume/{sink}",
            trials=2,
            runs=len(ch.children),
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"] + f["letter_duplicates"],
            missing=f["missing"],
            replayed=ch.replayed(),
        )
