"""``dvc.yaml`` generation, and ``dvc repro`` for real (skipped only without DVC outside CI)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from _dvckit import cli_env, dvc, needs_dvc, ran
from conveyor.errors import ProjectError
from conveyor.project.dvc import GENERATED_HEADER, dvc_stages, write_dvc_yaml
from conveyor.project.project import Project, load_project
from conveyor.project.scaffold import new_project

# An enrich stage with parameters, so that a param of the later stage can change.
ENRICH = '''"""Adds the Fahrenheit value, plus an offset."""

from pydantic import BaseModel

from conveyor import MapStage


class Enrich(MapStage):
    class Config(BaseModel):
        offset: float = 0.0

    def __init__(self, config: Config) -> None:
        self.offset = config.offset
        super().__init__(self.enrich)

    def enrich(self, reading):
        return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32 + self.offset}
'''

PERSIST = """
  validate:
    persist: {path: data/validated}
  enrich:
    persist: {path: data/enriched, format: jsonl}
    params: {offset: 0.0}
"""


def make(tmp_path: Path, stages: str = PERSIST, *, count: int = 40) -> Path:
    root = tmp_path / "proj"
    new_project(root)
    (root / "src/pipeline/stages/20_enrich.py").write_text(ENRICH, encoding="utf-8")
    config = root / "src/pipeline/config.yaml"
    text = config.read_text(encoding="utf-8").replace("count: 1000", f"count: {count}")
    config.write_text(text.replace("stages:\n", "stages:" + stages, 1), encoding="utf-8")
    return root


def load(root: Path) -> Project:
    return load_project(root)


# --------------------------------------------------------------------------- generation


def test_one_dvc_stage_per_persisted_stage(tmp_path: Path) -> None:
    stages = dvc_stages(load(make(tmp_path)))
    config = "src/pipeline/config.yaml"
    assert stages == {
        "validate": {
            "cmd": "conveyor run . stage=validate",
            "deps": [
                "src/pipeline/stages/00_source.py",
                "src/pipeline/stages/10_validate.py",
                "src/pipeline/shared",
                "src/pipeline/contracts",
            ],
            # validate has no params key in the file: only keys that exist are listed.
            "params": [{config: ["stages.source.params", "stages.validate.persist"]}],
            "outs": ["data/validated"],
        },
        "enrich": {
            "cmd": "conveyor run . stage=enrich",
            "deps": [
                "data/validated",
                "src/pipeline/stages/20_enrich.py",
                "src/pipeline/shared",
                "src/pipeline/contracts",
            ],
            "params": [{config: ["stages.enrich.params", "stages.enrich.persist"]}],
            "outs": ["data/enriched"],
        },
        # The Sink runs as the last DVC stage; the file its outputs() names is its out.
        "sink": {
            "cmd": "conveyor run . stage=sink",
            "deps": [
                "data/enriched",
                "src/pipeline/stages/90_sink.py",
                "src/pipeline/shared",
                "src/pipeline/contracts",
            ],
            "params": [{config: ["stages.sink.params"]}],
            "outs": ["data/readings.jsonl"],
        },
    }


def test_write_dvc_yaml_defaults_to_the_project_folder(tmp_path: Path) -> None:
    root = make(tmp_path)
    project = load(root)
    written = write_dvc_yaml(project)
    assert written == root / "dvc.yaml"
    text = written.read_text(encoding="utf-8")
    assert text.startswith(GENERATED_HEADER)
    assert yaml.safe_load(text) == {"stages": dvc_stages(project)}
    assert sys.executable not in text
    assert ".venv" not in text
    ignore = (root / ".dvcignore").read_text(encoding="utf-8").splitlines()
    assert "__pycache__/" in ignore
    assert "*.pyc" in ignore
    write_dvc_yaml(project)  # its own file is overwritten, .dvcignore not duplicated
    assert (root / ".dvcignore").read_text(encoding="utf-8").count("__pycache__/") == 1


def test_write_dvc_yaml_elsewhere_sets_wdir(tmp_path: Path) -> None:
    root = make(tmp_path)
    target = write_dvc_yaml(load(root), tmp_path)
    assert target == tmp_path / "dvc.yaml"
    stages = yaml.safe_load(target.read_text(encoding="utf-8"))["stages"]
    assert {stage["wdir"] for stage in stages.values()} == {"proj"}


def test_a_foreign_dvc_yaml_is_not_overwritten(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "dvc.yaml").write_text("stages:\n  mine: {cmd: echo hi}\n", encoding="utf-8")
    with pytest.raises(ProjectError, match="not written by conveyor dvc"):
        write_dvc_yaml(load(root))
    assert "mine" in (root / "dvc.yaml").read_text(encoding="utf-8")
    write_dvc_yaml(load(root), force=True)
    assert "mine" not in (root / "dvc.yaml").read_text(encoding="utf-8")


def test_a_gap_between_persisted_stages_names_the_fix(tmp_path: Path) -> None:
    root = make(tmp_path, "\n  enrich:\n    persist: {path: data/enriched}\n")
    with pytest.raises(ProjectError) as caught:
        dvc_stages(load(root))
    message = str(caught.value)
    assert "'validate'" in message
    assert "persist: {path: data/validate}" in message


@pytest.mark.parametrize(
    ("stages", "expected"),
    [
        ("\n  validate:\n    params: {}\n", "no stage has persist"),
        ("\n  validate:\n    persist: {path: /tmp/elsewhere}\n", "outside the project"),
        ("\n  validate:\n    persist: {path: src/pipeline/out}\n", "inside the pipeline folder"),
        ("\n  validate:\n    persist: {path: ..}\n", "outside the project"),
        (
            "\n  validate:\n    persist: {path: data}\n  enrich:\n    persist: {path: data/e}\n",
            "overlap",
        ),
    ],
)
def test_invalid_persist_configs(tmp_path: Path, stages: str, expected: str) -> None:
    with pytest.raises(ProjectError, match=expected):
        dvc_stages(load(make(tmp_path, stages)))


def test_persist_on_the_source_or_sink_is_rejected(tmp_path: Path) -> None:
    root = make(tmp_path, "\n  validate:\n    persist: {path: data/validated}\n")
    config = root / "src/pipeline/config.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("      count: 40\n", "      count: 40\n    persist: {path: data/raw}\n"),
        encoding="utf-8",
    )
    with pytest.raises(ProjectError, match="is a Source: its records are not written"):
        dvc_stages(load(root))
    config.write_text(
        text.replace(
            "      path: data/readings.jsonl\n",
            "      path: data/readings.jsonl\n    persist: {path: data/sunk}\n",
        ),
        encoding="utf-8",
    )
    with pytest.raises(ProjectError, match="is a Sink: its records are not written"):
        dvc_stages(load(root))


def test_a_persisted_branch_member_is_rejected(tmp_path: Path) -> None:
    root = make(tmp_path)
    config = root / "src/pipeline/config.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text + "branches:\n  both:\n    only: [enrich]\n", encoding="utf-8")
    with pytest.raises(ProjectError, match="'enrich' is inside a branch"):
        load(root)  # refused when the project loads, before any run or dvc.yaml


# --------------------------------------------------------------------------- real DVC


def records(path: Path) -> list[dict[str, object]]:
    manifest = json.loads((path / "_manifest.json").read_text(encoding="utf-8"))
    rows: list[dict[str, object]] = []
    for shard in manifest["shards"]:
        text = (path / shard["name"]).read_text(encoding="utf-8")
        rows += [json.loads(line) for line in text.splitlines() if line]
    return rows


@pytest.fixture
def dvc_env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path)


@needs_dvc
@pytest.mark.timeout(600)
def test_dvc_repro_runs_skips_and_reruns_only_the_changed_stage(
    tmp_path: Path, dvc_env: dict[str, str]
) -> None:
    root = make(tmp_path, count=40)
    dvc(root, "init", "--no-scm", env=dvc_env)
    dvc(root, "config", "core.analytics", "false", env=dvc_env)
    dvc(root, "config", "core.check_update", "false", env=dvc_env)
    write_dvc_yaml(load(root))

    first = dvc(root, "repro", env=dvc_env)
    assert ran(first) == {"validate", "enrich", "sink"}, first
    assert len(records(root / "data/validated")) == 40
    enriched = records(root / "data/enriched")
    assert len(enriched) == 40
    assert enriched[0]["fahrenheit"] == enriched[0]["celsius"] * 9 / 5 + 32  # type: ignore[operator]

    # A fresh clone has no bytecode (and a new Python writes other files): no re-run.
    caches = list((root / "src/pipeline").rglob("__pycache__"))
    assert caches  # written by the stage runs
    for cache in caches:
        shutil.rmtree(cache)
    second = dvc(root, "repro", env=dvc_env)
    assert ran(second) == set(), second
    assert "Data and pipelines are up to date" in second or "didn't change, skipping" in second

    config = root / "src/pipeline/config.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("offset: 0.0", "offset: 100.0"), encoding="utf-8")
    third = dvc(root, "repro", env=dvc_env)
    assert ran(third) == {"enrich", "sink"}, third
    assert "Stage 'validate' didn't change, skipping" in third
    enriched = records(root / "data/enriched")
    assert enriched[0]["fahrenheit"] == enriched[0]["celsius"] * 9 / 5 + 132  # type: ignore[operator]

    fourth = dvc(root, "repro", env=dvc_env)
    assert ran(fourth) == set(), fourth


@needs_dvc
@pytest.mark.timeout(600)
def test_dvc_repro_reruns_everything_when_the_source_changes(
    tmp_path: Path, dvc_env: dict[str, str]
) -> None:
    root = make(tmp_path, count=40)
    dvc(root, "init", "--no-scm", env=dvc_env)
    dvc(root, "config", "core.analytics", "false", env=dvc_env)
    dvc(root, "config", "core.check_update", "false", env=dvc_env)
    write_dvc_yaml(load(root))
    assert ran(dvc(root, "repro", env=dvc_env)) == {"validate", "enrich", "sink"}

    config = root / "src/pipeline/config.yaml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("count: 40", "count: 7"), encoding="utf-8")
    output = dvc(root, "repro", env=dvc_env)
    assert ran(output) == {"validate", "enrich", "sink"}, output
    assert len(records(root / "data/validated")) == 7
    assert len(records(root / "data/enriched")) == 7


def test_a_sink_that_names_its_outputs_is_the_last_dvc_stage() -> None:
    from conveyor.project.project import load_project

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    stages = dvc_stages(load_project(digits))
    assert list(stages) == ["preprocess", "validate", "split", "export"]
    export = stages["export"]
    assert export["cmd"] == "conveyor run . stage=export"
    assert export["deps"][:2] == ["data/assigned", "src/pipeline/stages/90_export.py"]
    assert export["outs"] == ["data/splits"]
    # The committed dvc.yaml is what `conveyor dvc` writes today.
    committed = yaml.safe_load((digits / "dvc.yaml").read_text(encoding="utf-8"))
    assert committed["stages"] == stages


@needs_dvc
@pytest.mark.timeout(600)
def test_dvc_repro_reproduces_the_digits_reference_pipeline(
    tmp_path: Path, dvc_env: dict[str, str]
) -> None:
    import shutil

    digits = Path(__file__).resolve().parents[2] / "examples" / "digits"
    root = tmp_path / "digits"
    shutil.copytree(digits, root, ignore=shutil.ignore_patterns("data", ".conveyor", ".dvc"))
    dvc(root, "init", "--no-scm", env=dvc_env)
    dvc(root, "config", "core.analytics", "false", env=dvc_env)
    dvc(root, "config", "core.check_update", "false", env=dvc_env)
    first = dvc(root, "repro", env=dvc_env)
    assert ran(first) == {"preprocess", "validate", "split", "export"}, first
    manifest = json.loads((root / "data/splits/manifest.json").read_text(encoding="utf-8"))
    assert manifest["records"] == 1797
    assert ran(dvc(root, "repro", env=dvc_env)) == set()
    config = root / "src/pipeline/config.yaml"
    config.write_text(
        config.read_text(encoding="utf-8").replace("seed: 20261122", "seed: 7"), encoding="utf-8"
    )
    assert ran(dvc(root, "repro", env=dvc_env)) == {"split", "export"}
