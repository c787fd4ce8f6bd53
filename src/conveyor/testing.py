"""Helpers for testing your own stages and pipelines.

>>> from conveyor import MapStage
>>> result = run_stage_on(MapStage(lambda r: 10 // r, name="invert"), [1, 0, 5])
>>> result.outputs, [(d.record, d.error_type) for d in result.dead_letters]
([10, 2], [(0, 'builtins.ZeroDivisionError')])
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.context import PipelineContext
from conveyor.core.stage import PipelineStage
from conveyor.dlq import DeadLetter, MemoryDeadLetterStore
from conveyor.pipeline import Pipeline
from conveyor.runtime import RunReport

__all__ = [
    "MemorySink",
    "TestRun",
    "arun_pipeline_on",
    "make_context",
    "run_pipeline_on",
    "run_stage_on",
]


@dataclass
class MemorySink:
    """A sink that keeps everything it receives: ``records`` flat, ``batches`` as received.

    >>> sink = MemorySink(); sink([1, 2]); sink([3]); sink.records, len(sink.batches)
    ([1, 2, 3], 2)
    """

    records: list[Any] = field(default_factory=list)
    batches: list[list[Any]] = field(default_factory=list)

    def __call__(self, batch: list[Any]) -> None:
        self.batches.append(list(batch))
        self.records.extend(batch)


@dataclass(frozen=True)
class TestRun:
    """Outcome of a test run: the sink's records, the dead letters and the report."""

    __test__ = False  # not a pytest test class

    outputs: list[Any]
    dead_letters: list[DeadLetter]
    report: RunReport


def make_context(**metadata: Any) -> PipelineContext:
    """A fresh :class:`PipelineContext` whose metadata holds ``metadata``.

    >>> make_context(tenant="acme").metadata
    {'tenant': 'acme'}
    """
    return PipelineContext(metadata=dict(metadata))


async def arun_pipeline_on(
    pipeline: Pipeline[Any, Any], records: Iterable[Any] | AsyncIterable[Any], /, **options: Any
) -> TestRun:
    """Stream ``records`` through ``pipeline`` with an in-memory sink and dead-letter store.

    ``options`` are those of :meth:`Pipeline.arun` (batch_size, stage_options, …).
    """
    sink = MemorySink()
    store = options.pop("dead_letters", None) or MemoryDeadLetterStore()
    report = await pipeline.arun(records, sink, dead_letters=store, **options)
    return TestRun(sink.records, store.list(run_id=report.run_id), report)


def run_pipeline_on(
    pipeline: Pipeline[Any, Any], records: Iterable[Any] | AsyncIterable[Any], /, **options: Any
) -> TestRun:
    """Sync form of :func:`arun_pipeline_on` (not inside a running event loop)."""
    return asyncio.run(arun_pipeline_on(pipeline, records, **options))


def run_stage_on(
    stage: PipelineStage[Any, Any],
    records: Iterable[Any] | AsyncIterable[Any],
    /,
    **options: Any,
) -> TestRun:
    """Stream ``records`` through the single ``stage``; see :func:`run_pipeline_on`.

    Stage options (``executor``, ``retry``, ``timeout`` …) may be passed as ``stage=`` a
    :class:`StageOptions`.
    """
    stage_opts = options.pop("stage", None)
    pipeline: Pipeline[Any, Any] = Pipeline(f"test:{stage.name}")
    pipeline.add_stage(stage, options=stage_opts)
    return run_pipeline_on(pipeline, records, **options)
