"""Streaming mode's events and hooks, ``Pipeline.stream``, and async sources with linger."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import _fns
import pytest

from conveyor import (
    ConservationError,
    Event,
    EventBus,
    EventType,
    FilterStage,
    HookError,
    MapStage,
    Pipeline,
    RunReport,
    StageResult,
)
from conveyor.core.hooks import CREATED_KEYS, STAGE_KEYS, UPDATED_KEYS
from conveyor.testing import MemorySink


def tenfold_pipeline(bus: EventBus | None = None) -> Pipeline[Any, Any]:
    return (
        Pipeline[Any, Any]("hooks", event_bus=bus)
        .add_stage(MapStage(_fns.tenfold_unless_multiple_of_5, name="tenfold"))
        .add_stage(FilterStage(_fns.is_even, name="even"))
    )


# --- events --------------------------------------------------------------------------------


async def test_events_of_a_streaming_run(bus_and_events: tuple[EventBus, list[Event]]) -> None:
    bus, events = bus_and_events
    report = await tenfold_pipeline(bus).arun(
        range(1, 11), MemorySink(), batch_size=3, dead_letters="memory"
    )
    kinds = [event.type for event in events]
    assert kinds == [
        EventType.ITEM_CREATED,
        EventType.STAGE_COMPLETED,
        EventType.STAGE_COMPLETED,
        EventType.STAGE_COMPLETED,
        EventType.ITEM_UPDATED,
    ]
    created = events[0].payload
    assert created["pipeline_id"] == report.run_id
    assert (created["pipeline_name"], created["stage_count"], created["mode"]) == (
        "hooks",
        2,
        "streaming",
    )
    stages = {event.payload["stage"]: event.payload for event in events[1:4]}
    assert list(stages) == ["tenfold", "even", "sink"]
    assert stages["tenfold"]["records_in"] == 10
    assert stages["tenfold"]["records_out"] == 8
    assert stages["tenfold"]["records_failed"] == 2
    assert stages["even"]["records_filtered"] == 0  # ten times anything is even
    assert stages["sink"]["records_in"] == stages["sink"]["records_out"] == 8
    assert stages["tenfold"]["batches"] == 4
    assert stages["tenfold"]["kind"] == "record"
    assert stages["sink"]["kind"] == "sink"
    assert all(sorted(event.payload) == sorted(STAGE_KEYS) for event in events[1:4])
    updated = events[-1].payload
    assert updated["status"] == "failed"  # 2 of 10 dead-lettered: over the default 10%
    assert updated["completed_stages"] == ["tenfold", "even", "sink"]
    assert (updated["records_in"], updated["records_out"], updated["records_failed"]) == (10, 8, 2)
    assert sorted(updated) == sorted(UPDATED_KEYS)
    assert sorted(created) == sorted(CREATED_KEYS)
    assert report.status.value == "failed"
    assert all(event.source == "hooks" for event in events)


# --- hooks ---------------------------------------------------------------------------------


async def test_hooks_per_micro_batch_dead_letter_and_run() -> None:
    calls: list[tuple[str, Any]] = []
    pipeline = tenfold_pipeline()

    def before(*, stage_name: str, data: list[Any], context: Any, **_: Any) -> None:
        calls.append(("before", (stage_name, list(data))))

    async def after(
        *, stage_name: str, data: list[Any], result: StageResult[Any], **_: Any
    ) -> None:
        await asyncio.sleep(0)
        calls.append(("after", (stage_name, list(data), result.records_in, result.records_failed)))

    def on_error(*, stage_name: str, error: Exception, result: Any, **kwargs: Any) -> None:
        letter = kwargs["dead_letter"]
        assert error.dead_letter is letter  # type: ignore[attr-defined]
        assert result is None
        calls.append(("error", (stage_name, letter.record, str(error))))

    def on_complete(*, data: Any, context: Any, result: RunReport, **kwargs: Any) -> None:
        assert kwargs["report"] is result
        calls.append(("complete", (data, result.records_in, result.records_out)))

    pipeline.add_hook("before_stage", before).add_hook("after_stage", after)
    pipeline.add_hook("on_error", on_error).add_hook("on_complete", on_complete)
    await pipeline.arun(
        range(1, 7), MemorySink(), batch_size=3, dead_letters="memory", max_dead_letters=1
    )

    tenfold_before = [args for kind, args in calls if kind == "before" and args[0] == "tenfold"]
    assert tenfold_before == [("tenfold", [1, 2, 3]), ("tenfold", [4, 5, 6])]
    tenfold_after = [args for kind, args in calls if kind == "after" and args[0] == "tenfold"]
    assert tenfold_after == [("tenfold", [10, 20, 30], 3, 0), ("tenfold", [40, 60], 3, 1)]
    assert [args for kind, args in calls if kind == "error"] == [
        ("tenfold", 5, "builtins.ValueError: 5 is a multiple of 5")
    ]
    assert calls[-1] == ("complete", (None, 6, 5))


async def test_a_failing_hook_fails_the_run() -> None:
    def explode(**_: Any) -> None:
        raise RuntimeError("hook bug")

    pipeline = tenfold_pipeline().add_hook("before_stage", explode)
    with pytest.raises(HookError, match="before_stage hook") as caught:
        await pipeline.arun(range(3), MemorySink(), dead_letters="memory")
    assert isinstance(caught.value.__cause__, RuntimeError)


# --- Pipeline.stream ------------------------------------------------------------------------


async def test_stream_yields_outputs_and_then_the_report() -> None:
    run = tenfold_pipeline().stream(range(1, 8), batch_size=2, dead_letters="memory")
    assert run.report is None
    outputs = [x async for x in run]
    assert outputs == [10, 20, 30, 40, 60, 70]
    assert run.report is not None
    assert (run.report.records_in, run.report.records_out) == (7, 6)


async def test_stream_passes_capacity_on_to_the_run() -> None:
    run = tenfold_pipeline().stream(range(40), batch_size=2, capacity=1, dead_letters="memory")
    assert len([x async for x in run]) == 32
    assert run.report is not None
    assert {channel.capacity for channel in run.report.channels} == {1}


async def test_leaving_a_stream_early_cancels_the_run_cleanly() -> None:
    closed: list[bool] = []

    async def endless() -> AsyncIterator[int]:
        try:
            for i in itertools.count(1):
                yield i
                await asyncio.sleep(0)
        finally:
            closed.append(True)

    run = tenfold_pipeline().stream(endless(), batch_size=4, linger=0.01, dead_letters="memory")
    taken = []
    async with contextlib.aclosing(aiter(run)) as outputs:
        async for x in outputs:
            taken.append(x)
            if len(taken) == 5:
                break
    assert taken == [10, 20, 30, 40, 60]
    assert run.report is None
    await asyncio.sleep(0)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []
    assert closed == [True]  # the source itself was closed too


async def test_a_failing_run_raises_from_the_stream() -> None:
    pipeline = Pipeline[Any, Any]("leaky").add_stage(_fns.SilentDropper())
    with pytest.raises(ConservationError):
        async for _ in pipeline.stream(range(10), dead_letters="memory"):
            pass


async def test_cancelling_a_run_cancels_its_stages() -> None:
    async def hang(x: int) -> int:
        await asyncio.sleep(3600)
        return x

    pipeline = Pipeline[Any, Any]("cancel").add_stage(MapStage(hang, name="hang"))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(pipeline.arun(range(100), MemorySink(), dead_letters="memory"), 0.1)
    leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    assert leftovers == []


# --- async sources and linger --------------------------------------------------------------


async def test_linger_cuts_micro_batches_of_a_trickling_source() -> None:
    async def bursts() -> AsyncIterator[tuple[int, int]]:
        for burst in range(3):
            for i in range(3):
                yield (burst, i)
            await asyncio.sleep(0.25)  # far longer than the linger

    sink = MemorySink()
    pipeline = Pipeline[Any, Any]("trickle").add_stage(MapStage(_fns.ident, name="ident"))
    report = await pipeline.arun(bursts(), sink, batch_size=100, linger=0.02, dead_letters="memory")
    assert report.records_out == 9
    assert len(sink.batches) >= 3
    # Without linger the whole stream would be one micro-batch of 9; with it, a
    # micro-batch never waits across a pause, so no batch mixes two bursts.
    for batch in sink.batches:
        assert len({burst for burst, _ in batch}) == 1


async def test_an_async_source_is_cut_at_batch_size() -> None:
    async def numbers() -> AsyncIterator[int]:
        for i in range(10):
            yield i

    sink = MemorySink()
    pipeline = Pipeline[Any, Any]("sizes").add_stage(MapStage(_fns.ident, name="ident"))
    await pipeline.arun(numbers(), sink, batch_size=4, linger=5.0, dead_letters="memory")
    assert sink.records == list(range(10))
    assert all(len(batch) <= 4 for batch in sink.batches)


async def test_a_failing_async_source_fails_the_run() -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        yield 2
        raise OSError("connection to the source lost")

    pipeline = Pipeline[Any, Any]("broken").add_stage(MapStage(_fns.ident, name="ident"))
    with pytest.raises(OSError, match="connection to the source lost"):
        await asyncio.wait_for(pipeline.arun(broken(), MemorySink(), dead_letters="memory"), 10)


async def test_a_failing_sync_source_fails_the_run() -> None:
    def broken() -> Any:
        yield 1
        raise OSError("file truncated")

    pipeline = Pipeline[Any, Any]("broken").add_stage(MapStage(_fns.ident, name="ident"))
    with pytest.raises(OSError, match="file truncated"):
        await pipeline.arun(broken(), MemorySink(), dead_letters="memory")


async def test_batch_barrier_and_branch_stages_get_their_hooks_when_streaming() -> None:
    from conveyor import AggregateStage, BatchStage, BranchStage, FlattenStage

    calls: list[tuple[str, str, Any]] = []

    def before(*, stage_name: str, data: Any, **_: Any) -> None:
        calls.append(("before", stage_name, data))

    def after(*, stage_name: str, data: Any, result: StageResult[Any], **_: Any) -> None:
        calls.append(("after", stage_name, data))

    pipeline = (
        Pipeline[Any, Any]("kinds")
        .add_stage(BatchStage(2, name="pairs"))
        .add_stage(FlattenStage(name="flat"))
        .add_stage(AggregateStage(sum, name="total"))
        .add_hook("before_stage", before)
        .add_hook("after_stage", after)
    )
    sink = MemorySink()
    await pipeline.arun(range(5), sink, batch_size=5, dead_letters="memory")
    assert sink.records == [10]
    assert ("before", "pairs", [0, 1, 2, 3, 4]) in calls
    assert ("after", "pairs", [[0, 1], [2, 3]]) in calls
    assert ("after", "pairs", [[4]]) in calls
    assert ("before", "total", [0, 1, 2, 3, 4]) in calls
    assert ("after", "total", [10]) in calls

    branches = Pipeline[Any, Any]("arms").add_stage(
        BranchStage({"n": AggregateStage(len, name="n"), "s": AggregateStage(sum, name="s")}),
    )
    calls.clear()
    branches.add_hook("after_stage", after)
    sink = MemorySink()
    report = await branches.arun(range(4), sink, dead_letters="memory")
    assert sink.records == [{"n": 4, "s": 6}]
    assert ("after", "branch(n, s)/n/n", [4]) in calls
    assert ("after", "branch(n, s)", [{"n": 4, "s": 6}]) in calls
    assert report.stage("branch(n, s)/s/s").records_in == 4
    report.check_conservation()


async def test_the_same_hooks_see_the_same_arguments_in_both_modes() -> None:
    keys: dict[str, set[tuple[str, ...]]] = {"collection": set(), "streaming": set()}

    def record(mode: str) -> Any:
        def hook(**kwargs: Any) -> None:
            keys[mode].add(tuple(sorted(k for k in kwargs if k not in ("report", "dead_letter"))))

        return hook

    for mode in keys:
        pipeline = Pipeline[Any, Any]("same").add_stage(MapStage(_fns.inc, name="inc"))
        for hook in ("before_stage", "after_stage", "on_complete"):
            pipeline.add_hook(hook, record(mode))  # type: ignore[arg-type]
        if mode == "collection":
            await pipeline.execute([1, 2])
        else:
            await pipeline.arun([1, 2], MemorySink(), dead_letters="memory")
    assert keys["collection"] == keys["streaming"]


async def test_on_complete_runs_only_after_a_run_that_completed() -> None:
    done: list[str] = []
    pipeline = tenfold_pipeline().add_hook(
        "on_complete", lambda *, result, **_: done.append(result.status.value)
    )
    report = await pipeline.arun(range(1, 7), MemorySink(), dead_letters="memory")
    assert report.status.value == "failed"  # 1 of 6 dead-lettered: over the 10% budget
    assert done == []
    await pipeline.arun(range(1, 5), MemorySink(), dead_letters="memory")
    assert done == ["completed"]
