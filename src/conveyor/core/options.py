"""Run options: how a run goes (:class:`RunOptions`) and how each stage runs in it
(:class:`StageOptions`, :class:`RetryPolicy`).

These are plain, frozen values and the one place where run defaults are written down: the
pipeline carries stage options, every way of running (``Pipeline.run/arun/stream``, a
project run, a ``stage=NAME`` run, a replay, a branch's arms) builds one :class:`RunOptions`
and hands it to the runner.
"""

from __future__ import annotations

import math
import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Literal, TypedDict

from conveyor.core.checkpoint import CheckpointInterval
from conveyor.errors import PipelineDefinitionError

__all__ = [
    "ContractMode",
    "DaskOptions",
    "DeadLetterBudget",
    "Executor",
    "RetryPolicy",
    "RunChanges",
    "RunOptions",
    "StageOptions",
]

ContractMode = Literal["all", "sample", "off"]
"""Which records the runner checks against stage contracts."""


class Executor(StrEnum):
    """Where a stage's work runs.

    ``inline``: on the event loop (async code, cheap sync code). ``thread``: in worker
    threads (blocking I/O). ``process``: in worker processes (CPU-bound pure Python; the
    stage and its records must be picklable). ``dask``: each micro-batch is a task on a
    Dask cluster (a ``LocalCluster`` of the run, or a running scheduler; see
    :class:`DaskOptions`; needs ``conveyor[dask]``).
    """

    INLINE = "inline"
    THREAD = "thread"
    PROCESS = "process"
    DASK = "dask"


@dataclass(frozen=True, slots=True)
class DaskOptions:
    """Which Dask cluster runs the stages on ``executor="dask"``.

    Attributes:
        scheduler: the address of a running scheduler (``tcp://host:8786``); ``None``
            connects to Dask's ``scheduler-address`` setting (``DASK_SCHEDULER_ADDRESS``)
            when there is one, and otherwise starts a ``LocalCluster`` of worker processes
            on 127.0.0.1 for the run, closed at its end.
        workers: worker processes of that ``LocalCluster``.
        threads_per_worker: threads of each of its workers.
        memory_limit: memory of each of its workers: ``"2GiB"``, bytes, or ``"auto"``
            (the machine's memory shared out); a worker over it is restarted by its nanny.
        allowed_failures: deaths of workers running a task before the task fails with
            ``KilledWorker`` (the batch then fails, is retried and bisected like any
            failure; a ``LocalCluster``'s scheduler only: a running scheduler has its own).
        dashboard: serve the Dask dashboard on 127.0.0.1 (a ``LocalCluster``; needs bokeh).
        profile: run each ``LocalCluster`` worker's statistical profiler (the dashboard's
            Profile page). Off by default: its sampling thread takes the GIL every 10 ms,
            about 5 % of a CPU-bound stage's time (BENCHMARKS.md).
        upload: send the project's stage packages to the workers (default: when connecting
            to a scheduler; a ``LocalCluster`` shares this machine's files).
        handoff: a micro-batch going from one Dask stage straight to the next is passed as
            the future of the first stage's result, so the second takes it from the worker
            that holds it rather than from the driver.

    >>> DaskOptions(workers=0)
    Traceback (most recent call last):
    ...
    conveyor.errors.PipelineDefinitionError: DaskOptions: workers must be an int >= 1, got 0
    """

    scheduler: str | None = None
    workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    allowed_failures: int = 3
    dashboard: bool = True
    profile: bool = False
    upload: bool | None = None
    handoff: bool = True

    def __post_init__(self) -> None:
        for key in ("workers", "threads_per_worker"):
            _positive_int(key, getattr(self, key), "DaskOptions: ")
        if not isinstance(self.allowed_failures, int) or self.allowed_failures < 0:
            raise PipelineDefinitionError(
                f"DaskOptions: allowed_failures must be an int >= 0, got {self.allowed_failures!r}"
            )
        if self.scheduler is not None and (
            not isinstance(self.scheduler, str) or "://" not in self.scheduler
        ):
            raise PipelineDefinitionError(
                f"DaskOptions: scheduler must be an address like tcp://host:8786, got "
                f"{self.scheduler!r}"
            )
        limit = self.memory_limit
        if isinstance(limit, bool) or not isinstance(limit, str | int) or limit == "":
            raise PipelineDefinitionError(
                f"DaskOptions: memory_limit must be bytes, a size like '2GiB' or 'auto', got "
                f"{limit!r}"
            )

    @classmethod
    def parse(cls, value: DaskOptions | Mapping[str, Any] | None) -> DaskOptions | None:
        """Options from a mapping of their fields (a config section); unknown keys are an
        error naming the valid ones."""
        if value is None or isinstance(value, DaskOptions):
            return value
        if not isinstance(value, Mapping):
            raise PipelineDefinitionError(
                f"dask options must be a DaskOptions or a mapping, got {type(value).__name__}"
            )
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - valid)
        if unknown:
            raise PipelineDefinitionError(
                f"unknown dask option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return cls(**value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of transient failures: ``attempts`` in total (1 = no retry), waiting
    ``backoff * multiplier**(n-1)`` seconds (capped at ``max_backoff``) before retry ``n``,
    randomised by ``±jitter`` (a fraction). Only exceptions that are instances of
    ``retry_on`` are retried; others go to the dead-letter queue at once.

    >>> policy = RetryPolicy(attempts=3, backoff=0.1, jitter=0.0)
    >>> [policy.delay(n) for n in (1, 2)]
    [0.1, 0.2]
    >>> policy.is_transient(ConnectionResetError()), policy.is_transient(ValueError())
    (True, False)
    """

    attempts: int = 1
    backoff: float = 0.05
    multiplier: float = 2.0
    max_backoff: float = 5.0
    jitter: float = 0.25
    retry_on: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise PipelineDefinitionError(
                f"RetryPolicy: attempts must be >= 1, got {self.attempts}"
            )
        if self.backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise PipelineDefinitionError(
                "RetryPolicy: backoff and max_backoff must be >= 0 and multiplier >= 1"
            )
        if not 0 <= self.jitter <= 1:
            raise PipelineDefinitionError(
                f"RetryPolicy: jitter must be in [0, 1], got {self.jitter}"
            )

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` may be retried (an error that says ``retryable = False``
        never is)."""
        return isinstance(error, self.retry_on) and getattr(error, "retryable", True) is not False

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.max_backoff, self.backoff * self.multiplier ** (retry - 1))
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(0.0, base)


