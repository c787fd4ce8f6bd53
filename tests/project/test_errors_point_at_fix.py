"""Errors that point at the fix (issue 11), each through the real command line and checked
by its message: a missing input file (a ``source:`` connector, a source stage file, a
dataset-layout stage) is one line naming the stage or source, the config key at its
file:line and the path; ``stage=`` and an unknown stage list the stages and are never
suggested by the re-run hint; a stage file that does not import names its file and line
and shows the line; commands work from a project's subfolder; ``contracts check`` outside
a project is an error."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _cli import conveyor, flat

from conveyor.cli import _rerun_hint
from conveyor.errors import HookError, UsageError
from conveyor.project.scaffold import new_project

SOURCE_SECTION = "  source:\n    params:\n      count: 1000\n"


def make(tmp_path: Path) -> Path:
    project = tmp_path / "demo"
    new_project(project)
    return project.resolve()


def stages(project: Path) -> Path:
    return project / "src" / "pipeline" / "stages"


def config(project: Path) -> Path:
    return project / "src" / "pipeline" / "config.yaml"


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a failed command printed (and that it printed only that)."""
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


def line_of(file: Path, text: str) -> int:
    return next(n for n, line in enumerate(file.read_text().splitlines(), 1) if text in line)


# -- a missing input file --------------------------------------------------------------------


def with_source_section(project: Path, section: str) -> None:
    (stages(project) / "00_source.py").unlink()
    text = config(project).read_text().replace(SOURCE_SECTION, "")
    config(project).write_text(text + section)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            "source:\n  connector: csv\n  path: data/in/missing.csv\n",
            "source.path 'data/in/missing.csv': no such file ({root}/data/in/missing.csv); "
            "create it, or correct source.path (a path or a glob such as data/in/*.csv, "
            "relative to the project folder {root})",
        ),
        (
            "source:\n  connector: jsonl\n  path: data/in/*.jsonl\n",
            "source.path 'data/in/*.jsonl' matches no file (the jsonl source reads every file "
            "the glob matches); put the input files there, or correct source.path (a path or "
            "a glob relative to the project folder {root})",
        ),
    ],
)
def test_a_missing_file_of_a_source_section_is_one_line_at_its_key(
    tmp_path: Path, section: str, message: str
) -> None:
    project = make(tmp_path)
    with_source_section(project, section)
    line = line_of(config(project), "  path: data/in")
    done = conveyor("run", str(project), cwd=tmp_path)
    expected = f"error: {config(project)}:{line}:3: " + message.format(root=project)
    assert flat(error_line(done)) == flat(expected)


READING_SOURCE = '''"""Reads the readings of a CSV file."""

import csv
from collections.abc import Iterator

from pydantic import BaseModel

from conveyor.project import Source


class Rows(Source):
    class Config(BaseModel):
        path: str = "data/in.csv"

    def __init__(self, config: Config) -> None:
        self.config = config
{inputs}
    def read(self) -> Iterator[dict[str, object]]:
        with open(self.config.path, newline="") as rows:
            for row in csv.DictReader(rows):
                yield {{"sensor": row["sensor"], "celsius": float(row["celsius"])}}
'''

INPUTS = """
    def inputs(self) -> list[str]:
        return [self.config.path]
"""


def with_reading_source(project: Path, *, inputs: bool, path: str | None) -> Path:
    source = stages(project) / "00_source.py"
    source.write_text(READING_SOURCE.format(inputs=INPUTS if inputs else ""))
    params = f"    params:\n      path: {path}\n" if path else "    params: {}\n"
    text = config(project).read_text()
    config(project).write_text(text.replace(SOURCE_SECTION, f"  source:\n{params}"))
    return source


