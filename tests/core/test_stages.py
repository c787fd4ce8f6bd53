"""The built-in stages, each with sync and async callables and their error paths."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from conveyor import (
    AggregateStage,
    BatchStage,
    BranchError,
    BranchStage,
    FilterStage,
    FlattenStage,
    FunctionStage,
    MapStage,
    PipelineContext,
    PipelineDefinitionError,
    PipelineStage,
    RecordValidationError,
    StageResult,
    ValidateStage,
)
from conveyor.core import run_stage

# --- helpers -------------------------------------------------------------------------------


def as_async(fn: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
    """The async twin of ``fn`` (it yields to the loop once before answering)."""

    async def wrapper(x: Any) -> Any:
        await asyncio.sleep(0)
        return fn(x)

    return wrapper


SYNC_ASYNC = pytest.mark.parametrize("flavour", ["sync", "async"])


def flavoured(flavour: str, fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return fn if flavour == "sync" else as_async(fn)


def invert(x: int) -> float:
    return 1 / x


class InFlight:
    """An async callable that counts how many calls are running at once."""

    def __init__(self, yields: int = 3) -> None:
        self.current = 0
        self.peak = 0
        self.yields = yields

    async def __call__(self, x: int) -> int:
        self.current += 1
        self.peak = max(self.peak, self.current)
        for _ in range(self.yields):
            await asyncio.sleep(0)
        self.current -= 1
        return x * 10


# --- MapStage ------------------------------------------------------------------------------


@SYNC_ASYNC
async def test_map_applies_fn_to_every_record(flavour: str, context: PipelineContext) -> None:
    stage = MapStage(flavoured(flavour, lambda x: x * 3))
    result = await stage.process([1, 2, 3], context)
    assert result.success
    assert result.data == [3, 6, 9]
    assert (result.records_in, result.records_out) == (3, 3)


async def test_map_detects_async_callables() -> None:
    async def fetch(x: int) -> int:
        return x

    assert MapStage(fetch).is_async
    assert MapStage(functools.partial(fetch)).is_async
    assert MapStage(InFlight()).is_async
    assert not MapStage(abs).is_async
    assert not MapStage(lambda x: x).is_async


async def test_map_awaits_async_callable_object(context: PipelineContext) -> None:
    result = await MapStage(InFlight()).process([1, 2], context)
    assert result.data == [10, 20]


async def test_map_awaits_coroutines_from_sync_looking_callable(context: PipelineContext) -> None:
    async def fetch(x: int) -> int:
        return x + 100

    stage = MapStage(lambda x: fetch(x))
    result = await stage.process([1, 2], context)
    assert result.data == [101, 102]


async def test_map_coroutine_failures_fail_only_their_record(context: PipelineContext) -> None:
    async def fetch(x: int) -> int:
        if x == 2:
            raise ValueError("no 2")
        return x

    def start(x: int) -> Awaitable[int]:
        if x == 4:
            raise KeyError("no 4")
        return fetch(x)

    stage = MapStage(start, continue_on_error=True)
    result = await stage.process([1, 2, 3, 4, 5], context)
    assert result.success
    assert result.data == [1, 3, 5]
    assert [f.item for f in result.failures] == [2, 4]
    assert [type(f.error) for f in result.failures] == [ValueError, KeyError]


async def test_map_coroutine_failure_fails_fast_at_first_bad_record(
    context: PipelineContext,
) -> None:
    async def fetch(x: int) -> int:
        if x == 2:
            raise ValueError("no 2")
        return x

    result = await MapStage(lambda x: fetch(x)).process([1, 2, 3], context)
    assert not result.success
    assert isinstance(result.error, ValueError)
    assert [f.item for f in result.failures] == [2]


async def test_map_coroutine_fail_fast_reports_earliest_failure(
    context: PipelineContext,
) -> None:
    async def fetch(x: int) -> int:
        if x == 2:
            raise ValueError("async failure of 2")
        return x

    def start(x: int) -> Awaitable[int]:
        if x == 3:
            raise KeyError("sync failure of 3")
        return fetch(x)

    result = await MapStage(start).process([1, 2, 3, 4], context)
    assert isinstance(result.error, ValueError)
    assert [f.item for f in result.failures] == [2]
    assert [e.item for e in context.errors] == [2]


def test_map_default_and_explicit_names() -> None:
    assert MapStage(invert).name == "map(invert)"
    assert MapStage(functools.partial(invert)).name == "map(invert)"
    assert MapStage(InFlight()).name == "map(InFlight)"
    assert MapStage(invert, name="inv").name == "inv"


@SYNC_ASYNC
async def test_map_fails_fast_on_first_error(flavour: str, context: PipelineContext) -> None:
    calls: list[int] = []

    def fn(x: int) -> float:
        calls.append(x)
        return 1 / x

    result = await MapStage(flavoured(flavour, fn), name="inv").process([1, 0, 2, 0], context)
    assert not result.success
    assert result.data is None
    assert isinstance(result.error, ZeroDivisionError)
    assert calls == [1, 0]
    assert result.records_failed == 1
    assert [(e.stage, e.item, e.exception) for e in context.errors] == [("inv", 0, result.error)]


@SYNC_ASYNC
async def test_map_continue_on_error_collects_failures(
    flavour: str, context: PipelineContext
) -> None:
    stage = MapStage(flavoured(flavour, invert), continue_on_error=True, name="inv")
    result = await stage.process([1, 0, 2, 0, 4], context)
    assert result.success
    assert result.error is None
    assert result.data == [1.0, 0.5, 0.25]
    assert (result.records_in, result.records_out, result.records_failed) == (5, 3, 2)
    assert [f.item for f in result.failures] == [0, 0]
    assert [(e.stage, e.item) for e in context.errors] == [("inv", 0), ("inv", 0)]
    assert all(isinstance(e.exception, ZeroDivisionError) for e in context.errors)
    assert [e.exception for e in context.errors] == [f.error for f in result.failures]


@SYNC_ASYNC
async def test_map_accepts_any_iterable(flavour: str, context: PipelineContext) -> None:
    result = await MapStage(flavoured(flavour, str)).process((x for x in range(3)), context)
    assert result.data == ["0", "1", "2"]


@SYNC_ASYNC
async def test_map_of_empty_input_is_empty(flavour: str, context: PipelineContext) -> None:
    result = await MapStage(flavoured(flavour, str)).process([], context)
    assert result.success
    assert result.data == []


@pytest.mark.parametrize("concurrency", [1, 2, 3, 5])
async def test_map_async_concurrency_bounds_in_flight_calls(
    concurrency: int, context: PipelineContext
) -> None:
    fn = InFlight()
    result = await MapStage(fn, concurrency=concurrency).process(list(range(8)), context)
    assert result.data == [x * 10 for x in range(8)]
    assert fn.peak == concurrency


async def test_map_concurrency_keeps_input_order(context: PipelineContext) -> None:
    finished: list[int] = []

    async def slow_for_small(x: int) -> int:
        for _ in range(10 - x):  # smaller inputs yield more often, so finish later
            await asyncio.sleep(0)
        finished.append(x)
        return x

    result = await MapStage(slow_for_small, concurrency=10).process(list(range(10)), context)
    assert finished == list(reversed(range(10)))
    assert result.data == list(range(10))


async def test_map_sync_fn_with_concurrency_runs_in_parallel_threads(
    context: PipelineContext,
) -> None:
    barrier = threading.Barrier(2, timeout=10)
    threads: set[str] = set()

    def meet(x: int) -> int:
        barrier.wait()  # only passes when two calls are in flight at the same time
        threads.add(threading.current_thread().name)
        return -x

    result = await MapStage(meet, concurrency=2).process([1, 2, 3, 4], context)
    assert result.success, result.error
    assert result.data == [-1, -2, -3, -4]
    assert threading.current_thread().name not in threads


async def test_map_sync_concurrency_keeps_order_and_collects_failures(
    context: PipelineContext,
) -> None:
    stage = MapStage(invert, concurrency=3, continue_on_error=True)
    result = await stage.process([1, 0, 2, 0, 4], context)
    assert result.data == [1.0, 0.5, 0.25]
    assert [f.item for f in result.failures] == [0, 0]


async def test_map_concurrency_awaits_coroutines_of_sync_looking_fn(
    context: PipelineContext,
) -> None:
    async def fetch(x: int) -> int:
        return x * 2

    result = await MapStage(lambda x: fetch(x), concurrency=2).process([1, 2, 3], context)
    assert result.data == [2, 4, 6]


@SYNC_ASYNC
async def test_map_concurrency_fail_fast_reports_first_failure_in_order(
    flavour: str, context: PipelineContext
) -> None:
    def fn(x: int) -> int:
        if x in (3, 5):
            raise ValueError(f"bad {x}")
        return x

    result = await MapStage(flavoured(flavour, fn), concurrency=4).process([1, 2, 3, 4, 5], context)
    assert not result.success
    assert str(result.error) == "bad 3"
    assert [f.item for f in result.failures] == [3]


async def test_map_concurrency_continue_on_error_async(context: PipelineContext) -> None:
    stage = MapStage(as_async(invert), concurrency=4, continue_on_error=True)
    result = await stage.process([0, 1, 0, 2], context)
    assert result.success
    assert result.data == [1.0, 0.5]
    assert [e.item for e in context.errors] == [0, 0]


@pytest.mark.parametrize("concurrency", [0, -1])
def test_map_rejects_concurrency_below_one(concurrency: int) -> None:
    with pytest.raises(PipelineDefinitionError, match="concurrency must be >= 1"):
        MapStage(invert, concurrency=concurrency)


def test_map_rejects_non_callable() -> None:
    with pytest.raises(PipelineDefinitionError, match="needs a callable"):
        MapStage(42)  # type: ignore[call-overload]


def test_definition_errors_are_type_errors() -> None:
    with pytest.raises(TypeError):
        MapStage("nope")  # type: ignore[call-overload]


# --- FilterStage ---------------------------------------------------------------------------


@SYNC_ASYNC
async def test_filter_keeps_matching_records(flavour: str, context: PipelineContext) -> None:
    stage = FilterStage(flavoured(flavour, lambda x: x % 2 == 0))
    result = await stage.process([1, 2, 3, 4, 5], context)
    assert result.success
    assert result.data == [2, 4]
    assert (result.records_in, result.records_out, result.records_filtered) == (5, 2, 3)
    assert result.records_failed == 0


@SYNC_ASYNC
async def test_filter_uses_truthiness(flavour: str, context: PipelineContext) -> None:
    result = await FilterStage(flavoured(flavour, lambda x: x)).process([0, "", "a", 3], context)
    assert result.data == ["a", 3]


@SYNC_ASYNC
async def test_filter_predicate_error_fails_fast(flavour: str, context: PipelineContext) -> None:
    calls: list[int] = []

    def pred(x: int) -> bool:
        calls.append(x)
        return 1 / x > 0

    result = await FilterStage(flavoured(flavour, pred)).process([1, 0, 2], context)
    assert not result.success
    assert isinstance(result.error, ZeroDivisionError)
    assert calls == [1, 0]


@SYNC_ASYNC
async def test_filter_continue_on_error(flavour: str, context: PipelineContext) -> None:
    stage = FilterStage(flavoured(flavour, lambda x: 1 / x > 0), continue_on_error=True)
    result = await stage.process([1, 0, -2, 3], context)
    assert result.success
    assert result.data == [1, 3]
    assert (result.records_failed, result.records_filtered) == (1, 1)
    assert [e.item for e in context.errors] == [0]


async def test_filter_awaits_coroutines_from_sync_looking_predicate(
    context: PipelineContext,
) -> None:
    async def is_even(x: int) -> bool:
        return x % 2 == 0

    result = await FilterStage(lambda x: is_even(x)).process([1, 2, 3, 4], context)
    assert result.data == [2, 4]


async def test_filter_async_concurrency(context: PipelineContext) -> None:
    peak = InFlight()

    async def pred(x: int) -> bool:
        return await peak(x) > 20

    result = await FilterStage(pred, concurrency=3).process([1, 2, 3, 4, 5], context)
    assert result.data == [3, 4, 5]
    assert peak.peak == 3


def test_filter_default_name() -> None:
    assert FilterStage(callable).name == "filter(callable)"


# --- BatchStage ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, [[1], [2], [3], [4], [5]]),
        (2, [[1, 2], [3, 4], [5]]),
        (3, [[1, 2, 3], [4, 5]]),
        (5, [[1, 2, 3, 4, 5]]),
        (10, [[1, 2, 3, 4, 5]]),
    ],
)
async def test_batch_splits_into_fixed_sizes(
    size: int, expected: list[list[int]], context: PipelineContext
) -> None:
    result = await BatchStage[int](size).process([1, 2, 3, 4, 5], context)
    assert result.data == expected
    assert result.records_in == 5
    assert result.records_out == len(expected)


async def test_batch_of_empty_input_has_no_batches(context: PipelineContext) -> None:
    assert (await BatchStage[int](3).process([], context)).data == []


async def test_batch_accepts_generators(context: PipelineContext) -> None:
    result = await BatchStage[int](2).process((x for x in range(3)), context)
    assert result.data == [[0, 1], [2]]


@pytest.mark.parametrize("size", [0, -1, 2.5, "2", True, None])
def test_batch_rejects_invalid_size(size: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match="size must be an int >= 1"):
        BatchStage[int](size)


def test_batch_default_name() -> None:
    assert BatchStage[int](4).name == "batch(4)"
    assert BatchStage[int](4, name="chunks").name == "chunks"


# --- FlattenStage --------------------------------------------------------------------------


async def test_flatten_joins_nested_lists(context: PipelineContext) -> None:
    result = await FlattenStage[int]().process([[1, 2], [], [3], [4, 5]], context)
    assert result.data == [1, 2, 3, 4, 5]
    assert result.records_in == 4
    assert result.records_out == 5


async def test_flatten_accepts_any_nested_iterables(context: PipelineContext) -> None:
    result = await FlattenStage[int]().process(((1, 2), range(3, 5)), context)
    assert result.data == [1, 2, 3, 4]


async def test_flatten_only_one_level(context: PipelineContext) -> None:
    result = await FlattenStage[Any]().process([[[1], [2]], [[3]]], context)
    assert result.data == [[1], [2], [3]]


async def test_flatten_of_non_iterable_group_fails(context: PipelineContext) -> None:
    result = await run_stage(FlattenStage[Any](), [[1], 2], context)
    assert not result.success
    assert isinstance(result.error, TypeError)


def test_flatten_names() -> None:
    assert FlattenStage[int]().name == "flatten"
    assert FlattenStage[int](name="merge").name == "merge"


# --- AggregateStage ------------------------------------------------------------------------


@SYNC_ASYNC
async def test_aggregate_reduces_to_one_value(flavour: str, context: PipelineContext) -> None:
    result = await AggregateStage(flavoured(flavour, sum)).process([1, 2, 3], context)
    assert result.success
    assert result.data == 6
    assert (result.records_in, result.records_out) == (3, 1)


@SYNC_ASYNC
async def test_aggregate_receives_a_list(flavour: str, context: PipelineContext) -> None:
    received: list[Any] = []

    def keep(items: list[int]) -> int:
        received.append(items)
        return len(items)

    result = await AggregateStage(flavoured(flavour, keep)).process(iter([4, 5]), context)
    assert received == [[4, 5]]
    assert result.data == 2


async def test_aggregate_async_builds_summary(context: PipelineContext) -> None:
    async def summary(items: list[int]) -> dict[str, float]:
        return {"count": len(items), "mean": sum(items) / len(items)}

    result = await AggregateStage(summary).process([2, 4], context)
    assert result.data == {"count": 2, "mean": 3.0}


async def test_aggregate_error_becomes_failed_result(context: PipelineContext) -> None:
    def mean(items: list[int]) -> float:
        return sum(items) / len(items)

    result = await run_stage(AggregateStage(mean), [], context)
    assert not result.success
    assert isinstance(result.error, ZeroDivisionError)


def test_aggregate_rejects_non_callable_and_names_default() -> None:
    with pytest.raises(PipelineDefinitionError):
        AggregateStage(3)  # type: ignore[call-overload]
    assert AggregateStage(sum).name == "aggregate(sum)"


# --- ValidateStage -------------------------------------------------------------------------


@SYNC_ASYNC
async def test_validate_true_passes_records(flavour: str, context: PipelineContext) -> None:
    result = await ValidateStage(flavoured(flavour, lambda x: True)).process([1, 2], context)
    assert result.success
    assert result.data == [1, 2]
    assert context.errors == []


@SYNC_ASYNC
async def test_validate_false_fails_with_generic_reason(
    flavour: str, context: PipelineContext
) -> None:
    stage = ValidateStage(flavoured(flavour, lambda x: x > 0), name="positive")
    result = await stage.process([1, -1, 2], context)
    assert not result.success
    assert isinstance(result.error, RecordValidationError)
    assert isinstance(result.error, ValueError)
    assert result.error.stage == "positive"
    assert result.error.reason == "validation failed"
    assert str(result.error) == "positive: validation failed"


@SYNC_ASYNC
async def test_validate_string_message_reaches_the_error(
    flavour: str, context: PipelineContext
) -> None:
    def check(user: dict[str, str]) -> bool | str:
        return "@" in user["email"] or f"bad e-mail {user['email']!r}"

    stage = ValidateStage(flavoured(flavour, check), name="email")
    result = await stage.process([{"email": "a@x"}, {"email": "nope"}], context)
    assert isinstance(result.error, RecordValidationError)
    assert result.error.reason == "bad e-mail 'nope'"
    assert str(result.error) == "email: bad e-mail 'nope'"
    [record] = context.errors
    assert record.exception is result.error
    assert record.item == {"email": "nope"}
    assert record.stage == "email"


@SYNC_ASYNC
async def test_validator_exception_is_the_error(flavour: str, context: PipelineContext) -> None:
    error = LookupError("no such field")

    def check(x: int) -> bool:
        if x == 2:
            raise error
        return True

    result = await ValidateStage(flavoured(flavour, check)).process([1, 2, 3], context)
    assert not result.success
    assert result.error is error


@SYNC_ASYNC
async def test_validate_fail_fast_stops_at_first_invalid(
    flavour: str, context: PipelineContext
) -> None:
    seen: list[int] = []

    def check(x: int) -> bool | str:
        seen.append(x)
        return x < 2 or f"{x} too big"

    result = await ValidateStage(flavoured(flavour, check)).process([1, 2, 3], context)
    assert not result.success
    assert seen == [1, 2]
    assert [e.item for e in context.errors] == [2]


@SYNC_ASYNC
async def test_validate_continue_on_error_passes_valid_records(
    flavour: str, context: PipelineContext
) -> None:
    def check(x: int) -> bool | str:
        if x == 0:
            raise ZeroDivisionError("zero")
        return x > 0 or f"{x} is negative"

    stage = ValidateStage(flavoured(flavour, check), continue_on_error=True, name="v")
    result = await stage.process([1, -1, 0, 2, -3], context)
    assert result.success
    assert result.data == [1, 2]
    assert (result.records_in, result.records_out, result.records_failed) == (5, 2, 3)
    assert [(e.item, str(e.exception)) for e in context.errors] == [
        (-1, "v: -1 is negative"),
        (0, "zero"),
        (-3, "v: -3 is negative"),
    ]


async def test_validator_returning_none_is_invalid(context: PipelineContext) -> None:
    result = await ValidateStage(lambda x: None).process([1], context)  # type: ignore[arg-type,return-value]
    assert isinstance(result.error, RecordValidationError)


async def test_validator_returning_non_bool_is_a_type_error(context: PipelineContext) -> None:
    result = await ValidateStage(lambda x: 1, name="v").process([1], context)  # type: ignore[arg-type,return-value]
    assert isinstance(result.error, TypeError)
    assert "'v'" in str(result.error)
    assert "returned int" in str(result.error)


async def test_validate_with_concurrency(context: PipelineContext) -> None:
    stage = ValidateStage(as_async(lambda x: x != 2), concurrency=3, continue_on_error=True)
    result = await stage.process([1, 2, 3], context)
    assert result.data == [1, 3]
    assert [e.item for e in context.errors] == [2]


def test_validate_default_name() -> None:
    def has_id(row: dict[str, Any]) -> bool:
        return "id" in row

    assert ValidateStage(has_id).name == "validate(test_validate_default_name.<locals>.has_id)"


# --- BranchStage ---------------------------------------------------------------------------


class Fails(PipelineStage[Any, Any]):
    def __init__(self, error: BaseException, name: str = "fails") -> None:
        self.error = error
        self.name = name

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        return StageResult.fail(self.error)


async def test_branch_runs_every_branch_on_the_same_input(context: PipelineContext) -> None:
    stage = BranchStage(
        {
            "total": AggregateStage(sum),
            "doubled": MapStage(lambda x: x * 2),
            "chain": MapStage(lambda x: x + 1) >> AggregateStage(max),
        }
    )
    result = await stage.process([1, 2, 3], context)
    assert result.success
    assert result.data == {"total": 6, "doubled": [2, 4, 6], "chain": 4}
    assert list(result.data) == ["total", "doubled", "chain"]
    assert (result.records_in, result.records_out) == (3, 3)


async def test_branches_run_concurrently(context: PipelineContext) -> None:
    left_ready, right_ready = asyncio.Event(), asyncio.Event()

    async def left(data: int) -> str:
        left_ready.set()
        await right_ready.wait()  # deadlocks unless "right" runs at the same time
        return "left"

    async def right(data: int) -> str:
        right_ready.set()
        await left_ready.wait()
        return "right"

    stage = BranchStage({"l": FunctionStage(left), "r": FunctionStage(right)})
    async with asyncio.timeout(10):
        result = await stage.process(0, context)
    assert result.data == {"l": "left", "r": "right"}


async def test_failing_branch_gives_branch_error_with_cause(context: PipelineContext) -> None:
    cause = ValueError("bad data")
    stage = BranchStage({"ok": AggregateStage(len), "broken": Fails(cause)}, name="fan")
    result = await stage.process([1], context)
    assert not result.success
    assert isinstance(result.error, BranchError)
    assert result.error.stage == "fan"
    assert result.error.branch == "broken"
    assert result.error.__cause__ is cause
    assert "'broken'" in str(result.error)
    assert "ValueError: bad data" in str(result.error)


async def test_branch_exception_in_stage_code_is_the_cause(context: PipelineContext) -> None:
    stage = BranchStage({"mean": AggregateStage(lambda xs: sum(xs) / len(xs))})
    result = await stage.process([], context)
    assert isinstance(result.error, BranchError)
    assert isinstance(result.error.__cause__, ZeroDivisionError)


async def test_branch_error_names_first_failing_branch_in_declaration_order(
    context: PipelineContext,
) -> None:
    stage = BranchStage(
        {"a": AggregateStage(len), "b": Fails(KeyError("b")), "c": Fails(KeyError("c"))}
    )
    result = await stage.process([1], context)
    assert isinstance(result.error, BranchError)
    assert result.error.branch == "b"


def test_branch_requires_branches() -> None:
    with pytest.raises(PipelineDefinitionError, match="at least one branch"):
        BranchStage({})


def test_branch_rejects_non_stage_branch() -> None:
    with pytest.raises(PipelineDefinitionError, match="branch 'f' is function"):
        BranchStage({"f": invert})  # type: ignore[dict-item]


def test_branch_default_name_lists_branches() -> None:
    stage = BranchStage({"x": AggregateStage(len), "y": AggregateStage(sum)})
    assert stage.name == "branch(x, y)"


# --- FunctionStage -------------------------------------------------------------------------


@SYNC_ASYNC
async def test_function_stage_applies_fn_to_whole_input(
    flavour: str, context: PipelineContext
) -> None:
    result = await FunctionStage(flavoured(flavour, len), name="count").process("abcd", context)
    assert result.data == 4
    assert result.records_in == 1


def test_function_stage_names_and_validation() -> None:
    assert FunctionStage(invert).name == "invert"
    with pytest.raises(PipelineDefinitionError):
        FunctionStage(None)  # type: ignore[call-overload]
