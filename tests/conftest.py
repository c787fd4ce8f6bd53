"""Fixtures shared by the whole test suite (kept deliberately small)."""

from __future__ import annotations

import pytest

from conveyor import Event, EventBus, EventType, PipelineContext


@pytest.fixture
def context() -> PipelineContext:
    """A fresh context, for calling ``stage.process`` directly."""
    return PipelineContext()


@pytest.fixture
def bus_and_events() -> tuple[EventBus, list[Event]]:
    """An event bus with a recorder subscribed to every event type, and what it recorded."""
    bus, seen = EventBus(), []
    for event_type in EventType:
        bus.subscribe(event_type, seen.append)
    return bus, seen
