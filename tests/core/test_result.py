"""StageResult, RecordFailure, PipelineResult and PipelineStatus."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from conveyor import (
    FilterStage,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineResult,
    PipelineStage,
    PipelineStatus,
    RecordFailure,
    StageResult,
)
from conveyor.core import run_stage


class Echo(PipelineStage[Any, Any]):
    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        return StageResult.ok(data)


@pytest.mark.parametrize(
    ("data", "count"),
    [([1, 2, 3], 3), ((1, 2), 2), ({1}, 1), ({"a": 1, "b": 2}, 2), ("scalar", 1), (7, 1)],
)
def test_ok_counts_default_to_size_of_data(data: Any, count: int) -> None:
    result = StageResult.ok(data)
    assert result.success
    assert result.data == data
    assert result.error is None
    assert (result.records_in, result.records_out) == (count, count)
    assert (result.records_failed, result.records_filtered) == (0, 0)


def test_ok_with_none_counts_zero() -> None:
    assert StageResult.ok(None).records_out == 0


def test_ok_keeps_explicit_counts() -> None:
    failure = RecordFailure(item=3, error=ValueError("3"))
    result = StageResult.ok(
        [1],
        duration_ms=2.5,
        records_in=4,
        records_out=1,
        records_failed=1,
        records_filtered=2,
        failures=[failure],
    )
    assert result.duration_ms == 2.5
    assert (result.records_in, result.records_out) == (4, 1)
    assert (result.records_failed, result.records_filtered) == (1, 2)
    assert result.failures == (failure,)


def test_fail_carries_the_exception_object() -> None:
    error = KeyError("id")
    result = StageResult.fail(error, records_in=2, records_failed=1)
    assert not result.success
    assert result.data is None
    assert result.error is error
    assert (result.records_in, result.records_failed) == (2, 1)


def test_unwrap_returns_data_on_success() -> None:
    assert StageResult.ok([1, 2]).unwrap() == [1, 2]


def test_unwrap_raises_the_same_exception_object() -> None:
    error = KeyError("id")
    with pytest.raises(KeyError) as info:
        StageResult.fail(error).unwrap()
    assert info.value is error


def test_unwrap_of_failure_without_error_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="stage failed"):
        StageResult(data=None, success=False).unwrap()


def test_stage_result_is_immutable() -> None:
    result = StageResult.ok(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.success = False  # type: ignore[misc]


def test_record_failure_keeps_item_and_error() -> None:
    error = ValueError("bad")
    failure = RecordFailure({"id": 1}, error)
    assert failure.item == {"id": 1}
    assert failure.error is error


async def test_duration_is_positive_for_a_real_stage(context: PipelineContext) -> None:
    result = await run_stage(Echo(), [1, 2, 3], context)
    assert result.duration_ms > 0


async def test_record_wise_stage_reports_all_counts(context: PipelineContext) -> None:
    def check(x: int) -> bool:
        if x < 0:
            raise ValueError(x)
        return x % 2 == 0

    result = await FilterStage(check, continue_on_error=True).process([1, 2, -1, 4, 5], context)
    assert result.data == [2, 4]
    assert result.records_in == 5
    assert result.records_out == 2
    assert result.records_filtered == 2
    assert result.records_failed == 1
    assert [f.item for f in result.failures] == [-1]
    assert result.duration_ms > 0


async def test_failed_record_wise_result_still_counts(context: PipelineContext) -> None:
    def invert(x: int) -> float:
        return 1 / x

    result = await MapStage(invert).process([1, 0, 2], context)
    assert not result.success
    assert isinstance(result.error, ZeroDivisionError)
    assert result.records_in == 3
    assert result.records_failed == 1
    assert result.failures[0].error is result.error


def test_pipeline_status_values() -> None:
    assert PipelineStatus.COMPLETED == "completed"
    assert PipelineStatus.FAILED == "failed"


def test_pipeline_result_success_and_unwrap() -> None:
    ok = PipelineResult(
        pipeline_id="p",
        pipeline_name="n",
        status=PipelineStatus.COMPLETED,
        data=3,
        error=None,
        failed_stage=None,
    )
    assert ok.success
    assert ok.unwrap() == 3


def test_pipeline_result_unwrap_raises_the_stage_error() -> None:
    result = (
        Pipeline[list[int], list[float]]("p")
        .add_stage(MapStage(lambda x: 1 / x, name="inv"))
        .execute_sync([0])
    )
    assert not result.success
    assert result.status is PipelineStatus.FAILED
    assert isinstance(result.error, ZeroDivisionError)
    with pytest.raises(ZeroDivisionError) as info:
        result.unwrap()
    assert info.value is result.error


def test_pipeline_result_unwrap_without_error_raises_runtime_error() -> None:
    result = PipelineResult(
        pipeline_id="p",
        pipeline_name="n",
        status=PipelineStatus.FAILED,
        data=None,
        error=None,
        failed_stage="s",
    )
    with pytest.raises(RuntimeError, match="pipeline failed"):
        result.unwrap()


def test_results_can_be_built_through_a_subscripted_generic() -> None:
    # Slotted generic dataclasses break `StageResult[int](...)` on Python 3.11/3.12.
    result = StageResult[int](data=1, success=True)
    assert result.unwrap() == 1
    pipeline_result = PipelineResult[int](
        pipeline_id="p",
        pipeline_name="p",
        status=PipelineStatus.COMPLETED,
        data=2,
        error=None,
        failed_stage=None,
    )
    assert pipeline_result.unwrap() == 2
