"""Hypothesis properties of the record-wise stages and of batching."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor import (
    BatchStage,
    FilterStage,
    FlattenStage,
    MapStage,
    PipelineContext,
    PipelineStage,
    RecordValidationError,
    StageResult,
    ValidateStage,
)

T = TypeVar("T")

SETTINGS = settings(deadline=None, max_examples=75)

ints = st.lists(st.integers(min_value=-1000, max_value=1000), max_size=40)
int_functions = st.functions(like=lambda x: 0, returns=st.integers(), pure=True)
predicates = st.functions(like=lambda x: True, returns=st.booleans(), pure=True)
# How the stage calls its function: sync or async, one at a time or concurrently.
# (Concurrent sync calls run in threads, where Hypothesis' generated functions cannot be
# called, so those use plain functions below.)
modes = st.sampled_from([("sync", 1), ("async", 1), ("async", 4), ("coro", 1)])


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def in_mode(fn: Callable[[Any], Any], flavour: str) -> Callable[[Any], Any]:
    """``fn`` as a sync function, an async one, or ("coro") a sync function returning
    awaitables that calls ``fn`` eagerly on every other call (so it may raise at once)."""
    if flavour == "sync":
        return fn

    async def later(x: Any) -> Any:
        await asyncio.sleep(0)
        return fn(x)

    if flavour == "async":
        return later

    calls = itertools.count()

    async def resolved(value: Any) -> Any:
        return value

    def start(x: Any) -> Awaitable[Any]:
        return resolved(fn(x)) if next(calls) % 2 else later(x)

    return start


def process(stage: PipelineStage[Any, Any], data: Any) -> tuple[StageResult[Any], PipelineContext]:
    context = PipelineContext()
    return run(stage.process(data, context)), context


@SETTINGS
@given(xs=ints, fn=int_functions, mode=modes)
def test_map_equals_list_comprehension(
    xs: list[int], fn: Callable[[int], int], mode: tuple[str, int]
) -> None:
    flavour, concurrency = mode
    expected = [fn(x) for x in xs]  # first, so that ``fn`` draws no data inside the stage
    result, _ = process(MapStage(in_mode(fn, flavour), concurrency=concurrency), xs)
    assert result.success
    assert result.data == expected


@SETTINGS
@given(xs=ints, pred=predicates, mode=modes)
def test_filter_equals_list_comprehension(
    xs: list[int], pred: Callable[[int], bool], mode: tuple[str, int]
) -> None:
    flavour, concurrency = mode
    expected = [x for x in xs if pred(x)]  # first, so that ``pred`` draws no data later
    result, _ = process(FilterStage(in_mode(pred, flavour), concurrency=concurrency), xs)
    assert result.data == expected
    assert result.records_filtered == len(xs) - len(expected)


@SETTINGS
@given(xs=ints, concurrency=st.integers(min_value=2, max_value=5))
def test_sync_map_with_threads_equals_list_comprehension(xs: list[int], concurrency: int) -> None:
    result, _ = process(MapStage(lambda x: x * x - 3, concurrency=concurrency), xs)
    assert result.data == [x * x - 3 for x in xs]


@SETTINGS
@given(xs=st.lists(st.integers()), size=st.integers(min_value=1, max_value=50))
def test_batch_then_flatten_is_identity(xs: list[int], size: int) -> None:
    batched, _ = process(BatchStage[int](size), xs)
    assert batched.data is not None
    assert all(len(batch) == size for batch in batched.data[:-1])
    assert all(0 < len(batch) <= size for batch in batched.data)
    result, _ = process(BatchStage[int](size) >> FlattenStage[int](), xs)
    assert result.data == xs


# --- conservation with planted failures ----------------------------------------------------


@st.composite
def planted(draw: st.DrawFn) -> tuple[list[tuple[int, int]], set[int]]:
    """Unique records ``(position, value)`` and the positions planted to fail."""
    values = draw(st.lists(st.integers(min_value=-50, max_value=50), max_size=30))
    records = list(enumerate(values))
    bad = draw(st.sets(st.sampled_from(range(len(values))))) if values else set()
    return records, bad


concurrent_modes = st.sampled_from(
    [("sync", 1), ("async", 1), ("coro", 1), ("sync", 3), ("async", 3), ("coro", 3)]
)


def check_conservation(
    result: StageResult[Any],
    context: PipelineContext,
    records: list[tuple[int, int]],
    bad: set[int],
    expected_out: list[Any],
) -> None:
    planted_items = [r for r in records if r[0] in bad]
    assert result.success
    assert result.records_in == len(records)
    assert result.records_in == result.records_out + result.records_filtered + (
        result.records_failed
    )
    assert [f.item for f in result.failures] == planted_items
    assert [e.item for e in context.errors] == planted_items
    assert result.data == expected_out


@SETTINGS
@given(case=planted(), mode=concurrent_modes)
def test_map_conserves_records_and_reports_planted_failures(
    case: tuple[list[tuple[int, int]], set[int]], mode: tuple[str, int]
) -> None:
    records, bad = case
    flavour, concurrency = mode

    def fn(record: tuple[int, int]) -> int:
        if record[0] in bad:
            raise ValueError(record)
        return record[1] * 2

    stage = MapStage(in_mode(fn, flavour), continue_on_error=True, concurrency=concurrency)
    result, context = process(stage, records)
    check_conservation(result, context, records, bad, [v * 2 for i, v in records if i not in bad])
    assert all(isinstance(f.error, ValueError) for f in result.failures)


@SETTINGS
@given(case=planted(), mode=concurrent_modes)
def test_filter_conserves_records_and_reports_planted_failures(
    case: tuple[list[tuple[int, int]], set[int]], mode: tuple[str, int]
) -> None:
    records, bad = case
    flavour, concurrency = mode

    def keep_even(record: tuple[int, int]) -> bool:
        if record[0] in bad:
            raise KeyError(record)
        return record[1] % 2 == 0

    stage = FilterStage(
        in_mode(keep_even, flavour), continue_on_error=True, concurrency=concurrency
    )
    result, context = process(stage, records)
    expected = [r for r in records if r[0] not in bad and r[1] % 2 == 0]
    check_conservation(result, context, records, bad, expected)
    assert result.records_filtered == len(records) - len(bad) - len(expected)


@SETTINGS
@given(case=planted(), mode=concurrent_modes)
def test_validate_conserves_records_and_reports_planted_failures(
    case: tuple[list[tuple[int, int]], set[int]], mode: tuple[str, int]
) -> None:
    records, bad = case
    flavour, concurrency = mode

    def check(record: tuple[int, int]) -> bool | str:
        if record[0] not in bad:
            return True
        match record[0] % 3:  # every way of rejecting a record
            case 0:
                return False
            case 1:
                return f"record {record[0]} rejected"
            case _:
                raise LookupError(record)

    stage = ValidateStage(in_mode(check, flavour), continue_on_error=True, concurrency=concurrency)
    result, context = process(stage, records)
    check_conservation(result, context, records, bad, [r for r in records if r[0] not in bad])
    for failure in result.failures:
        position = failure.item[0]
        expected_type = LookupError if position % 3 == 2 else RecordValidationError
        assert isinstance(failure.error, expected_type)
        if position % 3 == 1:
            assert f"record {position} rejected" in str(failure.error)
