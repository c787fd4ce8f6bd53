"""Conveyor's benchmarks: Conveyor against a hand-written baseline, pypeln and Bytewax.

Usage (after ``bash bench/setup.sh``)::

    bench/.venv/bin/python bench/run.py [--workload W1|...|W10|IMPORT|all] [--runs N] [--quick]
                                        [--output FILE] [--update-benchmarks-md] [--no-write]

Workloads: W1 per-record overhead, W2 async I/O, W3 CPU in 2 processes, W4 memory under a
slow sink (Conveyor against a hand-written baseline, pypeln and Bytewax); W5 the cost of a
pydantic input contract checked on every record (``contracts="all"`` against ``"off"``);
W6 the extra cost per dead letter (every record fails into a SQLite store, against the same
run succeeding); W7 the cost of checkpoints (W1 and W4 with ``checkpoint=`` a temp file at
the default 1 s interval, against the same runs without); W8 the ``PostgresSink`` against a
hand-written psycopg 3 COPY loop and W9 the ``SqliteSink`` against a hand-written sqlite3
``executemany`` loop (same batch size, same commit cadence: checkpoints every 1 s against a
commit every second, no checkpoints against a commit per batch); W10 the cost of live
metrics and of the run report (W1 with the Prometheus exporter on, scraped every 0.5 s or
not, and with ``--report``'s sampling and page, against neither);
IMPORT the time of ``import conveyor`` in a fresh interpreter (median of 10, ``python -c
"import conveyor"`` minus ``python -c pass``) and the top 10 modules of ``python -X
importtime``.
``bench/profile_w1.py`` and ``bench/profile_sql.py`` say where W1's and W8/W9's time goes.

Method. Every measurement runs in a fresh interpreter (``run.py --child ...``), so no
contender inherits another's heap, threads or pools. The contenders of a workload are
interleaved: round ``r`` runs each of them once, starting one further down the list each
round, so that a slow minute on this shared machine hits all of them alike. Each
contender's result is verified against a closed-form expectation inside the child; a wrong
result is an error and reports no time. Times are medians over ``--runs`` rounds; what is
compared is the ratio of throughputs to the workload's baseline measured in the same run.

Output. The results are printed and written to ``bench/results/BENCHMARKS.md``
(untracked; ``--quick``, which uses small sizes, writes ``bench/results/BENCHMARKS.quick.md``;
``--output FILE`` names another file; ``--no-write`` prints only), with the raw samples as
``bench/results/<workload>-<time>.json``. Each workload has its own section between markers
(``<!-- bench:W2:start -->`` ... ``<!-- bench:W2:end -->``), so ``--workload W2`` rewrites
W2's section only and text outside the markers is kept; a workload without a section yet
gets one next to its neighbours in workload order. Each section names the commit and a
digest of the contents of src/, and warns if src/ changed while its workload ran.

The tracked ``BENCHMARKS.md`` at the repository root is never written unless asked with
``--update-benchmarks-md``: then its sections of the workloads run are rewritten between
their markers as well (not with ``--quick``; ``--output`` cannot point at it instead).
``make bench BENCH_ARGS=--update-benchmarks-md`` does the same through make.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

RESULT_TAG = "BENCH-RESULT "
CHILD_TIMEOUT = 600.0
"""Seconds before a measurement is given up (a peer that hangs shows as timed out)."""


@dataclass(frozen=True)
class Variant:
    """One contender of a workload with its settings."""

    key: str
    label: str
    setting: str
    func: str
    role: str  # "baseline", "conveyor" or "peer"
    params: dict[str, Any] = field(default_factory=dict)
    requires: str | None = None
    versus: str | None = None
    """The key of the contender this one is compared with (default: the workload's first
    baseline); workloads made of pairs (W7-W9) give every contender its own."""


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    description: str
    sizes: tuple[int, ...]
    quick_sizes: tuple[int, ...]
    target: str
    variants: tuple[Variant, ...]
    target_ratio: float | None = None
    kind: str = "speed"  # "speed", "memory" (W4), "letters" (W6) or "import"
    target_value: float | None = None  # W6: µs per dead letter; IMPORT: ms


CONVEYOR = "Conveyor `Pipeline.run`"

WORKLOADS: dict[str, Workload] = {
    "W1": Workload(
        name="W1",
        title="W1 — per-record overhead",
        description=(
            'Dict records `{"id": i, "value": i % 1000, "name": f"user{i}"}` from a generator; '
            "validate (types) → enrich (new dict with `double = value * 2`) → keep even "
            "`value`; the sink counts and sums `double` (checked against the closed form)."
        ),
        sizes=(1_000_000,),
        quick_sizes=(50_000,),
        target="Conveyor streaming ≥ 0.85x the generator chain's throughput",
        target_ratio=0.85,
        variants=(
            Variant(
                "generators",
                "Generator chain",
                "plain generator expressions (baseline)",
                "w1_generators",
                "baseline",
            ),
            Variant(
                "conveyor-b1000",
                CONVEYOR,
                "batch_size=1000, capacity=2 (defaults)",
                "w1_conveyor",
                "conveyor",
                {"batch_size": 1000, "capacity": 2},
            ),
            Variant(
                "conveyor-b5000",
                CONVEYOR,
                "batch_size=5000, capacity=2",
                "w1_conveyor",
                "conveyor",
                {"batch_size": 5000, "capacity": 2},
            ),
            Variant(
                "conveyor-b1000-c8",
                CONVEYOR,
                "batch_size=1000, capacity=8",
                "w1_conveyor",
                "conveyor",
                {"batch_size": 1000, "capacity": 8},
            ),
            Variant(
                "pypeln",
                "pypeln",
                "`pl.sync` filter → map → filter",
                "w1_pypeln",
                "peer",
                requires="pypeln",
            ),
            Variant(
                "bytewax",
                "Bytewax",
                "`run_main`, TestingSource batch_size=1000",
                "w1_bytewax",
                "peer",
                {"batch_size": 1000},
                requires="bytewax",
            ),
        ),
    ),
    "W2": Workload(
        name="W2",
        title="W2 — I/O-bound (async, concurrency 100)",
        description=(
            "W1's records; one async call per record awaiting `asyncio.sleep(0.001)`, at most "
            "100 calls in flight; the sink counts and sums `value` and `id`. The floor is "
            "n / 100 x 1 ms = 0.2 s for 20,000 records."
        ),
        sizes=(20_000,),
        quick_sizes=(2_000,),
        target="Conveyor ≥ 1.0x the hand-written asyncio baseline",
        target_ratio=1.0,
        variants=(
            Variant(
                "asyncio",
                "asyncio",
                "100 worker tasks + `asyncio.Queue(1000)` (baseline)",
                "w2_asyncio",
                "baseline",
            ),
            Variant(
                "conveyor-map-b1000",
                CONVEYOR,
                "`MapStage(fn, concurrency=100)`, batch_size=1000",
                "w2_conveyor_map",
                "conveyor",
                {"batch_size": 1000},
            ),
            Variant(
                "conveyor-map-b100",
                CONVEYOR,
                "`MapStage(fn, concurrency=100)`, batch_size=100",
                "w2_conveyor_map",
                "conveyor",
                {"batch_size": 100},
            ),
            Variant(
                "conveyor-options-b10",
                CONVEYOR,
                "`StageOptions(concurrency=100)`, batch_size=10",
                "w2_conveyor_options",
                "conveyor",
                {"batch_size": 10},
            ),
            Variant(
                "pypeln",
                "pypeln",
                "`pl.task.map(fn, workers=100, maxsize=1000)`",
                "w2_pypeln",
                "peer",
                requires="pypeln",
            ),
            Variant(
                "bytewax",
                "Bytewax",
                "`flat_map_batch` + own event loop, ≤100 at once, batch_size=100",
                "w2_bytewax",
                "peer",
                {"batch_size": 100},
                requires="bytewax",
            ),
        ),
    ),
    "W3": Workload(
        name="W3",
        title="W3 — CPU-bound (2 worker processes)",
        description=(
            "W1's records; about 1 ms of pure-Python arithmetic per record (an LCG walk of "
            "16,000 steps; the measured cost is below), 2 worker processes. Pool start-up is "
            "inside the timed region for everyone. The sink counts the records, sums their "
            "ids and recomputes every 31st result."
        ),
        sizes=(2_000,),
        quick_sizes=(200,),
        target="Conveyor ≥ 1.0x `multiprocessing.Pool(2).imap`",
        target_ratio=1.0,
        variants=(
            Variant(
                "pool",
                "multiprocessing.Pool",
                "`Pool(2).imap(chunksize=25)`, fork (baseline)",
                "w3_pool",
                "baseline",
                {"chunksize": 25},
            ),
            Variant(
                "conveyor-b50-c2",
                CONVEYOR,
                'executor="process", workers=2, concurrency=2, batch_size=50',
                "w3_conveyor",
                "conveyor",
                {"batch_size": 50, "concurrency": 2},
            ),
            Variant(
                "conveyor-b50-c4",
                CONVEYOR,
                'executor="process", workers=2, concurrency=4, batch_size=50',
                "w3_conveyor",
                "conveyor",
                {"batch_size": 50, "concurrency": 4},
            ),
            Variant(
                "conveyor-b100-c4",
                CONVEYOR,
                'executor="process", workers=2, concurrency=4, batch_size=100',
                "w3_conveyor",
                "conveyor",
                {"batch_size": 100, "concurrency": 4},
            ),
            Variant(
                "pypeln",
                "pypeln",
                "`pl.process.map(fn, workers=2)`",
                "w3_pypeln",
                "peer",
                requires="pypeln",
            ),
            Variant(
                "bytewax",
                "Bytewax",
                "2-process cluster (`cluster_main`, loopback), `redistribute`, batch_size=50",
                "w3_bytewax",
                "peer",
                {"batch_size": 50},
                requires="bytewax",
            ),
        ),
    ),
    "W4": Workload(
        name="W4",
        title="W4 — memory under a slow sink",
        description=(
            "W1's records through one fast stage (enrich) into a sink that sleeps 1 ms every "
            "1,000 records, so the sink is the slow side. Peak RSS (`VmHWM`) of a fresh "
            "process per measurement; the baseline is a bare interpreter that imported the "
            "library (Conveyor: `import conveyor` and a pipeline built)."
        ),
        sizes=(1_000_000, 3_000_000),
        quick_sizes=(50_000, 150_000),
        target=(
            "Conveyor: peak RSS at the two sizes within 10 MB of each other, and ≤ 50 MB above "
            "the interpreter with conveyor imported"
        ),
        kind="memory",
        variants=(
            Variant(
                "generators",
                "Generator chain",
                "generator → slow sink in lists of 1000 (baseline)",
                "w4_generators",
                "baseline",
            ),
            Variant(
                "conveyor",
                CONVEYOR,
                "MapStage → async slow sink, batch_size=1000, capacity=2 (defaults)",
                "w4_conveyor",
                "conveyor",
                {"batch_size": 1000, "capacity": 2},
            ),
            Variant(
                "pypeln",
                "pypeln",
                "`pl.thread.map(workers=1, maxsize=1000)` → slow sink",
                "w4_pypeln",
                "peer",
                requires="pypeln",
            ),
            Variant(
                "bytewax",
                "Bytewax",
                "`run_main`, map → slow sink, batch_size=1000",
                "w4_bytewax",
                "peer",
                {"batch_size": 1000},
                requires="bytewax",
            ),
        ),
    ),
    "W5": Workload(
        name="W5",
        title="W5 — input contracts (pydantic model, every record checked)",
        description=(
            "W1's records and stages; the first stage (validate) has "
            "`StageOptions(input_contract=W5Record)`, a pydantic model "
            "(`id: int >= 0`, `value: int` in [0, 1000), `name: str`; checked strictly, as "
            'Conveyor\'s type contracts are), checked on every record with `contracts="all"` '
            'against the same pipeline with `contracts="off"`. Before its timed run each '
            "child proves the contract is live (a record with `value = -2`, which W1's own "
            'type check lets through, is dead-lettered with `"all"` and passes with `"off"`). '
            "The sink counts and sums `double` (checked against W1's closed form)."
        ),
        sizes=(1_000_000,),
        quick_sizes=(50_000,),
        target='Conveyor with `contracts="all"` ≥ 0.6x the throughput of `contracts="off"`',
        target_ratio=0.6,
        variants=(
            Variant(
                "contracts-off",
                CONVEYOR,
                'input_contract=W5Record, contracts="off", batch_size=1000 (baseline)',
                "w5_conveyor",
                "baseline",
                {"contracts": "off"},
            ),
            Variant(
                "contracts-all",
                CONVEYOR,
                'input_contract=W5Record, contracts="all", batch_size=1000',
                "w5_conveyor",
                "conveyor",
                {"contracts": "all"},
            ),
            Variant(
                "contracts-sample",
                CONVEYOR,
                'input_contract=W5Record, contracts="sample" (sample_rate=0.01) (reference)',
                "w5_conveyor",
                "reference",
                {"contracts": "sample"},
            ),
            Variant(
                "generators",
                "Generator chain",
                "W1's baseline, no contract (reference)",
                "w1_generators",
                "reference",
            ),
        ),
    ),
    "W6": Workload(
        name="W6",
        title="W6 — dead letters (every record fails)",
        description=(
            "100,000 of W1's records through one `MapStage` whose function does W1's "
            "enrichment and then raises `ValueError` for every record, so every record "
            "becomes a dead letter in a SQLite store (`dead_letters=<fresh temp dir>/"
            'dead_letters.db`, `max_dead_letters="100%"`), against the same run where the '
            "function returns (the store is opened, never written). batch_size=1000. "
            "Verified: the failing run ends `failed` (every record dead-lettered is over any "
            "budget) after draining, the store holds exactly n letters of `ValueError` whose "
            "record ids sum to the closed form, and the succeeding run's sink saw every "
            "record."
        ),
        sizes=(100_000,),
        quick_sizes=(10_000,),
        target="extra cost per dead letter, (median t_fail - median t_ok) / n, ≤ 30 µs",
        kind="letters",
        target_value=30.0,
        variants=(
            Variant(
                "ok",
                CONVEYOR,
                "MapStage, function returns, SQLite store (baseline)",
                "w6_conveyor",
                "baseline",
                {"fails": False},
            ),
            Variant(
                "fail-sqlite",
                CONVEYOR,
                "MapStage, function raises ValueError for every record → SQLite store",
                "w6_conveyor",
                "conveyor",
                {"fails": True},
            ),
            Variant(
                "fail-memory",
                CONVEYOR,
                "the same, → `MemoryDeadLetterStore` (reference: the cost without SQLite)",
                "w6_conveyor",
                "reference",
                {"fails": True, "store": "memory"},
            ),
        ),
    ),
    "W7": Workload(
        name="W7",
        title="W7 — checkpoints (W1 and W4, checkpoints on against off)",
        description=(
            "W1's pipeline and sink (1,000,000 records, validate → enrich → keep even) and "
            "W4's (MapStage → async sink sleeping 1 ms every 1,000 records), each run with "
            "checkpoints on, `checkpoint=<fresh temp dir>/checkpoints.db` at the default "
            "interval (`checkpoint_every=1.0`: after a write, once a second has passed and "
            "the batches the sink holds are done, a checkpoint is saved to the SQLite file, "
            "WAL + `synchronous=FULL`, plus one at the start and a final one), against the "
            "same run with checkpoints off, in the same rounds. Creating and opening the "
            "checkpoint file is inside the timed region. Verified: W1's/W4's closed forms, "
            "and with checkpoints on a final checkpoint that is `finished` at position n "
            "(off: none)."
        ),
        sizes=(1_000_000,),
        quick_sizes=(50_000,),
        target="Conveyor with checkpoints on ≥ 0.9x the throughput of the same run with "
        "checkpoints off (W1 and W4 each)",
        target_ratio=0.9,
        variants=(
            Variant(
                "w1-off",
                CONVEYOR,
                "W1, checkpoints off, batch_size=1000 (baseline)",
                "w7_conveyor",
                "baseline",
                {"shape": "W1", "checkpoint": False},
            ),
            Variant(
                "w1-on",
                CONVEYOR,
                "W1, checkpoints on (temp SQLite file, every 1 s), batch_size=1000",
                "w7_conveyor",
                "conveyor",
                {"shape": "W1", "checkpoint": True},
                versus="w1-off",
            ),
            Variant(
                "w4-off",
                CONVEYOR,
                "W4, checkpoints off, batch_size=1000 (baseline)",
                "w7_conveyor",
                "baseline",
                {"shape": "W4", "checkpoint": False},
            ),
            Variant(
                "w4-on",
                CONVEYOR,
                "W4, checkpoints on (temp SQLite file, every 1 s), batch_size=1000",
                "w7_conveyor",
                "conveyor",
                {"shape": "W4", "checkpoint": True},
                versus="w4-off",
            ),
        ),
    ),
    "W8": Workload(
        name="W8",
        title="W8 — PostgreSQL sink against a hand-written psycopg 3 loop",
        description=(
            'Rows `{"id": i, "v": i * 0.5, "name": f"user{i}"}` (built from a generator of '
            "ids by every contender: Conveyor in one `MapStage`) into PostgreSQL 127.0.0.1 "
            "(`PostgresSink(dsn, table)`: no key, so it writes with `COPY … FROM STDIN`, one "
            "per micro-batch of 1,000, each in a savepoint) against a hand-written psycopg 3 "
            "loop doing one `COPY` per batch of 1,000 into the same table, with the same "
            "durability, in two pairs: checkpoints on (default interval 1 s: one transaction "
            "per checkpoint, the checkpoint row committed with the rows) against the loop "
            "committing once a second; checkpoints off (each write its own transaction) "
            'against the loop committing every batch. A reference pair with `key=["id"]`: '
            "the sink then upserts (`executemany` of `INSERT … ON CONFLICT (id) DO UPDATE`), "
            "against the loop doing the same `executemany`. Before each run (untimed) the "
            "table is created if missing (as the sink would), truncated, and the benchmark "
            "pipeline's checkpoint row deleted; connecting is timed for everyone. Verified: "
            "count, sum of ids, sum of `v` and total name length read back from the table; "
            "with checkpoints, the stored checkpoint row is `finished`."
        ),
        sizes=(200_000,),
        quick_sizes=(20_000,),
        target="`postgres` sink ≥ 0.8x the hand-written psycopg 3 COPY loop (same batch size, "
        "same commit cadence)",
        target_ratio=0.8,
        variants=(
            Variant(
                "copy-1s",
                "psycopg 3 loop",
                "COPY per batch of 1000, commit every 1 s (baseline)",
                "w8_hand",
                "baseline",
                {"commit": "1s"},
                requires="psycopg",
            ),
            Variant(
                "sink-cp",
                CONVEYOR,
                "`PostgresSink` (COPY), checkpoints on (every 1 s), batch_size=1000; vs "
                "COPY, commit every 1 s",
                "w8_conveyor",
                "conveyor",
                {"checkpoint": True},
                requires="psycopg",
                versus="copy-1s",
            ),
            Variant(
                "copy-batch",
                "psycopg 3 loop",
                "COPY per batch of 1000, commit every batch (baseline)",
                "w8_hand",
                "baseline",
                {"commit": "batch"},
                requires="psycopg",
            ),
            Variant(
                "sink-nocp",
                CONVEYOR,
                "`PostgresSink` (COPY), checkpoints off (a commit per write), "
                "batch_size=1000; vs COPY, commit every batch",
                "w8_conveyor",
                "conveyor",
                {"checkpoint": False},
                requires="psycopg",
                versus="copy-batch",
            ),
            Variant(
                "upsert-1s",
                "psycopg 3 loop",
                "`executemany` upsert per batch of 1000, commit every 1 s (reference baseline)",
                "w8_hand",
                "baseline",
                {"commit": "1s", "keyed": True},
                requires="psycopg",
            ),
            Variant(
                "sink-upsert-cp",
                CONVEYOR,
                '`PostgresSink(key=["id"])` (upsert), checkpoints on (every 1 s), '
                "batch_size=1000 (reference); vs executemany upsert, commit every 1 s",
                "w8_conveyor",
                "reference",
                {"checkpoint": True, "keyed": True},
                requires="psycopg",
                versus="upsert-1s",
            ),
        ),
    ),
    "W9": Workload(
        name="W9",
        title="W9 — SQLite sink against a hand-written sqlite3 loop",
        description=(
            "W8's rows (200,000, built in a `MapStage` for Conveyor, in the loop for the "
            'baseline) into a SQLite file: `SqliteSink(path, table, key=["id"])` (WAL, '
            "`synchronous=FULL`, one `executemany` of `INSERT … ON CONFLICT (id) DO UPDATE` "
            "per micro-batch of 1,000, each in a savepoint) against a hand-written sqlite3 "
            "loop with WAL + `synchronous=FULL` doing the same `executemany` per batch of "
            "1,000, in two pairs with the same commit cadence: checkpoints on (default "
            "interval 1 s; the checkpoint row committed with the rows) against the loop "
            "committing once a second; checkpoints off (a transaction per write) against the "
            "loop committing every batch. Each run gets a fresh database in a temporary "
            "directory with the table already created (untimed, the schema the sink would "
            "create); connecting is timed for everyone. Verified: count, sum of ids, sum of "
            "`v` and total name length read back; WAL in force; with checkpoints, the stored "
            "checkpoint row is `finished`."
        ),
        sizes=(200_000,),
        quick_sizes=(20_000,),
        target="`sqlite` sink ≥ 0.8x the hand-written sqlite3 executemany loop (same batch "
        "size, WAL + synchronous=FULL, same commit cadence)",
        target_ratio=0.8,
        variants=(
            Variant(
                "executemany-1s",
                "sqlite3 loop",
                "executemany upsert per batch of 1000, commit every 1 s (baseline)",
                "w9_hand",
                "baseline",
                {"commit": "1s"},
            ),
            Variant(
                "sink-cp",
                CONVEYOR,
                '`SqliteSink(key=["id"])`, checkpoints on (every 1 s), batch_size=1000; vs '
                "executemany, commit every 1 s",
                "w9_conveyor",
                "conveyor",
                {"checkpoint": True},
                versus="executemany-1s",
            ),
            Variant(
                "executemany-batch",
                "sqlite3 loop",
                "executemany upsert per batch of 1000, commit every batch (baseline)",
                "w9_hand",
                "baseline",
                {"commit": "batch"},
            ),
            Variant(
                "sink-nocp",
                CONVEYOR,
                '`SqliteSink(key=["id"])`, checkpoints off (a commit per write), '
                "batch_size=1000; vs executemany, commit every batch",
                "w9_conveyor",
                "conveyor",
                {"checkpoint": False},
                versus="executemany-batch",
            ),
        ),
    ),
    "W10": Workload(
        name="W10",
        title="W10 — live metrics and the run report (W1 with them on against off)",
        description=(
            "W1's pipeline and sink (1,000,000 records, validate → enrich → keep even, "
            "batch_size=1000, capacity=2) run by a `StreamRunner` (as `conveyor run` does), "
            "with the metrics exporter off, on (`conveyor.observe.serve_metrics(runner)` on "
            "127.0.0.1, a free port: its collector reads the runner's counters on each "
            "scrape) with nobody scraping, and on with a thread scraping `/metrics` over "
            "HTTP at the start and then every 0.5 s; with the run report of `conveyor run "
            "--report run.html` (a `RunRecorder` sampling the runner at each 0.25 s "
            "progress tick, then the page written with the pipeline's drawing); and with "
            "both, in the same rounds. Starting and stopping the server and writing the "
            "page are inside the timed region; importing prometheus_client "
            "(once per process, at start-up) is not. Verified: W1's closed form; with a "
            "scraper, at least one scrape that names `conveyor_stage_records_in_total`."
        ),
        sizes=(1_000_000,),
        quick_sizes=(50_000,),
        target="Conveyor with live metrics on (scraped every 0.5 s or not) and the run report "
        "on ≥ 0.95x the throughput of the same run without them",
        target_ratio=0.95,
        variants=(
            Variant(
                "metrics-off",
                "Conveyor `StreamRunner`",
                "W1, no exporter, batch_size=1000 (baseline)",
                "w10_conveyor",
                "baseline",
                {"metrics": "off"},
            ),
            Variant(
                "metrics-on",
                "Conveyor `StreamRunner`",
                "W1, exporter on, nobody scraping",
                "w10_conveyor",
                "conveyor",
                {"metrics": "on"},
                requires="prometheus_client",
                versus="metrics-off",
            ),
            Variant(
                "metrics-scraped",
                "Conveyor `StreamRunner`",
                "W1, exporter on, scraped every 0.5 s",
                "w10_conveyor",
                "conveyor",
                {"metrics": "scraped"},
                requires="prometheus_client",
                versus="metrics-off",
            ),
            Variant(
                "report",
                "Conveyor `StreamRunner`",
                "W1, run report on (sampled every 0.25 s, run.html written)",
                "w10_conveyor",
                "conveyor",
                {"report": True},
                versus="metrics-off",
            ),
            Variant(
                "metrics-scraped+report",
                "Conveyor `StreamRunner`",
                "W1, exporter scraped every 0.5 s and the run report on",
                "w10_conveyor",
                "conveyor",
                {"metrics": "scraped", "report": True},
                requires="prometheus_client",
                versus="metrics-off",
            ),
        ),
    ),
    "IMPORT": Workload(
        name="IMPORT",
        title="IMPORT — `import conveyor` in a fresh interpreter",
        description=(
            "Wall-clock time of fresh interpreters of bench/.venv (after one unmeasured "
            'warm-up each): `python -c "import conveyor"` minus `python -c pass`, '
            'interleaved with `python -X importtime -c "import conveyor"`, whose '
            "per-module cumulative times (medians) give the top 10 below. -X importtime "
            "adds its own overhead, so its total is a little above the wall-clock difference."
        ),
        sizes=(0,),
        quick_sizes=(0,),
        target="`import conveyor` ≤ 80 ms (median wall-clock difference)",
        kind="import",
        target_value=80.0,
        variants=(
            Variant("pass", "python -c pass", "bare interpreter (baseline)", "", "baseline"),
            Variant("import", 'python -c "import conveyor"', "import only", "", "conveyor"),
            Variant(
                "importtime",
                'python -X importtime -c "import conveyor"',
                "per-module import times",
                "",
                "reference",
            ),
        ),
    ),
}

IMPORT_RUNS = 10
"""IMPORT: rounds (always this many, whatever ``--runs`` says; 3 with ``--quick``)."""
IMPORT_TOP = 10

W4_IMPORTS = {
    "generators": "python",
    "conveyor": "conveyor",
    "pypeln": "pypeln",
    "bytewax": "bytewax",
}
"""W4: which bare-interpreter baseline each contender's peak RSS is compared with."""

