"""EventBus on its own, and the events a Pipeline publishes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from conveyor import (
    Event,
    EventBus,
    EventType,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineStage,
    StageResult,
)


class Add(PipelineStage[int, int]):
    def __init__(self, n: int) -> None:
        self.n = n
        self.name = f"add{n}"

    async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
        return StageResult.ok(data + self.n)


class Fails(PipelineStage[Any, Any]):
    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        return StageResult.fail(ValueError("nope"))


def of_type(events: list[Event], event_type: EventType) -> list[Event]:
    return [e for e in events if e.type is event_type]


# --- EventBus ------------------------------------------------------------------------------


async def test_publish_reaches_sync_and_async_handlers_in_order() -> None:
    bus, seen = EventBus(), []

    async def async_handler(event: Event) -> None:
        seen.append(("async", event.payload["n"]))

    bus.subscribe(EventType.ITEM_CREATED, lambda e: seen.append(("sync", e.payload["n"])))
    bus.subscribe(EventType.ITEM_CREATED, async_handler)
    await bus.publish(Event(EventType.ITEM_CREATED, {"n": 1}))
    assert seen == [("sync", 1), ("async", 1)]


async def test_publish_only_reaches_handlers_of_that_type() -> None:
    bus, seen = EventBus(), []
    bus.subscribe(EventType.ITEM_UPDATED, seen.append)
    await bus.publish(Event(EventType.ITEM_CREATED))
    assert seen == []


async def test_publish_without_subscribers_is_a_no_op() -> None:
    await EventBus().publish(Event(EventType.STAGE_COMPLETED))


async def test_unsubscribe_stops_delivery() -> None:
    bus, seen = EventBus(), []
    bus.subscribe(EventType.ITEM_CREATED, seen.append)
    assert bus.unsubscribe(EventType.ITEM_CREATED, seen.append) is True
    await bus.publish(Event(EventType.ITEM_CREATED))
    assert seen == []
    assert bus.handlers(EventType.ITEM_CREATED) == ()


def test_unsubscribe_of_unknown_handler_returns_false() -> None:
    bus = EventBus()
    assert bus.unsubscribe(EventType.ITEM_CREATED, print) is False
    bus.subscribe(EventType.ITEM_UPDATED, print)
    assert bus.unsubscribe(EventType.ITEM_CREATED, print) is False
    assert bus.handlers(EventType.ITEM_UPDATED) == (print,)


def test_unsubscribe_removes_one_subscription_at_a_time() -> None:
    bus = EventBus()
    bus.subscribe(EventType.ITEM_CREATED, print)
    bus.subscribe(EventType.ITEM_CREATED, print)
    assert bus.unsubscribe(EventType.ITEM_CREATED, print)
    assert bus.handlers(EventType.ITEM_CREATED) == (print,)


def test_subscribe_accepts_the_event_type_value() -> None:
    bus = EventBus()
    bus.subscribe("item_created", print)  # type: ignore[arg-type]
    assert bus.handlers(EventType.ITEM_CREATED) == (print,)


def test_subscribe_rejects_non_callable() -> None:
    with pytest.raises(TypeError, match="must be callable"):
        EventBus().subscribe(EventType.ITEM_CREATED, "print")  # type: ignore[arg-type]


def test_subscribe_rejects_unknown_event_type() -> None:
    with pytest.raises(ValueError, match="not_an_event"):
        EventBus().subscribe("not_an_event", print)  # type: ignore[arg-type]


async def test_failing_handler_is_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus, seen = EventBus(), []

    def broken(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    bus.subscribe(EventType.ITEM_CREATED, broken)
    bus.subscribe(EventType.ITEM_CREATED, seen.append)
    event = Event(EventType.ITEM_CREATED)
    with caplog.at_level(logging.ERROR, logger="conveyor.events"):
        await bus.publish(event)
    assert seen == [event]
    [record] = caplog.records
    assert record.name == "conveyor.events"
    assert record.levelno == logging.ERROR
    assert "broken" in record.getMessage()
    assert "item_created" in record.getMessage()
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "subscriber bug"


def test_event_defaults() -> None:
    event = Event(EventType.ITEM_UPDATED)
    assert event.payload == {}
    assert event.source == ""
    assert event.timestamp.tzinfo is not None


# --- pipeline events -----------------------------------------------------------------------


async def test_pipeline_publishes_created_stages_then_updated(
    bus_and_events: tuple[EventBus, list[Event]],
) -> None:
    bus, events = bus_and_events
    await Pipeline[int, int]("p", event_bus=bus).add_stage(Add(1)).add_stage(Add(2)).execute(0)
    assert [e.type for e in events] == [
        EventType.ITEM_CREATED,
        EventType.STAGE_COMPLETED,
        EventType.STAGE_COMPLETED,
        EventType.ITEM_UPDATED,
    ]
    assert {e.source for e in events} == {"p"}


async def test_item_created_payload(bus_and_events: tuple[EventBus, list[Event]]) -> None:
    bus, events = bus_and_events
    pipeline = Pipeline[int, int]("loader", event_bus=bus).add_stage(Add(1)).add_stage(Add(2))
    result = await pipeline.execute(0)
    [created] = of_type(events, EventType.ITEM_CREATED)
    assert created.payload == {
        "pipeline_id": result.pipeline_id,
        "pipeline_name": "loader",
        "stage_count": 2,
        "mode": "collection",
    }


async def test_item_updated_payload_on_success(
    bus_and_events: tuple[EventBus, list[Event]],
) -> None:
    bus, events = bus_and_events
    pipeline = Pipeline[int, int]("p", event_bus=bus).add_stage(Add(1)).add_stage(Add(2))
    result = await pipeline.execute(0)
    [updated] = of_type(events, EventType.ITEM_UPDATED)
    assert updated.payload["pipeline_id"] == result.pipeline_id
    assert updated.payload["status"] == "completed"
    assert updated.payload["duration_ms"] == result.duration_ms > 0
    assert updated.payload["completed_stages"] == ["add1", "add2"]
    assert updated.payload["error"] is None


async def test_item_updated_payload_on_failure(
    bus_and_events: tuple[EventBus, list[Event]],
) -> None:
    bus, events = bus_and_events
    pipeline = Pipeline[int, int]("p", event_bus=bus).add_stage(Add(1)).add_stage(Fails())
    result = await pipeline.execute(0)
    [updated] = of_type(events, EventType.ITEM_UPDATED)
    assert updated.payload["pipeline_id"] == result.pipeline_id
    assert updated.payload["status"] == "failed"
    assert updated.payload["duration_ms"] == result.duration_ms > 0
    assert updated.payload["completed_stages"] == ["add1"]
    assert updated.payload["error"] == "ValueError('nope')"


async def test_stage_completed_payload(bus_and_events: tuple[EventBus, list[Event]]) -> None:
    bus, events = bus_and_events
    stage = MapStage(lambda x: 1 / x, continue_on_error=True, name="inv")
    result = await Pipeline[list[int], Any]("p", event_bus=bus).add_stage(stage).execute([1, 0])
    [done] = of_type(events, EventType.STAGE_COMPLETED)
    stage_result = result.stage_results["inv"]
    assert done.payload == {
        "pipeline_id": result.pipeline_id,
        "pipeline_name": "p",
        "mode": "collection",
        "stage": "inv",
        "kind": "record",
        "executor": "inline",
        "success": True,
        "duration_ms": stage_result.duration_ms,
        "records_in": 2,
        "records_out": 1,
        "records_failed": 1,
        "records_filtered": 0,
        "retried": 0,
        "batches": 1,
    }


async def test_both_modes_publish_the_same_payload_keys() -> None:
    def pipeline(bus: EventBus) -> Pipeline[list[int], list[int]]:
        return Pipeline[list[int], list[int]]("same", event_bus=bus).add_stage(
            MapStage(lambda x: x + 1, name="inc")
        )

    payloads: dict[str, dict[EventType, list[str]]] = {}
    for mode in ("collection", "streaming"):
        bus, seen = EventBus(), {}
        for event_type in EventType:
            bus.subscribe(
                event_type, lambda e, seen=seen: seen.setdefault(e.type, sorted(e.payload))
            )
        if mode == "collection":
            await pipeline(bus).execute([1, 2])
        else:
            await pipeline(bus).arun([1, 2], lambda batch: None, dead_letters="memory")
        payloads[mode] = seen
    assert payloads["collection"] == payloads["streaming"]
    assert set(payloads["collection"]) == set(EventType)


async def test_async_subscriber_sees_pipeline_events() -> None:
    bus, statuses = EventBus(), []

    async def on_updated(event: Event) -> None:
        statuses.append(event.payload["status"])

    bus.subscribe(EventType.ITEM_UPDATED, on_updated)
    await Pipeline[int, int]("p", event_bus=bus).add_stage(Add(1)).execute(0)
    assert statuses == ["completed"]


async def test_failing_subscriber_does_not_fail_the_pipeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = EventBus()

    def broken(event: Event) -> None:
        raise RuntimeError("monitoring is down")

    for event_type in EventType:
        bus.subscribe(event_type, broken)
    with caplog.at_level(logging.ERROR, logger="conveyor.events"):
        result = await Pipeline[int, int]("p", event_bus=bus).add_stage(Add(1)).execute(0)
    assert result.success
    assert result.data == 1
    assert result.context.errors == []
    assert len(caplog.records) == 3
    assert all(r.exc_info and str(r.exc_info[1]) == "monitoring is down" for r in caplog.records)
