"""Windows over a stream: tumbling, sliding and session windows by event time, and count
windows, each keyed and aggregated; built on the keyed-state mechanism of
:mod:`conveyor.core.keyed` (the same store, timers, clock and checkpointed snapshot).

A window stage puts each record into the window(s) of its key it belongs to and, when the
watermark passes a window's end (+ ``allowed_lateness``), emits one result for that key and
window::

    {"key": key, "start": start, "end": end, "value": aggregate(records_of_the_window)}

``aggregate`` is what :class:`~conveyor.AggregateStage` takes: a function of the list of
records (sync or async). ``start``/``end`` are event times (numbers of seconds, or datetimes
when the event times were datetimes), the window being ``[start, end)``; for a session
window ``start`` is its first event time and ``end`` its last plus the gap; for a count
window they count the key's records (``[0, 100)``, ``[100, 200)`` …). ``key`` is ``None``
for a stage without a key (one window sequence for the whole stream).

A record whose window has already closed is *late*: it goes to the dead-letter queue with a
:class:`~conveyor.errors.LateRecordError` naming the window, the watermark and its event
time, and is counted in the stage's ``late``. A record belongs to all of its windows or to
none: in a sliding window it is late as soon as the earliest of its windows has closed; in
a session window when its event time is behind the watermark minus the allowed lateness
(it could have joined a session already emitted). At the end of the input every open window
closes, so a bounded stream's results equal a plain group-by of its on-time records.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from conveyor.core import _statecodec
from conveyor.core._callables import callable_name
from conveyor.core.keyed import (
    Fed,
    Field,
    Operator,
    StatefulStage,
    duration,
    read_field,
    time_value,
)
from conveyor.core.result import RecordFailure
from conveyor.errors import LateRecordError, PipelineDefinitionError

__all__ = [
    "Count",
    "Session",
    "Sliding",
    "Stats",
    "Tumbling",
    "WindowStage",
    "Windowing",
    "window",
]

T = TypeVar("T")

_INF = math.inf


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Back-to-back windows of ``size`` seconds of event time: ``[0, size)``,
    ``[size, 2*size)`` … (aligned to the epoch)."""

    size: float

    def __str__(self) -> str:
        return f"tumbling {self.size:g}s"


@dataclass(frozen=True, slots=True)
class Sliding:
    """Windows of ``size`` seconds starting every ``slide`` seconds (``slide <= size``):
    a record belongs to ``size / slide`` of them."""

    size: float
    slide: float

    def __str__(self) -> str:
        return f"sliding {self.size:g}s every {self.slide:g}s"


@dataclass(frozen=True, slots=True)
class Session:
    """Per key, records less than ``gap`` seconds apart (event time) form one session."""

    gap: float

    def __str__(self) -> str:
        return f"session gap {self.gap:g}s"


@dataclass(frozen=True, slots=True)
class Count:
    """Per key, every ``size`` records in arrival order form a window."""

    size: int

    def __str__(self) -> str:
        return f"count {self.size}"


Windowing = Tumbling | Sliding | Session | Count

_STATS = ("count", "sum", "mean", "min", "max")


class Stats:
    """The common aggregates of one field: ``Stats("value", "count", "sum")`` gives
    ``{"count": n, "sum": s}`` for a list of records (one name: the number itself; no
    names: all five of ``count``, ``sum``, ``mean``, ``min``, ``max``).

    It is what :class:`~conveyor.AggregateStage` takes (a function of a list of records),
    and it combines itself: a window stage keeps ``[count, sum, min, max]`` per window
    instead of the records (small state and checkpoints), and tumbling windows add each
    record to it in their hot loop. ``field`` is a field name or a function of the
    record; its values must be numbers (a record whose value is not is a dead letter of
    the window, with the window's other records of its micro-batch).

    >>> Stats("v", "count", "mean")([{"v": 1}, {"v": 3}])
    {'count': 2, 'mean': 2.0}
    >>> Stats("v", "max")([{"v": 1}, {"v": 3}])
    3
    """

    def __init__(self, field: Field, *names: str) -> None:
        unknown = [n for n in names if n not in _STATS]
        if unknown:
            raise PipelineDefinitionError(
                f"Stats: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(_STATS)}"
            )
        if not isinstance(field, str) and not callable(field):
            raise PipelineDefinitionError(
                f"Stats needs a field name or a function of the record, got {field!r}"
            )
        self.field = field
        self.names = tuple(dict.fromkeys(names or _STATS))
        self.extremes = "min" in self.names or "max" in self.names
        self.__name__ = f"stats({_spec(field)}: {', '.join(self.names)})"

    def __call__(self, records: list[Any]) -> Any:
        return self.result(self.accumulate(records))

    def accumulate(self, records: list[Any]) -> list[Any]:
        """``[count, sum, min, max]`` of the records' values."""
        field = self.field
        values = [read_field(r, field, "value") for r in records]
        total = 0
        for v in values:
            total = total + v
        return [len(values), total, min(values), max(values)]

    @staticmethod
    def merge(a: list[Any], b: list[Any]) -> list[Any]:
        """Two accumulators as one."""
        return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3])]

    def result(self, acc: list[Any]) -> Any:
        """The value of an accumulator: the number of one name, else a dict by name."""
        count, total = acc[0], acc[1]
        values = {
            "count": count,
            "sum": total,
            "mean": total / count if count else None,
            "min": acc[2],
            "max": acc[3],
        }
        if len(self.names) == 1:
            return values[self.names[0]]
        return {name: values[name] for name in self.names}

    def __repr__(self) -> str:
        return f"Stats({self.field!r}, {', '.join(map(repr, self.names))})"


def _spec(field: Field) -> str:
    return field if isinstance(field, str) else callable_name(field)