W4_SLACK_MB = 2.0
W4_ABOVE_MB = 50.0


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Sample:
    seconds: float | None
    info: dict[str, Any]
    error: str | None = None


def child_env() -> dict[str, str]:
    from workloads import TELEMETRY_ENV

    env = dict(os.environ)
    for key, value in TELEMETRY_ENV.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def measure(spec: dict[str, Any]) -> Sample:
    """Run one measurement in a fresh interpreter."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            env=child_env(),
            cwd=RESULTS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Sample(None, {}, f"timed out after {CHILD_TIMEOUT:.0f} s")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            data = json.loads(line[len(RESULT_TAG) :])
            return Sample(data["seconds"], data.get("info", {}))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return Sample(None, {}, f"exit {proc.returncode}: " + " | ".join(tail))


def child(spec: dict[str, Any]) -> None:
    """Inside the fresh interpreter: run, verify, print the result line."""
    import workloads

    workloads.quiet_environment()
    func = spec["func"]
    if func == "w4_import":
        rss = workloads.w4_import(spec["params"]["library"])
        print(RESULT_TAG + json.dumps({"seconds": 0.0, "info": {"peak_rss_mb": rss}}))
        return
    if func == "w3_serial":
        ms = workloads.w3_serial_ms_per_record()
        print(RESULT_TAG + json.dumps({"seconds": 0.0, "info": {"ms_per_record": ms}}))
        return
    if func == "w5_pydantic":
        us = workloads.w5_pydantic_us_per_record()
        print(RESULT_TAG + json.dumps({"seconds": 0.0, "info": {"us_per_record": us}}))
        return
    measured = workloads.CONTENDERS[func](spec["n"], **spec["params"])
    workloads.verify(spec["workload"], spec["n"], measured)
    print(RESULT_TAG + json.dumps({"seconds": measured.seconds, "info": measured.info}))


def available(variant: Variant) -> bool:
    return variant.requires is None or importlib.util.find_spec(variant.requires) is not None


def log(message: str) -> None:
    print(message, flush=True)


@dataclass
class Row:
    variant: Variant
    n: int
    samples: list[Sample] = field(default_factory=list)
    missing: bool = False

    @property
    def times(self) -> list[float]:
        return [s.seconds for s in self.samples if s.seconds is not None]

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.errors and bool(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def info_median(self, key: str) -> float:
        return statistics.median(s.info[key] for s in self.samples if key in s.info)


@dataclass
class Outcome:
    workload: Workload
    rows: list[Row]
    imports: dict[str, Row]
    extra: dict[str, Any]
    started: str
    machine: dict[str, str]
    command: str
    runs: int


def run_workload(wl: Workload, runs: int, quick: bool) -> tuple[list[Row], dict[str, Row], dict]:
    if wl.kind == "import":
        return run_imports(wl, 3 if quick else IMPORT_RUNS), {}, {}
    sizes = wl.quick_sizes if quick else wl.sizes
    rows = [Row(v, n) for n in sizes for v in wl.variants]
    for row in rows:
        row.missing = not available(row.variant)
    imports: dict[str, Row] = {}
    if wl.name == "W4":
        for library in dict.fromkeys(W4_IMPORTS.values()):
            if library == "python" or importlib.util.find_spec(library) is not None:
                variant = Variant(library, library, "import only", "w4_import", "import")
                imports[library] = Row(variant, 0)
    extra: dict[str, Any] = {}
    if wl.name == "W3":
        sample = measure({"func": "w3_serial", "n": 0, "params": {}, "workload": "W3"})
        extra["ms_per_record"] = sample.info.get("ms_per_record")
    if wl.name == "W5":
        sample = measure({"func": "w5_pydantic", "n": 0, "params": {}, "workload": "W5"})
        extra["pydantic_us_per_record"] = sample.info.get("us_per_record")
    jobs = [r for r in rows if not r.missing] + list(imports.values())
    for round_ in range(runs):
        shift = round_ % len(jobs)
        for row in jobs[shift:] + jobs[:shift]:
            v = row.variant
            if v.func == "w4_import":
                spec = {"func": v.func, "n": 0, "params": {"library": v.key}, "workload": "W4"}
            else:
                spec = {"func": v.func, "n": row.n, "params": v.params, "workload": wl.name}
            sample = measure(spec)
            row.samples.append(sample)
            shown = f"{sample.seconds:.3f} s" if sample.seconds is not None else sample.error
            if "peak_rss_mb" in sample.info:
                shown = f"{shown}, peak RSS {sample.info['peak_rss_mb']:.1f} MB"
            size = f" n={row.n:,}" if row.n else ""
            log(f"  {wl.name} round {round_ + 1}/{runs} {v.key}{size}: {shown}")
    return rows, imports, extra


IMPORT_CODE = {"pass": "pass", "import": "import conveyor", "importtime": "import conveyor"}


def import_once(key: str) -> Sample:
    """One fresh interpreter for the IMPORT workload, timed from outside (wall clock)."""
    cmd = [sys.executable, *(["-X", "importtime"] if key == "importtime" else [])]
    cmd += ["-c", IMPORT_CODE[key]]
    t0 = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=child_env(), cwd=RESULTS, check=False
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return Sample(None, {}, f"exit {proc.returncode}: " + " | ".join(tail))
    info: dict[str, Any] = {}
    if key == "importtime":
        info["modules"] = parse_importtime(proc.stderr)
        if "conveyor" not in info["modules"]:
            return Sample(None, {}, "-X importtime printed no line for conveyor")
    return Sample(seconds, info)


def parse_importtime(stderr: str) -> dict[str, list[int]]:
    """``{module: [self µs, cumulative µs]}`` from ``-X importtime`` output."""
    modules: dict[str, list[int]] = {}
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        try:
            self_us, cumulative, name = line[len("import time:") :].split("|", 2)
            modules[name.strip()] = [int(self_us), int(cumulative)]
        except ValueError:
            continue
    return modules


def run_imports(wl: Workload, runs: int) -> list[Row]:
    """IMPORT: interleaved rounds of a bare interpreter, ``import conveyor`` and the same
    under ``-X importtime``, each once unmeasured first (bytecode and page cache)."""
    rows = [Row(v, 0) for v in wl.variants]
    for row in rows:
        import_once(row.variant.key)
    for round_ in range(runs):
        shift = round_ % len(rows)
        for row in rows[shift:] + rows[:shift]:
            sample = import_once(row.variant.key)
            row.samples.append(sample)
            shown = (
                f"{sample.seconds * 1000:.1f} ms" if sample.seconds is not None else sample.error
            )
            log(f"  {wl.name} round {round_ + 1}/{runs} {row.variant.key}: {shown}")
    return rows


# -- reporting ---------------------------------------------------------------------------------


def fmt_rate(n: int, seconds: float) -> str:
    rate = n / seconds
    if rate >= 1e6:
        return f"{rate / 1e6:.2f} M/s"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f} k/s"
    return f"{rate:.0f} /s"


def fmt_ratio(ratio: float, target: float | None = None) -> str:
    """``0.62x``; with a third digit when two would hide which side of the target it is."""
    text = f"{ratio:.2f}x"
    if target is not None and (ratio >= target) != (round(ratio, 2) >= target):
        text = f"{ratio:.3f}x"
    return text


def table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(cells) + " |" for cells in lines]
    return out


def failed_cell(row: Row) -> str:
    if row.missing:
        return f"not installed ({row.variant.requires}; run bench/setup.sh)"
    return "ERROR: " + (row.errors[0] if row.errors else "no result")[:300].replace("|", "/")


def paired(wl: Workload) -> bool:
    """Whether the workload is made of pairs (each contender with its own baseline)."""
    return any(v.versus for v in wl.variants)


def comparator(o: Outcome, row: Row) -> Row:
    """The row ``row`` is compared with: its ``versus``, itself if it is a baseline of a
    paired workload, else the workload's first baseline (same size)."""
    v = row.variant
    if v.versus:
        return next(r for r in o.rows if r.variant.key == v.versus and r.n == row.n)
    if v.role == "baseline" and paired(o.workload):
        return row
    return next(r for r in o.rows if r.variant.role == "baseline")


