"""SIGKILL during a windowed run with open windows, then resume to the end: each window's
result is in the sink exactly once and equal to a plain group-by of the events.

The child (below, run by the :mod:`_faultkit` chain) reads ``N`` events ``{"id", "k", "ts",
"v"}`` (10 keys, 100 events per second of event time, up to 0.5 s of disorder, a few late
events 30 s behind) from a generator that pauses now and then, through a tumbling 1-second
window per key (``Stats("v", "count", "sum")``, or a records-keeping ``aggregate`` with
``combine``, or sessions) into a SQLite table; checkpoints every 0.05 s hold the open
windows. The first run is killed with SIGKILL once the sink has committed a random number
of results (the checkpoint then holds open windows: checked); resumes run to the end. The
oracle: the set of (key, window) in the sink has no duplicate and equals the group-by's,
with the same values; the late events are exactly the letters.

Sizes: 3 trials over 20,000 events; ``CONVEYOR_FAULTS=full``: 10 trials over 200,000.
``CONVEYOR_FAULTS_SEED=<seed>`` repeats a run.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from _faultkit import CHILD_RESUMED, FULL, chain, record_figures

from conveyor.dlq import open_dead_letter_store

N = 200_000 if FULL else 20_000
TRIALS = 10 if FULL else 3
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED") or random.SystemRandom().randrange(2**32))

pytestmark = pytest.mark.timeout(3600 if FULL else 600)

CHILD = (
    r"""
import json, sys, time

cfg = json.loads(sys.argv[1])

from conveyor import Pipeline, Stats, window
from conveyor.connectors.sql import SqliteSink
from conveyor.errors import CheckpointError, ResumeRequired

sys.path.insert(0, cfg["here"])
from test_windows_sigkill import events


def source():
    pause = cfg["pause"]
    for e in events(cfg["n"]):
        if e["id"] % pause[0] == 0:
            time.sleep(pause[1])
        yield e


def total(records):
    return sum(r["v"] for r in records)


def plus(a, b):
    return a + b


def stage():
    common = dict(time="ts", key="k", max_out_of_orderness=0.5, name="w")
    if cfg["kind"] == "stats":
        return window(tumbling=1, aggregate=Stats("v", "sum"), **common)
    if cfg["kind"] == "combine":
        return window(tumbling=1, aggregate=total, combine=plus, **common)
    return window(session=0.5, aggregate=total, **common)


def go(resume):
    return Pipeline(cfg["pipeline"]).add_stage(stage()).run(
        source(),
        SqliteSink(cfg["path"], cfg["table"]),
        dead_letters=cfg["dlq"],
        checkpoint=True,
        checkpoint_every=cfg["every"],
        resume=resume,
        batch_size=cfg["batch_size"],
        max_dead_letters="100%",
    )


"""
    + CHILD_RESUMED
    + r"""

try:
    report = resumed(go)
except (ResumeRequired, CheckpointError) as exc:
    print("RESULT " + json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(5)
cp = report.checkpoint
print("RESULT " + json.dumps({
    "status": report.status.value,
    "late": report.late,
    "checkpoint": {"finished": cp.finished, "position": cp.position,
                   "records": dict(cp.records)},
}), flush=True)
"""
)


def events(n: int) -> Any:
    """The stream (the child imports it): 100 events per second of event time, up to
    0.5 s of disorder, and every 997th event 30 s late."""
    rng = random.Random(12)
    for i in range(n):
        ts = round(i / 100 - rng.randrange(50) / 100, 2)
        if i % 997 == 500:
            ts -= 30
        yield {"id": i, "k": f"k{rng.randrange(10)}", "ts": ts, "v": rng.randrange(100)}


def late_ids(n: int) -> set[int]:
    return {i for i in range(n) if i % 997 == 500}


def expected(kind: str, n: int) -> dict[tuple[str, float], int]:
    late = late_ids(n)  # (once: in the comprehension it was n scans of range(n))
    on_time = [e for e in events(n) if e["id"] not in late]
    out: dict[tuple[str, float], int] = {}
    if kind != "session":
        for e in on_time:
            place = (e["k"], e["ts"] - e["ts"] % 1)
            out[place] = out.get(place, 0) + e["v"]
        return out
    by_key: dict[str, list[dict[str, Any]]] = {}
    for e in on_time:
        by_key.setdefault(e["k"], []).append(e)
    for key, group in by_key.items():
        group.sort(key=lambda e: e["ts"])
        first, last, acc = group[0]["ts"], group[0]["ts"], 0
        for e in group:
            if e["ts"] - last >= 0.5:
                out[(key, first)] = acc
                first, acc = e["ts"], 0
            last = e["ts"]
            acc += e["v"]
        out[(key, first)] = acc
    return out


def sink_windows(db: Path, table: str) -> list[tuple[str, float, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(f'SELECT key, start, value FROM "{table}"').fetchall()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_killed_windowed_run_resumes_each_window_exactly_once(tmp_path: Path, trial: int) -> None:
    rng = random.Random(f"{SEED}:{trial}")
    kind = ("stats", "combine", "session")[trial % 3]
    options = {
        "here": str(Path(__file__).parent),
        "kind": kind,
        "every": rng.choice(["0.02s", "0.05s", "0.2s"]),
        "batch_size": rng.choice([50, 200, 1000]),
        "pause": [50, 0.003 if FULL else 0.006],
    }
    with chain(tmp_path, "sqlite", N, name=f"windows{trial}", seed=SEED, **options) as run:
        run.script.write_text(CHILD, encoding="utf-8")
        want = expected(kind, N)
        target = rng.randint(len(want) // 20, len(want) // 3)
        print(f"[faults] windows trial={trial} seed={SEED} {options} kill>={target} results")
        first = run.start()
        killed = run.kill_when(first, lambda: run.committed() >= target, jitter=0.2)
        state_at_kill = None
        if killed:
            stored = run.checkpoint()
            assert stored is not None
            state_at_kill = json.loads(stored["state"]["w"])
            assert state_at_kill["state"], "the checkpoint held no open window"
        last = run.resume_to_end()
        assert last.result is not None, last.describe()

        rows = sink_windows(run.path, run.table)
        places = [(k, s) for k, s, _ in rows]
        assert len(places) == len(set(places)), "a window written twice"
        assert {(k, s): v for k, s, v in rows} == want
        with open_dead_letter_store(run.dlq) as store:
            letters = [d.record["id"] for d in store.list(limit=None)]
        assert sorted(letters) == sorted(late_ids(N)), "late events are not exactly the letters"
        record_figures(
            "windows_sigkill",
            trial=trial,
            seed=SEED,
            n=N,
            kind=kind,
            killed=killed,
            windows=len(rows),
            keys_with_state_at_kill=0 if state_at_kill is None else len(state_at_kill["state"]),
        )