class WindowStage(StatefulStage[T, dict[str, Any]]):
    """Keyed windows with an aggregate; see the module docstring for the results.

    ``windowing`` is a :class:`Tumbling`, :class:`Sliding`, :class:`Session` or
    :class:`Count` (or use :func:`window`). ``time`` (required but for count windows) reads
    a record's event time; ``key`` its key (``None``: one global key);
    ``max_out_of_orderness`` is the disorder allowed (the watermark is the largest event time
    seen minus it); ``allowed_lateness`` keeps a window open that much longer after the
    watermark passed its end; ``idle_timeout`` closes the last windows once no record came
    for that many seconds. The state (open windows with their records) is in every
    checkpoint and restored on a resume.

    ``combine(a, b)`` (optional, sync or async) merges two values of ``aggregate``: with it
    a window keeps one partial value instead of its records — each micro-batch's records of
    a window are aggregated, and combined with what the window had — so memory and
    checkpoints stay small and the records are freed at once. It must hold that
    ``combine(aggregate(a), aggregate(b)) == aggregate(a + b)`` for any split of the
    records, in any order (a count, a sum, a min, a dict of them). With ``combine`` an
    aggregate or combine that raises fails that call only: a dead letter
    ``{"key", "start", "end", "records"}`` holds the micro-batch's records of that window,
    and the window goes on without them.

    >>> import asyncio
    >>> from conveyor import PipelineContext
    >>> counts = WindowStage(Tumbling(10), len, time="ts", key="k", max_out_of_orderness=10)
    >>> events = [{"k": "a", "ts": 1}, {"k": "a", "ts": 12}, {"k": "a", "ts": 3}]
    >>> for result in asyncio.run(counts.process(events, PipelineContext())).data:
    ...     print(result)
    {'key': 'a', 'start': 0, 'end': 10, 'value': 2}
    {'key': 'a', 'start': 10, 'end': 20, 'value': 1}
    """

    def __init__(
        self,
        windowing: Windowing,
        aggregate: Callable[[list[T]], Any] | Callable[[list[T]], Awaitable[Any]],
        *,
        time: Field | None = None,
        key: Field | None = None,
        combine: Callable[[Any, Any], Any] | Callable[[Any, Any], Awaitable[Any]] | None = None,
        max_out_of_orderness: Any = 0.0,
        allowed_lateness: Any = 0.0,
        idle_timeout: Any = None,
        continue_on_error: bool = False,
        name: str | None = None,
    ) -> None:
        if combine is not None and not callable(combine):
            raise PipelineDefinitionError(f"WindowStage: combine must be callable, got {combine!r}")
        if combine is not None and isinstance(aggregate, Stats):
            raise PipelineDefinitionError("WindowStage: Stats combines itself; drop combine=")
        if not isinstance(windowing, Tumbling | Sliding | Session | Count):
            raise PipelineDefinitionError(
                "WindowStage needs Tumbling(size), Sliding(size, slide), Session(gap) or "
                f"Count(size), got {windowing!r}"
            )
        if not callable(aggregate):
            raise PipelineDefinitionError(
                f"WindowStage needs a callable aggregate (as AggregateStage), got {aggregate!r}"
            )
        super().__init__(
            key=key,
            time=time,
            max_out_of_orderness=max_out_of_orderness,
            idle_timeout=idle_timeout,
            continue_on_error=continue_on_error,
        )
        self.windowing = _checked(windowing)
        self.aggregate = aggregate
        self.combine = combine
        self.allowed_lateness = duration(allowed_lateness, "allowed_lateness", zero=True)
        by_time = not isinstance(windowing, Count)
        if by_time and time is None:
            raise PipelineDefinitionError(
                f"{windowing} windows need time=, the field (or function) with each "
                "record's event time"
            )
        if not by_time and (time is not None or idle_timeout is not None):
            raise PipelineDefinitionError(
                "count windows close by count, not by event time: drop time= and "
                "idle_timeout= (or use tumbling, sliding or session windows)"
            )
        if not by_time and (self.max_out_of_orderness or self.allowed_lateness):
            raise PipelineDefinitionError(
                "count windows have no watermark: drop max_out_of_orderness and allowed_lateness"
            )
        self.name = name or f"window({self.windowing}, {callable_name(aggregate)})"

    @property
    def state_identity(self) -> list[Any]:
        combine = None if self.combine is None else callable_name(self.combine)
        return [
            "window",
            str(self.windowing),
            *super().state_identity,
            callable_name(self.aggregate),
            combine,
        ]

    def operator(self) -> Operator:
        spec = self.windowing
        if isinstance(spec, Tumbling):
            return _Tumbling(self, spec.size, spec.size)
        if isinstance(spec, Sliding):
            return _Sliding(self, spec.size, spec.slide)
        if isinstance(spec, Session):
            return _Sessions(self, spec.gap)
        return _Counts(self, spec.size)


