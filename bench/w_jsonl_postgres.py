"""JSON Lines -> PostgreSQL through Conveyor against a hand-written psycopg ``COPY`` loop.

Usage (PostgreSQL on loopback, as for W8; ``CONVEYOR_BENCH_PG_DSN`` overrides the DSN)::

    .venv/bin/python bench/w_jsonl_postgres.py [--rows N] [--runs R] [--json FILE]

The input: a JSONL file of ``--rows`` (default 200,000) records ``{"id", "name", "v",
"ok"}``. Every contender turns each line into a dict, adds one field (``"source":
"jsonl"``) and loads the rows into an (emptied) table ``bench_jsonl_pg`` with ``COPY``:

- ``conveyor``: ``JsonlSource(path)`` -> one trivial ``MapStage`` (adds the field) ->
  ``PostgresSink(dsn, table)`` (no key: ``COPY``), with checkpoints (every second, the
  checkpoint row committed in the same transaction as the rows: exactly once);
- ``conveyor, no checkpoints``: the same without checkpoints (each batch its own
  transaction), for information;
- ``hand-written``: read the file line by line, ``json.loads``, the same function, batches
  of 1,000 rows, one ``COPY … FROM STDIN`` per batch, a commit once a second and at the end.

Each contender runs ``--runs`` times (default 5) in this one process, the order rotated
from round to round (so that a slow moment of a shared machine hits all alike); after each
run the table is checked (row count, sum of ids) before its time counts, and emptied
(outside the timed region). The figure is the ratio of throughputs, Conveyor's over the
hand-written loop's (medians; 1.0 is parity, the target is >= 0.8). Results go to stdout
(and ``--json``); nothing else is written.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from conveyor import MapStage, Pipeline

PG_DSN = os.environ.get(
    "CONVEYOR_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)
TABLE = "bench_jsonl_pg"
PIPELINE = "bench_jsonl_pg"
BATCH = 1000
COMMIT_EVERY = 1.0
COLUMNS = ("id", "name", "v", "ok", "source")


def write_jsonl(path: Path, rows: int) -> None:
    """``rows`` records, deterministic (seeded)."""
    rng = random.Random(5)
    with path.open("w", encoding="utf-8") as file:
        for i in range(rows):
            record = {
                "id": i,
                "name": f"user-{rng.randrange(10**6):06d}",
                "v": round(rng.uniform(0, 1000), 3),
                "ok": rng.random() < 0.9,
            }
            file.write(json.dumps(record) + "\n")


def tag(record: dict[str, Any]) -> dict[str, Any]:
    """The trivial map: one more field."""
    record["source"] = "jsonl"
    return record


def reset() -> None:
    """The table (as the sink would create it from the first batch), empty, and no
    checkpoint of the benchmark's pipeline left over."""
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigint, name text, v double precision, "
            "ok boolean, source text)"
        )
        conn.execute(f"TRUNCATE {TABLE}")
        found = conn.execute("SELECT to_regclass('conveyor_checkpoints')").fetchone()
        if found is not None and found[0] is not None:
            conn.execute(
                "DELETE FROM conveyor_checkpoints WHERE pipeline LIKE %s", (f"{PIPELINE} -> %",)
            )


def table_tally() -> tuple[int, int]:
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(
            f"SELECT count(*), coalesce(sum(id), 0) FROM {TABLE} WHERE source = 'jsonl'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


# -- the contenders -----------------------------------------------------------------------------


def conveyor(src: Path, work: Path, *, checkpoint: bool) -> None:
    from conveyor.connectors import JsonlSource, PostgresSink

    report = (
        Pipeline(PIPELINE)
        .add_stage(MapStage(tag, name="tag"))
        .run(
            JsonlSource(src),
            PostgresSink(PG_DSN, TABLE),
            dead_letters=work / "dl.db",
            batch_size=BATCH,
            handle_signals=False,
            checkpoint=True if checkpoint else None,
            checkpoint_every=COMMIT_EVERY,
        )
    )
    if report.status != "completed" or report.dead_lettered:
        raise SystemExit(f"conveyor: {report.summary()}")
    if checkpoint and (report.checkpoint is None or not report.checkpoint.finished):
        raise SystemExit("conveyor: the final checkpoint is not finished")


def hand_written(src: Path) -> None:
    copy_sql = f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN"
    with psycopg.connect(PG_DSN) as conn, src.open(encoding="utf-8") as file:
        cur = conn.cursor()

        def flush(batch: list[dict[str, Any]]) -> None:
            with cur.copy(copy_sql) as copy:
                for r in batch:
                    copy.write_row((r["id"], r["name"], r["v"], r["ok"], r["source"]))

        next_at = time.monotonic() + COMMIT_EVERY
        batch: list[dict[str, Any]] = []
        for line in file:
            if not line.strip():
                continue
            batch.append(tag(json.loads(line)))
            if len(batch) == BATCH:
                flush(batch)
                batch = []
                if time.monotonic() >= next_at:
                    conn.commit()
                    next_at = time.monotonic() + COMMIT_EVERY
        if batch:
            flush(batch)
        conn.commit()


# -- the method ---------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    rows, runs = args.rows, max(1, args.runs)
    expected = (rows, rows * (rows - 1) // 2)
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-jsonl-pg-"))
    contenders: dict[str, Callable[[], None]] = {}
    src = work / "in.jsonl"
    contenders = {
        "conveyor": lambda: conveyor(src, work, checkpoint=True),
        "conveyor, no checkpoints": lambda: conveyor(src, work, checkpoint=False),
        "hand-written": lambda: hand_written(src),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    try:
        write_jsonl(src, rows)
        names = list(contenders)
        for r in range(runs):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                reset()
                seconds = timed(contenders[name])
                got = table_tally()
                if got != expected:
                    raise SystemExit(f"{name}: the table holds {got}, expected {expected}")
                times[name].append(seconds)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        reset()

    base = statistics.median(times["hand-written"])
    figures: dict[str, Any] = {"rows": rows, "runs": runs, "python": sys.version.split()[0]}
    print(f"\njsonl->postgres ({rows:,} rows, median of {runs} runs, alternated)")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = base / median
        figures[name] = {"median_s": median, "rows_per_s": rows / median, "ratio": ratio}
        print(
            f"  {name:26s} {median:8.3f} s  {rows / median:12,.0f} rows/s  ratio {ratio:5.2f}x"
            f"  (samples: {', '.join(f'{s:.3f}' for s in samples)})"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
