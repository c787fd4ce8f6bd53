"""The ``dask`` executor: each micro-batch of a stage is a task on a Dask cluster.

The runner's loops do not change: a stage on ``executor="dask"`` is called like any other
(:meth:`DaskExecutor.run` on one micro-batch, returning a :class:`ChunkOutcome`), so retries,
bisection, dead letters, contracts, hooks, events, counters, checkpoints and the
conservation check are the runner's own, on the driver. Only :func:`apply_stage` runs on a
worker.

- **Cluster.** The stages of a run whose :class:`~conveyor.core.options.DaskOptions` are
  equal share one :class:`_Session`: a ``Client`` of a running scheduler, or of a
  ``LocalCluster`` (worker processes behind nannies, on 127.0.0.1) started at the first
  micro-batch and closed when the last of its stages is closed at the end of the run.
- **What travels.** The stage is pickled once per run (cloudpickle, so lambdas and
  closures travel too) into a worker plugin that unpickles it on every worker, also on one
  that joins or is restarted later; tasks name it by key. Each micro-batch is pickled by
  the driver and each outcome by the worker, so a record or an output that cannot be
  pickled fails its micro-batch (and, bisected, its record: a dead letter naming the stage
  and the attribute) instead of the connection. A stage that cannot be pickled is refused
  before the run starts, naming the attribute that cannot.
- **Code.** A worker plugin gives every worker (including one started later, e.g. after a
  crash) the driver's import path and the project's stage files; with ``upload`` the
  project's stage packages are zipped and unpacked in each worker's local directory.
- **Hand-off.** The future of a stage's result is remembered beside its outputs; when the
  next Dask stage gets exactly those records (the same objects), its task takes the future
  as its argument and reads the data from the worker that holds it, not from the driver.
  The driver still receives each outcome, because it counts, hooks, checks and letters
  every record.
- **Back-pressure.** At most ``concurrency`` micro-batches of a stage are tasks at once (the
  runner's bound, enforced here too); channels between stages stay bounded as ever.
- **Worker death.** The scheduler re-runs a task whose worker died (``allowed_failures``
  times); after that the micro-batch fails with :class:`WorkerLostError`, a
  ``ConnectionError``: retried whole while the stage's retry policy allows, then bisected,
  so records are re-run on live workers or end, one by one, in the dead-letter queue.
  Nothing is lost and nothing is counted twice: the runner counts an outcome once.
- **Stateful stages** (keyed state, windows) stay on the driver: their state lives in the
  run's event loop and goes into every checkpoint at an aligned cut; the runner refuses
  ``executor="dask"`` for them, naming the stage.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import sys
import threading
import uuid
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle  # type: ignore[import-untyped]
import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from conveyor.core.context import PipelineContext
from conveyor.core.kinds import StageKind
from conveyor.core.options import DaskOptions, Executor, StageOptions
from conveyor.core.stage import PipelineStage
from conveyor.errors import PipelineDefinitionError
from conveyor.runtime.executors import (
    _FILE_MODULES,
    ChunkOutcome,
    StageExecutor,
    _apply_in_process,
    _FileModuleFinder,
    format_traceback,
)
from conveyor.runtime.report import StageStats

__all__ = ["DaskExecutor", "UnpicklableError", "WorkerLostError", "live_sessions", "transfers"]

_UPLOAD_LIMIT = 64 * 1024 * 1024
"""The most bytes of code ``upload`` sends (a project's stage packages, zipped)."""

_HANDOFF_KEPT = 64
"""Results kept on the cluster for a following Dask stage, at most (the oldest go first)."""

_TRANSFERS = {"sent": 0, "handed": 0}
"""Micro-batches sent from the driver, and handed from a Dask stage to the next on the
cluster, since the process started (see :func:`transfers`)."""

_SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", ".conveyor", "node_modules", ".dvc"}


class WorkerLostError(ConnectionError):
    """A micro-batch's task failed because the workers running it died (``KilledWorker``)
    or the connection to the cluster broke; transient: retried, then bisected."""


class UnpicklableError(TypeError):
    """A record going to a Dask worker, or an output coming back, cannot be pickled."""

    retryable = False


# -- the worker side -----------------------------------------------------------------------


_STAGES: dict[str, PipelineStage[Any, Any]] = {}
"""The stages this worker holds, by key (put there by :class:`_StageHolder`)."""


class _StageHolder(WorkerPlugin):
    """Holds one stage of a run on every worker: unpickled once by each worker's setup,
    also on a worker that joins or is restarted later, and dropped when the run ends.

    A plugin rather than a task's result: tasks that took a stage future as their argument
    depended on the one worker that held it, so the scheduler placed them there first and
    the other workers waited for work stealing (about 0.1 s at the start of every run).
    Tasks that name the stage by key depend on nothing, so they are spread over the
    workers as they free up."""

    def __init__(self, key: str, blob: bytes) -> None:
        self.key = key
        self.blob = blob

    def setup(self, worker: Any) -> None:
        _STAGES[self.key] = pickle.loads(self.blob)

    def teardown(self, worker: Any) -> None:
        _STAGES.pop(self.key, None)


def _dumps(value: Any) -> bytes:
    """Pickle ``value``: plain pickle first (fast), cloudpickle for lambdas and closures."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return blob


def _run_on_worker(key: str, payload: bytes, context: PipelineContext, handed: bool) -> bytes:
    """Run :func:`apply_stage` on a worker with the stage held under ``key``; ``payload`` is
    the pickled micro-batch, or with ``handed`` the pickled outcome of the previous Dask
    stage (its outputs are the batch)."""
    stage = _STAGES.get(key)
    if stage is None:  # its plugin's setup failed on this worker (its log says why): a
        # fault of the worker, not of the records, so retried (on another worker, perhaps)
        raise WorkerLostError(f"the stage {key} is not loaded on this Dask worker")
    data = pickle.loads(payload)
    records = data.outputs if handed else data
    outcome = _apply_in_process(stage, records, context)
    try:
        return _dumps(outcome)
    except Exception as exc:
        where, error = _unpicklable(outcome.outputs, "output") or ("output", exc)
        problem = UnpicklableError(
            f"stage {stage.name!r} on executor='dask' gave an {where} that cannot be pickled "
            f"back to the driver ({type(error).__name__}: {error})"
        )
        return _dumps(ChunkOutcome(error=problem, error_traceback=format_traceback(exc)))


class _CodeSetup(WorkerPlugin):
    """Gives a worker the driver's import path and the project's stage files (unpacked
    from ``archive`` into the worker's local directory when the code was uploaded)."""

    def __init__(
        self, name: str, sys_path: list[str], modules: dict[str, str], archive: bytes | None
    ) -> None:
        self.name = name
        self.sys_path = sys_path
        self.modules = modules
        self.archive = archive

    def setup(self, worker: Any) -> None:
        modules = dict(self.modules)
        if self.archive is not None:
            base = os.path.join(worker.local_directory, self.name)
            with zipfile.ZipFile(io.BytesIO(self.archive)) as archive:
                archive.extractall(base)
                roots = archive.comment.decode().split("\n") if archive.comment else []
            for name, path in modules.items():
                for root in roots:
                    if path.startswith(root + os.sep):
                        modules[name] = os.path.join(base, path[len(os.path.dirname(root)) + 1 :])
            if base not in sys.path:
                sys.path.insert(0, base)
        for entry in reversed(self.sys_path):
            if entry not in sys.path and os.path.isdir(entry):
                sys.path.insert(0, entry)
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FileModuleFinder)]
        if modules:
            sys.meta_path.insert(0, _FileModuleFinder(modules))


