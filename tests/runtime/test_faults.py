"""Faults: hostile exceptions and records, a deleted dead-letter file, hung records, a sink
that fails part-way, the sink's lifecycle on every path, KeyboardInterrupt in stage code."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    DeadLetterStoreError,
    MapStage,
    MemoryDeadLetterStore,
    Pipeline,
    PipelineContext,
    PipelineStage,
    RetryPolicy,
    RunInfo,
    RunStatus,
    Sink,
    SqliteDeadLetterStore,
    StageOptions,
    StageResult,
)
from conveyor.dlq import JsonlDeadLetterStore
from conveyor.testing import MemorySink, run_pipeline_on

ALL = "100%"  # a dead-letter budget that never fails these runs


# --- hostile exceptions and records --------------------------------------------------------


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken too")


class ReprRaises:
    def __init__(self, id: int) -> None:
        self.id = id

    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class Unpicklable:
    """A record that can neither be pickled (a lock) nor repr'd, but has fields."""

    def __init__(self, id: int) -> None:
        self.id = id
        self.name = f"user{id}"
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def hostile(record: Any) -> Any:
    key = record if isinstance(record, int) else record.id
    if key % 3 == 0:
        raise StrRaises()
    if key % 3 == 1:
        raise KeyError(ReprRaises(key))
    return record


def test_exceptions_that_cannot_be_rendered_dead_letter_their_record_only() -> None:
    pipeline = Pipeline[Any, Any]("hostile").add_stage(MapStage(hostile, name="hostile"))
    run = run_pipeline_on(pipeline, range(1000), max_dead_letters=ALL)
    assert run.outputs == [x for x in range(1000) if x % 3 == 2]
    by_type = {letter.error_type for letter in run.dead_letters}
    assert by_type == {"test_faults.StrRaises", "builtins.KeyError"}
    assert {letter.record for letter in run.dead_letters} == {x for x in range(1000) if x % 3 != 2}
    for letter in run.dead_letters:
        assert letter.message.startswith("<unprintable")
        assert letter.traceback  # formatted, with placeholders where rendering failed
    run.report.check_conservation()


def test_a_record_that_can_neither_be_pickled_nor_rendered_keeps_its_fields() -> None:
    pipeline = Pipeline[Any, Any]("hostile").add_stage(MapStage(hostile, name="hostile"))
    records = [Unpicklable(i) for i in range(6)]
    run = run_pipeline_on(pipeline, records, max_dead_letters=ALL)
    assert [r.id for r in run.outputs] == [2, 5]
    assert len(run.dead_letters) == 4
    for letter in run.dead_letters:
        assert not letter.record_exact
        assert letter.record["__type__"] == "test_faults.Unpicklable"
        assert letter.record["name"] == f"user{letter.record['id']}"


# --- the dead-letter store loses its file --------------------------------------------------


