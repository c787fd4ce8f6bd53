"""Broker sources: NATS JetStream (:class:`NatsSource`) and Redis Streams
(:class:`RedisSource`), acknowledged only once their records have left the pipeline.

Both are :class:`~conveyor.core.source.AcknowledgingSource` s: they need a run with
checkpoints. A source numbers what it yields (its ``offset``, the run's positions) and keeps
each delivered message by position until a stored checkpoint covers it; then it acks it
(JetStream: ``+ACK`` on the reply subject, then a flush; Redis: ``XACK``). A record leaves
through the sink or a durable dead letter (a stage that fails it, a body that is not JSON),
so a message is acked only after its outcome is safe. A crash loses nothing: what was not
acked is redelivered by the broker. The checkpoint also keeps the ids of the covered messages
that were not acked yet when it was written (a crash between the checkpoint and the ack); a
resumed run acks those at once instead of processing them again, so an exactly-once sink sees
each message once. A plain run after an unfinished one goes on from its checkpoint.

Poison messages: a message whose deliveries never end in an ack (it kills or hangs the
consumer) is counted by the broker (JetStream's ``num_delivered``, the Redis pending entry's
delivery count). Once ``max_deliveries`` deliveries ended without an ack, the next delivery
becomes a dead letter of the source (``{"stream", "id", "body", "encoding", "deliveries"}``,
``... delivered N times without an acknowledgement``) and is acked (JetStream: terminated)
once the letter is durable. A message on its last chance (``max_deliveries - 1`` deliveries
without an ack) is let through *alone*: what was delivered before it is acknowledged first,
and nothing after it is read until it is acknowledged, so that a crash it causes counts
against it only, not against the messages around it.

The drivers are imported when a source starts reading: ``pip install 'conveyor[nats]'``
(nats-py) or ``'conveyor[redis]'`` (redis-py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from conveyor.core.source import Rejected, Source
from conveyor.errors import PipelineDefinitionError, SourceRecordError, SourceUnavailableError

__all__ = ["NatsSource", "RedisSource"]

logger = logging.getLogger("conveyor.connectors")

_WAIT_STEP = 0.5  # seconds between two asks for a checkpoint while waiting for an ack
_PAGE = 200  # pending entries looked at per XPENDING call
_RECENT = 200_000  # JetStream sequences acked lately that a late redelivery is checked against


def _driver(module: str, package: str, extra: str, needs: str) -> Any:
    """``module`` imported, or an ``ImportError`` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(
            f"{needs} needs {package}, which is not installed: pip install 'conveyor[{extra}]'"
        ) from exc


def _body_text(body: bytes) -> tuple[str, str]:
    """``(text, encoding)`` of a message body for a dead letter: UTF-8 text, else base64.

    >>> _body_text(b'{"a": 1}'), _body_text(b"\\xff")
    (('{"a": 1}', 'utf-8'), ('/w==', 'base64'))
    """
    try:
        return body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode("ascii"), "base64"


def _seq_ranges(seqs: Iterable[int]) -> list[list[int]]:
    """Sorted ``[first, last]`` runs of consecutive integers.

    >>> _seq_ranges([5, 1, 2, 3, 9])
    [[1, 3], [5, 5], [9, 9]]
    """
    out: list[list[int]] = []
    for seq in sorted(set(seqs)):
        if out and seq == out[-1][1] + 1:
            out[-1][1] = seq
        else:
            out.append([seq, seq])
    return out


class _Delivery:
    """A delivered message the source holds until a checkpoint covers it."""

    __slots__ = ("ident", "reply", "term", "touched")

    def __init__(self, ident: Any, reply: str | None = None, *, term: bool = False) -> None:
        self.ident = ident  # JetStream stream sequence / Redis entry id
        self.reply = reply  # JetStream: the subject its ack goes to
        self.term = term  # a poison message's letter: terminate rather than ack
        self.touched = time.monotonic()  # delivered, or last kept alive


