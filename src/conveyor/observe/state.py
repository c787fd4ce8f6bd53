"""What a stateful stage (windows, keyed state) holds, for the live view, the metrics and
the run report: the same figures, read the same way, in all three.

The figures of a stateful stage's live :class:`~conveyor.runtime.StageStats` (the runner
sets them after every micro-batch and every timer, only for stateful stages):

- **open windows**: windows holding records that have not been emitted yet (a
  ``KeyedStage`` has none: its state is by key only);
- **state keys**: keys with state (windows or a ``KeyedStage``'s value);
- **held records**: records held in open windows (with ``combine=`` or ``Stats`` a window
  holds one partial value instead, so this stays small);
- **late records**: records dead-lettered because they came after their window closed
  (a counter over the run);
- **watermark**: the stage's event-time watermark, POSIX seconds (the newest event time
  seen minus ``max_out_of_orderness``, or where idleness moved it); none before the first
  record and for count windows (they have no event time);
- **watermark lag**: ``now - watermark`` in seconds, ``now`` being the wall clock when the
  figure is read (a scrape, a table refresh, a sample), not when the watermark last moved:
  a stream that stalls shows a growing lag. It is at least ``max_out_of_orderness`` while
  records flow. It means something when event times are real times (datetimes, ISO
  strings, POSIX seconds); for synthetic event times (0, 1, 2…: a watermark before 2000)
  the live table and log lines show the watermark instead (``wm 130``).

Stages whose ``kind`` is not ``stateful`` have none of these: callers show nothing for
them (:func:`stateful_stages` picks the ones that have).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from conveyor.core.kinds import StageKind

__all__ = [
    "STATE_COLUMNS",
    "format_lag",
    "format_watermark",
    "is_stateful",
    "state_cells",
    "state_line",
    "stateful_stages",
    "watermark_lag",
]


def is_stateful(stats: Any) -> bool:
    """Whether ``stats`` are a stateful stage's (they carry windows, state and watermark)."""
    return getattr(stats, "kind", None) == StageKind.STATEFUL


def stateful_stages(stages: Iterable[Any]) -> list[Any]:
    """The stateful stages' stats among ``stages`` (none: a pipeline without windows)."""
    return [s for s in stages if is_stateful(s)]


def watermark_lag(stats: Any, now: float | None = None) -> float | None:
    """Seconds the stage's watermark is behind the wall clock ``now`` (default: now);
    ``None`` while it has no watermark."""
    watermark = stats.watermark
    if watermark is None:
        return None
    return (time.time() if now is None else now) - float(watermark)


def format_lag(seconds: float | None) -> str:
    """A lag for people: ``0.8s``, ``42s``, ``12m``, ``5.0h``, ``3d``; ``-`` for none."""
    if seconds is None:
        return "-"
    size = abs(seconds)
    sign = "-" if seconds < 0 else ""
    if size < 10:
        return f"{seconds:.1f}s"
    if size < 120:
        return f"{sign}{size:.0f}s"
    if size < 7200:
        return f"{sign}{size / 60:.0f}m"
    if size < 172800:
        return f"{sign}{size / 3600:.1f}h"
    return f"{sign}{size / 86400:,.0f}d"


_REAL_TIMES = (946684800.0, 4102444800.0)  # 2000-01-01 .. 2100-01-01 in POSIX seconds


def format_watermark(watermark: float | None) -> str:
    """The watermark for people: as a UTC time when it is one of this century (POSIX
    seconds of real event times), else the number; ``-`` for none."""
    if watermark is None:
        return "-"
    low, high = _REAL_TIMES
    if low <= watermark < high:
        moment = datetime.fromtimestamp(watermark, UTC)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f"{watermark:g}"


def _real(watermark: float | None) -> bool:
    low, high = _REAL_TIMES
    return watermark is not None and low <= watermark < high


def _lag_cell(stats: Any, now: float | None) -> str:
    """The lag of a watermark of real times; the watermark itself (``wm 130``) for synthetic
    event times, whose lag behind the wall clock would read as decades."""
    if stats.watermark is None or _real(stats.watermark):
        return format_lag(watermark_lag(stats, now))
    return f"wm {format_watermark(stats.watermark)}"


STATE_COLUMNS = ("windows", "keys", "held", "late", "wm lag")
"""The live table's extra columns, shown only when the run has a stateful stage."""


def state_cells(stats: Any, now: float | None = None) -> list[str]:
    """The :data:`STATE_COLUMNS` cells of one stage (empty for a stage that is not stateful)."""
    if not is_stateful(stats):
        return [""] * len(STATE_COLUMNS)
    return [
        f"{stats.open_windows:,}",
        f"{stats.state_keys:,}",
        f"{stats.state_records:,}",
        f"{stats.late:,}",
        _lag_cell(stats, now),
    ]


def state_line(stats: Any, now: float | None = None) -> str:
    """What a log line adds for a stateful stage (``""`` for any other stage)."""
    if not is_stateful(stats):
        return ""
    cell = _lag_cell(stats, now)
    watermark = f"watermark {cell[3:]}" if cell.startswith("wm ") else f"watermark lag {cell}"
    return (
        f" ({stats.open_windows:,} open windows, {stats.state_keys:,} keys, "
        f"{stats.state_records:,} held, {stats.late:,} late, {watermark})"
    )
