"""Fixtures shared by the project tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.project.scaffold import new_project


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Stage files import ``pipeline.…``; forget every project's modules after each test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh scaffolded project (``conveyor new``) in ``tmp_path/demo``."""
    root = tmp_path / "demo"
    new_project(root)
    return root.resolve()
