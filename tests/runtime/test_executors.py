"""Executors (inline, thread, process), per-record timeouts, retries and failure isolation."""

from __future__ import annotations

import asyncio
import gc
import pickle
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import _fns
import pytest

from conveyor import (
    AggregateStage,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineDefinitionError,
    PipelineStage,
    RecordOutcome,
    RecordStage,
    RetryPolicy,
    StageOptions,
    StageResult,
)
from conveyor.core import RecordFailure
from conveyor.runtime import executors
from conveyor.testing import run_pipeline_on

FAST_RETRY = RetryPolicy(attempts=3, backoff=0.001, jitter=0.0)

# --- process executor ----------------------------------------------------------------------


def test_process_executor_runs_a_cpu_bound_stage() -> None:
    inputs = [2000, 3000, 10, 2500, 1]
    run = _fns.run_one(
        MapStage(_fns.count_primes, name="primes"),
        inputs,
        batch_size=2,
        options=StageOptions(executor="process", concurrency=2),
    )
    assert run.outputs == [_fns.count_primes(n) for n in inputs]
    assert run.report.stage("primes").executor == "process"


def test_dead_letter_from_a_worker_process_keeps_its_traceback() -> None:
    run = _fns.run_one(
        MapStage(_fns.primes_or_fail, name="primes"),
        [10, -1, 20, 3],
        batch_size=2,
        options=StageOptions(executor="process", workers=1),
    )
    assert run.outputs == [4, 8, 1]
    [letter] = run.dead_letters
    assert letter.record == -1
    assert letter.error_type == "_fns.BadRecordError"
    assert letter.message == "negative input -1"
    # Formatted in the worker, where the exception was live: the real frames are there.
    assert "in primes_or_fail" in letter.traceback
    assert "_fns.py" in letter.traceback
    assert letter.traceback.rstrip().endswith("_fns.BadRecordError: negative input -1")


def test_unpicklable_error_from_a_worker_keeps_its_qualified_type() -> None:
    run = _fns.run_one(
        MapStage(_fns.raise_unpicklable, name="cursed"),
        range(5),
        StageOptions(executor="process", workers=1),
    )
    assert run.outputs == [0, 1, 2, 4]
    [letter] = run.dead_letters
    assert letter.record == 3
    assert letter.error_type == "_fns.UnpicklableError"
    assert "three is cursed" in letter.message
    assert "in raise_unpicklable" in letter.traceback


def test_whole_batch_failure_in_a_worker_is_isolated() -> None:
    run = _fns.run_one(
        _fns.RaiseOnBad({2}),
        range(6),
        batch_size=6,
        options=StageOptions(executor="process", workers=1),
    )
    assert run.outputs == [0, 1, 3, 4, 5]
    assert [(d.record, d.error_type) for d in run.dead_letters] == [(2, "_fns.BadRecordError")]


def test_unpicklable_stage_on_the_process_executor_is_refused_before_running() -> None:
    started = []

    def source() -> Any:
        started.append(True)
        yield 1

    stage = MapStage(lambda x: x, name="lam")
    with pytest.raises(PipelineDefinitionError, match=r"'lam'.*cannot be pickled") as caught:
        _fns.run_one(stage, source(), StageOptions(executor="process"))
    assert "module level" in str(caught.value)
    assert started == []


# --- thread executor -----------------------------------------------------------------------


def test_thread_executor_overlaps_blocking_calls() -> None:
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    # Four calls must be inside the stage at once for the barrier to open; if the executor
    # ran fewer at a time the barrier would break and the records would be dead-lettered.
    barrier = threading.Barrier(4, timeout=10)

    def blocking(x: int) -> int:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        barrier.wait()
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return x

    run = _fns.run_one(
        MapStage(blocking, name="io"),
        range(8),
        batch_size=1,
        options=StageOptions(executor="thread", concurrency=4),
    )
    assert run.dead_letters == []
    assert run.outputs == list(range(8))
    assert state["peak"] == 4
    gc.collect()  # the workers' event loops were closed: nothing left to warn about


