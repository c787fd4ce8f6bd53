"""The broker sources against hand-written consumers: NATS JetStream and Redis Streams.

Usage::

    .venv/bin/python bench/w_brokers.py [--messages N] [--batch B] [--runs R] [--json FILE]

Needs NATS with JetStream (``CONVEYOR_NATS_URL``, default nats://127.0.0.1:4222) and Redis
(``CONVEYOR_REDIS_URL``, default redis://127.0.0.1:6379/0). Before each run a fresh stream
gets ``--messages`` JSON messages ``{"id": i, "v": i % 1000}`` (not timed). Each contender
then consumes all of them with the same discipline: fetch ``--batch`` messages, process them,
acknowledge them afterwards; its time counts only if it saw every message (count and sum of
ids), and the broker has none left unacknowledged at the end.

- Conveyor: ``NatsSource`` / ``RedisSource`` (``batch`` B, ``max_messages`` N) -> one trivial
  ``MapStage`` (adds a field) -> a counting sink, with checkpoints (SQLite store, the default
  1 s interval): messages are acked after each checkpoint that covers them.
- Hand-written: nats-py ``pull_subscribe`` + ``fetch(B)``, ``json.loads`` and the same
  function per message, then ``+ACK`` for the batch and a flush; redis-py asyncio
  ``XREADGROUP COUNT B``, the same processing, then one ``XACK`` for the batch.

Contenders alternate from round to round (``--runs``, default 5); the figure is the ratio of
median throughputs, Conveyor's over the hand-written consumer's (target >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor import MapStage, Pipeline
from conveyor.connectors import NatsSource, RedisSource

NATS_URL = os.environ.get("CONVEYOR_NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("CONVEYOR_REDIS_URL", "redis://127.0.0.1:6379/0")


def work(record: dict[str, Any]) -> dict[str, Any]:
    """The trivial stage of both contenders."""
    return {**record, "w": record["v"] + 1}


class Counter:
    """A sink that counts what it is given (and sums the ids)."""

    def __init__(self) -> None:
        self.count = 0
        self.ids = 0

    def __call__(self, records: list[dict[str, Any]]) -> None:
        self.count += len(records)
        self.ids += sum(r["id"] for r in records)


# -- NATS ---------------------------------------------------------------------------------------


async def _nats() -> Any:
    import nats

    async def quiet(exc: Exception) -> None:
        pass

    return await nats.connect(NATS_URL, error_cb=quiet, max_reconnect_attempts=1)


def nats_fill(stream: str, n: int) -> None:
    async def go() -> None:
        nc = await _nats()
        try:
            js = nc.jetstream()
            await js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
            subject = f"{stream.lower()}.in"
            for i in range(n):  # core publishes (no ack each), then wait until all are stored
                await nc.publish(subject, json.dumps({"id": i, "v": i % 1000}).encode())
                if i % 10_000 == 9_999:
                    await nc.flush()
            await nc.flush()
            for _ in range(600):
                if (await js.stream_info(stream)).state.messages >= n:
                    return
                await asyncio.sleep(0.05)
            raise RuntimeError(f"stream {stream} did not get {n} messages")
        finally:
            await nc.close()

    asyncio.run(go())


def nats_unacked(stream: str, durable: str) -> int:
    async def go() -> int:
        nc = await _nats()
        try:
            info = await nc.jetstream().consumer_info(stream, durable)
            return int(info.num_ack_pending or 0) + int(info.num_pending or 0)
        finally:
            await nc.close()

    return asyncio.run(go())


def nats_drop(stream: str) -> None:
    async def go() -> None:
        nc = await _nats()
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(go())


def nats_hand(stream: str, n: int, batch: int) -> Counter:
    async def go() -> Counter:
        from nats.js.api import AckPolicy, ConsumerConfig

        counter = Counter()
        nc = await _nats()
        try:
            js = nc.jetstream()
            config = ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, max_ack_pending=-1)
            sub = await js.pull_subscribe(f"{stream.lower()}.>", durable="bench", config=config)
            while counter.count < n:
                try:
                    msgs = await sub.fetch(min(batch, n - counter.count), timeout=1.0)
                except TimeoutError:
                    continue
                counter([work(json.loads(m.data)) for m in msgs])
                for m in msgs:
                    await nc.publish(m.reply, b"+ACK")
                await nc.flush()
        finally:
            await nc.close()
        return counter

    return asyncio.run(go())


def nats_conveyor(stream: str, n: int, batch: int, tmp: Path) -> Counter:
    counter = Counter()
    source = NatsSource(url=NATS_URL, stream=stream, durable="bench", batch=batch, max_messages=n)
    Pipeline(f"bench_{stream}").add_stage(MapStage(work, name="work")).run(
        source,
        counter,
        checkpoint=tmp / "checkpoints.db",
        dead_letters=tmp / "dead_letters.db",
    )
    return counter


# -- Redis --------------------------------------------------------------------------------------


def redis_fill(stream: str, n: int) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for start in range(0, n, 5000):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(n, start + 5000)):
                pipe.xadd(stream, {"data": json.dumps({"id": i, "v": i % 1000})})
            pipe.execute()
        client.xgroup_create(stream, "bench", id="0")
    finally:
        client.close()


def redis_unacked(stream: str, _: str) -> int:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        pending = int(client.xpending(stream, "bench")["pending"])
        lag = sum(int(g.get("lag") or 0) for g in client.xinfo_groups(stream))
        return pending + lag
    finally:
        client.close()


def redis_drop(stream: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.delete(stream)
    finally:
        client.close()


def redis_hand(stream: str, n: int, batch: int) -> Counter:
    async def go() -> Counter:
        import redis.asyncio as redis

        counter = Counter()
        client = redis.Redis.from_url(REDIS_URL)
        try:
            while counter.count < n:
                reply = await client.xreadgroup(
                    "bench", "hand", {stream: ">"}, count=min(batch, n - counter.count), block=1000
                )
                if not reply:
                    continue
                entries = reply[0][1]
                counter([work(json.loads(fields[b"data"])) for _, fields in entries])
                await client.xack(stream, "bench", *[i for i, _ in entries])
        finally:
            await client.aclose()
        return counter

    return asyncio.run(go())


def redis_conveyor(stream: str, n: int, batch: int, tmp: Path) -> Counter:
    counter = Counter()
    source = RedisSource(url=REDIS_URL, stream=stream, group="bench", batch=batch, max_messages=n)
    Pipeline(f"bench_{stream}").add_stage(MapStage(work, name="work")).run(
        source,
        counter,
        checkpoint=tmp / "checkpoints.db",
        dead_letters=tmp / "dead_letters.db",
    )
    return counter


# -- the comparison -----------------------------------------------------------------------------

BROKERS: dict[str, dict[str, Callable[..., Any]]] = {
    "nats": {
        "fill": nats_fill,
        "unacked": nats_unacked,
        "drop": nats_drop,
        "hand": nats_hand,
        "conveyor": nats_conveyor,
    },
    "redis": {
        "fill": redis_fill,
        "unacked": redis_unacked,
        "drop": redis_drop,
        "hand": redis_hand,
        "conveyor": redis_conveyor,
    },
}


def one_run(broker: str, who: str, n: int, batch: int) -> float:
    """Seconds for contender ``who`` to consume ``n`` fresh messages (verified)."""
    calls = BROKERS[broker]
    uid = uuid.uuid4().hex[:10]
    stream = f"B{uid.upper()}" if broker == "nats" else f"bench-{uid}"
    tmp = Path(tempfile.mkdtemp(prefix="w_brokers_"))
    calls["fill"](stream, n)
    try:
        t0 = time.perf_counter()
        counter = (
            calls["hand"](stream, n, batch) if who == "hand" else calls[who](stream, n, batch, tmp)
        )
        seconds = time.perf_counter() - t0
        expected = n * (n - 1) // 2
        if counter.count != n or counter.ids != expected:
            raise AssertionError(
                f"{broker}/{who}: saw {counter.count} messages, id sum {counter.ids}"
            )
        left = calls["unacked"](stream, "bench")
        for _ in range(100):  # JetStream processes acks shortly after a flush returns
            if not left:
                break
            time.sleep(0.05)
            left = calls["unacked"](stream, "bench")
        if left:
            raise AssertionError(f"{broker}/{who}: {left} messages left unacknowledged")
        return seconds
    finally:
        calls["drop"](stream)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--brokers", default="nats,redis")
    parser.add_argument("--json", type=Path, default=None, help="append the figures as JSON")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for broker in args.brokers.split(","):
        times: dict[str, list[float]] = {"conveyor": [], "hand": []}
        for r in range(args.runs):
            order = ["conveyor", "hand"] if r % 2 == 0 else ["hand", "conveyor"]
            for who in order:
                times[who].append(one_run(broker, who, args.messages, args.batch))
        rates = {who: args.messages / statistics.median(t) for who, t in times.items()}
        ratio = rates["conveyor"] / rates["hand"]
        results[broker] = {
            "messages": args.messages,
            "batch": args.batch,
            "runs": args.runs,
            "seconds": {who: [round(s, 3) for s in t] for who, t in times.items()},
            "msgs_per_s": {who: round(v) for who, v in rates.items()},
            "ratio": round(ratio, 3),
        }
        print(
            f"{broker}: Conveyor {rates['conveyor']:,.0f} msg/s, hand-written "
            f"{rates['hand']:,.0f} msg/s, ratio {ratio:.2f} (medians of {args.runs}; "
            f"{args.messages:,} messages, batch {args.batch})",
            flush=True,
        )
    if args.json is not None:
        with args.json.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"workload": "brokers", **results}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