def pairs_verdicts(o: Outcome) -> list[str]:
    """W7-W9: one verdict per Conveyor contender against its own baseline."""
    wl = o.workload
    target = wl.target_ratio or 0.0
    verdicts = []
    for row in o.rows:
        if row.variant.role != "conveyor":
            continue
        base = comparator(o, row)
        if not (row.ok and base.ok):
            broken = base if row.ok else row
            verdicts.append(
                f"**FAIL**: {row.variant.key}: {broken.variant.key} gave no valid time "
                f"({failed_cell(broken)})."
            )
            continue
        ratio = base.median / row.median
        per_round = [
            sb.seconds / sa.seconds
            for sa, sb in zip(row.samples, base.samples, strict=False)
            if sa.seconds and sb.seconds
        ]
        spread = (
            f"; paired by round {min(per_round):.2f}x-{max(per_round):.2f}x" if per_round else ""
        )
        verdicts.append(
            f"**{'PASS' if ratio >= target else 'FAIL'}** {row.variant.key} "
            f"({row.variant.setting.split('; vs ')[0]}): {fmt_ratio(ratio, target)} "
            f"{base.variant.key} ({base.variant.setting}){spread}; target ≥ {target}x."
        )
    for row in o.rows:
        if row.variant.role == "reference" and row.variant.versus and row.ok:
            base = comparator(o, row)
            if base.ok:
                verdicts.append(
                    f"Reference {row.variant.key}: {base.median / row.median:.2f}x "
                    f"{base.variant.key} (no target)."
                )
    return verdicts