def test_thread_executor_runs_async_stages_on_worker_loops() -> None:
    threads: set[str] = set()

    async def where(x: int) -> int:
        await asyncio.sleep(0)
        threads.add(threading.current_thread().name)
        return x

    run = _fns.run_one(
        MapStage(where, name="where"),
        range(6),
        batch_size=2,
        options=StageOptions(executor="thread", concurrency=2),
    )
    assert run.outputs == list(range(6))
    assert threads
    assert all(name.startswith("conveyor-where") for name in threads)
    gc.collect()


# --- timeouts ------------------------------------------------------------------------------


def test_a_hung_record_times_out_into_the_dead_letter_queue() -> None:
    async def maybe_hang(x: int) -> int:
        if x == 5:
            await asyncio.sleep(3600)
        return x

    run = _fns.run_one(
        MapStage(maybe_hang, name="hang"),
        range(8),
        batch_size=4,
        options=StageOptions(timeout=0.05),
    )
    assert run.outputs == [0, 1, 2, 3, 4, 6, 7]
    [letter] = run.dead_letters
    assert (letter.record, letter.stage, letter.attempts) == (5, "hang", 1)
    assert letter.error_type == "conveyor.errors.StageTimeoutError"
    assert "timeout of 0.05s per record" in letter.message


# --- retries -------------------------------------------------------------------------------


class Flaky:
    """Raises ``error`` for the records in ``failures`` the first ``times`` calls each."""

    def __init__(self, failures: set[int], times: int, error: type[Exception]) -> None:
        self.failures = failures
        self.times = times
        self.error = error
        self.calls: Counter[int] = Counter()

    def __call__(self, x: int) -> int:
        self.calls[x] += 1
        if x in self.failures and self.calls[x] <= self.times:
            raise self.error(f"{x} failed on call {self.calls[x]}")
        return x


def test_transient_errors_succeed_after_retries() -> None:
    flaky = Flaky({1, 3}, times=2, error=ConnectionError)
    run = _fns.run_one(MapStage(flaky, name="flaky"), range(5), StageOptions(retry=FAST_RETRY))
    assert sorted(run.outputs) == list(range(5))
    assert run.dead_letters == []
    assert run.report.retried == 4  # two retries each for 1 and 3
    assert run.report.stage("flaky").retried == 4
    assert flaky.calls[1] == flaky.calls[3] == 3


def test_non_transient_errors_are_not_retried() -> None:
    flaky = Flaky({2}, times=99, error=ValueError)
    run = _fns.run_one(MapStage(flaky, name="flaky"), range(4), StageOptions(retry=FAST_RETRY))
    [letter] = run.dead_letters
    assert (letter.record, letter.attempts, letter.error_type) == (2, 1, "builtins.ValueError")
    assert flaky.calls[2] == 1
    assert run.report.retried == 0


def test_exhausted_retries_make_a_letter_with_every_attempt_counted() -> None:
    flaky = Flaky({0}, times=99, error=ConnectionError)
    run = _fns.run_one(MapStage(flaky, name="flaky"), range(3), StageOptions(retry=FAST_RETRY))
    [letter] = run.dead_letters
    assert letter.attempts == FAST_RETRY.attempts == 3
    assert letter.error_type == "builtins.ConnectionError"
    assert "failed on call 3" in letter.message
    assert flaky.calls[0] == 3
    assert run.report.retried == 2
    assert run.outputs == [1, 2]


def test_retry_on_names_which_errors_are_transient() -> None:
    flaky = Flaky({0}, times=1, error=KeyError)
    policy = RetryPolicy(attempts=2, backoff=0.0, retry_on=(KeyError,))
    run = _fns.run_one(MapStage(flaky, name="flaky"), range(2), StageOptions(retry=policy))
    assert sorted(run.outputs) == [0, 1]
    assert run.report.retried == 1


class FlakyWholeBatch(PipelineStage[list[int], list[int]]):
    """Fails its first call as a whole with a transient error."""

    name = "flaky_batch"

    def __init__(self) -> None:
        self.calls = 0

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("database went away")
        return StageResult.ok(list(data))