# -- the session: one client (and cluster) ---------------------------------------------------


def _unguarded_script() -> str | None:
    """The file of the script run as ``__main__`` (``python script.py``), if there is one:
    spawned worker processes import it, so code there that starts a cluster must be guarded
    by ``if __name__ == "__main__":``."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or getattr(main, "__spec__", None) is not None or not path:
        return None
    return str(path)


class _Session:
    """A client of one cluster, shared by the Dask stages of the runs that ask for it."""

    _lock = threading.Lock()
    _live: dict[DaskOptions, _Session] = {}  # noqa: RUF012 (the registry of the class)

    def __init__(self, settings: DaskOptions) -> None:
        self.settings = settings
        self.users = 0
        self.client: Any = None
        self.cluster: Any = None
        self.description = ""
        self.dashboard: str | None = None
        self._handoff: OrderedDict[int, tuple[list[Any], Any]] = OrderedDict()
        self._handoff_lock = threading.Lock()

    @classmethod
    def acquire(cls, settings: DaskOptions) -> _Session:
        """The started session of ``settings``, one more user of it (blocks while a cluster
        starts; call :meth:`release` once for every call)."""
        with cls._lock:
            session = cls._live.get(settings)
            if session is None:
                session = cls(settings)
                session._start()
                cls._live[settings] = session
            session.users += 1
            return session

    def release(self) -> None:
        """One user fewer; the last one closes the client and the cluster."""
        with self._lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._live.get(self.settings) is self:
                del self._live[self.settings]
        self._close()

    def _start(self) -> None:
        settings = self.settings
        address = settings.scheduler or dask.config.get("scheduler-address", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "port in use": it picks another
            if address:
                self.client = Client(  # type: ignore[no-untyped-call]
                    address, set_as_default=False, timeout="30s"
                )
                workers = len(self.client.scheduler_info().get("workers", {}))
                self.description = f"scheduler {address} ({workers} workers at start)"
            else:
                with dask.config.set(
                    {
                        "distributed.scheduler.allowed-failures": settings.allowed_failures,
                        "distributed.worker.profile.enabled": settings.profile,
                    }
                ):
                    try:
                        self.cluster = LocalCluster(  # type: ignore[no-untyped-call]
                            n_workers=settings.workers,
                            threads_per_worker=settings.threads_per_worker,
                            processes=True,
                            host="127.0.0.1",
                            scheduler_port=0,
                            dashboard_address="127.0.0.1:0" if settings.dashboard else None,
                            memory_limit=settings.memory_limit,
                            silence_logs=logging.ERROR,
                        )
                    except RuntimeError as exc:
                        script = _unguarded_script()
                        if script is None:
                            raise
                        raise PipelineDefinitionError(
                            f"the LocalCluster's worker processes could not start ({exc}): "
                            "each worker process imports the script that started it, "
                            f"{script}, so the code of that script that runs the pipeline "
                            'must be under `if __name__ == "__main__":` (Python\'s rule for '
                            "starting processes; `conveyor run` needs nothing of the kind)"
                        ) from exc
                try:
                    self.client = Client(  # type: ignore[no-untyped-call]
                        self.cluster, set_as_default=False
                    )
                except BaseException:
                    self.cluster.close()
                    raise
                threads = settings.threads_per_worker
                self.description = (
                    f"LocalCluster {self.cluster.scheduler_address} ({settings.workers} "
                    f"worker process{'es' if settings.workers > 1 else ''} x {threads} "
                    f"thread{'s' if threads > 1 else ''}, "
                    f"memory limit {settings.memory_limit})"
                )
        try:
            self.dashboard = self._dashboard(local=address is None)
            self.description += (
                f"; dashboard {self.dashboard}"
                if self.dashboard
                else "; dashboard: none"
                + (" (install bokeh for one)" if settings.dashboard and not address else "")
            )
            upload = settings.upload if settings.upload is not None else bool(address)
            self.client.register_plugin(_code_plugin(upload))
        except BaseException:
            self._close()
            raise

    def _dashboard(self, *, local: bool) -> str | None:
        services = self.client.scheduler_info().get("services", {})
        if "dashboard" not in services or not self.settings.dashboard:
            return None
        if local and importlib.util.find_spec("bokeh") is None:
            return None  # the HTTP server runs, but without bokeh it has no dashboard
        return str(self.client.dashboard_link)

    def _close(self) -> None:
        with self._handoff_lock:
            self._handoff.clear()
        try:
            if self.client is not None:
                self.client.close(timeout=10)
        finally:
            if self.cluster is not None:
                self.cluster.close(timeout=20)
            self.client = self.cluster = None

    # -- hand-off between consecutive Dask stages ---------------------------------------

    def remember(self, outputs: list[Any], future: Any) -> None:
        """``future`` holds (pickled) the outcome whose outputs are ``outputs``."""
        if not outputs:
            return
        with self._handoff_lock:
            self._handoff[id(outputs[0])] = (outputs, future)
            while len(self._handoff) > _HANDOFF_KEPT:
                self._handoff.popitem(last=False)

    def take(self, records: list[Any], handoff: bool = True) -> Any:
        """The future of the outcome whose outputs are exactly ``records``, or ``None``
        (always without ``handoff``)."""
        with self._handoff_lock:
            _TRANSFERS["sent"] += 1  # (taken back below when the batch is handed over)
            if not records or not handoff:
                return None
            found = self._handoff.get(id(records[0]))
            if found is None:
                return None
            outputs, future = found
            if len(outputs) != len(records) or any(
                a is not b for a, b in zip(outputs, records, strict=True)
            ):
                return None
            del self._handoff[id(records[0])]
            _TRANSFERS["handed"] += 1
            _TRANSFERS["sent"] -= 1
            return future


def transfers() -> dict[str, int]:
    """How many micro-batches went to Dask workers from the driver (``sent``) and how many
    were handed from one Dask stage's task to the next one's (``handed``), so far."""
    return dict(_TRANSFERS)


def live_sessions() -> int:
    """Clients (and clusters) open now: 0 between runs (tests check it)."""
    with _Session._lock:
        return len(_Session._live)


@atexit.register
def _close_all() -> None:  # a run that never closed (killed loop): no stray workers
    with _Session._lock:
        sessions = list(_Session._live.values())
        _Session._live.clear()
    for session in sessions:
        with contextlib.suppress(Exception):
            session._close()


def _code_plugin(upload: bool) -> _CodeSetup:
    modules = dict(_FILE_MODULES)
    archive = _archive(modules) if upload and modules else None
    digest = hashlib.sha256(archive or repr(sorted(modules.items())).encode()).hexdigest()
    return _CodeSetup(f"conveyor-code-{digest[:12]}", list(sys.path), modules, archive)


def _archive(modules: dict[str, str]) -> bytes:
    """The packages holding the project's stage files (``pkg/stages/10_x.py`` gives
    ``pkg``), zipped; the zip's comment lists their driver paths."""
    roots = sorted(
        {str(Path(path).resolve().parents[1]) for path in modules.values() if Path(path).is_file()}
    )
    buffer = io.BytesIO()
    size = 0
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for root in roots:
            for path in _files(Path(root)):
                size += path.stat().st_size
                if size > _UPLOAD_LIMIT:
                    raise PipelineDefinitionError(
                        f"the code to upload to the Dask workers ({root}) is over "
                        f"{_UPLOAD_LIMIT // 2**20} MiB; keep data out of the package, or "
                        "install the project on the workers and set dask upload: false"
                    )
                archive.write(path, str(path.relative_to(Path(root).parent)))
        archive.comment = "\n".join(roots).encode()
    return buffer.getvalue()


