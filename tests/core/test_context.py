"""PipelineContext and ErrorRecord, on their own and as a pipeline run fills them."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from conveyor import (
    NO_ITEM,
    ErrorRecord,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineStage,
    StageResult,
)


class ReadsTenant(PipelineStage[Any, str]):
    """Reads metadata a test (or an earlier stage) put in the context."""

    async def process(self, data: Any, context: PipelineContext) -> StageResult[str]:
        return StageResult.ok(f"{context.metadata['tenant']}:{data}")


class WritesNote(PipelineStage[Any, Any]):
    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        context.metadata["note"] = f"saw {data}"
        return StageResult.ok(data)


class ReadsNote(PipelineStage[Any, str]):
    async def process(self, data: Any, context: PipelineContext) -> StageResult[str]:
        return StageResult.ok(context.metadata["note"])


def test_pipeline_ids_are_unique() -> None:
    ids = {PipelineContext().pipeline_id for _ in range(200)}
    assert len(ids) == 200


def test_started_at_is_timezone_aware_utc_now() -> None:
    before = datetime.now(UTC)
    ctx = PipelineContext()
    after = datetime.now(UTC)
    assert ctx.started_at.tzinfo is not None
    assert ctx.started_at.utcoffset() == timedelta(0)
    assert before <= ctx.started_at <= after


def test_new_context_is_empty() -> None:
    ctx = PipelineContext()
    assert ctx.metadata == {}
    assert ctx.errors == []
    assert ctx.completed_stages == []
    assert ctx.pipeline_name == ""


def test_contexts_do_not_share_mutable_state() -> None:
    a, b = PipelineContext(), PipelineContext()
    a.metadata["k"] = 1
    a.mark_completed("s")
    a.record_error("s", ValueError())
    assert (b.metadata, b.completed_stages, b.errors) == ({}, [], [])


def test_elapsed_grows_and_units_agree() -> None:
    ctx = PipelineContext()
    seconds = ctx.elapsed_seconds
    millis = ctx.elapsed_ms
    assert seconds > 0
    assert seconds * 1000.0 <= millis
    assert ctx.elapsed_seconds >= seconds


def test_record_error_keeps_stage_exception_object_and_item() -> None:
    ctx = PipelineContext()
    error = ValueError("bad row")
    ctx.record_error("parse", error, item={"id": 7})
    [record] = ctx.errors
    assert record.stage == "parse"
    assert record.exception is error
    assert record.item == {"id": 7}
    assert record.has_item
    assert record.message == "ValueError: bad row"
    assert record.at.tzinfo is not None


def test_record_error_without_item_uses_no_item_sentinel() -> None:
    ctx = PipelineContext()
    ctx.record_error("load", OSError("disk"))
    [record] = ctx.errors
    assert record.item is NO_ITEM
    assert not record.has_item
    assert repr(NO_ITEM) == "NO_ITEM"


def test_none_item_is_distinct_from_no_item() -> None:
    record = ErrorRecord("s", ValueError(), item=None)
    assert record.has_item
    assert record.item is None


def test_error_record_is_immutable() -> None:
    record = ErrorRecord("s", ValueError())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.stage = "other"  # type: ignore[misc]


def test_errors_accumulate_in_order() -> None:
    ctx = PipelineContext()
    first, second = ValueError("1"), KeyError("2")
    ctx.record_error("a", first)
    ctx.record_error("b", second, item=2)
    assert [(e.stage, e.exception) for e in ctx.errors] == [("a", first), ("b", second)]


def test_has_error_compares_identity_not_equality() -> None:
    ctx = PipelineContext()
    error = ValueError("x")
    ctx.record_error("s", error)
    assert ctx.has_error(error)
    assert not ctx.has_error(ValueError("x"))


def test_mark_completed_appends_in_order() -> None:
    ctx = PipelineContext()
    ctx.mark_completed("a")
    ctx.mark_completed("b")
    assert ctx.completed_stages == ["a", "b"]


def test_prepopulated_metadata_is_read_by_a_stage() -> None:
    ctx = PipelineContext(metadata={"tenant": "acme"})
    result = Pipeline[int, str]("p").add_stage(ReadsTenant()).execute_sync(7, context=ctx)
    assert result.data == "acme:7"
    assert result.context is ctx


async def test_metadata_written_by_a_stage_reaches_later_stages() -> None:
    pipeline = Pipeline[int, str]("p").add_stage(WritesNote()).add_stage(ReadsNote())
    result = await pipeline.execute(3)
    assert result.data == "saw 3"
    assert result.context.metadata == {"note": "saw 3"}


async def test_pipeline_fills_name_and_completed_stages() -> None:
    pipeline = Pipeline[int, int]("named").add_stage(WritesNote()).add_stage(ReadsNote())
    result = await pipeline.execute(1)
    assert result.context.pipeline_name == "named"
    assert result.context.completed_stages == ["WritesNote", "ReadsNote"]
    assert result.pipeline_id == result.context.pipeline_id


async def test_pipeline_keeps_a_preset_pipeline_name() -> None:
    ctx = PipelineContext(pipeline_name="preset")
    await Pipeline[int, int]("p").add_stage(WritesNote()).execute(1, context=ctx)
    assert ctx.pipeline_name == "preset"


async def test_each_run_gets_a_fresh_context() -> None:
    pipeline = Pipeline[int, int]("p").add_stage(WritesNote())
    first, second = await pipeline.execute(1), await pipeline.execute(2)
    assert first.context is not second.context
    assert first.pipeline_id != second.pipeline_id
    assert first.context.completed_stages == ["WritesNote"]


async def test_context_collects_item_errors_of_a_run() -> None:
    def invert(x: int) -> float:
        return 1 / x

    pipeline = Pipeline[list[int], list[float]]("p").add_stage(
        MapStage(invert, continue_on_error=True, name="inv")
    )
    result = await pipeline.execute([1, 0, 2])
    assert result.success
    [record] = result.context.errors
    assert record.stage == "inv"
    assert isinstance(record.exception, ZeroDivisionError)
    assert record.item == 0


async def test_context_elapsed_covers_the_run() -> None:
    result = await Pipeline[int, int]("p").add_stage(WritesNote()).execute(1)
    assert result.context.elapsed_ms >= result.duration_ms > 0