def test_a_whole_batch_transient_failure_is_retried_as_a_whole() -> None:
    stage = FlakyWholeBatch()
    run = _fns.run_one(stage, range(4), batch_size=4, options=StageOptions(retry=FAST_RETRY))
    assert run.outputs == [0, 1, 2, 3]
    assert run.report.retried == 4
    assert stage.calls == 2


class FlakyBarrier(PipelineStage[list[int], int]):
    """A barrier failing transiently ``failures`` times, then summing."""

    name = "flaky_sum"
    barrier = True

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[int]:
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("warehouse offline")
        return StageResult.ok(sum(data), records_in=len(data))


def test_a_barrier_retries_transient_failures() -> None:
    stage = FlakyBarrier(failures=1)
    run = _fns.run_one(stage, range(5), batch_size=2, options=StageOptions(retry=FAST_RETRY))
    assert run.outputs == [10]
    assert run.report.stage("flaky_sum").retried == 5
    assert run.report.stage("flaky_sum").kind == "barrier"


def test_a_failing_barrier_sends_everything_it_consumed_to_the_dlq() -> None:
    stage = FlakyBarrier(failures=99)
    run = _fns.run_one(stage, range(5), batch_size=2, options=StageOptions(retry=FAST_RETRY))
    assert run.outputs == []
    assert sorted(d.record for d in run.dead_letters) == list(range(5))
    assert {(d.stage, d.attempts) for d in run.dead_letters} == {("flaky_sum", 3)}
    assert run.report.in_flight_records == 0


def test_a_failing_aggregate_is_dead_lettered_as_a_whole() -> None:
    pipeline = Pipeline[Any, Any]("agg").add_stage(AggregateStage(_fns.count_primes, name="bad"))
    run = run_pipeline_on(pipeline, range(3))
    assert run.outputs == []
    assert [d.error_type for d in run.dead_letters] == ["builtins.TypeError"] * 3


# --- stages that fail in other ways --------------------------------------------------------


class BrokenRecordStage(RecordStage[int, int]):
    """A record stage whose machinery itself raises when it sees a 7."""

    name = "broken_records"

    async def process_records(
        self, items: Sequence[int], context: PipelineContext, *, stop_on_error: bool = False
    ) -> RecordOutcome[int]:
        if 7 in items:
            raise RuntimeError("bug in process_records")
        outcome: RecordOutcome[int] = RecordOutcome()
        for item in items:
            if item == 3:
                outcome.failures.append(RecordFailure(item, ValueError("three")))
            else:
                outcome.outputs.append(item)
        return outcome


def test_a_record_stage_that_raises_is_isolated_by_splitting() -> None:
    run = _fns.run_one(BrokenRecordStage(), range(10), batch_size=5)
    assert run.outputs == [0, 1, 2, 4, 5, 6, 8, 9]
    letters = {d.record: d.error_type for d in run.dead_letters}
    assert letters == {3: "builtins.ValueError", 7: "builtins.RuntimeError"}


class NotAResult(PipelineStage[list[int], list[int]]):
    name = "not_a_result"

    async def process(self, data: list[int], context: PipelineContext) -> Any:
        return list(data)


def test_a_stage_returning_something_else_dead_letters_its_records() -> None:
    run = _fns.run_one(NotAResult(), range(3))
    assert run.outputs == []
    assert {d.error_type for d in run.dead_letters} == {"builtins.TypeError"}
    assert "return StageResult.ok(data)" in run.dead_letters[0].message


class Tupled(PipelineStage[list[int], tuple[int, ...]]):
    name = "tupled"

    async def process(
        self, data: list[int], context: PipelineContext
    ) -> StageResult[tuple[int, ...]]:
        return StageResult.ok(tuple(data))


def test_a_tuple_output_is_a_sequence_of_records() -> None:
    run = _fns.run_one(Tupled(), range(4), batch_size=3)
    assert run.outputs == [0, 1, 2, 3]


