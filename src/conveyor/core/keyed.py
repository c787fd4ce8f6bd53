"""Keyed state: the one mechanism under :class:`KeyedStage` and the window stages.

A *stateful* stage keeps state per key across the micro-batches of a stream. Its state lives
in an :class:`Operator`, made fresh for each run (``stage.operator()``): a dict of state by
key, :class:`Timers` (deadlines, each with what waits for it), an :class:`EventClock` (the
event-time watermark), and a snapshot of all of it as JSON for checkpoints. The runner feeds
the operator micro-batches (:meth:`Operator.feed`), wakes it when nothing arrives
(:meth:`Operator.tick`), closes everything at the end of the input (:meth:`Operator.finish`)
and takes :meth:`Operator.snapshot` at each checkpoint (restored with
:meth:`Operator.restore` on a resume). Collection mode runs the same operator over the
whole input, so both modes give the same results.

Event time and the watermark: a record's event time is a number of seconds, a ``datetime``
(naive ones are read as UTC) or an ISO 8601 string. The watermark is the largest event time
seen minus ``max_out_of_orderness`` (the disorder the stream may have), so a record up to
that much older than the newest is still on time. A stage with an ``idle_timeout`` that gets
no record for that many seconds (processing time) advances its watermark to its last
pending deadline, so the last windows close (and keys with an event-time ``ttl`` expire)
while the source is quiet.

Accounting (ADR 0011): a record a stateful stage takes goes into its state (*absorbed*);
what the stage emits is new (*born*); a record it cannot take (its key or time cannot be
read, a step that raises, a late record of a window) is a dead letter. So for every
stateful stage: records in = absorbed + dead-lettered (+ dropped by its input contract),
and out = born.
"""

from __future__ import annotations

import heapq
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from operator import itemgetter
from typing import Any, ClassVar, Generic, TypeVar

from conveyor.core import _statecodec
from conveyor.core._callables import callable_name, is_async_callable
from conveyor.core.context import PipelineContext
from conveyor.core.result import RecordFailure, StageResult
from conveyor.core.stage import PipelineStage
from conveyor.errors import PipelineDefinitionError

__all__ = [
    "EventClock",
    "Fed",
    "KeyedStage",
    "Operator",
    "StatefulStage",
    "Timers",
    "duration",
]

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S")

Field = str | Callable[[Any], Any]
"""How a stage reads a key or an event time from a record: a field name (a dict key, or an
attribute of an object) or a function of the record."""

_INF = math.inf
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def duration(value: Any, what: str, *, zero: bool = False) -> float:
    """Seconds from ``value``: a number, a ``timedelta`` or a string such as ``"250ms"``,
    ``"10s"``, ``"5m"``, ``"2h"``, ``"1d"``; ``what`` names it in the error.

    >>> duration("1.5m", "size"), duration(10, "size")
    (90.0, 10.0)
    """
    seconds: float | None = None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif hasattr(value, "total_seconds"):
        seconds = float(value.total_seconds())
    elif isinstance(value, str):
        text = value.strip().lower()
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :].strip() or "s"
        if unit in _UNITS:
            try:
                seconds = float(number) * _UNITS[unit]
            except ValueError:
                seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero):
        least = ">= 0" if zero else "> 0"
        raise PipelineDefinitionError(
            f"{what} must be a duration {least}: seconds (10, 0.5), a timedelta or a string "
            f"such as '250ms', '10s', '5m', '2h', got {value!r}"
        )
    return seconds


