"""Which source offsets are still in flight: the low watermark for checkpoints.

Each micro-batch read from the source is registered with the offsets of its records. Every
micro-batch in the pipeline carries the ids of the source batches its records came from
(its *lineage*) and holds one reference to each. Processing a batch into k batches moves
the references on; a sink, a filter or the dead-letter queue releases them. A source batch
with no references left has fully left the pipeline. The low watermark is the first offset
of the oldest source batch still referenced: everything before it is done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["OffsetTracker"]


@dataclass(slots=True)
class _SourceBatch:
    first: Any
    last: Any
    records: int
    refs: int


class OffsetTracker:
    """Reference counts of source batches in flight; ``on_done(first, last)`` is called
    when a source batch has fully left the pipeline.

    >>> t = OffsetTracker()
    >>> a = t.open(0, 9, 10); b = t.open(10, 19, 10)
    >>> t.low_watermark
    0
    >>> t.release((a,)); t.low_watermark
    10
    >>> t.release((b,)); t.low_watermark is None, t.completed_records
    (True, 20)
    """

    def __init__(self, on_done: Callable[[Any, Any], None] | None = None) -> None:
        self._on_done = on_done
        self._pending: dict[int, _SourceBatch] = {}
        self._next_id = 0
        self.completed_records = 0
        self.last_completed_offset: Any = None

    def open(self, first: Any, last: Any, records: int) -> int:
        """Register a new source batch; return its id (held once by its micro-batch)."""
        batch_id = self._next_id
        self._next_id += 1
        self._pending[batch_id] = _SourceBatch(first, last, records, 1)
        return batch_id

    def forget(self, batch_id: int) -> None:
        """Drop a source batch that never entered the pipeline (intake was stopped)."""
        del self._pending[batch_id]

    def acquire(self, lineage: Iterable[int], times: int = 1) -> None:
        """Add ``times`` references to each source batch in ``lineage``."""
        if times:
            for batch_id in lineage:
                self._pending[batch_id].refs += times

    def release(self, lineage: Iterable[int]) -> None:
        """Drop one reference to each source batch in ``lineage``."""
        for batch_id in lineage:
            batch = self._pending[batch_id]
            batch.refs -= 1
            if batch.refs == 0:
                del self._pending[batch_id]
                self.completed_records += batch.records
                self.last_completed_offset = batch.last
                if self._on_done is not None:
                    self._on_done(batch.first, batch.last)

    @property
    def in_flight_batches(self) -> int:
        """Source batches not yet fully done."""
        return len(self._pending)

    @property
    def in_flight_records(self) -> int:
        """Records of source batches not yet fully done."""
        return sum(batch.records for batch in self._pending.values())

    @property
    def low_watermark(self) -> Any:
        """First offset of the oldest source batch still in flight (``None``: none is)."""
        for batch in self._pending.values():
            return batch.first
        return None
