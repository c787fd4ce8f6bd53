"""``>>`` is type-checked: mypy --strict, on snippets using the installed conveyor, must
reject a chain whose output and input types do not meet, and accept one whose types do."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from mypy import api

PRELUDE = """\
from __future__ import annotations

from typing import assert_type

from conveyor import ChainedStage, PipelineContext, PipelineStage, StageResult


class A: ...
class B: ...
class C: ...
class D: ...


class AtoB(PipelineStage[A, B]):
    async def process(self, data: A, context: PipelineContext) -> StageResult[B]:
        return StageResult.ok(B())


class BtoC(PipelineStage[B, C]):
    async def process(self, data: B, context: PipelineContext) -> StageResult[C]:
        return StageResult.ok(C())


class CtoD(PipelineStage[C, D]):
    async def process(self, data: C, context: PipelineContext) -> StageResult[D]:
        return StageResult.ok(D())
"""

GOOD = """
def good() -> None:
    assert_type(AtoB() >> BtoC(), ChainedStage[A, C])
    assert_type(AtoB() >> BtoC() >> CtoD(), ChainedStage[A, D])
    assert_type(AtoB() >> (BtoC() >> CtoD()), ChainedStage[A, D])
"""

BAD = """
def bad() -> None:
    AtoB() >> CtoD()  # BAD: Stage[A, B] >> Stage[C, D]
    (AtoB() >> BtoC()) >> AtoB()  # BAD: a chain ending in C fed into a stage taking A
    CtoD() >> AtoB()  # BAD: D is not A
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy_cache")


def check(source: str, tmp_path: Path, cache_dir: Path) -> tuple[list[str], int]:
    """mypy --strict on ``PRELUDE + source``; its error lines and exit status."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(PRELUDE + textwrap.dedent(source))
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\n")  # isolate from the repository's own configuration
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(cache_dir),
            "--show-error-codes",
            "--no-error-summary",
            "--no-pretty",
            str(snippet),
        ]
    )
    assert not stderr, stderr
    return [line for line in stdout.splitlines() if ": error:" in line], status


def line_numbers(source: str, marker: str) -> set[int]:
    offset = len(PRELUDE.splitlines())
    lines = textwrap.dedent(source).splitlines()
    return {offset + i for i, line in enumerate(lines, start=1) if marker in line}


def test_correct_chains_type_check(tmp_path: Path, cache_dir: Path) -> None:
    errors, status = check(GOOD, tmp_path, cache_dir)
    assert errors == []
    assert status == 0


def test_mismatched_chain_is_an_operator_error(tmp_path: Path, cache_dir: Path) -> None:
    errors, status = check(BAD, tmp_path, cache_dir)
    assert status == 1
    flagged = {
        int(match.group(1))
        for line in errors
        if (match := re.search(r":(\d+): error: .*\[operator\]$", line))
    }
    assert flagged == line_numbers(BAD, "# BAD")
    assert any('"AtoB" and "CtoD"' in line for line in errors), errors
    assert all(line.endswith("[operator]") for line in errors), errors