class _BrokerSource(Source):
    """What the two broker sources share: positions, held deliveries, acknowledgement through
    checkpoints, the restored state, waiting for a message let through alone, bounded runs."""

    rejects = True
    _broker: ClassVar[str] = ""

    def __init__(
        self,
        *,
        stream: str,
        max_deliveries: int,
        batch: int,
        format: str,
        formats: tuple[str, ...],
        idle_timeout: float | None,
        max_messages: int | None,
        unavailable_after: float,
        name: str,
    ) -> None:
        kind = type(self).__name__
        if not isinstance(stream, str) or not stream.strip():
            raise PipelineDefinitionError(f"{kind}: stream must be a name, got {stream!r}")
        if not _positive_int(max_deliveries):
            raise PipelineDefinitionError(
                f"{kind}: max_deliveries must be an int >= 1, got {max_deliveries!r}"
            )
        if not _positive_int(batch):
            raise PipelineDefinitionError(f"{kind}: batch must be an int >= 1, got {batch!r}")
        if format not in formats:
            raise PipelineDefinitionError(
                f"{kind}: format must be one of {', '.join(formats)}, got {format!r}"
            )
        if idle_timeout is not None and not (_number(idle_timeout) and idle_timeout > 0):
            raise PipelineDefinitionError(
                f"{kind}: idle_timeout must be seconds > 0 or None, got {idle_timeout!r}"
            )
        if max_messages is not None and not _positive_int(max_messages):
            raise PipelineDefinitionError(
                f"{kind}: max_messages must be an int >= 1 or None, got {max_messages!r}"
            )
        if not (_number(unavailable_after) and unavailable_after > 0):
            raise PipelineDefinitionError(
                f"{kind}: unavailable_after must be seconds > 0, got {unavailable_after!r}"
            )
        self.stream = stream
        self.max_deliveries = max_deliveries
        self.batch = batch
        self.format = format
        self.idle_timeout = idle_timeout
        self.max_messages = max_messages
        self.unavailable_after = float(unavailable_after)
        self.name = name
        self._position = 0
        self._held: dict[int, _Delivery] = {}  # position -> delivery, in position order
        self._index: dict[Any, int] = {}  # id -> position of the held ones
        self._restored: set[Any] = set()  # done by a checkpoint, maybe not acked yet
        self._request: Callable[[], None] | None = None
        self._acked = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._taken = 0  # yielded by this run (max_messages)
        self._opened = False

    # -- the protocol ----------------------------------------------------------------------

    def read(self) -> Self:
        """The source itself (an async iterable of records)."""
        return self

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._records()

    @property
    def offset(self) -> int:
        """Positions yielded so far (the run's count, continued by :meth:`seek`)."""
        return self._position

    def seek(self, offset: Any) -> None:
        """Count on from ``offset`` (a resumed run continues its checkpoint's positions; the
        broker redelivers what was not acked, so nothing is skipped)."""
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise PipelineDefinitionError(
                f"{type(self).__name__}: an offset is a count of records >= 0, got {offset!r}"
            )
        self._position = offset

    def bind_checkpoints(self, request: Callable[[], None]) -> None:
        """The run's way to ask for a checkpoint soon (used while a message goes alone)."""
        self._request = request

    def pending(self, position: int, done: Sequence[tuple[int, int]]) -> Any:
        """The ids of the messages this checkpoint covers that are not acked yet, and those
        a resumed checkpoint gave that are not confirmed acked (``None``: none)."""
        ids = [d.ident for _, d in self._covered(position, done)]
        ids.extend(self._restored)
        return self._state(ids) if ids else None

    def restore(self, state: Any) -> None:
        """Before a run reads: the ids :meth:`pending` gave its last checkpoint (``None``:
        none). Positions start again at 0 (a resume then seeks to its checkpoint's)."""
        self._restored = set(self._unstate(state)) if state else set()
        self._position, self._taken = 0, 0
        self._held.clear()  # (a reused source: what an earlier run held is redelivered)
        self._index.clear()

    async def acknowledge(self, position: int, done: Sequence[tuple[int, int]]) -> None:
        """Ack every held message at a position below ``position`` or inside ``done``, then
        forget them (on a failure they are kept and acked after the next checkpoint)."""
        covered = self._covered(position, done)
        if covered:
            await self._ack([d for _, d in covered])
            for at, delivery in covered:
                del self._held[at]
                self._index.pop(delivery.ident, None)
            self._acked.set()
        if self._restored:
            await self._prune()

    def _covered(
        self, position: int, done: Sequence[tuple[int, int]]
    ) -> list[tuple[int, _Delivery]]:
        top = max((int(b) for _, b in done), default=-1)
        out: list[tuple[int, _Delivery]] = []
        for at, delivery in self._held.items():
            if at < position or any(a <= at <= b for a, b in done):
                out.append((at, delivery))
            elif at > top:
                break
        return out

    # -- for the brokers -------------------------------------------------------------------

    def _state(self, ids: list[Any]) -> Any:
        raise NotImplementedError

    def _unstate(self, state: Any) -> Iterable[Any]:
        raise NotImplementedError

    async def _ack(self, deliveries: list[_Delivery]) -> None:
        raise NotImplementedError

    async def _prune(self) -> None:
        """Forget restored ids the broker no longer holds unacked."""

    async def _keep_alive(self) -> None:
        """Keep the held messages from being redelivered while the pipeline holds them."""

    def _keep_every(self) -> float:
        raise NotImplementedError

    async def _aclose(self) -> None:
        raise NotImplementedError

    def _records(self) -> AsyncIterator[Any]:
        raise NotImplementedError

    # -- shared steps ----------------------------------------------------------------------

    def _take(self, delivery: _Delivery, item: Any) -> Any:
        """Hold ``delivery`` at the next position and return ``item`` to yield."""
        at = self._position
        self._held[at] = delivery
        self._index[delivery.ident] = at
        self._position = at + 1
        self._taken += 1
        return item

    def _enough(self) -> bool:
        return self.max_messages is not None and self._taken >= self.max_messages

    def _room(self) -> int:
        """How many messages to ask the broker for now."""
        if self.max_messages is None:
            return self.batch
        return max(0, min(self.batch, self.max_messages - self._taken))

    def _ask(self) -> None:
        if self._request is not None:
            self._request()

    async def _wait_acked(self, position: int | None = None) -> None:
        """Wait until the message at ``position`` is acked (``None``: every held one),
        asking the run for checkpoints meanwhile."""

        def waiting() -> bool:
            return position in self._held if position is not None else bool(self._held)

        while waiting():
            self._acked.clear()
            self._ask()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WAIT_STEP):
                    await self._acked.wait()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _ensure_open(self) -> None:
        """Connect (once), and start keeping held messages alive."""
        self._loop = asyncio.get_running_loop()
        if not self._opened:
            try:
                await self._open()
            except BaseException:
                await self._aclose()
                raise
            self._opened = True
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        every = self._keep_every()
        while True:
            await asyncio.sleep(every)
            try:
                await self._keep_alive()
            except Exception as exc:  # the broker redelivers at worst; reading reports outages
                logger.debug("%s: keeping messages alive failed: %s", self.identity, exc)

    def _decode(self, body: bytes, ident: Any, where: str, extra: dict[str, Any]) -> Any:
        """The record of a body (``format``), or a :class:`Rejected` if it is not JSON."""
        if self.format == "raw":
            return body
        try:
            return json.loads(body)
        except ValueError as exc:
            reason = f"the message body is not JSON ({exc})"
            return Rejected(self._letter(body, ident, extra), SourceRecordError(where, reason))

    def _letter(self, body: bytes, ident: Any, extra: dict[str, Any]) -> dict[str, Any]:
        text, encoding = _body_text(body)
        return {"stream": self.stream, "id": ident, **extra, "body": text, "encoding": encoding}

    def _poison(
        self, body: bytes, ident: Any, where: str, deliveries: int, extra: dict[str, Any]
    ) -> Rejected:
        record = {**self._letter(body, ident, extra), "deliveries": deliveries}
        reason = (
            f"delivered {deliveries} times without an acknowledgement "
            f"(max_deliveries {self.max_deliveries})"
        )
        return Rejected(record, SourceRecordError(where, reason))

    def _verdict(self, unacked: int) -> Literal["poison", "alone", "normal"]:
        """What to do with a delivery after ``unacked`` deliveries that were not acked."""
        if unacked >= self.max_deliveries:
            return "poison"
        if unacked >= 1 and unacked == self.max_deliveries - 1:
            return "alone"
        return "normal"

    def close(self) -> None:
        """Close the connection (on the event loop it was opened on)."""
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            loop.create_task(self._aclose())
        elif loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._aclose(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout=10)

    async def aclose(self) -> None:
        """Close the connection (from async code)."""
        self._loop = None
        await self._aclose()

    async def _stop_keeper(self) -> None:
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keeper


