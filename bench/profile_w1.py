"""Where W1's time goes in Conveyor's streaming runner.

Usage (after ``bash bench/setup.sh``)::

    bench/.venv/bin/python bench/profile_w1.py cprofile [--n 1000000] [--batch-size 1000]
    bench/.venv/bin/python bench/profile_w1.py decompose [--n 1000000] [--runs 5]

``cprofile`` runs W1's Conveyor contender once under :mod:`cProfile` in a fresh interpreter,
writes ``bench/results/w1-<batch size>.prof`` and prints the self time per layer (the W1
functions themselves, the per-record loops of the built-in stages, the runner's per-batch
machinery, asyncio, the rest; a built-in function's time goes to the layer of its caller)
and the top functions. cProfile charges every Python call, so it inflates the per-record
layers; ``decompose`` gives the un-profiled picture: fresh interpreters, interleaved
rounds, minimum CPU time (the least disturbed run on a shared machine), for

- the generator chain (W1's baseline),
- a hand-written micro-batch loop without asyncio (islice batches of 1000, one list
  comprehension per stage, the sink's tally): what batching costs in plain Python,
- Conveyor at several batch sizes: the slope of time over the number of micro-batches is
  the runner's cost per micro-batch, the intercept its cost per record.

Neither mode writes BENCHMARKS.md; results go to stdout (and the .prof file).
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

import workloads  # noqa: E402

TAG = "PROFILE-RESULT "


def batched_loop(n: int, **_: Any) -> workloads.Measured:
    """W1 as a hand-written micro-batch loop: no asyncio, no channels, no counters."""

    def go() -> workloads.Tally:
        tally = workloads.Tally()
        source = workloads.records(n)
        validate, enrich, keep = workloads.validate, workloads.enrich, workloads.keep
        while True:
            batch = list(itertools.islice(source, 1000))
            if not batch:
                return tally
            batch = [r for r in batch if validate(r)]
            batch = [enrich(r) for r in batch]
            batch = [r for r in batch if keep(r)]
            tally.add(batch, "double")

    return workloads._timed(go)


CONTENDERS = {
    "generators": (workloads.w1_generators, {}),
    "batched-loop": (batched_loop, {}),
    **{
        f"conveyor-b{b}": (workloads.w1_conveyor, {"batch_size": b}) for b in (100, 250, 1000, 4000)
    },
}


def layer(filename: str, name: str) -> str:
    path = filename.replace(os.sep, "/")
    if path.endswith("bench/workloads.py"):
        return "W1 functions (validate, enrich, keep, source, sink tally)"
    if "/conveyor/core/stages.py" in path:
        return "per-record loops of the built-in stages (core/stages.py)"
    if "/conveyor/runtime/" in path or "/conveyor/core/" in path:
        return "runner machinery (runtime/, core/ minus the stage loops)"
    if "/conveyor/" in path:
        return "other conveyor code"
    if "/asyncio/" in path or name.startswith("<method 'run_once'"):
        return "asyncio event loop"
    return "other"


def profile(n: int, batch_size: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    measured = workloads.w1_conveyor(n, batch_size=batch_size)
    profiler.disable()
    workloads.verify("W1", n, measured)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"w1-{batch_size}.prof"
    profiler.dump_stats(out)
    stats = pstats.Stats(profiler)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    layers: dict[str, float] = {}
    total = 0.0
    for (filename, _line, name), (_cc, _nc, tt, _ct, callers) in raw.items():
        total += tt
        if filename == "~":  # a built-in: charge its self time to its callers' layers
            shares = {c: v[2] for c, v in callers.items()} or {("~", 0, name): tt}
            whole = sum(shares.values()) or 1.0
            for (cf, _cl, cn), part in shares.items():
                key = layer(cf, cn) if cf != "~" else "other"
                layers[key] = layers.get(key, 0.0) + tt * part / whole
        else:
            key = layer(filename, name)
            layers[key] = layers.get(key, 0.0) + tt
    print(
        f"cProfile of W1, n={n:,}, batch_size={batch_size}: wall {measured.seconds:.3f} s "
        f"under the profiler, {total:.3f} s of self time; written to {out}"
    )
    print("\nself time by layer (built-ins charged to their callers):")
    for key, value in sorted(layers.items(), key=lambda kv: -kv[1]):
        print(f"  {value:7.3f} s  {100 * value / total:5.1f}%  {key}")
    print("\ntop 25 functions by self time:")
    stats.sort_stats("tottime").print_stats(25)
    print("top 25 functions by cumulative time:")
    stats.sort_stats("cumulative").print_stats(25)


def child(spec: dict[str, Any]) -> None:
    import conveyor  # noqa: F401 - every contender pays the same heap, none the import time

    func, params = CONTENDERS[spec["key"]]
    cpu = time.process_time()
    measured = func(spec["n"], **params)
    cpu = time.process_time() - cpu
    workloads.verify("W1", spec["n"], measured)
    print(TAG + json.dumps({"seconds": measured.seconds, "cpu": cpu}))


def measure(key: str, n: int) -> dict[str, float]:
    spec = json.dumps({"key": key, "n": n})
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "child", "--spec", spec],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith(TAG):
            result: dict[str, float] = json.loads(line[len(TAG) :])
            return result
    raise RuntimeError(f"{key}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")


def decompose(n: int, runs: int) -> None:
    keys = list(CONTENDERS)
    wall: dict[str, list[float]] = {k: [] for k in keys}
    cpu: dict[str, list[float]] = {k: [] for k in keys}
    for round_ in range(runs):
        shift = round_ % len(keys)
        for key in keys[shift:] + keys[:shift]:
            result = measure(key, n)
            wall[key].append(result["seconds"])
            cpu[key].append(result["cpu"])
            print(
                f"  round {round_ + 1}/{runs} {key}: {result['seconds']:.3f} s wall, "
                f"{result['cpu']:.3f} s CPU",
                flush=True,
            )
    # On a shared machine the minimum is the least disturbed run: the decomposition uses
    # minimum CPU times (medians of wall time are shown beside them).
    low = {k: min(v) for k, v in cpu.items()}
    base = low["generators"]
    print(f"\nW1 decomposition, n={n:,}, {runs} rounds (minimum CPU s; median wall s):")
    for key in keys:
        print(
            f"  {key:16s} {low[key]:.3f} s CPU ({statistics.median(wall[key]):.3f} s wall)  "
            f"{base / low[key]:.2f}x the generator chain  "
            f"{(low[key] - base) / n * 1e9:+.0f} ns/record vs it"
        )
    # The fit stops at 1000: larger micro-batches fall out of the CPU cache (b4000 is
    # slower than b1000), which is not a per-batch cost.
    sizes = [
        (int(k.split("-b")[1]), low[k])
        for k in keys
        if k.startswith("conveyor-b") and int(k.split("-b")[1]) <= 1000
    ]
    xs = [n / b for b, _ in sizes]  # micro-batches per run
    ys = [t for _, t in sizes]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    intercept = my - slope * mx
    print(
        f"\n  least squares over batch sizes {[b for b, _ in sizes]}: "
        f"{slope * 1e6:.1f} µs per micro-batch (all stages and the sink), "
        f"{intercept / n * 1e9:.0f} ns per record at zero batch cost "
        f"(generator chain: {base / n * 1e9:.0f} ns, hand-written batch loop: "
        f"{low['batched-loop'] / n * 1e9:.0f} ns)"
    )
    at1000 = n / 1000 * slope
    print(
        f"  at batch_size=1000: {at1000:.3f} s of {low['conveyor-b1000']:.3f} s is per-batch "
        f"cost, {low['conveyor-b1000'] - at1000 - low['batched-loop']:.3f} s is per-record "
        "cost above the hand-written batch loop"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["cprofile", "decompose", "child"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    workloads.quiet_environment()
    if args.mode == "child":
        child(json.loads(args.spec))
    elif args.mode == "cprofile":
        profile(args.n, args.batch_size)
    else:
        decompose(args.n, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
