"""Taking checkpoints during a run, and finding where a resumed run starts.

The sink loop asks :meth:`Checkpointer.after_write` after each write. Once the interval has
passed and every source batch the sink was given since the last checkpoint has fully left
the pipeline (a *clean point*: the sink's uncommitted writes belong to done batches only),
the checkpointer takes the low watermark from the tracker, has the sink commit (a SQL sink
writes the checkpoint in the same transaction as its rows; a file sink fsyncs and returns
its length), then stores the checkpoint unless the sink did. Dead letters are durable
before their records count as gone, so a checkpoint never covers a letter that could be
lost. At the end of a drained run a final checkpoint is taken the same way.

A run with stateful stages (windows, keyed state) also needs their state to be a cut with
the checkpoint's coverage: :class:`~conveyor.runtime.stateful.Snapshots` holds the first of
them at a micro-batch border until every record they took has left, then their states go
into the checkpoint (``Checkpoint.state``) and a resume restores them. The stateful stages
of a streaming branch's arms are among them, and the branch's broadcast is such a border;
since its arms write results of source batches that the other arms still hold, a run with
one asks for a cut also when the sink's writes are not at a clean point yet. Such a run also
checkpoints while the sink waits for a batch, once records have left since the last one
(windows absorb most records and emit seldom).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.core._faults import fault_point
from conveyor.core.checkpoint import (
    Checkpoint,
    CheckpointStore,
    PipelineIdentity,
    SqliteCheckpointStore,
)
from conveyor.core.options import RunOptions
from conveyor.core.source import AcknowledgingSource
from conveyor.dlq import DeadLetterStore
from conveyor.errors import CheckpointError, PipelineDefinitionError, ResumeRequired
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.parts import SinkRuntime
from conveyor.runtime.stateful import PAUSE_LIMIT

if TYPE_CHECKING:
    from conveyor.runtime.channel import Channel
    from conveyor.runtime.stateful import Snapshots

T = TypeVar("T")

__all__ = ["DEFAULT_CHECKPOINTS", "Checkpointer", "ResumeInfo", "open_checkpoint_store"]

logger = logging.getLogger("conveyor.runtime")

DEFAULT_CHECKPOINTS = Path(".conveyor") / "checkpoints.db"
"""Where checkpoints go when a run asks for them without naming a store."""


def open_checkpoint_store(spec: object) -> CheckpointStore:
    """The store ``spec`` names: a store as it is, ``True`` the default file, or a path."""
    if isinstance(spec, CheckpointStore):
        return spec
    if spec is True or spec is None:
        return SqliteCheckpointStore(DEFAULT_CHECKPOINTS)
    if isinstance(spec, str | os.PathLike):
        return SqliteCheckpointStore(spec)
    raise PipelineDefinitionError(
        "checkpoint must be True, a path to a SQLite file or a CheckpointStore, got "
        f"{type(spec).__name__}"
    )


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    """How a resumed run started (the report's resume lines).

    Attributes:
        checkpoint_run: the run that wrote the checkpoint resumed from.
        position: the source position the run started at (the low watermark).
        offset: the source's own offset there (``None``: it was re-read and skipped).
        skipped: positions not processed again (below the watermark, or done above it).
        seeked: whether the source seeked to ``offset`` (else it was re-read from the start).
        superseded_letters: dead letters of the crashed run(s) for records read again.
    """

    checkpoint_run: str
    position: int
    offset: Any
    skipped: int
    seeked: bool
    superseded_letters: int


class Checkpointer:
    """Checkpoints of one run; see the module docstring."""

    def __init__(
        self,
        options: RunOptions,
        identity: PipelineIdentity,
        run_id: str,
        sink: SinkRuntime,
        tracker: OffsetTracker,
        reader: Callable[[], tuple[int, Any]],
        source: AcknowledgingSource | None = None,
        states: Snapshots | None = None,
    ) -> None:
        self.identity = identity
        self.run_id = run_id
        self.interval = options.interval
        self._resume = options.resume
        self._sink = sink
        self._tracker = tracker
        self._reader = reader  # (positions read, the source's offset now)
        self._source = source  # told what each checkpoint covers, to acknowledge it
        self.source_state: Any = None  # for the source: the last checkpoint's state
        own = sink.sink.checkpoint_store()
        self.store: CheckpointStore = own or open_checkpoint_store(options.checkpoint)
        self._own = own is not None  # the sink writes checkpoints in its own transaction
        self._owns_store = own is not None or not isinstance(options.checkpoint, CheckpointStore)
        self.resume_from: Checkpoint | None = None
        self.abandoned: Checkpoint | None = None  # an unfinished chain a fresh run replaces
        self.last: Checkpoint | None = None
        self._runs: tuple[str, ...] = (run_id,)
        self._base_done = 0
        self._base_written = 0
        self._since = 0
        self._next_at = 0.0
        self._touched: set[int] = set()
        self.commits = 0
        self.tracks_delivery = False  # an at-least-once sink: note how far it was given
        self.previous_delivery = -1  # the furthest position the resumed runs delivered
        self._delivered = -1
        self._delivery_fd: int | None = None
        self._requested = False  # the source asked for a checkpoint as soon as possible
        self._idle: asyncio.Timeout | None = None  # the sink loop's wait for a batch
        self._states = states  # the stateful stages, snapshotted into each checkpoint
        if states is not None:
            states.wake = self._wake

    # -- before the run --------------------------------------------------------------------

    def prepare(self) -> Checkpoint | None:
        """Read the pipeline's checkpoint and decide: resume it, start afresh, or refuse.
        Returns the checkpoint to resume from (``None``: start at the beginning)."""
        where = self.store.description
        try:
            found = self.store.load(self.identity.name)
        except CheckpointError:
            if self._resume is not False:
                raise
            found = None  # --fresh: the damaged checkpoint is replaced
            logger.warning("%s: the damaged checkpoint is replaced (--fresh)", where)
        if self._resume and (found is None or found.finished):
            what = (
                f"there is no checkpoint of pipeline {self.identity.name!r} here"
                if found is None
                else f"the last run of pipeline {self.identity.name!r} (run {found.run_id}) "
                f"finished at {found.written_at}"
            )
            raise CheckpointError(
                where,
                f"{what}: there is nothing to resume (a resume never starts from zero on its "
                "own: was the pipeline renamed, or its sink moved?); run without --resume "
                "(resume=None in code) to run the pipeline from the beginning",
            )
        if found is not None and self._source is not None and self._resume is not False:
            # What the last checkpoint covered but may not have acknowledged (also when it
            # finished: its acknowledgements may have failed).
            self.source_state = found.source_state
        if found is not None and not found.finished:
            if self._resume is None and self._source is not None:
                # A broker keeps what was not acknowledged: a plain run goes on from the
                # checkpoint (its state says which redeliveries are done already).
                self._resume = True
            if self._resume is None:
                raise ResumeRequired(
                    where,
                    f"pipeline {self.identity.name!r} has an unfinished checkpoint (run "
                    f"{found.run_id}, written {found.written_at}: {found.position} source "
                    f"records done, {found.read} read). Run `conveyor run --resume` to "
                    "continue from it (exactly once), or `conveyor run --fresh` to start "
                    "again from the beginning: that writes every record again, and a table "
                    "sink without a key keeps the rows the unfinished run committed "
                    "(resume=True / resume=False in code). A plain run stops rather than "
                    "write records a second time",
                )
            if self._resume:
                found.check_identity(self.identity, where)
                if self._states is not None:
                    self._states.restore(found.state, where)
                self.resume_from = found
                self._runs = (*found.runs, self.run_id)
                self._base_done = found.records.get("done", 0)
                self._base_written = found.records.get("written", 0)
            else:
                self.abandoned = found
        return self.resume_from

    def begin(self) -> None:
        """Register this run in the store before it writes anything (after the letters
        of the runs it replaces were retired: a crash in between loses no chain)."""
        begin = (
            self.resume_from.stamped(run_id=self.run_id, runs=self._runs)
            if self.resume_from is not None
            # (a broker's unconfirmed acknowledgements of a finished run are kept)
            else Checkpoint(
                self.identity, self.run_id, self._runs, source_state=self.source_state
            ).stamped()
        )
        self.store.save(begin)
        self.last = begin
        self._open_delivery()
        self._next_at = time.monotonic() + (self.interval.seconds or 0.0)

    def _open_delivery(self) -> None:
        """For an at-least-once sink beside a checkpoint file: a small file that says how
        far the sink was given records, rewritten in place after each write (not synced:
        it survives a killed process, which is what it is for), so that a resume can count
        the records it gives the sink a second time."""
        path = getattr(self.store, "path", None)
        if self._sink.sink.exactly_once or not isinstance(path, Path):
            return
        digest = hashlib.sha256(self.identity.name.encode()).hexdigest()[:12]
        where = path.with_name(f"{path.name}.{digest}.delivered")
        try:
            fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return  # only the count of replays is lost
        resumed = self.resume_from
        text = os.pread(fd, 64, 0).decode("ascii", "replace").split()
        if resumed is not None and len(text) == 2 and text[0] in resumed.runs:
            with contextlib.suppress(ValueError):
                self.previous_delivery = int(text[1])
        self._delivery_fd, self.tracks_delivery = fd, True

    def delivered(self, ranges: list[list[int]]) -> None:
        """The sink was just given records of these source positions."""
        last = max((r[1] for r in ranges), default=-1)
        if last > self._delivered and self._delivery_fd is not None:
            self._delivered = last
            with contextlib.suppress(OSError):
                os.pwrite(self._delivery_fd, f"{self.run_id} {last:020d}\n".encode(), 0)

    def supersede_letters(self, store: DeadLetterStore, stages: list[str]) -> int:
        """Retire the dead letters that the resumed run will make again: those of the
        earlier runs of the chain for records the checkpoint does not cover. A fresh run
        retires every letter of the chain it abandons."""
        if self.abandoned is not None:
            return store.supersede(stages, runs=self.abandoned.runs)
        resume = self.resume_from
        if resume is None:
            return 0
        stale: list[str] = []
        for run in resume.runs:
            for letter in store.list(run_id=run):
                ranges = letter.source_offset
                if _ranges(ranges) and not resume.covers_all(ranges):
                    stale.append(letter.id)
        return store.mark_replayed(stale) if stale else 0

    # -- during the run --------------------------------------------------------------------

    def request(self) -> None:
        """An acknowledging source asks for a checkpoint as soon as one can be taken (it
        waits for the acknowledgement of a message it lets through alone): the next write,
        or the sink loop's wait for one, takes it once records left since the last."""
        self._requested = True
        self._wake()

    def _wake(self) -> None:
        """End the sink loop's wait for a batch now (it then tries a checkpoint)."""
        idle = self._idle
        if idle is not None and not idle.expired():
            idle.reschedule(asyncio.get_running_loop().time())

    async def receive(self, inp: Channel[T]) -> T:
        """The sink loop's next item from ``inp``. In a run from an acknowledging source,
        or with stateful stages, a checkpoint is also taken while nothing comes to write
        (each interval, or soon after :meth:`request`) if records left since the last one
        (a quiet broker, records that all became dead letters, records absorbed into
        windows), so that their messages are acknowledged and a resume starts late."""
        states = self._states
        if self._source is None and states is None:
            return await inp.receive()
        every = self.interval.seconds or 1.0
        while True:
            cutting = states is not None and states.requested
            urgent = self._requested or cutting
            wait = 0.05 if urgent else self._next_at - time.monotonic()
            try:
                async with asyncio.timeout(max(wait, 0.02)) as self._idle:
                    return await inp.receive()
            except TimeoutError:
                pass
            finally:
                self._idle = None
            if cutting:
                await self._cut(every)
                continue
            if self._progressed():
                await self.commit(finished=False)  # (not at a clean point: try again soon)
            elif not self._requested:
                self._next_at = time.monotonic() + every

    async def _cut(self, every: float) -> None:
        """A cut of the stateful stages is wanted: take the checkpoint if it is one now,
        or give up on it after :data:`~conveyor.runtime.stateful.PAUSE_LIMIT`."""
        states = self._states
        assert states is not None
        if await self.commit(finished=False) is not None or not states.stale():
            return
        logger.warning(
            "checkpoint: no consistent cut of the stateful stages within %.0fs (a BatchStage "
            "before them joins source batches?); trying again in %.1fs",
            PAUSE_LIMIT,
            every,
        )
        states.release()
        self._next_at = time.monotonic() + every

    def _progressed(self) -> bool:
        """Whether a checkpoint now would cover more than the last one."""
        last = self.last
        if last is None:
            return False
        if self._touched:
            return True
        read, now = self._reader()
        base = self.resume_from
        if base is not None and read < base.position:
            return False
        position, _, done = self._tracker.coverage(read, now)
        return position != last.position or [tuple(r) for r in done] != [
            tuple(r) for r in last.done
        ]

    async def after_write(self, lineage: tuple[int, ...], records: int) -> None:
        """Called by the sink loop after each write (its lineage released)."""
        self._touched.update(lineage)
        self._since += records
        interval = self.interval
        if self._requested:
            pass  # the source waits for an acknowledgement: now, if this is a clean point
        elif interval.records is not None:
            if self._since < interval.records:
                return
        elif time.monotonic() < self._next_at:
            return
        await self.commit(finished=False)  # (nothing, unless this is a clean point)

    async def commit(self, *, finished: bool) -> Checkpoint | None:
        """Take a checkpoint now if this is a clean point: every source batch the sink
        holds uncommitted rows of has fully left (else ``None``: try after a later write)."""
        tracker = self._tracker
        states, state = self._states, None
        if tracker.pending(self._touched):
            if states is not None and states.broadcasts:
                # A streaming branch's arms write results of source batches that another
                # arm still holds: under a steady flow that is never clean unless the
                # branch stops at a border and its arms drain (the cut does that).
                states.request()
            return None
        if states is not None:
            if not states.ready(tracker):  # (an interrupted stage's state never is)
                states.request()
                return None
            state = states.take()  # (with the coverage below: no await in between)
        return await self._commit(finished, state, states)

    async def _commit(
        self, finished: bool, states: dict[str, str] | None, cut: Snapshots | None
    ) -> Checkpoint:
        tracker, sink = self._tracker, self._sink
        read, now = self._reader()
        base = self.resume_from
        if base is not None and read < base.position:  # stopped while reading past done ones
            read, now = base.position, base.offset
        position, offset, done = tracker.coverage(read, now)
        if cut is not None:
            # The cut is taken: the stateful stages may go on. What they make now waits in
            # the channels, since this sink loop writes nothing until the commit is done.
            cut.release()
        previous = self.last
        assert previous is not None
        checkpoint = previous.stamped(
            run_id=self.run_id,
            runs=self._runs,
            position=position,
            offset=offset,
            done=tuple(done),
            read=read,
            records={
                "done": self._base_done + tracker.completed_records,
                "written": self._base_written + sink.stats.records_out,
            },
            finished=finished and position >= read and not done,
            **({} if states is None else {"state": states}),
        )
        if self._source is not None:
            checkpoint = replace(
                checkpoint, source_state=self._source.pending(position, checkpoint.done)
            )
        state = await self._with_retries(
            "commit",
            lambda: sink.executor.call(sink.sink.commit, checkpoint),
        )
        fault_point("after_sink_commit")
        if state is not None:
            checkpoint = checkpoint.stamped(sink=state)
        if not self._own:
            await self._with_retries("save", lambda: asyncio.to_thread(self.store.save, checkpoint))
        self.last = checkpoint
        self.commits += 1
        self._touched.clear()
        self._since = 0
        self._next_at = time.monotonic() + (self.interval.seconds or 0.0)
        if self._source is not None:
            self._requested = False
            await self._acknowledge(checkpoint)
        return checkpoint

    async def _acknowledge(self, checkpoint: Checkpoint) -> None:
        """Tell the source what the stored checkpoint covers. A failed acknowledgement
        is not fatal: the broker redelivers, and the checkpoint's state says it is done."""
        assert self._source is not None
        try:
            await self._source.acknowledge(checkpoint.position, checkpoint.done)
        except Exception as exc:
            logger.warning(
                "acknowledging the messages of checkpoint %s failed (%s); the broker will "
                "redeliver them and the next run acknowledges them without processing",
                checkpoint.position,
                exc,
            )

    async def _with_retries(self, what: str, call: Any) -> Any:
        retry = self._sink.retry
        attempt = 1
        while True:
            try:
                return await call()
            except Exception as exc:
                if attempt >= retry.attempts or not retry.is_transient(exc):
                    raise
                logger.warning(
                    "checkpoint %s failed (%s), retry %d of %d",
                    what,
                    exc,
                    attempt,
                    retry.attempts - 1,
                )
                await asyncio.sleep(retry.delay(attempt))
                attempt += 1

    def close(self) -> None:
        """Release the store if this run opened it."""
        if self._delivery_fd is not None:
            os.close(self._delivery_fd)
            self._delivery_fd = None
        if self._owns_store:
            self.store.close()


def _ranges(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(r, list) and len(r) == 2 for r in value)
    )
