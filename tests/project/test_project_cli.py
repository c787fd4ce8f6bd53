"""Running projects: ``run_project`` in process, and the ``conveyor`` command end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _cli import conveyor as _conveyor
from _cli import flat as _flat

from conveyor.dlq import open_dead_letter_store
from conveyor.errors import ConfigError, ProjectError
from conveyor.project.run import run_project


def _stages(project: Path) -> Path:
    return project / "src" / "pipeline" / "stages"


def _plant_invalid_reading(project: Path) -> None:
    source = _stages(project) / "00_source.py"
    source.write_text(
        source.read_text().replace(
            '            yield {"sensor": f"s{i % 3}", "celsius": (i % 50) - 10.0}\n',
            '            yield {"sensor": f"s{i % 3}", "celsius": (i % 50) - 10.0}\n'
            '        yield {"sensor": "broken", "celsius": 999.0}\n',
        )
    )


# --- run_project -----------------------------------------------------------------------


def test_whole_run_writes_the_sink_relative_to_the_project(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outcome = run_project(project, handle_signals=False)
    report = outcome.report
    assert report is not None
    assert report.records_in == 1000
    assert [(s.name, s.received, s.emitted) for s in report.stages] == [
        ("validate", 1000, 1000),
        ("enrich", 1000, 1000),
        ("sink", 1000, 1000),
    ]
    assert report.dead_lettered == 0
    assert Path.cwd() == elsewhere
    lines = (project / "data" / "readings.jsonl").read_text().splitlines()
    assert len(lines) == 1000
    assert json.loads(lines[0]) == {"sensor": "s0", "celsius": -10.0, "fahrenheit": 14.0}
    assert not (elsewhere / "data").exists()
    assert (project / ".conveyor" / "dead_letters.db").exists()
    assert not (elsewhere / ".conveyor").exists()


def test_run_from_the_pipeline_folder(project: Path) -> None:
    outcome = run_project(project / "src" / "pipeline", handle_signals=False)
    assert outcome.report is not None
    assert outcome.project.root == project
    assert (project / "data" / "readings.jsonl").exists()


def test_overrides_change_params(project: Path) -> None:
    outcome = run_project(
        project,
        ["stages.source.params.count=10", "stages.sink.params.path=out/ten.jsonl"],
        handle_signals=False,
    )
    assert outcome.report is not None
    assert outcome.report.records_in == 10
    assert len((project / "out" / "ten.jsonl").read_text().splitlines()) == 10


def test_override_error_stops_the_run(project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_project(project, ["stages.enrich.concurency=3"], handle_signals=False)
    assert str(info.value).startswith(
        "command line: unknown key 'concurency' in stages.enrich; did you mean 'concurrency'?"
    )
    assert not (project / "data").exists()


def test_invalid_reading_goes_to_the_project_dlq(project: Path) -> None:
    _plant_invalid_reading(project)
    outcome = run_project(project, ["stages.source.params.count=5"], handle_signals=False)
    report = outcome.report
    assert report is not None
    assert report.records_in == 6
    assert report.dead_lettered == 1
    store_path = project / ".conveyor" / "dead_letters.db"
    assert Path(report.dead_letter_store) == store_path
    with open_dead_letter_store(store_path) as store:
        letters = store.list()
    assert len(letters) == 1
    assert letters[0].stage == "validate"
    assert letters[0].record == {"sensor": "broken", "celsius": 999.0}
    assert "implausible temperature 999.0" in letters[0].message
    assert len((project / "data" / "readings.jsonl").read_text().splitlines()) == 5


def test_single_stage_run_without_persisted_input_is_refused(project: Path) -> None:
    # without `persist:` on the stage before, a single-stage run has no input to read
    with pytest.raises(ProjectError, match="'enrich'"):
        run_project(project, ["stage=enrich"], handle_signals=False)
    with pytest.raises(ConfigError, match="unknown stage 'enrihc'; did you mean 'enrich'"):
        run_project(project, ["stage=enrihc"], handle_signals=False)
    with pytest.raises(ConfigError, match=r"stage= names no stage: write stage=NAME .*"):
        run_project(project, ["stage="], handle_signals=False)


TASK = '''"""A seed-002 task stage."""

from pathlib import Path

from conveyor.project import StageConfig, TaskStage


class {cls}(TaskStage):
    class Config(StageConfig):
        ok: bool = True

    def __init__(self, config: Config) -> None:
        self.config = config

    def validate(self) -> bool:
        return self.config.ok

    def run(self, config: Config) -> None:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "{name}.txt").write_text(config.input_dir)
        with open("order.log", "a") as log:
            log.write("{name}\\n")
'''


@pytest.fixture
def task_project(tmp_path: Path) -> Path:
    root = (tmp_path / "tasks").resolve()
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    for file, cls, name in [
        ("10_prepare.py", "Prepare", "prepare"),
        ("20_train.py", "Train", "train"),
    ]:
        (stages / file).write_text(TASK.format(cls=cls, name=name))
    (root / "src" / "pipeline" / "config.yaml").write_text(
        "stages:\n"
        "  prepare:\n    params: {input_dir: raw, output_dir: data/prepared}\n"
        "  train:\n    params: {input_dir: data/prepared, output_dir: data/model}\n"
    )
    return root


def test_task_stages_run_in_order(
    task_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = run_project(task_project)
    assert outcome.report is None
    assert outcome.tasks_run == ["prepare", "train"]
    assert (task_project / "order.log").read_text() == "prepare\ntrain\n"
    assert (task_project / "data" / "prepared" / "prepare.txt").read_text() == "raw"
    assert (task_project / "data" / "model" / "train.txt").read_text() == "data/prepared"


def test_one_task_stage(task_project: Path) -> None:
    outcome = run_project(task_project, ["stage=train"])
    assert outcome.tasks_run == ["train"]
    assert outcome.stage == "train"
    assert (task_project / "order.log").read_text() == "train\n"


def test_task_stage_config_is_validated(task_project: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_project(task_project, ["stages.train.params.output_dri=x"])
    assert "unknown key 'output_dri' in stages.train.params; did you mean 'output_dir'?" in str(
        info.value
    )
    assert info.value.file == "command line"


def test_validate_false_names_the_rerun_command(task_project: Path) -> None:
    with pytest.raises(ProjectError) as info:
        run_project(task_project, ["stages.train.params.ok=false"])
    train = task_project / "src" / "pipeline" / "stages" / "20_train.py"
    assert str(info.value) == (
        f"{train}: stage 'train': validate() returned False; fix its inputs or config, "
        f"then re-run it with: conveyor run {task_project} stage=train"
    )
    assert info.value.file == train
    assert (task_project / "order.log").read_text() == "prepare\n"


# --- the command line, in a subprocess -------------------------------------------------


def _pytest(folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cli_project(tmp_path: Path) -> Path:
    done = _conveyor("new", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote demo/src/pipeline/config.yaml" in done.stdout
    return tmp_path / "demo"


def test_cli_new_project_tests_pass_and_it_runs(cli_project: Path, tmp_path: Path) -> None:
    tests = _pytest(cli_project / "src" / "pipeline" / "stages" / "__tests__", tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout

    done = _conveyor("run", str(cli_project), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "demo completed: 1000 in, 1000 out, 0 filtered, 0 dead-lettered, 0 retried" in _flat(
        done.stdout
    )
    assert len((cli_project / "data" / "readings.jsonl").read_text().splitlines()) == 1000


def test_cli_new_into_a_non_empty_folder(cli_project: Path, tmp_path: Path) -> None:
    done = _conveyor("new", "demo", cwd=tmp_path)
    assert done.returncode == 1
    assert "the folder exists and is not empty; pick a new name" in _flat(done.stderr)


def test_cli_run_with_overrides(cli_project: Path, tmp_path: Path) -> None:
    done = _conveyor("run", str(cli_project), "stages.source.params.count=10", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "demo completed: 10 in, 10 out" in _flat(done.stdout)


def test_cli_run_with_a_typo_in_an_override(cli_project: Path, tmp_path: Path) -> None:
    done = _conveyor("run", str(cli_project), "stages.enrich.concurency=3", cwd=tmp_path)
    assert done.returncode == 1
    stderr = _flat(done.stderr)
    assert "error: command line: unknown key 'concurency' in stages.enrich" in stderr
    assert "did you mean 'concurrency'" in stderr
    assert "Traceback" not in done.stderr


def test_cli_new_stage_between_neighbours(cli_project: Path, tmp_path: Path) -> None:
    done = _conveyor("new", "stage", "dedupe", "--project", str(cli_project), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    stages = cli_project / "src" / "pipeline" / "stages"
    assert (stages / "55_dedupe.py").exists()
    assert (stages / "__tests__" / "test_dedupe.py").exists()
    config = (cli_project / "src" / "pipeline" / "config.yaml").read_text()
    assert "stages:\n  dedupe:\n    params: {}\n  source:\n" in config

    again = _conveyor(
        "new", "stage", "clean", "--after", "0", "--project", str(cli_project), cwd=tmp_path
    )
    assert again.returncode == 0, again.stderr
    assert (stages / "05_clean.py").exists()

    tests = _pytest(stages / "__tests__", tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout

    run = _conveyor("run", str(cli_project), "stages.source.params.count=20", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = _flat(run.stdout)
    assert "dedupe" in out
    assert "demo completed: 20 in, 20 out" in out


def test_cli_new_stage_that_exists(cli_project: Path, tmp_path: Path) -> None:
    done = _conveyor("new", "stage", "enrich", "--project", str(cli_project), cwd=tmp_path)
    assert done.returncode == 1
    assert "a stage named 'enrich' exists already" in _flat(done.stderr)


def test_cli_dead_letters_list_show_replay(cli_project: Path, tmp_path: Path) -> None:
    _plant_invalid_reading(cli_project)
    run = _conveyor("run", str(cli_project), "stages.source.params.count=5", cwd=tmp_path)
    assert run.returncode == 3, run.stderr  # 1 of 6 records: over the default 10% budget
    out = _flat(run.stdout)
    assert "1 dead-lettered" in out
    assert "demo failed:" in out
    assert f"inspect them with: conveyor dlq list {cli_project}" in out

    listed = _conveyor("dlq", "list", str(cli_project), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    listing = _flat(listed.stdout)
    assert "validate" in listing
    assert "implausible temperature 999.0" in listing
    assert "1 dead letter(s) in" in listing

    with open_dead_letter_store(cli_project / ".conveyor" / "dead_letters.db") as store:
        (letter,) = store.list()
    shown = _conveyor("dlq", "show", letter.id[:8], str(cli_project), cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert f"id: {letter.id}" in shown.stdout
    assert "stage: validate" in shown.stdout
    assert "record: {'sensor': 'broken', 'celsius': 999.0}" in shown.stdout

    missing = _conveyor("dlq", "show", "zzzz", str(cli_project), cwd=tmp_path)
    assert missing.returncode == 1
    assert "no dead letter's id starts with 'zzzz'" in _flat(missing.stderr)

    # Replayed unfixed, the record fails again: a new letter, and exit 3 (all failed).
    replayed = _conveyor("dlq", "replay", str(cli_project), cwd=tmp_path)
    assert replayed.returncode == 3, replayed.stderr
    assert "1 in, 0 out, 0 filtered, 1 dead-lettered" in _flat(replayed.stdout)


def test_check_graph_contracts_and_dvc_commands_in_a_subprocess(project: Path) -> None:
    import subprocess
    import sys

    config = project / "src" / "pipeline" / "config.yaml"
    config.write_text(
        config.read_text(encoding="utf-8") + "  validate:\n    persist: {path: data/validated}\n",
        encoding="utf-8",
    )

    def conveyor(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "conveyor", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    check = conveyor("check", str(project))
    assert (check.returncode, check.stdout.strip()) == (0, "no violations")
    graph = conveyor("graph", str(project))
    assert graph.returncode == 0
    assert "source --> validate" in graph.stdout
    contracts = conveyor("contracts", "check", str(project))
    assert contracts.returncode == 0
    assert "nothing to check" in contracts.stdout  # the scaffold has models, no schema files
    dvc = conveyor("dvc", str(project))
    assert dvc.returncode == 0
    assert "stage=validate" in (project / "dvc.yaml").read_text(encoding="utf-8")
