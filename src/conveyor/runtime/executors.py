"""Where a stage's work runs: on the loop, in threads, in processes, or on a Dask cluster
(:mod:`conveyor.runtime.dask_executor`, imported only when a stage asks for it).

Every executor runs the same thing, :func:`apply_stage`, on one micro-batch and returns a
:class:`ChunkOutcome`; only the place differs. Failures carry a traceback formatted where the
exception was live, so a dead letter from a worker process still shows the real frames.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.abc
import importlib.machinery
import importlib.util
import multiprocessing
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from conveyor.core._callables import call_maybe_async
from conveyor.core._render import error_message, format_traceback
from conveyor.core.context import PipelineContext
from conveyor.core.options import Executor, StageOptions
from conveyor.core.stage import PipelineStage, run_stage
from conveyor.core.stages import RecordStage
from conveyor.errors import PipelineDefinitionError

if TYPE_CHECKING:
    from conveyor.runtime.report import StageStats

__all__ = [
    "ChunkOutcome",
    "FailedRecord",
    "StageExecutor",
    "apply_stage",
    "format_traceback",
    "make_executor",
]


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
            return ChunkOutcome(error=exc, error_traceback=format_traceback(exc))
        return ChunkOutcome(
            outputs=outcome.outputs,
            filtered=outcome.filtered,
            failures=[
                FailedRecord(f.item, f.error, format_traceback(f.error)) for f in outcome.failures
            ],
        )
    result = await run_stage(stage, records, context)
    if not result.success:
        assert result.error is not None
        return ChunkOutcome(error=result.error, error_traceback=format_traceback(result.error))
    return ChunkOutcome(
        outputs=as_records(result.data),
        raw=result.data,
        filtered=result.records_filtered,
        failures=[
            FailedRecord(f.item, f.error, format_traceback(f.error)) for f in result.failures
        ],
    )


class StageExecutor:
    """Runs :func:`apply_stage` somewhere; the base class runs it inline on the loop."""

    kind = Executor.INLINE

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        """Process one micro-batch."""
        return await apply_stage(stage, records, context)

    async def call(self, fn: Callable[[Any], Any], records: Any) -> Any:
        """Call ``fn(records)`` here (a sink's write or commit), awaiting it when async."""
        return await call_maybe_async(fn, records)

    async def ready(self) -> None:
        """Wait until workers can take a call at once (a timeout starts after this)."""

    def bind(self, stats: StageStats) -> None:
        """The counters of the part this executor runs (an executor may note where it ran
        in them: :attr:`StageStats.cluster`)."""

    def check(self, stage: PipelineStage[Any, Any]) -> None:
        """Raise :class:`PipelineDefinitionError` if ``stage`` cannot run here."""

    def wait_idle(self, timeout: float) -> bool:
        """Wait for calls still running somewhere else than on the loop (none here)."""
        return True

    def abandon(self) -> None:
        """A call timed out and may still occupy a worker: give later calls fresh workers."""

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
    """Runs each micro-batch in a worker thread (for blocking I/O).

    Each worker thread runs the stage's coroutine on an event loop of its own. A thread stuck
    past a timeout cannot be killed: :meth:`abandon` leaves it to finish alone and gives
    later calls a fresh pool, so one hung record does not starve the others.
    """

    kind = Executor.THREAD

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._name = name
        self._pool = self._new_pool()
        # The workers' event loops, closed with their pool (an unclosed loop warns).
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loops: dict[asyncio.AbstractEventLoop, int] = {}
        self._busy: set[asyncio.AbstractEventLoop] = set()
        self._generation = 0
        self._closed = False

    def _new_pool(self) -> concurrent.futures.ThreadPoolExecutor:
        return concurrent.futures.ThreadPoolExecutor(self._workers, f"conveyor-{self._name}")

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        return cast(
            ChunkOutcome, await self._in_worker(lambda: apply_stage(stage, records, context))
        )

    async def call(self, fn: Callable[[Any], Any], records: Any) -> Any:
        return await self._in_worker(lambda: call_maybe_async(fn, records))

    async def _in_worker(self, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        loop = asyncio.get_running_loop()
        with self._lock:
            pool, generation = self._pool, self._generation
        return await loop.run_in_executor(pool, self._apply, generation, make)

    def _apply(self, generation: int, make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """Run the coroutine ``make()`` gives on this worker thread's own event loop."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread executor is closed")
            loop = _thread_loop()
            self._loops[loop] = generation
            self._busy.add(loop)
        try:
            return loop.run_until_complete(make())
        finally:
            with self._lock:
                self._busy.discard(loop)
                self._idle.notify_all()
                if self._closed or generation != self._generation:
                    # A thread that outlived its pool (or the run) closes its own loop.
                    self._loops.pop(loop, None)
                    loop.close()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the calls still running in workers (a sink's
        write cancelled by an abort) to end; return whether they did."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._busy, timeout)

    def _close_idle(self, generation: int | None) -> None:
        """Close the idle loops of ``generation`` (all idle loops for ``None``)."""
        with self._lock:
            idle = [
                loop
                for loop, gen in self._loops.items()
                if loop not in self._busy and (generation is None or gen == generation)
            ]
            for loop in idle:
                del self._loops[loop]
        for loop in idle:
            loop.close()

    def abandon(self) -> None:
        with self._lock:
            old, old_generation = self._pool, self._generation
            self._pool = self._new_pool()
            self._generation += 1
        old.shutdown(wait=False)  # queued calls of other batches still run there
        self._close_idle(old_generation)

    def close(self) -> None:
        # Do not wait: a thread stuck past its timeout must not hang the run's end.
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._closed = True
        self._close_idle(None)


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
        return RemoteError(f"{kind.__module__}.{kind.__qualname__}", error_message(error))
    return error


_FILE_MODULES: dict[str, str] = {}
"""Modules loaded from a file under a name the import system cannot find by itself (a
project's ``10_preprocess.py`` is ``pipeline.stages.preprocess``), by name."""


def register_file_module(name: str, path: str) -> None:
    """Tell worker processes where module ``name`` comes from, so that stages defined in it
    can be unpickled there (project discovery calls this for every stage file)."""
    _FILE_MODULES[name] = path


class _FileModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the registered file-backed modules in a worker process."""

    def __init__(self, modules: dict[str, str]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        origin = self.modules.get(fullname)
        return None if origin is None else importlib.util.spec_from_file_location(fullname, origin)


def _init_worker(sys_path: list[str], modules: dict[str, str]) -> None:
    """Worker initializer: the parent's import path and file-backed modules; and ignore
    Ctrl-C, which reaches the whole process group, because only the parent decides how to
    stop (drain, then abort) and a worker killed by it would break the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for entry in reversed(sys_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    if modules:
        sys.meta_path.insert(0, _FileModuleFinder(dict(modules)))


def _noop() -> None:
    """Submitted once to start a pool's workers at once."""


class ProcessExecutor(StageExecutor):
    """Runs each micro-batch in a worker process (CPU-bound pure Python).

    When the process has a single thread, workers are forked right away: they inherit
    everything already imported, so the first micro-batch does not wait for imports (as
    ``multiprocessing.Pool`` does). Beside other threads, where forking is unsafe, workers
    start from a ``forkserver`` (or ``spawn``). The stage object is pickled to the workers,
    so its functions must be defined at module level. Workers ignore SIGINT.
    """

    kind = Executor.PROCESS

    def __init__(self, workers: int, name: str) -> None:
        self._workers = workers
        self._pool = self._new_pool()

    def _new_pool(self) -> concurrent.futures.ProcessPoolExecutor:
        methods = multiprocessing.get_all_start_methods()
        if "fork" in methods and threading.active_count() == 1:
            method = "fork"
        else:
            method = "forkserver" if "forkserver" in methods else "spawn"
        pool = concurrent.futures.ProcessPoolExecutor(
            self._workers,
            mp_context=multiprocessing.get_context(method),
            initializer=_init_worker,
            initargs=(list(sys.path), dict(_FILE_MODULES)),
        )
        # Starts every worker now (forked while this is the only thread); ready() waits for it.
        self._warm = pool.submit(_noop)
        return pool

    async def ready(self) -> None:
        await asyncio.wrap_future(self._warm)

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
        while True:
            pool = self._pool
            try:
                return await loop.run_in_executor(pool, _apply_in_process, stage, records, light)
            except BrokenProcessPool:
                if pool is self._pool:  # broken by something else than abandon(): raise
                    raise
                # The pool was replaced after another batch's timeout: run again there.

    async def call(self, fn: Callable[[Any], Any], records: Any) -> Any:
        raise PipelineDefinitionError(
            "a sink cannot run on the process executor (it holds connections and files of "
            "this process); use executor='thread' for a sink that blocks"
        )

    def abandon(self) -> None:
        # A worker stuck past its timeout is killed; batches running beside it are re-run
        # on the fresh pool (stages are idempotent).
        old, self._pool = self._pool, self._new_pool()
        processes: dict[int, Any] = getattr(old, "_processes", None) or {}
        for process in list(processes.values()):
            process.terminate()
        old.shutdown(wait=False)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_executor(options: StageOptions, name: str) -> StageExecutor:
    """The executor that ``options`` asks for."""
    if options.executor is Executor.THREAD:
        return ThreadExecutor(options.workers or max(options.concurrency, 1), name)
    if options.executor is Executor.PROCESS:
        return ProcessExecutor(options.workers or max(options.concurrency, 2), name)
    if options.executor is Executor.DASK:
        try:
            from conveyor.runtime.dask_executor import DaskExecutor
        except ImportError as exc:
            raise PipelineDefinitionError(
                f"stage {name!r} uses executor='dask', which needs Dask distributed "
                f"({exc}); install it with: pip install 'conveyor[dask]'"
            ) from None
        return DaskExecutor(options, name)
    return StageExecutor()
