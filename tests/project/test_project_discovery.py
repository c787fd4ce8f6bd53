"""Finding stage files, loading them into stages, and building the pipeline (ADR 0003)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest

from conveyor import PipelineContext
from conveyor.core.stages import BranchStage
from conveyor.errors import ConfigError, ProjectError
from conveyor.project.discovery import (
    discover_stage_files,
    find_pipeline_dir,
    project_root,
)
from conveyor.project.project import load_project
from conveyor.project.run import run_project


def _stages(project: Path) -> Path:
    return project / "src" / "pipeline" / "stages"


def _config(project: Path, text: str) -> Path:
    file = project / "src" / "pipeline" / "config.yaml"
    file.write_text(text, encoding="utf-8")
    return file


def _project_error(project: Path) -> ProjectError:
    with pytest.raises(ProjectError) as info:
        load_project(project)
    return info.value


# --- folders ---------------------------------------------------------------------------


def test_project_folder_or_pipeline_folder(project: Path) -> None:
    pipeline_dir = project / "src" / "pipeline"
    assert find_pipeline_dir(project) == pipeline_dir
    assert find_pipeline_dir(pipeline_dir) == pipeline_dir
    assert project_root(project) == project
    assert project_root(pipeline_dir) == project


def test_missing_stages_folder_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "empty" / "src" / "pipeline").mkdir(parents=True)
    with pytest.raises(ProjectError) as info:
        load_project(tmp_path / "empty")
    assert str(info.value) == (
        f"{(tmp_path / 'empty').resolve()}: no pipeline project here or above: expected "
        "src/pipeline/stages/ (or stages/) with numbered stage files, or "
        "configs/pipeline.yaml with src/<package>/stages/; create one with "
        "'conveyor new PROJECT' (or 'conveyor new --template dataset PROJECT')"
    )
    assert info.value.file == (tmp_path / "empty").resolve()
    assert not isinstance(info.value, ConfigError)


# --- stage files -----------------------------------------------------------------------


def test_stage_files_in_number_order(project: Path) -> None:
    (_stages(project) / "100_late.py").write_text("")
    (_stages(project) / "05_early.py").write_text("")
    files = discover_stage_files(project / "src" / "pipeline")
    assert [(f.number, f.name) for f in files] == [
        (0, "source"),
        (5, "early"),
        (10, "validate"),
        (20, "enrich"),
        (90, "sink"),
        (100, "late"),
    ]
    assert files[0].path == _stages(project) / "00_source.py"


def test_no_stage_files(project: Path) -> None:
    for file in _stages(project).glob("*_*.py"):
        file.unlink()
    error = _project_error(project)
    pipeline_dir = project / "src" / "pipeline"
    assert str(error) == f"{pipeline_dir}: no stage files in stages/; add 00_source.py"
    assert error.file == pipeline_dir


@pytest.mark.parametrize("name", ["enrich.py", "1_one.py", "30_Upper.py", "30-dash.py", "x_30.py"])
def test_badly_named_file(project: Path, name: str) -> None:
    bad = _stages(project) / name
    bad.write_text("")
    error = _project_error(project)
    assert str(error) == f"{bad}: not a stage file name; use NN_name.py (e.g. 10_validate.py)"


def test_two_files_with_one_number(project: Path) -> None:
    twin = _stages(project) / "20_other.py"
    twin.write_text("")
    error = _project_error(project)
    assert str(error) == (
        f"{twin}: number 20 is taken by 20_enrich.py; give one of them a free number"
    )


def test_two_files_with_one_name(project: Path) -> None:
    (_stages(project) / "30_enrich.py").write_text("")
    error = _project_error(project)
    assert f"{_stages(project) / '20_enrich.py'}: another stage file is also named 'enrich'" in (
        str(error)
    )
    assert f"{_stages(project) / '30_enrich.py'}: another stage file is also named 'enrich'" in (
        str(error)
    )


def test_every_problem_is_listed(project: Path) -> None:
    (_stages(project) / "notes.py").write_text("")
    (_stages(project) / "90_extra.py").write_text("")
    lines = str(_project_error(project)).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(
        f"{_stages(project) / '90_sink.py'}: number 90 is taken by 90_extra.py"
    )
    assert lines[1].startswith(f"{_stages(project) / 'notes.py'}: not a stage file name")


def test_zero_stages_in_a_file(project: Path) -> None:
    empty = _stages(project) / "30_nothing.py"
    empty.write_text("from conveyor import MapStage\n\nVALUE = 1\n")
    error = _project_error(project)
    assert str(error) == (
        f"{empty}: a stage file defines exactly one stage (a PipelineStage, Source, Sink or "
        "TaskStage subclass, or one PipelineStage instance); found 0: none"
    )
    assert error.file == empty


def test_two_stages_in_a_file(project: Path) -> None:
    two = _stages(project) / "30_two.py"
    two.write_text(
        "from conveyor import MapStage\n\n"
        "first = MapStage(lambda r: r)\n"
        "second = MapStage(lambda r: r)\n"
        "_private = MapStage(lambda r: r)\n"
    )
    error = _project_error(project)
    assert str(error) == (
        f"{two}: a stage file defines exactly one stage (a PipelineStage, Source, Sink or "
        "TaskStage subclass, or one PipelineStage instance); found 2: first, second"
    )


def test_a_file_that_fails_to_import(project: Path) -> None:
    broken = _stages(project) / "30_broken.py"
    broken.write_text("import json\n\nraise RuntimeError('no database')\n")
    error = _project_error(project)
    assert str(error) == (
        f"{broken}:3: cannot import the stage file: RuntimeError: no database (the line: "
        "raise RuntimeError('no database')); fix it, then run the command again"
    )
    assert (error.file, error.line) == (broken, 3)
    assert isinstance(error.__cause__, RuntimeError)
    assert str(error.__cause__) == "no database"
    assert "pipeline.stages.broken" not in sys.modules


def test_a_file_with_a_syntax_error(project: Path) -> None:
    broken = _stages(project) / "30_broken.py"
    broken.write_text("def oops(:\n")
    error = _project_error(project)
    assert str(error) == (
        f"{broken}:1: cannot import the stage file: SyntaxError: invalid syntax (the line: "
        "def oops(:); fix it, then run the command again"
    )
    assert isinstance(error.__cause__, SyntaxError)


def test_a_name_error_in_a_shared_module_points_at_its_line(project: Path) -> None:
    shared = project / "src" / "pipeline" / "shared" / "broken_helper.py"
    shared.parent.mkdir(exist_ok=True)
    shared.write_text("VALUE = 1\nOTHER = missing_name\n")
    broken = _stages(project) / "30_broken.py"
    broken.write_text("from pipeline.shared.broken_helper import VALUE\n")
    error = _project_error(project)
    assert (error.file, error.line) == (shared, 2)
    assert "NameError: name 'missing_name' is not defined (the line: OTHER = missing_name)" in (
        str(error)
    )


def test_commands_find_the_project_from_a_subfolder(project: Path) -> None:
    assert find_pipeline_dir(_stages(project)) == project / "src" / "pipeline"
    (project / "data" / "deep").mkdir(parents=True)
    assert project_root(project / "data" / "deep") == project


def test_a_source_that_is_not_first(project: Path) -> None:
    moved = _stages(project) / "50_source.py"
    (_stages(project) / "00_source.py").rename(moved)
    error = _project_error(project)
    assert str(error) == f"{moved}: a Source must be the first stage"


def test_task_stages_cannot_mix_with_record_stages(project: Path) -> None:
    (_stages(project) / "30_task.py").write_text(
        "from conveyor.project import TaskStage\n\n"
        "class Task(TaskStage):\n"
        "    def run(self, config):\n        pass\n\n"
        "    def validate(self):\n        return True\n"
    )
    error = _project_error(project)
    assert str(error) == (
        f"{project / 'src' / 'pipeline'}: task stages (run(config)/validate()) cannot be "
        "mixed with record stages; task stages: task"
    )


# --- load_project and the pipeline -----------------------------------------------------


def test_stage_names_come_from_file_names(project: Path) -> None:
    loaded = load_project(project)
    assert [s.name for s in loaded.stages] == ["source", "validate", "enrich", "sink"]
    assert [s.stage.name for s in loaded.stages] == ["source", "validate", "enrich", "sink"]
    assert type(loaded.source).__name__ == "Readings"
    assert type(loaded.sink).__name__ == "JsonLines"
    assert [s.name for s in loaded.middle] == ["validate", "enrich"]
    assert loaded.name == "demo"
    assert loaded.root == project
    assert [s.name for s in loaded.pipeline().stages] == ["validate", "enrich"]


def test_pipeline_name_defaults_to_the_folder(project: Path) -> None:
    _config(project, "stages: {}\n")
    assert load_project(project).name == "demo"


def test_config_params_reach_the_stage(project: Path) -> None:
    _config(project, "stages:\n  source:\n    params: {count: 7}\n")
    loaded = load_project(project, ["stages.sink.params.path=out/x.jsonl"])
    assert loaded.source is not None
    assert loaded.source.config.count == 7  # type: ignore[attr-defined]
    assert len(list(loaded.source.read())) == 7  # type: ignore[arg-type]
    assert loaded.sink is not None
    assert loaded.sink.path == Path("out/x.jsonl")  # type: ignore[attr-defined]


def test_stage_options_over_pipeline_defaults(project: Path) -> None:
    _config(
        project,
        "pipeline:\n  concurrency: 3\n  executor: thread\n"
        "stages:\n  enrich:\n    concurrency: 5\n    ordered: false\n    timeout: 2.5\n"
        "    retry: {attempts: 4, retry_on: [ValueError, json.JSONDecodeError]}\n",
    )
    loaded = load_project(project)
    enrich = loaded.stage_options(loaded.stage("enrich"))
    validate = loaded.stage_options(loaded.stage("validate"))
    assert (enrich.concurrency, enrich.ordered, enrich.timeout) == (5, False, 2.5)
    assert enrich.retry.attempts == 4
    assert enrich.retry.retry_on == (ValueError, json.JSONDecodeError)
    assert (validate.concurrency, validate.ordered) == (3, True)
    assert str(validate.executor.value) == "thread"
    assert validate.retry.retry_on == (ConnectionError, TimeoutError)


def test_unknown_exception_name_in_retry_on(project: Path) -> None:
    file = _config(
        project,
        "stages:\n  enrich:\n    retry:\n      retry_on:\n        - ValueError\n"
        "        - NoSuchError\n",
    )
    loaded = load_project(project)
    with pytest.raises(ConfigError) as info:
        loaded.pipeline()
    assert str(info.value) == (
        f"{file}:6:11: 'NoSuchError' is not an exception class; use a built-in name such as "
        "ConnectionError or a dotted path such as httpx.TransportError"
    )
    assert info.value.key == "stages.enrich.retry.retry_on.1"


@pytest.mark.parametrize("name", ["json.nothing", "no_such_module.Error", "len", "os.path"])
def test_retry_on_names_that_are_not_exceptions(project: Path, name: str) -> None:
    _config(project, f"stages:\n  enrich:\n    retry: {{retry_on: ['{name}']}}\n")
    with pytest.raises(ConfigError, match="is not an exception class"):
        load_project(project).pipeline()


def test_unknown_stage_lookup(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_project(project).stage("enrihc")
    assert str(info.value) == (
        "unknown stage 'enrihc'; did you mean 'enrich'? (stages: source, validate, enrich, sink)"
    )


def _add_metric_stages(project: Path) -> None:
    (_stages(project) / "30_count.py").write_text(
        "from conveyor import AggregateStage\n\nstage = AggregateStage(len)\n"
    )
    (_stages(project) / "40_total.py").write_text(
        "from conveyor import AggregateStage\n\n"
        "stage = AggregateStage(lambda rs: sum(r['celsius'] for r in rs))\n"
    )


BRANCHES = (
    "stages:\n  source:\n    params: {count: 10}\n"
    "branches:\n  metrics:\n    counts: [count]\n    totals: [total]\n"
)


def test_branches_become_one_branch_stage(project: Path) -> None:
    _add_metric_stages(project)
    _config(project, BRANCHES)
    loaded = load_project(project)
    stages = loaded.pipeline().stages
    assert [s.name for s in stages] == ["validate", "enrich", "metrics"]
    branch = stages[-1]
    assert isinstance(branch, BranchStage)
    assert list(branch.branches) == ["counts", "totals"]
    records = [{"sensor": "a", "celsius": 1.0}, {"sensor": "b", "celsius": 2.0}]
    result = asyncio.run(branch.process(records, PipelineContext()))
    assert result.success
    assert result.data == {"counts": 2, "totals": 3.0}


def test_branch_run_writes_one_record_per_arm(project: Path) -> None:
    _add_metric_stages(project)
    _config(project, BRANCHES)
    outcome = run_project(project, handle_signals=False)
    assert outcome.report is not None
    written = (project / "data" / "readings.jsonl").read_text().splitlines()
    total = sum((i % 50) - 10.0 for i in range(10))
    assert [json.loads(line) for line in written] == [{"counts": 10, "totals": total}]


def test_branch_with_a_chain_of_stages(project: Path) -> None:
    _add_metric_stages(project)
    (_stages(project) / "35_double.py").write_text(
        "from conveyor import MapStage\n\n"
        "stage = MapStage(lambda r: {**r, 'celsius': 2 * r['celsius']})\n"
    )
    _config(
        project,
        "branches:\n  metrics:\n    counts: [count]\n    doubled: [double, total]\n",
    )
    branch = load_project(project).pipeline().stages[-1]
    records = [{"sensor": "a", "celsius": 1.0}, {"sensor": "b", "celsius": 2.0}]
    result = asyncio.run(branch.process(records, PipelineContext()))
    assert result.data == {"counts": 2, "doubled": 6.0}


def test_branch_naming_an_unknown_stage(project: Path) -> None:
    file = _config(project, "branches:\n  metrics:\n    counts: [cnt]\n")
    with pytest.raises(ConfigError) as info:
        load_project(project).pipeline()
    assert str(info.value) == (
        f"{file}:3:5: branch 'metrics' names unknown stage 'cnt'; stages: "
        "source, validate, enrich, sink"
    )
    assert info.value.key == "branches.metrics.counts"