_EXACT_COUNTS = (2, 10, 14)
"""The first nats-server whose pull consumers count redeliveries exactly (nats-io/nats-server
#5305 and #5338): before it a message can be handed out again as new, or its delivery count
raised by a pull request that has gone."""
_warned: set[str] = set()


def _warn_old_server(nc: Any, url: str) -> None:
    """Warn once per server URL when nats-server is older than :data:`_EXACT_COUNTS`."""
    try:
        version = nc.connected_server_version
        found = (int(version.major), int(version.minor), int(version.patch))
    except (AttributeError, TypeError, ValueError):
        return
    if found >= _EXACT_COUNTS or url in _warned:
        return
    _warned.add(url)
    logger.warning(
        "nats %s: nats-server %s counts redeliveries inexactly (fixed in %s): a message may "
        "come again as new (acknowledged again here, not processed twice) and, rarely, a "
        "message that never crashed the consumer may reach max_deliveries and be "
        "dead-lettered as poison; upgrade nats-server to %s or newer",
        url,
        ".".join(map(str, found)),
        ".".join(map(str, _EXACT_COUNTS)),
        ".".join(map(str, _EXACT_COUNTS)),
    )


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class _Outage:
    """How long a broker has been unreachable; raise once ``unavailable_after`` is spent."""

    def __init__(self, source: _BrokerSource) -> None:
        self._source = source
        self.since: float | None = None
        self.attempt = 0

    def ok(self) -> None:
        self.since, self.attempt = None, 0

    async def failed(self, exc: BaseException, where: str) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
            logger.warning("%s: %s; retrying", where, exc)
        budget = self._source.unavailable_after
        if now - self.since >= budget:
            raise SourceUnavailableError(
                self._source.name,
                f"{where}: {exc} (unreachable for {budget:g}s: unavailable_after)",
            ) from exc
        self.attempt += 1
        await asyncio.sleep(min(0.1 * 2 ** min(self.attempt, 6), 2.0, budget))


# -- NATS JetStream -----------------------------------------------------------------------------


