"""SIGKILL in the middle of runs into the JSONL and CSV file sinks, then resume to the end:
the file holds every record that is not a dead letter exactly once, with no torn line.

Each trial runs its pipeline in child processes (the script below) over ``N`` records
``{"id", "name", "value"}``: a MapStage that refuses ``id % 211 == 7`` and the sink, which
refuses ``id % 97 == 13`` (a NaN for JSON, an unknown column for CSV), so both the stage's
and the sink's dead letters (the sink's isolated by bisection) are in play. The first run
is killed with SIGKILL at a random point, chosen by the trial's seed, in one of four ways:

- ``torn``: the n-th ``os.write`` to the file writes a random part of its bytes, then the
  process is killed: a torn micro-batch (and a torn line) at the end of the file;
- ``map``: the map stage kills the process at a random record (the sink is somewhere
  behind, between writes or, with ``executor="thread"``, in one);
- ``timer``: a thread kills it after a random delay, wherever the run is;
- ``fault``: ``CONVEYOR_FAULT=after_sink_commit:k`` or ``checkpoint_write:k`` (the sink
  committed, the checkpoint is not stored yet, or it is written but not committed).

Some trials kill the first resume too. A last resume runs to the end; then the oracle:
no torn line; no id twice in the file or in the dead-letter queue; the file's ids and the
letters' ids disjoint, together the input ids; the letters exactly the refused records;
and the lines in the file exactly the records the final checkpoint says were committed.

Sizes: 10 trials per sink over 20,000 records; ``CONVEYOR_FAULTS=full``: 50 trials over
200,000. The seed is printed (``pytest -rP``); ``CONVEYOR_FAULTS_SEED=<seed>`` repeats it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.dlq import open_dead_letter_store

FULL = os.environ.get("CONVEYOR_FAULTS") == "full"
N = 200_000 if FULL else 20_000
TRIALS = 50 if FULL else 10
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
CHILD_TIMEOUT = 600.0 if FULL else 60.0
COLUMNS = ["id", "name", "value"]

pytestmark = pytest.mark.timeout(3600 if FULL else 300)

CHILD = r"""
import json, math, os, signal, sys, threading

spec = json.loads(sys.argv[1])
kind, n = spec["kind"], spec["n"]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if spec.get("kill_after") is not None:
    timer = threading.Timer(spec["kill_after"], die)
    timer.daemon = True
    timer.start()

if spec.get("torn_at") is not None:  # the n-th write to the sink file lands in part
    real_write, calls = os.write, [0]
    def torn_write(fd, data):
        calls[0] += 1
        if calls[0] == spec["torn_at"]:
            data = bytes(data)
            keep = min(max(1, int(len(data) * spec["torn_part"])), max(1, len(data) - 1))
            real_write(fd, data[:keep])
            die()
        return real_write(fd, data)
    os.write = torn_write  # the sink's os.write only: nothing else here writes with it

from conveyor import MapStage, Pipeline, StageOptions
from conveyor.connectors.files import CsvSink, JsonlSink

def record(i):
    rec = {"id": i, "name": f"r{i}, \"quoted\"", "value": i * 0.5}
    if i % 97 == 13:  # refused by the sink
        if kind == "jsonl":
            rec["value"] = math.nan
        else:
            rec["extra"] = 1
    return rec

kill_at = spec.get("kill_at")
def fn(rec):
    if rec["id"] == kill_at:
        die()
    if rec["id"] % 211 == 7:
        raise ValueError(f"the map refuses {rec['id']}")
    return rec

if kind == "jsonl":
    sink = JsonlSink(spec["out"])
else:
    sink = CsvSink(spec["out"], columns=["id", "name", "value"])
options = {}
if spec.get("sink_thread"):
    options["stage_options"] = {"sink": StageOptions(executor="thread")}
def go(resume):
    return Pipeline("p").add_stage(MapStage(fn, name="m")).run(
        [record(i) for i in range(n)], sink, dead_letters=spec["dl"], checkpoint=spec["cp"],
        checkpoint_every=spec["every"], batch_size=spec["batch"], resume=resume,
        **options,
    )
try:
    try:
        report = go(spec["resume"])
    except Exception as exc:  # nothing to resume: the killed run wrote nothing, run plainly
        if not spec["resume"] or "nothing to resume" not in str(exc):
            raise
        report = go(None)
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(3)
cp = report.checkpoint
print(json.dumps({"status": report.status.value, "written": cp.records["written"],
                  "finished": cp.finished, "replayed": report.replayed,
                  "commits": report.checkpoints_written}))
