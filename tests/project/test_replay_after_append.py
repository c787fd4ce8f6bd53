"""A csv Source whose files grew by appending: the next run re-reads every earlier record,
so it retires the earlier runs' letters and a replay delivers each record once."""

from __future__ import annotations

import json
from pathlib import Path

from conveyor.project.datasets import read_dataset
from conveyor.project.replay import replay_project
from conveyor.project.run import run_project
from conveyor.project.scaffold import new_project

CONFIG = """\
pipeline: {name: demo, batch_size: 7, max_dead_letters: 50%}
source: {connector: csv, path: data/in/*.csv, model: "pipeline.contracts.models:Reading"}
stages:
  validate: {persist: {path: data/validated}}
  enrich: {persist: {path: data/enriched, format: jsonl}}
sink: {connector: jsonl, path: data/out.jsonl}
"""


def make(tmp_path: Path) -> Path:
    root = (tmp_path / "demo").resolve()
    new_project(root)
    stages = root / "src" / "pipeline" / "stages"
    (stages / "00_source.py").unlink()
    (stages / "90_sink.py").unlink()
    (root / "src" / "pipeline" / "config.yaml").write_text(CONFIG)
    (root / "data" / "in").mkdir(parents=True)
    (root / "data" / "in" / "a.csv").write_text("sensor,celsius\nr1,12.5\nr2,999\n")
    (root / "data" / "in" / "b.csv").write_text("sensor,celsius\nr3,1.5\n")
    return root


def ids(rows: list[dict]) -> list[str]:
    return sorted(row["sensor"] for row in rows)


def test_a_replay_after_rows_were_appended_delivers_each_record_once(tmp_path: Path) -> None:
    project = make(tmp_path)
    run_project(project, handle_signals=False)  # r2 (a.csv line 3) fails validate
    with (project / "data" / "in" / "b.csv").open("a") as b:
        b.write("r4,3\n")  # a.csv is unchanged: r2 is read, and fails, again
    run_project(project, handle_signals=False)
    validate = project / "src" / "pipeline" / "stages" / "10_validate.py"
    validate.write_text(validate.read_text().replace("<= 60.0", "<= 1000.0"))  # the fix
    replay_project(project, stage="validate", handle_signals=False)
    out = [json.loads(line) for line in (project / "data" / "out.jsonl").read_text().splitlines()]
    expected = ["r1", "r2", "r3", "r4"]
    assert ids(out) == expected  # at HEAD: r2 twice
    assert ids(list(read_dataset(project / "data" / "validated"))) == expected
    assert ids(list(read_dataset(project / "data" / "enriched"))) == expected