def speed_section(o: Outcome) -> tuple[list[str], list[str]]:
    """Table lines and verdict lines of W1-W3, W5 and the paired W7-W9."""
    wl = o.workload
    baseline = next(r for r in o.rows if r.variant.role == "baseline")
    lines, verdicts = [], []
    best: tuple[float, Row] | None = None
    for row in o.rows:
        v = row.variant
        if not row.ok:
            lines.append([v.label, v.setting, failed_cell(row), "", "", "", ""])
            continue
        spread = f"{min(row.times):.3f}-{max(row.times):.3f}"
        ratio_cell, verdict = "", ""
        versus = comparator(o, row)
        if versus.ok:
            ratio = versus.median / row.median
            ratio_cell = fmt_ratio(ratio, wl.target_ratio)
            if v.role == "conveyor" and wl.target_ratio is not None:
                passed = ratio >= wl.target_ratio
                verdict = f"{'PASS' if passed else 'FAIL'} (≥ {wl.target_ratio}x)"
                if best is None or ratio > best[0]:
                    best = (ratio, row)
        lines.append(
            [
                v.label,
                v.setting,
                f"{row.median:.3f}",
                spread,
                fmt_rate(row.n, row.median),
                ratio_cell,
                verdict,
            ]
        )
    conveyor_rows = [r for r in o.rows if r.variant.role == "conveyor"]
    header = ["contender", "setting", "median s", "min-max s", "records/s", "vs baseline", "target"]
    if paired(wl):
        header[5] = "vs its baseline"
        return table(header, lines), pairs_verdicts(o)
    if not baseline.ok:
        verdicts.append(f"**FAIL**: the baseline gave no valid time ({failed_cell(baseline)}).")
    elif best is None:
        verdicts.append("**FAIL**: no Conveyor configuration gave a valid time.")
    else:
        ratio, row = best
        status = "PASS" if ratio >= (wl.target_ratio or 0) else "FAIL"
        verdicts.append(
            f"**{status}** with the best Conveyor configuration ({row.variant.setting}): "
            f"{fmt_ratio(ratio, wl.target_ratio)} the baseline (target ≥ {wl.target_ratio}x)."
        )
        first = conveyor_rows[0]
        if first is not row and first.ok:
            f_ratio = baseline.median / first.median
            f_status = "PASS" if f_ratio >= (wl.target_ratio or 0) else "FAIL"
            verdicts.append(
                f"With the first configuration listed ({first.variant.setting}): "
                f"{fmt_ratio(f_ratio, wl.target_ratio)} ({f_status})."
            )
    return table(header, lines), verdicts


