"""Where a stage's work runs: on the loop, in threads, or in processes.

Every executor runs the same thing, :func:`apply_stage`, on one micro-batch and returns a
:class:`ChunkOutcome`; only the place differs. Failures carry a traceback formatted where the
exception was live, so a dead letter from a worker process still shows the real frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import pickle
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.context import PipelineContext
from conveyor.core.options import Executor, StageOptions
from conveyor.core.stage import PipelineStage, run_stage
from conveyor.core.stages import RecordStage
from conveyor.errors import PipelineDefinitionError

__all__ = ["ChunkOutcome", "FailedRecord", "StageExecutor", "apply_stage", "make_executor"]


@dataclass(slots=True)
class FailedRecord:
    """One record that failed in a stage, with its exception and formatted traceback."""

    item: Any
    error: BaseException
    traceback: str = ""


@dataclass(slots=True)
class ChunkOutcome:
    """What a stage made of one micro-batch.

    For record-wise results ``error`` is ``None`` and ``failures`` names the bad records; a
    stage that can only fail as a whole sets ``error`` (and its traceback).
    """

    outputs: list[Any] = field(default_factory=list)
    filtered: int = 0
    failures: list[FailedRecord] = field(default_factory=list)
    error: BaseException | None = None
    error_traceback: str = ""
    raw: Any = None


def _format(error: BaseException) -> str:
    return "".join(traceback.format_exception(error))


def as_records(data: Any) -> list[Any]:
    """A stage's output as stream records: a list is its records, anything else one record."""
    if isinstance(data, list):
        return data
    if isinstance(data, tuple):
        return list(data)
    return [data]


async def apply_stage(
    stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
) -> ChunkOutcome:
    """Run ``stage`` on one micro-batch, never raising for a stage error."""
    if isinstance(stage, RecordStage):
        try:
            outcome = await stage.process_records(records, context, stop_on_error=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return ChunkOutcome(error=exc, error_traceback=_format(exc))
        return ChunkOutcome(
            outputs=outcome.outputs,
            filtered=outcome.filtered,
            failures=[FailedRecord(f.item, f.error, _format(f.error)) for f in outcome.failures],
        )
    result = await run_stage(stage, records, context)
    if not result.success:
        assert result.error is not None
        return ChunkOutcome(error=result.error, error_traceback=_format(result.error))
    return ChunkOutcome(
        outputs=as_records(result.data),
        raw=result.data,
        filtered=result.records_filtered,
        failures=[FailedRecord(f.item, f.error, _format(f.error)) for f in result.failures],
    )


class StageExecutor:
    """Runs :func:`apply_stage` somewhere; the base class runs it inline on the loop."""

    kind = Executor.INLINE

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        """Process one micro-batch."""
        return await apply_stage(stage, records, context)

    def check(self, stage: PipelineStage[Any, Any]) -> None:
        """Raise :class:`PipelineDefinitionError` if ``stage`` cannot run here."""

    def close(self) -> None:
        """Release pools; called once at the end of a run."""


_thread_state = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop:
    loop: asyncio.AbstractEventLoop | None = getattr(_thread_state, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_state.loop = loop
    return loop


def _apply_blocking(
    stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
) -> ChunkOutcome:
    """Run :func:`apply_stage` to completion on this worker's own event loop."""
    return _thread_loop().run_until_complete(apply_stage(stage, records, context))


class ThreadExecutor(StageExecutor):
    """Runs each micro-batch in a worker thread (for blocking I/O)."""

    kind = Executor.THREAD

    def __init__(self, workers: int, name: str) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, f"conveyor-{name}")
        # The workers' event loops, closed with the executor (an unclosed loop warns).
        self._lock = threading.Lock()
        self._loops: set[asyncio.AbstractEventLoop] = set()
        self._busy: set[asyncio.AbstractEventLoop] = set()
        self._closed = False

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._apply, stage, records, context)

    def _apply(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread executor is closed")
            loop = _thread_loop()
            self._loops.add(loop)
            self._busy.add(loop)
        try:
            return loop.run_until_complete(apply_stage(stage, records, context))
        finally:
            with self._lock:
                self._busy.discard(loop)
                if self._closed:  # a thread that outlived the run closes its own loop
                    loop.close()

    def close(self) -> None:
        # Do not wait: a thread stuck past its timeout must not hang the run's end.
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
            idle = self._loops - self._busy
        for loop in idle:
            loop.close()


def _apply_in_process(
    stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
) -> ChunkOutcome:
    outcome = _apply_blocking(stage, records, context)
    # Exceptions travel back pickled; make sure each one can, keeping its formatted traceback.
    for failure in outcome.failures:
        failure.error = _picklable(failure.error)
    if outcome.error is not None:
        outcome.error = _picklable(outcome.error)
    return outcome


class RemoteError(Exception):
    """Stands in for an exception from a worker process that could not be pickled."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        super().__init__(f"{type_name}: {message}")

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (type(self), (self.type_name, str(self).partition(": ")[2]))


def _picklable(error: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        kind = type(error)
        return RemoteError(f"{kind.__module__}.{kind.__qualname__}", str(error))
    return error


class ProcessExecutor(StageExecutor):
    """Runs each micro-batch in a worker process (CPU-bound pure Python).

    Workers start with the ``forkserver`` method where available (safe beside threads), else
    ``spawn``; the stage object is pickled to the workers, so its functions must be defined
    at module level.
    """

    kind = Executor.PROCESS

    def __init__(self, workers: int, name: str) -> None:
        methods = multiprocessing.get_all_start_methods()
        method = "forkserver" if "forkserver" in methods else "spawn"
        self._pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context(method)
        )

    def check(self, stage: PipelineStage[Any, Any]) -> None:
        try:
            pickle.dumps(stage)
        except Exception as exc:
            raise PipelineDefinitionError(
                f"stage {stage.name!r} uses executor='process' but cannot be pickled "
                f"({type(exc).__name__}: {exc}); define its functions at module level "
                "(no lambdas or closures), or use executor='thread'"
            ) from exc

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        loop = asyncio.get_running_loop()
        light = PipelineContext(
            pipeline_id=context.pipeline_id,
            pipeline_name=context.pipeline_name,
            started_at=context.started_at,
            metadata=dict(context.metadata),
        )
        return await loop.run_in_executor(self._pool, _apply_in_process, stage, records, light)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(options: StageOptions, name: str) -> StageExecutor:
    """The executor that ``options`` asks for."""
    if options.executor is Executor.THREAD:
        return ThreadExecutor(options.workers or max(options.concurrency, 1), name)
    if options.executor is Executor.PROCESS:
        return ProcessExecutor(options.workers or max(options.concurrency, 2), name)
    return StageExecutor()
