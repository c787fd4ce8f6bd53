"""create_etl_pipeline: extract -> per-record transform -> load of the whole list."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import (
    Event,
    EventBus,
    EventType,
    MapStage,
    Pipeline,
    create_etl_pipeline,
)


class Loader:
    """A load function that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, rows: list[Any]) -> int:
        self.calls.append(rows)
        return len(rows)


async def test_etl_runs_extract_transform_load() -> None:
    extracted_from: list[str] = []
    transformed: list[int] = []
    load = Loader()

    def extract(source: str) -> list[int]:
        extracted_from.append(source)
        return [1, 2, 3]

    def transform(x: int) -> dict[str, int]:
        transformed.append(x)
        return {"id": x}

    pipeline = create_etl_pipeline(extract, transform, load)
    result = await pipeline.execute("db://users")
    assert result.success
    assert result.data == 3
    assert extracted_from == ["db://users"]
    assert transformed == [1, 2, 3]
    assert load.calls == [[{"id": 1}, {"id": 2}, {"id": 3}]]


def test_etl_builds_named_stages() -> None:
    pipeline = create_etl_pipeline(list, str, len)
    assert isinstance(pipeline, Pipeline)
    assert pipeline.name == "etl"
    assert [s.name for s in pipeline.stages] == ["extract", "transform", "load"]
    assert isinstance(pipeline.stages[1], MapStage)
    assert create_etl_pipeline(list, str, len, name="users").name == "users"


async def test_etl_turns_any_extracted_iterable_into_a_list() -> None:
    load = Loader()
    result = await create_etl_pipeline(lambda n: range(n), lambda x: x * 2, load).execute(3)
    assert load.calls == [[0, 2, 4]]
    assert type(result.stage_results["extract"].data) is list


async def test_etl_with_async_functions() -> None:
    loaded: list[list[str]] = []

    async def extract(source: int) -> list[int]:
        return list(range(source))

    async def transform(x: int) -> str:
        return f"row{x}"

    async def load(rows: list[str]) -> str:
        loaded.append(rows)
        return "done"

    result = await create_etl_pipeline(extract, transform, load).execute(2)
    assert result.data == "done"
    assert loaded == [["row0", "row1"]]


def test_etl_execute_sync() -> None:
    result = create_etl_pipeline(lambda s: s.split(","), str.upper, ";".join).execute_sync("a,b")
    assert result.data == "A;B"


async def test_etl_continue_on_error_skips_bad_records() -> None:
    load = Loader()
    pipeline = create_etl_pipeline(
        lambda _: [1, 0, 2], lambda x: 10 // x, load, continue_on_error=True
    )
    result = await pipeline.execute(None)
    assert result.success
    assert load.calls == [[10, 5]]
    [record] = result.context.errors
    assert (record.stage, record.item) == ("transform", 0)
    assert isinstance(record.exception, ZeroDivisionError)


async def test_etl_without_continue_on_error_fails_at_transform() -> None:
    load = Loader()
    pipeline = create_etl_pipeline(lambda _: [1, 0, 2], lambda x: 10 // x, load)
    result = await pipeline.execute(None)
    assert not result.success
    assert result.failed_stage == "transform"
    assert isinstance(result.error, ZeroDivisionError)
    assert load.calls == []


async def test_etl_extract_failure_stops_the_run() -> None:
    def extract(source: str) -> list[int]:
        raise FileNotFoundError(source)

    load = Loader()
    result = await create_etl_pipeline(extract, str, load).execute("missing.csv")
    assert result.failed_stage == "extract"
    assert isinstance(result.error, FileNotFoundError)
    assert load.calls == []


async def test_etl_passes_concurrency_and_event_bus() -> None:
    bus, events = EventBus(), []
    bus.subscribe(EventType.ITEM_CREATED, events.append)
    pipeline = create_etl_pipeline(list, str, len, concurrency=4, event_bus=bus)
    transform = pipeline.stages[1]
    assert isinstance(transform, MapStage)
    assert transform.concurrency == 4
    result = await pipeline.execute([1, 2])
    assert result.data == 2
    [created] = events
    assert isinstance(created, Event)
    assert created.payload["stage_count"] == 3


def test_etl_rejects_invalid_concurrency() -> None:
    with pytest.raises(TypeError, match="concurrency"):
        create_etl_pipeline(list, str, len, concurrency=0)
