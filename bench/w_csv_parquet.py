"""The file sources against hand-written loops: CSV -> Parquet, and reading Parquet.

Usage::

    .venv/bin/python bench/w_csv_parquet.py [--rows N] [--runs R] [--json FILE]

Two comparisons, each a pair of contenders run ``--runs`` times (default 5) in this one
process, their order alternated from round to round (so that a slow moment of a shared
machine hits both alike), each result verified (row count, sum of ids) before its time
counts. The figure is the ratio of throughputs, Conveyor's over the hand-written loop's
(medians; 1.0 is parity, the target is >= 0.8).

- ``csv->parquet``: a CSV file of ``--rows`` penguin rows (6 columns, some ``NA`` cells)
  into Parquet shards. Conveyor: ``CsvSource`` -> one trivial ``MapStage`` (adds a field)
  -> ``ParquetSink`` (100,000-row zstd shards), no checkpoints. Hand-written: ``csv.reader``
  over the text file, the same dicts (``na_values`` as ``None``), the same function, the
  rows collected 1,000 at a time with ``pyarrow.Table.from_pylist`` and written as
  100,000-row zstd shards with ``pyarrow.parquet.write_table``.
- ``csv read`` (for information: where the time of ``csv->parquet`` goes): iterating a
  ``CsvSource`` over the same CSV file against ``csv.reader`` making the same dicts.
- ``parquet read``: a Parquet file of ``--rows`` rows in row groups of 10,000, every row
  as a dict. Conveyor: iterating a ``ParquetSource`` (``batch_rows`` 10,000). Hand-written:
  ``ParquetFile.iter_batches(10_000)`` and ``to_pylist()`` per batch. Also shown, for
  information: the same source through ``Pipeline.run`` (an identity ``MapStage``) into a
  counting sink.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from conveyor import MapStage, Pipeline
from conveyor.connectors import CsvSource, ParquetSink, ParquetSource

NA = ("", "NA", "N/A", "NULL", "null", "NaN")
COLUMNS = ["id", "species", "island", "bill_length_mm", "body_mass_g", "sex"]
SHARD_ROWS = 100_000
BATCH = 1000


def write_csv(path: Path, rows: int) -> None:
    """``rows`` penguins, deterministic (seeded), with empty and ``NA`` cells."""
    rng = random.Random(7)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS)
        for i in range(rows):
            writer.writerow(
                [
                    i,
                    rng.choice(["Adelie", "Gentoo", "Chinstrap"]),
                    rng.choice(["Torgersen", "Biscoe, north", "Dream"]),
                    f"{rng.uniform(30, 60):.1f}",
                    rng.choice(["", str(rng.randint(2700, 6300))]),
                    rng.choice(["male", "female", "NA"]),
                ]
            )


def tag(record: dict[str, Any]) -> dict[str, Any]:
    """The trivial map: one more field."""
    record["source"] = "csv"
    return record


def shard_rows(folder: Path) -> tuple[int, int]:
    """Rows and the sum of the ``id`` column over the shards in ``folder``."""
    count = total = 0
    for shard in sorted(folder.glob("*.parquet")):
        table = pq.read_table(shard, columns=["id"])
        count += table.num_rows
        total += sum(int(v) for v in table.column("id").to_pylist())
    return count, total


# -- csv -> parquet -----------------------------------------------------------------------------


def csv_conveyor(src: Path, out: Path, work: Path) -> None:
    Pipeline("bench").add_stage(MapStage(tag, name="tag")).run(
        CsvSource(src),
        ParquetSink(out, rows_per_shard=SHARD_ROWS, compression="zstd"),
        dead_letters=work / "dl.db",
        batch_size=BATCH,
        handle_signals=False,
    )


def csv_hand(src: Path, out: Path, work: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    na = set(NA)
    tables: list[Any] = []
    pending = shard = 0

    def flush() -> None:
        nonlocal pending, shard, tables
        pq.write_table(
            pa.concat_tables(tables), out / f"part-{shard:05d}.parquet", compression="zstd"
        )
        shard += 1
        tables, pending = [], 0

    with src.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        names = next(reader)
        batch: list[dict[str, Any]] = []
        for row in reader:
            batch.append(
                tag({k: (None if v in na else v) for k, v in zip(names, row, strict=True)})
            )
            if len(batch) == BATCH:
                tables.append(pa.Table.from_pylist(batch))
                pending += len(batch)
                batch = []
                if pending >= SHARD_ROWS:
                    flush()
        if batch:
            tables.append(pa.Table.from_pylist(batch))
            pending += len(batch)
        if pending:
            flush()


def csv_read_conveyor(src: Path) -> tuple[int, int]:
    count = total = 0
    for record in CsvSource(src):
        count += 1
        total += int(record["id"])
    return count, total


def csv_read_hand(src: Path) -> tuple[int, int]:
    na = set(NA)
    count = total = 0
    with src.open(newline="", encoding="utf-8") as file:
        reader = csv.reader(file)
        names = next(reader)
        for row in reader:
            record = {k: (None if v in na else v) for k, v in zip(names, row, strict=True)}
            count += 1
            total += int(record["id"])
    return count, total


# -- parquet read -------------------------------------------------------------------------------


def write_parquet(path: Path, rows: int) -> None:
    rng = random.Random(11)
    table = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "species": [rng.choice(["Adelie", "Gentoo", "Chinstrap"]) for _ in range(rows)],
            "bill_length_mm": [round(rng.uniform(30, 60), 1) for _ in range(rows)],
            "body_mass_g": [rng.choice([None, rng.randint(2700, 6300)]) for _ in range(rows)],
            "sex": [rng.choice(["male", "female", None]) for _ in range(rows)],
        }
    )
    pq.write_table(table, path, row_group_size=10_000, compression="zstd")


def parquet_conveyor(path: Path) -> tuple[int, int]:
    count = total = 0
    for record in ParquetSource(path, batch_rows=10_000):
        count += 1
        total += record["id"]
    return count, total


def parquet_hand(path: Path) -> tuple[int, int]:
    count = total = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000):
        for record in batch.to_pylist():
            count += 1
            total += record["id"]
    return count, total


def same(record: dict[str, Any]) -> dict[str, Any]:
    return record


class Count:
    """A sink that counts and sums ids."""

    def __init__(self) -> None:
        self.count = self.total = 0

    def __call__(self, records: list[dict[str, Any]]) -> None:
        total = self.total
        for record in records:
            total += record["id"]
        self.count += len(records)
        self.total = total


def parquet_pipeline(path: Path, work: Path) -> tuple[int, int]:
    sink = Count()
    Pipeline("bench").add_stage(MapStage(same, name="same")).run(
        ParquetSource(path, batch_rows=10_000),
        sink,
        dead_letters=work / "dl.db",
        batch_size=BATCH,
        handle_signals=False,
    )
    return sink.count, sink.total


# -- the method ---------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def alternate(
    contenders: dict[str, Callable[[], Any]], runs: int, check: Callable[[str, Any], None]
) -> dict[str, list[float]]:
    """Each contender ``runs`` times, the order rotated every round."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            seconds, result = timed(contenders[name])
            check(name, result)
            times[name].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()
    rows, runs = args.rows, max(1, args.runs)
    expected = (rows, rows * (rows - 1) // 2)
    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    figures: dict[str, Any] = {"rows": rows, "runs": runs, "python": sys.version.split()[0]}
    try:
        src = work / "penguins.csv"
        write_csv(src, rows)
        outs = {"conveyor": work / "out-conveyor", "hand-written": work / "out-hand"}

        def run_csv(name: str) -> Callable[[], Any]:
            fn = csv_conveyor if name == "conveyor" else csv_hand

            def go() -> tuple[int, int]:
                shutil.rmtree(outs[name], ignore_errors=True)
                fn(src, outs[name], work)
                return shard_rows(outs[name])

            return go

        def check(name: str, result: Any) -> None:
            if tuple(result) != expected:
                raise SystemExit(f"{name}: wrong result {result}, expected {expected}")

        csv_times = alternate({n: run_csv(n) for n in outs}, runs, check)
        csv_read_times = alternate(
            {
                "conveyor": lambda: csv_read_conveyor(src),
                "hand-written": lambda: csv_read_hand(src),
            },
            runs,
            check,
        )

        parquet_file = work / "penguins.parquet"
        write_parquet(parquet_file, rows)
        read_times = alternate(
            {
                "conveyor": lambda: parquet_conveyor(parquet_file),
                "hand-written": lambda: parquet_hand(parquet_file),
                "conveyor pipeline": lambda: parquet_pipeline(parquet_file, work),
            },
            runs,
            check,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def report(title: str, times: dict[str, list[float]]) -> None:
        base = statistics.median(times["hand-written"])
        print(f"\n{title} ({rows:,} rows, median of {runs} runs)")
        section = figures[title] = {}
        for name, samples in times.items():
            median = statistics.median(samples)
            ratio = base / median
            section[name] = {"median_s": median, "rows_per_s": rows / median, "ratio": ratio}
            print(
                f"  {name:18s} {median:8.3f} s  {rows / median:12,.0f} rows/s  "
                f"ratio {ratio:5.2f}x  (samples: {', '.join(f'{s:.3f}' for s in samples)})"
            )

    report("csv->parquet", csv_times)
    report("csv read", csv_read_times)
    report("parquet read", read_times)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
