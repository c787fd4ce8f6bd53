"""The broker sources against real servers: NATS JetStream (``nats_url``) and Redis Streams
(``redis_url``). Each test uses its own stream (and consumer or group) and removes it."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import MapStage, Pipeline
from conveyor.connectors import connector, describe_connector
from conveyor.connectors.brokers import NatsSource, RedisSource
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import PipelineDefinitionError, SourceUnavailableError

pytestmark = pytest.mark.timeout(120)


# -- helpers ------------------------------------------------------------------------------------


async def _nats(url: str) -> Any:
    import nats

    async def quiet(exc: Exception) -> None:
        pass

    return await nats.connect(url, error_cb=quiet, max_reconnect_attempts=1)


def nats_publish(url: str, stream: str, bodies: list[bytes], *, create: bool = True) -> None:
    async def go() -> None:
        nc = await _nats(url)
        try:
            js = nc.jetstream()
            if create:
                await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
            for body in bodies:
                await js.publish(f"{stream.lower()}.in", body)
        finally:
            await nc.close()

    asyncio.run(go())


def nats_consumer(url: str, stream: str, durable: str) -> Any:
    async def go() -> Any:
        nc = await _nats(url)
        try:
            return await nc.jetstream().consumer_info(stream, durable)
        finally:
            await nc.close()

    return asyncio.run(go())


@pytest.fixture
def nats_stream(nats_url: str) -> Iterator[str]:
    """A unique stream name, deleted afterwards (if it was created)."""
    name = f"T{uuid.uuid4().hex[:10].upper()}"
    yield name

    async def drop() -> None:
        nc = await _nats(nats_url)
        try:
            await nc.jetstream().delete_stream(name)
        except Exception:
            pass
        finally:
            await nc.close()

    asyncio.run(drop())


@pytest.fixture
def redis_stream(redis_url: str) -> Iterator[str]:
    """A unique stream key, deleted afterwards."""
    import redis

    name = f"t-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(name)
    finally:
        client.close()


def redis_add(url: str, stream: str, entries: list[dict[str, Any]]) -> list[str]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return [client.xadd(stream, fields).decode() for fields in entries]
    finally:
        client.close()


def redis_pending(url: str, stream: str, group: str) -> int:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.xpending(stream, group)["pending"])
    finally:
        client.close()


def bodies(n: int, *, bad: frozenset[int] | set[int] = frozenset()) -> list[bytes]:
    return [b"{not json" if i in bad else json.dumps({"id": i}).encode() for i in range(n)]


def fails_on(*ids: int) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def work(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] in ids:
            raise ValueError(f"record {record['id']} fails its stage")
        return record

    return work


def run(tmp_path: Path, name: str, source: Any, stage: Any = None) -> tuple[Any, list[Any]]:
    got: list[Any] = []
    pipeline = Pipeline(name).add_stage(MapStage(stage or (lambda r: r), name="work"))
    report = pipeline.run(
        source,
        got.extend,
        checkpoint=tmp_path / "checkpoints.db",
        dead_letters=tmp_path / "dead_letters.db",
    )
    return report, got


def letters(tmp_path: Path) -> list[Any]:
    store = open_dead_letter_store(tmp_path / "dead_letters.db")
    try:
        return list(store.list())
    finally:
        store.close()


# -- options ------------------------------------------------------------------------------------


def test_registry_and_options() -> None:
    assert connector("source", "nats") is NatsSource
    assert connector("source", "redis") is RedisSource
    for cls in (NatsSource, RedisSource):
        rows = describe_connector(cls)
        assert all(row["description"] for row in rows), rows
    names = {row["name"] for row in describe_connector(NatsSource)}
    assert {"url", "stream", "durable", "max_deliveries", "batch", "ack_wait"} <= names
    assert {"idle_timeout", "max_messages", "format"} <= names
    config = RedisSource.Config.model_validate({"stream": "s", "group": "g", "block_ms": 50})
    source = RedisSource.from_config(config, Path("."))
    assert (source.stream, source.group, source.block_ms) == ("s", "g", 50)


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: NatsSource(stream="S", durable="a.b"), "durable"),
        (lambda: NatsSource(stream="", durable="d"), "stream"),
        (lambda: NatsSource(stream="S", durable="d", max_deliveries=0), "max_deliveries"),
        (lambda: NatsSource(stream="S", durable="d", format="xml"), "format"),  # type: ignore[arg-type]
        (lambda: NatsSource(stream="S", durable="d", idle_timeout=0), "idle_timeout"),
        (lambda: RedisSource(stream="s", group=""), "group"),
        (lambda: RedisSource(stream="s", group="g", block_ms=0), "block_ms"),
        (lambda: RedisSource(stream="s", group="g", batch=0), "batch"),
    ],
)
def test_bad_options_are_refused(make: Callable[[], Any], words: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=words):
        make()


def test_config_refuses_unknown_keys() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        NatsSource.Config.model_validate({"stream": "S", "durable": "d", "acks": 1})


def test_offset_seek_pending_protocol() -> None:
    from conveyor.core.source import AcknowledgingSource

    source = NatsSource(stream="S", durable="d")
    assert isinstance(source, AcknowledgingSource)
    source.seek(7)
    assert source.offset == 7
    with pytest.raises(PipelineDefinitionError):
        source.seek(-1)
    assert source.pending(10, []) is None
    source.restore({"nats_seqs": [[3, 5], [9, 9]]})
    assert source.offset == 0  # a run starts counting at 0 (a resume seeks)
    assert source.pending(0, []) == {"nats_seqs": [[3, 5], [9, 9]]}


def test_broker_sources_need_checkpoints(tmp_path: Path) -> None:
    source = NatsSource(stream="S", durable="d")
    with pytest.raises(PipelineDefinitionError, match="checkpoint"):
        Pipeline("p").add_stage(MapStage(abs, name="m")).run(
            source, list, dead_letters=tmp_path / "dl.db"
        )


# -- NATS -------------------------------------------------------------------------------------


def test_nats_reads_letters_and_acks_everything(
    tmp_path: Path, nats_url: str, nats_stream: str
) -> None:
    nats_publish(nats_url, nats_stream, bodies(60, bad={7}))
    source = NatsSource(url=nats_url, stream=nats_stream, durable="etl", idle_timeout=1.0, batch=16)
    report, got = run(tmp_path, "nats_basic", source, fails_on(5))
    assert report.status.value == "completed", report.summary()
    assert sorted(r["id"] for r in got) == [i for i in range(60) if i not in (5, 7)]
    by_stage = {letter.stage: letter for letter in letters(tmp_path)}
    assert set(by_stage) == {"source", "work"}
    bad = by_stage["source"]
    assert bad.record["body"] == "{not json"
    assert bad.record["id"] == 8  # the stream sequence
    assert f"nats stream {nats_stream} seq 8: the message body is not JSON" in bad.message
    assert by_stage["work"].record == {"id": 5}
    info = nats_consumer(nats_url, nats_stream, "etl")
    assert info.num_ack_pending == 0  # the failed ones acked too
    assert info.num_pending == 0
    assert info.ack_floor.stream_seq == 60
    assert report.checkpoint is not None
    assert report.checkpoint.source_state is None


def test_an_old_nats_server_is_named_once(
    tmp_path: Path, nats_url: str, nats_stream: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A nats-server before 2.10.14 miscounts redeliveries: the source says so, once."""
    from conveyor.connectors import brokers

    async def version() -> tuple[int, int, int]:
        nc = await _nats(nats_url)
        found = nc.connected_server_version
        await nc.close()
        return (found.major, found.minor, found.patch)

    server = asyncio.run(version())
    brokers._warned.discard(nats_url)
    nats_publish(nats_url, nats_stream, bodies(3))
    for name in ("old_1", "old_2"):
        source = NatsSource(url=nats_url, stream=nats_stream, durable=name, idle_timeout=0.5)
        with caplog.at_level("WARNING", logger="conveyor.connectors"):
            run(tmp_path / name, name, source)
    warned = [r.getMessage() for r in caplog.records if "counts redeliveries" in r.getMessage()]
    if server < (2, 10, 14):
        assert len(warned) == 1, warned
        assert f"nats-server {'.'.join(map(str, server))} counts redeliveries" in warned[0]
        assert "upgrade nats-server to 2.10.14 or newer" in warned[0]
    else:
        assert warned == []


