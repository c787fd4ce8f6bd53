"""The dataset layout (seed 002): configs/pipeline.yaml orders src/<package>/stages/<name>.py,
configs/stages/<name>.yaml holds each stage's parameters, shared parameters are merged
under them; the same loader, runner, check and dlq commands as the stream layout."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _dvckit import BIN, TIMEOUT, cli_env, dvc, needs_dvc, ran
from conveyor.cli import app
from conveyor.errors import ConfigError, ProjectError
from conveyor.project import load_project, run_project
from conveyor.project.discovery import find_layout
from conveyor.project.dvc import dvc_pipeline
from conveyor.project.lint import check_project

BASE = '''\
"""The stage interface."""

from abc import abstractmethod

from conveyor.project import StageConfig as _StageConfig
from conveyor.project import TaskStage


class StageConfig(_StageConfig):
    """Base configuration for pipeline stages."""


class Stage(TaskStage):
    def __init__(self, config: StageConfig) -> None:
        self.config = config

    @abstractmethod
    def run(self, config: StageConfig) -> None: ...

    @abstractmethod
    def validate(self) -> bool: ...
'''

COPY = """\
from pathlib import Path

from demo.stages.base import Stage, StageConfig
from demo.transforms.text import shout


class Copy(Stage):
    class Config(StageConfig):
        upper: bool = False
        seed: int = 0

    def validate(self) -> bool:
        return Path(self.config.input_dir).is_dir()

    def run(self, config: Config) -> None:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for file in sorted(Path(config.input_dir).glob("*.txt")):
            text = file.read_text().strip()
            (out / file.name).write_text(f"{shout(text) if config.upper else text} {config.seed}")
"""

COUNT = """\
import json
from pathlib import Path

from demo.stages.base import Stage, StageConfig


class Count(Stage):
    class Config(StageConfig):
        seed: int = 0
        label: str = "files"

    def validate(self) -> bool:
        return Path(self.config.input_dir).is_dir()

    def run(self, config: Config) -> None:
        out = Path(config.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in Path(config.input_dir).glob("*.txt"))
        (out / "count.json").write_text(json.dumps({config.label: names, "seed": config.seed}))
