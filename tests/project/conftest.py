"""Fixtures shared by the project tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.project.scaffold import new_project


@pytest.fixture(autouse=True)
def _isolated_imports(isolated_imports: None) -> None:
    """Every test here forgets the project modules it imported (tests/conftest.py)."""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh scaffolded project (``conveyor new``) in ``tmp_path/demo``."""
    root = tmp_path / "demo"
    new_project(root)
    return root.resolve()
