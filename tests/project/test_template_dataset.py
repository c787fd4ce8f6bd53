"""``conveyor new --template dataset NAME``: seed 002's layout written exactly as the seed
draws it, its placeholders filled, names that cannot be packages refused, and a project
whose own commands (its pixi tasks, ``dvc repro``) and tests work."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from _dvckit import cli_env, needs_dvc
from _dvckit import dvc as run_dvc
from conveyor import __version__
from conveyor.cli import app
from conveyor.errors import ProjectError
from conveyor.project.scaffold import (
    TEMPLATE_SUFFIX,
    TEMPLATES,
    new_project,
    package_name,
    template_files,
    template_root,
)

SLUG = "my-project"
PACKAGE = "my_project"

SEED_TREE = {
    f"src/{PACKAGE}/__init__.py",
    f"src/{PACKAGE}/pipeline.py",
    *(
        f"src/{PACKAGE}/stages/{name}.py"
        for name in ("__init__", "base", "download", "preprocess", "validate", "split", "export")
    ),
    f"src/{PACKAGE}/transforms/__init__.py",
    f"src/{PACKAGE}/transforms/image.py",
    f"src/{PACKAGE}/schemas/__init__.py",
    f"src/{PACKAGE}/schemas/dataset.py",
    "configs/pipeline.yaml",
    "configs/stages/download.yaml",
    "configs/stages/preprocess.yaml",
    "data/raw/.gitkeep",
    "data/processed/.gitkeep",
    "data/splits/.gitkeep",
    "dvc.yaml",
    "tests/test_stages.py",
    "tests/test_pipeline.py",
}
"""The files of seed 002's drawing (its empty data folders kept by a .gitkeep)."""

EXTRAS = {
    "configs/stages/validate.yaml",
    "configs/stages/split.yaml",
    "configs/stages/export.yaml",
    "data/sample/digits_sample.csv.gz",
    "data/sample/NOTICE.md",
    "tests/conftest.py",
    "pyproject.toml",
    "README.md",
    ".gitignore",
    ".gitattributes",
    ".dvcignore",
}
"""What the template adds under the drawing's "...": the other stages' parameters, the
bundled sample with its notice, the test fixtures, the project files."""

STAGES = ["download", "preprocess", "validate", "split", "export"]

runner = CliRunner()


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset project ``my-project``, made once for the tests that only read it."""
    root = tmp_path_factory.mktemp("made") / SLUG
    new_project(root, "dataset")
    return root


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def text_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".gz")]


def env_for(project: Path) -> dict[str, str]:
    """The environment of a command run in a generated project: its ``src`` importable,
    Conveyor's commands (``conveyor``, ``dvc``) on the PATH, no colours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # bytecode must not make DVC stages re-run
    env["PYTHONPATH"] = str(project / "src")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(NO_COLOR="1", TERM="dumb", COLUMNS="200", DVC_NO_ANALYTICS="1")
    return env


def command(line: str) -> list[str]:
    """A pixi task's command, run with this interpreter (``python``, ``pytest``, ``dvc``)."""
    words = shlex.split(line)
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    return [sys.executable, "-m", words[0], *words[1:]]