class RetryThenBreak(RecordStage[int, int]):
    """Reports record 2 as transiently failed; the retry of it then fails as a whole."""

    name = "retry_then_break"

    def __init__(self) -> None:
        self.calls = 0

    async def process_records(
        self, items: Sequence[int], context: PipelineContext, *, stop_on_error: bool = False
    ) -> RecordOutcome[int]:
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("the retry broke the whole call")
        outcome: RecordOutcome[int] = RecordOutcome()
        for item in items:
            if item == 2:
                outcome.failures.append(RecordFailure(item, ConnectionError("blip")))
            else:
                outcome.outputs.append(item)
        return outcome


def test_a_retry_that_fails_as_a_whole_is_isolated_too() -> None:
    run = _fns.run_one(RetryThenBreak(), range(4), StageOptions(retry=FAST_RETRY))
    assert run.outputs == [0, 1, 3]
    [letter] = run.dead_letters
    assert (letter.record, letter.error_type, letter.attempts) == (2, "builtins.RuntimeError", 2)
    assert run.report.retried == 1


def test_a_thread_stuck_past_its_timeout_does_not_hold_up_the_run() -> None:
    release, done = threading.Event(), threading.Event()

    def stuck_on_one(x: int) -> int:
        if x == 1:
            release.wait(10)
            done.set()
        return x

    # Two workers for one micro-batch at a time: the stuck worker leaves one free.
    run = _fns.run_one(
        MapStage(stuck_on_one, name="io"),
        range(4),
        StageOptions(executor="thread", workers=2, timeout=0.05),
        batch_size=1,
    )
    assert run.outputs == [0, 2, 3]
    assert [(d.record, d.error_type) for d in run.dead_letters] == [
        (1, "conveyor.errors.StageTimeoutError")
    ]
    assert not done.is_set()  # the run ended while the worker was still stuck
    release.set()
    assert done.wait(5)
    time.sleep(0.05)  # the worker then closes its own event loop
    gc.collect()


def test_what_a_worker_process_sends_back_can_be_pickled() -> None:
    # The function a process worker runs, called here where coverage can see it.
    import copyreg

    context = PipelineContext()
    # Dask (imported by the stream-dask tests of this session) installs tblib, which makes
    # every exception class known then picklable: undo it for this one while it runs.
    reducer = copyreg.dispatch_table.pop(_fns.UnpicklableError, None)
    try:
        outcome = executors._apply_in_process(
            MapStage(_fns.raise_unpicklable, name="cursed"), [2, 3], context
        )
        whole = executors._apply_in_process(_fns.RaiseOnBad({1}), [1], context)
    finally:
        executors._thread_state.loop.close()  # the loop it made on this thread
        if reducer is not None:
            copyreg.dispatch_table[_fns.UnpicklableError] = reducer
    assert outcome.outputs == [2]
    [failure] = outcome.failures
    assert isinstance(failure.error, executors.RemoteError)
    assert failure.error.type_name == "_fns.UnpicklableError"
    assert pickle.loads(pickle.dumps(failure.error)).type_name == "_fns.UnpicklableError"
    assert "in raise_unpicklable" in failure.traceback
    assert isinstance(whole.error, _fns.BadRecordError)  # picklable: kept as it is
    assert "bad ids [1]" in whole.error_traceback


@pytest.mark.parametrize("executor", ["thread", "process"])
@pytest.mark.timeout(30)
def test_a_single_stuck_worker_does_not_starve_the_records_behind_it(executor: str) -> None:
    # One worker only: without fresh workers after the timeout every later batch would queue
    # behind the hung call and time out too. The hang (60 s) outlives this test's limit, so
    # the run also must not wait for it at its end.
    run = _fns.run_one(
        MapStage(_fns.hang_on_one, name="io"),
        range(6),
        StageOptions(executor=executor, workers=1, timeout=0.3),
        batch_size=1,
    )
    assert run.outputs == [0, 2, 3, 4, 5]
    assert [(d.record, d.error_type) for d in run.dead_letters] == [
        (1, "conveyor.errors.StageTimeoutError")
    ]