def _files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if path.is_file() and not any(p in _SKIP_DIRS or p.startswith(".") for p in parts):
            yield path


# -- pickling checks -----------------------------------------------------------------------


def _unpicklable(value: Any, path: str, depth: int = 0) -> tuple[str, BaseException] | None:
    """The deepest attribute path under ``value`` that cannot be pickled, with its error;
    ``None`` if ``value`` pickles."""
    try:
        cloudpickle.dumps(value)
    except Exception as exc:
        if depth < 4:
            for name, part in _parts(value):
                found = _unpicklable(part, f"{path}{name}", depth + 1)
                if found is not None:
                    return found
        return path, exc
    return None


def _parts(value: Any) -> Iterator[tuple[str, Any]]:
    """What ``value`` holds, each with the way to name it after its owner's path."""
    if isinstance(value, dict):
        for key, item in list(value.items())[:1000]:
            yield f"[{key!r}]", item
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(list(value)[:1000]):
            yield f"[{index}]", item
    elif callable(value) and hasattr(value, "__code__"):
        cells = getattr(value, "__closure__", None) or ()
        for name, cell in zip(value.__code__.co_freevars, cells, strict=False):
            with contextlib.suppress(ValueError):  # an empty cell
                yield f".<closure {name}>", cell.cell_contents
    else:
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict):
            for key, item in state.items():
                yield f".{key}", item
        for cls in type(value).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and slot not in ("__dict__", "__weakref__"):
                    with contextlib.suppress(AttributeError):
                        yield f".{slot}", getattr(value, slot)