def _getter(spec: Field | None, what: str) -> Callable[[Any], Any] | None:
    """A fast reader for a field name (``itemgetter``) or the function itself."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if not spec:
            raise PipelineDefinitionError(f"{what} must name a field, got an empty string")
        return itemgetter(spec)
    if callable(spec):
        return spec
    raise PipelineDefinitionError(
        f"{what} must be a field name or a function of the record, got {type(spec).__name__}"
    )


def _spec_name(spec: Field | None) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    return callable_name(spec)


def read_field(record: Any, spec: Field, what: str) -> Any:
    """``spec`` of ``record``, with the error a dead letter should carry."""
    if not isinstance(spec, str):
        return spec(record)
    try:
        return record[spec]
    except (KeyError, IndexError):
        raise KeyError(f"the record has no {what} field {spec!r}") from None
    except TypeError:
        if hasattr(record, spec):
            return getattr(record, spec)
        raise KeyError(
            f"the record ({type(record).__name__}) has no {what} field {spec!r}"
        ) from None


def seconds_of(value: Any) -> tuple[float, str]:
    """An event time as POSIX seconds, and its kind (``num``, ``aware`` or ``naive``)."""
    kind = type(value)
    if (kind is int or kind is float) and math.isfinite(value):
        return value, "num"
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC).timestamp(), "naive"
        return value.timestamp(), "aware"
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp(), "naive"
    if isinstance(value, str):
        try:
            return seconds_of(datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value), "num"
    raise TypeError(
        f"event time must be a number of seconds, a datetime or an ISO 8601 string, got {value!r}"
    )


def time_value(seconds: float, kind: str | None) -> Any:
    """POSIX ``seconds`` back in the kind the stage's event times had."""
    if kind == "aware":
        return datetime.fromtimestamp(seconds, UTC)
    if kind == "naive":
        return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    return seconds


class Timers:
    """Deadlines, each with the items waiting for it (in order, without repeats); the
    earliest first.

    >>> t = Timers(); t.add(20, "b"); t.add(10, "a"); t.add(20, "c")
    >>> t.pop_until(15), len(t), t.latest()
    ([(10, ['a'])], 1, 20)
    """

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[float] = []
        self._due: dict[float, dict[Any, None]] = {}

    def add(self, deadline: float, item: Any) -> None:
        """Let ``item`` wait for ``deadline``."""
        bucket = self._due.get(deadline)
        if bucket is None:
            self._due[deadline] = {item: None}
            heapq.heappush(self._heap, deadline)
        else:
            bucket[item] = None

    def pop_until(self, limit: float) -> list[tuple[float, list[Any]]]:
        """Take every deadline ``<= limit`` with its items, earliest first."""
        heap = self._heap
        if not heap or heap[0] > limit:
            return []
        out = []
        due = self._due
        while heap and heap[0] <= limit:
            deadline = heapq.heappop(heap)
            out.append((deadline, list(due.pop(deadline))))
        return out

    def latest(self) -> float | None:
        """The last deadline (``None``: none)."""
        return max(self._due) if self._due else None

    def clear(self) -> None:
        self._heap.clear()
        self._due.clear()

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(slots=True)
class EventClock:
    """The event-time clock of a stateful stage: the largest event time seen, the disorder
    allowed (``bound`` = ``max_out_of_orderness``), and a floor that idleness raises."""

    bound: float = 0.0
    idle_timeout: float | None = None
    max_seen: float = -_INF
    floor: float = -_INF
    """A lower bound of the operator's limit, raised when the stream is idle."""
    arrived: float = field(default_factory=time.monotonic)
    """When the last record came (``time.monotonic()``)."""

    @property
    def watermark(self) -> float:
        """The largest event time seen minus ``bound`` (``-inf`` before any record)."""
        return self.max_seen - self.bound

    def idle(self, now: float) -> bool:
        """Whether no record came for ``idle_timeout`` seconds."""
        return self.idle_timeout is not None and now - self.arrived >= self.idle_timeout


@dataclass(slots=True)
class Fed:
    """What an operator made of a micro-batch (or a tick, or the end of input).

    ``outputs``: records it emits; ``rejected``: input records it did not take, each with
    its error (a late record's is a :class:`~conveyor.errors.LateRecordError`);
    ``absorbed``: input records it took into its state; ``lost``: outputs it could not
    make (an aggregate or ``on_expire`` that raised), each as a record describing it
    (``{"key", "start", "end", "records"}`` or ``{"key", "state"}``) with the error: they
    count as born and dead-lettered.
    """

    outputs: list[Any] = field(default_factory=list)
    rejected: list[RecordFailure] = field(default_factory=list)
    absorbed: int = 0
    lost: list[RecordFailure] = field(default_factory=list)
    late: int = 0

    def extend(self, other: Fed) -> None:
        self.outputs.extend(other.outputs)
        self.rejected.extend(other.rejected)
        self.absorbed += other.absorbed
        self.lost.extend(other.lost)
        self.late += other.late