"""


def _kill_plan(rng: random.Random, mode: str, spec: dict[str, Any], share: float) -> dict[str, Any]:
    """Where a run is killed; ``share``: about how much of the work is left for it."""
    writes = max(1, int(N / spec["batch"] * share))
    every = spec["every"]
    commits = max(1, int(N * share / int(every[:-1]))) if every.endswith("r") else 8
    if mode == "torn":
        return {"torn_at": rng.randint(1, max(1, writes * 3 // 4)), "torn_part": rng.random()}
    if mode == "map":
        return {"kill_at": rng.randrange(N)}
    if mode == "timer":
        return {"kill_after": rng.uniform(0.0, 0.3 * share + N / 100_000)}
    point = rng.choice(["after_sink_commit", "checkpoint_write"])
    return {"fault": f"{point}:{rng.randint(1, max(1, commits // 2))}"}


def _child(tmp: Path, spec: dict[str, Any], plan: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    script = tmp / "child.py"
    if not script.exists():
        script.write_text(CHILD)
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
    child_spec = {**spec, **{k: v for k, v in plan.items() if k != "fault"}}
    if "fault" in plan:
        env["CONVEYOR_FAULT"] = plan["fault"]
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(child_spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode in (0, -9), f"{child_spec}\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.returncode, json.loads(lines[-1]) if done.returncode == 0 else {}


def _torn(path: Path) -> bool:
    """Whether the file ends in the middle of a line."""
    if not path.exists() or path.stat().st_size == 0:
        return False
    with path.open("rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


def _file_ids(kind: str, path: Path) -> list[int]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "the file ends with a torn line"
    if kind == "jsonl":
        return [json.loads(line)["id"] for line in data.split(b"\n")[:-1]]
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0] == COLUMNS, "the header is not the first row"
    assert all(len(row) == len(COLUMNS) for row in rows[1:]), "a torn or merged row"
    assert COLUMNS not in rows[1:], "a second header"
    return [int(row[0]) for row in rows[1:]]


def _letter_ids(dl: Path) -> list[int]:
    with open_dead_letter_store(dl) as store:
        return [letter.record["id"] for letter in store.list()]


MODES = ["torn", "map", "timer", "fault"]


@pytest.mark.parametrize("trial", range(TRIALS))
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_sigkill_mid_run_then_resume_is_exactly_once(tmp_path: Path, kind: str, trial: int) -> None:
    rng = random.Random(f"{SEED}:{kind}:{trial}")
    mode = MODES[trial % len(MODES)]
    out = tmp_path / ("out.jsonl" if kind == "jsonl" else "out.csv")
    spec: dict[str, Any] = {
        "kind": kind,
        "n": N,
        "out": str(out),
        "dl": str(tmp_path / "dl.db"),
        "cp": str(tmp_path / "cp.db"),
        "batch": rng.choice([17, 50, 200]),
        "every": rng.choice(["100r", "1000r", "0.02s"]),
        "sink_thread": rng.random() < 0.5,
    }
    plans = [_kill_plan(rng, mode, spec, 1.0)]
    if rng.random() < 0.3:  # the first resume is killed too
        plans.append(_kill_plan(rng, rng.choice(MODES), spec, 0.5))
    print(
        f"[faults] file sinks seed={SEED} (CONVEYOR_FAULTS_SEED={SEED} repeats it) "
        f"kind={kind} trial={trial} mode={mode} spec={spec} kills={plans}"
    )

    kills, torn, codes = 0, 0, []
    result: dict[str, Any] = {}
    for number, plan in enumerate(plans):
        code, result = _child(tmp_path, {**spec, "resume": number > 0}, plan)
        codes.append(code)
        if code == 0:  # the run ended before its kill point: the chain is complete
            print(f"[faults]   run {number} ended before its kill: {result}")
            break
        kills += 1
        torn += _torn(out)
    assert codes[0] == -9 or mode == "timer", f"the first run was not killed ({plans[0]})"
    for _ in range(3):  # resume to the end
        if result.get("finished"):
            break
        code, result = _child(tmp_path, {**spec, "resume": True}, {})
        assert code == 0
    assert result.get("status") == "completed", result
    assert result["finished"], result
    print(f"[faults]   kills={kills} torn tails={torn} final run: {result}")

    ids = _file_ids(kind, out)
    letters = _letter_ids(tmp_path / "dl.db")
    assert len(ids) == len(set(ids)), "a record is in the file twice"
    assert len(letters) == len(set(letters)), "a record is dead-lettered twice"
    assert not set(ids) & set(letters), "a record is in the file and dead-lettered"
    assert set(ids) | set(letters) == set(range(N)), "a record is lost"
    assert set(letters) == {i for i in range(N) if i % 211 == 7 or i % 97 == 13}
    assert len(ids) == result["written"], "the file holds other than what was committed"
