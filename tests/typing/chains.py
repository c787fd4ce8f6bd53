"""Typing tests, checked by ``mypy --strict`` (part of ``make test``), never executed.

A correct chain must type-check with the right inferred types. A mismatched chain must be a
type error: each ``# type: ignore[operator]`` below is a regression test, because
``warn_unused_ignores`` turns an ignore that is no longer needed into an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import assert_type

from conveyor import (
    AggregateStage,
    BatchStage,
    ChainedStage,
    FilterStage,
    FlattenStage,
    MapStage,
    PipelineContext,
    PipelineStage,
    StageResult,
)


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


def good_chains() -> None:
    assert_type(AtoB() >> BtoC(), ChainedStage[A, C])
    assert_type(AtoB() >> BtoC() >> CtoD(), ChainedStage[A, D])
    assert_type(AtoB() >> (BtoC() >> CtoD()), ChainedStage[A, D])


def mismatched_chains() -> None:
    AtoB() >> CtoD()  # type: ignore[operator]
    BtoC() >> AtoB()  # type: ignore[operator]
    (AtoB() >> BtoC()) >> AtoB()  # type: ignore[operator]


def builtin_chains() -> None:
    def parse(s: str) -> int:
        return int(s)

    async def fetch(n: int) -> str:
        return str(n)

    chain = MapStage(parse) >> FilterStage(lambda n: n > 0) >> MapStage(fetch)
    assert_type(chain, ChainedStage[Iterable[str], list[str]])
    total = MapStage(parse) >> AggregateStage(sum)
    assert_type(total, ChainedStage[Iterable[str], int])
    roundtrip = BatchStage[int](10) >> FlattenStage[int]()
    assert_type(roundtrip, ChainedStage[Iterable[int], list[int]])
    to_int = MapStage(parse)
    to_int >> to_int  # type: ignore[operator]
