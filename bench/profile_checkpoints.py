"""Where a run with checkpoints spends its extra time (W7): the checkpointer's own calls, timed.

Usage (after ``bash bench/setup.sh``)::

    bench/.venv/bin/python bench/profile_checkpoints.py [--shape W1|W4|both] [--n 1000000]
                                                        [--runs 7]

Each run is W7's contender (``bench/workloads.py:w7_conveyor``) in a fresh interpreter,
checkpoints on and off interleaved round by round. With checkpoints on, the methods of
``conveyor/runtime/checkpoints.py:Checkpointer`` are wrapped (from outside: src/ is not
changed) to add up the wall-clock seconds spent in ``prepare`` (opening the SQLite store,
the first checkpoint), ``after_write`` (the check after each write, commits included),
``commit`` and, inside it, the store's ``save`` (the SQLite transaction and its fsync, in
a worker thread), and around them ``Checkpointer.__init__`` (opening the store: the file,
WAL, the table), ``close``, and the runner's ``StreamRunner._prepare_checkpoints`` (the
whole set-up: fingerprint, store, ``prepare``, superseding letters). What is left of the
on/off difference is outside the checkpointer.
Prints medians and minimums of the run's wall-clock and CPU seconds; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

TAG = "PROFILE-RESULT "


def child(shape: str, n: int, checkpoint: bool) -> dict[str, Any]:
    import workloads

    from conveyor.core import checkpoint as core_checkpoint
    from conveyor.runtime import checkpoints, runner

    keys = ["setup", "init", "prepare", "after_write", "commit", "save", "close"]
    spent: dict[str, float] = dict.fromkeys(keys, 0.0)
    calls: dict[str, int] = dict.fromkeys(keys, 0)
    cls = checkpoints.Checkpointer
    prepare, after_write, commit = cls.prepare, cls.after_write, cls.commit
    save = core_checkpoint.SqliteCheckpointStore.save

    def wrap_sync(owner: Any, name: str, key: str) -> None:
        inner = getattr(owner, name)

        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(self, *args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - t0
                calls[key] += 1

        setattr(owner, name, timed)

    wrap_sync(runner.StreamRunner, "_prepare_checkpoints", "setup")
    wrap_sync(cls, "__init__", "init")
    wrap_sync(cls, "close", "close")

    def timed_prepare(self: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return prepare(self)
        finally:
            spent["prepare"] += time.perf_counter() - t0
            calls["prepare"] += 1

    async def timed_after_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await after_write(self, *args, **kwargs)
        finally:
            spent["after_write"] += time.perf_counter() - t0
            calls["after_write"] += 1

    async def timed_commit(self: Any, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await commit(self, *args, **kwargs)
        finally:
            spent["commit"] += time.perf_counter() - t0
            calls["commit"] += 1

    def timed_save(self: Any, *args: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return save(self, *args)
        finally:
            spent["save"] += time.perf_counter() - t0
            calls["save"] += 1

    cls.prepare = timed_prepare  # type: ignore[method-assign]
    cls.after_write = timed_after_write  # type: ignore[method-assign]
    cls.commit = timed_commit  # type: ignore[method-assign]
    core_checkpoint.SqliteCheckpointStore.save = timed_save  # type: ignore[method-assign]
    cpu0 = time.process_time()
    measured = workloads.w7_conveyor(n, shape=shape, checkpoint=checkpoint)
    cpu = time.process_time() - cpu0
    workloads.verify("W7", n, measured)
    return {"seconds": measured.seconds, "cpu": cpu, "spent": spent, "calls": calls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="both", choices=["W1", "W4", "both"])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(TAG + json.dumps(child(spec["shape"], spec["n"], spec["checkpoint"])))
        return 0
    shapes = ["W1", "W4"] if args.shape == "both" else [args.shape]
    spent_keys = ["setup", "init", "prepare", "after_write", "commit", "save", "close"]
    for shape in shapes:
        results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
        for round_ in range(args.runs):
            order = [False, True] if round_ % 2 == 0 else [True, False]
            for on in order:
                spec = json.dumps({"shape": shape, "n": args.n, "checkpoint": on})
                out = subprocess.run(
                    [sys.executable, __file__, "--child", spec],
                    capture_output=True,
                    text=True,
                    check=False,
                    env={**os.environ, "PYTHONHASHSEED": "0"},
                )
                line = next((x for x in out.stdout.splitlines() if x.startswith(TAG)), None)
                if line is None:
                    print(f"{shape} on={on}: failed: {out.stderr.strip().splitlines()[-3:]}")
                    continue
                results[on].append(json.loads(line[len(TAG) :]))
        print(f"\n{shape}, n={args.n:,}, {args.runs} rounds (seconds: median / min)")
        for on in (False, True):
            rs = results[on]
            if not rs:
                continue
            wall = [r["seconds"] for r in rs]
            cpu = [r["cpu"] for r in rs]
            print(
                f"  checkpoints {'on ' if on else 'off'}: wall {statistics.median(wall):.3f} / "
                f"{min(wall):.3f}, CPU {statistics.median(cpu):.3f} / {min(cpu):.3f}"
            )
            if on:
                for key in spent_keys:
                    vals = [r["spent"][key] for r in rs]
                    count = statistics.median(r["calls"][key] for r in rs)
                    print(
                        f"    in {key:<12} {statistics.median(vals) * 1000:7.1f} ms "
                        f"(median; {count:g} calls)"
                    )
        if results[False] and results[True]:
            pairs = [
                b["seconds"] / a["seconds"]
                for a, b in zip(results[True], results[False], strict=False)
            ]
            print(
                f"  on/off throughput, paired by round: median {statistics.median(pairs):.2f}x "
                f"(min {min(pairs):.2f}x, max {max(pairs):.2f}x)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