class Operator(ABC):
    """The running state of one stateful stage; see the module docstring.

    Subclasses keep their per-key state in :attr:`store` and their deadlines in
    :attr:`timers`, and implement :meth:`_absorb`, :meth:`_fire`, :meth:`_dump` and
    :meth:`_load`. :meth:`limit` is what deadlines are compared with: the watermark (minus
    any allowed lateness) by default.
    """

    kind: ClassVar[str]
    """The state's kind in a snapshot (a snapshot of another kind is refused)."""

    def __init__(self, stage: StatefulStage[Any, Any]) -> None:
        self.name = stage.name
        self.clock = EventClock(stage.max_out_of_orderness, stage.idle_timeout)
        self.store: dict[Any, Any] = {}
        self.timers = Timers()
        self.time_kind: str | None = None
        self.open_windows = 0
        self.held = 0
        self.slack = 0.0  # subtracted from the watermark for deadlines (allowed lateness)

    # -- what the runner calls --------------------------------------------------------------

    @property
    def tick_seconds(self) -> float | None:
        """How often the runner should wake the operator when no record arrives (``None``:
        never): a fraction of its idle timeout."""
        idle = self.clock.idle_timeout
        return None if idle is None else min(max(idle / 4, 0.005), 0.25)

    async def feed(self, records: Sequence[Any]) -> Fed:
        """Take a micro-batch; emit what its records made due."""
        fed = Fed()
        if records:
            await self._absorb(records, fed)
            self.clock.arrived = time.monotonic()
        await self._fire(self.limit(), fed)
        return fed

    async def tick(self) -> Fed:
        """Nothing arrived for a while: an idle stream advances its watermark to its last
        pending deadline; emit what became due."""
        fed = Fed()
        clock = self.clock
        if clock.idle(time.monotonic()) and len(self.timers):
            latest = self.timers.latest()
            if latest is not None and latest > clock.floor:
                clock.floor = latest
        await self._fire(self.limit(), fed)
        return fed

    async def finish(self) -> Fed:
        """The end of the input: emit everything still open."""
        fed = Fed()
        await self._fire(_INF, fed)
        return fed

    def limit(self) -> float:
        """Deadlines up to this are due: the watermark minus the allowed lateness (or the
        floor idleness set)."""
        clock = self.clock
        limit = clock.max_seen - (clock.bound + self.slack)  # (the hot loops' arithmetic)
        return limit if limit > clock.floor else clock.floor

    @property
    def watermark(self) -> float | None:
        """The event-time watermark (POSIX seconds; ``None`` before any record)."""
        clock = self.clock
        wm = max(clock.watermark, clock.floor + self.slack)
        return wm if math.isfinite(wm) else None

    @property
    def keys(self) -> int:
        """Keys with state."""
        return len(self.store)

    def snapshot(self) -> str:
        """The whole state as JSON text (see :mod:`conveyor.core._statecodec`)."""
        clock = self.clock
        body = {
            "format": 1,
            "kind": self.kind,
            "max_seen": clock.max_seen if math.isfinite(clock.max_seen) else None,
            "floor": clock.floor if math.isfinite(clock.floor) else None,
            "time_kind": self.time_kind,
            "state": self._dump(),
        }
        try:
            return _statecodec.dumps(body)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"stage {self.name!r}: its state cannot be checkpointed: {exc}"
            ) from exc

    def restore(self, text: str) -> None:
        """Continue from a :meth:`snapshot` (a resumed run)."""
        body = _statecodec.loads(text)
        if not isinstance(body, dict) or body.get("kind") != self.kind:
            found = body.get("kind") if isinstance(body, dict) else type(body).__name__
            raise ValueError(f"the state is of a {found!r} stage, not of a {self.kind!r} one")
        clock = self.clock
        clock.max_seen = -_INF if body["max_seen"] is None else body["max_seen"]
        clock.floor = -_INF if body["floor"] is None else body["floor"]
        self.time_kind = body["time_kind"]
        self.store.clear()
        self.timers.clear()
        self.open_windows = self.held = 0
        self._load(body["state"])

    # -- what subclasses implement ----------------------------------------------------------

    @abstractmethod
    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        """Take ``records`` into the state (or reject them into ``fed``)."""

    @abstractmethod
    async def _fire(self, limit: float, fed: Fed) -> None:
        """Emit into ``fed`` what is due at ``limit`` (``inf``: everything)."""

    @abstractmethod
    def _dump(self) -> Any:
        """The state (:attr:`store`) as JSON-able data (keys as values, not dict keys)."""

    @abstractmethod
    def _load(self, data: Any) -> None:
        """Rebuild :attr:`store` and :attr:`timers` from :meth:`_dump`'s data."""

    # -- helpers ----------------------------------------------------------------------------

    def _advance(self, t: float) -> None:
        if t > self.clock.max_seen:
            self.clock.max_seen = t

    def _event_time(self, value: Any) -> float:
        seconds, kind = seconds_of(value)
        if kind != "num":
            self.time_kind = kind
        elif self.time_kind is None:
            self.time_kind = "num"
        return seconds


