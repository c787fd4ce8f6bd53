"""The streaming runner: stages as concurrent tasks joined by bounded channels.

The source is cut into micro-batches (at most ``batch_size`` records, or what arrived within
``linger`` seconds). Each stage is a task that takes micro-batches from its input channel,
processes them on its executor (up to ``concurrency`` at once), and sends the results on. A
full channel makes its sender wait, so a slow stage holds back everything upstream and
memory stays bounded. A record that fails for good becomes a dead letter and the flow goes
on; the counters prove at the end that every record left through the sink, a filter or the
dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from conveyor.contracts import Contract, ContractCheck, contract_for
from conveyor.core._callables import call_maybe_async
from conveyor.core.context import PipelineContext
from conveyor.core.events import Event, EventBus, EventType
from conveyor.core.options import StageOptions
from conveyor.core.pipeline import Hook, call_hooks
from conveyor.core.result import StageResult
from conveyor.core.stage import ChainedStage, PipelineStage, run_stage
from conveyor.core.stages import BatchStage, BranchStage, FlattenStage
from conveyor.dlq import DeadLetter, DeadLetterStore, open_dead_letter_store
from conveyor.errors import (
    ConservationError,
    PipelineDefinitionError,
    StageTimeoutError,
)
from conveyor.runtime.channel import Channel
from conveyor.runtime.executors import (
    ChunkOutcome,
    RemoteError,
    StageExecutor,
    format_traceback,
    make_executor,
)
from conveyor.runtime.limiter import RateLimiter
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.report import RunReport, RunStatus, StageKind, StageStats

__all__ = ["DEFAULT_DEAD_LETTERS", "Sink", "StreamRunner", "flatten_stages"]

logger = logging.getLogger("conveyor.runtime")

DEFAULT_DEAD_LETTERS = Path(".conveyor") / "dead_letters.db"
"""Where dead letters go when a run names no store: a SQLite file under the working dir."""

Sink = Callable[[list[Any]], Any] | PipelineStage[list[Any], Any]
"""A sink: a sync or async callable receiving micro-batches (lists), or a stage."""

ContractMode = Literal["all", "sample", "off"]


@dataclass(slots=True)
class _Chunk:
    records: list[Any]
    lineage: tuple[int, ...]


class _SinkStage(PipelineStage[list[Any], list[Any]]):
    """Adapts a sink (callable or stage) to the stage protocol; outputs nothing."""

    def __init__(self, sink: Sink) -> None:
        if not callable(sink) and not isinstance(sink, PipelineStage):
            raise PipelineDefinitionError(
                f"sink must be a callable taking a list of records, or a PipelineStage; "
                f"got {type(sink).__name__}"
            )
        self.sink = sink
        self.name = "sink"

    async def process(self, data: list[Any], context: PipelineContext) -> StageResult[list[Any]]:
        if isinstance(self.sink, PipelineStage):
            result = await run_stage(self.sink, data, context)
            if not result.success:
                assert result.error is not None
                raise result.error
        else:
            await call_maybe_async(self.sink, data)
        return StageResult.ok([], records_in=len(data))


def flatten_stages(stages: Iterable[PipelineStage[Any, Any]]) -> list[PipelineStage[Any, Any]]:
    """Stages with every :class:`ChainedStage` replaced by its leaves."""
    out: list[PipelineStage[Any, Any]] = []
    for stage in stages:
        out.extend(stage.stages if isinstance(stage, ChainedStage) else (stage,))
    return out


def _kind(stage: PipelineStage[Any, Any]) -> StageKind:
    if isinstance(stage, _SinkStage):
        return StageKind.SINK
    if isinstance(stage, BatchStage):
        return StageKind.BATCH
    if stage.barrier:
        return StageKind.BARRIER
    if isinstance(stage, FlattenStage) or getattr(stage, "expands", False):
        return StageKind.EXPAND
    return StageKind.RECORD


class _StageRuntime:
    """One stage's options, executor, counters and contracts during a run."""

    def __init__(
        self,
        stage: PipelineStage[Any, Any],
        options: StageOptions,
        check: ContractCheck,
    ) -> None:
        self.stage = stage
        self.name = stage.name
        self.options = options
        self.retry = options.retry
        self.kind = _kind(stage)
        self.stats = StageStats(stage.name, self.kind, options.executor.value)
        self.barrier_output: Any = None
        self.executor: StageExecutor = make_executor(options, stage.name)
        self.executor.check(stage)
        self.limiter = RateLimiter(options.rate_limit) if options.rate_limit else None
        self.check = check
        self.input_contract = _contract(options.input_contract, stage, "input_contract")
        self.output_contract = _contract(options.output_contract, stage, "output_contract")


