"""Sinks: where a run's records leave. An object with a lifecycle, not a stage in disguise.

A run calls :meth:`Sink.open` once before the first write, :meth:`Sink.write` with each
micro-batch (in order, one call at a time) and :meth:`Sink.close` exactly once at the end,
on every path: success, a failed run, an interruption or an error, after any write still
running has finished. A record counts as delivered once ``write`` returned, so ``close``
must make durable everything the sink was given, however the run ended (it is told how,
for its own bookkeeping): a sink that threw buffered records away would lose them.

In a run with checkpoints (``checkpoint=`` in :class:`~conveyor.RunOptions`), the runner
also calls :meth:`Sink.commit` at each checkpoint, between two writes, once every record
written since the previous commit has fully left the pipeline: ``commit`` makes those
writes durable and returns what the sink needs to find its place again (a file's committed
length); a resumed run's :meth:`Sink.open` is given the checkpoint back
(``run.resume_from``) and restores that place (truncates the file). A sink whose
:meth:`Sink.checkpoint_store` returns a store keeps the checkpoint itself, *in the same
transaction* as its rows: nothing is written twice, whatever the
moment of a crash. Any other sink is at-least-once across a crash: records written after
the last checkpoint are written again on resume (the report counts them), which an upsert
by key makes harmless.

A failed ``write`` is retried with back-off as a whole micro-batch (the sink's
``RetryPolicy``, ``stage_options["sink"]``); once retries are spent its records go to the
dead-letter queue. A sink that sets ``idempotent = True`` (writing a record twice does no
harm, e.g. an upsert by key) is instead split in halves to isolate the records that fail;
any other sink never sees a record twice. Plain callables and stages are accepted as sinks
too (:func:`as_sink`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from conveyor.core._callables import call_maybe_async
from conveyor.core.context import PipelineContext
from conveyor.core.options import RetryPolicy
from conveyor.core.result import RunStatus
from conveyor.core.stage import PipelineStage, run_stage
from conveyor.errors import PipelineDefinitionError

if TYPE_CHECKING:
    from conveyor.core.checkpoint import Checkpoint, CheckpointStore

__all__ = ["FunctionSink", "RunInfo", "RunMode", "Sink", "StageSink", "as_sink"]

RunMode = Literal["run", "stage", "replay"]
"""Why a run writes: a whole run, a single-stage run (``stage=NAME``), a replay of dead
letters (a sink that makes a fresh file per run should append instead)."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a sink is told when it is opened."""

    run_id: str
    pipeline_name: str
    mode: RunMode = "run"
    checkpointing: bool = False
    """The run checkpoints: :meth:`Sink.commit` is called, and only committed writes count."""
    resume_from: Checkpoint | None = None
    """The checkpoint this run resumes: restore the place its ``sink`` field records."""

    @property
    def replay(self) -> bool:
        """Whether this run replays dead letters (the sink already holds earlier output)."""
        return self.mode == "replay"

    @property
    def appends(self) -> bool:
        """Whether the sink already holds output this run continues: a replay of dead
        letters, or a resume from a checkpoint. A sink that starts a fresh file per run
        must not start afresh then."""
        return self.mode == "replay" or self.resume_from is not None


