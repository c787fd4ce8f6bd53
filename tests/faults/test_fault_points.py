"""Crashes at named points (``CONVEYOR_FAULT=point:k``: SIGKILL the k-th time the run gets
there), with k random, then resume to completion.

- ``before_sink_write``: a micro-batch is about to be written;
- ``checkpoint_write``: the checkpoint row is written, not committed (in the SQL sinks'
  own transaction; in the checkpoint file for the JSON-lines sink);
- ``after_sink_commit``: the sink committed, the checkpoint is not yet stored separately
  (the SQL sinks stored it in the same transaction).

The SQL sinks must end exactly once. The JSON-lines sink (a plain function appending with
flush + fsync) is at-least-once: records written after the last checkpoint are written
again; the duplicates are counted and must stay within one checkpoint interval per crash
(``checkpoint_every="2000r"``: a checkpoint once >= 2000 records were written since the
last, i.e. at most 2000 + one micro-batch - 1), and S | Q = I (union) still.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _faultkit import FULL, chain, record_figures

N = 1_000_000 if FULL else 100_000
BATCH = 500
EVERY_RECORDS = 2000
FAULTS_PER_CHAIN = 4 if FULL else 2  # the run, then each resume, crashes at the point
POINTS = ["before_sink_write", "checkpoint_write", "after_sink_commit"]
SINKS = ["sqlite", "pg", "jsonl"]

pytestmark = pytest.mark.timeout(1800 if FULL else 300)


def reachable(point: str) -> int:
    """About how many times a run of the remaining records reaches ``point`` (k is drawn
    well below, so that the crash happens)."""
    writes = N // BATCH
    commits = int(N * 0.99) // EVERY_RECORDS
    return writes if point == "before_sink_write" else commits


@pytest.mark.parametrize("sink", SINKS)
@pytest.mark.parametrize("point", POINTS)
def test_crash_at_a_fault_point_then_resume(tmp_path: Path, point: str, sink: str) -> None:
    interval_worth = EVERY_RECORDS + BATCH - 1
    with chain(
        tmp_path, sink, N, name=f"{point}_{sink}", every=f"{EVERY_RECORDS}r", batch_size=BATCH
    ) as ch:
        ks = []
        for j in range(FAULTS_PER_CHAIN):
            # Each resume has less left to do: draw k from the first part of what remains.
            k = ch.rng.randint(1, max(1, reachable(point) // (3 * (j + 1))))
            ks.append(k)
            child = ch.run(fault=f"{point}:{k}", resume=None if j == 0 else True)
            assert child.returncode == -9, (
                f"{point}:{k} was not reached (seed {ch.seed}): {child.describe()}"
            )
            ch.kills += 1
        print(f"[faults] {point}: k = {ks}")
        final = ch.resume_to_end()
        exactly_once = sink != "jsonl"
        allowed = 0 if exactly_once else FAULTS_PER_CHAIN * interval_worth
        f = ch.verify(max_duplicates=allowed)
        assert final.result is not None
        record_figures(
            f"fault-point/{point}/{sink}",
            trials=ch.kills,
            k=ks,
            guarantee="exactly-once" if exactly_once else "at-least-once",
            runs=len(ch.children),
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"] + f["letter_duplicates"],
            allowed_duplicates=allowed,
            missing=f["missing"],
            replayed=ch.replayed(),
        )


def test_at_least_once_report_bounds_its_duplicates(tmp_path: Path) -> None:
    """The resumed run's report says an at-least-once sink may hold up to ``replayed``
    records twice: after a crash right after a commit it holds a whole interval twice."""
    with chain(
        tmp_path, "jsonl", 50_000, name="replayed", every=f"{EVERY_RECORDS}r", batch_size=BATCH
    ) as ch:
        k = ch.rng.randint(2, 10)
        crashed = ch.run(fault=f"after_sink_commit:{k}")
        assert crashed.returncode == -9, crashed.describe()
        final = ch.resume_to_end()
        assert final.result is not None
        f = ch.verify(max_duplicates=EVERY_RECORDS + BATCH - 1)
        print(f"[faults] k={k}: duplicates {f['duplicates']}, report.replayed {ch.replayed()}")
        record_figures(
            "fault-point/at-least-once-report",
            trials=1,
            k=k,
            I=f["I"],
            S=f["S"],
            Q=f["Q"],
            duplicates=f["duplicates"],
            missing=f["missing"],
            replayed=ch.replayed(),
        )
        assert f["duplicates"] <= ch.replayed(), (
            f"{f['duplicates']} duplicates, the report says up to {ch.replayed()} (seed {ch.seed})"
        )