def memory_section(o: Outcome) -> tuple[list[str], list[str]]:
    """Table lines and verdict lines of W4."""
    lines, verdicts = [], []
    imports = {k: r for k, r in o.imports.items() if r.ok}
    sizes = sorted({r.n for r in o.rows})
    baseline_times = {r.n: r.median for r in o.rows if r.variant.role == "baseline" and r.ok}
    for key, row in o.imports.items():
        cell = f"{row.info_median('peak_rss_mb'):.1f}" if row.ok else failed_cell(row)
        label = "bare interpreter" if key == "python" else f"interpreter + `import {key}`"
        lines.append([label, "—", "import only", cell, "", "", ""])
    for row in o.rows:
        v = row.variant
        if not row.ok:
            lines.append([v.label, f"{row.n:,}", v.setting, failed_cell(row), "", "", ""])
            continue
        peak = row.info_median("peak_rss_mb")
        base = imports.get(W4_IMPORTS.get(v.key, ""))
        above = f"+{peak - base.info_median('peak_rss_mb'):.1f}" if base else ""
        ratio = f"{baseline_times[row.n] / row.median:.2f}x" if row.n in baseline_times else ""
        lines.append(
            [
                v.label,
                f"{row.n:,}",
                v.setting,
                f"{peak:.1f}",
                above,
                f"{row.median:.3f} ({fmt_rate(row.n, row.median)})",
                ratio,
            ]
        )
    conveyor = {r.n: r for r in o.rows if r.variant.role == "conveyor"}
    base = imports.get("conveyor")
    peaks_seen = {
        p for r in conveyor.values() for s in r.samples for p in s.info.get("channel_peaks", [])
    }
    if peaks_seen:
        verdicts.append(
            "Conveyor's channels reached peak/capacity "
            + ", ".join(sorted(peaks_seen))
            + " micro-batches: the sink was the slow side and back-pressure held the rest."
        )
    if len(sizes) == 2 and all(conveyor[n].ok for n in sizes) and base is not None:
        peaks = [conveyor[n].info_median("peak_rss_mb") for n in sizes]
        growth = peaks[1] - peaks[0]
        above = max(peaks) - base.info_median("peak_rss_mb")
        ok_growth, ok_above = abs(growth) <= W4_SLACK_MB, above <= W4_ABOVE_MB
        verdicts.append(
            f"**{'PASS' if ok_growth and ok_above else 'FAIL'}**: Conveyor's peak RSS is "
            f"{peaks[0]:.1f} MB at {sizes[0]:,} and {peaks[1]:.1f} MB at {sizes[1]:,} records "
            f"(difference {growth:+.1f} MB, target within ±{W4_SLACK_MB:.0f} MB: "
            f"{'PASS' if ok_growth else 'FAIL'}); at most {above:.1f} MB above the "
            f"interpreter with conveyor imported "
            f"({base.info_median('peak_rss_mb'):.1f} MB; target ≤ {W4_ABOVE_MB:.0f} MB: "
            f"{'PASS' if ok_above else 'FAIL'})."
        )
    else:
        verdicts.append("**FAIL**: Conveyor or its import baseline gave no valid measurement.")
    header = [
        "contender",
        "records",
        "setting",
        "peak RSS MB (median)",
        "above its import baseline MB",
        "median s (throughput)",
        "speed vs baseline",
    ]
    return table(header, lines), verdicts


