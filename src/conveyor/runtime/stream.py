"""``Pipeline.stream``: iterate over a streaming run's outputs as they arrive."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from conveyor.runtime.channel import Channel, EndOfStream
from conveyor.runtime.report import RunReport

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

__all__ = ["StreamRun"]


class StreamRun:
    """An async iterator over the outputs of a streaming run.

    Leaving the loop early cancels the run. ``report`` is set once the run has ended.
    """

    def __init__(
        self,
        pipeline: Pipeline[Any, Any],
        source: Iterable[Any] | AsyncIterable[Any],
        options: dict[str, Any],
    ) -> None:
        self._pipeline = pipeline
        self._source = source
        self._options = options
        self.report: RunReport | None = None

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        outputs: Channel[list[Any]] = Channel(self._options.get("capacity", 2), name="stream")

        async def sink(records: list[Any]) -> None:
            await outputs.send(records)

        async def drive() -> RunReport:
            try:
                return await self._pipeline.arun(self._source, sink, **self._options)
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
