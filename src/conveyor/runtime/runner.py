"""The streaming runner: stages as concurrent tasks joined by bounded channels.

The source is cut into micro-batches (at most ``batch_size`` records, or what arrived within
``linger`` seconds). Each stage is a task that takes micro-batches from its input channel,
processes them on its executor (up to ``concurrency`` at once), and sends the results on. A
full channel makes its sender wait, so a slow stage holds back everything upstream and
memory stays bounded. A record that fails for good becomes a dead letter and the flow goes
on; the sink is written by a loop of its own. The counters prove at the end that every
record left through the sink, a filter or the dead-letter queue.

Every way of running goes through :func:`run_stream` with one :class:`~conveyor.RunOptions`:
``Pipeline.run/arun/stream``, project runs, ``stage=NAME`` runs and replays. A branch's
arms are chains of stage tasks inside the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import time
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.contracts._check import ContractCheck
from conveyor.core.checkpoint import (
    Checkpoint,
    PipelineIdentity,
    SeekableSource,
    pipeline_fingerprint,
    source_identity,
)
from conveyor.core.context import PipelineContext
from conveyor.core.hooks import RunEvents, StageEvent
from conveyor.core.kinds import StageKind, flatten_stages
from conveyor.core.options import RunOptions, StageOptions
from conveyor.core.result import RunStatus
from conveyor.core.sink import RunInfo, RunMode, Sink, as_sink, close_sink, open_sink
from conveyor.core.source import AcknowledgingSource, Rejected
from conveyor.core.source import Source as KnownSource
from conveyor.core.spec import PipelineSpec
from conveyor.core.stages import BranchStage
from conveyor.dlq import DeadLetterStore, open_dead_letter_store
from conveyor.errors import CheckpointError, PipelineDefinitionError
from conveyor.runtime.channel import Channel
from conveyor.runtime.checkpoints import Checkpointer, ResumeInfo
from conveyor.runtime.flow import Chunk, Flow, StopRequest
from conveyor.runtime.letters import LetterBox
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.parts import Part, SinkRuntime, StageRuntime, weigher
from conveyor.runtime.report import RunReport, StageStats
from conveyor.runtime.stateful import Snapshots

__all__ = ["DEFAULT_DEAD_LETTERS", "StreamRunner", "run_stream"]

logger = logging.getLogger("conveyor.runtime")

DEFAULT_DEAD_LETTERS = Path(".conveyor") / "dead_letters.db"
"""Where dead letters go when a run names no store: a SQLite file under the working dir."""

Source = Iterable[Any] | AsyncIterable[Any]

_ITEM, _SKIP, _END = 0, 1, 2  # what the async source's pump hands the reader


async def run_stream(
    spec: PipelineSpec,
    source: Source,
    sink: object,
    options: RunOptions,
    *,
    context: PipelineContext | None = None,
    mode: RunMode = "run",
    on_done: Callable[[Any, Any], None] | None = None,
    depth: int = 0,
) -> RunReport:
    """Stream ``source`` through ``spec``'s stages into ``sink`` with ``options``.

    ``mode`` tells the sink why it is written (see :class:`~conveyor.core.sink.RunInfo`);
    ``on_done(first, last)`` is called each time the source records ``first..last`` (by
    position) have all left the pipeline; ``depth`` says how deep the source's elements are
    nested in groups (a replay into a stage after a ``BatchStage``).
    """
    runner = StreamRunner(
        spec, sink, options, context=context, mode=mode, on_done=on_done, depth=depth
    )
    return await runner.run(source)


class StreamRunner:
    """One streaming run; see the module docstring. Build it, then ``await run(source)``."""

    def __init__(
        self,
        spec: PipelineSpec,
        sink: object,
        options: RunOptions,
        *,
        context: PipelineContext | None = None,
        mode: RunMode = "run",
        on_done: Callable[[Any, Any], None] | None = None,
        depth: int = 0,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.options = options
        self.sink: Sink = as_sink(sink)
        self.context = context or PipelineContext(pipeline_name=spec.name)
        self.run_id = self.context.pipeline_id
        self.info = RunInfo(self.run_id, spec.name, mode)
        self.events = RunEvents(spec.name, self.run_id, "streaming", spec.hooks, spec.event_bus)
        self._stage_options = {**spec.stage_options, **options.stage_options}
        self._check_names()
        check = ContractCheck(options.contracts, sample_rate=options.sample_rate)
        self._source_weigh = weigher(depth)
        self._runtimes, depth = self._build(spec.leaves, check, depth, prefix="")
        self._sink = SinkRuntime(self.sink, self._sink_options(), depth)
        store = options.dead_letters
        self._store = (
            store
            if isinstance(store, DeadLetterStore)
            else open_dead_letter_store(store or DEFAULT_DEAD_LETTERS)  # type: ignore[arg-type]
        )
        self._owns_store = not isinstance(store, DeadLetterStore)
        self._tracker = OffsetTracker(on_done)
        self._stop = StopRequest()
        self._stop.callback = self.stop_intake
        self._flow = Flow(
            tracker=self._tracker,
            box=LetterBox(self._store, self.run_id, self.events, self.context, self._tracker),
            events=self.events,
            context=self.context,
            batch_size=options.batch_size,
            capacity=options.capacity,
            stop=self._stop,
        )
        self._channels: list[Channel[Chunk]] = []
        self._read_count = 0  # source elements read: their positions are the offsets
        self._records_in = 0  # the records they hold
        self._elements = 0  # elements read (a resumed run's skipped ones aside)
        self._status = RunStatus.COMPLETED
        self._reader: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._signals = 0
        self._t0 = 0.0
        self._grace_timer: asyncio.TimerHandle | None = None
        self._checkpointer: Checkpointer | None = None
        self._resume: ResumeInfo | None = None
        self._skips: deque[tuple[int, int]] = deque()  # positions a resumed run reads past
        self._next_token: Any = None  # the source's offset of the next element to read
        self._sink_opened = False
        self._source_exhausted = False
        self._source_part: Part | None = None  # a Source's row (its rejects' letters)
        self._rejects = False
        self._opened_source: KnownSource | None = None

    # -- building --------------------------------------------------------------------------

    def _options_for(
        self, name: str, *aliases: str, default: StageOptions | None = None
    ) -> StageOptions:
        for key in (name, *aliases):
            if key in self._stage_options:
                return self._stage_options[key]
        return default or StageOptions()

    def _sink_options(self) -> StageOptions:
        """The sink's options; a sink's own ``default_retry`` unless options are given."""
        retry = self.sink.default_retry
        own = None if retry is None else StageOptions(retry=retry)
        return self._options_for(self.sink.name, "sink", default=own)

    def _check_names(self) -> None:
        leaves = self.spec.leaves
        names = [s.name for s in leaves]
        inner = [
            s.name
            for stage in leaves
            if isinstance(stage, BranchStage)
            for arm in stage.branches.values()
            for s in flatten_stages([arm])
        ]
        unknown = sorted(
            set(self._stage_options) - set(names) - set(inner) - {"sink", self.sink.name}
        )
        if unknown:
            raise PipelineDefinitionError(
                f"options given for unknown stage(s) {', '.join(map(repr, unknown))}; "
                f"stages: {', '.join(names)}"
            )
        if self.sink.name in names:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has a stage named {self.sink.name!r}, the name of "
                "the run's sink; rename the stage"
            )

    def _build(
        self, leaves: list[Any], check: ContractCheck, depth: int, *, prefix: str
    ) -> tuple[list[StageRuntime], int]:
        runtimes: list[StageRuntime] = []
        for stage in leaves:
            rt = StageRuntime(
                stage, f"{prefix}{stage.name}", self._options_for(stage.name), check, depth
            )
            if isinstance(stage, BranchStage):
                for arm, chain in stage.branches.items():
                    rt.arms[arm], _ = self._build(
                        flatten_stages([chain]), check, depth, prefix=f"{rt.name}/{arm}/"
                    )
            runtimes.append(rt)
            depth = rt.depth_out
        return runtimes, depth

    @property
    def dead_letter_store(self) -> DeadLetterStore:
        """Where this run's dead letters go."""
        return self._store

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the run started (0 before it does)."""
        return time.perf_counter() - self._t0 if self._t0 else 0.0

    def progress(self) -> tuple[list[StageStats], list[Any]]:
        """Live counters of every stage and the sink, and channel statistics."""
        return self._stage_stats(), [ch.statistics() for ch in self._channels]

    def live_stats(self) -> list[StageStats]:
        """Live counters of every stage, branch arms included (``branch/arm/stage``), and
        the sink: read as they are, not copied (for live metrics)."""
        head = [] if self._source_part is None else [self._source_part.stats]
        return head + [rt.stats for rt in self._all_runtimes()] + [self._sink.stats]

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The last checkpoint this run wrote (``None``: none yet, or no checkpoints)."""
        cp = self._checkpointer
        return None if cp is None else cp.last

    @property
    def checkpoints_written(self) -> int | None:
        """Checkpoints this run committed so far (``None``: the run keeps no checkpoints)."""
        cp = self._checkpointer
        return None if cp is None else cp.commits

    def _stage_stats(self) -> list[StageStats]:
        head = [] if self._source_part is None else [self._source_part.stats]
        return head + [rt.stats for rt in self._runtimes] + [self._sink.stats]

    # -- the run ---------------------------------------------------------------------------

    async def run(self, source: Source) -> RunReport:
        """Stream ``source`` through the stages into the sink and return the report.

        If stage code raised ``KeyboardInterrupt`` or ``SystemExit``, the run drains like
        after a signal and then raises it (the report is its ``report`` attribute).
        """
        started = datetime.now(UTC)
        t0 = self._t0 = time.perf_counter()
        await self.events.created(stage_count=len(self._runtimes))
        ended = RunStatus.ABORTED
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        try:
            self._prepare_source(source)
            self._prepare_checkpoints(source)
            await open_sink(self.sink, self.info)
            self._sink_opened = True
            installed = self._install_signals(loop)
            await self._start(source)
            await self._supervise()
            report = self._report(started, time.perf_counter() - t0)
            ended = report.status
        except BaseException as exc:
            await self.events.updated(
                status=RunStatus.ABORTED.value,
                duration_ms=(time.perf_counter() - t0) * 1000.0,
                completed_stages=[],
                error=exc,
            )
            raise
        finally:
            self._remove_signals(loop, installed)
            await self._close(ended)
        await self._published(report)
        report.check_conservation()
        if report.status is RunStatus.COMPLETED:  # as in collection mode: on success only
            await self.events.hook(
                "on_complete", None, data=None, context=self.context, result=report, report=report
            )
        if self._stop.error is not None:
            error = self._stop.error
            error.report = report  # type: ignore[attr-defined]
            error.add_note(report.summary())
            raise error
        return report

    def _prepare_source(self, source: Source) -> None:
        """A :class:`conveyor.Source` gets its own row in the report (the stage of its
        rejects' dead letters); a source that acknowledges what left needs checkpoints."""
        if isinstance(source, AcknowledgingSource) and not self.options.checkpointing:
            raise PipelineDefinitionError(
                f"source {getattr(source, 'name', type(source).__name__)!r} acknowledges "
                "its messages once their records have left the pipeline, which is what a "
                "checkpoint records: run it with checkpoints (checkpoint=True in code; "
                "projects checkpoint by default, pipeline.checkpoints: true)"
            )
        if not isinstance(source, KnownSource):
            return
        self._opened_source = source
        names = {rt.name for rt in self._all_runtimes()} | {self.sink.name}
        if source.name in names:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has a stage named {source.name!r}, the name of the "
                "run's source; rename the stage or the source"
            )
        part = Part(source.name, StageKind.SOURCE, StageOptions(), 0)
        part.stats.executor = "source"
        self._source_part, self._rejects = part, source.rejects

    def _prepare_checkpoints(self, source: Source) -> None:
        """Open the checkpoint store; refuse, resume or start afresh (see RunOptions)."""
        if not self.options.checkpointing or self.info.mode != "run":
            return
        from conveyor.dlq import MemoryDeadLetterStore

        if isinstance(self._store, MemoryDeadLetterStore):
            raise PipelineDefinitionError(
                "a run with checkpoints needs a durable dead-letter store: a checkpoint "
                "counts a dead-lettered record as done, and a crash would lose the letters "
                "kept in memory; drop dead_letters='memory' (the default is "
                ".conveyor/dead_letters.db) or give a path"
            )
        extra = [
            self.spec.identity,
            self.options.contracts,
            self.options.sample_rate,
            self.sink.identity,
        ]
        identity = PipelineIdentity(
            self.name, pipeline_fingerprint(self.spec.leaves, extra), source_identity(source)
        )
        cp = self._checkpointer = Checkpointer(
            self.options,
            identity,
            self.run_id,
            self._sink,
            self._tracker,
            lambda: (self._read_count, self._next_token),
            source if isinstance(source, AcknowledgingSource) else None,
            Snapshots.of(self._runtimes),  # the stateful stages' state goes in too
        )
        resume = cp.prepare()
        if isinstance(source, AcknowledgingSource):
            source.restore(cp.source_state)
            bind = getattr(source, "bind_checkpoints", None)
            if callable(bind):  # optional: the source may ask for a checkpoint soon
                bind(cp.request)
        self._tracker.checkpointing = True
        stages = [rt.name for rt in self._all_runtimes()] + [self._sink.name]
        superseded = cp.supersede_letters(self._store, stages)
        cp.begin()
        self.info = replace(self.info, checkpointing=True, resume_from=resume)
        self._flow.checkpointer = cp
        self._flow.source_finished = lambda: (
            self._source_exhausted
            and self._status is RunStatus.COMPLETED
            and self._stop.error is None
        )
        if resume is None:
            return
        if isinstance(source, AcknowledgingSource):
            # The broker redelivers what was not acknowledged: positions go on from the
            # checkpoint's, nothing is skipped by position.
            source.seek(resume.position)
            self._read_count = self._next_token = resume.position
            self._resume = ResumeInfo(
                checkpoint_run=resume.run_id,
                position=resume.position,
                offset=resume.position,
                skipped=0,
                seeked=True,
                superseded_letters=superseded,
            )
            return
        seeked = isinstance(source, SeekableSource) and resume.offset is not None
        if seeked:
            assert isinstance(source, SeekableSource)
            source.seek(resume.offset)
            self._read_count = resume.position
            self._next_token = resume.offset
        elif resume.position:
            self._skips.append((0, resume.position - 1))
        self._skips.extend(resume.done)
        self._tracker.resumed(resume.done)
        self._resume = ResumeInfo(
            checkpoint_run=resume.run_id,
            position=resume.position,
            offset=resume.offset,
            skipped=resume.skipped_positions,
            seeked=seeked,
            superseded_letters=superseded,
        )

    async def _start(self, source: Source) -> None:
        groups = self._flow.groups(self._runtimes)
        names = ["source", *(g[-1].name for g in groups)]
        channels = [
            Channel[Chunk](self.options.capacity, name=f"{a} -> {b}")
            for a, b in zip(names, [*(g[0].name for g in groups), self._sink.name], strict=True)
        ]
        self._channels = channels
        self._reader = asyncio.create_task(self._read(source, channels[0]))
        self._tasks = [self._reader]
        for i, group in enumerate(groups):
            task = self._flow.stage_task(group, channels[i], channels[i + 1])
            self._tasks.append(asyncio.create_task(task))
        self._tasks.append(asyncio.create_task(self._flow.sink_loop(self._sink, channels[-1])))

    async def _close(self, status: RunStatus) -> None:
        try:
            if self._opened_source is not None:
                await asyncio.to_thread(self._opened_source.close)
            # A write cancelled by an abort may still run in a worker thread: the sink is
            # closed after it (waiting at most the grace period).
            await asyncio.to_thread(self._sink.executor.wait_idle, self.options.grace_period)
            if self._sink_opened:
                await close_sink(self.sink, status)
        finally:
            if self._checkpointer is not None:
                self._checkpointer.close()
            for rt in self._all_runtimes():
                rt.executor.close()
            self._sink.executor.close()
            if self._owns_store:
                self._store.close()

    def _all_runtimes(self) -> list[StageRuntime]:
        out: list[StageRuntime] = []
        for rt in self._runtimes:
            out.append(rt)
            for chain in rt.arms.values():
                out.extend(chain)
        return out

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
        stages = self._stage_stats()
        report = RunReport(
            run_id=self.run_id,
            pipeline_name=self.name,
            started_at=started,
            status=self._status,
            duration_seconds=seconds,
            records_in=self._records_in,
            stages=stages,
            channels=[ch.statistics() for ch in self._channels],
            low_watermark=self._tracker.low_watermark,
            in_flight_records=self._tracker.in_flight_records,
            dead_letter_store=self._store.description,
            sink_description=str(getattr(self.sink, "description", "") or ""),
            branches={
                rt.name: {arm: [a.stats for a in chain] for arm, chain in rt.arms.items()}
                for rt in self._runtimes
                if rt.arms
            },
            max_dead_letters=str(self.options.budget),
            source_elements=None if self._elements == self._records_in else self._elements,
        )
        cp = self._checkpointer
        if cp is not None:
            report.checkpoint = cp.last
            report.checkpoint_store = cp.store.description
            report.checkpoints_written = cp.commits
            report.resume = self._resume
            report.sink_guarantee = "exactly-once" if self.sink.exactly_once else "at-least-once"
            resumed = cp.resume_from
            if resumed is not None:
                reached = max(resumed.read, cp.previous_delivery + 1)  # what it had read
                redone = min(self._read_count, reached) - resumed.skipped_positions
                report.replayed = max(0, redone)
        if self._stop.error is not None and report.status is RunStatus.COMPLETED:
            report.status = RunStatus.INTERRUPTED
        budget = self.options.budget
        if budget.exceeded(dead=report.dead_for_budget, records_in=report.records_in):
            if report.status is RunStatus.COMPLETED:
                report.status = RunStatus.FAILED
            report.failure = _over_budget(report, budget.allowed(report.records_in))
        return report

    async def _published(self, report: RunReport) -> None:
        if self.events.event_bus is not None:
            for stats in report.stages:
                await self.events.stage_completed(_stage_event(stats))
        await self.events.updated(
            status=report.status.value,
            duration_ms=report.duration_seconds * 1000.0,
            completed_stages=[s.name for s in report.stages],
            records_in=report.records_in,
            records_out=report.records_out,
            records_filtered=report.filtered,
            records_failed=report.dead_lettered,
        )

    # -- source ----------------------------------------------------------------------------

    async def _read(self, source: Source, out: Channel[Chunk]) -> None:
        try:
            if isinstance(source, AsyncIterable):
                await self._read_async(source, out)
            elif isinstance(source, Iterable):
                await self._read_sync(source, out)
            else:
                raise PipelineDefinitionError(
                    f"source must be an iterable or async iterable of records, "
                    f"got {type(source).__name__}"
                )
            self._source_exhausted = True  # read to its end (not stopped, not failed)
        finally:
            out.close()

    async def _emit_source(
        self, records: list[Any], out: Channel[Chunk], token: Any = None
    ) -> None:
        first, weight = self._read_count, self._source_weigh(records)
        self._read_count += len(records)
        self._elements += len(records)
        self._records_in += weight
        batch_id = self._tracker.open(first, self._read_count - 1, weight, token)
        rejected: list[Rejected] = []
        if self._rejects:
            rejected = [r for r in records if type(r) is Rejected]
            if rejected:
                records = [r for r in records if type(r) is not Rejected]
                if records:  # the batch is held for the letters too, until they are durable
                    self._tracker.acquire((batch_id,))
        try:
            if records or not rejected:
                await out.send(Chunk(records, (batch_id,)))
        except asyncio.CancelledError:  # intake stopped while waiting: these never entered
            self._read_count = first
            self._elements -= len(records) + len(rejected)
            self._records_in -= weight
            self._tracker.forget(batch_id)
            raise
        part = self._source_part
        if part is not None:
            stats = part.stats
            n = len(records) + len(rejected)
            stats.received += n
            stats.records_in += n
            stats.emitted += len(records)
            stats.records_out += len(records)
            stats.batches += 1
        if rejected:
            assert part is not None
            await self._letter_rejects(part, rejected, batch_id)
        await asyncio.sleep(0)  # let the first stage take it while it is hot in the cache

    async def _letter_rejects(self, part: Part, rejected: list[Rejected], batch_id: int) -> None:
        """Dead letters for what the source could not make into records, durable before
        their positions count as done."""
        box = self._flow.box
        letters = [box.letter(part, r.record, r.error, "", 1) for r in rejected]
        await box.send(part, letters, (batch_id,))
        self._tracker.release((batch_id,))

    async def _read_sync(self, source: Iterable[Any], out: Channel[Chunk]) -> None:
        iterator = iter(source)
        size, skips = self.options.batch_size, self._skips
        seekable = isinstance(source, SeekableSource)
        if seekable:
            assert isinstance(source, SeekableSource)
            self._next_token = source.offset
        while True:
            n = size
            if skips:
                first, last = skips[0]
                if self._read_count >= first:
                    await self._skip_sync(source, iterator, last - self._read_count + 1)
                    skips.popleft()
                    continue
                n = min(n, first - self._read_count)
            token = self._next_token
            records = list(itertools.islice(iterator, n))
            if not records:
                return
            after = source.offset if seekable else None  # type: ignore[attr-defined]
            await self._emit_source(records, out, token)
            self._next_token = after  # (not before: a batch cancelled in the send is unread)

    async def _skip_sync(self, source: Any, iterator: Any, count: int) -> None:
        """Read past ``count`` elements that a resumed run does not process again."""
        left, seekable = count, isinstance(source, SeekableSource)
        while left > 0:
            step = min(left, 10_000)
            got = sum(1 for _ in itertools.islice(iterator, step))
            self._read_count += got
            if seekable:
                self._next_token = source.offset
            left -= got
            if got < step:
                self._source_shorter()
            await asyncio.sleep(0)  # signals stay deliverable while skipping

    def _source_shorter(self) -> None:
        resume = self._resume
        assert resume is not None
        assert self._checkpointer is not None
        raise CheckpointError(
            self._checkpointer.store.description,
            f"the source ended at position {self._read_count}, before the records the "
            f"checkpoint of run {resume.checkpoint_run} says are done (up to "
            f"{resume.position}): the source changed since; run with --fresh to start "
            "from the beginning",
        )

    async def _read_async(self, source: AsyncIterable[Any], out: Channel[Chunk]) -> None:
        # Entries: (_ITEM, record, its offset, the offset after it), (_SKIP, positions read
        # past, None, the offset after them), (_END, None, None, None).
        queue: asyncio.Queue[tuple[int, Any, Any, Any]] = asyncio.Queue(
            maxsize=self.options.batch_size
        )
        seekable, skips = isinstance(source, SeekableSource), self._skips

        async def pump() -> None:
            position, skipped = self._read_count, 0
            token = source.offset if seekable else None  # type: ignore[attr-defined]
            try:
                async for item in source:
                    at, position = token, position + 1
                    if seekable:
                        token = source.offset  # type: ignore[attr-defined]
                    if skips and skips[0][0] < position:  # a position a resume reads past
                        skipped += 1
                        if position > skips[0][1]:
                            skips.popleft()
                            await queue.put((_SKIP, skipped, None, token))
                            skipped = 0
                        continue
                    await queue.put((_ITEM, item, at, token))
                if skips:
                    self._read_count = position
                    self._source_shorter()
            except Exception:
                await queue.put((_END, None, None, None))  # wake the reader; raised below
                raise
            await queue.put((_END, None, None, None))

        pump_task = asyncio.create_task(pump())
        try:
            kind = _ITEM
            while kind != _END:
                kind, item, token, after = await queue.get()
                if kind == _SKIP:
                    self._read_count += item
                    self._next_token = after
                    continue
                if kind == _END:
                    break
                records, skipped, skip_after = [item], 0, None
                deadline = time.monotonic() + self.options.linger
                while len(records) < self.options.batch_size:
                    if not queue.empty():  # (no timer per item while the pump is ahead)
                        kind, item, _, next_after = queue.get_nowait()
                    else:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                        # cancellation (stop_intake, an abort) when the get completes at once.
                        try:
                            async with asyncio.timeout(remaining):
                                kind, item, _, next_after = await queue.get()
                        except TimeoutError:
                            break
                    if kind == _SKIP:  # a batch holds consecutive positions only
                        skipped, skip_after = item, next_after
                        break
                    if kind == _END:
                        break
                    records.append(item)
                    after = next_after
                await self._emit_source(records, out, token)
                self._next_token = after
                if skipped:
                    self._read_count += skipped
                    self._next_token = skip_after
            await pump_task  # surfaces a source error
        finally:
            pump_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump_task

    # -- signals ---------------------------------------------------------------------------

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        if not self.options.handle_signals:
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
                self.options.grace_period,
            )
            self.stop_intake()
            loop = asyncio.get_running_loop()
            self._grace_timer = loop.call_later(self.options.grace_period, self.abort)
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


def _stage_event(stats: StageStats) -> StageEvent:
    return StageEvent(
        stage=stats.name,
        kind=stats.kind.value,
        executor=stats.executor,
        success=True,
        duration_ms=stats.busy_seconds * 1000.0,
        records_in=stats.records_in,
        records_out=stats.records_out,
        records_filtered=stats.records_filtered,
        records_failed=stats.records_dead,
        retried=stats.retried,
        batches=stats.batches,
    )


def _over_budget(report: RunReport, allowed: int) -> str:
    where = ", ".join(f"{name} {n}" for name, n in report.dead_letters_by_stage().items())
    dead, read = report.dead_for_budget, report.records_in
    share = 100.0 * dead / read if read else 0.0
    letters = f"{dead} dead letter{'' if dead == 1 else 's'}"
    records = f"{read} record{'' if read == 1 else 's'}"
    exceed = "exceeds" if dead == 1 else "exceed"
    return (
        f"{letters} ({share:.3g}% of {records} read) {exceed} max_dead_letters="
        f"{report.max_dead_letters} (at most {allowed} allowed): {where}"
    )