def paired_differences(a: Row, b: Row) -> list[float]:
    """``b - a`` round by round (the rounds are interleaved, so a pair shares its minute)."""
    return [
        sb.seconds - sa.seconds
        for sa, sb in zip(a.samples, b.samples, strict=False)
        if sa.seconds is not None and sb.seconds is not None
    ]


def letters_section(o: Outcome) -> tuple[list[str], list[str]]:
    """Table lines and verdict lines of W6: seconds, and the extra µs per dead letter."""
    wl = o.workload
    baseline = next(r for r in o.rows if r.variant.role == "baseline")
    lines, verdicts = [], []
    for row in o.rows:
        v = row.variant
        if not row.ok:
            lines.append([v.label, v.setting, failed_cell(row), "", "", "", ""])
            continue
        extra = paired = ""
        if baseline.ok and row is not baseline:
            extra = f"{(row.median - baseline.median) / row.n * 1e6:.1f}"
            pairs = paired_differences(baseline, row)
            if pairs:
                paired = f"{statistics.median(pairs) / row.n * 1e6:.1f}"
        lines.append(
            [
                v.label,
                v.setting,
                f"{row.median:.3f}",
                f"{min(row.times):.3f}-{max(row.times):.3f}",
                fmt_rate(row.n, row.median),
                extra,
                paired,
            ]
        )
    target = wl.target_value or 0.0
    for row in o.rows:
        if row.variant.role != "conveyor":
            continue
        if not (row.ok and baseline.ok):
            broken = baseline if row.ok else row
            verdicts.append(
                f"**FAIL**: {broken.variant.key} gave no valid time ({failed_cell(broken)})."
            )
            continue
        per = (row.median - baseline.median) / row.n * 1e6
        verdicts.append(
            f"**{'PASS' if per <= target else 'FAIL'}**: each dead letter costs {per:.1f} µs "
            f"more than a record that succeeds ({row.variant.setting}; target ≤ {target:g} µs)."
        )
    header = [
        "contender",
        "setting",
        "median s",
        "min-max s",
        "records/s",
        "extra µs per record (medians)",
        "extra µs per record (paired by round, median)",
    ]
    return table(header, lines), verdicts


