"""Errors that point at the fix (issue 11): contracts check outside a project, a stage
name that is a keyword, a project found from a subfolder."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.project.scaffold import new_project

runner = CliRunner()


def test_contracts_check_of_a_folder_without_contracts_is_an_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["contracts", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert "no contract files here" in result.output
    project = tmp_path / "demo"
    new_project(project)  # contracts/ holds Python models only: nothing to compare
    result = runner.invoke(app, ["contracts", "check", str(project / "data")])
    assert result.exit_code == 0, result.output
    assert "nothing to check" in result.output


def test_a_keyword_is_no_stage_name(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    new_project(project)
    before = sorted(p.name for p in (project / "src/pipeline/stages").iterdir())
    for name in ("class", "import", "Bad-Name"):
        result = runner.invoke(app, ["new", "stage", name, "--project", str(project)])
        assert result.exit_code == 1, name
        assert "pick another name" in result.output
    assert sorted(p.name for p in (project / "src/pipeline/stages").iterdir()) == before


def test_run_finds_the_project_from_a_subfolder(tmp_path: Path) -> None:
    project = tmp_path / "demo"
    new_project(project)
    result = runner.invoke(app, ["run", str(project / "src" / "pipeline" / "stages")])
    assert result.exit_code == 0, result.output
    assert (project / "data").is_dir()


def test_run_help_names_key_value_overrides() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    assert "[key=value ...]" in result.output
    assert "seed=1" in result.output
