"""Windows (issue 12's W5, here W11: W5 is the input-contract workload of run.py): a
tumbling window per key against a hand-written loop.

Usage::

    .venv/bin/python bench/w_windows.py [--events N] [--runs R] [--only A,B] [--json FILE]

The events: ``N`` (default 1,000,000) dicts ``{"key": one of 100 keys, "ts": event time in
seconds, "value": int}``, about 1,000 events per second of event time, each up to 2 s older
than the newest before it (bounded disorder), generated lazily by the same function for
every contender (inside the timed region). The job: per key, a tumbling 10-second window
computing the count and the sum of ``value``; one result per (key, window) into the sink
(a list), each result ``{"key", "start", "end", "value": {"count", "sum"}}``.

- ``hand``: the baseline, a hand-written single pass: a dict of open windows (start ->
  key -> [count, sum]) and a watermark (max ts - 2 s); when the watermark passes a
  window's end, its results go to the sink (in lists of 1,000).
- ``conveyor+cp``: ``window(tumbling=10, time="ts", key="key", max_out_of_orderness=2,
  aggregate=Stats("value", "count", "sum"))`` in ``Pipeline.run`` with checkpoints (a
  SQLite checkpoint store and dead-letter store in a temp folder, the default 1 s
  interval: each checkpoint holds the open windows' state). The target: >= 0.85x the
  hand-written loop, and ahead of Bytewax.
- ``conveyor``: the same without checkpoints (for information).
- ``combine+cp``: ``conveyor+cp`` with ``aggregate=count_sum, combine=add_up`` (a Python
  aggregate that can be combined: one partial value per window; for information).
- ``records+cp``: ``aggregate=count_sum`` without ``combine``: each window keeps its
  records until it closes (and every checkpoint holds them), then ``count_sum`` runs once
  over them (for information: what an aggregate that cannot be combined costs).
- ``bytewax``: Bytewax 0.21's windowing, ``bytewax.operators.windowing.fold_window`` over
  the stream keyed on ``key`` (``op.key_on``), ``EventClock(ts_getter,
  wait_for_system_duration=timedelta(seconds=2))`` (``ts_getter`` turns ``ts`` into an
  aware UTC datetime, 1970-01-01 + ``ts`` s, inside the timed region: Bytewax needs
  datetimes) and ``TumblingWindower(length=timedelta(seconds=10), align_to=1970-01-01
  UTC)``; the accumulator is a ``[count, sum]`` list (``builder``, ``folder``, ``merger``);
  ``run_main`` (one worker) over ``TestingSource(events(n), batch_size=1000)``; each
  window's value (``WindowOut.down``: ``(key, (window_id, [count, sum]))``) becomes the
  same result dict, start = ``window_id * 10`` s (Bytewax's own ``open_time = align_to +
  length * window_id``), into the same list through a custom sink (one ``extend`` per
  batch). Bytewax's clock is per key and its watermark also advances with system time
  since the key's newest event; items it deems late (``WindowOut.late``) are counted and
  fail the verification like any missing record. No recovery (Bytewax's checkpoints) is
  configured: this is the figure to compare with ``conveyor`` as much as ``conveyor+cp``.

``count_sum(records)`` returns ``{"count": len(records), "sum": sum of value}``;
``add_up(a, b)`` adds two of them, which lets a window keep one partial value per window
instead of its records (``combine``).

Every measurement runs in a fresh interpreter (this script with ``--child``), which imports
what its contender needs (Conveyor and ``conveyor.runtime``, or Bytewax) before the clock
starts, as ``bench/run.py`` does (``import conveyor`` has its own workload); contenders
are interleaved round by round (each round starts one further down the list); a result
counts only once verified against an independent group-by of the same events (every
(key, window) once, with its count and sum); the figure is the ratio of median
throughputs to the hand-written loop's, from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

KEYS = [f"sensor-{i:02d}" for i in range(100)]
SIZE = 10
DISORDER = 2.0
CONTENDERS = ("hand", "conveyor+cp", "conveyor", "combine+cp", "records+cp", "bytewax")
TELEMETRY_ENV = {
    "OTEL_SDK_DISABLED": "true",
    "DO_NOT_TRACK": "1",
    "BYTEWAX_DATAFLOW_API_ENABLED": "",
}
"""As bench/workloads.py's: every child runs with Bytewax's telemetry off."""
AGGREGATES = {
    "conveyor+cp": "stats",
    "conveyor": "stats",
    "combine+cp": "combine",
    "records+cp": "records",
}


def events(n: int) -> Iterator[dict[str, Any]]:
    """The stream: event ``i`` at ``i / 1000`` seconds minus a delay in [0, 2) s."""
    keys = KEYS
    for i in range(n):
        h = (i * 2654435761) & 0xFFFFFFFF
        yield {"key": keys[h % 100], "ts": i / 1000 - (h >> 8) % 2000 / 1000, "value": i % 1000}


def count_sum(records: list[dict[str, Any]]) -> dict[str, int]:
    """The aggregate (AggregateStage's contract: a function of the window's records)."""
    return {"count": len(records), "sum": sum(r["value"] for r in records)}


def add_up(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    """``combine``: two values of :func:`count_sum` as one."""
    return {"count": a["count"] + b["count"], "sum": a["sum"] + b["sum"]}


# -- contenders -------------------------------------------------------------------------------


def hand(n: int, sink: Callable[[list[dict[str, Any]]], None], _: Path) -> None:
    """A single pass with a dict of open windows and a watermark."""
    open_: dict[float, dict[str, list[int]]] = {}
    next_end = math.inf
    mx = -math.inf
    out: list[dict[str, Any]] = []
    for e in events(n):
        ts = e["ts"]
        if ts > mx:
            mx = ts
            if mx - DISORDER >= next_end:
                wm = mx - DISORDER
                for start in sorted(open_):
                    end = start + SIZE
                    if end > wm:
                        break
                    for key, (count, total) in open_.pop(start).items():
                        out.append(
                            {
                                "key": key,
                                "start": start,
                                "end": end,
                                "value": {"count": count, "sum": total},
                            }
                        )
                next_end = min(open_) + SIZE if open_ else math.inf
                if len(out) >= 1000:
                    sink(out)
                    out = []
        start = ts - ts % SIZE
        by_key = open_.get(start)
        if by_key is None:
            by_key = open_[start] = {}
            if start + SIZE < next_end:
                next_end = start + SIZE
        acc = by_key.get(e["key"])
        if acc is None:
            by_key[e["key"]] = [1, e["value"]]
        else:
            acc[0] += 1
            acc[1] += e["value"]
    for start in sorted(open_):
        for key, (count, total) in open_[start].items():
            out.append(
                {
                    "key": key,
                    "start": start,
                    "end": start + SIZE,
                    "value": {"count": count, "sum": total},
                }
            )
    sink(out)


def conveyor_run(
    n: int,
    sink: Callable[[list[dict[str, Any]]], None],
    tmp: Path,
    *,
    checkpoint: bool,
    aggregate: str = "stats",
) -> dict[str, Any]:
    from conveyor import Pipeline, Stats, window

    stage = window(
        tumbling=SIZE,
        time="ts",
        key="key",
        max_out_of_orderness=DISORDER,
        aggregate=Stats("value", "count", "sum") if aggregate == "stats" else count_sum,
        combine=add_up if aggregate == "combine" else None,
        name="w",
    )
    pipeline = Pipeline("w11").add_stage(stage)
    options: dict[str, Any] = {"handle_signals": False}
    if checkpoint:
        options.update(checkpoint=tmp / "checkpoints.db", dead_letters=tmp / "letters.db")
    else:
        options.update(dead_letters="memory")
    report = pipeline.run(events(n), sink, **options)
    stats = report.stage("w")
    info = {
        "absorbed": stats.absorbed,
        "late": stats.late,
        "checkpoints": report.checkpoints_written,
    }
    if report.records_in != n or report.dead_lettered or stats.absorbed != n:
        raise AssertionError(f"report: {report.summary()}")
    if checkpoint and not (report.checkpoint and report.checkpoint.finished):
        raise AssertionError("no finished checkpoint")
    return info


def bytewax_run(n: int, sink: Callable[[list[dict[str, Any]]], None], _: Path) -> dict[str, Any]:
    """Bytewax 0.21: ``fold_window`` with an ``EventClock`` and a ``TumblingWindower``."""
    from datetime import UTC, datetime, timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import TestingSource, run_main

    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    late: list[int] = [0]

    class Part(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            sink(items)

    class Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Part:
            return Part()

    class LatePart(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            late[0] += len(items)

    class LateSink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> LatePart:
            return LatePart()

    def ts_of(e: dict[str, Any]) -> datetime:
        return epoch + timedelta(seconds=e["ts"])

    def folder(acc: list[int], e: dict[str, Any]) -> list[int]:
        acc[0] += 1
        acc[1] += e["value"]
        return acc

    def merger(a: list[int], b: list[int]) -> list[int]:
        return [a[0] + b[0], a[1] + b[1]]

    def result(key_item: tuple[str, tuple[int, list[int]]]) -> dict[str, Any]:
        key, (window_id, (count, total)) = key_item
        start = float(window_id * SIZE)
        return {
            "key": key,
            "start": start,
            "end": start + SIZE,
            "value": {"count": count, "sum": total},
        }

    flow = Dataflow("w11")
    up = op.input("in", flow, TestingSource(events(n), batch_size=1000))
    keyed = op.key_on("key", up, lambda e: e["key"])
    clock = EventClock(ts_of, wait_for_system_duration=timedelta(seconds=DISORDER))
    windower = TumblingWindower(length=timedelta(seconds=SIZE), align_to=epoch)
    out = fold_window("w", keyed, clock, windower, lambda: [0, 0], folder, merger)
    op.output("out", op.map("result", out.down, result), Sink())
    op.output("late", out.late, LateSink())
    run_main(flow)
    if late[0]:
        raise AssertionError(f"bytewax: {late[0]} events deemed late")
    return {"late": late[0]}


# -- a measurement ----------------------------------------------------------------------------


def expected(n: int) -> dict[tuple[str, float], tuple[int, int]]:
    """The independent group-by: (key, window start) -> (count, sum)."""
    groups: dict[tuple[str, float], list[int]] = {}
    for e in events(n):
        ts = e["ts"]
        acc = groups.setdefault((e["key"], ts - ts % SIZE), [0, 0])
        acc[0] += 1
        acc[1] += e["value"]
    return {k: (c, s) for k, (c, s) in groups.items()}


def prepare(contender: str) -> None:
    """Import what the contender needs before its clock starts, as bench/run.py does
    (``import conveyor`` is timed by its IMPORT workload, not in each throughput figure)."""
    if contender == "bytewax":
        import bytewax.operators
        import bytewax.operators.windowing
        import bytewax.outputs
        import bytewax.testing  # noqa: F401
    elif contender != "hand":
        import conveyor.runtime  # noqa: F401  (loaded on a first run; as bench/workloads.py)
        from conveyor import Pipeline, Stats, window  # noqa: F401


def child(contender: str, n: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    sink = results.extend
    tmp = Path(tempfile.mkdtemp(prefix="w11-"))
    try:
        info: dict[str, Any] = {}
        prepare(contender)
        t0 = time.perf_counter()
        if contender == "hand":
            hand(n, sink, tmp)
        elif contender == "bytewax":
            info = bytewax_run(n, sink, tmp)
        else:
            info = conveyor_run(
                n,
                sink,
                tmp,
                checkpoint=contender.endswith("+cp"),
                aggregate=AGGREGATES[contender],
            )
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    want = expected(n)
    got: dict[tuple[str, float], tuple[int, int]] = {}
    for r in results:
        place = (r["key"], r["start"])
        if place in got:
            raise AssertionError(f"{contender}: window {place} twice")
        if r["end"] != r["start"] + SIZE:
            raise AssertionError(f"{contender}: window {place} ends at {r['end']}")
        got[place] = (r["value"]["count"], r["value"]["sum"])
    if got != want:
        missing = len(want.keys() - got.keys())
        wrong = sum(1 for k in want.keys() & got.keys() if want[k] != got[k])
        raise AssertionError(f"{contender}: {missing} windows missing, {wrong} wrong")
    return {"contender": contender, "seconds": seconds, "windows": len(got), **info}


def measure(contender: str, n: int) -> dict[str, Any]:
    env = dict(os.environ)
    for key, value in TELEMETRY_ENV.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", contender, "--events", str(n)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])  # type: ignore[no-any-return]
    raise RuntimeError(f"{contender} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=CONTENDERS, default=None)
    parser.add_argument(
        "--only",
        default=",".join(CONTENDERS),
        help="the contenders to run, comma-separated (hand always runs)",
    )
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.events)), flush=True)
        return
    chosen = ("hand", *(c for c in CONTENDERS if c != "hand" and c in args.only.split(",")))
    print(describe(), flush=True)
    digest = src_digest()
    print("load average at start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()), flush=True)
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in chosen}
    for round_ in range(args.runs):
        order = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
        for contender in order:
            try:
                sample = measure(contender, args.events)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                # A result that fails its verification (or a crash) reports no time.
                sample = {"contender": contender, "error": str(exc)[-2000:]}
                print(f"round {round_ + 1} {contender:12} NOT VERIFIED: {exc}", flush=True)
            else:
                print(f"round {round_ + 1} {contender:12} {sample['seconds']:.3f}s", flush=True)
            samples[contender].append(sample)
    print("load average at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()), flush=True)
    if src_digest() != digest:
        print(f"WARNING: src/ changed during the run ({digest} -> {src_digest()})", flush=True)
    verified = {c: [s for s in runs if "seconds" in s] for c, runs in samples.items()}
    if not verified["hand"]:
        raise SystemExit("the hand-written baseline was never verified")
    base = statistics.median(s["seconds"] for s in verified["hand"])
    windows = verified["hand"][0]["windows"]
    print(f"\n{args.events:,} events, {windows:,} windows; medians of {args.runs}:")
    summary: dict[str, Any] = {}
    for contender, runs in samples.items():
        good = verified[contender]
        if not good:
            summary[contender] = {"error": runs[0].get("error")}
            print(f"  {contender:12} not verified in any round (no time reported)")
            continue
        seconds = statistics.median(s["seconds"] for s in good)
        ratio = base / seconds
        per_round = [
            base_s["seconds"] / s["seconds"]
            for base_s, s in zip(samples["hand"], runs, strict=True)
            if "seconds" in base_s and "seconds" in s
        ]
        summary[contender] = {
            "seconds": seconds,
            "min": min(s["seconds"] for s in good),
            "max": max(s["seconds"] for s in good),
            "ratio": ratio,
            "per_round": per_round,
            "verified": len(good),
            "rounds": len(runs),
        }
        extra = f" (checkpoints: {good[0].get('checkpoints')})" if "checkpoints" in good[0] else ""
        if len(good) < len(runs):
            extra += f" ({len(runs) - len(good)} of {len(runs)} rounds NOT VERIFIED)"
        rounds = ", ".join(f"{r:.2f}x" for r in per_round)
        print(
            f"  {contender:12} {seconds:.3f}s ({summary[contender]['min']:.3f}-"
            f"{summary[contender]['max']:.3f})  {args.events / seconds / 1e6:.2f} M events/s  "
            f"{ratio:.2f}x hand-written; per round {rounds}{extra}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"events": args.events, "samples": samples, "summary": summary}, indent=2)
        )


def describe() -> str:
    """Python, CPUs, Conveyor's commit and Bytewax's version, for the write-up."""
    from importlib import metadata

    try:
        bytewax = metadata.version("bytewax")
    except metadata.PackageNotFoundError:
        bytewax = "not installed"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return (
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, Conveyor at {commit or '?'}"
        f"{src_changes()}, bytewax {bytewax}"
    )


def src_changes() -> str:
    """As bench/run.py's: whether src/ has uncommitted changes, and a digest of it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import src_changes as changes

    return changes()


def src_digest() -> str:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from run import src_digest as digest

    return digest()


if __name__ == "__main__":
    main()