def import_section(o: Outcome) -> tuple[list[str], list[str]]:
    """Table lines and verdict lines of IMPORT: wall-clock times, the difference, the top 10
    modules of -X importtime."""
    wl = o.workload
    rows = {r.variant.key: r for r in o.rows}
    lines, verdicts = [], []
    for row in o.rows:
        v = row.variant
        if not row.ok:
            lines.append([f"`{v.label}`", v.setting, failed_cell(row), ""])
            continue
        ms = [t * 1000 for t in row.times]
        lines.append(
            [
                f"`{v.label}`",
                v.setting,
                f"{statistics.median(ms):.1f}",
                f"{min(ms):.1f}-{max(ms):.1f}",
            ]
        )
    out = table(["command", "what", "median ms (wall clock)", "min-max ms"], lines)
    bare, imp, itime = rows["pass"], rows["import"], rows["importtime"]
    target = wl.target_value or 0.0
    if bare.ok and imp.ok:
        diff = (imp.median - bare.median) * 1000
        pairs = [d * 1000 for d in paired_differences(bare, imp)]
        paired = f"; paired by round: median {statistics.median(pairs):.1f} ms" if pairs else ""
        verdicts.append(
            f"**{'PASS' if diff <= target else 'FAIL'}**: `import conveyor` takes {diff:.1f} ms "
            f"(median with import - median bare interpreter, {len(imp.times)} runs each"
            f"{paired}; target ≤ {target:g} ms)."
        )
    else:
        verdicts.append("**FAIL**: the interpreter runs gave no valid time.")
    if itime.ok:
        runs = [s.info["modules"] for s in itime.samples if s.seconds is not None]
        names = set().union(*runs)
        med = {
            name: (
                statistics.median(r[name][1] for r in runs if name in r),
                statistics.median(r[name][0] for r in runs if name in r),
            )
            for name in names
        }
        total = med["conveyor"][0] / 1000
        verdicts.append(
            f"-X importtime: `conveyor` cumulative {total:.1f} ms (median of {len(runs)})."
        )
        top = sorted(med.items(), key=lambda kv: kv[1][0], reverse=True)[:IMPORT_TOP]
        out += [
            "",
            f"Top {IMPORT_TOP} modules by cumulative import time (-X importtime, medians):",
            "",
        ]
        out += table(
            ["#", "module", "cumulative ms", "self ms"],
            [
                [str(i), f"`{name}`", f"{cum / 1000:.1f}", f"{own / 1000:.1f}"]
                for i, (name, (cum, own)) in enumerate(top, 1)
            ],
        )
    return out, verdicts


def section(o: Outcome) -> str:
    wl = o.workload
    lines = [f"## {wl.title}", ""]
    lines.append(
        f"Run {o.started} · `{o.command}` · {o.runs} round{'s' if o.runs > 1 else ''}, "
        "interleaved, fresh process per measurement"
    )
    lines.append("")
    lines.append(
        f"Machine: {o.machine['cpus']} CPUs ({o.machine['cpu']}), Python {o.machine['python']}, "
        f"{o.machine['os']}; load average at start {o.machine['load']}; "
        f"Conveyor at {o.machine['commit']}; peers: {o.machine['peers']}"
    )
    lines += ["", wl.description, ""]
    if o.extra.get("src_changed"):
        lines += [f"**Warning**: {o.extra['src_changed']}; its numbers mix two versions.", ""]
    if o.extra.get("ms_per_record"):
        lines += [f"Measured CPU cost per record: {o.extra['ms_per_record']:.2f} ms.", ""]
    if o.extra.get("pydantic_us_per_record"):
        lines += [
            "Measured cost of pydantic alone here: "
            f"{o.extra['pydantic_us_per_record']:.2f} µs per record (one strict "
            "`list[W5Record]` validation per 1,000 records, as the contract check does).",
            "",
        ]
    sections = {"memory": memory_section, "letters": letters_section, "import": import_section}
    body, verdicts = sections.get(wl.kind, speed_section)(o)
    lines += body
    lines += ["", f"Target: {wl.target}.", ""]
    lines += verdicts
    if wl.name == "W5":
        off = next(r for r in o.rows if r.variant.key == "contracts-off")
        on = next(r for r in o.rows if r.variant.key == "contracts-all")
        if off.ok and on.ok:
            per = (on.median - off.median) / on.n * 1e6
            lines.append(
                f'Checking every record costs {per:.2f} µs per record (median `"all"` - '
                'median `"off"`, over n).'
            )
    if paired(wl):
        lines += checkpoint_notes(o)
    if wl.kind == "speed":
        lines += [
            "",
            '"vs baseline" is the throughput ratio, baseline median time / contender median '
            "time (higher is better, 1.00x = as fast as the baseline)"
            + (
                "; each Conveyor contender is compared with the baseline its setting names, "
                "measured in the same rounds; a baseline's own row shows 1.00x."
                if paired(wl)
                else "."
            ),
        ]
    return "\n".join(lines) + "\n"


def checkpoint_notes(o: Outcome) -> list[str]:
    """W7-W9: checkpoints the runs wrote (median) and, for W4's shape, peak RSS."""
    notes = []
    for row in o.rows:
        samples = [s for s in row.samples if s.seconds is not None]
        if not samples:
            continue
        cps = [s.info["checkpoints"] for s in samples if "checkpoints" in s.info]
        if cps and max(cps):
            notes.append(
                f"{row.variant.key}: {statistics.median(cps):g} checkpoints per run (median; "
                "each interval's and the final one; the start's is not counted)"
            )
        rss = [s.info["peak_rss_mb"] for s in samples if "peak_rss_mb" in s.info]
        if rss:
            notes.append(f"{row.variant.key}: peak RSS {statistics.median(rss):.1f} MB (median)")
    return ["", "Checkpoints and memory: " + "; ".join(notes) + "."] if notes else []


def print_section(text: str) -> None:
    print()
    print(text)


