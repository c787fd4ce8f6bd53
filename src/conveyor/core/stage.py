"""The stage abstraction and its composition with ``>>``."""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Generic, TypeVar

from conveyor.core.context import PipelineContext
from conveyor.core.result import StageResult

__all__ = ["ChainedStage", "PipelineStage", "run_stage"]

In_contra = TypeVar("In_contra", contravariant=True)
Out_co = TypeVar("Out_co", covariant=True)
Next = TypeVar("Next")


class PipelineStage(ABC, Generic[In_contra, Out_co]):
    """One single-purpose step: takes ``In``, gives ``Out``.

    Subclass it and implement :meth:`process`. The stage's ``name`` defaults to the class name
    (set a class attribute or pass it to a built-in's constructor to change it). A stage that
    must see its whole input before emitting anything (a sort, a global aggregate) sets
    ``barrier = True`` so that a streaming runner knows; one that may emit several records
    per input record sets ``expands = True``. ``input_contract`` / ``output_contract`` name
    a type or schema file the records entering / leaving the stage must satisfy; the
    streaming runner checks them at the edges.

    Stages compose with ``>>`` into a :class:`ChainedStage`; neither operand is changed:

    >>> class Double(PipelineStage[list[int], list[int]]):
    ...     async def process(self, data, context):
    ...         return StageResult.ok([2 * x for x in data])
    >>> class Total(PipelineStage[list[int], int]):
    ...     async def process(self, data, context):
    ...         return StageResult.ok(sum(data), records_in=len(data))
    >>> chain = Double() >> Total()
    >>> chain.name
    'Double >> Total'
    >>> import asyncio
    >>> asyncio.run(chain.process([1, 2, 3], PipelineContext())).unwrap()
    12
    """

    name: str
    barrier: ClassVar[bool] = False
    expands: ClassVar[bool] = False
    input_contract: ClassVar[Any] = None
    output_contract: ClassVar[Any] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

    @abstractmethod
    async def process(self, data: In_contra, context: PipelineContext) -> StageResult[Out_co]:
        """Transform ``data``; return a :class:`StageResult` (or raise: the caller wraps it)."""

    def __rshift__(self, other: PipelineStage[Out_co, Next]) -> ChainedStage[In_contra, Next]:
        if not isinstance(other, PipelineStage):
            return NotImplemented
        return ChainedStage(self, other)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class ChainedStage(PipelineStage[In_contra, Out_co]):
    """``first >> second``: runs ``first``, then ``second`` on its output; short-circuits on
    failure. A chain is itself a stage, so chains nest; :attr:`stages` lists the leaves.
    """

    def __init__(self, first: PipelineStage[In_contra, Any], second: PipelineStage[Any, Out_co]):
        self.first = first
        self.second = second
        self.name = f"{first.name} >> {second.name}"

    @property
    def stages(self) -> tuple[PipelineStage[Any, Any], ...]:
        """The leaf stages of this chain, in order (nested chains flattened)."""
        out: list[PipelineStage[Any, Any]] = []
        for part in (self.first, self.second):
            out.extend(part.stages if isinstance(part, ChainedStage) else (part,))
        return tuple(out)

    async def process(self, data: In_contra, context: PipelineContext) -> StageResult[Out_co]:
        t0 = time.perf_counter()
        first = await run_stage(self.first, data, context)
        if not first.success:
            return _with_duration(first, t0)
        second = await run_stage(self.second, first.data, context)
        return dataclasses.replace(
            second,
            records_in=first.records_in,
            records_failed=first.records_failed + second.records_failed,
            records_filtered=first.records_filtered + second.records_filtered,
            failures=first.failures + second.failures,
            duration_ms=(time.perf_counter() - t0) * 1000.0,
        )


async def run_stage(
    stage: PipelineStage[Any, Any], data: Any, context: PipelineContext
) -> StageResult[Any]:
    """Run ``stage.process``; an exception from stage code becomes a failed result.

    The result's ``duration_ms`` is measured here when the stage did not set it. Cancellation
    (``asyncio.CancelledError``) and other ``BaseException``s are never swallowed.
    """
    t0 = time.perf_counter()
    try:
        result = await stage.process(data, context)
    except Exception as exc:  # (cancellation is a BaseException: it passes through)
        return StageResult.fail(exc, duration_ms=(time.perf_counter() - t0) * 1000.0)
    if not isinstance(result, StageResult):
        error = TypeError(
            f"stage {stage.name!r} returned {type(result).__name__}, not a StageResult; "
            "return StageResult.ok(data) from process()"
        )
        return StageResult.fail(error, duration_ms=(time.perf_counter() - t0) * 1000.0)
    return _with_duration(result, t0) if result.duration_ms == 0.0 else result


def _with_duration(result: StageResult[Any], t0: float) -> StageResult[Any]:
    return dataclasses.replace(result, duration_ms=(time.perf_counter() - t0) * 1000.0)
