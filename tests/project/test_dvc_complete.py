"""``conveyor dvc`` leaves nothing out (issue 10): the Source's input files and its
``source:`` section, every stage after the last persisted one (a ``branches:`` group, the
``sink:`` connector) in a last DVC stage, warnings for what DVC cannot track, ``--check``
for CI, ``--remote`` for ``dvc push``/``dvc pull``; and ``dvc repro`` for real: it
reproduces everything, skips what is unchanged, and a fresh copy pulled from the remote
has nothing to do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from _dvckit import TIMEOUT, cli_env, dvc, needs_dvc, ran
from conveyor.errors import ProjectError, UsageError
from conveyor.project.dvc import (
    dvc_pipeline,
    dvc_stages,
    dvc_yaml,
    dvc_yaml_diff,
    write_dvc_yaml,
)
from conveyor.project.project import load_project
from conveyor.project.run import run_project

CONFIG = "src/pipeline/config.yaml"
CODE = ["src/pipeline/shared", "src/pipeline/contracts"]

MODELS = '''"""The records of the penguins pipeline."""

from pydantic import BaseModel


class Penguin(BaseModel):
    id: int
    species: str
    mass_g: int
'''

CLEAN = '''"""Keeps what the later stages need, as a dict."""

from conveyor import MapStage


def clean(penguin):
    return {"id": penguin.id, "species": penguin.species.lower(), "mass_g": penguin.mass_g}


stage = MapStage(clean)
'''

ENRICH = '''"""Adds the mass in kilograms, times a factor."""

from pydantic import BaseModel

from conveyor import MapStage


class Enrich(MapStage):
    class Config(BaseModel):
        factor: float = 1.0

    def __init__(self, config: Config) -> None:
        self.factor = config.factor
        super().__init__(self.enrich)

    def enrich(self, penguin):
        return {**penguin, "kg": penguin["mass_g"] / 1000 * self.factor}
'''

COUNT = "from conveyor import AggregateStage\n\nstage = AggregateStage(len)\n"
TOTAL = (
    "from conveyor import AggregateStage\n\n"
    "stage = AggregateStage(lambda rs: round(sum(r['kg'] for r in rs), 6))\n"
)

PENGUINS = "id,species,mass_g\n1,Adelie,3750\n2,Gentoo,5200\n3,Chinstrap,3500\n4,Gentoo,5000\n"

STAGES = """\
stages:
  clean:
    persist: {path: data/clean}
  enrich:
    persist: {path: data/enriched}
    params: {factor: 1.0}
