"""Execution context shared by the stages of one pipeline run."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Final

__all__ = ["NO_ITEM", "ErrorRecord", "PipelineContext"]


def _random_id() -> str:
    """32 random hex digits, shaped like ``uuid.uuid4().hex`` (without importing uuid)."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 4122 variant
    return raw.hex()


class _NoItem(Enum):
    """Typed sentinel: the failing item is not known (distinct from an item that is None)."""

    NO_ITEM = "NO_ITEM"

    def __repr__(self) -> str:
        return "NO_ITEM"


NO_ITEM: Final = _NoItem.NO_ITEM
"""Marks an :class:`ErrorRecord` whose failing item is not known."""


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One error seen during a run: which stage, the live exception, and the item if known."""

    stage: str
    exception: BaseException
    item: Any = NO_ITEM
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def has_item(self) -> bool:
        """Whether the failing item is known."""
        return self.item is not NO_ITEM

    @property
    def message(self) -> str:
        """``"ExceptionType: message"`` of the exception."""
        return f"{type(self.exception).__name__}: {self.exception}"


@dataclass(slots=True)
class PipelineContext:
    """Metadata and accumulated state of one pipeline run.

    A fresh context is made by :meth:`Pipeline.execute` unless one is passed in, so a test can
    build and pre-populate one:

    >>> ctx = PipelineContext(metadata={"tenant": "acme"})
    >>> ctx.metadata["tenant"]
    'acme'
    >>> ctx.record_error("parse", ValueError("bad row"), item={"id": 7})
    >>> [(e.stage, e.message, e.item) for e in ctx.errors]
    [('parse', 'ValueError: bad row', {'id': 7})]
    >>> ctx.mark_completed("parse"); ctx.completed_stages
    ['parse']
    """

    pipeline_id: str = field(default_factory=lambda: _random_id())
    pipeline_name: str = ""
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    metadata: dict[str, Any] = field(default_factory=dict)
    errors: list[ErrorRecord] = field(default_factory=list)
    completed_stages: list[str] = field(default_factory=list)
    _t0: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def elapsed_ms(self) -> float:
        """Milliseconds since the context was created."""
        return (time.perf_counter() - self._t0) * 1000.0

    @property
    def elapsed_seconds(self) -> float:
        """Seconds since the context was created."""
        return time.perf_counter() - self._t0

    def record_error(self, stage: str, exception: BaseException, item: Any = NO_ITEM) -> None:
        """Record an error of ``stage``; pass ``item`` when the failing record is known."""
        self.errors.append(ErrorRecord(stage=stage, exception=exception, item=item))

    def mark_completed(self, stage: str) -> None:
        """Record that ``stage`` finished successfully."""
        self.completed_stages.append(stage)

    def has_error(self, exception: BaseException) -> bool:
        """Whether this exact exception object is already recorded."""
        return any(e.exception is exception for e in self.errors)