def window(
    *,
    aggregate: Callable[[list[Any]], Any] | Callable[[list[Any]], Awaitable[Any]],
    combine: Callable[[Any, Any], Any] | Callable[[Any, Any], Awaitable[Any]] | None = None,
    tumbling: Any = None,
    sliding: Any = None,
    slide: Any = None,
    session: Any = None,
    count: int | None = None,
    time: Field | None = None,
    key: Field | None = None,
    max_out_of_orderness: Any = 0.0,
    allowed_lateness: Any = 0.0,
    idle_timeout: Any = None,
    continue_on_error: bool = False,
    name: str | None = None,
) -> WindowStage[Any]:
    """A :class:`WindowStage` from keywords, one of ``tumbling=SIZE``, ``sliding=SIZE,
    slide=STEP``, ``session=GAP`` or ``count=N`` (durations in seconds, a ``timedelta`` or
    ``"10s"``/``"5m"``/``"1h"``); the other keywords are :class:`WindowStage`'s.

    >>> window(tumbling="1m", time="ts", key="sensor", aggregate=len).name
    'window(tumbling 60s, len)'
    """
    given = {
        name: value
        for name, value in (
            ("tumbling", tumbling),
            ("sliding", sliding),
            ("session", session),
            ("count", count),
        )
        if value is not None
    }
    if len(given) != 1:
        raise PipelineDefinitionError(
            "window() takes exactly one of tumbling=, sliding= (with slide=), session= or "
            f"count=; got {', '.join(given) or 'none'}"
        )
    if slide is not None and sliding is None:
        raise PipelineDefinitionError("window(): slide= goes with sliding=")
    spec: Windowing
    if tumbling is not None:
        spec = Tumbling(duration(tumbling, "tumbling"))
    elif sliding is not None:
        if slide is None:
            raise PipelineDefinitionError("window(sliding=SIZE) needs slide=STEP too")
        spec = Sliding(duration(sliding, "sliding"), duration(slide, "slide"))
    elif session is not None:
        spec = Session(duration(session, "session"))
    else:
        spec = Count(count)  # type: ignore[arg-type]
    return WindowStage(
        spec,
        aggregate,
        time=time,
        key=key,
        combine=combine,
        max_out_of_orderness=max_out_of_orderness,
        allowed_lateness=allowed_lateness,
        idle_timeout=idle_timeout,
        continue_on_error=continue_on_error,
        name=name,
    )


def _checked(spec: Windowing) -> Windowing:
    if isinstance(spec, Count):
        count = spec.size
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise PipelineDefinitionError(f"Count windows need a size >= 1, got {count!r}")
        return spec
    if isinstance(spec, Tumbling):
        return Tumbling(_whole(duration(spec.size, "the window size")))
    if isinstance(spec, Sliding):
        size = _whole(duration(spec.size, "the window size"))
        slide = _whole(duration(spec.slide, "the slide"))
        if slide > size:
            raise PipelineDefinitionError(
                f"a sliding window's slide ({slide:g}s) must not exceed its size ({size:g}s): "
                "records between the windows would belong to none"
            )
        return Sliding(size, slide)
    return Session(_whole(duration(spec.gap, "the session gap")))


def _whole(seconds: float) -> float:
    """Whole seconds as an int (so windows of integer event times have integer bounds)."""
    return int(seconds) if seconds == int(seconds) else seconds


# -- the operators --------------------------------------------------------------------------

_NONE: Any = object()
"""No value yet (a window whose every aggregate call failed, with ``combine``)."""

Batch = dict[Any, dict[Any, list[Any]]]
"""A micro-batch's records by key and window start, before they join the state."""


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    value = fn(*args)
    if hasattr(value, "__await__"):
        value = await value
    return value


class _Windows(Operator):
    """What every window operator shares. A window's *content* is its records (without
    ``combine``) or its partial value (with it); each micro-batch's records are grouped by
    key and window first (:data:`Batch`), then folded into the state once per group."""

    def __init__(self, stage: WindowStage[Any]) -> None:
        super().__init__(stage)
        self.stage = stage
        self.stats = stage.aggregate if isinstance(stage.aggregate, Stats) else None
        self.aggregate: Callable[..., Any] = stage.aggregate
        self.combine = stage.combine
        self.result: Callable[[Any], Any] | None = None  # a partial value's result
        if self.stats is not None:  # its accumulator is the window's partial value
            self.aggregate, self.combine = self.stats.accumulate, self.stats.merge
            self.result = self.stats.result
        self.partial = self.combine is not None
        self.slack = stage.allowed_lateness

    def _lost(self, key: Any, start: float, end: float, records: list[Any]) -> dict[str, Any]:
        kind = self.time_kind
        return {
            "key": key,
            "start": time_value(start, kind),
            "end": time_value(end, kind),
            "records": records,
        }

    async def _fold(
        self, content: Any, records: list[Any], where: tuple[Any, float, float], fed: Fed
    ) -> Any:
        """``content`` with ``records`` added (``_NONE``: a new window); with ``combine``,
        a call that raises leaves the content as it was and letters the records."""
        if not self.partial:
            if content is _NONE:
                return records
            content.extend(records)
            return content
        assert self.combine is not None
        try:
            value = await _call(self.aggregate, records)
            if content is not _NONE:
                value = await _call(self.combine, content, value)
        except Exception as exc:
            fed.lost.append(RecordFailure(self._lost(*where, records), exc))
            return content
        return value

    async def _merged(self, a: Any, b: Any, where: tuple[Any, float, float], fed: Fed) -> Any:
        """Two contents as one (sessions that a record joined)."""
        if not self.partial:
            a.extend(b)
            return a
        if a is _NONE or b is _NONE:
            return b if a is _NONE else a
        assert self.combine is not None
        try:
            return await _call(self.combine, a, b)
        except Exception as exc:
            fed.lost.append(RecordFailure(self._lost(*where, []), exc))
            return a

    async def _emit(self, closed: list[tuple[Any, float, float, Any]], fed: Fed) -> None:
        """One result per closed window ``(key, start, end, content)``."""
        kind, outputs = self.time_kind, fed.outputs
        dated = kind == "aware" or kind == "naive"
        for key, start, end, content in closed:
            self.open_windows -= 1
            if content is _NONE:
                continue
            if self.partial:
                value = content if self.result is None else self.result(content)
            else:
                self.held -= len(content)
                try:
                    value = await _call(self.aggregate, content)
                except Exception as exc:
                    fed.lost.append(RecordFailure(self._lost(key, start, end, content), exc))
                    continue
            if dated:
                start, end = time_value(start, kind), time_value(end, kind)
            outputs.append({"key": key, "start": start, "end": end, "value": value})

    def _late(self, record: Any, key: Any, start: float, end: float, t: float) -> RecordFailure:
        kind, watermark = self.time_kind, self.watermark
        error = LateRecordError(
            self.name,
            key,
            (time_value(start, kind), time_value(end, kind)),
            None if watermark is None else time_value(watermark, kind),
            time_value(t, kind),
            self.slack,
        )
        return RecordFailure(record, error)

    def _key_time(self, record: Any) -> tuple[Any, float]:
        """The general path: key and event time of any record (attributes, datetimes,
        strings), or the error its dead letter carries."""
        stage = self.stage
        key = None if stage.key is None else read_field(record, stage.key, "key")
        hash(key)
        assert stage.time is not None
        return key, self._event_time(read_field(record, stage.time, "time"))

    def _content(self, data: Any) -> Any:
        """A content read back from a snapshot."""
        return _NONE if data == {"$none": True} else data  # (records are a list)

    def _dumped(self, content: Any) -> Any:
        return {"$none": True} if content is _NONE else content


