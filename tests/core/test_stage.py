"""PipelineStage, ``>>`` chaining, ChainedStage and run_stage."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import (
    AggregateStage,
    ChainedStage,
    FilterStage,
    MapStage,
    PipelineContext,
    PipelineStage,
    StageResult,
)
from conveyor.core import run_stage


class AddOne(PipelineStage[int, int]):
    async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
        return StageResult.ok(data + 1)


class Double(PipelineStage[int, int]):
    async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
        return StageResult.ok(data * 2)


class Spy(PipelineStage[Any, Any]):
    """Records the inputs it saw and passes them on."""

    def __init__(self, name: str = "spy") -> None:
        self.name = name
        self.seen: list[Any] = []

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        self.seen.append(data)
        return StageResult.ok(data)


class Fails(PipelineStage[Any, Any]):
    def __init__(self, error: BaseException, name: str = "fails") -> None:
        self.name = name
        self.error = error

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        return StageResult.fail(self.error, records_in=1, records_failed=1)


class Raises(PipelineStage[Any, Any]):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        raise self.error


# --- names and repr --------------------------------------------------------------------


def test_stage_name_defaults_to_class_name() -> None:
    assert AddOne().name == "AddOne"


def test_class_attribute_name_is_kept() -> None:
    class Custom(PipelineStage[int, int]):
        name = "custom-name"

        async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
            return StageResult.ok(data)

    assert Custom().name == "custom-name"


def test_repr_shows_class_and_name() -> None:
    assert repr(AddOne()) == "<AddOne 'AddOne'>"


def test_barrier_flag_marks_whole_input_stages() -> None:
    assert AggregateStage(sum).barrier is True
    assert MapStage(abs).barrier is False
    assert AddOne().barrier is False


def test_stage_without_process_cannot_be_instantiated() -> None:
    class Incomplete(PipelineStage[int, int]):
        pass

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


# --- >> ----------------------------------------------------------------------------------


def test_rshift_returns_new_chained_stage() -> None:
    a, b = AddOne(), Double()
    chain = a >> b
    assert isinstance(chain, ChainedStage)
    assert chain.first is a
    assert chain.second is b
    assert chain is not a
    assert chain is not b
    assert (a >> b) is not chain


def test_rshift_mutates_neither_operand() -> None:
    a, b = Spy("a"), Spy("b")
    before = (dict(vars(a)), dict(vars(b)))
    _ = a >> b
    assert (dict(vars(a)), dict(vars(b))) == before
    assert not isinstance(a, ChainedStage)
    assert not isinstance(b, ChainedStage)


def test_chaining_a_chain_leaves_the_original_chain_unchanged() -> None:
    a, b, c = Spy("a"), Spy("b"), Spy("c")
    ab = a >> b
    abc = ab >> c
    assert ab.stages == (a, b)
    assert ab.name == "a >> b"
    assert abc.stages == (a, b, c)


def test_chain_name_joins_operand_names() -> None:
    assert (AddOne() >> Double()).name == "AddOne >> Double"


@pytest.mark.parametrize("other", [1, "stage", None, lambda x: x, AddOne])
def test_rshift_with_foreign_operand_raises_type_error(other: Any) -> None:
    with pytest.raises(TypeError):
        AddOne() >> other


def test_rshift_with_foreign_operand_returns_not_implemented() -> None:
    assert AddOne().__rshift__(42) is NotImplemented  # type: ignore[arg-type]


def test_rshift_defers_to_foreign_rrshift() -> None:
    class Sink:
        def __rrshift__(self, other: object) -> str:
            return "sink got it"

    assert AddOne() >> Sink() == "sink got it"  # type: ignore[operator]


# --- running chains ----------------------------------------------------------------------


async def test_chain_feeds_first_output_into_second(context: PipelineContext) -> None:
    result = await (AddOne() >> Double()).process(3, context)
    assert result.success
    assert result.data == 8


async def test_chain_order_matters(context: PipelineContext) -> None:
    result = await (Double() >> AddOne()).process(3, context)
    assert result.data == 7


async def test_chain_short_circuits_when_first_fails(context: PipelineContext) -> None:
    error = ValueError("boom")
    spy = Spy()
    result = await (Fails(error) >> spy).process(1, context)
    assert not result.success
    assert result.error is error
    assert result.data is None
    assert spy.seen == []


async def test_chain_short_circuits_when_first_raises(context: PipelineContext) -> None:
    error = KeyError("k")
    spy = Spy()
    result = await (Raises(error) >> spy).process(1, context)
    assert not result.success
    assert result.error is error
    assert spy.seen == []


async def test_chain_fails_with_second_stage_error(context: PipelineContext) -> None:
    error = RuntimeError("second")
    spy = Spy()
    result = await (spy >> Fails(error)).process(5, context)
    assert spy.seen == [5]
    assert not result.success
    assert result.error is error


async def test_nested_chain_short_circuits_at_every_level(context: PipelineContext) -> None:
    error = ValueError("inner")
    first, last = Spy("first"), Spy("last")
    chain = (first >> (Fails(error) >> Spy("skipped"))) >> last
    result = await chain.process("x", context)
    assert result.error is error
    assert first.seen == ["x"]
    assert last.seen == []


async def test_chains_nest_in_both_associations(context: PipelineContext) -> None:
    left = (AddOne() >> Double()) >> AddOne()
    right = AddOne() >> (Double() >> AddOne())
    assert (await left.process(1, context)).data == 5
    assert (await right.process(1, context)).data == 5


def test_stages_flattens_nested_chains_in_order() -> None:
    a, b, c, d = Spy("a"), Spy("b"), Spy("c"), Spy("d")
    chain = (a >> b) >> (c >> d)
    assert chain.stages == (a, b, c, d)
    assert chain.name == "a >> b >> c >> d"
    assert (a >> (b >> (c >> d))).stages == (a, b, c, d)


async def test_chain_is_a_stage_and_chains_further(context: PipelineContext) -> None:
    chain = AddOne() >> AddOne()
    assert isinstance(chain, PipelineStage)
    longer = chain >> chain
    assert (await longer.process(0, context)).data == 4


async def test_chain_counts_combine_both_stages(context: PipelineContext) -> None:
    def invert(x: int) -> float:
        return 1 / x

    chain = MapStage(invert, continue_on_error=True) >> FilterStage(lambda x: x > 0.3)
    result = await chain.process([0, 1, 2, 4, 0], context)
    assert result.data == [1.0, 0.5]
    assert result.records_in == 5
    assert result.records_out == 2
    assert result.records_failed == 2
    assert result.records_filtered == 1
    assert [f.item for f in result.failures] == [0, 0]
    assert result.records_in == result.records_out + result.records_failed + (
        result.records_filtered
    )


async def test_chain_measures_its_own_duration(context: PipelineContext) -> None:
    result = await (AddOne() >> Double()).process(1, context)
    assert result.duration_ms > 0


async def test_chain_failure_result_has_duration(context: PipelineContext) -> None:
    result = await (Fails(ValueError()) >> Double()).process(1, context)
    assert result.duration_ms > 0


# --- run_stage -----------------------------------------------------------------------------


async def test_run_stage_wraps_exception_in_failed_result(context: PipelineContext) -> None:
    error = ZeroDivisionError("x")
    result = await run_stage(Raises(error), 1, context)
    assert not result.success
    assert result.error is error
    assert result.data is None
    assert result.duration_ms > 0


async def test_run_stage_rejects_non_stage_result(context: PipelineContext) -> None:
    class Sloppy(PipelineStage[int, int]):
        async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
            return data  # type: ignore[return-value]

    result = await run_stage(Sloppy(), 1, context)
    assert not result.success
    assert isinstance(result.error, TypeError)
    assert "'Sloppy'" in str(result.error)
    assert "StageResult" in str(result.error)


async def test_run_stage_does_not_swallow_cancellation(context: PipelineContext) -> None:
    with pytest.raises(asyncio.CancelledError):
        await run_stage(Raises(asyncio.CancelledError()), 1, context)


async def test_run_stage_does_not_swallow_base_exceptions(context: PipelineContext) -> None:
    with pytest.raises(KeyboardInterrupt):
        await run_stage(Raises(KeyboardInterrupt()), 1, context)


async def test_run_stage_measures_duration_when_stage_did_not(context: PipelineContext) -> None:
    result = await run_stage(AddOne(), 1, context)
    assert result.duration_ms > 0


async def test_run_stage_keeps_duration_set_by_stage(context: PipelineContext) -> None:
    class Timed(PipelineStage[int, int]):
        async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
            return StageResult.ok(data, duration_ms=123.0)

    assert (await run_stage(Timed(), 1, context)).duration_ms == 123.0