"""


def make(tmp_path: Path) -> Path:
    root = tmp_path / "demo-project"
    files = {
        "configs/pipeline.yaml": "stages: [copy, count]\nseed: 42\npipeline:\n  name: demo\n",
        "configs/stages/copy.yaml": "input_dir: data/raw\noutput_dir: data/copied\nupper: true\n",
        "configs/stages/count.yaml": "input_dir: data/copied\noutput_dir: data/counted\n",
        "src/demo/__init__.py": "",
        "src/demo/stages/__init__.py": "",
        "src/demo/stages/base.py": BASE,
        "src/demo/stages/copy.py": COPY,
        "src/demo/stages/count.py": COUNT,
        "src/demo/transforms/__init__.py": "",
        "src/demo/transforms/text.py": "def shout(text: str) -> str:\n    return text.upper()\n",
        "src/demo/schemas/__init__.py": "",
        "data/raw/a.txt": "hello\n",
        "data/raw/b.txt": "world\n",
    }
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def counted(root: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((root / "data/counted/count.json").read_text())
    return result


def test_the_layout_is_found_and_the_order_comes_from_the_list(tmp_path: Path) -> None:
    root = make(tmp_path)
    layout = find_layout(root)
    assert (layout.kind, layout.package, layout.root) == ("dataset", "demo", root.resolve())
    project = load_project(root)
    assert [s.name for s in project.stages] == ["copy", "count"]
    assert project.name == "demo"
    (root / "configs/pipeline.yaml").write_text("stages: [count, copy]\n")
    assert [s.name for s in load_project(root).stages] == ["count", "copy"]


def test_runs_all_stages_or_one_with_shared_and_own_params(tmp_path: Path) -> None:
    root = make(tmp_path)
    run = run_project(root, handle_signals=False)
    assert run.tasks_run == ["copy", "count"]
    assert (root / "data/copied/a.txt").read_text() == "HELLO 42"  # shared seed, own upper
    assert counted(root) == {"files": ["a.txt", "b.txt"], "seed": 42}

    run = run_project(root, ["stage=count", "count.label=names", "seed=7"], handle_signals=False)
    assert run.tasks_run == ["count"]
    assert counted(root) == {"names": ["a.txt", "b.txt"], "seed": 7}
    assert (root / "data/copied/a.txt").read_text() == "HELLO 42"  # not run again

    (root / "configs/stages/count.yaml").write_text(
        "input_dir: data/copied\noutput_dir: data/counted\nseed: 5\n"
    )
    run_project(root, ["stage=count"], handle_signals=False)
    assert counted(root)["seed"] == 5  # a stage's own value wins over the shared one


def test_a_typo_in_a_stage_file_is_located_with_did_you_mean(tmp_path: Path) -> None:
    root = make(tmp_path)
    file = root / "configs/stages/copy.yaml"
    file.write_text("input_dir: data/raw\noutput_dir: data/copied\nuppr: true\n")
    with pytest.raises(ConfigError) as info:
        load_project(root)
    error = info.value
    assert (Path(str(error.file)), error.line, error.column) == (file, 3, 1)
    assert "unknown key 'uppr'" in str(error)
    assert "did you mean 'upper'?" in str(error)


def test_a_wrong_value_and_a_shared_typo_are_located(tmp_path: Path) -> None:
    root = make(tmp_path)
    main = root / "configs/pipeline.yaml"
    main.write_text("stages: [copy, count]\nseed: many\n")
    with pytest.raises(ConfigError) as info:
        load_project(root)
    assert (Path(str(info.value.file)), info.value.line) == (main, 2)
    assert "seed" in str(info.value)
    main.write_text("stages: [copy, count]\nsed: 1\n")
    with pytest.raises(ConfigError, match="did you mean 'seed'") as info:
        load_project(root)
    assert (Path(str(info.value.file)), info.value.line) == (main, 2)
    with pytest.raises(ConfigError, match="did you mean 'seed'") as info:
        load_project(root, ["sed=3"])
    assert info.value.file == "command line"


def test_stage_files_and_parameter_files_must_match_the_list(tmp_path: Path) -> None:
    root = make(tmp_path)
    main = root / "configs/pipeline.yaml"
    main.write_text("stages:\n  - copy\n  - cuont\n")
    (root / "configs/stages/count.yaml").rename(root / "configs/stages/cuont.yaml")
    with pytest.raises(ConfigError, match="did you mean 'count'") as info:
        load_project(root)
    assert (Path(str(info.value.file)), info.value.line) == (main, 3)

    (root / "configs/stages/cuont.yaml").rename(root / "configs/stages/count.yaml")
    main.write_text("stages: [copy, count]\n")
    (root / "configs/stages/cpy.yaml").write_text("upper: true\n")
    with pytest.raises(ConfigError, match=r"did you mean copy\.yaml") as info:
        load_project(root)
    assert Path(str(info.value.file)) == root / "configs/stages/cpy.yaml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: 1\n", "needs `stages:`"),
        ("stages: []\n", "needs `stages:`"),
        ("stages: [copy, copy]\n", "listed twice"),
        ("stages: [copy, Bad-Name]\n", "not a stage name"),
        ("stages: [copy, pipeline]\n", "name of a section"),
        ("- copy\n", "must be a mapping"),
    ],
)
def test_a_bad_stage_list_is_refused(tmp_path: Path, text: str, message: str) -> None:
    root = make(tmp_path)
    (root / "configs/pipeline.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_project(root)


def test_a_stage_override_needs_a_key(tmp_path: Path) -> None:
    root = make(tmp_path)
    with pytest.raises(ConfigError, match="copy is a stage"):
        load_project(root, ["copy=1"])
    assert load_project(root, ["stages=[copy]"]).stages[0].name == "copy"
    assert [s.name for s in load_project(root, ["stages=[copy]"]).stages] == ["copy"]


def test_two_packages_with_stages_are_ambiguous(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "src/other/stages").mkdir(parents=True)
    with pytest.raises(ProjectError, match=r"found 2 such packages in src/ \(demo, other\)"):
        load_project(root)


def test_check_allows_base_schemas_transforms_and_catches_a_stage_import(
    tmp_path: Path,
) -> None:
    root = make(tmp_path)
    assert check_project(root) == []
    count = root / "src/demo/stages/count.py"
    count.write_text(count.read_text() + "from demo.stages.copy import Copy  # noqa\n")
    violations = check_project(root)
    assert [(v.file.name, v.line, v.rule) for v in violations] == [
        ("count.py", COUNT.count("\n") + 1, "stage-imports-stage")
    ]
    assert "schemas/, transforms/ or stages/base.py" in violations[0].message
    (root / "src/demo/stages/Bad.py").write_text("")
    assert "bad-stage-filename" in {v.rule for v in check_project(root)}


def test_the_commands_work_on_the_dataset_layout(tmp_path: Path) -> None:
    root = make(tmp_path)
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(root)])
    assert result.exit_code == 0, result.output
    assert "copy, count" in result.output
    result = cli.invoke(app, ["check", str(root)])
    assert result.exit_code == 0, result.output
    result = cli.invoke(app, ["graph", str(root)])
    assert result.exit_code == 0, result.output
    assert "copy" in result.output
    assert "data/counted" in result.output
    result = cli.invoke(app, ["dlq", "list", str(root)])
    assert result.exit_code == 0, result.output
    (root / "configs/stages/copy.yaml").write_text("input_dir: data/raw\noutput_dir: x\nupr: 1\n")
    result = cli.invoke(app, ["run", str(root)])
    assert result.exit_code != 0
    assert "copy.yaml:3:1" in result.output


def test_the_stream_layout_shares_params_too(tmp_path: Path) -> None:
    # One mechanism: config.yaml's `params:` are merged the same way.
    project = tmp_path / "p"
    stages = project / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (stages / "10_scale.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel
            from conveyor import MapStage

            class Scale(MapStage):
                class Config(BaseModel):
                    factor: int = 1
                def __init__(self, config):
                    super().__init__(lambda x: x * config.factor)
                    self.config = config
            """
        )
    )
    (project / "src/pipeline/config.yaml").write_text("params: {factor: 3}\n")
    loaded = load_project(project)
    assert loaded.stages[0].stage.config.factor == 3
    (project / "src/pipeline/config.yaml").write_text("params: {fator: 3}\n")
    with pytest.raises(ConfigError, match="did you mean 'factor'"):
        load_project(project)