class _Sliding(_Windows):
    """Tumbling and sliding windows: ``store[key]`` maps a window's start to its content;
    a timer at each window's end holds ``(key, start)``."""

    kind = "time"

    def __init__(self, stage: WindowStage[Any], size: float, slide: float) -> None:
        super().__init__(stage)
        self.size = size
        self.slide = slide

    def _place(self, record: Any, key: Any, t: float, batch: Batch, fed: Fed) -> None:
        """One record, with its key and event time (a number), into ``batch`` (or late)."""
        self._advance(t)
        size, slide = self.size, self.slide
        last = t - t % slide
        starts = [last]
        while True:
            earlier = last - len(starts) * slide
            if earlier + size <= t:
                break
            starts.append(earlier)
        first = starts[-1]
        if first + size <= self.limit():
            fed.rejected.append(self._late(record, key, first, first + size, t))
            fed.late += 1
            return
        groups = batch.get(key)
        if groups is None:
            groups = batch[key] = {}
        for start in starts:
            group = groups.get(start)
            if group is None:
                groups[start] = [record]
            else:
                group.append(record)
        fed.absorbed += 1

    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        batch: Batch = {}
        for record in records:
            try:
                key, t = self._key_time(record)
            except Exception as exc:
                fed.rejected.append(RecordFailure(record, exc))
                continue
            self._place(record, key, t, batch, fed)
        await self._join(batch, fed)

    async def _join(self, batch: Batch, fed: Fed) -> None:
        """Fold a micro-batch's groups into the state; new windows get their timer. (The
        calls of a sync aggregate and combine are made here directly: no coroutine per
        group.)"""
        store, size, timers = self.store, self.size, self.timers
        aggregate, combine = self.aggregate, self.combine
        for key, groups in batch.items():
            wins = store.get(key)
            if wins is None:
                wins = store[key] = {}
            for start, group in groups.items():
                had = wins.get(start, _NONE)
                if combine is None:  # records: the window keeps them
                    self.held += len(group)
                    if had is not _NONE:
                        had.extend(group)
                        continue
                    wins[start] = group
                else:
                    try:
                        value = aggregate(group)
                        if hasattr(value, "__await__"):
                            value = await value
                        if had is not _NONE:
                            value = combine(had, value)
                            if hasattr(value, "__await__"):
                                value = await value
                    except Exception as exc:
                        lost = self._lost(key, start, start + size, group)
                        fed.lost.append(RecordFailure(lost, exc))
                        continue
                    wins[start] = value
                    if had is not _NONE:
                        continue
                timers.add(start + size, (key, start))
                self.open_windows += 1
            if not wins:
                del store[key]

    async def _fire(self, limit: float, fed: Fed) -> None:
        if limit == _INF:
            due = [(0.0, [(k, s) for k, wins in self.store.items() for s in wins])]
            self.timers.clear()
        else:
            due = self.timers.pop_until(limit)
        if not due:
            return
        store, size = self.store, self.size
        closed = []
        for _, items in due:
            for key, start in items:
                wins = store.get(key)
                content = _NONE if wins is None else wins.pop(start, _NONE)
                if content is _NONE:  # (closed already)
                    continue
                assert wins is not None
                if not wins:
                    del store[key]
                closed.append((key, start, start + size, content))
        if limit == _INF:
            closed.sort(key=lambda c: c[2])
        await self._emit(closed, fed)

    def _dump(self) -> Any:
        dumped = self._dumped
        return [
            [key, [[s, dumped(c)] for s, c in wins.items()]] for key, wins in self.store.items()
        ]

    def _load(self, data: Any) -> None:
        size = self.size
        for key, wins in data:
            key = _statecodec.hashable(key)
            mine = self.store[key] = {}
            for start, content in wins:
                mine[start] = self._content(content)
                self.timers.add(start + size, (key, start))
                self.open_windows += 1
                if not self.partial:
                    self.held += len(content)