@dataclass(frozen=True, slots=True)
class StageOptions:
    """How the streaming runner runs one stage.

    Attributes:
        concurrency: micro-batches of this stage in flight at once.
        executor: ``inline``, ``thread``, ``process`` or ``dask`` (see :class:`Executor`).
            On ``dask``, ``concurrency`` bounds the stage's tasks in flight on the cluster.
        workers: size of the thread or process pool (default: concurrency, at least 2 for
            ``process``; the size of a Dask cluster is :attr:`DaskOptions.workers`).
        ordered: keep output in input order when ``concurrency > 1``.
        retry: the :class:`RetryPolicy` for transient errors.
        timeout: seconds allowed per call. A per-record stage (Map, Filter, Validate, any
            :class:`~conveyor.RecordStage`) is then called record by record, each call
            bounded, so a hung record reaches the dead-letter queue (with
            :class:`~conveyor.errors.StageTimeoutError`) within about ``timeout``; a
            whole-batch stage gets ``timeout`` per call and a timed-out micro-batch is
            bisected, which bounds the wait by ``timeout * (1 + ceil(log2(batch_size)))``.
            Code running inline on the event loop can only be interrupted where it awaits.
        rate_limit: records per second this stage may process, at most.
        input_contract / output_contract: a type or schema the records entering / leaving
            the stage must satisfy (overrides the stage's own declaration).
    """

    concurrency: int = 1
    executor: Executor = Executor.INLINE
    workers: int | None = None
    ordered: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None
    rate_limit: float | None = None
    input_contract: Any = None
    output_contract: Any = None
    dask: DaskOptions | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "executor", _executor(self.executor))
        object.__setattr__(self, "dask", DaskOptions.parse(self.dask))
        _positive_int("concurrency", self.concurrency)
        if self.workers is not None:
            _positive_int("workers", self.workers)
        for key in ("timeout", "rate_limit"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise PipelineDefinitionError(
                    f"StageOptions: {key} must be > 0 seconds or None, got {value!r}"
                )

    def merged(self, **changes: Any) -> StageOptions:
        """A copy with ``changes`` applied (unknown keys are an error naming the valid ones)."""
        valid = set(self.__dataclass_fields__)
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise PipelineDefinitionError(
                f"unknown stage option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return replace(self, **changes)


def default_concurrency(
    executor: Executor | str, workers: int | None = None, dask: DaskOptions | None = None
) -> int:
    """The micro-batches in flight a stage gets when its config sets no ``concurrency``:
    enough to keep its executor's workers busy.

    ``inline`` and ``thread``: 1. ``process``: the pool's size (``workers``, at least 2).
    ``dask``: two tasks per worker thread of the ``LocalCluster`` the run starts (one
    running, one queued, so that no worker waits for the driver's round trip), ``2 x
    workers x threads_per_worker`` (4 by default). With a ``scheduler`` the same figure is
    taken, as the cluster's size is not known before the run: set ``concurrency`` to
    twice the cluster's worker threads there.

    >>> default_concurrency("inline"), default_concurrency("process", 3)
    (1, 3)
    >>> default_concurrency("dask", dask=DaskOptions(workers=3))
    6
    """
    kind = _executor(executor)
    if kind is Executor.PROCESS:
        return max(workers or 2, 1)
    if kind is Executor.DASK:
        settings = dask or DaskOptions()
        return 2 * settings.workers * settings.threads_per_worker
    return 1


def _executor(value: Any) -> Executor:
    try:
        return Executor(value)
    except ValueError:
        valid = ", ".join(e.value for e in Executor)
        raise PipelineDefinitionError(
            f"unknown executor {value!r}; valid executors: {valid}"
        ) from None


def _positive_int(key: str, value: object, owner: str = "StageOptions: ") -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PipelineDefinitionError(f"{owner}{key} must be an int >= 1, got {value!r}")


_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class DeadLetterBudget:
    """How many dead letters a run may make before it counts as failed: a count
    (``limit``) or a share of the records read (``percent``).

    >>> DeadLetterBudget.parse("10%").exceeded(dead=11, records_in=100)
    True
    >>> DeadLetterBudget.parse(0).exceeded(dead=0, records_in=5), DeadLetterBudget.parse("3")
    (False, DeadLetterBudget(limit=3, percent=None))
    """

    limit: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, value: int | str | DeadLetterBudget) -> DeadLetterBudget:
        """A budget from ``10%``, ``"25"`` or ``3`` (a count); anything else is refused."""
        if isinstance(value, DeadLetterBudget):
            return value
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(limit=value)
        if isinstance(value, str):
            text = value.strip()
            if text.isdigit():
                return cls(limit=int(text))
            match = _PERCENT.match(text)
            if match and float(match.group(1)) <= 100:
                return cls(percent=float(match.group(1)))
        raise PipelineDefinitionError(
            f"max_dead_letters must be a count >= 0 (e.g. 0 or 25) or a percentage of the "
            f"records read (e.g. '10%'), got {value!r}"
        )

    def allowed(self, records_in: int) -> int:
        """The most dead letters allowed for a run that read ``records_in`` records."""
        if self.limit is not None:
            return self.limit
        assert self.percent is not None
        return math.floor(records_in * self.percent / 100 + 1e-9)

    def exceeded(self, *, dead: int, records_in: int) -> bool:
        """Whether ``dead`` letters are over the budget (a run where every record read was
        dead-lettered always is)."""
        if records_in and dead >= records_in:
            return True
        return dead > self.allowed(records_in)

    def __str__(self) -> str:
        return f"{self.limit}" if self.limit is not None else f"{self.percent:g}%"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Everything that says how one run goes; the defaults of every way of running.

    Attributes:
        batch_size: records per micro-batch (queues and task switches are paid per batch).
        linger: seconds an async source's micro-batch may wait to fill up.
        capacity: micro-batches a channel between two stages holds (always bounded).
        dead_letters: where dead letters go: a ``DeadLetterStore``, ``"memory"``, a
            ``.jsonl`` or ``.db``/``.sqlite`` path; ``None`` means
            ``.conveyor/dead_letters.db`` under the working directory.
        contracts: check stage contracts on ``"all"`` records, a ``"sample"``, or ``"off"``.
        sample_rate: share of records checked with ``contracts="sample"``.
        grace_period: seconds to drain after the first SIGINT/SIGTERM (a second aborts).
        handle_signals: install SIGINT/SIGTERM handlers for the run.
        max_dead_letters: the dead-letter budget: a count or a percentage of the records
            read (``"10%"``); above it the flow still drains but the run ends ``failed``.
        stage_options: ``{stage_name: StageOptions}``, over those set on the pipeline
            (``"sink"`` names the sink).
        checkpoint: where the run keeps checkpoints so that it can resume after a crash:
            ``True`` (``.conveyor/checkpoints.db`` under the working directory), a path, a
            :class:`~conveyor.core.checkpoint.CheckpointStore`; ``None``/``False``: no
            checkpoints. A sink that keeps checkpoints itself (the ``sqlite`` and
            ``postgres`` sinks) stores them in its own database whatever the path.
        checkpoint_every: how often to checkpoint: seconds (``1.0``, ``"2s"``) or records
            written (``"10000r"``); default one second.
        resume: what to do with an unfinished checkpoint of the same pipeline: ``True``
            resume from it, ``False`` start afresh; ``None`` (the default) stops with
            :class:`~conveyor.errors.ResumeRequired` rather than write records twice.
            Either value turns checkpoints on.

    >>> RunOptions().merged(batch_size=10).batch_size
    10
    >>> RunOptions(capacity=0)
    Traceback (most recent call last):
    ...
    conveyor.errors.PipelineDefinitionError: capacity must be an int >= 1 micro-batches \
(channels are always bounded), got 0
    """

    batch_size: int = 1000
    linger: float = 0.05
    capacity: int = 2
    dead_letters: object = None
    contracts: ContractMode = "all"
    sample_rate: float = 0.01
    grace_period: float = 30.0
    handle_signals: bool = False
    max_dead_letters: int | str | DeadLetterBudget = "10%"
    stage_options: Mapping[str, StageOptions] = field(default_factory=dict)
    checkpoint: object = None
    checkpoint_every: float | str | CheckpointInterval = 1.0
    resume: bool | None = None

    def __post_init__(self) -> None:
        _positive_int("batch_size", self.batch_size, "")
        object.__setattr__(
            self, "checkpoint_every", CheckpointInterval.parse(self.checkpoint_every)
        )
        if self.resume not in (None, True, False):
            raise PipelineDefinitionError(
                f"resume must be True, False or None, got {self.resume!r}"
            )
        if isinstance(self.checkpoint, str | os.PathLike) and not os.fspath(self.checkpoint):
            raise PipelineDefinitionError("checkpoint must not be an empty path")
        if (
            not isinstance(self.capacity, int)
            or isinstance(self.capacity, bool)
            or (self.capacity < 1)
        ):
            raise PipelineDefinitionError(
                f"capacity must be an int >= 1 micro-batches (channels are always bounded), "
                f"got {self.capacity!r}"
            )
        for key in ("linger", "grace_period"):
            value = getattr(self, key)
            if not isinstance(value, int | float) or value < 0:
                raise PipelineDefinitionError(f"{key} must be >= 0 seconds, got {value!r}")
        if self.contracts not in ("all", "sample", "off"):
            raise PipelineDefinitionError(
                f"contracts must be 'all', 'sample' or 'off', got {self.contracts!r}"
            )
        if not 0 <= self.sample_rate <= 1:
            raise PipelineDefinitionError(
                f"sample_rate must be in [0, 1], got {self.sample_rate!r}"
            )
        if isinstance(self.dead_letters, str | os.PathLike) and not os.fspath(self.dead_letters):
            raise PipelineDefinitionError("dead_letters must not be an empty path")
        object.__setattr__(self, "max_dead_letters", DeadLetterBudget.parse(self.max_dead_letters))
        for name, options in self.stage_options.items():
            if not isinstance(options, StageOptions):
                raise PipelineDefinitionError(
                    f"stage_options[{name!r}] must be a StageOptions, got {type(options).__name__}"
                )
        object.__setattr__(self, "stage_options", MappingProxyType(dict(self.stage_options)))

    @property
    def interval(self) -> CheckpointInterval:
        """:attr:`checkpoint_every`, parsed."""
        assert isinstance(self.checkpoint_every, CheckpointInterval)
        return self.checkpoint_every

    @property
    def checkpointing(self) -> bool:
        """Whether the run keeps checkpoints (asked for, or implied by ``resume``)."""
        return self.resume is not None or self.checkpoint not in (None, False)

    @property
    def budget(self) -> DeadLetterBudget:
        """:attr:`max_dead_letters`, parsed."""
        assert isinstance(self.max_dead_letters, DeadLetterBudget)
        return self.max_dead_letters

    def merged(self, **changes: Any) -> RunOptions:
        """A copy with ``changes`` applied; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise PipelineDefinitionError(
                f"unknown run option(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        return replace(self, **changes)

    def options_for(self, stage: str, base: StageOptions | None = None) -> StageOptions:
        """The options of ``stage``: :attr:`stage_options` over ``base`` over the defaults."""
        return self.stage_options.get(stage) or base or StageOptions()

    def with_stage_options(self, options: Mapping[str, StageOptions]) -> RunOptions:
        """A copy whose stage options are ``options`` under the ones already set."""
        return replace(self, stage_options={**options, **self.stage_options})


class RunChanges(TypedDict, total=False):
    """The keyword form of :class:`RunOptions` taken by ``Pipeline.run`` and its siblings
    (a test keeps its keys equal to the fields of :class:`RunOptions`)."""

    batch_size: int
    linger: float
    capacity: int
    dead_letters: object
    contracts: ContractMode
    sample_rate: float
    grace_period: float
    handle_signals: bool
    max_dead_letters: int | str | DeadLetterBudget
    stage_options: Mapping[str, StageOptions]
    checkpoint: object
    checkpoint_every: float | str | CheckpointInterval
    resume: bool | None
