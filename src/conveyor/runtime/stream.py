"""``Pipeline.stream``: iterate over a streaming run's outputs as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from conveyor.core.context import PipelineContext
from conveyor.core.options import RunOptions
from conveyor.core.spec import PipelineSpec
from conveyor.runtime.channel import Channel, EndOfStream
from conveyor.runtime.report import RunReport
from conveyor.runtime.runner import run_stream

__all__ = ["StreamRun"]


class StreamRun:
    """An async iterator over the outputs of a streaming run.

    Leaving the loop early cancels the run. ``report`` is set once the run has ended.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        source: Iterable[Any] | AsyncIterable[Any],
        options: RunOptions,
        *,
        context: PipelineContext | None = None,
    ) -> None:
        self._spec = spec
        self._source = source
        self._options = options
        self._context = context
        self.report: RunReport | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        outputs: Channel[list[Any]] = Channel(self._options.capacity, name="stream")

        async def sink(records: list[Any]) -> None:
            await outputs.send(records)

        async def drive() -> RunReport:
            try:
                return await run_stream(
                    self._spec, self._source, sink, self._options, context=self._context
                )
            finally:
                outputs.close()

        task = asyncio.create_task(drive())
        try:
            while True:
                try:
                    batch = await outputs.receive()
                except EndOfStream:
                    break
                for record in batch:
                    yield record
            self.report = await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