class _Tumbling(_Sliding):
    """Tumbling windows. With field names for the key and the time (the common case) the
    records go through a hot loop of a few dict operations each; a record it cannot place
    (late, a key or time it cannot read as they are) takes the general path on its own."""

    def __init__(self, stage: WindowStage[Any], size: float, slide: float) -> None:
        super().__init__(stage, size, slide)
        self._hot: dict[Any, list[Any]] = {}
        """The hot window's accumulators by key (:meth:`_absorb_sums`): the window
        ``[_hot_start, _hot_end)`` of the largest event time seen (the same lists as in
        the store)."""
        self._hot_start: Any = _INF
        self._hot_end: Any = _INF
        self._cool()

    def _cool(self) -> None:
        """No hot window (yet, or any more: the store changed under it); the next largest
        event time makes one."""
        self._hot = {}
        self._hot_start = _INF  # (no event time is >= it)
        self._hot_end = -_INF if type(self.size) is int else _INF  # (inf: never one)

    def _range(self, t: Any) -> tuple[Any, Any]:
        """The hot window from now on: ``(start, end)`` of the window of ``t``, the new
        largest event time; none (``(inf, -inf)``) unless its range stands for the window
        arithmetic exactly: whole-second windows and ``0 <= t < 2**52`` a float or an int
        (then ``t - t % size`` is exact, so ``start <= t' < end`` iff ``t'``'s window is
        this one)."""
        size = self.size
        if (type(t) is float or type(t) is int) and 0 <= t < 2**52 and type(size) is int:
            start = t - t % size
            return start, start + size
        return _INF, -_INF

    async def _fire(self, limit: float, fed: Fed) -> None:
        if self._hot_start + self.size <= limit:
            self._cool()  # the hot window closes (at the end: everything does)
        await super()._fire(limit, fed)

    def _load(self, data: Any) -> None:
        self._cool()
        super()._load(data)

    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        stage = self.stage
        if not isinstance(stage.time, str) or not (stage.key is None or isinstance(stage.key, str)):
            await super()._absorb(records, fed)
            return
        if self.stats is not None and isinstance(self.stats.field, str):
            if isinstance(stage.key, str):
                await self._absorb_sums(records, fed, stage.key, stage.time, self.stats.field)
            else:
                await self._absorb_stats(records, fed, self.stats.field)
            return
        if isinstance(stage.key, str):
            await self._absorb_groups(records, fed, stage.key, stage.time)
            return
        clock, kf, tf = self.clock, stage.key, stage.time
        size = self.size
        mx, floor = clock.max_seen, clock.floor
        behind = clock.bound + self.slack
        cut = mx - behind
        if cut < floor:
            cut = floor
        batch: Batch = {}
        slow, inf = 0, _INF
        items = iter(records)
        record: Any = None
        while True:
            try:
                for record in items:
                    key = None if kf is None else record[kf]
                    t = record[tf]
                    if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                        raise TypeError(t)  # the general path decides
                    if t > mx:
                        if t >= inf:  # the general path refuses it
                            raise TypeError(t)
                        cut = t - behind  # (before the clock moves: it may raise)
                        mx = t
                        if cut < floor:
                            cut = floor
                    start = t - t % size
                    if start + size <= cut:
                        raise _Late
                    groups = batch.get(key)
                    if groups is None:
                        if start != start:  # nan: the general path refuses it
                            raise TypeError(t)
                        batch[key] = {start: [record]}
                    else:
                        group = groups.get(start)
                        if group is None:
                            if start != start:
                                raise TypeError(t)
                            groups[start] = [record]
                        else:
                            group.append(record)
                break
            except Exception:  # a late record, a bad key or time: this one the general way
                slow += 1
                clock.max_seen = mx
                try:
                    key, t = self._key_time(record)
                except Exception as exc:
                    fed.rejected.append(RecordFailure(record, exc))
                else:
                    self._place(record, key, t, batch, fed)
                mx = clock.max_seen
                cut = mx - behind
                if cut < floor:
                    cut = floor
        clock.max_seen = mx
        fed.absorbed += len(records) - slow  # (the general path counted its own)
        await self._join(batch, fed)

    async def _absorb_groups(self, records: Sequence[Any], fed: Fed, kf: str, tf: str) -> None:
        """The loop of any other aggregate, by a key field: each record into its group of
        the micro-batch (by key and window start, in arrival order), the groups then
        joined to the state (:meth:`_join`). As :meth:`_absorb_sums`: a record of the hot
        window (``hot_start <= t <= mx``) goes to its key's group in ``hot`` (the same
        lists as in ``batch``) without window arithmetic; a group not there yet raises
        ``KeyError`` and :meth:`_open_group` makes it, else the general path takes the
        record."""
        clock = self.clock
        size = self.size
        hot_start, hot_end = self._hot_start, self._hot_end
        mx, floor = clock.max_seen, clock.floor
        behind = clock.bound + self.slack
        cut = mx - behind
        if cut < floor:
            cut = floor
        safe, safe_end = _on_time_from(cut, size)
        batch: Batch = {}
        hot: dict[Any, list[Any]] = {}  # the hot window's groups by key
        slow, inf = 0, _INF
        items = iter(records)
        record: Any = None
        for _ in range(len(records) + 1):  # (bounded: each pass takes a record, or ends)
            try:
                for record in items:
                    t = record[tf]
                    if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                        raise TypeError(t)  # the general path decides
                    if t > mx:  # (what can raise first: the clock moves only after)
                        if t >= inf:  # the general path refuses it
                            raise TypeError(t)
                        record[kf]  # (unreadable: the clock stays, as below)
                        cut = t - behind
                        if cut < floor:
                            cut = floor
                        if cut >= safe_end:  # (else safe holds)
                            safe, safe_end = _on_time_from(cut, size)
                        if t >= hot_end:  # a newer window: the hot one from now on
                            hot_start, hot_end = self._range(t)
                            hot = {}
                        mx = t
                    if t >= hot_start:
                        hot[record[kf]].append(record)  # KeyError: not in hot yet
                    else:
                        start = t - t % size
                        if t < safe and start + size <= cut:
                            raise _Late
                        batch[record[kf]][start].append(record)  # KeyError: a new group
                break
            except Exception:  # a new group; or late, or a key or time to read the
                clock.max_seen = mx  # general way
                placed = self._open_group(record, kf, tf, batch)
                if placed is None:
                    slow += 1
                    try:
                        key, t = self._key_time(record)
                    except Exception as exc:
                        fed.rejected.append(RecordFailure(record, exc))
                    else:
                        self._place(record, key, t, batch, fed)
                if clock.max_seen != mx:  # this record moved the clock
                    mx = clock.max_seen
                    cut = mx - behind
                    if cut < floor:
                        cut = floor
                    safe, safe_end = _on_time_from(cut, size)
                    if mx >= hot_end:
                        hot_start, hot_end = self._range(mx)
                        hot = {k: g[hot_start] for k, g in batch.items() if hot_start in g}
                if placed is not None:
                    key, start, group = placed
                    if start == hot_start:
                        hot[key] = group
        clock.max_seen = mx
        self._hot_start, self._hot_end = hot_start, hot_end
        fed.absorbed += len(records) - slow  # (the general path counted its own)
        await self._join(batch, fed)

    def _open_group(
        self, record: Any, kf: str, tf: str, batch: Batch
    ) -> tuple[Any, Any, list[Any]] | None:
        """A record that left :meth:`_absorb_groups`'s loop, placed in its group as the
        loop of a key function would place it: its key, window start and group;
        ``None``: the general path takes it (late, or a key or time that cannot be read
        as they are)."""
        clock, size = self.clock, self.size
        try:
            key = record[kf]
            t = record[tf]
            if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                return None  # the general path decides
            mx = clock.max_seen
            if t > mx:
                if t >= _INF:
                    return None
                mx = t
            limit = mx - (clock.bound + self.slack)  # (as limit(), before the clock moves)
            if limit < clock.floor:
                limit = clock.floor
            clock.max_seen = mx
            start = t - t % size
            if start + size <= limit or start != start:  # late, or nan
                return None
            groups = batch.get(key)
            group = None if groups is None else groups.get(start)
        except Exception:
            return None
        if group is not None:
            group.append(record)
        elif groups is None:
            group = [record]
            batch[key] = {start: group}
        else:
            group = groups[start] = [record]
        return key, start, group

    async def _absorb_sums(
        self, records: Sequence[Any], fed: Fed, kf: str, tf: str, vf: str
    ) -> None:
        """The hottest loop: :class:`Stats` of a field, by a key field. Per record: its
        window's ``[count, sum, min, max]`` by one lookup, and the additions; the
        decisions are those of :meth:`_absorb_stats`, per record.

        - The hot window (:meth:`_range`) is the window of the largest event time seen
          (``mx``): a record with ``hot_start <= t <= mx`` belongs to it, and it is open
          (its end is above ``mx``, so above the limit), so such a record (most of them)
          costs two comparisons and a lookup by key in ``hot``, no window arithmetic.
        - Any other record: its window's start, then lateness, skipped for an event time
          at or above :func:`_on_time_from` of the running limit (its window ends after
          the limit: the same decision), then a lookup in the store.
        - A window (or a key of ``hot``) not there yet raises ``KeyError`` (cheaper than
          ``get`` calls per record); :meth:`_open_sum` then places that record as
          :meth:`_absorb_stats` would (a new window, mostly), else the general path takes
          it (late, or a key, time or value that cannot be read as they are)."""
        clock = self.clock
        extremes = self.stats is not None and self.stats.extremes
        size, store = self.size, self.store
        hot, hot_start, hot_end = self._hot, self._hot_start, self._hot_end
        mx, floor = clock.max_seen, clock.floor
        behind = clock.bound + self.slack
        cut = mx - behind
        if cut < floor:
            cut = floor
        safe, safe_end = _on_time_from(cut, size)
        batch: Batch = {}  # records for the general path
        slow = 0
        inf = _INF
        items = iter(records)
        record: Any = None
        for _ in range(len(records) + 1):  # (bounded: each pass takes a record, or ends)
            try:
                for record in items:
                    t = record[tf]
                    if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                        raise TypeError(t)  # the general path decides
                    if t > mx:  # (what can raise first: the clock moves only after)
                        if t >= inf:  # the general path refuses it
                            raise TypeError(t)
                        record[kf]  # (unreadable: the clock stays, as below)
                        cut = t - behind
                        if cut < floor:
                            cut = floor
                        if cut >= safe_end:  # (else safe holds)
                            safe, safe_end = _on_time_from(cut, size)
                        if t >= hot_end:  # a newer window: the hot one from now on
                            cold = hot_start == inf  # (the store may hold it already)
                            hot_start, hot_end = self._range(t)
                            hot = self._accumulators(hot_start) if cold else {}
                        mx = t
                    if t >= hot_start:
                        acc = hot[record[kf]]  # KeyError: not in hot yet
                    else:
                        start = t - t % size
                        if t < safe and start + size <= cut:
                            raise _Late
                        acc = store[record[kf]][start]  # KeyError: a window not open yet
                    if extremes:
                        v = record[vf]
                        acc[1] += v  # (first: a value that is no number changes nothing)
                        acc[0] += 1
                        if v < acc[2]:
                            acc[2] = v
                        elif v > acc[3]:
                            acc[3] = v
                    else:
                        acc[1] += record[vf]  # (as above)
                        acc[0] += 1
                break
            except Exception:  # a new window; or late, or a key, time or value to read
                clock.max_seen = mx  # the general way
                placed = self._open_sum(record, kf, tf, vf, extremes)
                if placed is None:
                    slow += 1
                    try:
                        key, t = self._key_time(record)
                    except Exception as exc:
                        fed.rejected.append(RecordFailure(record, exc))
                    else:
                        self._place(record, key, t, batch, fed)
                if clock.max_seen != mx:  # this record moved the clock
                    mx = clock.max_seen
                    cut = mx - behind
                    if cut < floor:
                        cut = floor
                    safe, safe_end = _on_time_from(cut, size)
                    if mx >= hot_end:
                        cold = hot_start == inf
                        hot_start, hot_end = self._range(mx)
                        hot = self._accumulators(hot_start) if cold else {}
                if placed is not None:
                    key, start, acc = placed
                    if start == hot_start:
                        hot[key] = acc
        clock.max_seen = mx
        self._hot, self._hot_start, self._hot_end = hot, hot_start, hot_end
        fed.absorbed += len(records) - slow
        if batch:
            self._cool()  # (the general path may replace accumulators)
            await self._join(batch, fed)

    def _open_sum(
        self, record: Any, kf: str, tf: str, vf: str, extremes: bool
    ) -> tuple[Any, Any, list[Any]] | None:
        """A record that left :meth:`_absorb_sums`'s loop, placed as :meth:`_absorb_stats`
        would place it (in a new window, mostly): its key, window start and accumulator;
        ``None``: the general path takes it (late, or a key, time or value that cannot be
        read as they are)."""
        clock, size = self.clock, self.size
        try:
            key = record[kf]
            t = record[tf]
            if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                return None  # the general path decides
            v = record[vf]
            mx = clock.max_seen
            if t > mx:
                if t >= _INF:
                    return None
                mx = t
            limit = mx - (clock.bound + self.slack)  # (as limit(), before the clock moves)
            if limit < clock.floor:
                limit = clock.floor
            clock.max_seen = mx
            start = t - t % size
            end = start + size
            if end <= limit:
                return None
            wins = self.store.get(key)
            acc = None if wins is None else wins.get(start)
            if acc is not None:
                acc[1] += v
                acc[0] += 1
                if extremes:
                    if v < acc[2]:
                        acc[2] = v
                    elif v > acc[3]:
                        acc[3] = v
                return key, start, acc
            if end != end:  # nan
                return None
            acc = [1, 0 + v, v, v]  # (0 + v: a number, or it raises)
        except Exception:
            return None
        if wins is None:
            self.store[key] = {start: acc}
        else:
            wins[start] = acc
        self.timers.add(end, (key, start))
        self.open_windows += 1
        return key, start, acc

    def _accumulators(self, start: Any) -> dict[Any, list[Any]]:
        """The accumulators of the windows starting at ``start``, by key."""
        return {key: wins[start] for key, wins in self.store.items() if start in wins}

    async def _absorb_stats(self, records: Sequence[Any], fed: Fed, vf: str) -> None:
        """The hot loop for :class:`Stats` of a field: each record is added to its window's
        ``[count, sum, min, max]`` in place, and freed with its micro-batch."""
        stage, clock = self.stage, self.clock
        kf, tf = stage.key, stage.time
        assert isinstance(tf, str)
        assert self.stats is not None
        extremes = self.stats.extremes
        size, store, add = self.size, self.store, self.timers.add
        mx, floor = clock.max_seen, clock.floor
        behind = clock.bound + self.slack
        cut = mx - behind
        if cut < floor:
            cut = floor
        batch: Batch = {}  # records for the general path
        slow = opened = 0
        inf = _INF
        items = iter(records)
        record: Any = None
        while True:
            try:
                for record in items:
                    key = None if kf is None else record[kf]
                    t = record[tf]
                    if type(t) is not float and type(t) is not int:  # (bool, Decimal, ...)
                        raise TypeError(t)  # the general path decides
                    v = record[vf]
                    if t > mx:
                        if t >= inf:  # the general path refuses it
                            raise TypeError(t)
                        cut = t - behind  # (before the clock moves: it may raise)
                        mx = t
                        if cut < floor:
                            cut = floor
                    start = t - t % size
                    end = start + size
                    if end <= cut:
                        raise _Late
                    wins = store.get(key)
                    acc = None if wins is None else wins.get(start)
                    if acc is None:
                        if end != end:  # nan: the general path refuses it
                            raise TypeError(t)
                        acc = [1, 0 + v, v, v]  # (0 + v: a number, or it raises)
                        if wins is None:
                            store[key] = {start: acc}
                        else:
                            wins[start] = acc
                        add(end, (key, start))
                        opened += 1
                    else:
                        acc[1] += v  # (first: a value that is no number changes nothing)
                        acc[0] += 1
                        if extremes:
                            if v < acc[2]:
                                acc[2] = v
                            elif v > acc[3]:
                                acc[3] = v
                break
            except Exception:  # late, or a key, time or value to read the general way
                slow += 1
                clock.max_seen = mx
                try:
                    key, t = self._key_time(record)
                except Exception as exc:
                    fed.rejected.append(RecordFailure(record, exc))
                else:
                    self._place(record, key, t, batch, fed)
                mx = clock.max_seen
                cut = mx - behind
                if cut < floor:
                    cut = floor
        clock.max_seen = mx
        self.open_windows += opened
        fed.absorbed += len(records) - slow
        if batch:
            await self._join(batch, fed)


