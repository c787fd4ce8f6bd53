"""A small publish/subscribe bus for pipeline events."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from conveyor.core._callables import call_maybe_async, callable_name

__all__ = ["Event", "EventBus", "EventHandler", "EventType"]

logger = logging.getLogger("conveyor.events")


class EventType(StrEnum):
    """Kinds of events Conveyor publishes.

    ``ITEM_CREATED``: a pipeline run started (``pipeline_id``, ``pipeline_name``,
    ``stage_count``). ``ITEM_UPDATED``: it ended (``pipeline_id``, ``pipeline_name``,
    ``status``, ``duration_ms``, ``completed_stages``). ``STAGE_COMPLETED``: one stage ended
    (``pipeline_id``, ``stage``, ``success``, ``duration_ms`` and its record counts).
    """

    ITEM_CREATED = "item_created"
    ITEM_UPDATED = "item_updated"
    STAGE_COMPLETED = "stage_completed"


@dataclass(frozen=True, slots=True)
class Event:
    """One published event: its type, a payload dict, who sent it and when."""

    type: EventType
    payload: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    timestamp: datetime = field(default_factory=lambda: datetime.now(UTC))


EventHandler = Callable[[Event], None] | Callable[[Event], Awaitable[None]]


class EventBus:
    """Subscribe handlers (sync or async) to event types and publish events to them.

    A handler that raises is logged (logger ``conveyor.events``) and never stops the
    publisher or the other handlers.

    >>> import asyncio
    >>> bus, seen = EventBus(), []
    >>> bus.subscribe(EventType.ITEM_CREATED, lambda e: seen.append(e.payload["n"]))
    >>> asyncio.run(bus.publish(Event(EventType.ITEM_CREATED, {"n": 1})))
    >>> seen
    [1]
    """

    def __init__(self) -> None:
        self._handlers: dict[EventType, list[EventHandler]] = {}

    def subscribe(self, event_type: EventType, handler: EventHandler) -> None:
        """Call ``handler(event)`` for every published event of ``event_type``."""
        if not callable(handler):
            raise TypeError(f"EventBus.subscribe: handler must be callable, got {handler!r}")
        self._handlers.setdefault(EventType(event_type), []).append(handler)

    def unsubscribe(self, event_type: EventType, handler: EventHandler) -> bool:
        """Remove ``handler`` from ``event_type``; return whether it was subscribed."""
        handlers = self._handlers.get(EventType(event_type), [])
        if handler in handlers:
            handlers.remove(handler)
            return True
        return False

    def handlers(self, event_type: EventType) -> tuple[EventHandler, ...]:
        """The handlers currently subscribed to ``event_type``."""
        return tuple(self._handlers.get(EventType(event_type), ()))

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to its subscribers in subscription order, awaiting async ones."""
        for handler in self.handlers(event.type):
            try:
                await call_maybe_async(handler, event)
            except Exception:
                logger.exception(
                    "event handler %s failed on %s event; the publisher goes on",
                    callable_name(handler),
                    event.type.value,
                )