class Sink(ABC):
    """Base class of sinks; subclass it and implement :meth:`write`.

    >>> class Printer(Sink):
    ...     def write(self, records):
    ...         print(records)
    >>> Printer().name, Printer.idempotent
    ('sink', False)
    """

    name: str = "sink"
    idempotent: ClassVar[bool] = False
    """Writing the same record twice does no harm (an upsert by key): then a failing
    micro-batch is split to isolate the bad records instead of dead-lettering it whole."""

    default_retry: ClassVar[RetryPolicy | None] = None
    """The retries of a failed write unless ``stage_options["sink"]`` sets them (the
    connectors' sinks retry an unreachable database with back-off)."""
    exactly_once: ClassVar[bool] = False
    """Across a crash and a resume, no record ends up in it twice: it stores the checkpoint
    in the same transaction as its rows (:meth:`checkpoint_store`), or its :meth:`commit`
    returns the place it truncates back to on resume (a file's length). Otherwise it is
    at-least-once, and the report counts the records replayed into it."""

    @property
    def identity(self) -> str:
        """Where this sink writes (a table, a file), for checkpoints: a checkpoint of the
        same pipeline into another place is refused. By default its class."""
        return f"{type(self).__module__}.{type(self).__qualname__}"

    @property
    def description(self) -> str:
        """Where it writes, for people: a file's name, a table (summaries and run reports
        show it beside the sink's row). By default the class's name."""
        return type(self).__qualname__

    def open(self, run: RunInfo) -> Any:  # noqa: B027 - an optional hook, not abstract
        """Called once before the first write (may be ``async``). When ``run.resume_from``
        is set, go back to the place its ``sink`` field records."""

    def checkpoint_store(self) -> CheckpointStore | None:
        """The store that keeps this sink's checkpoints in its own database (then
        :meth:`commit` writes the checkpoint in the same transaction as the rows); ``None``
        (the default): the run's checkpoint store. Called before :meth:`open`."""
        return None

    def commit(self, checkpoint: Checkpoint) -> Any:
        """Make every record written since the last commit durable (may be ``async``), and
        return what a resume needs to find this place again (JSON-able, e.g. a file's
        length; ``None`` if nothing). A sink with a :meth:`checkpoint_store` also writes
        ``checkpoint`` there, in the same transaction. Called only in runs with checkpoints,
        between writes, never concurrently with one."""
        return None

    @abstractmethod
    def write(self, records: list[Any]) -> Any:
        """Store one micro-batch, all or nothing if you can (may be ``async``)."""

    def close(self, status: RunStatus) -> Any:  # noqa: B027 - an optional hook
        """Called exactly once at the end of the run, however it ended (may be ``async``):
        make durable everything :meth:`write` was given. ``status.finished`` says the run
        read its whole input; ``interrupted`` that it drained after a signal; ``aborted``
        that records in flight were left (they are below the report's low watermark).
        """


class FunctionSink(Sink):
    """A sink from a sync or async callable receiving micro-batches (lists)."""

    def __init__(self, fn: Callable[[list[Any]], Any], *, name: str = "sink") -> None:
        if not callable(fn):
            raise PipelineDefinitionError(f"sink must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name

    def write(self, records: list[Any]) -> Any:
        return self.fn(records)

    @property
    def description(self) -> str:
        """The callable's name."""
        return str(getattr(self.fn, "__qualname__", None) or type(self.fn).__qualname__)

    def __repr__(self) -> str:
        return f"<FunctionSink {self.fn!r}>"


class StageSink(Sink):
    """A sink from a stage: each micro-batch is processed by it and its output dropped;
    a failed result fails the write. Stages are idempotent (seed 000), so a failing
    micro-batch is split to isolate the records the stage refuses."""

    idempotent = True

    def __init__(self, stage: PipelineStage[list[Any], Any]) -> None:
        self.stage = stage
        self.name = "sink"

    @property
    def description(self) -> str:
        """The stage's name."""
        return str(getattr(self.stage, "name", "") or type(self.stage).__qualname__)

    async def write(self, records: list[Any]) -> None:
        result = await run_stage(self.stage, records, PipelineContext(pipeline_name="sink"))
        if not result.success:
            assert result.error is not None
            raise result.error


def as_sink(sink: object) -> Sink:
    """``sink`` as a :class:`Sink`: a Sink as it is, a stage in a :class:`StageSink`, a
    callable in a :class:`FunctionSink`; anything else is a definition error."""
    if isinstance(sink, Sink):
        return sink
    if isinstance(sink, PipelineStage):
        return StageSink(sink)
    if callable(sink):
        return FunctionSink(sink)
    raise PipelineDefinitionError(
        "sink must be a conveyor.Sink, a callable taking a list of records, or a "
        f"PipelineStage; got {type(sink).__name__}"
    )


async def open_sink(sink: Sink, run: RunInfo) -> None:
    """Call ``sink.open(run)``, awaiting it when it is async."""
    await call_maybe_async(sink.open, run)


async def commit_sink(sink: Sink, checkpoint: Checkpoint) -> Any:
    """Call ``sink.commit(checkpoint)``, awaiting it when it is async."""
    return await call_maybe_async(sink.commit, checkpoint)


async def close_sink(sink: Sink, status: RunStatus) -> None:
    """Call ``sink.close(status)``, awaiting it when it is async."""
    await call_maybe_async(sink.close, status)
