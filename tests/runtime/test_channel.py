"""``Channel``: the bounded, closeable FIFO between stages.

Blocking is shown with ``asyncio.wait_for`` timeouts (a send that cannot finish), never by
measuring how long something took.
"""

from __future__ import annotations

import asyncio

import pytest

from conveyor import PipelineDefinitionError
from conveyor.runtime import Channel, ChannelClosed, EndOfStream

SHORT = 0.05  # long enough for a ready task to run many times over


async def settle() -> None:
    """Let every ready task run until it blocks."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fifo() -> None:
    channel = Channel[int](capacity=3, name="a -> b")
    for item in (1, 2, 3):
        await channel.send(item)
    assert [await channel.receive() for _ in range(3)] == [1, 2, 3]
    stats = channel.statistics()
    assert (stats.name, stats.sent, stats.received, stats.buffered, stats.peak) == (
        "a -> b",
        3,
        3,
        0,
        3,
    )


async def test_send_blocks_while_full_and_resumes_after_a_receive() -> None:
    channel = Channel[int](capacity=1)
    await channel.send(1)
    sender = asyncio.create_task(channel.send(2))
    await settle()
    assert not sender.done()
    assert channel.statistics().waiting_senders == 1
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel.send(3), SHORT)  # a full channel makes senders wait
    assert await channel.receive() == 1
    await asyncio.wait_for(sender, 1)
    assert await channel.receive() == 2
    stats = channel.statistics()
    assert stats.peak == 1 == stats.capacity
    assert stats.waiting_senders == 0
    assert stats.sent == 2  # the timed-out send never went in


async def test_receive_waits_while_empty() -> None:
    channel = Channel[str](capacity=2)
    receiver = asyncio.create_task(channel.receive())
    await settle()
    assert channel.statistics().waiting_receivers == 1
    await channel.send("x")
    assert await asyncio.wait_for(receiver, 1) == "x"
    assert channel.statistics().waiting_receivers == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel.receive(), SHORT)


async def test_close_lets_receivers_drain_then_end() -> None:
    channel = Channel[int](capacity=4)
    await channel.send(1)
    await channel.send(2)
    channel.close()
    assert channel.closed
    assert channel.statistics().closed
    assert await channel.receive() == 1
    assert await channel.receive() == 2
    with pytest.raises(EndOfStream):
        await channel.receive()


async def test_close_wakes_a_waiting_receiver_with_end_of_stream() -> None:
    channel = Channel[int](capacity=1)
    receiver = asyncio.create_task(channel.receive())
    await settle()
    channel.close()
    with pytest.raises(EndOfStream):
        await asyncio.wait_for(receiver, 1)


async def test_send_on_a_closed_channel_raises() -> None:
    channel = Channel[int](capacity=1, name="x")
    channel.close()
    with pytest.raises(ChannelClosed, match="'x' is closed"):
        await channel.send(1)


async def test_close_fails_a_waiting_sender() -> None:
    channel = Channel[int](capacity=1)
    await channel.send(1)
    sender = asyncio.create_task(channel.send(2))
    await settle()
    channel.close()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(sender, 1)
    assert await channel.receive() == 1  # what was buffered still drains


async def test_async_iteration_stops_at_the_end() -> None:
    channel = Channel[int](capacity=5)
    for item in range(3):
        await channel.send(item)
    channel.close()
    assert [item async for item in channel] == [0, 1, 2]


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True, None])
def test_capacity_must_be_a_positive_int(capacity: object) -> None:
    with pytest.raises(PipelineDefinitionError, match="capacity must be an int >= 1"):
        Channel(capacity)  # type: ignore[arg-type]


async def test_cancelled_sender_that_was_woken_passes_the_wakeup_on() -> None:
    channel = Channel[str](capacity=1)
    await channel.send("first")
    a = asyncio.create_task(channel.send("a"))
    b = asyncio.create_task(channel.send("b"))
    await settle()
    assert channel.statistics().waiting_senders == 2
    assert await channel.receive() == "first"  # wakes a ...
    a.cancel()  # ... which is cancelled before it can run: b must get the free slot
    await asyncio.wait_for(b, 1)
    assert a.cancelled()
    assert await channel.receive() == "b"
    assert channel.statistics().buffered == 0


async def test_cancelled_receiver_that_was_woken_passes_the_wakeup_on() -> None:
    channel = Channel[str](capacity=2)
    r1 = asyncio.create_task(channel.receive())
    r2 = asyncio.create_task(channel.receive())
    await settle()
    assert channel.statistics().waiting_receivers == 2
    await channel.send("item")  # wakes r1 ...
    r1.cancel()  # ... which is cancelled first: r2 must get the item
    assert await asyncio.wait_for(r2, 1) == "item"
    assert r1.cancelled()


async def test_cancelled_waiting_sender_leaves_the_queue() -> None:
    channel = Channel[int](capacity=1)
    await channel.send(0)
    sender = asyncio.create_task(channel.send(1))
    await settle()
    sender.cancel()
    await settle()
    assert sender.cancelled()
    assert channel.statistics().waiting_senders == 0
    assert await channel.receive() == 0
    await asyncio.wait_for(channel.send(2), 1)  # the slot is free again
    assert await channel.receive() == 2