class DeleteAfter:
    """A map function that deletes ``path`` once ``after`` records went through."""

    def __init__(self, path: Path, after: int) -> None:
        self.path, self.after, self.seen = path, after, 0

    def __call__(self, x: int) -> int:
        self.seen += 1
        if self.seen == self.after:
            self.path.unlink()
        raise ValueError(f"{x} always fails")


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_a_dead_letter_file_deleted_mid_run_stops_the_run(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("dlq.db" if kind == "sqlite" else "dlq.jsonl")
    store = SqliteDeadLetterStore(path) if kind == "sqlite" else JsonlDeadLetterStore(path)
    fail = MapStage(DeleteAfter(path, 500), name="fail")
    pipeline = Pipeline[Any, Any]("lossy").add_stage(fail)
    with pytest.raises(DeadLetterStoreError, match="deleted or replaced"):
        pipeline.run(range(2000), MemorySink(), dead_letters=store, batch_size=200)
    store.close()


# --- hung records and the timeout bound ----------------------------------------------------


def hang_on_500(x: int) -> int:
    if x == 500:
        time.sleep(30)
    return x


class HangsOnBad(PipelineStage[list[int], list[int]]):
    """A whole-batch stage: a micro-batch holding 777 hangs."""

    name = "whole"

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        if 777 in data:
            await asyncio.sleep(30)
        return StageResult.ok(list(data))


@pytest.mark.timeout(60)
def test_a_hung_record_of_a_per_record_stage_reaches_the_dlq_within_about_its_timeout() -> None:
    timeout = 0.5
    options = StageOptions(executor="thread", workers=2, timeout=timeout)
    pipeline = Pipeline[Any, Any]("hung").add_stage(
        MapStage(hang_on_500, name="io"), options=options
    )
    t0 = time.monotonic()
    run = run_pipeline_on(pipeline, range(1000), batch_size=1000)
    elapsed = time.monotonic() - t0
    assert [(d.record, d.error_type) for d in run.dead_letters] == [
        (500, "conveyor.errors.StageTimeoutError")
    ]
    assert len(run.outputs) == 999
    # Before: timeout x batch_size x 2, about 17 minutes; now one timeout and the rest.
    assert elapsed < timeout + 10


@pytest.mark.timeout(60)
def test_a_hung_whole_batch_stage_is_bisected_within_its_bound() -> None:
    timeout = 0.25
    pipeline = Pipeline[Any, Any]("hung").add_stage(
        HangsOnBad(), options=StageOptions(timeout=timeout)
    )
    t0 = time.monotonic()
    run = run_pipeline_on(pipeline, range(1000), batch_size=1000)
    elapsed = time.monotonic() - t0
    assert [(d.record, d.error_type) for d in run.dead_letters] == [
        (777, "conveyor.errors.StageTimeoutError")
    ]
    assert run.outputs == [x for x in range(1000) if x != 777]
    bound = timeout * (1 + 10)  # 1 + ceil(log2(1000)) calls time out on the way down
    assert elapsed < bound + 5


def test_a_timeout_on_inline_sync_code_is_refused_with_the_fix() -> None:
    pipeline = Pipeline[Any, Any]("p").add_stage(
        MapStage(hang_on_500, name="io"), options=StageOptions(timeout=1.0)
    )
    with pytest.raises(TypeError, match="executor='thread'"):
        run_pipeline_on(pipeline, range(3))


# --- sinks ---------------------------------------------------------------------------------


class PartialSink(Sink):
    """Writes records one by one and fails on ``bad``: a non-idempotent, part-way failure."""

    def __init__(self, bad: set[int], *, idempotent: bool = False) -> None:
        self.bad = bad
        self.rows: list[int] = []
        self.events: list[str] = []
        type(self).idempotent = idempotent  # type: ignore[misc]

    def open(self, run: RunInfo) -> None:
        self.events.append(f"open:{run.mode}")

    def write(self, records: list[int]) -> None:
        for record in records:
            if record in self.bad:
                raise ValueError(f"cannot store {record}")
            self.rows.append(record)

    def close(self, status: RunStatus) -> None:
        self.events.append(f"close:{status.value}")


class IdempotentPartialSink(PartialSink):
    pass


def test_a_partly_failing_sink_never_sees_a_row_twice() -> None:
    sink = PartialSink({13, 57})
    store = MemoryDeadLetterStore()
    pipeline = Pipeline[Any, Any]("sink").add_stage(MapStage(abs, name="abs"))
    report = pipeline.run(range(100), sink, dead_letters=store, batch_size=10, max_dead_letters=ALL)
    assert len(sink.rows) == len(set(sink.rows))  # nothing written twice
    dead = sorted(letter.record for letter in store.list())
    # The whole failing micro-batches are dead letters (they are not split and re-sent).
    assert dead == [*range(10, 20), *range(50, 60)]
    written = set(range(100)) - set(dead)
    assert set(sink.rows) - written == {10, 11, 12, 50, 51, 52, 53, 54, 55, 56}
    assert (report.records_out, report.dead_lettered) == (80, 20)
    assert sink.events == ["open:run", "close:completed"]


def test_an_idempotent_sink_is_split_to_isolate_the_bad_rows() -> None:
    sink = IdempotentPartialSink({13, 57}, idempotent=True)
    store = MemoryDeadLetterStore()
    pipeline = Pipeline[Any, Any]("sink").add_stage(MapStage(abs, name="abs"))
    report = pipeline.run(range(100), sink, dead_letters=store, batch_size=10)
    assert sorted(letter.record for letter in store.list()) == [13, 57]
    assert set(sink.rows) == set(range(100)) - {13, 57}
    assert (report.records_out, report.dead_lettered) == (98, 2)


def test_a_failed_sink_write_is_retried_whole_with_back_off() -> None:
    attempts: list[list[int]] = []

    def flaky(records: list[int]) -> None:
        attempts.append(list(records))
        if len(attempts) == 1:
            raise ConnectionResetError("try again")

    pipeline = Pipeline[Any, Any]("sink").add_stage(MapStage(abs, name="abs"))
    pipeline.configure("sink", retry=RetryPolicy(attempts=2, backoff=0.0, jitter=0.0))
    report = pipeline.run(range(5), flaky, dead_letters="memory")
    assert attempts == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    assert (report.records_out, report.retried) == (5, 5)


class Boom(Exception):
    pass


def explode(**_: Any) -> None:
    raise Boom("hook failed")


@pytest.mark.parametrize("path", ["success", "failure", "interruption", "abort"])
async def test_the_sink_is_closed_exactly_once_on_every_path(path: str) -> None:
    sink = PartialSink(set())
    pipeline = Pipeline[Any, Any]("life").add_stage(MapStage(slow_inc, name="slow"))
    if path == "failure":
        pipeline.add_hook("after_stage", explode)
    from conveyor import RunOptions
    from conveyor.runtime import StreamRunner

    runner = StreamRunner(
        pipeline.spec(), sink, RunOptions(batch_size=1, capacity=1, dead_letters="memory")
    )

    async def stop_soon() -> None:
        await asyncio.sleep(0.05)
        if path == "interruption":
            runner.stop_intake()
        elif path == "abort":
            runner.abort()

    stopper = asyncio.create_task(stop_soon())
    if path == "failure":
        with pytest.raises(Exception, match="hook failed"):
            await runner.run(range(1000))
    else:
        report = await runner.run(range(1000 if path != "success" else 5))
        expected = {"success": "completed", "interruption": "interrupted", "abort": "aborted"}
        assert report.status.value == expected[path]
    stopper.cancel()
    closes = [event for event in sink.events if event.startswith("close:")]
    assert sink.events[0] == "open:run"
    assert len(closes) == 1
    assert (
        closes[0]
        == {
            "success": "close:completed",
            "failure": "close:aborted",
            "interruption": "close:interrupted",
            "abort": "close:aborted",
        }[path]
    )


async def slow_inc(x: int) -> int:
    await asyncio.sleep(0.002)
    return x + 1


# --- KeyboardInterrupt / SystemExit in stage code ------------------------------------------


def interrupt_on_40(x: int) -> int:
    if x == 40:
        raise KeyboardInterrupt
    return x


def exit_on_40(x: int) -> int:
    if x == 40:
        raise SystemExit(4)
    return x


@pytest.mark.parametrize(
    ("fn", "kind"), [(interrupt_on_40, KeyboardInterrupt), (exit_on_40, SystemExit)]
)
def test_keyboard_interrupt_in_stage_code_drains_then_propagates(fn: Any, kind: type) -> None:
    sink = MemorySink()
    pipeline = Pipeline[Any, Any]("ki").add_stage(MapStage(fn, name="stage"))
    with pytest.raises(kind) as caught:
        pipeline.run(range(1000), sink, dead_letters="memory", batch_size=10, capacity=1)
    report = caught.value.report  # type: ignore[attr-defined]
    assert report.status is RunStatus.INTERRUPTED
    # The micro-batch that raised stays in flight (below the low watermark); what had been
    # read before drained to the sink; the intake stopped.
    assert report.low_watermark == 40
    assert set(range(40)) <= set(sink.records)
    assert 40 not in sink.records
    assert report.stage("stage").unfinished == 10
    assert report.in_flight_records == 10
    assert len(sink.records) + 10 == report.records_in < 1000
    report.check_conservation()
    assert "restart" not in report.summary() or "offset 40" in report.summary()
    assert "offset 40" in str(caught.value.__notes__)


# --- found in review: barriers, branches, the sink's end --------------------------------------


class SumGood(PipelineStage[list[int], list[int]]):
    """A barrier that reports its negative records as failures and sums the rest."""

    name = "sum_good"
    barrier = True

    def __init__(self) -> None:
        self.calls: list[list[int]] = []

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        from conveyor import RecordFailure

        self.calls.append(list(data))
        good = [x for x in data if x >= 0]
        bad = [RecordFailure(x, ConnectionError("negative")) for x in data if x < 0]
        return StageResult.ok([sum(good)], records_in=len(data), failures=bad)


def test_a_barrier_reporting_failures_keeps_its_output_and_is_never_rerun_on_a_subset() -> None:
    stage = SumGood()
    pipeline = Pipeline[Any, Any]("agg").add_stage(
        stage, options=StageOptions(retry=RetryPolicy(attempts=3, backoff=0.0, jitter=0.0))
    )
    run = run_pipeline_on(pipeline, [1, 2, -3, 4], max_dead_letters=ALL)
    assert run.outputs == [7]  # as collection mode: the aggregate of the good records
    assert [d.record for d in run.dead_letters] == [-3]
    assert stage.calls == [[1, 2, -3, 4]]  # a transient failure is not retried on [-3] alone
    run.report.check_conservation()


def test_a_barrier_failing_on_an_empty_stream_fails_the_run() -> None:
    from conveyor import AggregateStage

    pipeline = Pipeline[Any, Any]("mean").add_stage(
        AggregateStage(lambda rows: sum(rows) / len(rows), name="mean")
    )
    with pytest.raises(ZeroDivisionError):
        run_pipeline_on(pipeline, [])


def fail_hook(**kwargs: Any) -> None:
    if kwargs["stage_name"].endswith("/m"):
        raise RuntimeError("hook bug")


@pytest.mark.timeout(30)
async def test_a_branch_whose_arm_fails_raises_instead_of_hanging() -> None:
    from conveyor import AggregateStage, BranchStage, HookError

    branch = BranchStage({"a": MapStage(abs, name="m"), "b": AggregateStage(len, name="n")})
    pipeline = Pipeline[Any, Any]("arms").add_stage(branch).add_hook("after_stage", fail_hook)
    with pytest.raises(HookError, match="hook bug"):
        await asyncio.wait_for(
            pipeline.arun(
                range(200), MemorySink(), dead_letters="memory", batch_size=2, capacity=1
            ),
            10,
        )


def interrupt_on_7(x: int) -> int:
    if x == 7:
        raise KeyboardInterrupt
    return x


def test_an_interrupted_arm_leaves_the_branch_unfinished() -> None:
    from conveyor import AggregateStage, BranchStage

    branch = BranchStage(
        {"a": MapStage(interrupt_on_7, name="m"), "b": AggregateStage(len, name="n")},
        name="both",
    )
    sink = MemorySink()
    pipeline = Pipeline[Any, Any]("arms").add_stage(branch)
    with pytest.raises(KeyboardInterrupt) as caught:
        pipeline.run(range(10), sink, dead_letters="memory", batch_size=4)
    report = caught.value.report  # type: ignore[attr-defined]
    assert sink.records == []  # no partial {arm: value} record
    assert report.low_watermark == 0
    assert report.stage("both").unfinished == 10
    report.check_conservation()


def test_the_budget_counts_a_record_failing_in_two_arms_once() -> None:
    from conveyor import BranchStage

    def bad_if_odd(x: int) -> int:
        if x % 2:
            raise ValueError("odd")
        return x

    branch = BranchStage(
        {"a": MapStage(bad_if_odd, name="a"), "b": MapStage(bad_if_odd, name="b")}, name="two"
    )
    pipeline = Pipeline[Any, Any]("arms").add_stage(branch)
    report = pipeline.run(range(10), MemorySink(), dead_letters="memory", max_dead_letters="60%")
    assert report.dead_lettered == 10  # five letters in each arm
    assert report.dead_for_budget == 5  # but five records
    assert report.status is RunStatus.COMPLETED


def test_a_sink_timeout_needs_an_idempotent_sink() -> None:
    pipeline = Pipeline[Any, Any]("t").add_stage(MapStage(abs, name="abs"))
    pipeline.configure("sink", timeout=1.0, executor="thread")
    with pytest.raises(TypeError, match="not idempotent"):
        pipeline.run([1], lambda batch: None, dead_letters="memory")


class SlowSink(Sink):
    def __init__(self) -> None:
        self.log: list[str] = []

    def write(self, records: list[int]) -> None:
        self.log.append("write start")
        time.sleep(0.3)
        self.log.append("write end")

    def close(self, status: RunStatus) -> None:
        self.log.append(f"close {status.value}")


async def test_the_sink_is_closed_after_a_write_still_running_in_its_thread() -> None:
    from conveyor import RunOptions
    from conveyor.runtime import StreamRunner

    sink = SlowSink()
    pipeline = Pipeline[Any, Any]("slow").add_stage(MapStage(abs, name="abs"))
    pipeline.configure("sink", executor="thread")
    runner = StreamRunner(pipeline.spec(), sink, RunOptions(dead_letters="memory"))
    asyncio.get_running_loop().call_later(0.1, runner.abort)
    report = await runner.run([1, 2, 3])
    assert report.status is RunStatus.ABORTED
    assert sink.log == ["write start", "write end", "close aborted"]