HEADER = """\
# Benchmarks

Conveyor's streaming mode (`Pipeline.run`) against a hand-written baseline and two peers,
[pypeln](https://pypi.org/project/pypeln/) and [Bytewax](https://pypi.org/project/bytewax/),
on four workloads, plus the cost of contracts (W5), of dead letters (W6), of checkpoints
(W7), the SQL sinks against hand-written driver loops (W8 PostgreSQL, W9 SQLite) and of
`import conveyor`. Produced by `bench/run.py` (see its docstring for the method); rerun with

```sh
bash bench/setup.sh                       # bench/.venv: conveyor[postgres,parquet], peers
bench/.venv/bin/python bench/run.py --workload all --runs 5
```

This file is bench/run.py's default output (untracked); the tracked BENCHMARKS.md at the
repository root is rewritten only with `--update-benchmarks-md`.

Every measurement is a fresh interpreter; contenders are interleaved round by round; each
result is verified (counts and sums against closed forms) before its time counts; times are
medians. The machine is shared, so absolute times are noise: compare the ratios, which come
from the same run. Sections below are rewritten by `bench/run.py` between their markers;
text outside the markers is kept.
"""


def write_markdown(path: Path, outcomes: list[Outcome]) -> None:
    """Replace each outcome's section between its markers (a new file gets every section,
    in workload order, as placeholders first)."""
    if path.exists():
        text = path.read_text(encoding="utf-8")
    else:
        placeholders = [
            f"<!-- bench:{name}:start -->\n## {wl.title}\n\nNot run yet.\n<!-- bench:{name}:end -->"
            for name, wl in WORKLOADS.items()
        ]
        text = HEADER + "\n" + "\n\n".join(placeholders) + "\n"
    for o in outcomes:
        name = o.workload.name
        start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
        block = f"{start}\n{section(o)}{end}"
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _, block=block: block, text)
            continue
        # A new section goes after the section of the nearest workload before it (in
        # WORKLOADS order), else before that of the nearest one after it, else at the end.
        order = list(WORKLOADS)
        earlier = order[: order.index(name)] if name in order else order
        later = order[order.index(name) + 1 :] if name in order else []
        after = [text.find(f"<!-- bench:{n}:end -->") for n in reversed(earlier)]
        before = [text.find(f"<!-- bench:{n}:start -->") for n in later]
        if any(at >= 0 for at in after):
            at = next(at for at in after if at >= 0)
            at = text.index("-->", at) + len("-->")
            text = text[:at] + "\n\n" + block + text[at:]
        elif any(at >= 0 for at in before):
            at = next(at for at in before if at >= 0)
            text = text[:at] + block + "\n\n" + text[at:]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


# -- environment ---------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    peers = []
    from importlib.metadata import PackageNotFoundError, version

    for name in ("pypeln", "bytewax"):
        try:
            peers.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            peers.append(f"{name} not installed")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": nproc or str(os.cpu_count()),
        "cpu": cpu,
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "os": platform.platform(terse=True),
        "load": load,
        "commit": f"`{commit}`" + src_changes(),
        "peers": ", ".join(peers),
    }


def src_changes() -> str:
    """`` (src/ digest <hash>)``, after ``with uncommitted changes in src/`` if so. The digest
    covers the contents of every file under src/ that git tracks or would track, so two runs
    (or the start and end of one workload) can tell whether they measured the same code,
    whatever was committed in between."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout

    dirty = " with uncommitted changes in src/" if git("status", "--porcelain", "--", "src") else ""
    return f"{dirty} (src/ digest `{src_digest()}`)"


def src_digest() -> str:
    """A hash of the contents of src/ (tracked and untracked, not ignored files)."""
    listing = ["ls-files", "-z", "--cached", "--others", "--exclude-standard", "--", "src"]
    names = subprocess.run(
        ["git", "-C", str(ROOT), *listing], capture_output=True, text=True, check=False
    ).stdout.split("\0")
    digest = hashlib.sha1()
    for name in sorted(n for n in names if n):
        digest.update(name.encode() + b"\0")
        with contextlib.suppress(OSError):  # listed but deleted since
            digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:10]


def utc_date() -> str:
    out = subprocess.run(["date", "-u"], capture_output=True, text=True, check=False).stdout
    return out.strip() or time.strftime("%a %b %d %H:%M:%S UTC %Y", time.gmtime())


def command_line() -> str:
    def rel(p: str) -> str:
        try:
            return str(Path(p).absolute().relative_to(ROOT))
        except ValueError:
            return p

    return shlex.join([rel(sys.executable), rel(sys.argv[0]), *sys.argv[1:]])


def check_conveyor() -> None:
    try:
        import conveyor  # noqa: F401
    except ImportError as exc:
        sys.exit(f"bench/run.py: cannot import conveyor ({exc}); run: bash bench/setup.sh")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workload",
        default="all",
        help="W1, W2, W3, W4, W5, W6, W7, W8, W9, W10, IMPORT, a comma-separated list, or all",
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds per workload (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--output",
        type=Path,
        help="markdown file to write/update (default: bench/results/BENCHMARKS.md, or "
        "bench/results/BENCHMARKS.quick.md with --quick)",
    )
    parser.add_argument(
        "--update-benchmarks-md",
        action="store_true",
        help="also rewrite the run workloads' sections of the tracked BENCHMARKS.md",
    )
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return 0
    check_conveyor()
    names = (
        list(WORKLOADS)
        if args.workload.lower() == "all"
        else [name.strip().upper() for name in args.workload.split(",")]
    )
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown or args.runs < 1:
        parser.error(f"--workload must be one of {', '.join(WORKLOADS)} or all; --runs >= 1")
    tracked = ROOT / "BENCHMARKS.md"
    output = args.output or RESULTS / ("BENCHMARKS.quick.md" if args.quick else "BENCHMARKS.md")
    if output.resolve() == tracked.resolve():
        parser.error("--output is the tracked BENCHMARKS.md: use --update-benchmarks-md")
    if args.update_benchmarks_md and (args.quick or args.no_write):
        parser.error("--update-benchmarks-md takes a full run (no --quick, no --no-write)")
    outputs = [output, *([tracked] if args.update_benchmarks_md else [])]
    RESULTS.mkdir(exist_ok=True)
    machine, command = machine_info(), command_line()
    log(f"bench: {command}\nbench: {machine}")
    outcomes = []
    for name in names:
        wl = WORKLOADS[name]
        started = utc_date()
        if outcomes:  # each workload records its own load average and code state
            machine = machine_info()
        log(f"bench: {wl.title} ({started}; load {machine['load']}; {machine['commit']})")
        for v in wl.variants:
            if not available(v):
                log(f"  {v.key}: {v.requires} is not installed (run bash bench/setup.sh)")
        before = src_digest()
        rows, imports, extra = run_workload(wl, args.runs, args.quick)
        after = src_digest()
        extra["src_digest"] = after
        if after != before:
            extra["src_changed"] = (
                f"the contents of src/ changed during this workload ({before} -> {after})"
            )
            log(f"bench: warning: {extra['src_changed']}")
        outcome = Outcome(wl, rows, imports, extra, started, machine, command, args.runs)
        outcomes.append(outcome)
        print_section(section(outcome))
        raw = RESULTS / f"{name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        raw.write_text(
            json.dumps(
                {
                    "workload": name,
                    "started": started,
                    "command": command,
                    "machine": machine,
                    "extra": extra,
                    "rows": [
                        {
                            "key": r.variant.key,
                            "n": r.n,
                            "samples": [s.__dict__ for s in r.samples],
                            "missing": r.missing,
                        }
                        for r in [*rows, *imports.values()]
                    ],
                },
                indent=1,
            ),
            encoding="utf-8",
        )
        if not args.no_write:
            for path in outputs:  # after each workload: a crash keeps the rest
                write_markdown(path, [outcome])
                log(f"bench: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
