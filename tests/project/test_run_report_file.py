"""``conveyor run --report run.json``: the figures of the run, its dead letters as the
store holds them, the resume point of a stopped run; bad report names refused up front."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.dlq import open_dead_letter_store
from conveyor.project.scaffold import new_project

CONVEYOR = str(Path(sys.executable).with_name("conveyor"))

SLOW_ENRICH = '''"""Fahrenheit, slowly, refusing every 9th reading."""

import time

from conveyor import MapStage


def enrich(reading):
    time.sleep(0.002)
    if reading["celsius"] == -1.0:
        raise ValueError("no calibration below zero")
    return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32}


stage = MapStage(enrich)
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    new_project(root)
    (root / "src" / "pipeline" / "stages" / "20_enrich.py").write_text(SLOW_ENRICH)
    return root


def conveyor(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CONVEYOR, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_the_json_report_holds_the_run_and_its_dead_letters(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports" / "run.json"
    done = conveyor("run", str(project), "pipeline.batch_size=50", "--report", str(target))
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(target.read_text())
    run = doc["run"]
    # count 1000, celsius (i % 50) - 10: -1.0 for i % 50 == 9, twenty readings.
    assert (run["records_in"], run["dead_lettered"], run["records_out"]) == (1000, 20, 980)
    assert run["sink"] == "data/readings.jsonl"
    assert run["status"] == "completed"
    with open_dead_letter_store(project / ".conveyor" / "dead_letters.db") as store:
        letters = store.list(run_id=run["run_id"])
    assert {letter.stage for letter in letters} == {"enrich"}
    [group] = doc["dead_letters"]
    # Twenty letters of three distinct records (sensor s0, s1 or s2 at -1.0 degrees).
    assert (group["stage"], group["letters"], group["records"]) == ("enrich", 20, 3)
    assert group["error_type"].endswith("ValueError")
    assert {e["id"] for e in group["examples"]} <= {letter.id for letter in letters}
    assert len(group["examples"]) == 3
    by_name = {s["stage"]: s for s in doc["stages"]}
    assert by_name["enrich"]["records_dead"] == 20
    assert by_name["sink"]["records_in"] == 980
    assert doc["checkpoint"]["finished"] is True
    assert doc["resume"] is None
    samples = doc["samples"]
    assert samples["t"] == sorted(samples["t"])
    assert len(samples["t"]) >= 2
    assert set(samples["fill"]) == {c["name"] for c in doc["channels"]}
    assert all(0.0 <= f <= 1.0 for series in samples["fill"].values() for f in series)
    assert samples["records_out"][-1] == 980


def test_a_stopped_run_reports_where_to_resume(project: Path, tmp_path: Path) -> None:
    target = tmp_path / "stopped.json"
    args = [CONVEYOR, "run", str(project), "stages.source.params.count=5000"]
    process = subprocess.Popen(
        [*args, "pipeline.batch_size=50", "--report", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)  # it runs for ~10 s undisturbed
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, out + err
    assert "wrote the run report to" in out
    doc = json.loads(target.read_text())
    run = doc["run"]
    assert run["status"] == "interrupted"
    assert 0 < run["records_in"] < 5000
    assert doc["checkpoint"]["finished"] is False
    position = doc["checkpoint"]["position"]
    resumed_target = tmp_path / "resumed.json"
    done = conveyor("run", *args[2:], "--resume", "--report", str(resumed_target), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    resumed = json.loads(resumed_target.read_text())
    assert resumed["resume"]["position"] == position
    assert resumed["resume"]["checkpoint_run"] == run["run_id"]


@pytest.mark.parametrize(
    ("name", "says"),
    [("run.txt", "name a .html file"), ("folder.html", "is a folder")],
)
def test_a_report_name_it_cannot_write_is_refused_before_the_run(
    project: Path, tmp_path: Path, name: str, says: str
) -> None:
    (tmp_path / "folder.html").mkdir()
    done = conveyor("run", str(project), "--report", str(tmp_path / name))
    assert done.returncode == 1
    assert says in done.stderr
    assert not (project / "data" / "readings.jsonl").exists()  # nothing ran


def test_task_stage_projects_have_no_record_flow_to_report(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    new_project(root, template="dataset")
    done = conveyor("run", str(root), "--report", str(tmp_path / "r.html"))
    assert done.returncode == 1
    assert "no record flow to report" in done.stderr
