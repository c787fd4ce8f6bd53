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
  aggregate=count_sum)`` in ``Pipeline.run`` with checkpoints (a SQLite checkpoint store
  and dead-letter store in a temp folder, the default 1 s interval: each checkpoint holds
  the open windows and their records). The target: >= 0.85x the hand-written loop.
- ``conveyor``: the same without checkpoints (for information).
- ``records+cp``: ``conveyor+cp`` without ``combine=add_up``: each window keeps its
  records until it closes (and every checkpoint holds them), then ``count_sum`` runs once
  over them (for information: what an aggregate that cannot be combined costs).

``count_sum(records)`` returns ``{"count": len(records), "sum": sum of value}``;
``add_up(a, b)`` adds two of them, which lets a window keep one partial value per window
instead of its records (``combine``).

Every measurement runs in a fresh interpreter (this script with ``--child``); contenders
are interleaved round by round (each round starts one further down the list); a result
counts only once verified against an independent group-by of the same events (every
(key, window) once, with its count and sum); the figure is the ratio of median
throughputs to the hand-written loop's, from the same run.
"""

from __future__ import annotations

import argparse
import json
import math
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
CONTENDERS = ("hand", "conveyor+cp", "conveyor", "combine+cp", "records+cp")
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


def child(contender: str, n: int) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    sink = results.extend
    tmp = Path(tempfile.mkdtemp(prefix="w11-"))
    try:
        info: dict[str, Any] = {}
        t0 = time.perf_counter()
        if contender == "hand":
            hand(n, sink, tmp)
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
    proc = subprocess.run(
        [sys.executable, __file__, "--child", contender, "--events", str(n)],
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
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in chosen}
    for round_ in range(args.runs):
        order = chosen[round_ % len(chosen) :] + chosen[: round_ % len(chosen)]
        for contender in order:
            sample = measure(contender, args.events)
            samples[contender].append(sample)
            print(f"round {round_ + 1} {contender:12} {sample['seconds']:.3f}s", flush=True)
    base = statistics.median(s["seconds"] for s in samples["hand"])
    windows = samples["hand"][0]["windows"]
    print(f"\n{args.events:,} events, {windows:,} windows; medians of {args.runs}:")
    summary = {}
    for contender, runs in samples.items():
        seconds = statistics.median(s["seconds"] for s in runs)
        ratio = base / seconds
        per_round = [
            base_s["seconds"] / s["seconds"]
            for base_s, s in zip(samples["hand"], runs, strict=True)
        ]
        summary[contender] = {"seconds": seconds, "ratio": ratio, "per_round": per_round}
        extra = f" (checkpoints: {runs[0].get('checkpoints')})" if "checkpoints" in runs[0] else ""
        rounds = ", ".join(f"{r:.2f}x" for r in per_round)
        print(
            f"  {contender:12} {seconds:.3f}s  {args.events / seconds / 1e6:.2f} M events/s  "
            f"{ratio:.2f}x hand-written; per round {rounds}{extra}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"events": args.events, "samples": samples, "summary": summary}, indent=2)
        )


if __name__ == "__main__":
    main()
