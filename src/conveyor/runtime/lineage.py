"""Which source offsets are still in flight: the low watermark for checkpoints.

Each micro-batch read from the source is registered with the offsets of its records. Every
micro-batch in the pipeline carries the ids of the source batches its records came from
(its *lineage*) and holds one reference to each. Processing a batch into k batches moves
the references on; a sink, a filter or the dead-letter queue releases them. A source batch
with no references left has fully left the pipeline. The low watermark is the first offset
of the oldest source batch still referenced: everything before it is done.

For checkpoints the tracker also remembers which source batches above the low watermark
are done already (:meth:`OffsetTracker.coverage`), and ties together source batches whose
records were joined into one micro-batch (a ``BatchStage`` group, a barrier's output): tied
batches are done together, so a checkpoint never covers one half of a joined group.

A stateful stage that emits from its state alone (a window closed by a timer) gives its
records a *hold* (:meth:`OffsetTracker.hold`): a reference like a source batch's, that
stands for no source position. It never holds the low watermark back; it only tells a
checkpoint that those records are still in flight (ADR 0011).
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
    token: Any = None  # the source's own offset at ``first`` (seekable sources)
    tie: _Tie | None = None  # batches done together with this one (shared)


@dataclass(slots=True)
class _Tie:
    """Source batches joined in one micro-batch: done together, when none is referenced."""

    members: set[int]
    waiting: int  # members still referenced


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
        self._done_above: list[tuple[int, int]] = []
        self._holds: dict[int, int] = {}  # hold id -> references
        self.checkpointing = False
        """Track what a checkpoint needs (done ranges, ties); off, nothing of it is kept."""

    def open(self, first: Any, last: Any, records: int, token: Any = None) -> int:
        """Register a new source batch; return its id (held once by its micro-batch).
        ``token`` is the source's own offset of its first record, if it has one."""
        batch_id = self._next_id
        self._next_id += 1
        self._pending[batch_id] = _SourceBatch(first, last, records, 1, token)
        return batch_id

    def hold(self) -> int:
        """A new reference that stands for no source position (held once); see the module
        docstring. It is acquired and released like a source batch's id.

        >>> t = OffsetTracker(); h = t.hold()
        >>> t.pending((h,)), t.low_watermark
        (True, None)
        >>> t.release((h,)); t.pending((h,))
        False
        """
        hold_id = self._next_id
        self._next_id += 1
        self._holds[hold_id] = 1
        return hold_id

    def forget(self, batch_id: int) -> None:
        """Drop a source batch that never entered the pipeline (intake was stopped)."""
        del self._pending[batch_id]

    def acquire(self, lineage: Iterable[int], times: int = 1) -> None:
        """Add ``times`` references to each source batch in ``lineage``."""
        pending = self._pending
        if times:
            for batch_id in lineage:
                batch = pending.get(batch_id)
                if batch is None:
                    self._holds[batch_id] += times
                else:
                    batch.refs += times
        if not self.checkpointing or not isinstance(lineage, tuple) or len(lineage) < 2:
            return
        ties: dict[int, _Tie] = {}  # one micro-batch joins these: they are done together
        for batch_id in lineage:
            batch = pending.get(batch_id)
            if batch is None:  # a hold is never tied
                continue
            if batch.tie is None:
                batch.tie = _Tie({batch_id}, 1 if batch.refs else 0)
            ties[id(batch.tie)] = batch.tie
        if len(ties) < 2:
            return
        big, *others = sorted(ties.values(), key=lambda t: len(t.members), reverse=True)
        for tie in others:  # the smaller ties join the biggest (n log n over a run)
            for batch_id in tie.members:
                pending[batch_id].tie = big
            big.members |= tie.members
            big.waiting += tie.waiting

    def release(self, lineage: Iterable[int]) -> None:
        """Drop one reference to each source batch in ``lineage``."""
        pending = self._pending
        for batch_id in lineage:
            batch = pending.get(batch_id)
            if batch is None:
                self._release_hold(batch_id)
                continue
            batch.refs -= 1
            if batch.refs:
                continue
            tie = batch.tie
            if tie is None:
                self._finish(batch_id, batch)
                continue
            tie.waiting -= 1
            if not tie.waiting:
                for i in sorted(tie.members):
                    self._finish(i, pending[i])

    def _release_hold(self, hold_id: int) -> None:
        left = self._holds[hold_id] - 1
        if left:
            self._holds[hold_id] = left
        else:
            del self._holds[hold_id]

    def _finish(self, batch_id: int, batch: _SourceBatch) -> None:
        pending = self._pending
        del pending[batch_id]
        self.completed_records += batch.records
        self.last_completed_offset = batch.last
        if self.checkpointing and pending and isinstance(batch.first, int):
            for oldest in pending.values():
                if oldest.first < batch.first:  # done out of order: above the watermark
                    self._done_above.append((batch.first, batch.last))
                break
        if self._on_done is not None:
            self._on_done(batch.first, batch.last)

    def resumed(self, done: Iterable[tuple[int, int]]) -> None:
        """A resumed run starts with these ranges above the watermark already done."""
        self._done_above.extend((a, b) for a, b in done)

    def pending(self, batch_ids: Iterable[int]) -> bool:
        """Whether any of these source batches is still in flight."""
        pending, holds = self._pending, self._holds
        return any(batch_id in pending or batch_id in holds for batch_id in batch_ids)

    def ranges(self, lineage: Iterable[int]) -> list[list[int]]:
        """The ``[first, last]`` positions of the source batches in ``lineage`` (in flight),
        adjacent ones merged."""
        pending = self._pending
        found = sorted((pending[i].first, pending[i].last) for i in lineage if i in pending)
        return [list(r) for r in _merged(found)]

    def coverage(self, read: int, token: Any) -> tuple[int, Any, list[tuple[int, int]]]:
        """What is done, for a checkpoint: the low watermark (``read``, the positions read,
        when nothing is in flight), the source's offset there (``token`` when nothing is in
        flight) and the ranges above it that are done too."""
        position, at = read, token
        for oldest in self._pending.values():
            position, at = oldest.first, oldest.token
            break
        above = _merged(sorted(r for r in self._done_above if r[1] >= position))
        self._done_above = above
        return position, at, list(above)

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


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``(first, last)`` ranges with adjacent and overlapping ones joined."""
    out: list[tuple[int, int]] = []
    for first, last in ranges:
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out