def _contract(spec: Any, stage: PipelineStage[Any, Any], attr: str) -> Contract | None:
    spec = spec if spec is not None else getattr(stage, attr, None)
    if spec is None:
        return None
    try:
        return contract_for(spec)
    except (TypeError, ValueError, OSError) as exc:
        raise PipelineDefinitionError(
            f"stage {stage.name!r}: its {attr} {spec!r} is not usable: {exc}"
        ) from exc


class StreamRunner:
    """Runs stages concurrently over bounded channels; see the module docstring.

    Use it through :meth:`Pipeline.run`, :meth:`Pipeline.arun` or :meth:`Pipeline.stream`.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[PipelineStage[Any, Any]],
        sink: Sink,
        *,
        batch_size: int = 1000,
        linger: float = 0.05,
        capacity: int = 2,
        stage_options: Mapping[str, StageOptions] | None = None,
        dead_letters: DeadLetterStore | str | Path | None = None,
        contracts: ContractMode = "all",
        sample_rate: float = 0.01,
        grace_period: float = 30.0,
        handle_signals: bool = False,
        event_bus: EventBus | None = None,
        hooks: Mapping[str, Sequence[Hook]] | None = None,
        context: PipelineContext | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise PipelineDefinitionError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if linger < 0:
            raise PipelineDefinitionError(f"linger must be >= 0 seconds, got {linger!r}")
        if grace_period < 0:
            raise PipelineDefinitionError(f"grace_period must be >= 0, got {grace_period!r}")
        leaves = flatten_stages(stages)
        options = dict(stage_options or {})
        names = [s.name for s in leaves]
        unknown = sorted(set(options) - set(names) - {"sink"})
        if unknown:
            raise PipelineDefinitionError(
                f"options given for unknown stage(s) {', '.join(map(repr, unknown))}; "
                f"stages: {', '.join(names)}"
            )
        self.name = name
        self.batch_size = batch_size
        self.linger = linger
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise PipelineDefinitionError(
                f"capacity must be an int >= 1 micro-batches (channels are always bounded), "
                f"got {capacity!r}"
            )
        if "sink" in names:
            raise PipelineDefinitionError(
                f"pipeline {name!r} has a stage named 'sink', a name reserved for the run's "
                "sink; rename the stage"
            )
        self.capacity = capacity
        self.grace_period = grace_period
        self.handle_signals = handle_signals
        self.event_bus = event_bus
        self.hooks = {key: tuple(value) for key, value in (hooks or {}).items() if value}
        self.context = context or PipelineContext(pipeline_name=name)
        self.run_id = self.context.pipeline_id
        check = ContractCheck(contracts, sample_rate=sample_rate)
        sink_stage = _SinkStage(sink)
        self._runtimes = [
            _StageRuntime(stage, options.get(stage.name, StageOptions()), check)
            for stage in [*leaves, sink_stage]
        ]
        self._store = (
            dead_letters
            if isinstance(dead_letters, DeadLetterStore)
            else open_dead_letter_store(dead_letters or DEFAULT_DEAD_LETTERS)
        )
        self._owns_store = not isinstance(dead_letters, DeadLetterStore)
        self._tracker = OffsetTracker()
        self._channels: list[Channel[_Chunk]] = []
        self._records_in = 0
        self._status = RunStatus.COMPLETED
        self._reader: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._signals = 0
        self._grace_timer: asyncio.TimerHandle | None = None
        self.branch_reports: list[RunReport] = []

    @property
    def dead_letter_store(self) -> DeadLetterStore:
        """Where this run's dead letters go."""
        return self._store

    def progress(self) -> tuple[list[StageStats], list[Any]]:
        """Live counters of every stage and channel statistics (for progress views)."""
        return [rt.stats for rt in self._runtimes], [ch.statistics() for ch in self._channels]

    # -- the run ---------------------------------------------------------------------------

    async def run(self, source: Iterable[Any] | AsyncIterable[Any]) -> RunReport:
        """Stream ``source`` through the stages into the sink and return the report."""
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        await self._publish(
            EventType.ITEM_CREATED,
            pipeline_id=self.run_id,
            pipeline_name=self.name,
            stage_count=len(self._runtimes) - 1,
            mode="streaming",
        )
        channels = [
            Channel[_Chunk](self.capacity, name=f"{a} -> {b.name}")
            for a, b in zip(
                ["source", *(rt.name for rt in self._runtimes)], self._runtimes, strict=False
            )
        ]
        self._channels = channels
        loop = asyncio.get_running_loop()
        installed = self._install_signals(loop)
        try:
            self._reader = asyncio.create_task(self._read(source, channels[0]))
            self._tasks = [self._reader]
            for i, rt in enumerate(self._runtimes):
                out = channels[i + 1] if i + 1 < len(channels) else None
                self._tasks.append(asyncio.create_task(self._stage_task(rt, channels[i], out)))
            await self._supervise()
        except BaseException as exc:
            await self._publish(
                EventType.ITEM_UPDATED,
                pipeline_id=self.run_id,
                pipeline_name=self.name,
                status="failed",
                duration_ms=(time.perf_counter() - t0) * 1000.0,
                completed_stages=[],
                error=repr(exc),
            )
            raise
        finally:
            self._remove_signals(loop, installed)
            for rt in self._runtimes:
                rt.executor.close()
            if self._owns_store:
                self._store.close()
        report = self._report(started, time.perf_counter() - t0)
        for rt in self._runtimes:
            await self._publish(
                EventType.STAGE_COMPLETED, pipeline_id=self.run_id, **rt.stats.as_dict()
            )
        await self._publish(
            EventType.ITEM_UPDATED,
            pipeline_id=self.run_id,
            pipeline_name=self.name,
            status=report.status.value,
            duration_ms=report.duration_seconds * 1000.0,
            completed_stages=[s.name for s in report.stages],
            records_in=report.records_in,
            records_out=report.records_out,
            dead_lettered=report.dead_lettered,
        )
        report.check_conservation()
        await self._call_hooks(
            "on_complete", None, data=None, context=self.context, result=report, report=report
        )
        return report

    async def _supervise(self) -> None:
        """Wait for every task; the first unexpected error cancels the rest and is raised."""
        pending = set(self._tasks)
        error: BaseException | None = None
        while pending:
            try:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            except asyncio.CancelledError:  # the run itself is cancelled: stop every task
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise
            for task in done:
                if task.cancelled():
                    continue
                exc = task.exception()
                if exc is not None and error is None:
                    error = exc
                    for other in pending:
                        other.cancel()
        if error is not None:
            raise error

    def _report(self, started: datetime, seconds: float) -> RunReport:
        return RunReport(
            run_id=self.run_id,
            pipeline_name=self.name,
            started_at=started,
            status=self._status,
            duration_seconds=seconds,
            records_in=self._records_in,
            stages=[rt.stats for rt in self._runtimes],
            channels=[ch.statistics() for ch in self._channels],
            low_watermark=self._tracker.low_watermark,
            in_flight_records=self._tracker.in_flight_records,
            dead_letter_store=self._store.description,
        )

    # -- source ----------------------------------------------------------------------------

    async def _read(self, source: Iterable[Any] | AsyncIterable[Any], out: Channel[_Chunk]) -> None:
        try:
            if isinstance(source, AsyncIterable):
                await self._read_async(source, out)
            elif isinstance(source, Iterable):
                await self._read_sync(iter(source), out)
            else:
                raise PipelineDefinitionError(
                    f"source must be an iterable or async iterable of records, "
                    f"got {type(source).__name__}"
                )
        finally:
            out.close()

    async def _emit_source(self, records: list[Any], out: Channel[_Chunk]) -> None:
        first = self._records_in
        self._records_in += len(records)
        batch_id = self._tracker.open(first, self._records_in - 1, len(records))
        try:
            await out.send(_Chunk(records, (batch_id,)))
        except asyncio.CancelledError:  # intake stopped while waiting: these never entered
            self._records_in = first
            self._tracker.forget(batch_id)
            raise

    async def _read_sync(self, iterator: Any, out: Channel[_Chunk]) -> None:
        size = self.batch_size
        while True:
            records = list(itertools.islice(iterator, size))
            if not records:
                return
            await self._emit_source(records, out)

    async def _read_async(self, source: AsyncIterable[Any], out: Channel[_Chunk]) -> None:
        queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=self.batch_size)

        async def pump() -> None:
            try:
                async for item in source:
                    await queue.put((True, item))
            except Exception:
                await queue.put((False, None))  # wake the reader; the error surfaces below
                raise
            await queue.put((False, None))

        pump_task = asyncio.create_task(pump())
        try:
            more = True
            while more:
                more, item = await queue.get()
                if not more:
                    break
                records = [item]
                deadline = time.monotonic() + self.linger
                while len(records) < self.batch_size:
                    remaining = deadline - time.monotonic()
                    if queue.empty() and remaining <= 0:
                        break
                    # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                    # cancellation (stop_intake, an abort) when the get completes at once.
                    try:
                        async with asyncio.timeout(max(remaining, 0)):
                            more, item = await queue.get()
                    except TimeoutError:
                        break
                    if not more:
                        break
                    records.append(item)
                await self._emit_source(records, out)
            await pump_task  # surfaces a source error
        finally:
            pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump_task

    # -- stages ----------------------------------------------------------------------------

    async def _stage_task(
        self, rt: _StageRuntime, inp: Channel[_Chunk], out: Channel[_Chunk] | None
    ) -> None:
        try:
            if rt.kind is StageKind.BATCH:
                assert out is not None
                assert isinstance(rt.stage, BatchStage)
                await self._batch_loop(rt, rt.stage.size, inp, out)
            elif isinstance(rt.stage, BranchStage):
                assert out is not None
                await self._branch_loop(rt, rt.stage, inp, out)
            elif rt.kind is StageKind.BARRIER:
                assert out is not None
                await self._barrier_loop(rt, inp, out)
            else:
                await self._slice_loop(rt, inp, out)
        finally:
            if out is not None:
                out.close()

    async def _slice_loop(
        self, rt: _StageRuntime, inp: Channel[_Chunk], out: Channel[_Chunk] | None
    ) -> None:
        concurrency = rt.options.concurrency
        if concurrency == 1:
            async for chunk in inp:
                await self._forward(await self._handle(rt, chunk), out)
            return
        in_flight: deque[asyncio.Task[_Chunk | None]] = deque()
        running: set[asyncio.Task[_Chunk | None]] = set()
        try:
            if rt.options.ordered:
                async for chunk in inp:
                    in_flight.append(asyncio.create_task(self._handle(rt, chunk)))
                    if len(in_flight) >= concurrency:
                        await self._forward(await in_flight.popleft(), out)
                while in_flight:
                    await self._forward(await in_flight.popleft(), out)
            else:
                async for chunk in inp:
                    running.add(asyncio.create_task(self._handle(rt, chunk)))
                    if len(running) >= concurrency:
                        done, running = await asyncio.wait(
                            running, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            await self._forward(task.result(), out)
                in_flight.extend(running)
                while in_flight:
                    await self._forward(await in_flight.popleft(), out)
        finally:
            for task in (*in_flight, *running):
                task.cancel()

    async def _forward(self, chunk: _Chunk | None, out: Channel[_Chunk] | None) -> None:
        if chunk is not None and out is not None:
            await out.send(chunk)

    async def _handle(self, rt: _StageRuntime, chunk: _Chunk) -> _Chunk | None:
        """Process one micro-batch of a record/expand/sink stage; return what goes on."""
        stats = rt.stats
        records = chunk.records
        stats.received += len(records)
        stats.batches += 1
        t0 = time.perf_counter()
        if rt.kind is not StageKind.SINK:
            await self._call_hooks(
                "before_stage", rt.name, stage_name=rt.name, data=records, context=self.context
            )
        if rt.limiter is not None:
            await rt.limiter.acquire(len(records))
        dead: list[DeadLetter] = []
        if rt.input_contract is not None:
            records = self._check_contract(rt, rt.input_contract, records, "input", dead)
        outputs, filtered = await self._process(rt, records, dead, 1)
        if rt.kind is StageKind.RECORD and len(outputs) + filtered + len(dead) != len(
            chunk.records
        ):
            raise ConservationError(
                rt.name,
                f"a micro-batch of {len(chunk.records)} records gave {len(outputs)} outputs, "
                f"{filtered} filtered and {len(dead)} failed; a stage that drops records must "
                "report them (StageResult.ok(out, records_filtered=n)), and a stage that "
                "emits several records per input must set expands = True",
            )
        if rt.output_contract is not None and outputs:
            outputs = self._check_contract(rt, rt.output_contract, outputs, "output", dead)
        stats.filtered += filtered
        stats.busy_seconds += time.perf_counter() - t0
        if dead:
            await self._dead_letter(rt, dead)
        if rt.kind is StageKind.SINK:
            stats.emitted += len(chunk.records) - len(dead)
            self._tracker.release(chunk.lineage)
            return None
        stats.emitted += len(outputs)
        if self.hooks.get("after_stage"):
            result = StageResult.ok(
                outputs,
                records_in=len(chunk.records),
                records_filtered=filtered,
                records_failed=len(dead),
            )
            await self._call_hooks(
                "after_stage",
                rt.name,
                stage_name=rt.name,
                data=outputs,
                context=self.context,
                result=result,
            )
        if not outputs:
            self._tracker.release(chunk.lineage)
            return None
        return _Chunk(outputs, chunk.lineage)

    async def _batch_loop(
        self, rt: _StageRuntime, size: int, inp: Channel[_Chunk], out: Channel[_Chunk]
    ) -> None:
        """Re-cut the stream into groups of ``size`` records across micro-batch borders."""
        stats = rt.stats
        buffer: list[Any] = []
        held: deque[list[Any]] = deque()  # [lineage, records of it still in the buffer]

        async def emit(groups: list[list[Any]]) -> None:
            taken = sum(len(g) for g in groups)
            lineage: dict[int, None] = {}
            consumed: list[tuple[int, ...]] = []
            while taken:
                entry = held[0]
                lineage.update(dict.fromkeys(entry[0]))
                use = min(taken, entry[1])
                entry[1] -= use
                taken -= use
                if entry[1] == 0:
                    consumed.append(held.popleft()[0])
            ids = tuple(lineage)
            self._tracker.acquire(ids)  # the new micro-batch holds its sources...
            for done in consumed:  # ...before the fully grouped inputs let go of theirs
                self._tracker.release(done)
            stats.emitted += len(groups)
            stats.grouped += sum(len(g) for g in groups)
            await out.send(_Chunk(groups, ids))

        async for chunk in inp:
            stats.received += len(chunk.records)
            stats.batches += 1
            buffer.extend(chunk.records)
            held.append([chunk.lineage, len(chunk.records)])
            if len(buffer) >= size:
                cut = len(buffer) - len(buffer) % size
                groups = [buffer[i : i + size] for i in range(0, cut, size)]
                del buffer[:cut]
                await emit(groups)
        if buffer:
            await emit([buffer])

    async def _barrier_loop(
        self, rt: _StageRuntime, inp: Channel[_Chunk], out: Channel[_Chunk]
    ) -> None:
        """Take the whole stream, process it once, emit the result in micro-batches."""
        records: list[Any] = []
        lineage: dict[int, None] = {}
        held: list[tuple[int, ...]] = []  # one reference per chunk consumed
        async for chunk in inp:
            rt.stats.received += len(chunk.records)
            rt.stats.batches += 1
            records.extend(chunk.records)
            lineage.update(dict.fromkeys(chunk.lineage))
            held.append(chunk.lineage)
        ids = tuple(lineage)
        # Even an empty stream is aggregated, as in collection mode (sum of nothing is 0).
        t0 = time.perf_counter()
        dead: list[DeadLetter] = []
        outcome = await self._attempt(rt, records)
        attempt = 1
        while outcome.error is not None and rt.retry.is_transient(outcome.error):
            if attempt >= rt.retry.attempts:
                break
            await asyncio.sleep(rt.retry.delay(attempt))
            attempt += 1
            rt.stats.retried += len(records)
            outcome = await self._attempt(rt, records)
        rt.stats.busy_seconds += time.perf_counter() - t0
        if outcome.error is not None:
            # A barrier fails as a whole: every record it consumed goes to the DLQ.
            dead = [
                self._letter(rt, r, outcome.error, outcome.error_traceback, attempt)
                for r in records
            ]
            await self._dead_letter(rt, dead)
            for consumed in held:
                self._tracker.release(consumed)
            return
        outputs = outcome.outputs
        rt.barrier_output = outcome.raw
        rt.stats.filtered += outcome.filtered
        chunks = [outputs[i : i + self.batch_size] for i in range(0, len(outputs), self.batch_size)]
        self._tracker.acquire(ids, len(chunks))
        for consumed in held:  # chunks after a re-cut may share a source batch
            self._tracker.release(consumed)
        for part in chunks:
            rt.stats.emitted += len(part)
            await out.send(_Chunk(part, ids))

    async def _branch_loop(
        self, rt: _StageRuntime, stage: BranchStage[Any], inp: Channel[_Chunk], out: Channel[_Chunk]
    ) -> None:
        """Broadcast the stream to every branch, each a streaming sub-run of its own; emit
        one record ``{branch: output}`` at the end, as collection mode does."""
        feeds = {
            key: Channel[list[Any]](self.capacity, name=f"{rt.name}/{key}")
            for key in stage.branches
        }
        collected: dict[str, list[Any]] = {key: [] for key in stage.branches}
        runners = {
            key: StreamRunner(
                f"{self.name}/{rt.name}/{key}",
                [branch],
                collected[key].extend,
                batch_size=self.batch_size,
                linger=self.linger,
                capacity=self.capacity,
                dead_letters=self._store,
                contracts=rt.check.mode,
                sample_rate=rt.check.sample_rate,
                context=self.context,
            )
            for key, branch in stage.branches.items()
        }
        tasks = {
            key: asyncio.create_task(runner.run(_drain(feeds[key])))
            for key, runner in runners.items()
        }
        lineage: dict[int, None] = {}
        held: list[tuple[int, ...]] = []  # one reference per chunk consumed
        try:
            async for chunk in inp:
                rt.stats.received += len(chunk.records)
                rt.stats.batches += 1
                lineage.update(dict.fromkeys(chunk.lineage))
                held.append(chunk.lineage)
                for feed in feeds.values():
                    await feed.send(chunk.records)
            for feed in feeds.values():
                feed.close()
            reports = {key: await task for key, task in tasks.items()}
        finally:
            for task in tasks.values():
                task.cancel()
        outputs: dict[str, Any] = {}
        for key, report in reports.items():
            rt.stats.dead_lettered += report.dead_lettered
            rt.stats.retried += report.retried
            self.branch_reports.append(report)
            last = runners[key]._runtimes[-2] if len(runners[key]._runtimes) > 1 else None
            ends_in_barrier = last is not None and last.kind is StageKind.BARRIER
            outputs[key] = last.barrier_output if ends_in_barrier and last else collected[key]
        ids = tuple(lineage)
        if not ids:
            return
        self._tracker.acquire(ids)
        for consumed in held:  # chunks after a re-cut may share a source batch
            self._tracker.release(consumed)
        rt.stats.emitted += 1
        await out.send(_Chunk([outputs], ids))

    # -- processing with retries, timeouts and isolation ------------------------------------

    async def _attempt(self, rt: _StageRuntime, records: list[Any]) -> ChunkOutcome:
        call = rt.executor.run(rt.stage, records, self.context)
        timeout = rt.options.timeout
        if timeout is None or rt.kind is StageKind.BARRIER:
            return await call
        try:  # asyncio.timeout: on 3.11 wait_for can swallow an abort's cancellation
            async with asyncio.timeout(timeout * max(len(records), 1)):
                return await call
        except TimeoutError:
            rt.executor.abandon()  # a worker may still be stuck on it: do not queue behind it
            error = StageTimeoutError(rt.name, timeout)
            return ChunkOutcome(error=error, error_traceback=format_traceback(error))

    async def _process(
        self, rt: _StageRuntime, records: list[Any], dead: list[DeadLetter], attempt: int
    ) -> tuple[list[Any], int]:
        """Outputs and filtered count of ``records``; failures end up in ``dead``."""
        if not records:
            return [], 0
        outcome = await self._attempt(rt, records)
        if outcome.error is not None:
            return await self._whole_failure(rt, records, outcome, dead, attempt)
        outputs, filtered, failures = outcome.outputs, outcome.filtered, outcome.failures
        while failures:
            retry = attempt < rt.retry.attempts
            transient = [f for f in failures if retry and rt.retry.is_transient(f.error)]
            for failure in failures:
                if not (retry and rt.retry.is_transient(failure.error)):
                    dead.append(
                        self._letter(rt, failure.item, failure.error, failure.traceback, attempt)
                    )
            if not transient:
                break
            await asyncio.sleep(rt.retry.delay(attempt))
            attempt += 1
            rt.stats.retried += len(transient)
            again = await self._attempt(rt, [f.item for f in transient])
            if again.error is not None:
                more, more_filtered = await self._whole_failure(
                    rt, [f.item for f in transient], again, dead, attempt
                )
                outputs.extend(more)
                return outputs, filtered + more_filtered
            outputs.extend(again.outputs)
            filtered += again.filtered
            failures = again.failures
        return outputs, filtered

    async def _whole_failure(
        self,
        rt: _StageRuntime,
        records: list[Any],
        outcome: ChunkOutcome,
        dead: list[DeadLetter],
        attempt: int,
    ) -> tuple[list[Any], int]:
        """A call failed as a whole: retry if transient, else split to isolate the bad."""
        assert outcome.error is not None
        if rt.retry.is_transient(outcome.error) and attempt < rt.retry.attempts:
            await asyncio.sleep(rt.retry.delay(attempt))
            rt.stats.retried += len(records)
            return await self._process(rt, records, dead, attempt + 1)
        if len(records) == 1:
            dead.append(
                self._letter(rt, records[0], outcome.error, outcome.error_traceback, attempt)
            )
            return [], 0
        # Stages are idempotent (seed 000), so re-running the halves is safe.
        mid = len(records) // 2
        left, left_filtered = await self._process(rt, records[:mid], dead, attempt)
        right, right_filtered = await self._process(rt, records[mid:], dead, attempt)
        return left + right, left_filtered + right_filtered

    def _check_contract(
        self,
        rt: _StageRuntime,
        contract: Contract,
        records: list[Any],
        edge: Literal["input", "output"],
        dead: list[DeadLetter],
    ) -> list[Any]:
        violations = rt.check.violations(contract, records, edge=edge, stage=rt.name)
        if not violations:
            return records
        bad = {index for index, _ in violations}
        for index, violation in violations:
            dead.append(self._letter(rt, records[index], violation, format_traceback(violation), 0))
        return [r for i, r in enumerate(records) if i not in bad]

    def _letter(
        self, rt: _StageRuntime, record: Any, error: BaseException, tb: str, attempts: int
    ) -> DeadLetter:
        kind = type(error)
        type_name = (
            error.type_name
            if isinstance(error, RemoteError)
            else f"{kind.__module__}.{kind.__qualname__}"
        )
        return DeadLetter(
            record=record,
            stage=rt.name,
            attempts=attempts,
            error_type=type_name,
            message=str(error),
            traceback=tb or format_traceback(error),
            run_id=self.run_id,
        )

    async def _dead_letter(self, rt: _StageRuntime, letters: list[DeadLetter]) -> None:
        """Write letters durably before the records count as gone; failure stops the run."""
        await asyncio.to_thread(self._store.write, letters)
        rt.stats.dead_lettered += len(letters)
        for letter in letters:
            error = _LetterError(letter)
            await self._call_hooks(
                "on_error",
                rt.name,
                stage_name=rt.name,
                error=error,
                context=self.context,
                result=None,
                dead_letter=letter,
            )

    # -- hooks, events, signals ------------------------------------------------------------

    async def _call_hooks(self, hook: str, stage: str | None, **kwargs: Any) -> None:
        await call_hooks(self.hooks.get(hook, ()), hook, stage, **kwargs)

    async def _publish(self, event_type: EventType, **payload: Any) -> None:
        if self.event_bus is not None:
            await self.event_bus.publish(Event(event_type, payload, source=self.name))

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self.handle_signals:
            return []
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError, NotImplementedError):  # not the main thread
                continue
            installed.append(sig)
        return installed

    def _remove_signals(
        self, loop: asyncio.AbstractEventLoop, installed: list[signal.Signals]
    ) -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)
        if self._grace_timer is not None:
            self._grace_timer.cancel()

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.warning(
                "%s: stopping intake and draining (grace period %.0fs); signal again to abort",
                sig.name,
                self.grace_period,
            )
            self.stop_intake()
            loop = asyncio.get_running_loop()
            self._grace_timer = loop.call_later(self.grace_period, self.abort)
        else:
            logger.warning("%s again: aborting now", sig.name)
            self.abort()

    def stop_intake(self) -> None:
        """Read nothing more from the source; drain what is in flight, then finish."""
        if self._reader is None or self._reader.done():
            return  # the source is already exhausted: nothing is cut short
        if self._status is RunStatus.COMPLETED:
            self._status = RunStatus.INTERRUPTED
        self._reader.cancel()

    def abort(self) -> None:
        """Stop at once: cancel every stage; the report gives the low watermark to resume."""
        self._status = RunStatus.ABORTED
        for task in self._tasks:
            task.cancel()


async def _drain(feed: Channel[list[Any]]) -> AsyncIterator[Any]:
    async for records in feed:
        for record in records:
            yield record


class _LetterError(Exception):
    """The error handed to ``on_error`` hooks in streaming mode (the dead letter's error)."""

    def __init__(self, letter: DeadLetter) -> None:
        self.dead_letter = letter
        super().__init__(f"{letter.error_type}: {letter.message}")
