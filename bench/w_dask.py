"""The dask executor against the local process executor and ``multiprocessing.Pool(2)`` on
W3 (CPU-bound), its scaling from 1 to 2 workers, and its per-micro-batch overhead.

Every measurement runs in a fresh interpreter (``--one``), rounds interleave the
contenders, medians are reported, and each W3 result is verified like bench/run.py's (count,
sum of ids, every 31st result recomputed). Contenders:

- ``pool``: ``multiprocessing.Pool(2).imap(burn, chunksize=25)`` (start-up timed);
- ``process``: ``MapStage(burn)`` on ``executor="process"``, 2 workers (start-up timed);
- ``dask2`` / ``dask1``: the same stage on ``executor="dask"`` against a LocalCluster of
  2 / 1 worker processes (1 thread each) started before the timed region, as a cluster
  that outlives the run does (``DaskOptions(scheduler=...)``);
- ``dask2-warm``: ``dask2`` after an untimed run of 4 micro-batches on the same cluster
  (its workers have imported the project's code, as those of a cluster that served
  earlier runs have);
- ``dask2-own``: the run starts and closes its own LocalCluster inside the timed region
  (``DaskOptions(workers=2)``, the ``conveyor run … pipeline.executor=dask`` default).

Overhead: ``MapStage(ident)`` over ``--overhead-batches`` micro-batches of 1 record, on
dask (2 workers) with concurrency 1 (one task at a time: latency) and 4 (throughput),
minus the same run inline; reported as µs per micro-batch.

The clusters' workers run without Dask's statistical profiler, as the executor's own
``LocalCluster`` does (``DaskOptions.profile``); ``--profile`` turns it on everywhere.

    .venv/bin/python bench/w_dask.py --n 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads

W3 = ("pool", "process", "dask2", "dask2-warm", "dask1", "dask2-own")
PROFILE = {"on": False}


def ident_record(r: workloads.Record) -> workloads.Record:
    """The overhead stage: nothing but the trip."""
    return r


def _cluster(workers: int) -> Any:
    """A LocalCluster set up as the executor sets up its own: the workers' statistical
    profiler off (``DaskOptions.profile``; ``--profile`` turns it on)."""
    import dask
    from distributed import LocalCluster

    with (
        warnings.catch_warnings(),
        dask.config.set({"distributed.worker.profile.enabled": PROFILE["on"]}),
    ):
        warnings.simplefilter("ignore")
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )


def _dask_w3(n: int, settings: Any, batch_size: int, concurrency: int) -> workloads.Measured:
    import conveyor as c

    pipeline = c.Pipeline("w3").add_stage(
        c.MapStage(workloads.burn, name="burn"),
        options=c.StageOptions(executor="dask", concurrency=concurrency, dask=settings),
    )

    def go() -> workloads.Tally:
        tally = workloads.Tally()
        report = pipeline.run(
            workloads.records(n),
            lambda batch: workloads.tally_batch(tally, batch),
            batch_size=batch_size,
            dead_letters="memory",
        )
        if report.records_in != n or report.dead_lettered:
            raise workloads.VerificationError(
                f"report: {report.records_in} in, {report.dead_lettered} dead"
            )
        return tally

    return workloads._timed(go)


def one(name: str, n: int, batch_size: int, concurrency: int, batches: int) -> dict[str, Any]:
    """One measurement in this (fresh) process."""
    from conveyor.core.options import DaskOptions

    if name == "pool":
        measured = workloads.w3_pool(n)
    elif name == "process":
        measured = workloads.w3_conveyor(n, batch_size=batch_size, concurrency=concurrency)
    elif name in ("dask1", "dask2", "dask2-warm"):
        cluster = _cluster(2 if name.startswith("dask2") else 1)
        try:
            settings = DaskOptions(scheduler=cluster.scheduler_address, upload=False)
            if name == "dask2-warm":  # a cluster that ran a pipeline before: imports done
                _dask_w3(batch_size * 4, settings, batch_size, concurrency)
            measured = _dask_w3(n, settings, batch_size, concurrency)
        finally:
            cluster.close()
    elif name == "dask2-own":
        own = DaskOptions(workers=2, profile=PROFILE["on"])
        measured = _dask_w3(n, own, batch_size, concurrency)
    elif name.startswith("overhead"):
        return _overhead(name, batches)
    else:
        raise SystemExit(f"unknown contender {name}")
    workloads.verify("W3", n, measured)
    return {"name": name, "seconds": measured.seconds}


def _overhead(name: str, batches: int) -> dict[str, Any]:
    import conveyor as c
    from conveyor.core.options import DaskOptions

    def run(options: Any) -> float:
        pipeline = c.Pipeline("overhead").add_stage(
            c.MapStage(ident_record, name="ident"), options=options
        )
        t0 = time.perf_counter()
        report = pipeline.run(
            workloads.records(batches), lambda batch: None, batch_size=1, dead_letters="memory"
        )
        assert report.records_out == batches
        return time.perf_counter() - t0

    inline = run(c.StageOptions())
    concurrency = 1 if name == "overhead-latency" else 4
    cluster = _cluster(2)
    try:
        settings = DaskOptions(scheduler=cluster.scheduler_address, upload=False)
        run(c.StageOptions(executor="dask", concurrency=concurrency, dask=settings))  # warm
        seconds = run(c.StageOptions(executor="dask", concurrency=concurrency, dask=settings))
    finally:
        cluster.close()
    return {"name": name, "us_per_batch": (seconds - inline) / batches * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--overhead-batches", type=int, default=2000)
    parser.add_argument(
        "--profile", action="store_true", help="the workers' statistical profiler on"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    PROFILE["on"] = args.profile
    if args.one:
        result = one(args.one, args.n, args.batch_size, args.concurrency, args.overhead_batches)
        print(json.dumps(result))
        return
    print(f"load average at start: {os.getloadavg()}")
    print(f"W3 cost per record: {workloads.w3_serial_ms_per_record():.2f} ms")
    times: dict[str, list[float]] = {name: [] for name in W3}
    overhead: dict[str, list[float]] = {"overhead-latency": [], "overhead-throughput": []}
    for round_ in range(args.rounds):
        for name in (*W3, *overhead):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    name,
                    "--n",
                    str(args.n),
                    "--batch-size",
                    str(args.batch_size),
                    "--concurrency",
                    str(args.concurrency),
                    "--overhead-batches",
                    str(args.overhead_batches),
                    *(["--profile"] if args.profile else []),
                ],
                check=True,
                capture_output=True,
                text=True,
                timeout=900,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            if name in times:
                times[name].append(result["seconds"])
            else:
                overhead[name].append(result["us_per_batch"])
            print(f"round {round_ + 1} {name}: {result}", flush=True)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"\nload average at end: {os.getloadavg()}")
    print("| contender | median s (min-max) | records/s |")
    print("|---|---|---|")
    for name, values in times.items():
        print(
            f"| {name} | {median[name]:.2f} ({min(values):.2f}-{max(values):.2f}) | "
            f"{args.n / median[name]:.0f} |"
        )
    print(f"dask2 / pool: {median['pool'] / median['dask2']:.2f}x")
    print(f"dask2 / process: {median['process'] / median['dask2']:.2f}x")
    print(f"dask2-warm / pool: {median['pool'] / median['dask2-warm']:.2f}x")
    print(f"dask2-warm / process: {median['process'] / median['dask2-warm']:.2f}x")
    print(f"dask2-own / pool: {median['pool'] / median['dask2-own']:.2f}x")
    print(f"dask2-own / process: {median['process'] / median['dask2-own']:.2f}x")
    print(f"scaling dask1 -> dask2: {median['dask1'] / median['dask2']:.2f}x")
    for name, values in overhead.items():
        print(f"{name}: {statistics.median(values):.0f} us per micro-batch ({values})")


if __name__ == "__main__":
    main()
