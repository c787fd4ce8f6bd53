"""Fixtures shared by the observe tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_imports(isolated_imports: None) -> None:
    """Every test here forgets the project modules it imported (tests/conftest.py)."""