# -- conveyor dvc on the dataset layout ------------------------------------------------------


def test_dvc_stages_of_task_stages_name_their_files_params_and_folders(tmp_path: Path) -> None:
    root = make(tmp_path)
    pipeline = dvc_pipeline(load_project(root))
    assert pipeline.config_file == "configs/pipeline.yaml"
    code = ["src/demo/schemas", "src/demo/transforms", "src/demo/stages/base.py"]
    assert pipeline.mapping() == {
        "copy": {
            "cmd": "conveyor run . stage=copy",
            "deps": ["src/demo/stages/copy.py", *code, "data/raw"],
            "params": [
                {"configs/pipeline.yaml": ["seed"]},
                {"configs/stages/copy.yaml": None},  # the whole file
            ],
            "outs": ["data/copied"],
        },
        "count": {
            "cmd": "conveyor run . stage=count",
            "deps": ["src/demo/stages/count.py", *code, "data/copied"],
            "params": [
                {"configs/pipeline.yaml": ["seed"]},
                {"configs/stages/count.yaml": None},
            ],
            "outs": ["data/counted"],
        },
    }
    assert pipeline.warnings == ()


def test_dvc_refuses_a_stage_writing_its_own_input_and_warns_of_a_missing_one(
    tmp_path: Path,
) -> None:
    root = make(tmp_path)
    count = root / "configs/stages/count.yaml"
    count.write_text("input_dir: data/copied\noutput_dir: data/copied/n\n")
    with pytest.raises(ProjectError, match="overlap"):
        dvc_pipeline(load_project(root))
    count.write_text("input_dir: data/elsewhere\noutput_dir: data/counted\n")
    warnings = dvc_pipeline(load_project(root)).warnings
    assert any("data/elsewhere, which no stage before it writes" in w for w in warnings)


