"""Smaller pieces of the runtime: the run report and its conservation law, the offset
tracker, the runner's definition errors, sinks that are stages, and ``conveyor.testing``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import _fns
import pytest

from conveyor import (
    ConservationError,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineDefinitionError,
    PipelineSpec,
    PipelineStage,
    RunOptions,
    StageOptions,
    StageResult,
    UsageError,
)
from conveyor.dlq import MemoryDeadLetterStore
from conveyor.runtime import (
    OffsetTracker,
    RunReport,
    RunStatus,
    StageKind,
    StageStats,
    StreamRunner,
    flatten_stages,
)
from conveyor.testing import (
    MemorySink,
    TestRun,
    arun_pipeline_on,
    make_context,
    run_pipeline_on,
    run_stage_on,
)

# --- RunReport -----------------------------------------------------------------------------


def report_of(*stages: StageStats, records_in: int = 10, **fields: Any) -> RunReport:
    return RunReport(
        run_id="r1",
        pipeline_name="p",
        started_at=datetime(2026, 1, 1, tzinfo=UTC),
        records_in=records_in,
        stages=list(stages),
        **fields,
    )


def stats(name: str, kind: StageKind, **counts: int) -> StageStats:
    return StageStats(name, kind, **counts)


def good_report() -> RunReport:
    return report_of(
        stats(
            "parse",
            StageKind.RECORD,
            received=10,
            emitted=7,
            filtered=2,
            dead_lettered=1,
            records_in=10,
            records_out=7,
            records_filtered=2,
            records_dead=1,
        ),
        stats(
            "batch", StageKind.BATCH, received=7, emitted=3, grouped=7, records_in=7, records_out=7
        ),
        stats("flat", StageKind.EXPAND, received=3, emitted=7, records_in=7, records_out=7),
        stats(
            "sink",
            StageKind.SINK,
            received=7,
            emitted=6,
            dead_lettered=1,
            records_in=7,
            records_out=6,
            records_dead=1,
        ),
    )


def test_report_totals_and_summary() -> None:
    report = good_report()
    report.check_conservation()
    assert (report.records_out, report.filtered, report.dead_lettered) == (6, 2, 2)
    assert report.sink.name == "sink"
    assert report.stage("batch").grouped == 7
    assert not report.interrupted
    assert report.summary().startswith("p completed: 10 in, 6 out, 2 filtered, 2 dead-lettered")
    assert report.stage("parse").as_dict()["dead_lettered"] == 1
    with pytest.raises(KeyError, match="no stage 'nope'; stages: parse, batch, flat, sink"):
        report.stage("nope")


def test_report_catches_an_edge_that_disagrees() -> None:
    report = good_report()
    report.stages[2].received = 4
    with pytest.raises(ConservationError, match="batch emitted 3 but flat received 4"):
        report.check_conservation()


def test_report_catches_a_record_stage_that_does_not_add_up() -> None:
    report = good_report()
    report.stages[0].filtered = 1
    with pytest.raises(ConservationError, match="'parse'") as caught:
        report.check_conservation()
    assert caught.value.stage == "parse"


def test_report_catches_a_batch_stage_that_lost_records() -> None:
    report = good_report()
    report.stages[1].grouped = 6
    with pytest.raises(ConservationError, match="grouped 6"):
        report.check_conservation()


def test_report_catches_a_group_letter_counted_as_one_record() -> None:
    # BatchStage(3) -> a map failing one group of 3 -> flatten: the letter holds 3 records.
    report = report_of(
        stats(
            "batch",
            StageKind.BATCH,
            received=10,
            emitted=4,
            grouped=10,
            records_in=10,
            records_out=10,
        ),
        stats(
            "fail",
            StageKind.RECORD,
            received=4,
            emitted=3,
            dead_lettered=1,
            records_in=10,
            records_out=7,
            records_dead=1,
        ),
        stats("flat", StageKind.EXPAND, received=3, emitted=7, records_in=7, records_out=7),
        stats("sink", StageKind.SINK, received=7, emitted=7, records_in=7, records_out=7),
    )
    with pytest.raises(ConservationError, match="took 10 records but gave 7 out"):
        report.check_conservation()
    report.stages[1].records_dead = 3
    report.check_conservation()
    assert (report.records_in, report.records_out, report.dead_lettered, report.letters) == (
        10,
        7,
        3,
        1,
    )


def test_report_catches_totals_that_do_not_add_up() -> None:
    report = good_report()
    flat = report.stage("flat")
    flat.records_out, flat.born = 8, 1  # adds up on its own, but the sink took only 7
    with pytest.raises(ConservationError, match="10 records read but 6 out"):
        report.check_conservation()


def test_report_catches_records_still_in_flight() -> None:
    report = good_report()
    report.in_flight_records = 3
    with pytest.raises(ConservationError, match="3 records still in flight"):
        report.check_conservation()


def test_an_aborted_report_is_not_checked() -> None:
    report = good_report()
    report.status = RunStatus.ABORTED
    report.in_flight_records = 3
    report.check_conservation()
    assert report.interrupted


# --- OffsetTracker -------------------------------------------------------------------------


def test_offset_tracker_moves_references() -> None:
    tracker = OffsetTracker()
    a = tracker.open(0, 4, 5)
    b = tracker.open(5, 9, 5)
    tracker.acquire((a, b), times=2)  # a re-cut made two batches holding both
    tracker.acquire((a,), times=0)
    tracker.release((a,))  # the original batches let go
    tracker.release((b,))
    assert (tracker.in_flight_batches, tracker.in_flight_records, tracker.low_watermark) == (
        2,
        10,
        0,
    )
    tracker.release((a, b))
    tracker.release((a, b))
    assert tracker.low_watermark is None
    assert (tracker.completed_records, tracker.last_completed_offset) == (10, 9)
    c = tracker.open(10, 10, 1)
    tracker.forget(c)
    assert tracker.in_flight_batches == 0


# --- definition errors ---------------------------------------------------------------------


def runner(**options: Any) -> StreamRunner:
    sink = options.pop("sink", MemorySink())
    return StreamRunner(
        PipelineSpec("defs", (MapStage(_fns.inc, name="inc"),)),
        sink,
        RunOptions(dead_letters=MemoryDeadLetterStore()).merged(**options),
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"batch_size": True}, "batch_size must be an int >= 1"),
        ({"linger": -1}, "linger must be >= 0"),
        ({"grace_period": -0.5}, "grace_period must be >= 0"),
        ({"stage_options": {"nope": StageOptions()}}, "unknown stage.*'nope'; stages: inc"),
        ({"sink": 42}, "sink must be a conveyor.Sink, a callable"),
        ({"capacity": 0}, "capacity must be an int >= 1"),
    ],
)
async def test_definition_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=message):
        await runner(**options).run(range(3))


async def test_a_source_that_is_not_iterable_is_refused() -> None:
    with pytest.raises(PipelineDefinitionError, match="source must be an iterable"):
        await runner().run(42)  # type: ignore[arg-type]


async def test_run_inside_a_running_loop_is_a_usage_error() -> None:
    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(_fns.inc, name="inc"))
    with pytest.raises(UsageError, match=r"await pipeline\.arun"):
        pipeline.run([1], MemorySink())


async def test_a_pipeline_without_stages_cannot_run() -> None:
    with pytest.raises(PipelineDefinitionError, match="has no stages"):
        await Pipeline[Any, Any]("empty").arun([1], MemorySink())


def test_flatten_stages_expands_chains() -> None:
    a, b, c = (MapStage(_fns.inc, name=n) for n in "abc")
    assert [s.name for s in flatten_stages([a >> b, c])] == ["a", "b", "c"]


def test_configure_sets_stage_options_used_by_the_run() -> None:
    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(_fns.inc, name="inc"))
    pipeline.configure("inc", executor="thread", concurrency=2)
    run = run_pipeline_on(pipeline, range(4))
    assert run.outputs == [1, 2, 3, 4]
    assert run.report.stage("inc").executor == "thread"


# --- sinks that are stages -----------------------------------------------------------------


class Collect(PipelineStage[list[int], None]):
    name = "collect"

    def __init__(self, reject: int | None = None) -> None:
        self.seen: list[int] = []
        self.reject = reject

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[None]:
        if self.reject in data:
            return StageResult.fail(ValueError(f"cannot store {self.reject}"))
        self.seen.extend(data)
        return StageResult.ok(None, records_in=len(data))


def test_a_stage_as_the_sink() -> None:
    sink = Collect(reject=3)
    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(_fns.ident, name="ident"))
    store = MemoryDeadLetterStore()
    report = pipeline.run(range(6), sink, dead_letters=store, handle_signals=False)
    assert sorted(sink.seen) == [0, 1, 2, 4, 5]
    assert [(d.record, d.stage, d.message) for d in store.list()] == [(3, "sink", "cannot store 3")]
    assert (report.records_out, report.sink.dead_lettered) == (5, 1)


async def test_an_async_sink() -> None:
    got: list[int] = []

    async def sink(batch: list[int]) -> None:
        await asyncio.sleep(0)
        got.extend(batch)

    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(_fns.inc, name="inc"))
    await pipeline.arun(range(3), sink, dead_letters="memory")
    assert got == [1, 2, 3]


# --- conveyor.testing ----------------------------------------------------------------------


def test_memory_sink_keeps_records_and_batches() -> None:
    sink = MemorySink()
    sink([1, 2])
    sink([3])
    assert sink.records == [1, 2, 3]
    assert sink.batches == [[1, 2], [3]]


def test_make_context() -> None:
    context = make_context(tenant="acme", region="eu")
    assert isinstance(context, PipelineContext)
    assert context.metadata == {"tenant": "acme", "region": "eu"}
    assert context.errors == []


def test_run_stage_on() -> None:
    run = run_stage_on(MapStage(_fns.tenfold_unless_multiple_of_5, name="ten"), [1, 5, 2])
    assert isinstance(run, TestRun)
    assert run.outputs == [10, 20]
    assert [(d.record, d.stage) for d in run.dead_letters] == [(5, "ten")]
    assert run.report.records_in == 3


def test_run_pipeline_on_with_options_and_a_context() -> None:
    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(_fns.square, name="sq"))
    context = make_context(job="nightly")
    run = run_pipeline_on(pipeline, range(5), batch_size=2, context=context)
    assert run.outputs == [0, 1, 4, 9, 16]
    assert run.report.run_id == context.pipeline_id
    assert run.report.stage("sq").batches == 3


async def test_arun_pipeline_on_keeps_its_letters_apart_per_run() -> None:
    store = MemoryDeadLetterStore()
    pipeline = Pipeline[Any, Any]("p").add_stage(
        MapStage(_fns.tenfold_unless_multiple_of_5, name="ten")
    )
    first = await arun_pipeline_on(pipeline, [5], dead_letters=store)
    second = await arun_pipeline_on(pipeline, [10, 1], dead_letters=store)
    assert [d.record for d in first.dead_letters] == [5]
    assert [d.record for d in second.dead_letters] == [10]
    assert second.outputs == [10]
    assert store.count() == 2


def test_run_stage_on_takes_stage_options_as_stage() -> None:
    from conveyor import MapStage, StageOptions
    from conveyor.testing import run_stage_on

    run = run_stage_on(MapStage(abs, name="abs"), [-1, 2], stage=StageOptions(concurrency=2))
    assert run.outputs == [1, 2]


def test_an_aggregate_of_an_empty_stream_is_emitted_as_in_collection_mode() -> None:
    from conveyor import AggregateStage, FilterStage, Pipeline
    from conveyor.testing import run_pipeline_on

    pipeline = (
        Pipeline[list[int], int]("empty")
        .add_stage(FilterStage(lambda x: x > 100, name="big"))
        .add_stage(AggregateStage(sum, name="total"))
    )
    assert run_pipeline_on(pipeline, range(5)).outputs == [0]
    assert pipeline.execute_sync(list(range(5))).data == 0


def test_a_stage_may_not_be_named_sink() -> None:
    from conveyor import MapStage, Pipeline, PipelineDefinitionError
    from conveyor.testing import run_pipeline_on

    pipeline = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs, name="sink"))
    with pytest.raises(PipelineDefinitionError, match="the name of the run's sink"):
        run_pipeline_on(pipeline, [1])


def test_capacity_is_checked_before_anything_runs() -> None:
    from conveyor import MapStage, Pipeline, PipelineDefinitionError
    from conveyor.testing import run_pipeline_on

    pipeline = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs, name="abs"))
    with pytest.raises(PipelineDefinitionError, match="capacity"):
        run_pipeline_on(pipeline, [1], capacity=0)