def _on_time_from(cut: Any, size: float) -> tuple[float, float]:
    """An event time from which every record is on time, and its window's end: for every
    number ``t >= safe`` the window end ``t - t % size + size`` is above ``cut`` (the
    running limit). That end is monotone in ``t`` from 0 up (float rounding keeps order),
    so ``safe`` is the start of ``cut``'s window (or 0) once its own end is checked to be
    above ``cut``; it stays valid for a higher ``cut`` below that end. ``(inf, -inf)``
    when no such start is found (every record is checked), ``(-inf, -inf)`` before any
    record (nothing is late).

    >>> _on_time_from(13.5, 10), _on_time_from(-3.0, 10), _on_time_from(-math.inf, 10)
    ((10.0, 20.0), (0.0, 10.0), (-inf, -inf))
    """
    if cut == -_INF:
        return -_INF, -_INF
    if not (isinstance(cut, float | int) and cut < _INF):
        return _INF, -_INF
    safe = cut - cut % size
    if not safe > 0:
        safe = 0.0
    end = safe - safe % size + size
    if end > cut:
        return float(safe), float(end)
    return _INF, -_INF


class _Late(Exception):
    """The hot loop met a late record: the general path letters it."""


class _Sessions(_Windows):
    """Session windows: ``store[key]`` is the key's open sessions ``[first, last, content,
    pending]`` by first event time (``pending``: the micro-batch's records, with
    ``combine``); a timer at a session's last event time + gap holds the key (a session
    that grew meanwhile is rescheduled when it fires)."""

    kind = "session"

    def __init__(self, stage: WindowStage[Any], gap: float) -> None:
        super().__init__(stage)
        self.gap = gap

    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        touched: dict[int, tuple[Any, list[Any]]] = {}
        for record in records:
            try:
                key, t = self._key_time(record)
            except Exception as exc:
                fed.rejected.append(RecordFailure(record, exc))
                continue
            await self._place(record, key, t, touched, fed)
        for key, session in touched.values():  # with combine: each session's batch, once
            if session[3]:
                where = (key, session[0], session[1] + self.gap)
                session[2] = await self._fold(session[2], session[3], where, fed)
                session[3] = []

    async def _place(
        self, record: Any, key: Any, t: float, touched: dict[int, tuple[Any, list[Any]]], fed: Fed
    ) -> None:
        self._advance(t)
        gap, partial = self.gap, self.partial
        if t < self.limit():
            fed.rejected.append(self._late(record, key, t, t + gap, t))
            fed.late += 1
            return
        fed.absorbed += 1
        if not partial:
            self.held += 1
        sessions = self.store.get(key)
        touching = [] if sessions is None else [s for s in sessions if s[0] - gap < t < s[1] + gap]
        if not touching:
            session = [t, t, _NONE, [record]] if partial else [t, t, [record], None]
            if sessions is None:
                self.store[key] = [session]
            else:
                sessions.append(session)
                sessions.sort(key=lambda s: s[0])
            self.timers.add(t + gap, key)
            self.open_windows += 1
            if partial:
                touched[id(session)] = (key, session)
            return
        into = touching[0]
        assert sessions is not None
        for other in touching[1:]:  # the record bridges sessions: they become one
            first, last = min(into[0], other[0]), max(into[1], other[1])
            into[2] = await self._merged(into[2], other[2], (key, first, last + gap), fed)
            into[0], into[1] = first, last
            if partial:
                into[3].extend(other[3])
                touched.pop(id(other), None)
            sessions.remove(other)
            self.open_windows -= 1
        if t < into[0]:
            into[0] = t
        if t > into[1]:
            into[1] = t
        if partial:
            into[3].append(record)
            touched[id(into)] = (key, into)
        else:
            into[2].append(record)

    async def _fire(self, limit: float, fed: Fed) -> None:
        if limit == _INF:
            keys = list(self.store)
            self.timers.clear()
        else:
            keys = [k for _, ks in self.timers.pop_until(limit) for k in ks]
        if not keys:
            return
        gap, store = self.gap, self.store
        closed = []
        for key in dict.fromkeys(keys):
            sessions = store.get(key)
            if sessions is None:
                continue
            keep = []
            for session in sessions:
                first, last, content = session[0], session[1], session[2]
                if last + gap <= limit:
                    closed.append((key, first, last + gap, content))
                else:
                    keep.append(session)
            if keep:
                store[key] = keep
                self.timers.add(min(s[1] for s in keep) + gap, key)
            else:
                del store[key]
        closed.sort(key=lambda c: c[2])
        await self._emit(closed, fed)

    def _dump(self) -> Any:
        dumped = self._dumped
        return [
            [key, [[s[0], s[1], dumped(s[2])] for s in sessions]]
            for key, sessions in self.store.items()
        ]

    def _load(self, data: Any) -> None:
        gap = self.gap
        for key, sessions in data:
            key = _statecodec.hashable(key)
            mine = self.store[key] = []
            for first, last, content in sessions:
                content = self._content(content)
                mine.append([first, last, content, [] if self.partial else None])
                if not self.partial:
                    self.held += len(content)
            self.timers.add(min(s[1] for s in mine) + gap, key)
            self.open_windows += len(mine)