def run_in(
    project: Path, args: list[str], timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=project,
        env=env_for(project),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- the tree --------------------------------------------------------------------------------


def test_the_tree_is_the_seeds_drawing_and_the_extras(made: Path) -> None:
    assert tree(made) == SEED_TREE | EXTRAS


def test_new_project_returns_every_file_it_wrote(tmp_path: Path) -> None:
    written = new_project(tmp_path / SLUG, "dataset")
    assert {p.relative_to(tmp_path / SLUG).as_posix() for p in written} == SEED_TREE | EXTRAS


def test_placeholders_are_filled_everywhere(made: Path) -> None:
    assert not [p for p in made.rglob("*") if "{{" in p.as_posix() or "}}" in p.as_posix()]
    for path in text_files(made):
        text = path.read_text(encoding="utf-8")
        assert "{{" not in text, path
        assert "}}" not in text, path
    pyproject = (made / "pyproject.toml").read_text(encoding="utf-8")
    assert f'name = "{SLUG}"' in pyproject
    assert f"python -m {PACKAGE}.pipeline" in pyproject
    assert f"conveyor[http]>={__version__}" in pyproject
    assert f"from {PACKAGE}.stages.base import" in (
        made / "src" / PACKAGE / "stages" / "download.py"
    ).read_text(encoding="utf-8")
    config = yaml.safe_load((made / "configs" / "pipeline.yaml").read_text(encoding="utf-8"))
    assert config["pipeline"]["name"] == SLUG


def test_the_sample_is_copied_byte_for_byte(made: Path) -> None:
    shipped = template_root("dataset") / "data" / "sample" / "digits_sample.csv.gz"
    assert (made / "data" / "sample" / "digits_sample.csv.gz").read_bytes() == (
        shipped.read_bytes()
    )
    assert "CC BY 4.0" in (made / "data" / "sample" / "NOTICE.md").read_text(encoding="utf-8")


def test_the_template_is_package_data_found_through_importlib_resources() -> None:
    root = resources.files("conveyor.project") / "templates" / "dataset"
    assert root.is_dir()
    assert str(template_root("dataset")) == str(root)
    listed = {"/".join(parts) for parts, _ in template_files("dataset")}
    assert "data/sample/digits_sample.csv.gz" in listed
    assert "src/{{package_name}}/stages/base.py" + TEMPLATE_SUFFIX in listed
    for name in listed:  # text files carry .tmpl (ruff, mypy and pytest skip them)
        assert name.endswith(TEMPLATE_SUFFIX) != name.endswith(".gz"), name
    # Under src/conveyor, so hatchling ships the folder in the wheel as it is.
    assert Path(str(root)).resolve().is_relative_to(Path(str(resources.files("conveyor"))))


# -- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "package"),
    [("my-project", "my_project"), ("my_project", "my_project"), ("Digits-2", "digits_2")],
)
def test_the_package_is_the_slug_as_an_identifier(tmp_path: Path, slug: str, package: str) -> None:
    assert package_name(slug) == package
    new_project(tmp_path / slug, "dataset")
    assert (tmp_path / slug / "src" / package / "pipeline.py").is_file()
    name = tomllib.loads((tmp_path / slug / "pyproject.toml").read_text(encoding="utf-8"))
    assert name["project"]["name"] == slug


@pytest.mark.parametrize(
    ("slug", "why"),
    [
        ("my.project", "use ASCII letters, digits, '-' and '_', starting with a letter"),
        ("1project", "starting with a letter"),
        ("_private", "starting with a letter"),
        ("naïve", "ASCII"),
        ("two words", "ASCII letters"),
        ("trailing-", "end it with a letter or a digit"),
        ("class", "'class' is a Python keyword"),
        ("json", "would hide the module 'json'"),
        ("Conveyor", "would hide the module 'conveyor'"),
        ("pydantic", "would hide the module 'pydantic'"),
    ],
)
def test_names_that_cannot_become_a_package_are_refused(
    tmp_path: Path, slug: str, why: str
) -> None:
    with pytest.raises(ProjectError, match="cannot become a Python package name") as refused:
        new_project(tmp_path / slug, "dataset")
    assert why in str(refused.value)
    assert "e.g. my-project" in str(refused.value)
    assert not (tmp_path / slug).exists()


def test_the_stream_template_keeps_its_names(tmp_path: Path) -> None:
    new_project(tmp_path / "my.project")  # a folder name the stream layout accepts
    assert (tmp_path / "my.project" / "src" / "pipeline" / "config.yaml").is_file()


def test_a_folder_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / SLUG).mkdir()
    new_project(tmp_path / SLUG, "dataset")  # empty: fine
    with pytest.raises(ProjectError, match="the folder exists and is not empty"):
        new_project(tmp_path / SLUG, "dataset")
    with pytest.raises(ProjectError, match="the folder exists and is not empty"):
        new_project(tmp_path / SLUG)