class NatsSource(_BrokerSource):
    """Records from a NATS JetStream stream, through a durable pull consumer (nats-py,
    ``pip install 'conveyor[nats]'``); see the module docstring.

    The stream must exist. The durable consumer is created when it does not exist: explicit
    acks, ``ack_wait``, no server limit on redeliveries (``max_deliver`` -1: this source
    dead-letters poison messages itself) and none on unacked messages (``max_ack_pending``
    -1: the run bounds what it holds), ``deliver`` all or new. An existing consumer is used
    as it is (its ``ack_wait`` wins); it must ack explicitly and allow more deliveries than
    ``max_deliveries``. Held messages are kept alive (``+WPI``) while the pipeline holds them
    longer than a third of ``ack_wait``. A bounded run ends after ``max_messages`` or once no
    message came for ``idle_timeout`` seconds (at start, not before ``ack_wait`` has passed
    when the consumer has unacked messages: a crashed run's are redelivered only then).

    >>> source = NatsSource(stream="ORDERS", durable="orders-etl", idle_timeout=5)
    >>> source.identity, source.offset
    ('nats:ORDERS/orders-etl', 0)
    """

    _broker = "nats"

    class Config(BaseModel):
        """Options of ``source: {connector: nats, …}``."""

        model_config = ConfigDict(extra="forbid")

        url: str = Field(
            "nats://127.0.0.1:4222",
            description="NATS server URL(s), comma-separated (e.g. ${NATS_URL})",
        )
        stream: str = Field(description="the JetStream stream to read (it must exist)")
        durable: str = Field(
            description="durable consumer name (created when missing: explicit acks, "
            "no server redelivery limit)"
        )
        subject: str | None = Field(
            None, description="filter subject of a new consumer (default: the whole stream)"
        )
        deliver: Literal["all", "new"] = Field(
            "all",
            description="where a new consumer starts: all (the stream's first message) "
            "or new (messages published after it is created)",
        )
        max_deliveries: int = Field(
            5,
            ge=1,
            description="deliveries without an ack after which a message is dead-lettered "
            "(a poison message that crashes or hangs the consumer)",
        )
        batch: int = Field(100, ge=1, description="messages per fetch")
        ack_wait: float = Field(
            30.0,
            gt=0,
            description="seconds (new consumer) before the server redelivers an unacked message",
        )
        format: Literal["json", "raw"] = Field(
            "json", description="json: a record is the body parsed as JSON; raw: the bytes"
        )
        idle_timeout: float | None = Field(
            None,
            gt=0,
            description="end the run once no message came for this many seconds "
            "(default: run until stopped, e.g. SIGTERM)",
        )
        max_messages: int | None = Field(
            None, ge=1, description="end the run after this many messages"
        )
        unavailable_after: float = Field(
            30.0,
            gt=0,
            description="seconds the server may be unreachable before the run "
            "stops with SourceUnavailableError",
        )

    def __init__(
        self,
        *,
        stream: str,
        durable: str,
        url: str = "nats://127.0.0.1:4222",
        subject: str | None = None,
        deliver: Literal["all", "new"] = "all",
        max_deliveries: int = 5,
        batch: int = 100,
        ack_wait: float = 30.0,
        format: Literal["json", "raw"] = "json",
        idle_timeout: float | None = None,
        max_messages: int | None = None,
        unavailable_after: float = 30.0,
        name: str = "source",
    ) -> None:
        super().__init__(
            stream=stream,
            max_deliveries=max_deliveries,
            batch=batch,
            format=format,
            formats=("json", "raw"),
            idle_timeout=idle_timeout,
            max_messages=max_messages,
            unavailable_after=unavailable_after,
            name=name,
        )
        if not isinstance(durable, str) or not durable.strip() or any(c in durable for c in ".*> "):
            raise PipelineDefinitionError(
                f"NatsSource: durable must be a consumer name (no '.', '*', '>' or spaces), "
                f"got {durable!r}"
            )
        if deliver not in ("all", "new"):
            raise PipelineDefinitionError(
                f"NatsSource: deliver must be all or new, got {deliver!r}"
            )
        if not (_number(ack_wait) and ack_wait > 0):
            raise PipelineDefinitionError(
                f"NatsSource: ack_wait must be seconds > 0, got {ack_wait!r}"
            )
        self.url = url
        self.durable = durable
        self.subject = subject
        self.deliver = deliver
        self.ack_wait = float(ack_wait)
        self.identity = f"nats:{stream}/{durable}"
        self._nc: Any = None
        self._sub: Any = None
        self._js: Any = None
        self._errors: Any = None
        self._quiet_until = 0.0  # the idle clock starts no earlier (redeliveries to come)
        self._aside: deque[Any] = deque()  # fetched, not yet yielded (kept alive too)
        self._pruned_at = 0.0
        self._closing = False
        # Acked lately: a redelivery sent before an ack reached the server (the pipeline
        # held the message past ack_wait), or a stale copy an old server hands out again
        # as new (nats-io/nats-server#5305), is acked again, not processed twice.
        self._recent: dict[int, None] = {}

    @classmethod
    def from_config(cls, config: NatsSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes."""
        return cls(**config.model_dump())

    @property
    def where(self) -> str:
        """The server and stream, for messages."""
        return f"nats {self.url} stream {self.stream}"

    def _state(self, ids: list[Any]) -> Any:
        return {"nats_seqs": _seq_ranges(ids)}

    def _unstate(self, state: Any) -> Iterable[Any]:
        ranges = state.get("nats_seqs") if isinstance(state, dict) else None
        for pair in ranges or []:
            first, last = int(pair[0]), int(pair[1])
            yield from range(first, last + 1)

    # -- connecting ------------------------------------------------------------------------

    async def _open(self) -> None:
        nats = _driver("nats", "nats-py", "nats", "NatsSource")
        self._errors = importlib.import_module("nats.errors")
        js_errors = importlib.import_module("nats.js.errors")
        api = importlib.import_module("nats.js.api")
        budget = self.unavailable_after
        wait = 0.5

        async def quiet(exc: Exception) -> None:
            logger.debug("nats %s: %s", self.url, exc)

        async def disconnected() -> None:
            if not self._closing:
                logger.warning("nats %s: disconnected; reconnecting", self.url)

        try:
            async with asyncio.timeout(budget + 10):
                self._nc = await nats.connect(
                    [u.strip() for u in self.url.split(",") if u.strip()],
                    connect_timeout=max(1, min(5, math.ceil(budget))),
                    reconnect_time_wait=wait,
                    max_reconnect_attempts=max(1, math.ceil(budget / wait)),
                    error_cb=quiet,
                    disconnected_cb=disconnected,
                    name="conveyor",
                )
        except (OSError, TimeoutError, self._errors.Error) as exc:
            raise SourceUnavailableError(
                self.name,
                f"nats {self.url}: cannot connect ({type(exc).__name__}: {exc}) within "
                f"{budget:g}s (unavailable_after); is nats-server running there "
                "(nats-server -js)?",
            ) from exc
        _warn_old_server(self._nc, self.url)
        js = self._js = self._nc.jetstream()
        try:
            await js.stream_info(self.stream)
            try:
                consumer = await js.consumer_info(self.stream, self.durable)
            except js_errors.NotFoundError:
                consumer = await js.add_consumer(
                    self.stream,
                    api.ConsumerConfig(
                        durable_name=self.durable,
                        name=self.durable,
                        ack_policy=api.AckPolicy.EXPLICIT,
                        ack_wait=self.ack_wait,
                        max_deliver=-1,
                        max_ack_pending=-1,
                        filter_subject=self.subject,
                        deliver_policy=(
                            api.DeliverPolicy.ALL
                            if self.deliver == "all"
                            else api.DeliverPolicy.NEW
                        ),
                    ),
                )
            self._check(consumer, api)
            self._sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except js_errors.NotFoundError as exc:
            subjects = self.subject or f"{self.stream.lower()}.>"
            raise PipelineDefinitionError(
                f"{self.where}: the stream does not exist ({exc.description}); create it, "
                f"e.g. `nats stream add {self.stream} --subjects '{subjects}'` or "
                f"`await js.add_stream(name={self.stream!r}, subjects=[{subjects!r}])`"
            ) from exc
        except (self._errors.NoRespondersError, js_errors.ServiceUnavailableError) as exc:
            raise PipelineDefinitionError(
                f"nats {self.url}: JetStream does not answer ({exc}); start the server with "
                "JetStream enabled (nats-server -js)"
            ) from exc
        except js_errors.APIError as exc:
            raise PipelineDefinitionError(
                f"{self.where}: consumer {self.durable!r}: the server refused it: "
                f"{exc.description} (code {exc.err_code})"
            ) from exc
        except (OSError, TimeoutError, self._errors.Error) as exc:
            raise SourceUnavailableError(self.name, f"{self.where}: {exc}") from exc
        self.ack_wait = float(consumer.config.ack_wait or self.ack_wait)
        if consumer.num_ack_pending:  # a crashed run's messages come back after ack_wait
            self._quiet_until = time.monotonic() + self.ack_wait + 1.0
        self._prune_below(consumer)

    def _check(self, consumer: Any, api: Any) -> None:
        config = consumer.config
        problem = ""
        if config.ack_policy not in (api.AckPolicy.EXPLICIT, "explicit"):
            problem = f"acks {config.ack_policy}, not explicitly"
        elif config.deliver_subject:
            problem = "is a push consumer (it has a deliver subject), not a pull consumer"
        elif config.max_deliver not in (None, -1, 0) and config.max_deliver <= self.max_deliveries:
            problem = (
                f"stops redelivering after max_deliver {config.max_deliver}, before this "
                f"source's max_deliveries {self.max_deliveries} dead-letters a message"
            )
        elif self.subject and (config.filter_subject or None) not in (None, self.subject):
            problem = f"filters subject {config.filter_subject!r}, not {self.subject!r}"
        if problem:
            raise PipelineDefinitionError(
                f"{self.where}: the existing consumer {self.durable!r} {problem}; delete it "
                f"(nats consumer rm {self.stream} {self.durable}) to have it created again, "
                "or name another durable"
            )

    def _prune_below(self, consumer: Any) -> None:
        floor = consumer.ack_floor.stream_seq if consumer.ack_floor is not None else 0
        if floor and self._restored:
            self._restored = {seq for seq in self._restored if seq > floor}

    async def _prune(self) -> None:
        now = time.monotonic()
        if self._js is None or now - self._pruned_at < 1.0:
            return
        self._pruned_at = now
        with contextlib.suppress(Exception):
            self._prune_below(await self._js.consumer_info(self.stream, self.durable))

    # -- reading ---------------------------------------------------------------------------

    async def _fetch(self, n: int, wait: float, outage: _Outage) -> list[Any]:
        errors = self._errors
        while True:
            nc = self._nc
            if nc.is_closed:
                raise SourceUnavailableError(
                    self.name, f"{self.where}: the connection was closed (reconnects spent)"
                )
            try:
                msgs: list[Any] = await self._sub.fetch(n, timeout=wait)
            except TimeoutError:
                if nc.is_connected:
                    outage.ok()
                    return []
                await outage.failed(ConnectionError("not connected (reconnecting)"), self.where)
                continue
            except (OSError, errors.Error) as exc:
                await outage.failed(exc, self.where)
                continue
            outage.ok()
            return msgs

    async def _records(self) -> AsyncIterator[Any]:
        await self._ensure_open()
        outage = _Outage(self)
        careful = True  # one message per fetch while redeliveries come (and at the start)
        last = max(time.monotonic(), self._quiet_until)
        alone: int | None = None
        while not self._enough():
            if alone is not None:  # nothing more is delivered until it is acked
                await self._wait_acked(alone)
                alone = None
                last = max(time.monotonic(), self._quiet_until)
            room = 1 if careful else self._room()
            # A pull request lives a quarter of ack_wait at most: one left behind by a
            # killed run must expire before a message delivered before it comes due again.
            # (nats-server before 2.10.14 takes a due redelivery for such a request, finds
            # it gone, and counts a delivery that never happened, nats-io/nats-server#5338:
            # enough of those and a message that never crashed the consumer would look
            # poisonous.)
            wait = min(1.0, max(0.05, self.ack_wait / 4))
            if self.idle_timeout is not None:
                wait = min(wait, max(0.05, last + self.idle_timeout - time.monotonic()))
            msgs = await self._fetch(room, wait, outage)
            now = time.monotonic()
            if not msgs:
                if self._held:
                    self._ask()  # a quiet stream: acknowledge what left
                if self.idle_timeout is not None and now - last >= self.idle_timeout:
                    return
                continue
            last = max(now, self._quiet_until)
            self._aside = aside = deque(msgs)
            while aside:
                msg = aside.popleft()
                if alone is not None:  # the message let through alone goes first
                    await self._wait_acked(alone)
                    alone = None
                    last = max(time.monotonic(), self._quiet_until)
                meta = msg.metadata
                seq, unacked = meta.sequence.stream, meta.num_delivered - 1
                careful = unacked > 0
                if seq in self._restored:  # done by the checkpoint, not acked before a crash
                    await self._nc.publish(msg.reply, b"+ACK")
                    await self._nc.flush(timeout=5)
                    self._restored.discard(seq)
                    self._recent[seq] = None
                    continue
                if seq in self._recent:  # acked already: a copy sent before our ack landed,
                    # or one sent again as new (num_delivered 1: nats-server before 2.10.14
                    # steps a pull consumer back when no request waits for a redelivery)
                    await self._nc.publish(msg.reply, b"+ACK")
                    continue
                held = self._index.get(seq)
                if held is not None:  # redelivered while held: ack the newest delivery
                    self._held[held].reply = msg.reply
                    continue
                where = f"nats stream {self.stream} seq {seq}"
                extra = {"subject": msg.subject}
                verdict = self._verdict(unacked)
                if verdict == "poison":
                    item: Any = self._poison(msg.data, seq, where, unacked, extra)
                    yield self._take(_Delivery(seq, msg.reply, term=True), item)
                    continue
                if verdict == "alone":
                    aside.appendleft(msg)
                    await self._wait_acked()  # nothing else unacked while it is processed
                    aside.popleft()
                item = self._decode(msg.data, seq, where, extra)
                delivery = _Delivery(seq, msg.reply, term=type(item) is Rejected)
                yield self._take(delivery, item)
                if verdict == "alone":
                    alone = self._position - 1
                if self._enough():
                    break
        self._aside = deque()

    async def _ack(self, deliveries: list[_Delivery]) -> None:
        nc = self._nc
        for delivery in deliveries:
            # (published directly: an ack that failed to reach the server can be sent again)
            await nc.publish(delivery.reply, b"+TERM" if delivery.term else b"+ACK")
        await nc.flush(timeout=10)
        recent = self._recent
        for delivery in deliveries:
            recent[delivery.ident] = None
        while len(recent) > _RECENT:
            del recent[next(iter(recent))]

    def _keep_every(self) -> float:
        return max(0.05, self.ack_wait / 3)

    async def _keep_alive(self) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            return
        now, limit = time.monotonic(), self.ack_wait / 3
        for delivery in list(self._held.values()):
            if now - delivery.touched >= limit and delivery.reply:
                await nc.publish(delivery.reply, b"+WPI")
                delivery.touched = now
        for msg in list(self._aside):
            await nc.publish(msg.reply, b"+WPI")

    async def _aclose(self) -> None:
        await self._stop_keeper()
        nc, self._nc, self._sub, self._js = self._nc, None, None, None
        self._opened = False
        if nc is not None:
            self._closing = True
            try:
                with contextlib.suppress(Exception):
                    await nc.close()
            finally:
                self._closing = False


# -- Redis Streams ------------------------------------------------------------------------------


class RedisSource(_BrokerSource):
    """Records from a Redis stream, through a consumer group (redis-py asyncio,
    ``pip install 'conveyor[redis]'``); see the module docstring.

    The group is created when missing (``XGROUP CREATE … MKSTREAM``) at ``start_id``: ``0``
    reads the stream from its first entry, ``$`` only entries added afterwards. A record is
    one field of the entry (``field``, default ``data``) parsed as JSON (``format: json``)
    or as bytes (``raw``), or the whole field map as a dict of strings (``fields``).

    On start the source takes over pending entries: its own consumer name's (a previous
    run of it: at once) and other consumers' idle for ``claim_idle_ms`` (a dead consumer:
    ``XPENDING`` for their delivery counts, then ``XCLAIM``); it looks again every
    ``claim_idle_ms``, and then reads new entries (``XREADGROUP … >``). The consumer name
    (default ``conveyor``) should stay the same across restarts of one pipeline, so that its
    pending entries come back at once; two processes reading at the same time need two
    names. Held entries are kept from other consumers' claims (``XCLAIM … JUSTID``, which
    does not count a delivery) while the pipeline holds them.

    >>> source = RedisSource(stream="orders", group="etl", idle_timeout=5)
    >>> source.identity, source.consumer
    ('redis:orders/etl', 'conveyor')
    """

    _broker = "redis"

    class Config(BaseModel):
        """Options of ``source: {connector: redis, …}``."""

        model_config = ConfigDict(extra="forbid")

        url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL (e.g. ${REDIS_URL})")
        stream: str = Field(description="the stream's key (created empty when missing)")
        group: str = Field(description="consumer group (created when missing, at start_id)")
        consumer: str = Field(
            "conveyor",
            description="consumer name in the group: keep it across restarts; one per "
            "process reading at the same time",
        )
        start_id: str = Field(
            "0", description="where a new group starts: 0 (the first entry) or $ (new entries)"
        )
        field: str = Field("data", description="the entry field that holds the body")
        max_deliveries: int = Field(
            5,
            ge=1,
            description="deliveries without an ack after which an entry is dead-lettered "
            "(a poison message that crashes or hangs the consumer)",
        )
        batch: int = Field(100, ge=1, description="entries per read (COUNT)")
        block_ms: int = Field(1000, ge=1, description="milliseconds a read waits for entries")
        claim_idle_ms: int = Field(
            30000,
            ge=1,
            description="milliseconds another consumer's pending entry must be idle before "
            "this one takes it over",
        )
        format: Literal["json", "raw", "fields"] = Field(
            "json",
            description="json: the field parsed as JSON; raw: its bytes; fields: "
            "the entry's whole field map (strings)",
        )
        idle_timeout: float | None = Field(
            None,
            gt=0,
            description="end the run once no entry came for this many seconds "
            "(default: run until stopped, e.g. SIGTERM)",
        )
        max_messages: int | None = Field(
            None, ge=1, description="end the run after this many entries"
        )
        unavailable_after: float = Field(
            30.0,
            gt=0,
            description="seconds the server may be unreachable before the run "
            "stops with SourceUnavailableError",
        )

    def __init__(
        self,
        *,
        stream: str,
        group: str,
        url: str = "redis://127.0.0.1:6379/0",
        consumer: str = "conveyor",
        start_id: str = "0",
        field: str = "data",
        max_deliveries: int = 5,
        batch: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30000,
        format: Literal["json", "raw", "fields"] = "json",
        idle_timeout: float | None = None,
        max_messages: int | None = None,
        unavailable_after: float = 30.0,
        name: str = "source",
    ) -> None:
        super().__init__(
            stream=stream,
            max_deliveries=max_deliveries,
            batch=batch,
            format=format,
            formats=("json", "raw", "fields"),
            idle_timeout=idle_timeout,
            max_messages=max_messages,
            unavailable_after=unavailable_after,
            name=name,
        )
        for key, value in (("group", group), ("consumer", consumer), ("field", field)):
            if not isinstance(value, str) or not value:
                raise PipelineDefinitionError(f"RedisSource: {key} must be a name, got {value!r}")
        for key, number in (("block_ms", block_ms), ("claim_idle_ms", claim_idle_ms)):
            if not _positive_int(number):
                raise PipelineDefinitionError(
                    f"RedisSource: {key} must be an int >= 1 (milliseconds), got {number!r}"
                )
        self.url = url
        self.group = group
        self.consumer = consumer
        self.start_id = start_id
        self.field = field
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.identity = f"redis:{stream}/{group}"
        self._client: Any = None
        self._redis: Any = None
        self._exc: Any = None
        self._quiet_until = 0.0
        self._rescan_at = 0.0
        self._field = field.encode()

    @classmethod
    def from_config(cls, config: RedisSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes."""
        return cls(**config.model_dump())

    @property
    def where(self) -> str:
        """The server, stream and group, for messages."""
        return f"redis {_safe_url(self.url)} stream {self.stream} group {self.group}"

    def _state(self, ids: list[Any]) -> Any:
        return {"redis_ids": list(dict.fromkeys(ids))}  # (in delivery order)

    def _unstate(self, state: Any) -> Iterable[Any]:
        ids = state.get("redis_ids") if isinstance(state, dict) else None
        return [str(i) for i in ids or []]

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, outage: _Outage, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)``, retried while the server is unreachable."""
        exceptions = self._exc
        while True:
            try:
                result = await getattr(self._client, method)(*args, **kwargs)
            except (exceptions.ConnectionError, exceptions.TimeoutError, OSError) as exc:
                await outage.failed(exc, self.where)
                continue
            except exceptions.ResponseError as exc:
                text = str(exc)
                if text.startswith("NOGROUP"):
                    raise SourceUnavailableError(
                        self.name,
                        f"{self.where}: the consumer group or the stream no longer exists "
                        f"({text}); was it deleted, or did the server restart without "
                        "persistence?",
                    ) from exc
                if text.startswith("WRONGTYPE"):
                    raise PipelineDefinitionError(
                        f"{self.where}: key {self.stream!r} holds something else than a "
                        "stream; name another stream"
                    ) from exc
                raise
            outage.ok()
            return result

    async def _open(self) -> None:
        self._redis = _driver("redis.asyncio", "redis", "redis", "RedisSource")
        self._exc = importlib.import_module("redis.exceptions")
        try:
            self._client = self._redis.Redis.from_url(
                self.url,
                socket_connect_timeout=min(5.0, self.unavailable_after),
                socket_timeout=self.block_ms / 1000 + 10.0,
            )
        except ValueError as exc:
            raise PipelineDefinitionError(f"RedisSource: url {self.url!r}: {exc}") from exc
        outage = _Outage(self)
        await self._call(outage, "ping")
        try:
            await self._call(
                outage, "xgroup_create", self.stream, self.group, id=self.start_id, mkstream=True
            )
        except self._exc.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise PipelineDefinitionError(
                    f"{self.where}: cannot create the group at start_id {self.start_id!r}: {exc}"
                ) from exc
        summary = await self._call(outage, "xpending", self.stream, self.group)
        others = sum(
            int(c["pending"])
            for c in summary.get("consumers") or []
            if _text(c["name"]) != self.consumer
        )
        now = time.monotonic()
        self._rescan_at = now + self.claim_idle_ms / 1000
        if others:  # another consumer's entries: claimable once idle for claim_idle_ms
            self._quiet_until = self._rescan_at + 0.5
        if self._restored:  # done by the checkpoint: ack them now, they are not read again
            await self._ack_ids(sorted(self._restored, key=_id_key), outage)
            self._restored.clear()

    async def _ack_ids(self, ids: list[str], outage: _Outage) -> None:
        for i in range(0, len(ids), 1000):
            await self._call(outage, "xack", self.stream, self.group, *ids[i : i + 1000])

    # -- reading ---------------------------------------------------------------------------

    def _entry(self, ident: str, fields: Any, unacked: int, poison: bool) -> tuple[_Delivery, Any]:
        fields = fields or {}
        body = fields.get(self._field)
        if body is not None and not poison and self.format != "fields":
            if self.format == "raw":
                return _Delivery(ident), bytes(body)
            item: Any = self._decode(bytes(body), ident, "", {})
            if type(item) is not Rejected:
                return _Delivery(ident), item
        where = f"redis stream {self.stream} entry {ident}"
        whole = json.dumps(
            {_text(k): _text(v) for k, v in fields.items()}, ensure_ascii=False
        ).encode()
        if poison:
            item = self._poison(body if body is not None else whole, ident, where, unacked, {})
        elif self.format == "fields":
            item = {_text(k): _text(v) for k, v in fields.items()}
        elif body is None:
            item = Rejected(
                self._letter(whole, ident, {}),
                SourceRecordError(
                    where,
                    f"the entry has no field {self.field!r} (fields: "
                    f"{', '.join(sorted(_text(k) for k in fields)) or 'none'})",
                ),
            )
        else:
            item = self._decode(bytes(body), ident, where, {})
        return _Delivery(ident, term=type(item) is Rejected), item

    async def _scan(self, own: bool, outage: _Outage) -> AsyncIterator[Any]:
        """Take over pending entries: this consumer's own (``own``: a previous run of it)
        or other consumers' idle for ``claim_idle_ms``, in id order."""
        start, me = "-", self.consumer
        for _page in range(100_000):
            rows = await self._call(
                outage,
                "xpending_range",
                self.stream,
                self.group,
                min=start,
                max="+",
                count=_PAGE,
                consumername=me if own else None,
                idle=None if own else self.claim_idle_ms,
            )
            if not rows:
                return
            start = "(" + _text(rows[-1]["message_id"])
            normal: list[tuple[str, int]] = []
            done: list[str] = []
            for row in rows:
                ident, unacked = _text(row["message_id"]), int(row["times_delivered"])
                mine = _text(row["consumer"]) == me
                if ident in self._index:
                    continue
                if ident in self._restored:
                    done.append(ident)
                    continue
                verdict = self._verdict(unacked)
                if verdict == "normal":
                    normal.append((ident, unacked))
                    continue
                async for item in self._claim(normal, own, outage):
                    yield item
                normal = []
                if verdict == "alone":
                    await self._wait_acked()
                claimed = await self._claim_entries(
                    [ident], 0 if mine else self.claim_idle_ms, outage
                )
                for got, fields in claimed:
                    delivery, item = self._entry(got, fields, unacked, verdict == "poison")
                    yield self._take(delivery, item)
                    if verdict == "alone":
                        await self._wait_acked(self._position - 1)
            async for item in self._claim(normal, own, outage):
                yield item
            if done:
                await self._ack_ids(done, outage)
                self._restored.difference_update(done)
            if len(rows) < _PAGE or self._enough():
                return

    async def _claim(
        self, entries: list[tuple[str, int]], own: bool, outage: _Outage
    ) -> AsyncIterator[Any]:
        for i in range(0, len(entries), self.batch):
            if self._enough():
                return
            chunk = entries[i : i + min(self.batch, max(1, self._room()))]
            counts = dict(chunk)
            idle = 0 if own else self.claim_idle_ms
            for ident, fields in await self._claim_entries([e for e, _ in chunk], idle, outage):
                delivery, item = self._entry(ident, fields, counts.get(ident, 0), False)
                yield self._take(delivery, item)

    async def _claim_entries(
        self, ids: list[str], min_idle: int, outage: _Outage
    ) -> list[tuple[str, Any]]:
        if not ids:
            return []
        got = await self._call(
            outage, "xclaim", self.stream, self.group, self.consumer, min_idle, ids
        )
        out: list[tuple[str, Any]] = []
        gone: list[str] = []
        for entry in got or []:
            ident, fields = _text(entry[0]), entry[1]
            if fields is None:  # deleted from the stream (an old server keeps it pending)
                gone.append(ident)
            else:
                out.append((ident, fields))
        if gone:
            await self._ack_ids(gone, outage)
        return out

    async def _records(self) -> AsyncIterator[Any]:
        await self._ensure_open()
        outage = _Outage(self)
        async for item in self._scan(True, outage):
            yield item
        async for item in self._scan(False, outage):
            yield item
        last = max(time.monotonic(), self._quiet_until)
        while not self._enough():
            now = time.monotonic()
            if now >= self._rescan_at:
                self._rescan_at = now + self.claim_idle_ms / 1000
                async for item in self._scan(False, outage):
                    last = time.monotonic()
                    yield item
                if self._enough():
                    return
            block = self.block_ms
            if self.idle_timeout is not None:
                left = last + self.idle_timeout - time.monotonic()
                block = max(1, min(block, int(left * 1000)))
            block = max(1, min(block, int((self._rescan_at - time.monotonic()) * 1000) + 1))
            reply = await self._call(
                outage,
                "xreadgroup",
                self.group,
                self.consumer,
                {self.stream: ">"},
                count=self._room(),
                block=block,
            )
            entries = reply[0][1] if reply else []
            if not entries:
                if self._held:
                    self._ask()  # a quiet stream: acknowledge what left
                if self.idle_timeout is not None and time.monotonic() - last >= self.idle_timeout:
                    return
                continue
            last = max(time.monotonic(), self._quiet_until)
            for raw_id, fields in entries:
                delivery, item = self._entry(_text(raw_id), fields, 0, False)
                yield self._take(delivery, item)

    async def _ack(self, deliveries: list[_Delivery]) -> None:
        ids = [d.ident for d in deliveries]
        for i in range(0, len(ids), 1000):
            await self._client.xack(self.stream, self.group, *ids[i : i + 1000])

    def _keep_every(self) -> float:
        return max(0.05, self.claim_idle_ms / 3000)

    async def _keep_alive(self) -> None:
        if self._client is None:
            return
        now, limit = time.monotonic(), self.claim_idle_ms / 3000
        old = [d for d in list(self._held.values()) if now - d.touched >= limit]
        if not old:
            return
        # Reset their idle time without counting a delivery (JUSTID), unless another
        # consumer claimed one since we touched it (then its idle time is shorter).
        min_idle = max(0, int(min(now - d.touched for d in old) * 1000) - 100)
        kept = await self._client.xclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle,
            [d.ident for d in old],
            justid=True,
        )
        kept_ids = {_text(k) for k in kept or []}
        for delivery in old:
            if delivery.ident in kept_ids:
                delivery.touched = now
            else:
                logger.warning(
                    "%s: entry %s was claimed by another consumer while this run held it",
                    self.where,
                    delivery.ident,
                )
                delivery.touched = now

    async def _aclose(self) -> None:
        await self._stop_keeper()
        client, self._client = self._client, None
        self._opened = False
        if client is not None:
            with contextlib.suppress(Exception):
                await client.aclose()


def _text(value: Any) -> str:
    """A Redis reply value as text (bytes decoded; undecodable bytes as escapes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _id_key(ident: str) -> tuple[int, int]:
    """The order of Redis stream ids.

    >>> sorted(["10-1", "9-5", "10-0"], key=_id_key)
    ['9-5', '10-0', '10-1']
    """
    ms, _, seq = str(ident).partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        return (0, 0)


def _safe_url(url: str) -> str:
    """A URL without its password.

    >>> _safe_url("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    auth, _, host = rest.rpartition("@")
    user, colon, _ = auth.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"
