"""Fixtures shared by the observe tests."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    """Stage files import ``pipeline.…``; forget the project's modules after each test."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]
