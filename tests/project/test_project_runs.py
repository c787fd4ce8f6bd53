"""In-process tests of the CLI commands and of persisted, single-stage and skipped runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import ProjectError
from conveyor.project.datasets import read_dataset
from conveyor.project.run import run_project
from conveyor.project.scaffold import new_project

runner = CliRunner()

PERSIST = """
  validate:
    persist: {path: data/validated}
  enrich:
    persist: {path: data/enriched, format: parquet}
"""


def make(tmp_path: Path, *, persist: bool = False, count: int = 30) -> Path:
    project = tmp_path / "proj"
    new_project(project)
    config = project / "src" / "pipeline" / "config.yaml"
    text = config.read_text().replace("count: 1000", f"count: {count}")
    config.write_text(text + (PERSIST if persist else ""))
    return project


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_run_prints_the_summary_and_writes_the_sink(tmp_path: Path) -> None:
    project = make(tmp_path)
    code, out = invoke("run", str(project))
    assert code == 0, out
    assert "30 in, 30 out" in out
    assert len((project / "data" / "readings.jsonl").read_text().splitlines()) == 30


def test_run_with_a_typo_fails_with_did_you_mean(tmp_path: Path) -> None:
    project = make(tmp_path)
    code, out = invoke("run", str(project), "stages.enrich.concurency=3")
    assert code == 1
    assert "did you mean 'concurrency'" in out


def test_persisted_outputs_are_datasets_and_single_stage_runs_read_them(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    assert run_project(project, handle_signals=False).report is not None
    validated = list(read_dataset(project / "data" / "validated"))
    enriched = list(read_dataset(project / "data" / "enriched"))
    assert len(validated) == len(enriched) == 30
    assert enriched[0]["fahrenheit"] == enriched[0]["celsius"] * 9 / 5 + 32
    # The whole run recorded every persisted stage's fingerprint: unchanged, it is skipped.
    skipped = run_project(project, ["stage=enrich"], handle_signals=False)
    assert (skipped.report, skipped.skipped) == (None, ["enrich"])
    forced = run_project(project, ["stage=enrich"], handle_signals=False, force=True)
    assert forced.report is not None
    assert forced.report.records_in == 30
    assert forced.skipped == []


def test_an_unchanged_stage_is_skipped_and_the_run_says_so(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    run_project(project, handle_signals=False)
    run_project(project, ["stage=enrich"], handle_signals=False)
    again = run_project(project, ["stage=enrich"], handle_signals=False)
    assert again.skipped == ["enrich"]
    assert again.report is None
    code, out = invoke("run", str(project), "stage=enrich")
    assert code == 0
    assert "stage enrich is unchanged (code, config and input): skipped" in out
    # New input content makes it run again.
    run_project(project, ["stage=validate", "stages.source.params.count=12"], handle_signals=False)
    rerun = run_project(project, ["stage=enrich"], handle_signals=False)
    assert rerun.skipped == []
    assert rerun.report is not None
    assert rerun.report.records_in == 12


def test_a_stage_after_an_unpersisted_stage_cannot_run_alone(tmp_path: Path) -> None:
    project = make(tmp_path)
    with pytest.raises(ProjectError, match=r"add `persist: \{path: data/validate\}`"):
        run_project(project, ["stage=enrich"], handle_signals=False)
    code, out = invoke("run", str(project), "stage=enrich")
    assert code == 1
    assert "add `persist: {path: data/validate}`" in out
    assert "re-run with" not in out  # the project must change first: re-running cannot help


def test_a_missing_persisted_input_names_the_stage_to_run_first(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    with pytest.raises(ProjectError, match="stage=validate"):
        run_project(project, ["stage=enrich"], handle_signals=False)


def test_the_sink_can_run_alone_on_the_previous_persisted_output(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    run_project(project, handle_signals=False)
    (project / "data" / "readings.jsonl").unlink()
    result = run_project(project, ["stage=sink"], handle_signals=False)
    assert result.report is not None
    assert result.report.records_out == 30
    assert len((project / "data" / "readings.jsonl").read_text().splitlines()) == 30


def test_the_first_stage_cannot_run_alone(tmp_path: Path) -> None:
    project = make(tmp_path)
    with pytest.raises(ProjectError, match="first stage"):
        run_project(project, ["stage=source"], handle_signals=False)


def test_new_stage_and_check_and_graph(tmp_path: Path) -> None:
    project = make(tmp_path)
    code, out = invoke("new", "stage", "dedupe", "--project", str(project))
    assert code == 0
    assert "55_dedupe.py" in out
    code, out = invoke("check", str(project))
    assert code == 0
    assert "no violations" in out
    code, out = invoke("graph", str(project))
    assert code == 0
    assert "enrich --> dedupe" in out
    svg = tmp_path / "p.svg"
    code, out = invoke("graph", str(project), "--output", str(svg))
    assert code == 0
    assert svg.read_text().startswith("<svg")
    code, out = invoke("graph", str(project), "--output", str(tmp_path / "p.gif"))
    assert code == 1
    assert ".svg" in out


def test_check_reports_a_stage_importing_another(tmp_path: Path) -> None:
    project = make(tmp_path)
    enrich = project / "src" / "pipeline" / "stages" / "20_enrich.py"
    enrich.write_text(enrich.read_text() + "\nfrom pipeline.stages import validate\n")
    code, out = invoke("check", str(project))
    assert code == 1
    assert "20_enrich.py:" in out
    assert "stage-imports-stage" in out


def test_new_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    code, out = invoke("new", str(tmp_path / "x"))
    assert code == 1
    assert "not empty" in out
    code, out = invoke("new", "a", "b", "c")
    assert code != 0


def test_dlq_commands(tmp_path: Path) -> None:
    project = make(tmp_path, count=70)  # celsius runs -10..39: none implausible yet
    validate = project / "src" / "pipeline" / "stages" / "10_validate.py"
    validate.write_text(validate.read_text().replace("<= 60.0", "<= 30.0"))
    code, out = invoke("run", str(project))
    assert code == 3, out  # 9 of 70 dead-lettered: over the default budget of 10%
    assert "exceed max_dead_letters=10% (at most 7 allowed): validate 9" in out
    with open_dead_letter_store(project / ".conveyor" / "dead_letters.db") as store:
        letters = store.list()
    assert len(letters) == 9
    assert all(d.stage == "validate" for d in letters)
    code, out = invoke("dlq", "list", str(project))
    assert code == 0
    assert f"{len(letters)} dead letter(s)" in out
    code, out = invoke("dlq", "show", letters[0].id[-12:], str(project))  # as dlq list shows it
    assert code == 0
    assert "implausible temperature" in out
    code, out = invoke("dlq", "show", "zzzz", str(project))
    assert code == 1
    validate.write_text(validate.read_text().replace("<= 30.0", "<= 60.0"))
    code, out = invoke("dlq", "replay", str(project))
    assert code == 0
    assert f"{len(letters)} in, {len(letters)} out" in out
    code, out = invoke("dlq", "replay", str(project))
    assert code == 0
    assert "no dead letters to replay" in out


def test_contracts_check(tmp_path: Path) -> None:
    project = make(tmp_path)
    contracts = project / "src" / "pipeline" / "contracts"
    v1 = {"type": "object", "properties": {"id": {"type": "integer"}}}
    (contracts / "order.v1.json").write_text(json.dumps(v1))
    (contracts / "order.v2.json").write_text(json.dumps(v1))
    code, out = invoke("contracts", "check", str(project))
    assert code == 0
    assert "backward compatible" in out
    v3 = {**v1, "required": ["id"]}
    (contracts / "order.v3.json").write_text(json.dumps(v3))
    code, out = invoke("contracts", "check", str(project))
    assert code == 1
    assert "required-added" in out
    assert "'id'" in out


def test_version_and_no_project(tmp_path: Path) -> None:
    assert invoke("version")[1].startswith("conveyor ")
    code, out = invoke("run", str(tmp_path))
    assert code == 1
    assert "conveyor new" in out


def test_a_stage_fed_by_the_source_reruns_when_the_source_params_change(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    run_project(project, ["stage=validate"], handle_signals=False)
    assert run_project(project, ["stage=validate"], handle_signals=False).skipped == ["validate"]
    changed = run_project(
        project, ["stage=validate", "stages.source.params.count=7"], handle_signals=False
    )
    assert changed.skipped == []
    assert changed.report is not None
    assert changed.report.records_in == 7


def test_persist_on_the_source_is_refused(tmp_path: Path) -> None:
    project = make(tmp_path)
    code, out = invoke("run", str(project), "stages.source.persist.path=data/raw")
    assert code == 1
    assert "persist the stage after it" in out


def test_dvc_command_writes_dvc_yaml(tmp_path: Path) -> None:
    project = make(tmp_path, persist=True)
    code, out = invoke("dvc", str(project))
    assert code == 0
    assert "dvc repro" in out
    text = (project / "dvc.yaml").read_text()
    assert "cmd: conveyor run . stage=enrich" in text
    (project / "dvc.yaml").write_text("stages: {}\n")
    code, out = invoke("dvc", str(project))
    assert code == 1


CLASS_STAGE = '''"""A stage class defined in the stage file itself."""

from conveyor import PipelineStage, StageResult
from pipeline.shared.units import to_fahrenheit


class Enrich(PipelineStage[list[dict], list[dict]]):
    async def process(self, data, context):
        out = [{**r, "fahrenheit": to_fahrenheit(r["celsius"])} for r in data]
        return StageResult.ok(out)
'''


def test_a_stage_class_of_a_project_runs_on_spawned_process_workers(tmp_path: Path) -> None:
    import threading

    project = make(tmp_path, count=40)
    (project / "src" / "pipeline" / "stages" / "20_enrich.py").write_text(CLASS_STAGE)
    # Another thread is alive, so workers start from a forkserver and must import the
    # stage's module (named pipeline.stages.enrich, from a file starting with a digit).
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        result = run_project(
            project,
            ["stages.enrich.executor=process", "stages.enrich.workers=2", "pipeline.batch_size=10"],
            handle_signals=False,
        )
    finally:
        stop.set()
        other.join()
    assert result.report is not None
    assert result.report.records_out == 40
    assert result.report.dead_lettered == 0
    lines = (project / "data" / "readings.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["fahrenheit"] == json.loads(lines[0])["celsius"] * 9 / 5 + 32