class StatefulStage(PipelineStage[Iterable[T], list[R]]):
    """Base of the stages that keep keyed state over a stream: :class:`KeyedStage` and
    :class:`~conveyor.WindowStage`. The runner treats them as ``StageKind.STATEFUL``.

    Their common parameters: ``key`` (a field name or a function of the record; ``None``:
    one key for the whole stream), ``time`` (the event time: a field name or a function),
    ``max_out_of_orderness`` (seconds of disorder the stream may have: the watermark is the
    largest event time seen minus this), ``idle_timeout`` (seconds of processing time
    without a record after which the watermark advances to the last pending deadline) and
    ``continue_on_error`` (collection mode: keep going past a record that fails, recording
    it in the context, instead of failing the stage; streaming sends it to the dead-letter
    queue either way).
    """

    continue_on_error: bool = False

    def __init__(
        self,
        *,
        key: Field | None,
        time: Field | None,
        max_out_of_orderness: Any,
        idle_timeout: Any,
        continue_on_error: bool,
    ) -> None:
        self.key = key
        self.time = time
        self.key_getter = _getter(key, "key")
        self.time_getter = _getter(time, "time")
        self.max_out_of_orderness = duration(
            max_out_of_orderness, "max_out_of_orderness", zero=True
        )
        self.idle_timeout = None if idle_timeout is None else duration(idle_timeout, "idle_timeout")
        self.continue_on_error = continue_on_error

    @abstractmethod
    def operator(self) -> Operator:
        """A fresh operator: the state of one run."""

    @property
    def state_identity(self) -> list[Any]:
        """What the meaning of this stage's state depends on (part of a checkpoint's
        fingerprint: a resume with other windows or keys is refused)."""
        return [_spec_name(self.key), _spec_name(self.time)]

    async def process(self, data: Iterable[T], context: PipelineContext) -> StageResult[list[R]]:
        """Collection mode: the whole input through a fresh operator, then its end."""
        t0 = time.perf_counter()
        items = data if isinstance(data, list) else list(data)
        operator = self.operator()
        fed = await operator.feed(items)
        fed.extend(await operator.finish())
        failures = [*fed.rejected, *fed.lost]
        for failure in failures:
            context.record_error(self.name, failure.error, failure.item)
        counts: dict[str, Any] = {
            "duration_ms": (time.perf_counter() - t0) * 1000.0,
            "records_in": len(items),
            "records_out": len(fed.outputs),
            "records_failed": len(failures),
            "failures": failures,
        }
        if failures and not self.continue_on_error:
            return StageResult.fail(failures[0].error, **counts)
        return StageResult.ok(fed.outputs, **counts)


