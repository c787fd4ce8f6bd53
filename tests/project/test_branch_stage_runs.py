"""``stage=<branch group>`` runs the branch (as ``stage=<member>`` does), on the dataset
before it; an unknown name lists the stages and the branches (issue 11)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_dvc_complete import make

from conveyor.errors import ConfigError
from conveyor.project import run_project


def test_stage_equals_a_branch_name_runs_the_branch(tmp_path: Path) -> None:
    root = make(tmp_path)
    run_project(root, handle_signals=False)
    by_member = run_project(root, ["stage=count"], handle_signals=False)
    by_branch = run_project(root, ["stage=metrics"], handle_signals=False)
    assert by_member.report is not None
    assert by_branch.report is not None
    assert [s.name for s in by_branch.report.stages] == [s.name for s in by_member.report.stages]
    assert "metrics" in {s.name for s in by_branch.report.stages}
    assert by_branch.report.records_in == by_member.report.records_in == 4


def test_an_unknown_stage_lists_stages_and_branches(tmp_path: Path) -> None:
    root = make(tmp_path)
    with pytest.raises(ConfigError, match=r"did you mean 'metrics'\?.*metrics"):
        run_project(root, ["stage=metric"], handle_signals=False)
