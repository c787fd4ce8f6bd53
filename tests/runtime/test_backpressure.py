"""Back-pressure: a slow consumer holds the producer back, and channels never hold more than
their capacity. The evidence is counted (records produced minus records consumed), not
timed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import _fns
import pytest

from conveyor import MapStage, Pipeline, PipelineSpec, RunOptions, StageOptions
from conveyor.dlq import MemoryDeadLetterStore
from conveyor.runtime import StreamRunner

TOTAL = 400


def lead_bound(stages: int, capacity: int, concurrency: int, batch_size: int) -> int:
    """At most this many records can be produced and not yet consumed: per stage (sink
    included) a full input channel, the micro-batches in flight and a little slack, plus
    what the source reader holds."""
    return (stages + 1) * (capacity + concurrency + 2) * batch_size


class Tally:
    """Counts records handed out by a source and records received by a slow sink."""

    def __init__(self) -> None:
        self.produced = 0
        self.consumed = 0
        self.max_lead = 0

    async def source(self) -> AsyncIterator[int]:
        for i in range(TOTAL):
            self.produced += 1
            self.max_lead = max(self.max_lead, self.produced - self.consumed)
            yield i
            if i % 10 == 0:
                await asyncio.sleep(0)

    def sync_source(self) -> Iterator[int]:
        for i in range(TOTAL):
            self.produced += 1
            self.max_lead = max(self.max_lead, self.produced - self.consumed)
            yield i

    async def slow_sink(self, batch: list[Any]) -> None:
        self.consumed += len(batch)
        await asyncio.sleep(0.001)


@pytest.mark.parametrize(("capacity", "concurrency", "batch_size"), [(1, 1, 5), (3, 2, 4)])
async def test_slow_sink_holds_back_an_async_source(
    capacity: int, concurrency: int, batch_size: int
) -> None:
    tally = Tally()
    pipeline = Pipeline[Any, Any]("bp").add_stage(
        MapStage(_fns.inc, name="inc"), options=StageOptions(concurrency=concurrency)
    )
    report = await pipeline.arun(
        tally.source(),
        tally.slow_sink,
        batch_size=batch_size,
        capacity=capacity,
        linger=0.01,
        dead_letters="memory",
    )
    assert report.records_out == TOTAL
    bound = lead_bound(2, capacity, concurrency, batch_size)
    assert bound < TOTAL / 2  # so the bound below means something
    assert tally.max_lead <= bound
    for channel in report.channels:
        assert channel.peak <= capacity
    # The slow sink's input channel was full at some point: back-pressure engaged.
    assert report.channels[-1].peak == capacity


async def test_slow_stage_holds_back_a_sync_source() -> None:
    tally = Tally()

    async def slow(x: int) -> int:
        tally.consumed += 1
        await asyncio.sleep(0.0002)
        return x

    pipeline = Pipeline[Any, Any]("bp").add_stage(MapStage(slow, name="slow"))
    report = await pipeline.arun(
        tally.sync_source(), [].extend, batch_size=4, capacity=2, dead_letters="memory"
    )
    assert report.records_out == TOTAL
    assert tally.max_lead <= lead_bound(1, 2, 1, 4)
    assert all(channel.peak <= 2 for channel in report.channels)


async def test_progress_shows_waiting_senders_behind_a_slow_stage() -> None:
    seen: list[Any] = []
    runner: StreamRunner

    async def sink(batch: list[Any]) -> None:
        stages, channels = runner.progress()
        seen.append((stages, channels))
        await asyncio.sleep(0.002)

    runner = StreamRunner(
        PipelineSpec("bp", (MapStage(_fns.inc, name="inc"),)),
        sink,
        RunOptions(batch_size=2, capacity=2, dead_letters=MemoryDeadLetterStore()),
    )
    report = await runner.run(range(60))
    assert report.records_out == 60
    assert runner.dead_letter_store.description == "memory"
    stats_names = [s.name for s in seen[-1][0]]
    assert stats_names == ["inc", "sink"]
    # Somewhere during the run a sender was parked on a full channel, and no channel ever
    # held more than its capacity.
    assert any(ch.waiting_senders for _, channels in seen for ch in channels)
    assert all(ch.buffered <= ch.capacity for _, channels in seen for ch in channels)
    assert [ch.name for ch in report.channels] == ["source -> inc", "inc -> sink"]
    assert all(ch.closed and ch.sent == ch.received for ch in report.channels)