def test_too_long_names_are_refused_as_for_every_template(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="is not a folder name to make"):
        new_project(tmp_path / ("a" * 101), "dataset")


def test_an_unknown_template_lists_the_templates(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match=r"unknown template 'nope'; the templates are: ") as e:
        new_project(tmp_path / SLUG, "nope")
    assert str(e.value).endswith(", ".join(TEMPLATES))
    assert TEMPLATES == ("stream", "dataset")
    assert not (tmp_path / SLUG).exists()


# -- the command line ------------------------------------------------------------------------


def test_cli_new_template_dataset(tmp_path: Path) -> None:
    target = tmp_path / SLUG
    result = runner.invoke(app, ["new", "--template", "dataset", str(target)])
    assert result.exit_code == 0, result.output
    assert tree(target) == SEED_TREE | EXTRAS
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote ")]
    assert len(wrote) == len(SEED_TREE | EXTRAS)
    assert f"wrote {target / 'configs' / 'pipeline.yaml'}" in result.output


def test_cli_new_keeps_the_stream_layout_by_default(tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "demo" / "src" / "pipeline" / "stages" / "00_source.py").is_file()
    result = runner.invoke(app, ["new", "-t", "stream", str(tmp_path / "other")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "other" / "src" / "pipeline" / "config.yaml").is_file()


def test_cli_unknown_template_is_an_error_listing_them(tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "--template", "datasets", str(tmp_path / SLUG)])
    assert result.exit_code == 1
    assert "unknown template 'datasets'; the templates are: stream, dataset" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / SLUG).exists()


def test_cli_refuses_a_bad_package_name_and_a_template_for_a_stage(tmp_path: Path) -> None:
    result = runner.invoke(app, ["new", "--template", "dataset", str(tmp_path / "my.project")])
    assert result.exit_code == 1
    assert "cannot become a Python package name" in " ".join(result.output.split())
    result = runner.invoke(app, ["new", "--template", "dataset", "stage", "dedupe"])
    assert result.exit_code != 0
    assert "--template is for a new project" in " ".join(result.output.split())


# -- the project files -----------------------------------------------------------------------