@needs_dvc
def test_dvc_repro_of_a_dataset_project(tmp_path: Path) -> None:
    root = make(tmp_path)
    env = cli_env(tmp_path)
    done = subprocess.run(
        [str(BIN / "conveyor"), "dvc", "."],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    dvc(root, "init", "--no-scm", "-q", env=env)
    assert ran(dvc(root, "repro", env=env)) == {"copy", "count"}
    assert counted(root) == {"files": ["a.txt", "b.txt"], "seed": 42}
    assert ran(dvc(root, "repro", env=env)) == set()  # nothing to do
    (root / "configs/stages/count.yaml").write_text(
        "input_dir: data/copied\noutput_dir: data/counted\nlabel: names\n"
    )
    assert ran(dvc(root, "repro", env=env)) == {"count"}  # only the changed stage
    assert counted(root) == {"names": ["a.txt", "b.txt"], "seed": 42}
    (root / "configs/pipeline.yaml").write_text("stages: [copy, count]\nseed: 1\n")
    done = subprocess.run(
        [str(BIN / "conveyor"), "dvc", ".", "--check"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr  # same stages: still matches
    assert ran(dvc(root, "repro", env=env)) == {"copy", "count"}  # a shared param: both
    assert counted(root)["seed"] == 1


def test_dvc_warns_of_parameters_its_run_cache_ignores(tmp_path: Path) -> None:
    root = make(tmp_path)
    count = root / "src/demo/stages/count.py"
    count.write_text(
        count.read_text().replace(
            'label: str = "files"', 'label: str = "files"\n        size: int = 0'
        )
    )
    (root / "configs/stages/count.yaml").write_text(
        "input_dir: data/copied\noutput_dir: data/counted\nsize: 3\n"
    )
    warnings = dvc_pipeline(load_project(root)).warnings
    assert [w for w in warnings if "run cache" in w] == [
        "parameter count.size: DVC's run cache leaves parameters named nfiles or size out "
        "of a stage's hash, so after changing it `dvc repro` may restore an old output "
        "instead of running the stage; rename it (or run `dvc repro --no-run-cache`)"
    ]


# -- review findings: paths, freshness, secrets, precedence ---------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("../elsewhere", "outside the project"),
        ("src/demo", "inside the package folder"),
        (".", "the project folder itself"),
    ],
)
def test_a_task_stage_writes_only_inside_the_project_and_not_its_code(
    tmp_path: Path, value: str, message: str
) -> None:
    root = make(tmp_path)
    with pytest.raises(ConfigError, match=message) as info:
        load_project(root, [f"count.output_dir={value}"])
    assert info.value.key == "stages.count.params.output_dir"
    assert not (tmp_path / "elsewhere").exists()


def test_a_command_line_shared_value_wins_over_a_stage_file(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "configs/stages/count.yaml").write_text(
        "input_dir: data/copied\noutput_dir: data/counted\nseed: 5\n"
    )
    project = load_project(root, ["seed=7"])
    assert [s.stage.config.seed for s in project.stages] == [7, 7]
    project = load_project(root, ["seed=7", "count.seed=3"])
    assert [s.stage.config.seed for s in project.stages] == [7, 3]
    assert load_project(root, ["params.seed=9"]).stages[0].stage.config.seed == 9


def test_a_shorter_order_and_a_misspelt_stage_in_an_override(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "configs/pipeline.yaml").write_text("stages: [copy, count]\nupper: true\n")
    (root / "configs/stages/copy.yaml").write_text("input_dir: data/raw\noutput_dir: data/c\n")
    assert [s.name for s in load_project(root, ["stages=[count]"]).stages] == ["count"]
    with pytest.raises(ConfigError, match=r"'cpy' is no stage; did you mean copy\.upper\?"):
        load_project(root, ["cpy.upper=false"])


def test_a_typo_in_the_list_is_reported_in_the_list(tmp_path: Path) -> None:
    root = make(tmp_path)
    main = root / "configs/pipeline.yaml"
    main.write_text("stages:\n  - copy\n  - cuont\n")
    with pytest.raises(ConfigError, match="did you mean 'count'") as info:
        load_project(root)
    assert (Path(str(info.value.file)), info.value.line) == (main, 3)


def test_a_stream_project_with_an_unrelated_configs_folder_stays_a_stream_project(
    tmp_path: Path,
) -> None:
    project = tmp_path / "p"
    stages = project / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (stages / "10_double.py").write_text(
        "from conveyor import MapStage\nstage = MapStage(lambda x: 2 * x)\n"
    )
    (project / "src/pipeline/config.yaml").write_text("pipeline: {name: p}\n")
    (project / "configs").mkdir()
    (project / "configs/pipeline.yaml").write_text("model: resnet\n")
    assert find_layout(project).kind == "stream"
    assert [s.name for s in load_project(project).stages] == ["double"]
    assert check_project(project) == []


def test_shared_params_count_in_fingerprints_and_stay_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "p"
    stages = project / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (stages / "00_source.py").write_text(
        textwrap.dedent(
            """
            from conveyor.project import Source

            class Numbers(Source):
                deterministic = True
                def read(self):
                    return iter(range(5))
            """
        )
    )
    (stages / "10_scale.py").write_text(
        textwrap.dedent(
            """
            from pydantic import BaseModel, field_validator
            from conveyor import MapStage

            class Scale(MapStage):
                class Config(BaseModel):
                    factor: int = 1
                    token: str = ""

                    @field_validator("token")
                    @classmethod
                    def _token(cls, value):
                        if value and not value.startswith("t-"):
                            raise ValueError(f"token {value} must start with t-")
                        return value

                def __init__(self, config):
                    factor = config.factor
                    super().__init__(lambda x: {"v": x * factor})
                    self.config = config
            """
        )
    )
    config = project / "src/pipeline/config.yaml"
    config.write_text("params: {factor: 3}\nstages:\n  scale:\n    persist: {path: data/scaled}\n")
    run_project(project, handle_signals=False)
    assert run_project(project, handle_signals=False).skipped == ["scale"]  # unchanged
    config.write_text("params: {factor: 5}\nstages:\n  scale:\n    persist: {path: data/scaled}\n")
    assert run_project(project, handle_signals=False).skipped == []  # a shared param changed

    config.write_text("params: {token: '${TOKEN}'}\n")
    monkeypatch.setenv("TOKEN", "supersecret")
    with pytest.raises(ConfigError) as info:
        load_project(project)
    assert "supersecret" not in str(info.value)
    assert "***" in str(info.value)


def test_inputs_and_outputs_of_path_fields(tmp_path: Path) -> None:
    from pydantic import BaseModel

    from conveyor.project import TaskStage

    class Paths(BaseModel):
        input_dir: Path
        output_dir: Path

    class Step(TaskStage):
        def run(self, config: object) -> None: ...
        def validate(self) -> bool:
            return True

    step = Step()
    step.config = Paths(input_dir=Path("data/in"), output_dir=Path("data/out"))
    assert (step.inputs(), step.outputs()) == (["data/in"], ["data/out"])


def test_a_failing_task_stage_is_one_error_at_its_line_and_over_budget_exits_3(
    tmp_path: Path,
) -> None:
    root = make(tmp_path)
    count = root / "src/demo/stages/count.py"
    text = count.read_text()
    count.write_text(
        text.replace("        out = Path(config.output_dir)\n", "        {}['x']\n", 1)
    )
    line = text.splitlines().index("        out = Path(config.output_dir)") + 1
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(root)])
    assert result.exit_code == 1
    assert f"count.py:{line}: stage 'count' failed: KeyError: 'x'" in result.output
    assert "re-run it with: conveyor run" in result.output
    assert "Traceback" not in result.output

    count.write_text(
        text.replace(
            "        out = Path(config.output_dir)\n",
            "        from conveyor.project import TaskStageFailed\n"
            "        raise TaskStageFailed('too many rejects', over_budget=True)\n",
            1,
        )
    )
    result = cli.invoke(app, ["run", str(root)])
    assert result.exit_code == 3, result.output
    assert "too many rejects" in result.output
    assert "conveyor dlq list" in result.output


def test_dlq_replay_refuses_task_stages_with_the_way_out(tmp_path: Path) -> None:
    root = make(tmp_path)
    result = CliRunner().invoke(app, ["dlq", "replay", str(root)])
    assert result.exit_code == 1
    assert "task stages" in result.output
    assert "conveyor run . stage=copy" in result.output
