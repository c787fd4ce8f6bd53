"""SIGKILL (and SIGTERM) during an unbounded-style run of a BranchStage with two windowed
branches and open windows, then resume to the end: each (branch, key, window) result is in
the sink exactly once and equal to the uninterrupted run's (a group-by per branch).

The child (below, run by the :mod:`_faultkit` chain) reads the events of
:mod:`test_windows_sigkill` (10 keys, 100 events per second of event time, up to 0.5 s of
disorder, every 997th event 30 s late) from a generator that pauses now and then, through
``BranchStage({"sums": tumbling 1 s Stats("v", "sum"), "sessions": session gap 0.5 s sum})``
into one SQLite table of rows ``{branch, key, start, end, value}``; checkpoints every
0.02-0.2 s hold both branches' open windows. The first run is killed with SIGKILL once the
sink has committed a random number of results (the checkpoint then holds open windows of
both branches: checked), or sent SIGTERM (it drains and keeps its open windows in the final
checkpoint); resumes run to the end. The oracle: no (branch, key, window) twice, the set
with its values equal to the group-by's, and the late events exactly the letters (once per
branch).

Sizes: 2 SIGKILL trials and 1 SIGTERM trial over 20,000 events; ``CONVEYOR_FAULTS=full``:
10 and 2 over 200,000. ``CONVEYOR_FAULTS_SEED=<seed>`` repeats a run. Every wait is bounded
(the child's timeout, ``kill_when``'s, at most 3 resumes).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from _faultkit import CHILD_RESUMED, CHILD_TIMEOUT, FULL, chain, record_figures
from test_windows_sigkill import expected, late_ids

from conveyor.dlq import open_dead_letter_store

N = 200_000 if FULL else 20_000
KILLS = 10 if FULL else 2
TERMS = 2 if FULL else 1
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
ARMS = {"sums": "stats", "sessions": "session"}  # branch -> the kind test_windows_sigkill knows

pytestmark = pytest.mark.timeout(3600 if FULL else 600)

CHILD = (
    r"""
import json, sys, time

cfg = json.loads(sys.argv[1])

from conveyor import BranchStage, Pipeline, Stats, window
from conveyor.connectors.sql import SqliteSink
from conveyor.errors import CheckpointError, ResumeRequired

sys.path.insert(0, cfg["here"])
from test_windows_sigkill import events


def source():
    marker = cfg.get("marker")
    if marker:  # reading: the signal handlers are installed by now
        with open(marker, "a") as f:
            f.write("started\n")
    pause = cfg["pause"]
    for e in events(cfg["n"]):
        if e["id"] % pause[0] == 0:
            time.sleep(pause[1])
        yield e


def total(records):
    return sum(r["v"] for r in records)


def metrics():
    common = dict(time="ts", key="k", max_out_of_orderness=0.5, name="w")
    return BranchStage(
        {
            "sums": window(tumbling=1, aggregate=Stats("v", "sum"), **common),
            "sessions": window(session=0.5, aggregate=total, **common),
        },
        name="metrics",
    )


def go(resume):
    return Pipeline(cfg["pipeline"]).add_stage(metrics()).run(
        source(),
        SqliteSink(cfg["path"], cfg["table"]),
        dead_letters=cfg["dlq"],
        checkpoint=True,
        checkpoint_every=cfg["every"],
        resume=resume,
        batch_size=cfg["batch_size"],
        max_dead_letters="100%",
        grace_period=30.0,
    )


"""
    + CHILD_RESUMED
    + r"""

try:
    report = resumed(go)