def test_nats_raw_format_and_max_messages(tmp_path: Path, nats_url: str, nats_stream: str) -> None:
    nats_publish(nats_url, nats_stream, [b"\x00\x01", b"two", b"three"])
    source = NatsSource(
        url=nats_url, stream=nats_stream, durable="raw", format="raw", max_messages=2
    )
    _, got = run(tmp_path, "nats_raw", source)
    assert got == [b"\x00\x01", b"two"]
    info = nats_consumer(nats_url, nats_stream, "raw")
    assert info.ack_floor.stream_seq == 2
    assert info.num_pending == 1
    # a plain run later goes on with what is left
    again = NatsSource(
        url=nats_url, stream=nats_stream, durable="raw", format="raw", idle_timeout=0.5
    )
    _, more = run(tmp_path, "nats_raw", again)
    assert more == [b"three"]


def test_nats_restored_ids_are_acked_not_processed(
    tmp_path: Path, nats_url: str, nats_stream: str
) -> None:
    # A run that crashed after its checkpoint covered seqs 1-3 but before acking them: the
    # next run gets them redelivered and acks them without yielding them.
    nats_publish(nats_url, nats_stream, bodies(6))

    async def deliver_without_ack() -> None:
        source = NatsSource(url=nats_url, stream=nats_stream, durable="re", ack_wait=1.0)
        source.restore(None)
        seen = []
        async for item in source:
            seen.append(item)
            if len(seen) == 6:
                break
        await source.aclose()  # no checkpoint: nothing acked

    asyncio.run(deliver_without_ack())
    source = NatsSource(
        url=nats_url, stream=nats_stream, durable="re", ack_wait=1.0, idle_timeout=1.0
    )
    got: list[Any] = []

    async def resumed() -> None:
        source.restore({"nats_seqs": [[1, 3]]})
        async for item in source:
            got.append(item)
        await source.acknowledge(source.offset, [])
        await source.aclose()

    started = time.monotonic()
    asyncio.run(resumed())
    assert [r["id"] for r in got] == [3, 4, 5]
    assert time.monotonic() - started < 30
    info = nats_consumer(nats_url, nats_stream, "re")
    assert info.num_ack_pending == 0
    assert info.ack_floor.stream_seq == 6


