"""``conveyor new stage NAME --kind KIND`` (issue 11): each kind writes a stage file that
parses, type-checks under ``mypy --strict`` in the project, passes ``conveyor check``, has
a passing test of its own, and runs in the project, its records checked at the sink.
A source or a sink is refused while the project has one; an unknown kind names the kinds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _cli import conveyor, flat
from mypy import api

from conveyor.cli import _STAGE_KINDS
from conveyor.project.scaffold import STAGE_KINDS

COUNT = 250
"""Readings the scaffold's source emits in these runs (``stages.source.params.count``)."""


def reading(i: int) -> dict[str, Any]:
    """The ``i``-th record the scaffold's pipeline writes (its source, then enrich)."""
    celsius = (i % 50) - 10.0
    return {"sensor": f"s{i % 3}", "celsius": celsius, "fahrenheit": celsius * 9 / 5 + 32}


READINGS = [reading(i) for i in range(COUNT)]


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def new_project(tmp_path: Path) -> Path:
    done = conveyor("new", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "demo"


def stages(project: Path) -> Path:
    return project / "src" / "pipeline" / "stages"


def config(project: Path) -> Path:
    return project / "src" / "pipeline" / "config.yaml"


def drop_stage(project: Path, file: str, section: str) -> None:
    """Delete a scaffold stage file and its ``stages:`` entry of config.yaml."""
    (stages(project) / file).unlink()
    text = config(project).read_text()
    assert section in text
    config(project).write_text(text.replace(section, ""))


def strict_mypy(project: Path, file: Path, cache: Path) -> tuple[str, int]:
    """``mypy --strict`` on one stage file, with the project's ``src/`` importable."""
    ini = project.parent / "mypy.ini"
    ini.write_text(f"[mypy]\nmypy_path = {project / 'src'}\n")  # not the repository's config
    stdout, stderr, status = api.run(
        ["--strict", "--config-file", str(ini), "--cache-dir", str(cache), str(file)]
    )
    return stdout + stderr, status


def project_tests(folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()]


SOURCE_SECTION = "  source:\n    params:\n      count: 1000\n"
SINK_SECTION = "  sink:\n    params:\n      path: data/readings.jsonl\n"

EXPECTED_FILE = {
    "map": "55_extra.py",
    "filter": "55_extra.py",
    "validate": "55_extra.py",
    "aggregate": "55_extra.py",
    "batch": "55_extra.py",
    "source": "00_extra.py",  # before the first stage (the scaffold's source is deleted)
    "sink": "30_extra.py",  # after the last (20_enrich; the scaffold's sink is deleted)
}


@pytest.mark.parametrize("kind", STAGE_KINDS)
def test_each_kind_type_checks_lints_and_runs(kind: str, tmp_path: Path, mypy_cache: Path) -> None:
    project = new_project(tmp_path)
    if kind == "source":  # a project reads one source: the scaffold's goes (and the stages
        drop_stage(project, "00_source.py", SOURCE_SECTION)  # that need its readings)
        for file in ("10_validate.py", "20_enrich.py"):
            (stages(project) / file).unlink()
        (stages(project) / "__tests__" / "test_stages.py").unlink()
    if kind == "sink":  # a project writes to one sink
        drop_stage(project, "90_sink.py", SINK_SECTION)

    added = conveyor(
        "new", "stage", "extra", "--kind", kind, "--project", str(project), cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    stage_file = stages(project) / EXPECTED_FILE[kind]
    test_file = stages(project) / "__tests__" / "test_extra.py"
    assert flat(added.stdout) == flat(
        f"wrote {stage_file}\nwrote {test_file}\nwrote {config(project)}"
    )
    assert "  extra:\n    params: " in config(project).read_text()

    compile(stage_file.read_text(), str(stage_file), "exec")  # it parses
    report, status = strict_mypy(project, stage_file, mypy_cache)
    assert status == 0, report

    checked = conveyor("check", str(project), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no violations" in checked.stdout

    own = project_tests(test_file, tmp_path)
    assert own.returncode == 0, own.stdout + own.stderr
    assert "1 passed" in own.stdout

    count = [] if kind == "source" else [f"stages.source.params.count={COUNT}"]
    run = conveyor("run", str(project), *count, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    out = flat(run.stdout)
    if kind != "source":  # (the table's rows are the stages after the source)
        assert "extra" in out
    readings = project / "data" / "readings.jsonl"
    if kind in ("map", "filter", "validate"):
        assert f"demo completed: {COUNT} in, {COUNT} out, 0 filtered, 0 dead-lettered" in out
        assert lines(readings) == READINGS
    elif kind == "aggregate":
        assert f"demo completed: {COUNT} in, 1 out" in out
        assert lines(readings) == [{"records": COUNT}]
    elif kind == "batch":  # lists of the default size, 100
        assert lines(readings) == [READINGS[:100], READINGS[100:200], READINGS[200:]]
    elif kind == "source":  # the scaffold's sink, fed by the new source (count: 10)
        assert "demo completed: 10 in, 10 out" in out
        assert lines(readings) == [{"id": i} for i in range(10)]
    else:  # the new sink writes data/extra.jsonl
        assert "sink: data/extra.jsonl" in out
        assert lines(project / "data" / "extra.jsonl") == READINGS
        assert not readings.exists()


@pytest.mark.parametrize(
    ("kind", "body", "after", "expected"),
    [
        ("map", "return {**record, 'seen': True}", "return record", "250 out, 0 filtered"),
        ("filter", "return record['celsius'] >= 0", "return True", "200 out, 50 filtered"),
        (
            "validate",
            "return record['celsius'] < 35 or f\"too warm: {record['celsius']}\"",
            "return True",
            "225 out, 0 filtered, 25 dead-lettered",
        ),
    ],
)
def test_the_stage_is_wired_into_the_run(
    kind: str, body: str, after: str, expected: str, tmp_path: Path
) -> None:
    """What the function says happens in the project's run (the stage is in the flow)."""
    project = new_project(tmp_path)
    added = conveyor(
        "new", "stage", "extra", "--kind", kind, "--project", str(project), cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    file = stages(project) / "55_extra.py"
    file.write_text(file.read_text().replace(after, body))
    run = conveyor(
        "run",
        str(project),
        f"stages.source.params.count={COUNT}",
        "pipeline.max_dead_letters=50%",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"demo completed: {COUNT} in, {expected}" in flat(run.stdout)
    written = lines(project / "data" / "readings.jsonl")
    if kind == "map":
        assert written == [{**r, "seen": True} for r in READINGS]
    elif kind == "filter":
        assert written == [r for r in READINGS if r["celsius"] >= 0]
    else:
        assert written == [r for r in READINGS if r["celsius"] < 35]
        letters = conveyor("dlq", "list", str(project), cwd=tmp_path)
        assert "too warm: 35.0" in flat(letters.stdout)


def test_the_default_kind_is_map_as_before(tmp_path: Path) -> None:
    project = new_project(tmp_path)
    added = conveyor("new", "stage", "dedupe", "--project", str(project), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    text = (stages(project) / "55_dedupe.py").read_text()
    assert "from conveyor import MapStage" in text
    assert "def dedupe(record: Any) -> Any:" in text
    assert "stage = MapStage(dedupe)" in text
    assert "  dedupe:\n    params: {}\n" in config(project).read_text()


def test_the_cli_and_the_scaffold_list_the_same_kinds() -> None:
    assert _STAGE_KINDS == STAGE_KINDS
    assert STAGE_KINDS[0] == "map"


def test_an_unknown_kind_is_refused_naming_the_kinds(tmp_path: Path) -> None:
    project = new_project(tmp_path)
    before = sorted(p.name for p in stages(project).iterdir())
    done = conveyor(
        "new", "stage", "extra", "--kind", "sinc", "--project", str(project), cwd=tmp_path
    )
    assert done.returncode == 1
    assert flat(done.stderr) == (
        "error: unknown stage kind 'sinc'; did you mean 'sink'? (kinds: map, filter, "
        "validate, source, sink, aggregate, batch)"
    )
    assert sorted(p.name for p in stages(project).iterdir()) == before
    again = conveyor("new", "other", "--kind", "map", cwd=tmp_path)
    assert again.returncode == 2  # a usage error: --kind is for a stage
    assert "--kind is for a new stage" in flat(again.stderr)


def test_names_that_are_no_identifiers_or_keywords_are_refused_for_every_kind(
    tmp_path: Path,
) -> None:
    project = new_project(tmp_path)
    before = sorted(p.name for p in stages(project).iterdir())
    for kind in ("source", "batch", "filter"):
        for name in ("class", "Bad-Name"):
            done = conveyor(
                "new", "stage", name, "--kind", kind, "--project", str(project), cwd=tmp_path
            )
            assert done.returncode == 1, (kind, name)
            assert "pick another name (e.g. clean_rows)" in flat(done.stderr)
    assert sorted(p.name for p in stages(project).iterdir()) == before


def test_a_second_source_or_sink_is_refused_naming_the_first(tmp_path: Path) -> None:
    project = new_project(tmp_path)
    source = conveyor(
        "new", "stage", "feed", "--kind", "source", "--project", str(project), cwd=tmp_path
    )
    assert source.returncode == 1
    assert flat(source.stderr) == (
        f"error: {stages(project) / '00_source.py'}: stage 'source' (00_source.py) is the "
        "project's source already, and a project reads from one: delete 00_source.py (and "
        "source: under stages: in config.yaml) first, or edit its read()"
    )
    sink = conveyor(
        "new", "stage", "out", "--kind", "sink", "--project", str(project), cwd=tmp_path
    )
    assert sink.returncode == 1
    assert "stage 'sink' (90_sink.py) is the project's sink already" in flat(sink.stderr)
    assert "or edit its write()" in flat(sink.stderr)
    after = conveyor(
        "new", "stage", "late", "--after", "90", "--project", str(project), cwd=tmp_path
    )
    assert after.returncode == 1
    assert "stage 'sink' is the Sink, the last stage: --after 90 would put a stage after it" in (
        flat(after.stderr)
    )
    placed = conveyor(
        "new",
        "stage",
        "out",
        "--kind",
        "sink",
        "--after",
        "20",
        "--project",
        str(project),
        cwd=tmp_path,
    )
    assert placed.returncode == 1
    assert "--after does not apply to --kind sink" in flat(placed.stderr)

    # with a sink: section instead of a sink stage file, that section is named, located
    drop_stage(project, "90_sink.py", SINK_SECTION)
    with config(project).open("a") as text:
        text.write("sink:\n  connector: jsonl\n  path: data/out.jsonl\n")
    section = conveyor(
        "new", "stage", "out", "--kind", "sink", "--project", str(project), cwd=tmp_path
    )
    assert section.returncode == 1
    assert flat(section.stderr).startswith(f"error: {config(project)}:")
    assert "config.yaml's sink: section (connector jsonl) is the project's sink already" in (
        flat(section.stderr)
    )


def test_names_that_would_hide_what_the_file_uses_get_a_suffix(
    tmp_path: Path, mypy_cache: Path
) -> None:
    """``filter`` (a builtin), ``len`` (which the aggregate calls), ``stage`` (the name of
    the instance) and ``source`` (a class that would hide its base) still make files that
    check and run."""
    project = new_project(tmp_path)
    for name, kind in [("filter", "filter"), ("len", "aggregate"), ("stage", "map")]:
        done = conveyor(
            "new", "stage", name, "--kind", kind, "--project", str(project), cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    texts = {p.name: p.read_text() for p in stages(project).glob("*.py")}
    assert "stage = FilterStage(filter_filter)" in texts["55_filter.py"]
    assert "stage = AggregateStage(len_aggregate)" in texts["72_len.py"]
    assert "stage = MapStage(stage_map)" in texts["81_stage.py"]
    for file in ("55_filter.py", "72_len.py", "81_stage.py"):
        report, status = strict_mypy(project, stages(project) / file, mypy_cache)
        assert status == 0, report
    run = conveyor("run", str(project), "stages.source.params.count=20", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert lines(project / "data" / "readings.jsonl") == [{"records": 20}]

    (tmp_path / "other").mkdir()
    other = new_project(tmp_path / "other")
    drop_stage(other, "00_source.py", SOURCE_SECTION)
    done = conveyor(
        "new", "stage", "source", "--kind", "source", "--project", str(other), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert "class SourceStage(Source):" in (stages(other) / "00_source.py").read_text()
    report, status = strict_mypy(other, stages(other) / "00_source.py", mypy_cache)
    assert status == 0, report