class KeyedStage(StatefulStage[T, R], Generic[T, S, R]):
    """Run ``step(state, record) -> (new_state, outputs)`` for each record, with the state
    of the record's key: running totals, deduplication within a horizon, sessions.

    ``state`` is ``None`` for a key not seen yet (or forgotten); return ``None`` as the new
    state to forget the key; ``outputs`` is an iterable of records to emit (empty: nothing).
    ``step`` may be sync or async. With ``ttl`` a key's state expires ``ttl`` seconds after
    its last record: of event time when ``time`` is given (the key's newest event time +
    ``ttl`` passed by the watermark), else of processing time (wall clock, so a resumed run
    keeps counting); ``on_expire(key, state) -> outputs`` (sync or async) may emit a last
    result then. At the end of the input every key expires. State is part of every
    checkpoint (JSON: see :mod:`conveyor.core._statecodec` for what it may hold), so a
    resumed run continues with the same state. Without ``ttl`` the state grows with the
    number of keys.

    >>> import asyncio
    >>> def add(total, r):
    ...     total = (total or 0) + r["n"]
    ...     return total, [{"k": r["k"], "total": total}]
    >>> totals = KeyedStage(add, key="k", name="totals")
    >>> asyncio.run(totals.process([{"k": "a", "n": 1}, {"k": "b", "n": 5}, {"k": "a", "n": 2}],
    ...                            PipelineContext())).data
    [{'k': 'a', 'total': 1}, {'k': 'b', 'total': 5}, {'k': 'a', 'total': 3}]
    """

    def __init__(
        self,
        step: Callable[[S | None, T], tuple[S | None, Iterable[R]]]
        | Callable[[S | None, T], Awaitable[tuple[S | None, Iterable[R]]]],
        *,
        key: Field | None,
        time: Field | None = None,
        ttl: Any = None,
        on_expire: Callable[[Any, S], Iterable[R]]
        | Callable[[Any, S], Awaitable[Iterable[R]]]
        | None = None,
        max_out_of_orderness: Any = 0.0,
        idle_timeout: Any = None,
        continue_on_error: bool = False,
        name: str | None = None,
    ) -> None:
        if not callable(step):
            raise PipelineDefinitionError(f"KeyedStage needs a callable step, got {step!r}")
        if on_expire is not None and not callable(on_expire):
            raise PipelineDefinitionError(
                f"KeyedStage: on_expire must be callable, got {on_expire!r}"
            )
        super().__init__(
            key=key,
            time=time,
            max_out_of_orderness=max_out_of_orderness,
            idle_timeout=idle_timeout,
            continue_on_error=continue_on_error,
        )
        if idle_timeout is not None and time is None:
            raise PipelineDefinitionError(
                "KeyedStage: idle_timeout advances the event-time watermark; it needs time= "
                "(a ttl without time counts processing time and needs no idle timeout)"
            )
        self.step = step
        self.on_expire = on_expire
        self.ttl = None if ttl is None else duration(ttl, "ttl")
        self.name = name or f"keyed({callable_name(step)})"

    @property
    def state_identity(self) -> list[Any]:
        return [
            "keyed",
            *super().state_identity,
            callable_name(self.step),
            None if self.on_expire is None else callable_name(self.on_expire),
            self.ttl,
        ]

    def operator(self) -> Operator:
        return _Steps(self)