def test_a_source_stage_whose_inputs_are_missing_stops_before_the_run(tmp_path: Path) -> None:
    project = make(tmp_path)
    with_reading_source(project, inputs=True, path="data/readings.csv")
    line = line_of(config(project), "path: data/readings.csv")
    expected = (
        f"error: {config(project)}:{line}:7: the source stage 'source' (00_source.py) reads "
        f"data/readings.csv, which does not exist ({project}/data/readings.csv); "
        "stages.source.params.path names it: create it, or correct stages.source.params.path"
    )
    done = conveyor("run", str(project), cwd=tmp_path)
    assert flat(error_line(done)) == flat(expected)
    again = conveyor("run", str(project), cwd=tmp_path)  # nothing started: no checkpoint
    assert flat(error_line(again)) == flat(expected)

    (project / "data").mkdir()
    (project / "data" / "readings.csv").write_text("sensor,celsius\na,20.5\nb,-3\n")
    run = conveyor("run", str(project), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    written = (project / "data" / "readings.jsonl").read_text().splitlines()
    assert [json.loads(r)["celsius"] for r in written] == [20.5, -3.0]


def test_a_source_stage_path_by_default_says_to_set_the_key(tmp_path: Path) -> None:
    project = make(tmp_path)
    with_reading_source(project, inputs=True, path=None)
    line = line_of(config(project), "params: {}")
    done = conveyor("run", str(project), cwd=tmp_path)
    assert flat(error_line(done)) == flat(
        f"error: {config(project)}:{line}:5: the source stage 'source' (00_source.py) reads "
        f"data/in.csv, which does not exist ({project}/data/in.csv); "
        "stages.source.params.path (by default) names it: create it, or set "
        "stages.source.params.path"
    )


def test_a_source_that_opens_a_missing_file_names_the_key_and_the_line(tmp_path: Path) -> None:
    project = make(tmp_path)
    source = with_reading_source(project, inputs=False, path="data/readings.csv")
    key = line_of(config(project), "path: data/readings.csv")
    opened = line_of(source, "with open(")
    done = conveyor("run", str(project), cwd=tmp_path)
    assert flat(error_line(done)) == flat(
        f"error: {config(project)}:{key}:7: the source stage 'source' (00_source.py) reads "
        f"data/readings.csv, which does not exist ({project}/data/readings.csv; opened at "
        f"src/pipeline/stages/00_source.py:{opened}); stages.source.params.path names it: "
        "create it, or correct stages.source.params.path; then go on from the run's "
        f"checkpoint with: conveyor run {project} --resume"
    )
    (project / "data").mkdir(exist_ok=True)
    (project / "data" / "readings.csv").write_text("sensor,celsius\na,20.5\n")
    resumed = conveyor("run", str(project), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "demo completed: 1 in, 1 out" in flat(resumed.stdout)


def test_a_path_no_key_names_is_located_in_the_code(tmp_path: Path) -> None:
    project = make(tmp_path)
    source = stages(project) / "00_source.py"
    source.write_text(
        "from conveyor.project import Source\n\n\n"
        "class Rows(Source):\n"
        "    def read(self):\n"
        "        return open('data/fixed.csv').readlines()\n"
    )
    config(project).write_text(config(project).read_text().replace(SOURCE_SECTION, ""))
    done = conveyor("run", str(project), cwd=tmp_path)
    assert flat(error_line(done)) == flat(
        f"error: {source}:6: the source stage 'source' (00_source.py) reads data/fixed.csv, "
        f"which does not exist ({project}/data/fixed.csv; opened at "
        "src/pipeline/stages/00_source.py:6): create it, or change the path in the code "
        "that names it"
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    new_project(root, "dataset")
    return root.resolve()


def test_a_dataset_stage_refusing_a_missing_file_names_its_key(dataset: Path) -> None:
    download = dataset / "configs" / "stages" / "download.yaml"
    text = download.read_text()
    download.write_text(
        text.replace("url: file:data/sample/digits_sample.csv.gz", "url: file:data/gone.csv.gz")
    )
    line = line_of(download, "url: file:data/gone.csv.gz")
    done = conveyor("run", ".", cwd=dataset)
    assert flat(error_line(done)) == flat(
        f"error: {download}:{line}:1: stage 'download' cannot run: file:data/gone.csv.gz: no "
        f"such file ({dataset}/data/gone.csv.gz) (see download.url), then re-run it with: "
        f"conveyor run {dataset} stage=download"
    )

    preprocess = dataset / "configs" / "stages" / "preprocess.yaml"
    pipeline = dataset / "configs" / "pipeline.yaml"
    done = conveyor("run", ".", "stage=preprocess", cwd=dataset)
    assert flat(error_line(done)) == flat(
        f"error: {preprocess}:{line_of(preprocess, 'input_dir:')}:1: stage 'preprocess' cannot "
        "run: data/raw/digits.csv.gz does not exist; run the download stage first (see "
        f"preprocess.input_dir and raw_file at {pipeline}:{line_of(pipeline, 'raw_file:')}:1), "
        f"then re-run it with: conveyor run {dataset} stage=preprocess"
    )


TASK = '''"""Loads the rows."""

from pathlib import Path

from conveyor.project import StageConfig, TaskStage


class Load(TaskStage):
    class Config(StageConfig):
        rows: str = "rows.csv"

    def __init__(self, config: Config) -> None:
        self.config = config

    def validate(self) -> bool:
        return True

    def run(self, config: Config) -> None:
        text = (Path(config.input_dir) / config.rows).read_text()
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(config.output_dir) / "rows.csv").write_text(text)
'''


def test_a_dataset_stage_opening_a_missing_file_names_its_keys(tmp_path: Path) -> None:
    root = tmp_path / "tasks"
    (root / "configs" / "stages").mkdir(parents=True)
    (root / "configs" / "pipeline.yaml").write_text("stages: [load]\n")
    load = root / "configs" / "stages" / "load.yaml"
    load.write_text("input_dir: data/in\noutput_dir: data/out\nrows: rows.csv\n")
    package = root / "src" / "tasks"
    (package / "stages").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "stages" / "load.py").write_text(TASK)
    done = conveyor("run", str(root), cwd=tmp_path)
    opened = line_of(package / "stages" / "load.py", "read_text()")
    assert flat(error_line(done)) == flat(
        f"error: {load.resolve()}:1:1: stage 'load' reads data/in/rows.csv, which does not "
        f"exist ({root.resolve()}/data/in/rows.csv; opened at src/tasks/stages/load.py:{opened}); "
        "load.input_dir and load.rows (line 3) name it: create it, or correct load.input_dir, then "
        f"re-run it with: conveyor run {root.resolve()} stage=load"
    )


# -- stage= and the re-run hint -----------------------------------------------------------------


def test_an_empty_or_unknown_stage_lists_the_stages_and_no_rerun(tmp_path: Path) -> None:
    project = make(tmp_path)
    empty = conveyor("run", str(project), "stage=", cwd=tmp_path)
    assert error_line(empty) == (
        "error: stage= names no stage: write stage=NAME to run one stage, e.g. "
        "stage=validate (stages: source, validate, enrich, sink)"
    )
    unknown = conveyor("run", str(project), "stage=doesnotexist", cwd=tmp_path)
    assert error_line(unknown) == (
        "error: unknown stage 'doesnotexist' (stages: source, validate, enrich, sink)"
    )
    close = conveyor("run", str(project), "stage=enrihc", cwd=tmp_path)
    assert "did you mean 'enrich'?" in error_line(close)
    # A misused command is not re-run either, least of all with a stage it does not have.
    for stage in ("stage=doesnotexist", "stage=", "stage=  "):
        both = conveyor("run", str(project), stage, "--after", "enrich", cwd=tmp_path)
        assert "exclude each other" in error_line(both)
        assert "re-run" not in both.stderr


def test_an_empty_stage_in_a_dataset_project_runs_nothing(dataset: Path) -> None:
    empty = conveyor("run", ".", "stage=", cwd=dataset)
    assert error_line(empty) == (
        "error: stage= names no stage: write stage=NAME to run one stage, e.g. "
        "stage=preprocess (stages: download, preprocess, validate, split, export)"
    )
    assert not (dataset / "data" / "raw" / "digits.csv.gz").exists()  # download did not run
    unknown = conveyor("run", ".", "stage=doesnotexist", cwd=dataset)
    assert error_line(unknown) == (
        "error: unknown stage 'doesnotexist' (stages: download, preprocess, validate, split, "
        "export)"
    )


def test_the_rerun_hint_names_only_a_stage_the_project_has(tmp_path: Path) -> None:
    project = make(tmp_path)
    hooks = project / "src" / "pipeline" / "shared" / "hooks.py"
    hooks.write_text(
        "def boom(stage_name, **kwargs):\n"
        "    if stage_name == 'enrich':\n"
        "        raise RuntimeError('the hook broke')\n"
    )
    text = config(project).read_text()
    config(project).write_text(
        text.replace(
            "  batch_size: 500\n",
            "  batch_size: 500\n  hooks:\n    after_stage: [pipeline.shared.hooks:boom]\n",
        )
    )
    done = conveyor("run", str(project), "stages.source.params.count=5", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: after_stage hook boom for stage 'enrich' raised RuntimeError: the hook broke; "
        "fix the hook or catch the exception inside it",
        f"re-run with: conveyor run {project} stage=enrich",
    ]

    hook = HookError("after_stage", "enrich", "boom", RuntimeError("x"))
    assert _rerun_hint(project, [], hook) == f"re-run with: conveyor run {project} stage=enrich"
    assert _rerun_hint(project, ["stage=validate"], hook).endswith(" stage=validate")
    for overrides in (["stage="], ["stage=  "], ["stage=doesnotexist"]):
        assert _rerun_hint(project, overrides, hook) == ""
    elsewhere = HookError("after_stage", "doesnotexist", "boom", RuntimeError("x"))
    assert _rerun_hint(project, [], elsewhere) == ""
    assert _rerun_hint(tmp_path / "nowhere", [], hook) == ""  # no project: no stage to name
    assert _rerun_hint(project, ["stage=enrich"], UsageError("wrong flags")) == ""


# -- a stage file that does not import --------------------------------------------------------


def test_a_syntax_error_or_a_name_error_names_the_file_and_line_and_shows_it(
    tmp_path: Path,
) -> None:
    project = make(tmp_path)
    enrich = stages(project) / "20_enrich.py"
    good = enrich.read_text()
    enrich.write_text(good.replace("-> EnrichedReading:", "-> EnrichedReading"))
    line = line_of(enrich, "-> EnrichedReading")
    for command in ("run", "graph", "dvc"):
        done = conveyor(command, str(project), cwd=tmp_path)
        assert error_line(done) == (
            f"error: {enrich}:{line}: cannot import the stage file: SyntaxError: expected ':' "
            "(the line: def enrich(reading: Reading) -> EnrichedReading); fix it, then run the "
            "command again"
        ), command

    enrich.write_text(good.replace("stage = MapStage(enrich)", "stage = MapStage(enrichh)"))
    line = line_of(enrich, "MapStage(enrichh)")
    for command in ("run", "graph", "dvc"):
        done = conveyor(command, str(project), cwd=tmp_path)
        assert error_line(done) == (
            f"error: {enrich}:{line}: cannot import the stage file: NameError: name 'enrichh' "
            "is not defined (the line: stage = MapStage(enrichh)); fix it, then run the "
            "command again"
        ), command

    enrich.write_text(good)
    units = project / "src" / "pipeline" / "shared" / "units.py"
    units.write_text(units.read_text() + "\nRATIO = undefined_ratio()\n")
    done = conveyor("run", str(project), cwd=tmp_path)
    assert error_line(done) == (
        f"error: {units}:{line_of(units, 'RATIO')}: cannot import the stage file: NameError: "
        "name 'undefined_ratio' is not defined (the line: RATIO = undefined_ratio()); fix it, "
        "then run the command again"
    )


# -- where commands run -----------------------------------------------------------------------


def test_commands_find_the_project_from_a_subfolder(tmp_path: Path) -> None:
    project = make(tmp_path)
    inside = stages(project) / "__tests__"
    checked = conveyor("check", cwd=inside)
    assert checked.returncode == 0, checked.stderr
    assert "no violations" in checked.stdout
    drawn = conveyor("graph", cwd=inside)
    assert drawn.returncode == 0, drawn.stderr
    assert "validate --> enrich" in drawn.stdout
    ran = conveyor("run", "stages.source.params.count=3", cwd=inside)
    assert ran.returncode == 0, ran.stderr
    assert len((project / "data" / "readings.jsonl").read_text().splitlines()) == 3
    listed = conveyor("dlq", "list", cwd=inside)
    assert listed.returncode == 0, listed.stderr
    assert f"0 dead letter(s) in {project}/.conveyor/dead_letters.db" in flat(listed.stdout)
    added = conveyor("new", "stage", "dedupe", cwd=inside)
    assert added.returncode == 0, added.stderr
    assert (stages(project) / "55_dedupe.py").is_file()
    contracts = conveyor("contracts", "check", cwd=inside)
    assert contracts.returncode == 0, contracts.stderr
    assert "nothing to check" in contracts.stdout

    folder = project / "src" / "pipeline" / "contracts"
    v1 = {"type": "object", "properties": {"id": {"type": "integer"}}}
    (folder / "order.v1.json").write_text(json.dumps(v1))
    (folder / "order.v2.json").write_text(json.dumps({**v1, "required": ["id"]}))
    breaking = conveyor("contracts", "check", cwd=inside)
    assert breaking.returncode == 1
    assert "required-added" in breaking.stdout
    assert f"1 breaking change(s) in {folder}" in flat(breaking.stderr)


def test_contracts_check_outside_a_project_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = conveyor("contracts", "check", cwd=empty)
    assert error_line(done) == (
        "error: .: no contract files here (JSON Schema .json, Avro .avsc, Protobuf .proto); "
        "pass a project, its contracts/ folder, or a folder of versioned contracts such as "
        "order.v1.json and order.v2.json"
    )
    assert "backward compatible" not in done.stdout
    run = conveyor("run", cwd=empty)
    assert "no pipeline project here or above" in error_line(run)