# -- the executor --------------------------------------------------------------------------


class _Call:
    """One task in flight: the thread that submits it and the loop that may cancel it."""

    def __init__(self) -> None:
        self.future: Any = None
        self.cancelled = False
        self.lock = threading.Lock()

    def cancel(self) -> None:
        with self.lock:
            self.cancelled = True
            future = self.future
        if future is not None:
            with contextlib.suppress(Exception):
                future.cancel()


class DaskExecutor(StageExecutor):
    """Runs each micro-batch of a stage as a task on a Dask cluster (see the module
    docstring). A sink on this executor writes on the driver: it holds this process's
    connections and files."""

    kind = Executor.DASK

    def __init__(self, options: StageOptions, name: str) -> None:
        self._settings = options.dask or DaskOptions()
        self._name = name
        self._limit = max(options.concurrency, 1)
        self._session: _Session | None = None
        self._start_lock = threading.Lock()
        self._stage_key: str | None = None
        self._stage: PipelineStage[Any, Any] | None = None
        self._blob: bytes | None = None
        self._waiters: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._calls: set[_Call] = set()
        self._stats: StageStats | None = None
        self._closed = False

    @property
    def session(self) -> _Session | None:
        """The cluster's session, once the first micro-batch started it."""
        return self._session

    def bind(self, stats: StageStats) -> None:
        self._stats = stats
        if stats.kind is StageKind.SINK:
            stats.cluster = "the driver (a sink writes from this process)"
        else:
            stats.cluster = "dask (not started: no micro-batch reached it)"

    def check(self, stage: PipelineStage[Any, Any]) -> None:
        self._stage = stage
        try:
            self._blob = cloudpickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            where, error = _unpicklable(stage, "stage") or ("stage", exc)
            attribute = (
                f"its attribute {where.removeprefix('stage')!r}"
                if where != "stage"
                else "the stage object"
            )
            raise PipelineDefinitionError(
                f"stage {stage.name!r} uses executor='dask' but cannot be pickled to the "
                f"workers: {attribute} cannot ({type(error).__name__}: {error}); make it "
                "picklable (open connections and files lazily, in the worker), or run the "
                "stage on another executor"
            ) from exc

    async def ready(self) -> None:
        if self._session is None:
            await asyncio.to_thread(self._open)

    def _open(self) -> _Session:
        """Start (or join) the cluster and load the stage on it, once."""
        with self._start_lock:
            if self._closed:
                raise RuntimeError(f"the dask executor of stage {self._name!r} is closed")
            if self._session is not None:
                return self._session
            session = _Session.acquire(self._settings)
            try:
                if self._stage is not None:
                    self._stage_key = self._load(session, self._stage)
            except BaseException:
                session.release()
                raise
            self._session = session
            self._waiters = concurrent.futures.ThreadPoolExecutor(
                self._limit, thread_name_prefix=f"conveyor-dask-{self._name}"
            )
            if self._stats is not None:
                self._stats.cluster = session.description
            return session

    def _load(self, session: _Session, stage: PipelineStage[Any, Any]) -> str:
        """Put the stage on every worker (:class:`_StageHolder`); its key."""
        blob = self._blob or cloudpickle.dumps(stage, protocol=pickle.HIGHEST_PROTOCOL)
        key = f"conveyor-stage-{self._name}-{uuid.uuid4().hex}"
        try:
            _within(_LOAD_SECONDS, session.client.register_plugin, _StageHolder(key, blob), key)
        except Exception as exc:
            _forget(session, key)  # the scheduler keeps a plugin whose setup failed somewhere
            raise PipelineDefinitionError(
                f"stage {stage.name!r} cannot be loaded on the Dask workers "
                f"({type(exc).__name__}: {exc}); install the project's code and its "
                "dependencies on the workers (same Python, same conveyor), or let conveyor "
                "upload the project's stage packages (dask upload: true)"
            ) from exc
        return key

    async def run(
        self, stage: PipelineStage[Any, Any], records: list[Any], context: PipelineContext
    ) -> ChunkOutcome:
        if self._session is None:
            self._stage = stage
            await asyncio.to_thread(self._open)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._limit)
        light = PipelineContext(
            pipeline_id=context.pipeline_id,
            pipeline_name=context.pipeline_name,
            started_at=context.started_at,
            metadata=dict(context.metadata),
        )
        call = _Call()
        loop = asyncio.get_running_loop()
        async with self._slots:  # the stage's tasks in flight, at most
            assert self._waiters is not None
            self._calls.add(call)
            try:
                return await loop.run_in_executor(self._waiters, self._remote, call, records, light)
            except asyncio.CancelledError:
                call.cancel()  # an abort or a timeout: the cluster drops the task
                raise
            finally:
                self._calls.discard(call)

    def _remote(self, call: _Call, records: list[Any], context: PipelineContext) -> ChunkOutcome:
        """Submit one task and wait for its outcome (in a waiter thread)."""
        session = self._session
        assert session is not None
        assert session.client is not None
        client = session.client
        handed = session.take(records, self._settings.handoff)
        if handed is not None:
            payload: Any = handed
        else:
            try:
                payload = _dumps(records)
            except Exception as exc:
                where, error = _unpicklable(records, "record") or ("record", exc)
                problem = UnpicklableError(
                    f"stage {self._name!r} on executor='dask': a {where} cannot be pickled "
                    f"to the workers ({type(error).__name__}: {error})"
                )
                return ChunkOutcome(error=problem, error_traceback=format_traceback(exc))
        with call.lock:
            if call.cancelled:
                return ChunkOutcome(error=asyncio.CancelledError())
            future = call.future = client.submit(
                _run_on_worker,
                self._stage_key,
                payload,
                context,
                handed is not None,
                key=f"conveyor-{self._name}-{uuid.uuid4().hex}",
                pure=False,
            )
        try:
            blob = future.result()
        except Exception as exc:
            return _lost(self._name, exc)
        outcome: ChunkOutcome = pickle.loads(blob)
        if self._settings.handoff and outcome.error is None:
            session.remember(outcome.outputs, future)
        return outcome

    def close(self) -> None:
        with self._start_lock:
            self._closed = True
            session, self._session = self._session, None
        for call in list(self._calls):
            call.cancel()
        if self._waiters is not None:
            self._waiters.shutdown(wait=False, cancel_futures=True)
        if session is None:
            return
        closing = session.cluster is not None and session.users == 1  # its own LocalCluster
        if self._stage_key is not None and not closing:
            _forget(session, self._stage_key)
        self._stage_key = None
        session.release()


