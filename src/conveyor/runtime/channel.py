"""Bounded, closeable channels between stages.

Python 3.11's ``asyncio.Queue`` has no close (``shutdown`` arrived in 3.13), so Conveyor has a
small channel of its own in the manner of trio's and anyio's memory channels: a capacity that
is always finite, ``close()`` that lets receivers drain what is buffered and then see the end,
and a :meth:`Channel.statistics` snapshot for progress views and reports (ADR 0002).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from conveyor.errors import PipelineDefinitionError

__all__ = ["Channel", "ChannelClosed", "ChannelStats", "EndOfStream"]

T = TypeVar("T")


class EndOfStream(Exception):
    """Raised by :meth:`Channel.receive` when the channel is closed and drained."""


class ChannelClosed(Exception):
    """Raised by :meth:`Channel.send` on a closed channel."""


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """A snapshot of a channel: items buffered, capacity, peak buffered, tasks waiting to
    send and to receive, and totals sent and received."""

    name: str
    buffered: int
    capacity: int
    peak: int
    waiting_senders: int
    waiting_receivers: int
    sent: int
    received: int
    closed: bool


class Channel(Generic[T]):
    """A FIFO of at most ``capacity`` items; ``send`` waits while it is full.

    >>> async def demo():
    ...     ch = Channel[int](capacity=2, name="a->b")
    ...     await ch.send(1); await ch.send(2); ch.close()
    ...     return [await ch.receive(), await ch.receive()], ch.statistics().peak
    >>> asyncio.run(demo())
    ([1, 2], 2)
    """

    def __init__(self, capacity: int, *, name: str = "") -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise PipelineDefinitionError(
                f"channel capacity must be an int >= 1 (channels are always bounded), "
                f"got {capacity!r}"
            )
        self.capacity = capacity
        self.name = name
        self._items: deque[T] = deque()
        self._senders: deque[asyncio.Future[None]] = deque()
        self._receivers: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._peak = 0
        self._sent = 0
        self._received = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    async def send(self, item: T) -> None:
        """Put ``item`` in the channel, waiting while it is full."""
        while len(self._items) >= self.capacity and not self._closed:
            await self._wait(self._senders)
        if self._closed:
            raise ChannelClosed(f"channel {self.name!r} is closed")
        self._items.append(item)
        self._sent += 1
        if len(self._items) > self._peak:
            self._peak = len(self._items)
        self._wake(self._receivers)

    async def receive(self) -> T:
        """Take the oldest item, waiting while the channel is empty; raise
        :class:`EndOfStream` once it is closed and empty."""
        while not self._items:
            if self._closed:
                raise EndOfStream
            await self._wait(self._receivers)
        item = self._items.popleft()
        self._received += 1
        self._wake(self._senders)
        return item

    def close(self) -> None:
        """No more sends; receivers get what is buffered, then :class:`EndOfStream`."""
        self._closed = True
        for waiters in (self._senders, self._receivers):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def __aiter__(self) -> Channel[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except EndOfStream:
            raise StopAsyncIteration from None

    def statistics(self) -> ChannelStats:
        """A snapshot of this channel's state and totals."""
        return ChannelStats(
            name=self.name,
            buffered=len(self._items),
            capacity=self.capacity,
            peak=self._peak,
            waiting_senders=sum(1 for f in self._senders if not f.done()),
            waiting_receivers=sum(1 for f in self._receivers if not f.done()),
            sent=self._sent,
            received=self._received,
            closed=self._closed,
        )

    async def _wait(self, waiters: deque[asyncio.Future[None]]) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in waiters:
                waiters.remove(waiter)
            # Pass the wake-up on if we were woken and cancelled at once.
            if waiter.done() and not waiter.cancelled():
                self._wake(waiters)
            raise

    @staticmethod
    def _wake(waiters: deque[asyncio.Future[None]]) -> bool:
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False
