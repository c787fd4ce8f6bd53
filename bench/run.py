"""Conveyor's benchmarks: Conveyor against a hand-written baseline, pypeln and Bytewax.

Usage (after ``bash bench/setup.sh``)::

    bench/.venv/bin/python bench/run.py [--workload W1|W2|W3|W4|all] [--runs N] [--quick]

Method. Every measurement runs in a fresh interpreter (``run.py --child ...``), so no
contender inherits another's heap, threads or pools. The contenders of a workload are
interleaved: round ``r`` runs each of them once, starting one further down the list each
round, so that a slow minute on this shared machine hits all of them alike. Each
contender's result is verified against a closed-form expectation inside the child; a wrong
result is an error and reports no time. Times are medians over ``--runs`` rounds; what is
compared is the ratio of throughputs to the workload's baseline measured in the same run.

The results are printed and written into BENCHMARKS.md at the repository root (each
workload has its own section between markers, so ``--workload W2`` updates W2 only and
text outside the markers is kept). ``--quick`` uses small sizes and writes
``bench/results/BENCHMARKS.quick.md`` instead, unless ``--output`` says otherwise.
"""

from __future__ import annotations

import argparse
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
CHILD_TIMEOUT = 1800.0


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
        target="Conveyor streaming ≥ 0.6x the generator chain's throughput",
        target_ratio=0.6,
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
        target="Conveyor ≥ 0.9x the hand-written asyncio baseline",
        target_ratio=0.9,
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
        target="Conveyor ≥ 0.9x `multiprocessing.Pool(2).imap`",
        target_ratio=0.9,
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
}

W4_IMPORTS = {
    "generators": "python",
    "conveyor": "conveyor",
    "pypeln": "pypeln",
    "bytewax": "bytewax",
}
"""W4: which bare-interpreter baseline each contender's peak RSS is compared with."""

W4_SLACK_MB = 10.0
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


def speed_section(o: Outcome) -> tuple[list[str], list[str]]:
    """Table lines and verdict lines of W1-W3."""
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
        if baseline.ok:
            ratio = baseline.median / row.median
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
    header = ["contender", "setting", "median s", "min-max s", "records/s", "vs baseline", "target"]
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
    if o.extra.get("ms_per_record"):
        lines += [f"Measured CPU cost per record: {o.extra['ms_per_record']:.2f} ms.", ""]
    body, verdicts = memory_section(o) if wl.name == "W4" else speed_section(o)
    lines += body
    lines += ["", f"Target: {wl.target}.", ""]
    lines += verdicts
    if wl.name != "W4":
        lines += [
            "",
            '"vs baseline" is the throughput ratio, baseline median time / contender median '
            "time (higher is better, 1.00x = as fast as the baseline).",
        ]
    return "\n".join(lines) + "\n"


def print_section(text: str) -> None:
    print()
    print(text)


HEADER = """\
# Benchmarks

Conveyor's streaming mode (`Pipeline.run`) against a hand-written baseline and two peers,
[pypeln](https://pypi.org/project/pypeln/) and [Bytewax](https://pypi.org/project/bytewax/),
on four workloads. Produced by `bench/run.py` (see its docstring for the method); rerun with

```sh
bash bench/setup.sh                       # bench/.venv: conveyor (editable) + pypeln + bytewax
bench/.venv/bin/python bench/run.py --workload all --runs 5
```

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
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
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
        "commit": f"`{commit}`" + (" with uncommitted changes in src/" if dirty else ""),
        "peers": ", ".join(peers),
    }


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
        "--workload", default="all", help="W1, W2, W3, W4, a comma-separated list, or all"
    )
    parser.add_argument("--runs", type=int, default=5, help="rounds per workload (median)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--output", type=Path, help="markdown file to write/update")
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
    RESULTS.mkdir(exist_ok=True)
    output = args.output or (
        RESULTS / "BENCHMARKS.quick.md" if args.quick else ROOT / "BENCHMARKS.md"
    )
    machine, command = machine_info(), command_line()
    log(f"bench: {command}\nbench: {machine}")
    outcomes = []
    for name in names:
        wl = WORKLOADS[name]
        started = utc_date()
        log(f"bench: {wl.title} ({started})")
        for v in wl.variants:
            if not available(v):
                log(f"  {v.key}: {v.requires} is not installed (run bash bench/setup.sh)")
        rows, imports, extra = run_workload(wl, args.runs, args.quick)
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
            write_markdown(output, [outcome])  # after each workload: a crash keeps the rest
            log(f"bench: wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