"""

SOURCE = """\
source:
  connector: csv
  path: data/in/*.csv
  model: pipeline.contracts.models:Penguin
"""

BRANCHES = """\
branches:
  metrics:
    counts: [count]
    totals: [total]
"""

SINK = "sink: {connector: jsonl, path: data/out/metrics.jsonl}\n"


def make(
    tmp_path: Path,
    *,
    source: str = SOURCE,
    stages: str = STAGES,
    branches: str = BRANCHES,
    sink: str = SINK,
    files: dict[str, str] | None = None,
) -> Path:
    """A stream project: a csv source connector, clean and enrich (persisted), a branch
    of two aggregates, a jsonl sink connector (each part replaceable)."""
    root = tmp_path / "penguins"
    package = root / "src" / "pipeline"
    for folder in ("stages", "contracts", "shared"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "contracts" / "models.py").write_text(MODELS)
    stage_files = {"10_clean.py": CLEAN, "20_enrich.py": ENRICH}
    if branches:
        stage_files |= {"30_count.py": COUNT, "40_total.py": TOTAL}
    for name, text in (stage_files | (files or {})).items():
        (package / "stages" / name).write_text(text)
    (package / "config.yaml").write_text(
        "pipeline:\n  name: penguins\n" + source + stages + branches + sink
    )
    (root / "data" / "in").mkdir(parents=True)
    (root / "data" / "in" / "penguins.csv").write_text(PENGUINS)
    return root


def config_of(root: Path) -> Path:
    return root / CONFIG


# --------------------------------------------------------------------------- generation


def test_every_part_of_a_stream_project_is_a_dvc_stage(tmp_path: Path) -> None:
    pipeline = dvc_pipeline(load_project(make(tmp_path)))
    assert pipeline.mapping() == {
        # The first record stage reads the csv connector: the folder of its glob (so
        # that a file added later is seen) and the whole source: section.
        "clean": {
            "cmd": "conveyor run . stage=clean",
            "deps": ["data/in", "src/pipeline/stages/10_clean.py", *CODE],
            "params": [{CONFIG: ["source", "stages.clean.persist"]}],
            "outs": ["data/clean"],
        },
        "enrich": {
            "cmd": "conveyor run . stage=enrich",
            "deps": ["data/clean", "src/pipeline/stages/20_enrich.py", *CODE],
            "params": [{CONFIG: ["stages.enrich.params", "stages.enrich.persist"]}],
            "outs": ["data/enriched"],
        },
        # The branch and the sink: connector, from the last persisted dataset.
        "sink": {
            "cmd": "conveyor run . --after enrich",
            "deps": [
                "data/enriched",
                "src/pipeline/stages/30_count.py",
                "src/pipeline/stages/40_total.py",
                *CODE,
            ],
            "params": [{CONFIG: ["branches.metrics", "sink"]}],
            "outs": ["data/out/metrics.jsonl"],
        },
    }
    assert pipeline.warnings == (
        "branch metrics (stages count, total): runs inside DVC stage 'sink' (the stages of "
        "a branch cannot be persisted)",
    )


def test_a_source_file_is_a_dependency(tmp_path: Path) -> None:
    source = SOURCE.replace("data/in/*.csv", "data/in/penguins.csv")
    stages = dvc_stages(load_project(make(tmp_path, source=source)))
    assert stages["clean"]["deps"][0] == "data/in/penguins.csv"


def test_a_glob_whose_folder_holds_outputs_lists_its_files(tmp_path: Path) -> None:
    root = make(tmp_path, source=SOURCE.replace("data/in/*.csv", "data/*.csv"))
    (root / "data" / "more.csv").write_text(PENGUINS)
    pipeline = dvc_pipeline(load_project(root))
    assert pipeline.mapping()["clean"]["deps"][0] == "data/more.csv"
    assert any("data/*.csv holds DVC outputs too" in w for w in pipeline.warnings)


def test_a_source_stage_file_keeps_its_params_and_inputs(tmp_path: Path) -> None:
    reader = """
from pydantic import BaseModel

from conveyor.project import Source


class Reader(Source):
    class Config(BaseModel):
        path: str = "data/in/penguins.csv"

    def __init__(self, config: Config) -> None:
        self.path = config.path

    def inputs(self) -> list[str]:
        return [self.path]

    def read(self):
        import csv

        with open(self.path, encoding="utf-8") as file:
            yield from csv.DictReader(file)
"""
    stages = STAGES + "  read:\n    params: {path: data/in/penguins.csv}\n"
    root = make(tmp_path, source="", stages=stages, files={"00_read.py": reader})
    pipeline = dvc_pipeline(load_project(root))
    clean = pipeline.mapping()["clean"]
    assert clean["deps"][:3] == [
        "src/pipeline/stages/00_read.py",
        "data/in/penguins.csv",
        "src/pipeline/stages/10_clean.py",
    ]
    assert clean["params"] == [{CONFIG: ["stages.read.params", "stages.clean.persist"]}]


def test_a_source_that_says_nothing_of_its_records_is_named(tmp_path: Path) -> None:
    opaque = (
        "from conveyor.project import Source\n\n\n"
        "class Api(Source):\n    def read(self):\n        return []\n"
    )
    root = make(tmp_path, source="", files={"00_api.py": opaque})
    warnings = dvc_pipeline(load_project(root)).warnings
    assert any(
        w.startswith("stage api: the Source declares neither inputs() nor") and "'clean'" in w
        for w in warnings
    ), warnings


URL = "https://example.org/penguins.csv"


@pytest.mark.parametrize(
    ("url", "options", "dep", "needs"),
    [
        (URL, "  sha256: " + "ab" * 32 + "\n", None, None),  # pinned: the pin is a param
        (URL, "", URL, None),  # not pinned: DVC's own URL dependency
        (URL, '  headers: {Authorization: "Bearer ${TOKEN:-x}"}\n', None, "request headers"),
        ("${BASE:-https://example.org}/penguins.csv", "", None, "${VAR} substitution"),
    ],
)
def test_an_http_source(
    tmp_path: Path, url: str, options: str, dep: str | None, needs: str | None
) -> None:
    source = (
        f"source:\n  connector: http\n  url: {url}\n"
        "  path: data/raw/penguins.csv\n  format: csv\n" + options
    )
    pipeline = dvc_pipeline(load_project(make(tmp_path, source=source)))
    clean = pipeline.mapping()["clean"]
    assert clean["deps"][0] == (dep or "src/pipeline/stages/10_clean.py")
    assert "data/raw/penguins.csv" not in clean["deps"]  # the stage makes it: not an input
    assert clean["params"] == [{CONFIG: ["source", "stages.clean.persist"]}]
    http = [w for w in pipeline.warnings if "http download" in w]
    assert len(http) == (needs is not None)
    if needs is not None:
        assert f"is not pinned by sha256 and needs {needs}" in http[0]
        assert "dvc import-url URL PATH" in http[0]


def test_a_table_sink_runs_in_a_dvc_stage_without_outs(tmp_path: Path) -> None:
    sink = "sink: {connector: sqlite, path: data/penguins.db, table: metrics}\n"
    pipeline = dvc_pipeline(load_project(make(tmp_path, sink=sink)))
    last = pipeline.mapping()["sink"]
    assert last["cmd"] == "conveyor run . --after enrich"
    assert "outs" not in last
    assert last["params"] == [{CONFIG: ["branches.metrics", "sink"]}]
    (table,) = [w for w in pipeline.warnings if w.startswith("sink:")]
    assert "the sqlite sink writes table metrics, which cannot be a DVC out" in table
    assert "dvc repro --force --single-item sink" in table


def test_a_sink_stage_after_an_unpersisted_stage(tmp_path: Path) -> None:
    writer = """
import json
from pathlib import Path

from conveyor.project import Sink


class Writer(Sink):
    def write(self, records):
        Path("data/out").mkdir(parents=True, exist_ok=True)
        with open("data/out/rows.jsonl", "a", encoding="utf-8") as out:
            out.writelines(json.dumps(r) + "\\n" for r in records)

    def outputs(self):
        return ["data/out/rows.jsonl"]
"""
    stages = "stages:\n  clean:\n    persist: {path: data/clean}\n"
    root = make(tmp_path, stages=stages, branches="", sink="", files={"90_write.py": writer})
    pipeline = dvc_pipeline(load_project(root))
    assert list(pipeline.mapping()) == ["clean", "write"]
    write = pipeline.mapping()["write"]
    assert write["cmd"] == "conveyor run . --after clean"
    assert write["deps"] == [
        "data/clean",
        "src/pipeline/stages/20_enrich.py",
        "src/pipeline/stages/90_write.py",
        *CODE,
    ]
    assert write["outs"] == ["data/out/rows.jsonl"]
    assert pipeline.warnings == (
        "stage enrich: not persisted, runs inside DVC stage 'write' (add persist: to "
        "stages.enrich to give it a DVC stage of its own)",
    )


def test_without_a_sink_the_stages_after_the_last_persisted_one_are_named(
    tmp_path: Path,
) -> None:
    stages = "stages:\n  clean:\n    persist: {path: data/clean}\n"
    pipeline = dvc_pipeline(load_project(make(tmp_path, stages=stages, branches="", sink="")))
    assert list(pipeline.mapping()) == ["clean"]
    assert pipeline.warnings == (
        "stages enrich: not persisted and no Sink follows, so every run drops their "
        "records: no DVC stage runs them; persist the last one, or add a Sink",
    )


def test_a_persisted_stage_after_a_branch_names_the_fix(tmp_path: Path) -> None:
    last = '"""After the branch."""\n\nfrom conveyor import MapStage\n\nstage = MapStage(dict)\n'
    stages = STAGES + "  after:\n    persist: {path: data/after}\n"
    root = make(tmp_path, stages=stages, files={"50_after.py": last})
    with pytest.raises(ProjectError, match="is in branch 'metrics', whose stages cannot be"):
        dvc_stages(load_project(root))


def test_a_sink_out_inside_a_persisted_dataset_is_refused(tmp_path: Path) -> None:
    sink = "sink: {connector: jsonl, path: data/enriched/out.jsonl}\n"
    with pytest.raises(ProjectError, match="overlap"):
        dvc_stages(load_project(make(tmp_path, sink=sink)))


# --------------------------------------------------------------------------- --after


def test_run_after_a_persisted_stage_runs_the_rest_into_the_sink(tmp_path: Path) -> None:
    root = make(tmp_path)
    run_project(root, handle_signals=False)
    enriched = root / "data" / "enriched" / "_manifest.json"
    before = enriched.stat().st_mtime_ns
    (root / "data" / "out" / "metrics.jsonl").unlink()
    outcome = run_project(root, handle_signals=False, after="enrich")
    assert outcome.report is not None
    assert [s.name for s in outcome.report.stages][-1] != "clean"
    assert enriched.stat().st_mtime_ns == before  # read, not written
    metrics = (root / "data" / "out" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in metrics] == [{"counts": 4, "totals": 17.45}]


def test_run_after_refuses_what_it_cannot_start_from(tmp_path: Path) -> None:
    root = make(tmp_path)
    with pytest.raises(ProjectError, match="'count' is not persisted"):
        run_project(root, handle_signals=False, after="count")
    with pytest.raises(UsageError, match="exclude each other"):
        run_project(root, ["stage=enrich"], handle_signals=False, after="clean")
    with pytest.raises(ProjectError, match="did you mean 'enrich'"):
        run_project(root, handle_signals=False, after="enrch")


def test_the_first_record_stage_runs_alone_on_a_source_connector(tmp_path: Path) -> None:
    root = make(tmp_path)
    outcome = run_project(root, ["stage=clean"], handle_signals=False)
    assert outcome.report is not None
    assert (root / "data" / "clean" / "_manifest.json").is_file()


# --------------------------------------------------------------------------- the CLI


def conveyor(root: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def test_check_fails_until_dvc_yaml_is_regenerated_and_writes_nothing(tmp_path: Path) -> None:
    root = make(tmp_path)
    env = cli_env(tmp_path)
    missing = conveyor(root, "dvc", ".", "--check", env=env)
    assert missing.returncode == 1, missing.stderr
    assert "dvc.yaml (missing)" in missing.stdout
    assert "+    cmd: conveyor run . --after enrich" in missing.stdout
    assert not (root / "dvc.yaml").exists()
    assert not (root / ".dvcignore").exists()

    wrote = conveyor(root, "dvc", ".", env=env)
    assert wrote.returncode == 0, wrote.stderr
    assert "wrote" in wrote.stdout
    assert "warning: branch metrics (stages count, total): runs inside DVC stage" in wrote.stderr
    passed = conveyor(root, "dvc", ".", "--check", env=env)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "is up to date" in passed.stdout

    # A change to the persisted stages of config.yaml: dvc.yaml is out of date.
    config = config_of(root)
    config.write_text(config.read_text().replace("data/enriched", "data/heavier"))
    text = (root / "dvc.yaml").read_text()
    stale = conveyor(root, "dvc", ".", "--check", env=env)
    assert stale.returncode == 1
    assert "-    - data/enriched" in stale.stdout
    assert "+    - data/heavier" in stale.stdout
    assert "run: conveyor dvc ." in stale.stderr
    assert (root / "dvc.yaml").read_text() == text  # nothing written
    assert conveyor(root, "dvc", ".", env=env).returncode == 0
    assert conveyor(root, "dvc", ".", "--check", env=env).returncode == 0


def test_dvc_yaml_diff_is_empty_when_it_matches(tmp_path: Path) -> None:
    project = load_project(make(tmp_path))
    write_dvc_yaml(project)
    generated = dvc_yaml(project)
    assert dvc_yaml_diff(generated) == ""
    assert yaml.safe_load(generated.text)["stages"] == dvc_stages(project)


def test_check_and_remote_usage_errors(tmp_path: Path) -> None:
    root = make(tmp_path)
    env = cli_env(tmp_path)
    both = conveyor(root, "dvc", ".", "--check", "--remote", "s", "/tmp/x", env=env)
    assert both.returncode == 1
    assert "--check writes nothing" in both.stderr
    alone = conveyor(root, "dvc", ".", "-d", env=env)
    assert alone.returncode == 1
    assert "-d/--default goes with --remote" in alone.stderr


# --------------------------------------------------------------------------- real DVC


def metrics(root: Path) -> list[dict[str, object]]:
    text = (root / "data" / "out" / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@needs_dvc
@pytest.mark.timeout(300)
def test_remote_inits_the_repo_adds_and_then_modifies_the_remote(tmp_path: Path) -> None:
    root = make(tmp_path)
    env = cli_env(tmp_path)
    first = conveyor(root, "dvc", ".", "--remote", "storage", str(tmp_path / "one"), env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"dvc init --no-scm in {root}" in first.stdout
    assert f"added DVC remote storage: {tmp_path / 'one'}" in first.stdout
    assert (root / ".dvc" / "config").is_file()
    assert (root / "dvc.yaml").is_file()
    assert "one" in dvc(root, "remote", "list", env=env)

    # Again with the same name: the remote points elsewhere (its other options stay).
    dvc(root, "remote", "modify", "storage", "jobs", "2", env=env)
    again = conveyor(root, "dvc", ".", "--remote", "storage", "../two", "-d", env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "dvc init" not in again.stdout  # a DVC repository already
    assert "now points to" in again.stdout
    assert "is the default" in again.stdout
    listed = dvc(root, "remote", "list", env=env)
    assert str((root.parent / "two").resolve()) in listed
    assert "one" not in listed
    assert dvc(root, "config", "core.remote", env=env).strip() == "storage"
    assert dvc(root, "config", "remote.storage.jobs", env=env).strip() == "2"


@needs_dvc
@pytest.mark.timeout(900)
def test_dvc_repro_push_and_pull_into_a_fresh_copy(tmp_path: Path) -> None:
    root = make(tmp_path)
    env = cli_env(tmp_path)
    remote = tmp_path / "remote"
    done = conveyor(root, "dvc", ".", "--remote", "storage", str(remote), "-d", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    dvc(root, "config", "core.check_update", "false", env=env)
    dvc(root, "add", "data/in", env=env)  # the input data, versioned by DVC

    first = dvc(root, "repro", env=env)
    assert ran(first) == {"clean", "enrich", "sink"}, first
    assert metrics(root) == [{"counts": 4, "totals": 17.45}]

    second = dvc(root, "repro", env=env)
    assert ran(second) == set(), second
    assert "Data and pipelines are up to date." in second

    # A param of enrich: enrich and what follows it re-run, clean does not.
    config = config_of(root)
    config.write_text(config.read_text().replace("factor: 1.0", "factor: 2.0"))
    third = dvc(root, "repro", env=env)
    assert ran(third) == {"enrich", "sink"}, third
    assert "Stage 'clean' didn't change, skipping" in third
    assert metrics(root) == [{"counts": 4, "totals": 34.9}]

    # A new input file is seen (the glob's folder is the dependency).
    (root / "data" / "in" / "more.csv").write_text("id,species,mass_g\n5,Adelie,4000\n")
    dvc(root, "add", "data/in", env=env)
    fourth = dvc(root, "repro", env=env)
    assert ran(fourth) == {"clean", "enrich", "sink"}, fourth
    assert metrics(root) == [{"counts": 5, "totals": 42.9}]

    dvc(root, "push", env=env)

    # A fresh copy: the code and config, not the data, the cache or Conveyor's state.
    copy = tmp_path / "copy"
    for name in ("src", "dvc.yaml", "dvc.lock", ".dvcignore", "data/in.dvc", ".dvc/config"):
        source, target = root / name, copy / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    assert not (copy / "data" / "in").exists()
    dvc(copy, "pull", env=env)
    assert metrics(copy) == [{"counts": 5, "totals": 42.9}]
    assert "Data and pipelines are up to date." in dvc(copy, "status", env=env)
    fresh = dvc(copy, "repro", env=env)
    assert ran(fresh) == set(), fresh
    assert "Data and pipelines are up to date." in fresh