class _Steps(Operator):
    """The operator of a :class:`KeyedStage`: ``store[key]`` is the user's state;
    ``touched[key]`` the key's newest event time (or wall-clock time) for its ``ttl``."""

    kind = "keyed"

    def __init__(self, stage: KeyedStage[Any, Any, Any]) -> None:
        super().__init__(stage)
        self.stage = stage
        self.step = stage.step
        self.step_async = is_async_callable(stage.step)
        self.on_expire = stage.on_expire
        self.ttl = stage.ttl
        self.event_ttl = stage.time is not None
        self.touched: dict[Any, float] = {}

    @property
    def tick_seconds(self) -> float | None:
        idle = super().tick_seconds
        if self.ttl is None or self.event_ttl:
            return idle
        every = min(max(self.ttl / 4, 0.005), 1.0)
        return every if idle is None else min(every, idle)

    def limit(self) -> float:
        if self.ttl is not None and not self.event_ttl:
            return time.time()
        return super().limit()

    async def _absorb(self, records: Sequence[Any], fed: Fed) -> None:
        stage, store, touched, ttl = self.stage, self.store, self.touched, self.ttl
        step, rejected, outputs = self.step, fed.rejected, fed.outputs
        wall = ttl is not None and not self.event_ttl
        for record in records:
            try:
                key = None if stage.key is None else read_field(record, stage.key, "key")
                t = None
                if stage.time is not None:
                    t = self._event_time(read_field(record, stage.time, "time"))
                hash(key)
            except Exception as exc:
                rejected.append(RecordFailure(record, exc))
                continue
            if t is not None:
                self._advance(t)
            if ttl is not None and key in touched and touched[key] + ttl <= self.limit():
                await self._expire(key, fed)  # its horizon passed before this record came
            try:
                result: Any = step(store.get(key), record)
                if self.step_async or hasattr(result, "__await__"):
                    result = await result
                new, made = _step_result(stage.name, result)
            except Exception as exc:
                rejected.append(RecordFailure(record, exc))
                continue
            outputs.extend(made)
            fed.absorbed += 1
            if new is None:
                store.pop(key, None)
                touched.pop(key, None)
                continue
            fresh = key not in store
            store[key] = new
            if ttl is not None:
                stamp = time.time() if wall else t
                assert stamp is not None
                before = touched.get(key)
                touched[key] = stamp if before is None or stamp > before else before
                if fresh:
                    self.timers.add(touched[key] + ttl, key)

    async def _fire(self, limit: float, fed: Fed) -> None:
        if limit == _INF:
            for key in list(self.store):
                await self._expire(key, fed)
            self.timers.clear()
            return
        ttl = self.ttl
        if ttl is None:
            return
        for _, keys in self.timers.pop_until(limit):
            for key in keys:
                if key not in self.store:
                    continue
                due = self.touched[key] + ttl
                if due > limit:
                    self.timers.add(due, key)
                else:
                    await self._expire(key, fed)

    async def _expire(self, key: Any, fed: Fed) -> None:
        state = self.store.pop(key)
        self.touched.pop(key, None)
        on_expire = self.on_expire
        if on_expire is None:
            return
        try:
            made: Any = on_expire(key, state)
            if hasattr(made, "__await__"):
                made = await made
            fed.outputs.extend(_outputs(self.name, made, "on_expire"))
        except Exception as exc:
            fed.lost.append(RecordFailure({"key": key, "state": state}, exc))

    def _dump(self) -> Any:
        touched = self.touched
        return [[key, state, touched.get(key)] for key, state in self.store.items()]

    def _load(self, data: Any) -> None:
        for key, state, stamp in data:
            key = _statecodec.hashable(key)
            self.store[key] = state
            if stamp is not None:
                self.touched[key] = stamp
                if self.ttl is not None:
                    self.timers.add(stamp + self.ttl, key)


def _step_result(stage: str, result: Any) -> tuple[Any, list[Any]]:
    if not isinstance(result, tuple) or len(result) != 2:
        raise TypeError(
            f"the step of {stage!r} returned {type(result).__name__}; return a pair "
            "(new_state, outputs): outputs a list of records (empty for none), new_state "
            "None to forget the key"
        )
    return result[0], _outputs(stage, result[1], "step")


def _outputs(stage: str, made: Any, what: str) -> list[Any]:
    if made is None:
        return []
    if isinstance(made, list):
        return made
    if isinstance(made, str | bytes | dict) or not isinstance(made, Iterable):
        raise TypeError(
            f"the {what} of {stage!r} gave {type(made).__name__} as its outputs; give a "
            "list of records (empty for none)"
        )
    return list(made)