class _Counts(_Windows):
    """Count windows: ``store[key]`` is ``[records before the open window, records in it,
    its content]`` (a key's counter stays, so its windows keep their numbers)."""

    kind = "count"

    def __init__(self, stage: WindowStage[Any], size: int) -> None:
        super().__init__(stage)
        self.size = size
        self._full: list[tuple[Any, float, float, Any]] = []

    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        stage = self.stage
        pending: dict[Any, list[Any]] = {}
        for record in records:
            try:
                key = None if stage.key is None else read_field(record, stage.key, "key")
                group = pending.get(key)
            except Exception as exc:
                fed.rejected.append(RecordFailure(record, exc))
                continue
            if group is None:
                pending[key] = [record]
            else:
                group.append(record)
            fed.absorbed += 1
        for key, group in pending.items():
            await self._count(key, group, fed)

    async def _count(self, key: Any, records: list[Any], fed: Fed) -> None:
        size = self.size
        entry = self.store.get(key)
        if entry is None:
            entry = self.store[key] = [0, 0, _NONE]
        at = 0
        while at < len(records):
            base, fill = entry[0], entry[1]
            if fill == 0:
                self.open_windows += 1
            part = records[at : at + size - fill]
            at += len(part)
            where = (key, base, base + size)
            entry[2] = await self._fold(entry[2], part, where, fed)
            entry[1] = fill = fill + len(part)
            if not self.partial:
                self.held += len(part)
            if fill == size:
                self._full.append((key, base, base + size, entry[2]))
                entry[0], entry[1], entry[2] = base + size, 0, _NONE

    async def _fire(self, limit: float, fed: Fed) -> None:
        closed, self._full = self._full, []
        if limit == _INF:
            for key, (base, fill, content) in self.store.items():
                if fill:
                    closed.append((key, base, base + fill, content))
            self.store.clear()
        if closed:
            await self._emit(closed, fed)

    def limit(self) -> float:
        return -_INF  # nothing closes by time

    def _dump(self) -> Any:
        dumped = self._dumped
        return [[key, b, f, dumped(c)] for key, (b, f, c) in self.store.items()]

    def _load(self, data: Any) -> None:
        for key, base, fill, content in data:
            content = self._content(content)
            self.store[_statecodec.hashable(key)] = [base, fill, content]
            if fill:
                self.open_windows += 1
                if not self.partial:
                    self.held += fill