def test_the_pyproject_is_a_project_with_a_pixi_manifest(made: Path) -> None:
    manifest = tomllib.loads((made / "pyproject.toml").read_text(encoding="utf-8"))
    project = manifest["project"]
    assert project["name"] == SLUG
    assert project["requires-python"] == ">=3.11"
    names = [dep.split(">")[0].split("[")[0] for dep in project["dependencies"]]
    assert names == ["conveyor", "pillow", "pydantic"]
    assert manifest["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [f"src/{PACKAGE}"]
    assert manifest["tool"]["pytest"]["ini_options"]["pythonpath"] == ["src"]

    pixi = manifest["tool"]["pixi"]
    assert pixi["workspace"]["channels"] == ["conda-forge"]
    assert {"linux-64", "osx-arm64", "win-64"} <= set(pixi["workspace"]["platforms"])
    assert pixi["dependencies"]["python"] == ">=3.11"
    assert pixi["pypi-dependencies"][SLUG] == {"path": ".", "editable": True}
    assert pixi["pypi-dependencies"]["conveyor"]["version"] == f">={__version__}"
    tasks = pixi["tasks"]
    assert tasks["pipeline"] == f"python -m {PACKAGE}.pipeline"
    assert tasks["preprocess"] == f"python -m {PACKAGE}.pipeline stage=preprocess"
    assert tasks["repro"] == "dvc repro"
    assert tasks["test"] == "pytest"
    for stage in STAGES:
        assert tasks[stage] == f"python -m {PACKAGE}.pipeline stage={stage}"


def test_the_configs_follow_the_dataset_schema(made: Path) -> None:
    main = yaml.safe_load((made / "configs" / "pipeline.yaml").read_text(encoding="utf-8"))
    assert main["stages"] == STAGES
    assert set(main) == {"stages", "pipeline", "seed", "raw_file"}  # two shared parameters
    for stage in STAGES:
        assert (made / "src" / PACKAGE / "stages" / f"{stage}.py").is_file()
        params = yaml.safe_load(
            (made / "configs" / "stages" / f"{stage}.yaml").read_text(encoding="utf-8")
        )
        assert {"input_dir", "output_dir"} <= set(params)


def test_dvc_yaml_has_a_stage_per_stage_with_params_that_exist(made: Path) -> None:
    dvc = yaml.safe_load((made / "dvc.yaml").read_text(encoding="utf-8"))
    assert list(dvc["stages"]) == STAGES
    for name, stage in dvc["stages"].items():
        assert stage["cmd"] == f"conveyor run . stage={name}"
        assert f"src/{PACKAGE}/stages/{name}.py" in stage["deps"]
        assert f"src/{PACKAGE}/stages/base.py" in stage["deps"]
        for dep in stage["deps"]:
            if dep.startswith(("src/", "data/sample/")):
                assert (made / dep).exists(), dep
        for entry in stage["params"]:  # DVC fails on a param its file lacks
            for file, keys in entry.items():
                document = yaml.safe_load((made / file).read_text(encoding="utf-8"))
                if keys is None:  # every parameter of the file: the stage's own
                    assert file == f"configs/stages/{name}.yaml"
                    continue
                for key in keys:
                    value = document
                    for part in key.split("."):
                        assert part in value, f"{name}: {file} has no {key}"
                        value = value[part]
        assert stage["outs"]
    assert (made / ".dvcignore").read_text(encoding="utf-8").splitlines()[-2:] == [
        "__pycache__/",
        "*.pyc",
    ]


# -- the generated code is clean -------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed")
@pytest.mark.parametrize("slug", [SLUG, "a-really-quite-unusually-long-dataset-project-name"])
def test_the_generated_code_is_ruff_clean(tmp_path: Path, slug: str) -> None:
    root = tmp_path / slug
    new_project(root, "dataset")
    for args in (["check", "src", "tests"], ["format", "--check", "src", "tests"]):
        done = run_in(root, [sys.executable, "-m", "ruff", *args, "--no-cache"], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.timeout(600)
def test_the_generated_code_is_mypy_strict_clean(made: Path, tmp_path: Path) -> None:
    cache = tmp_path / "mypy-cache"
    done = run_in(made, [sys.executable, "-m", "mypy", "--cache-dir", str(cache)], timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues found in 16 source files" in done.stdout


# -- the tasks run ---------------------------------------------------------------------------


@pytest.fixture
def fresh(tmp_path: Path) -> Path:
    root = tmp_path / SLUG
    new_project(root, "dataset")
    return root


def tasks_of(root: Path) -> dict[str, str]:
    manifest = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    tasks: dict[str, str] = manifest["tool"]["pixi"]["tasks"]
    return tasks


@pytest.mark.timeout(600)
def test_the_pipeline_task_runs_every_stage(fresh: Path) -> None:
    done = run_in(fresh, command(tasks_of(fresh)["pipeline"]))
    assert done.returncode == 0, done.stdout + done.stderr
    for stage in STAGES:
        assert f"{stage}: " in done.stdout
    assert "500 rows -> 500 images of 8x8" in done.stdout
    assert "train 400, val 50, test 50 (seed 42, stratified by label)" in done.stdout
    manifest = json.loads((fresh / "data" / "export" / "manifest.json").read_text())
    assert (manifest["dataset"], manifest["records"], manifest["seed"]) == (SLUG, 500, 42)
    for folder in ("raw", "processed", "splits"):  # the .gitkeep files stay
        assert (fresh / "data" / folder / ".gitkeep").is_file()

    again = run_in(fresh, command(tasks_of(fresh)["preprocess"]))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "preprocess: " in again.stdout
    assert "split: " not in again.stdout


def test_the_pipeline_reports_a_failing_stage_and_exits_1(fresh: Path) -> None:
    done = run_in(fresh, [*command(tasks_of(fresh)["pipeline"]), "stage=validate"])
    assert done.returncode == 1
    assert "data/processed/records.jsonl does not exist; run preprocess first" in done.stderr
    assert "error:" in done.stderr
    typo = run_in(fresh, [*command(tasks_of(fresh)["pipeline"]), "preprocess.image_sise=3"])
    assert typo.returncode == 1
    assert "did you mean 'image_size'" in typo.stderr


@pytest.mark.timeout(900)
def test_the_test_task_passes_the_projects_own_tests(fresh: Path) -> None:
    done = run_in(fresh, [*command(tasks_of(fresh)["test"]), "-p", "no:cacheprovider"], 900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert " failed" not in done.stdout
    assert " passed" in done.stdout


def test_dvc_yaml_is_what_conveyor_dvc_writes(fresh: Path) -> None:
    done = run_in(fresh, [sys.executable, "-m", "conveyor", "dvc", ".", "--check"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dvc.yaml is up to date" in done.stdout


def test_the_stages_declare_what_dvc_yaml_lists(fresh: Path) -> None:
    script = (
        "import json\n"
        "from conveyor.project.project import load_project\n"
        "project = load_project(__import__('pathlib').Path('.'))\n"
        "print(json.dumps({s.name: [s.stage.inputs(), s.stage.outputs()] "
        "for s in project.stages}))\n"
    )
    done = run_in(fresh, [sys.executable, "-c", script])
    assert done.returncode == 0, done.stderr
    declared = json.loads(done.stdout)
    dvc = yaml.safe_load((fresh / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert list(declared) == STAGES
    for name, (inputs, outputs) in declared.items():
        assert dvc[name]["outs"] == outputs
        for path in inputs:  # each input is a dep, or inside one
            assert any(path == dep or path.startswith(dep + "/") for dep in dvc[name]["deps"])


@needs_dvc
@pytest.mark.timeout(900)
def test_the_repro_task_runs_dvc_repro(fresh: Path, tmp_path: Path) -> None:
    env = {**cli_env(tmp_path), "PYTHONPATH": str(fresh / "src")}

    def dvc(*args: str) -> str:
        return run_dvc(fresh, *args, env=env)

    dvc("init", "--no-scm")
    dvc("config", "core.analytics", "false")
    repro = command(tasks_of(fresh)["repro"])
    assert repro[:3] == [sys.executable, "-m", "dvc"]
    first = dvc(*repro[3:])
    assert [s for s in STAGES if f"Running stage '{s}'" in first] == STAGES, first
    for cache in fresh.rglob("__pycache__"):  # a fresh clone has no bytecode: no re-run
        shutil.rmtree(cache)
    second = dvc(*repro[3:])
    assert "Running stage" not in second, second
    split = fresh / "configs" / "stages" / "split.yaml"
    split.write_text(
        split.read_text().replace("val: 0.1", "val: 0.05").replace("test: 0.1", "test: 0.15")
    )
    third = dvc(*repro[3:])
    assert [s for s in STAGES if f"Running stage '{s}'" in third] == ["split", "export"], third
    assert (fresh / "data" / "raw" / ".gitkeep").is_file()


def test_a_template_placeholder_that_is_not_known_is_an_error() -> None:
    from conveyor.project.scaffold import _fill

    assert _fill("{{ a }}-{{b}}", {"a": "1", "b": "2"}, "x.tmpl") == "1-2"
    with pytest.raises(ProjectError, match=r"x.tmpl: unknown placeholder \{\{c\}\}"):
        _fill("{{c}}", {"a": "1"}, "x.tmpl")
    with pytest.raises(ProjectError, match="template is missing"):
        list(template_files("nope"))


def test_new_stage_says_what_to_do_in_a_dataset_project(made: Path) -> None:
    result = runner.invoke(app, ["new", "stage", "dedupe", "--project", str(made)])
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert "in a dataset project add src/<package>/stages/dedupe.py" in said
    assert not (made / "src" / PACKAGE / "stages" / "dedupe.py").exists()


def test_check_is_clean_and_catches_a_planted_stage_import(fresh: Path) -> None:
    done = run_in(fresh, [sys.executable, "-m", "conveyor", "check", "."])
    assert done.returncode == 0, done.stdout + done.stderr
    split = fresh / "src" / PACKAGE / "stages" / "split.py"
    lines = split.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("from ")) + 1
    lines.insert(at, f"from {PACKAGE}.stages.validate import Validate  # noqa: F401")
    split.write_text("\n".join(lines) + "\n", encoding="utf-8")
    done = run_in(fresh, [sys.executable, "-m", "conveyor", "check", "."])
    assert done.returncode == 1
    assert f"{split}:{at + 1}: stage-imports-stage:" in done.stdout, done.stdout


def test_a_typo_in_the_preprocess_file_is_located(fresh: Path) -> None:
    file = fresh / "configs" / "stages" / "preprocess.yaml"
    text = file.read_text(encoding="utf-8")
    number = next(
        i for i, line in enumerate(text.splitlines(), 1) if line.startswith("image_size:")
    )
    file.write_text(text.replace("image_size:", "image_sise:"), encoding="utf-8")
    done = run_in(fresh, [*command(tasks_of(fresh)["pipeline"]), "stage=preprocess"])
    assert done.returncode == 1
    assert f"{file}:{number}:1: unknown key 'image_sise'" in done.stderr, done.stderr
    assert "did you mean 'image_size'?" in done.stderr


@needs_dvc
@pytest.mark.timeout(900)
def test_outputs_go_to_a_remote_and_come_back_into_a_fresh_copy(
    fresh: Path, tmp_path: Path
) -> None:
    def run(where: Path, *args: str) -> str:
        env = {**cli_env(tmp_path), "PYTHONPATH": str(where / "src")}
        if args[0] == "dvc":
            return run_dvc(where, *args[1:], env=env)
        done = subprocess.run(
            [sys.executable, "-m", *args],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}{done.stderr}"
        return done.stdout + done.stderr

    store = tmp_path / "store"
    run(fresh, "conveyor", "dvc", ".", "--remote", "local", str(store), "-d")
    first = run(fresh, "dvc", "repro")
    assert [s for s in STAGES if f"Running stage '{s}'" in first] == STAGES, first
    run(fresh, "dvc", "push")
    assert any(store.rglob("*")), "nothing was pushed"

    copy = tmp_path / "copy" / SLUG  # the code, the config and DVC's files; no data, no cache
    shutil.copytree(
        fresh,
        copy,
        ignore=shutil.ignore_patterns("data", "cache", "tmp", "__pycache__", ".conveyor"),
    )
    shutil.copytree(fresh / "data" / "sample", copy / "data" / "sample")
    assert not (copy / "data" / "export").exists()
    run(copy, "dvc", "pull")
    manifest = json.loads((copy / "data" / "export" / "manifest.json").read_text())
    assert manifest["records"] == 500
    status = run(copy, "dvc", "repro")
    assert "Running stage" not in status, status
    assert "Data and pipelines are up to date." in status

    # A changed pipeline: dvc.yaml no longer matches until conveyor dvc writes it again.
    main = copy / "configs" / "pipeline.yaml"
    main.write_text(main.read_text().replace("  - export\n", ""), encoding="utf-8")
    (copy / "configs" / "stages" / "export.yaml").unlink()  # (a file of no stage: an error)
    check = subprocess.run(
        [sys.executable, "-m", "conveyor", "dvc", ".", "--check"],
        cwd=copy,
        env={**cli_env(tmp_path), "PYTHONPATH": str(copy / "src")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert check.returncode == 1
    assert "-  export:" in check.stdout + check.stderr
    run(copy, "conveyor", "dvc", ".")
    run(copy, "conveyor", "dvc", ".", "--check")
