"""Per-stage run options: where and how a stage runs in the streaming runner.

These are plain, frozen definition data: the pipeline carries them, runners read them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from conveyor.errors import PipelineDefinitionError

__all__ = ["Executor", "RetryPolicy", "StageOptions"]


class Executor(StrEnum):
    """Where a stage's work runs.

    ``inline``: on the event loop (async code, cheap sync code). ``thread``: in worker
    threads (blocking I/O). ``process``: in worker processes (CPU-bound pure Python; the
    stage and its records must be picklable).
    """

    INLINE = "inline"
    THREAD = "thread"
    PROCESS = "process"


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
        """Whether ``error`` may be retried."""
        return isinstance(error, self.retry_on)

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
        executor: ``inline``, ``thread`` or ``process`` (see :class:`Executor`).
        workers: size of the thread or process pool (default: concurrency, at least 2 for
            ``process``).
        ordered: keep output in input order when ``concurrency > 1``.
        retry: the :class:`RetryPolicy` for transient errors.
        timeout: seconds allowed per record (a micro-batch of ``n`` records gets ``n *
            timeout``; on expiry the batch is split to find the slow record, which goes to
            the dead-letter queue with :class:`~conveyor.errors.StageTimeoutError`).
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "executor", _executor(self.executor))
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


def _executor(value: Any) -> Executor:
    try:
        return Executor(value)
    except ValueError:
        valid = ", ".join(e.value for e in Executor)
        raise PipelineDefinitionError(
            f"unknown executor {value!r}; valid executors: {valid}"
        ) from None


def _positive_int(key: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise PipelineDefinitionError(f"StageOptions: {key} must be an int >= 1, got {value!r}")
