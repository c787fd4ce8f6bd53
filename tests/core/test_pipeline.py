"""Pipeline: building, executing, fail-fast, error wrapping, cancellation and hooks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conveyor import (
    FilterStage,
    HookError,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineDefinitionError,
    PipelineResult,
    PipelineStage,
    PipelineStatus,
    StageResult,
    UsageError,
)


class Add(PipelineStage[int, int]):
    def __init__(self, n: int, name: str | None = None) -> None:
        self.n = n
        self.name = name or f"add{n}"
        self.calls = 0

    async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
        self.calls += 1
        return StageResult.ok(data + self.n)


class Fails(PipelineStage[Any, Any]):
    def __init__(self, error: BaseException, name: str = "fails") -> None:
        self.error = error
        self.name = name

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        return StageResult.fail(self.error)


class Raises(PipelineStage[Any, Any]):
    def __init__(self, error: BaseException, name: str = "raises") -> None:
        self.error = error
        self.name = name

    async def process(self, data: Any, context: PipelineContext) -> StageResult[Any]:
        raise self.error


def three_stages() -> Pipeline[int, int]:
    return Pipeline[int, int]("p").add_stage(Add(1)).add_stage(Add(10)).add_stage(Add(100))


# --- building ------------------------------------------------------------------------------


def test_add_stage_is_fluent_and_keeps_order() -> None:
    pipeline = Pipeline[int, int]("p")
    a, b = Add(1), Add(2)
    assert pipeline.add_stage(a) is pipeline
    assert pipeline.add_stage(b) is pipeline
    assert pipeline.stages == (a, b)


def test_duplicate_stage_names_are_rejected() -> None:
    pipeline = Pipeline[int, int]("p").add_stage(Add(1, name="step"))
    with pytest.raises(PipelineDefinitionError, match="already has a stage named 'step'"):
        pipeline.add_stage(Add(2, name="step"))
    assert len(pipeline.stages) == 1


def test_same_stage_twice_is_rejected() -> None:
    stage = Add(1)
    with pytest.raises(PipelineDefinitionError):
        Pipeline[int, int]("p").add_stage(stage).add_stage(stage)


@pytest.mark.parametrize("not_a_stage", [lambda x: x, None, "stage", Add])
def test_non_stage_is_rejected(not_a_stage: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match="takes a PipelineStage"):
        Pipeline[int, int]("p").add_stage(not_a_stage)


@pytest.mark.parametrize("name", ["", None, 3])
def test_pipeline_needs_a_name(name: Any) -> None:
    with pytest.raises(PipelineDefinitionError, match="non-empty name"):
        Pipeline[int, int](name)


async def test_empty_pipeline_cannot_execute() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no stages"):
        await Pipeline[int, int]("empty").execute(1)


def test_empty_pipeline_cannot_execute_sync() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no stages"):
        Pipeline[int, int]("empty").execute_sync(1)


def test_empty_pipeline_has_no_stage_form() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no stages"):
        Pipeline[int, int]("empty").as_stage()


def test_repr_lists_stages() -> None:
    assert repr(three_stages()) == "<Pipeline 'p': add1 >> add10 >> add100>"


async def test_as_stage_chains_the_stages(context: PipelineContext) -> None:
    stage = three_stages().as_stage()
    assert [s.name for s in stage.stages] == ["add1", "add10", "add100"]  # type: ignore[attr-defined]
    assert (await stage.process(0, context)).data == 111


async def test_as_stage_of_one_stage_is_that_stage() -> None:
    only = Add(1)
    assert Pipeline[int, int]("p").add_stage(only).as_stage() is only


# --- executing -----------------------------------------------------------------------------


async def test_execute_runs_stages_in_order() -> None:
    result = await three_stages().execute(0)
    assert isinstance(result, PipelineResult)
    assert result.success
    assert result.status is PipelineStatus.COMPLETED
    assert result.data == 111
    assert result.error is None
    assert result.failed_stage is None
    assert result.pipeline_name == "p"
    assert list(result.stage_results) == ["add1", "add10", "add100"]
    assert [r.data for r in result.stage_results.values()] == [1, 11, 111]
    assert result.duration_ms > 0


def test_execute_sync_runs_without_a_loop() -> None:
    result = three_stages().execute_sync(1)
    assert result.data == 112


async def test_execute_sync_inside_running_loop_is_a_usage_error() -> None:
    pipeline = three_stages()
    with pytest.raises(UsageError, match=r"await pipeline\.execute"):
        pipeline.execute_sync(1)
    assert [s.calls for s in pipeline.stages] == [0, 0, 0]  # type: ignore[attr-defined]


async def test_execute_with_builtin_stages() -> None:
    pipeline = (
        Pipeline[list[int], list[int]]("evens_squared")
        .add_stage(FilterStage(lambda x: x % 2 == 0))
        .add_stage(MapStage(lambda x: x * x))
    )
    result = await pipeline.execute([1, 2, 3, 4])
    assert result.data == [4, 16]


async def test_pipeline_can_run_twice() -> None:
    pipeline = three_stages()
    assert (await pipeline.execute(0)).data == 111
    assert (await pipeline.execute(1)).data == 112


# --- failures --------------------------------------------------------------------------


async def test_fail_fast_stops_at_failing_stage() -> None:
    error = ValueError("broken")
    after = Add(1, name="after")
    pipeline = Pipeline[int, int]("p").add_stage(Add(1)).add_stage(Fails(error, name="bad"))
    result = await pipeline.add_stage(after).execute(0)
    assert not result.success
    assert result.status is PipelineStatus.FAILED
    assert result.data is None
    assert result.error is error
    assert result.failed_stage == "bad"
    assert after.calls == 0
    assert list(result.stage_results) == ["add1", "bad"]
    assert result.context.completed_stages == ["add1"]
    assert [(e.stage, e.exception) for e in result.context.errors] == [("bad", error)]


async def test_exception_in_stage_code_becomes_failed_result() -> None:
    error = RuntimeError("stage code blew up")
    pipeline = Pipeline[int, int]("p").add_stage(Raises(error)).add_stage(Add(1))
    result = await pipeline.execute(0)
    assert not result.success
    assert result.error is error
    assert result.failed_stage == "raises"
    assert result.stage_results["raises"].error is error


async def test_stage_returning_non_stage_result_fails_with_type_error() -> None:
    class Sloppy(PipelineStage[int, int]):
        async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
            return data + 1  # type: ignore[return-value]

    result = await Pipeline[int, int]("p").add_stage(Sloppy()).execute(1)
    assert not result.success
    assert isinstance(result.error, TypeError)
    assert "returned int, not a StageResult" in str(result.error)
    assert result.failed_stage == "Sloppy"


async def test_record_error_is_not_recorded_twice() -> None:
    result = await (
        Pipeline[list[int], list[float]]("p")
        .add_stage(MapStage(lambda x: 1 / x, name="inv"))
        .execute([1, 0])
    )
    assert result.failed_stage == "inv"
    [record] = result.context.errors
    assert record.item == 0
    assert record.exception is result.error


async def test_continue_on_error_lets_the_pipeline_go_on() -> None:
    result = await (
        Pipeline[list[int], list[float]]("p")
        .add_stage(MapStage(lambda x: 1 / x, continue_on_error=True, name="inv"))
        .add_stage(MapStage(lambda x: x * 2, name="double"))
        .execute([1, 0, 2])
    )
    assert result.success
    assert result.data == [2.0, 1.0]
    assert [e.item for e in result.context.errors] == [0]


async def test_raised_cancellation_is_not_swallowed() -> None:
    pipeline = Pipeline[int, int]("p").add_stage(Raises(asyncio.CancelledError()))
    with pytest.raises(asyncio.CancelledError):
        await pipeline.execute(1)


async def test_cancelling_a_running_pipeline_propagates() -> None:
    started, never = asyncio.Event(), asyncio.Event()
    errors_seen: list[Any] = []

    class Waits(PipelineStage[int, int]):
        async def process(self, data: int, context: PipelineContext) -> StageResult[int]:
            started.set()
            await never.wait()
            return StageResult.ok(data)

    pipeline = (
        Pipeline[int, int]("p")
        .add_stage(Waits())
        .add_hook("on_error", lambda **kw: errors_seen.append(kw))
    )
    task = asyncio.create_task(pipeline.execute(1))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert errors_seen == []


async def test_cancelling_concurrent_map_propagates() -> None:
    started, never = asyncio.Event(), asyncio.Event()

    async def waits(x: int) -> int:
        started.set()
        await never.wait()
        return x

    pipeline = Pipeline[list[int], list[int]]("p").add_stage(MapStage(waits, concurrency=2))
    task = asyncio.create_task(pipeline.execute([1, 2, 3]))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- hooks -------------------------------------------------------------------------------


async def test_hooks_receive_seed_arguments_in_order() -> None:
    calls: list[tuple[str, dict[str, Any]]] = []

    def before_stage(*, stage_name: str, data: Any, context: PipelineContext) -> None:
        calls.append(("before", {"stage_name": stage_name, "data": data, "context": context}))

    def after_stage(
        *, stage_name: str, data: Any, context: PipelineContext, result: StageResult[Any]
    ) -> None:
        calls.append(("after", {"stage_name": stage_name, "data": data, "result": result}))

    def on_complete(*, data: Any, context: PipelineContext, result: PipelineResult[Any]) -> None:
        calls.append(("complete", {"data": data, "context": context, "result": result}))

    pipeline = (
        Pipeline[int, int]("p")
        .add_stage(Add(1))
        .add_stage(Add(10))
        .add_hook("before_stage", before_stage)
        .add_hook("after_stage", after_stage)
        .add_hook("on_complete", on_complete)
    )
    result = await pipeline.execute(0)
    assert [(kind, kw.get("stage_name"), kw["data"]) for kind, kw in calls] == [
        ("before", "add1", 0),
        ("after", "add1", 1),
        ("before", "add10", 1),
        ("after", "add10", 11),
        ("complete", None, 11),
    ]
    assert all(kw.get("context", result.context) is result.context for _, kw in calls)
    assert calls[1][1]["result"] is result.stage_results["add1"]
    assert calls[-1][1]["result"] is result


async def test_async_hooks_are_awaited_in_order() -> None:
    order: list[str] = []

    async def before_stage(*, stage_name: str, data: Any, context: PipelineContext) -> None:
        await asyncio.sleep(0)
        order.append(f"before {stage_name} {data}")

    async def after_stage(*, stage_name: str, data: Any, **_: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"after {stage_name} {data}")

    async def on_complete(*, data: Any, **_: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"complete {data}")

    pipeline = (
        Pipeline[int, int]("p")
        .add_stage(Add(1))
        .add_hook("before_stage", before_stage)
        .add_hook("after_stage", after_stage)
        .add_hook("on_complete", on_complete)
    )
    await pipeline.execute(5)
    assert order == ["before add1 5", "after add1 6", "complete 6"]


@pytest.mark.parametrize("flavour", ["sync", "async"])
async def test_on_error_hook_receives_stage_error_and_context(flavour: str) -> None:
    seen: list[dict[str, Any]] = []
    error = ValueError("x")

    def record(
        *, stage_name: str, error: BaseException, context: PipelineContext, result: Any
    ) -> None:
        seen.append({"stage_name": stage_name, "error": error, "context": context, "r": result})

    async def record_async(**kwargs: Any) -> None:
        record(**kwargs)

    hook = record if flavour == "sync" else record_async
    after_calls: list[str] = []
    pipeline = (
        Pipeline[int, int]("p")
        .add_stage(Add(1))
        .add_stage(Fails(error, name="bad"))
        .add_hook("on_error", hook)
        .add_hook("after_stage", lambda *, stage_name, **_: after_calls.append(stage_name))
        .add_hook("on_complete", lambda **_: after_calls.append("complete"))
    )
    result = await pipeline.execute(0)
    [call] = seen
    assert call["stage_name"] == "bad"
    assert call["error"] is error
    assert call["context"] is result.context
    assert call["r"] is result.stage_results["bad"]
    assert after_calls == ["add1"]


async def test_hooks_at_one_point_run_in_registration_order() -> None:
    order: list[int] = []
    pipeline = Pipeline[int, int]("p").add_stage(Add(1))
    for n in range(3):
        pipeline.add_hook("before_stage", lambda n=n, **_: order.append(n))
    await pipeline.execute(0)
    assert order == [0, 1, 2]
    assert len(pipeline.hooks("before_stage")) == 3
    assert pipeline.hooks("on_error") == ()


async def test_hooks_can_record_every_stage_result() -> None:
    recorded: dict[str, StageResult[Any]] = {}

    def keep(*, stage_name: str, result: StageResult[Any], **_: Any) -> None:
        recorded[stage_name] = result

    pipeline = (
        Pipeline[int, int]("p")
        .add_stage(Add(1))
        .add_stage(Fails(KeyError("k"), name="bad"))
        .add_hook("after_stage", keep)
        .add_hook("on_error", keep)
    )
    result = await pipeline.execute(0)
    assert recorded == result.stage_results
    assert recorded["add1"].data == 1
    assert not recorded["bad"].success


def test_unknown_hook_is_rejected() -> None:
    with pytest.raises(PipelineDefinitionError, match="unknown hook 'after'"):
        Pipeline[int, int]("p").add_hook("after", print)  # type: ignore[arg-type]


def test_non_callable_hook_is_rejected() -> None:
    with pytest.raises(PipelineDefinitionError, match="must be callable"):
        Pipeline[int, int]("p").add_hook("on_error", "print")  # type: ignore[arg-type]


def boom(**_: Any) -> None:
    raise RuntimeError("hook bug")


async def async_boom(**_: Any) -> None:
    raise RuntimeError("hook bug")


@pytest.mark.parametrize("hook_fn", [boom, async_boom])
async def test_raising_before_stage_hook_fails_the_run(hook_fn: Any) -> None:
    stage = Add(1)
    pipeline = Pipeline[int, int]("p").add_stage(stage).add_hook("before_stage", hook_fn)
    result = await pipeline.execute(0)
    assert not result.success
    assert isinstance(result.error, HookError)
    assert result.error.hook == "before_stage"
    assert result.error.stage == "add1"
    assert result.error.function == hook_fn.__qualname__
    assert isinstance(result.error.__cause__, RuntimeError)
    assert result.failed_stage == "add1"
    assert stage.calls == 0
    assert result.context.errors[-1].exception is result.error


async def test_raising_after_stage_hook_stops_later_stages() -> None:
    later = Add(10)
    pipeline = (
        Pipeline[int, int]("p").add_stage(Add(1)).add_stage(later).add_hook("after_stage", boom)
    )
    result = await pipeline.execute(0)
    assert isinstance(result.error, HookError)
    assert result.error.hook == "after_stage"
    assert result.failed_stage == "add1"
    assert later.calls == 0


async def test_raising_on_error_hook_reports_hook_error() -> None:
    stage_error = ValueError("stage")
    pipeline = Pipeline[int, int]("p").add_stage(Fails(stage_error)).add_hook("on_error", boom)
    result = await pipeline.execute(0)
    assert isinstance(result.error, HookError)
    assert result.error.hook == "on_error"
    assert result.stage_results["fails"].error is stage_error
    assert [e.exception for e in result.context.errors] == [stage_error, result.error]


async def test_raising_on_complete_hook_fails_the_run() -> None:
    pipeline = Pipeline[int, int]("p").add_stage(Add(1)).add_hook("on_complete", async_boom)
    result = await pipeline.execute(0)
    assert not result.success
    assert result.data is None
    assert isinstance(result.error, HookError)
    assert result.error.hook == "on_complete"
    assert result.error.stage is None
    assert result.failed_stage is None
    assert "fix the hook" in str(result.error)
    assert result.context.errors[-1].exception is result.error


async def test_cancellation_in_a_hook_is_not_wrapped() -> None:
    def cancel(**_: Any) -> None:
        raise asyncio.CancelledError

    pipeline = Pipeline[int, int]("p").add_stage(Add(1)).add_hook("after_stage", cancel)
    with pytest.raises(asyncio.CancelledError):
        await pipeline.execute(0)