except (ResumeRequired, CheckpointError) as exc:
    print("RESULT " + json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(5)
report.check_conservation()
cp = report.checkpoint
print("RESULT " + json.dumps({
    "status": report.status.value,
    "late": report.late,
    "open": {arm: report.stage(f"metrics/{arm}/w").open_windows for arm in ("sums", "sessions")},
    "checkpoint": {"finished": cp.finished, "position": cp.position,
                   "records": dict(cp.records)},
}), flush=True)
"""
)


def want(n: int) -> dict[tuple[str, str, float], int]:
    """(branch, key, window start) -> value: each branch's group-by."""
    out = {}
    for arm, kind in ARMS.items():
        for (key, start), value in expected(kind, n).items():
            out[(arm, key, start)] = value
    return out


def sink_rows(db: Path, table: str) -> list[tuple[str, str, float, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f'SELECT branch, key, start, value FROM "{table}"').fetchall()


def options(rng: random.Random) -> dict[str, object]:
    return {
        "here": str(Path(__file__).parent),
        "every": rng.choice(["0.02s", "0.05s", "0.2s"]),
        "batch_size": rng.choice([50, 200, 1000]),
        "pause": [50, 0.003 if FULL else 0.006],
    }


def check(run: object, results: dict[tuple[str, str, float], int]) -> int:
    rows = sink_rows(run.path, run.table)  # type: ignore[attr-defined]
    places = [(b, k, s) for b, k, s, _ in rows]
    assert len(places) == len(set(places)), "a (branch, key, window) written twice"
    assert {(b, k, s): v for b, k, s, v in rows} == results
    with open_dead_letter_store(run.dlq) as store:  # type: ignore[attr-defined]
        letters = sorted((d.stage, d.record["id"]) for d in store.list(limit=None))
    late = sorted(late_ids(N))
    assert letters == sorted((f"metrics/{arm}/w", i) for arm in ARMS for i in late), (
        "late events are not exactly the letters, once per branch"
    )
    return len(rows)


@pytest.mark.parametrize("trial", range(KILLS))
def test_a_killed_branch_of_windows_resumes_each_result_exactly_once(
    tmp_path: Path, trial: int
) -> None:
    rng = random.Random(f"{SEED}:kill:{trial}")
    config = options(rng)
    with chain(tmp_path, "sqlite", N, name=f"branches{trial}", seed=SEED, **config) as run:
        run.script.write_text(CHILD, encoding="utf-8")
        results = want(N)
        target = rng.randint(len(results) // 20, len(results) // 3)
        print(f"[faults] branches trial={trial} seed={SEED} {config} kill>={target} results")
        first = run.start()
        killed = run.kill_when(first, lambda: run.committed() >= target, jitter=0.2)
        open_at_kill = {}
        if killed:
            stored = run.checkpoint()
            assert stored is not None
            for arm in ARMS:
                state = json.loads(stored["state"][f"metrics/{arm}/w"])
                assert state["state"], f"the checkpoint held no open window of {arm}"
                open_at_kill[arm] = len(state["state"])
        last = run.resume_to_end()
        assert last.result is not None, last.describe()
        windows = check(run, results)
        record_figures(
            "branch_windows_sigkill",
            trial=trial,
            seed=SEED,
            n=N,
            killed=killed,
            windows=windows,
            keys_with_state_at_kill=open_at_kill,
        )


@pytest.mark.parametrize("trial", range(TERMS))
def test_a_branch_of_windows_stopped_by_sigterm_drains_and_resumes_exactly_once(
    tmp_path: Path, trial: int
) -> None:
    rng = random.Random(f"{SEED}:term:{trial}")
    config = options(rng)
    with chain(tmp_path, "sqlite", N, name=f"branchterm{trial}", seed=SEED, **config) as run:
        run.script.write_text(CHILD, encoding="utf-8")
        results = want(N)
        target = rng.randint(len(results) // 20, len(results) // 3)
        first = run.start()
        assert run.wait_started(first)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while first.running() and run.committed() < target:
            assert time.monotonic() < deadline, first.describe()
            time.sleep(0.003)
        stopped = first.send(signal.SIGTERM)
        first.wait()
        assert first.result is not None, first.describe()
        if stopped and first.result["status"] == "interrupted":
            # drained: the final checkpoint keeps both branches' open windows
            assert first.returncode == 0, first.describe()
            assert all(n > 0 for n in first.result["open"].values()), first.result
            stored = run.checkpoint()
            assert stored is not None
            assert not stored["finished"]
            assert set(stored["state"]) == {f"metrics/{arm}/w" for arm in ARMS}
        last = run.resume_to_end()
        assert last.result is not None, last.describe()
        windows = check(run, results)
        record_figures("branch_windows_sigterm", trial=trial, seed=SEED, n=N, windows=windows)
