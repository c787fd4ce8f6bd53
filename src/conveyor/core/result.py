"""Results of stages and pipelines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Generic, TypeVar

from conveyor.core.context import PipelineContext

__all__ = ["PipelineResult", "PipelineStatus", "RecordFailure", "RunStatus", "StageResult"]

T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")


@dataclass(frozen=True, slots=True)
class RecordFailure:
    """One record that a stage could not process, with the live exception."""

    item: Any
    error: BaseException


@dataclass(frozen=True)  # no slots: generic slotted dataclasses break StageResult[int](...) on 3.11
class StageResult(Generic[T_co]):
    """What one call of :meth:`PipelineStage.process` produced.

    ``data`` is the output (``None`` when the stage failed); ``error`` is the exception object
    itself. ``failures`` lists the records that failed individually, each with its exception;
    for record-wise stages ``records_in == records_out + records_filtered + records_failed``.

    >>> r = StageResult.ok([2, 4], records_in=3, records_out=2, records_filtered=1)
    >>> r.success, r.unwrap()
    (True, [2, 4])
    >>> StageResult.fail(KeyError("id")).unwrap()
    Traceback (most recent call last):
    ...
    KeyError: 'id'
    """

    data: T_co | None
    success: bool
    error: BaseException | None = None
    duration_ms: float = 0.0
    records_in: int = 0
    records_out: int = 0
    records_failed: int = 0
    records_filtered: int = 0
    failures: tuple[RecordFailure, ...] = ()

    @classmethod
    def ok(
        cls,
        data: U,
        *,
        duration_ms: float = 0.0,
        records_in: int | None = None,
        records_out: int | None = None,
        records_failed: int = 0,
        records_filtered: int = 0,
        failures: Sequence[RecordFailure] = (),
    ) -> StageResult[U]:
        """A successful result; counts default to the size of ``data`` (1 for a non-list)."""
        out = count_records(data) if records_out is None else records_out
        return StageResult(
            data=data,
            success=True,
            duration_ms=duration_ms,
            records_in=out if records_in is None else records_in,
            records_out=out,
            records_failed=records_failed,
            records_filtered=records_filtered,
            failures=tuple(failures),
        )

    @classmethod
    def fail(
        cls,
        error: BaseException,
        *,
        duration_ms: float = 0.0,
        records_in: int = 0,
        records_out: int = 0,
        records_failed: int = 0,
        records_filtered: int = 0,
        failures: Sequence[RecordFailure] = (),
    ) -> StageResult[Any]:
        """A failed result carrying the exception object."""
        return StageResult(
            data=None,
            success=False,
            error=error,
            duration_ms=duration_ms,
            records_in=records_in,
            records_out=records_out,
            records_failed=records_failed,
            records_filtered=records_filtered,
            failures=tuple(failures),
        )

    def unwrap(self) -> T_co:
        """The output data, or raise the stage's error if it failed."""
        if not self.success:
            raise self.error if self.error is not None else RuntimeError("stage failed")
        return self.data  # type: ignore[return-value]


def count_records(data: object) -> int:
    """Records in ``data``: its length for a list/tuple/set/dict, else 1 (0 for ``None``)."""
    if data is None:
        return 0
    if isinstance(data, list | tuple | set | frozenset | dict):
        return len(data)
    return 1


class PipelineStatus(StrEnum):
    """Final status of a pipeline run."""

    COMPLETED = "completed"
    FAILED = "failed"


class RunStatus(StrEnum):
    """How a streaming run ended.

    ``completed``: every record read left through the sink, a filter or the dead-letter
    queue, within the dead-letter budget. ``failed``: the same, but with more dead letters
    than ``max_dead_letters`` allows. ``interrupted``: a signal (or a ``KeyboardInterrupt``
    in stage code) stopped the intake and what was in flight drained. ``aborted``: stopped
    at once (a second signal, or an error), with records still in flight.
    """

    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    ABORTED = "aborted"

    @property
    def drained(self) -> bool:
        """Whether every record that entered the run left it (all but ``aborted``)."""
        return self is not RunStatus.ABORTED

    @property
    def finished(self) -> bool:
        """Whether the run read its whole input and every record left it (``completed``
        or ``failed``): what a sink that buffers commits on."""
        return self in (RunStatus.COMPLETED, RunStatus.FAILED)


@dataclass(frozen=True)  # no slots, as StageResult
class PipelineResult(Generic[T_co]):
    """Outcome of :meth:`Pipeline.execute`: final data, status, and every stage's result."""

    pipeline_id: str
    pipeline_name: str
    status: PipelineStatus
    data: T_co | None
    error: BaseException | None
    failed_stage: str | None
    stage_results: dict[str, StageResult[Any]] = field(default_factory=dict)
    duration_ms: float = 0.0
    context: PipelineContext = field(default_factory=PipelineContext)

    @property
    def success(self) -> bool:
        """True when every stage succeeded."""
        return self.status is PipelineStatus.COMPLETED

    def unwrap(self) -> T_co:
        """The final data, or raise the failing stage's error."""
        if not self.success:
            raise self.error if self.error is not None else RuntimeError("pipeline failed")
        return self.data  # type: ignore[return-value]