class _FakeNats:
    """What :class:`NatsSource` sends on its connection (acks), for tests without a server."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.is_connected = True

    async def publish(self, subject: str, payload: bytes) -> None:
        self.sent.append((subject, payload))

    async def flush(self, **options: float) -> None:
        pass


def _fake_msg(seq: int, delivered: int, consumer_seq: int) -> Any:
    from types import SimpleNamespace

    meta = SimpleNamespace(
        sequence=SimpleNamespace(stream=seq, consumer=consumer_seq), num_delivered=delivered
    )
    reply = f"$JS.ACK.S.d.{delivered}.{seq}.{consumer_seq}"
    data = json.dumps({"id": seq}).encode()
    return SimpleNamespace(metadata=meta, reply=reply, subject="s.in", data=data)


def _scripted_nats(fetches: list[list[Any]]) -> tuple[NatsSource, _FakeNats]:
    """A source whose fetches return ``fetches`` in turn (then nothing: it ends idle)."""
    source = NatsSource(stream="S", durable="d", idle_timeout=0.05)
    nc = _FakeNats()
    script = list(fetches)

    async def ensure_open() -> None:
        source._nc = nc

    async def fetch(n: int, wait: float, outage: Any) -> list[Any]:
        await asyncio.sleep(0)
        return script.pop(0) if script else []

    source._ensure_open = ensure_open  # type: ignore[method-assign]
    source._fetch = fetch  # type: ignore[method-assign]
    return source, nc


def test_nats_stale_first_delivery_of_a_restored_seq_is_acked_not_processed() -> None:
    # nats-server before 2.10.14 (nats-io/nats-server#5305) can hand a message out again as
    # new (num_delivered 1) after its redelivery: a pull consumer that finds no waiting pull
    # request for a redelivery steps its next sequence back. Here seq 3 was done by the
    # checkpoint of a crashed run: its redelivery is acked, and so must be the stale copy.
    source, nc = _scripted_nats(
        [[_fake_msg(3, 2, 11)], [_fake_msg(3, 1, 12)], [_fake_msg(4, 1, 13)]]
    )
    source.restore({"nats_seqs": [[3, 3]]})
    got: list[Any] = []

    async def go() -> None:
        async for item in source:
            got.append(item)

    asyncio.run(go())
    assert got == [{"id": 4}]  # seq 3 is not processed a second time
    assert [(subject.rsplit(".", 1)[-1], body) for subject, body in nc.sent] == [
        ("11", b"+ACK"),
        ("12", b"+ACK"),
    ]
    assert source.pending(0, []) is None  # no restored id left to ack


def test_nats_stale_first_delivery_of_an_acked_seq_is_acked_not_processed() -> None:
    # The same within one run: seq 1 was processed and acked, then handed out again as new.
    source, nc = _scripted_nats([[_fake_msg(1, 1, 1)], [_fake_msg(1, 1, 3), _fake_msg(2, 1, 4)]])
    got: list[Any] = []

    async def go() -> None:
        async for item in source:
            got.append(item)
            await source.acknowledge(source.offset, [])

    asyncio.run(go())
    assert got == [{"id": 1}, {"id": 2}]
    assert [(subject.rsplit(".", 1)[-1], body) for subject, body in nc.sent] == [
        ("1", b"+ACK"),
        ("3", b"+ACK"),
        ("4", b"+ACK"),
    ]


def test_nats_missing_stream_is_named(tmp_path: Path, nats_url: str, nats_stream: str) -> None:
    source = NatsSource(url=nats_url, stream=nats_stream, durable="d", idle_timeout=0.5)
    with pytest.raises(PipelineDefinitionError, match=f"stream {nats_stream}.*does not exist") as e:
        run(tmp_path, "nats_missing", source)
    assert "nats stream add" in str(e.value)


def test_nats_existing_consumer_must_allow_enough_deliveries(
    tmp_path: Path, nats_url: str, nats_stream: str
) -> None:
    nats_publish(nats_url, nats_stream, bodies(1))

    async def limited() -> None:
        from nats.js.api import ConsumerConfig

        nc = await _nats(nats_url)
        try:
            await nc.jetstream().add_consumer(
                nats_stream, ConsumerConfig(durable_name="few", max_deliver=2)
            )
        finally:
            await nc.close()

    asyncio.run(limited())
    source = NatsSource(url=nats_url, stream=nats_stream, durable="few", max_deliveries=3)
    with pytest.raises(PipelineDefinitionError, match="max_deliver 2"):
        run(tmp_path, "nats_few", source)


def test_nats_unreachable_server(tmp_path: Path) -> None:
    source = NatsSource(url="nats://127.0.0.1:1", stream="S", durable="d", unavailable_after=1.0)
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="cannot connect"):
        run(tmp_path, "nats_down", source)
    assert time.monotonic() - started < 20


# -- Redis ------------------------------------------------------------------------------------


def test_redis_reads_letters_and_acks_everything(
    tmp_path: Path, redis_url: str, redis_stream: str
) -> None:
    entries: list[dict[str, Any]] = [{"data": json.dumps({"id": i})} for i in range(60)]
    entries[7] = {"data": b"\xff not json"}
    entries[9] = {"other": "x"}
    ids = redis_add(redis_url, redis_stream, entries)
    source = RedisSource(
        url=redis_url, stream=redis_stream, group="etl", idle_timeout=1.0, batch=16, block_ms=200
    )
    report, got = run(tmp_path, "redis_basic", source, fails_on(5))
    assert report.status.value == "completed", report.summary()
    assert sorted(r["id"] for r in got) == [i for i in range(60) if i not in (5, 7, 9)]
    found = letters(tmp_path)
    source_letters = [letter for letter in found if letter.stage == "source"]
    source_letters.sort(key=lambda letter: ids.index(letter.record["id"]))
    assert [letter.record["id"] for letter in source_letters] == [ids[7], ids[9]]
    assert source_letters[0].record["encoding"] == "base64"
    assert "not JSON" in source_letters[0].message
    assert "has no field 'data' (fields: other)" in source_letters[1].message
    assert [letter.record for letter in found if letter.stage == "work"] == [{"id": 5}]
    assert redis_pending(redis_url, redis_stream, "etl") == 0


def test_redis_fields_format_and_new_group_at_dollar(
    tmp_path: Path, redis_url: str, redis_stream: str
) -> None:
    redis_add(redis_url, redis_stream, [{"a": "old"}])
    source = RedisSource(
        url=redis_url,
        stream=redis_stream,
        group="late",
        start_id="$",
        format="fields",
        max_messages=1,
        block_ms=100,
    )

    async def go() -> list[Any]:
        source.restore(None)
        out: list[Any] = []
        iterator = source.__aiter__()
        task = asyncio.ensure_future(iterator.__anext__())
        await asyncio.sleep(0.3)  # the group exists now, at $
        await asyncio.to_thread(redis_add, redis_url, redis_stream, [{"a": "new", "b": "2"}])
        out.append(await asyncio.wait_for(task, 10))
        await source.acknowledge(source.offset, [])
        await source.aclose()
        return out

    assert asyncio.run(go()) == [{"a": "new", "b": "2"}]
    assert redis_pending(redis_url, redis_stream, "late") == 0


def test_redis_restored_ids_are_acked_at_start(
    tmp_path: Path, redis_url: str, redis_stream: str
) -> None:
    ids = redis_add(redis_url, redis_stream, [{"data": json.dumps({"id": i})} for i in range(5)])

    async def deliver_without_ack() -> None:
        source = RedisSource(url=redis_url, stream=redis_stream, group="g", max_messages=5)
        source.restore(None)
        async for _ in source:
            pass
        await source.aclose()

    asyncio.run(deliver_without_ack())
    assert redis_pending(redis_url, redis_stream, "g") == 5
    source = RedisSource(
        url=redis_url, stream=redis_stream, group="g", idle_timeout=0.5, block_ms=100
    )

    async def resumed() -> list[Any]:
        source.restore({"redis_ids": ids[:2]})
        got = [item async for item in source]
        await source.acknowledge(source.offset, [])
        await source.aclose()
        return got

    assert [r["id"] for r in asyncio.run(resumed())] == [2, 3, 4]
    assert redis_pending(redis_url, redis_stream, "g") == 0


def test_redis_takes_over_a_dead_consumers_entries(
    tmp_path: Path, redis_url: str, redis_stream: str
) -> None:
    redis_add(redis_url, redis_stream, [{"data": json.dumps({"id": i})} for i in range(4)])

    async def dead() -> None:
        source = RedisSource(
            url=redis_url, stream=redis_stream, group="g", consumer="dead", max_messages=4
        )
        source.restore(None)
        async for _ in source:
            pass
        await source.aclose()

    asyncio.run(dead())
    source = RedisSource(
        url=redis_url,
        stream=redis_stream,
        group="g",
        consumer="alive",
        claim_idle_ms=300,
        idle_timeout=0.5,
        block_ms=100,
    )
    _, got = run(tmp_path, "redis_takeover", source)
    assert sorted(r["id"] for r in got) == [0, 1, 2, 3]
    assert redis_pending(redis_url, redis_stream, "g") == 0


def test_redis_wrong_key_type(tmp_path: Path, redis_url: str, redis_stream: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.set(redis_stream, "a string")
    client.close()
    source = RedisSource(url=redis_url, stream=redis_stream, group="g", idle_timeout=0.5)
    with pytest.raises(
        PipelineDefinitionError, match=r"cannot create the group|else than a stream"
    ):
        run(tmp_path, "redis_wrongtype", source)


def test_redis_unreachable_server(tmp_path: Path) -> None:
    source = RedisSource(url="redis://127.0.0.1:1/0", stream="s", group="g", unavailable_after=1.0)
    started = time.monotonic()
    with pytest.raises(SourceUnavailableError, match="unreachable for 1s"):
        run(tmp_path, "redis_down", source)
    assert time.monotonic() - started < 20


def test_held_messages_are_kept_alive(
    nats_url: str, nats_stream: str, redis_url: str, redis_stream: str
) -> None:
    # Held past ack_wait (NATS) / claim_idle_ms (Redis), a message is neither redelivered
    # nor claimable, and its delivery count stays 1.
    import redis

    nats_publish(nats_url, nats_stream, bodies(3))
    redis_add(redis_url, redis_stream, [{"data": json.dumps({"id": i})} for i in range(3)])

    async def hold(source: Any) -> list[Any]:
        source.restore(None)
        got = []
        async for item in source:
            got.append(item)
        await asyncio.sleep(2.5)  # the pipeline holds them
        return got

    async def nats_side() -> None:
        source = NatsSource(
            url=nats_url, stream=nats_stream, durable="slow", ack_wait=1.0, max_messages=3
        )
        assert len(await hold(source)) == 3
        info = await source._js.consumer_info(nats_stream, "slow")
        assert info.num_redelivered == 0
        await source.acknowledge(source.offset, [])
        await source.aclose()

    async def redis_side() -> None:
        source = RedisSource(
            url=redis_url, stream=redis_stream, group="g", claim_idle_ms=600, max_messages=3
        )
        assert len(await hold(source)) == 3
        client = redis.Redis.from_url(redis_url)
        try:
            rows = client.xpending_range(redis_stream, "g", "-", "+", 10)
        finally:
            client.close()
        assert [row["times_delivered"] for row in rows] == [1, 1, 1]
        assert all(row["time_since_delivered"] < 600 for row in rows), rows
        await source.acknowledge(source.offset, [])
        await source.aclose()

    asyncio.run(nats_side())
    asyncio.run(redis_side())
    assert redis_pending(redis_url, redis_stream, "g") == 0
