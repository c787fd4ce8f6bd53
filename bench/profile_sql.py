"""Where the SQL sinks' time goes (W8, W9): a decomposition against the hand-written loops.

Usage (after ``bash bench/setup.sh``; W8's PostgreSQL as in bench/workloads.py)::

    bench/.venv/bin/python bench/profile_sql.py [--db sqlite|postgres|both] [--n 200000]
                                                [--runs 5]

Each step runs in a fresh interpreter, the steps interleaved round by round; the minimum
time over ``--runs`` rounds (the least disturbed run on a shared machine) is printed. The
steps build up from the hand-written loop to Conveyor's whole run, so each difference is
one layer's cost:

- ``rows``: the ids → rows loop alone (``sql_row`` in batches of 1,000), no database;
- ``+ rows_of``, ``+ _check_keys``, ``+ sink values``: the per-record Python work the sink
  adds before the driver sees a row (``connectors/_records.py:rows_of`` copying each dict,
  ``connectors/sql.py:_check_keys`` with ``where``, the per-value ``_sqlite_value`` /
  ``_pg_value`` tuple), still no database, against ``+ hand values`` (a tuple literal);
- ``hand loop``: W8's/W9's baseline (commit per batch, or every second with ``-1s``);
- ``sink.write``: the sink driven directly, ``open`` → ``write`` per batch → ``close``
  (no pipeline): without checkpoints, or with ``commit(checkpoint)`` every second like the
  runner's checkpointer (``-cp``), also with the cyclic GC off (``-cp-nogc``: the rows the
  sink keeps for a reconnect stay alive for the whole interval);
- ``pipeline, no-op sink``: ``MapStage(sql_row)`` → a sink doing nothing: the runner alone;
- ``pipeline + sink``: W8's/W9's Conveyor contender.

Neither writes BENCHMARKS.md; results go to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import workloads  # noqa: E402

TAG = "PROFILE-RESULT "
BATCH = 1000
STEPS = [
    "rows",
    "+ rows_of",
    "+ _check_keys",
    "+ sink values",
    "+ hand values",
    "hand loop",
    "hand loop-1s",
    "sink.write",
    "sink.write-cp",
    "sink.write-cp-nogc",
    "pipeline, no-op sink",
    "pipeline + sink",
    "pipeline + sink-cp",
]


def _batches(n: int) -> Any:
    batch: list[dict[str, Any]] = []
    for i in workloads.sql_ids(n):
        batch.append(workloads.sql_row(i))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _sink(db: str) -> tuple[Any, Any]:
    """A fresh sink on an empty table, and what tidies up after it."""
    import shutil

    from conveyor.connectors import PostgresSink, SqliteSink

    if db == "sqlite":
        tmp, path = workloads._w9_database()
        return SqliteSink(path, workloads.W9_TABLE, key=["id"]), lambda: shutil.rmtree(tmp)
    table = workloads._pg_table(False)
    workloads._pg_reset(table, False)
    return PostgresSink(workloads.PG_DSN, table), lambda: None


def _values(db: str) -> Any:
    from conveyor.connectors import sql

    return sql._sqlite_value if db == "sqlite" else sql._pg_value


def step(db: str, name: str, n: int) -> float:
    """Run one step in this process; return its seconds."""
    from conveyor.connectors import _records, sql
    from conveyor.core.checkpoint import Checkpoint, PipelineIdentity
    from conveyor.core.result import RunStatus
    from conveyor.core.sink import RunInfo

    columns = ["id", "v", "name"]
    if name.startswith("hand loop"):
        fn = workloads.w9_hand if db == "sqlite" else workloads.w8_hand
        return fn(n, commit="1s" if name.endswith("-1s") else "batch").seconds
    if name.startswith("pipeline"):
        if name == "pipeline, no-op sink":
            c = workloads._conveyor()
            pipeline = c.Pipeline("p").add_stage(c.MapStage(workloads.sql_row, name="row"))
            t0 = time.perf_counter()
            pipeline.run(
                workloads.sql_ids(n), lambda b: None, dead_letters="memory", handle_signals=False
            )
            return time.perf_counter() - t0
        fn = workloads.w9_conveyor if db == "sqlite" else workloads.w8_conveyor
        return fn(n, checkpoint=name.endswith("-cp")).seconds
    if name.startswith("sink.write"):
        sink, tidy = _sink(db)
        cp = name != "sink.write"
        checkpoint = Checkpoint(PipelineIdentity("profile", "f", "s"), "run", finished=True)
        if name.endswith("nogc"):
            gc.disable()
        try:
            t0 = time.perf_counter()
            sink.open(RunInfo("run", "profile", checkpointing=cp))
            next_at = time.monotonic() + workloads.COMMIT_EVERY
            for batch in _batches(n):
                sink.write(batch)
                if cp and time.monotonic() >= next_at:
                    sink.commit(checkpoint)
                    next_at = time.monotonic() + workloads.COMMIT_EVERY
            if cp:
                sink.commit(checkpoint)
            sink.close(RunStatus.COMPLETED)
            return time.perf_counter() - t0
        finally:
            gc.enable()
            tidy()
    # the per-record work in front of the driver, no database
    sink, tidy = _sink(db)
    value = _values(db)
    t0 = time.perf_counter()
    for batch in _batches(n):
        if name == "rows":
            continue
        if name == "+ hand values":
            [(r["id"], r["v"], r["name"]) for r in batch]
            continue
        rows = _records.rows_of(batch)
        if name == "+ rows_of":
            continue
        sql._check_keys(rows, columns, sink.where)
        if name == "+ _check_keys":
            continue
        [tuple(value(row.get(c)) for c in columns) for row in rows]
    seconds = time.perf_counter() - t0
    tidy()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="both", choices=["sqlite", "postgres", "both"])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        seconds = step(spec["db"], spec["step"], spec["n"])
        print(TAG + json.dumps({"seconds": seconds}))
        return 0
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    for db in dbs:
        times: dict[str, list[float]] = {s: [] for s in STEPS}
        for round_ in range(args.runs):
            shift = round_ % len(STEPS)
            for name in STEPS[shift:] + STEPS[:shift]:
                spec = json.dumps({"db": db, "step": name, "n": args.n})
                out = subprocess.run(
                    [sys.executable, __file__, "--child", spec],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                line = next((x for x in out.stdout.splitlines() if x.startswith(TAG)), None)
                if line is None:
                    print(f"{db} {name}: failed: {out.stderr.strip().splitlines()[-1:]}")
                    continue
                times[name].append(json.loads(line[len(TAG) :])["seconds"])
        print(f"\n{db}, n={args.n:,}, batches of {BATCH}: min of {args.runs} rounds (s)")
        for name in STEPS:
            if times[name]:
                print(f"  {name:<24} {min(times[name]):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