_LOAD_SECONDS = 120.0
"""How long the workers may take to load a stage (import its code, unpickle it)."""


def _within(seconds: float, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a helper thread, given ``seconds`` at most: a TimeoutError after
    that (the call goes on in the background). For the client's calls that wait for every
    worker, which have no timeout of their own: a worker holding the GIL in a stuck task,
    or a scheduler that is gone, must not hold up the start or the end of a run."""
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def call() -> None:
        try:
            done.set_result(fn(*args))
        except BaseException as exc:
            done.set_exception(exc)

    threading.Thread(target=call, name="conveyor-dask-call", daemon=True).start()
    try:
        return done.result(timeout=seconds)
    except concurrent.futures.TimeoutError:
        raise TimeoutError(f"no answer from the Dask cluster within {seconds:g} s") from None


def _forget(session: _Session, key: str) -> None:
    """Unregister the stage plugin ``key`` (within 5 s; a failure only leaves it behind)."""
    client = session.client
    if client is not None:
        with contextlib.suppress(Exception):
            _within(5.0, client.unregister_worker_plugin, key)


def _lost(name: str, exc: BaseException) -> ChunkOutcome:
    """The outcome of a task that did not come back: its workers died, or the cluster did."""
    kind = type(exc).__name__
    if kind in ("KilledWorker", "CommClosedError", "FutureCancelledError", "CancelledError") or (
        isinstance(exc, OSError | TimeoutError)
    ):
        error: BaseException = WorkerLostError(
            f"stage {name!r}: the Dask task of a micro-batch did not come back ({kind}: {exc})"
        )
        error.__cause__ = exc
    else:
        error = exc
    return ChunkOutcome(error=error, error_traceback=format_traceback(exc))
