"""Fixtures shared by the whole test suite (kept deliberately small)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from conveyor import Event, EventBus, EventType, PipelineContext


@pytest.fixture
def context() -> PipelineContext:
    """A fresh context, for calling ``stage.process`` directly."""
    return PipelineContext()


@pytest.fixture
def bus_and_events() -> tuple[EventBus, list[Event]]:
    """An event bus with a recorder subscribed to every event type, and what it recorded."""
    bus, seen = EventBus(), []
    for event_type in EventType:
        bus.subscribe(event_type, seen.append)
    return bus, seen


@pytest.fixture
def isolated_imports() -> Iterator[None]:
    """Stage files import ``pipeline.…``: restore ``sys.path`` and forget every project's
    ``pipeline`` modules after the test (autouse in tests/project and tests/observe)."""
    path = list(sys.path)
    yield
    sys.path[:] = path
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]


PG_DSN_DEFAULT = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """The test PostgreSQL (``CONVEYOR_TEST_PG_DSN``, default 127.0.0.1:5432 db ``test``).

    Unreachable: skipped with what to start, except under ``CI=true`` where it fails."""
    import os

    dsn = os.environ.get("CONVEYOR_TEST_PG_DSN", PG_DSN_DEFAULT)
    try:
        import psycopg

        psycopg.connect(dsn).close()
    except Exception as exc:
        message = (
            f"PostgreSQL is not reachable at {dsn!r} ({exc}); start it "
            "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or set "
            "CONVEYOR_TEST_PG_DSN"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return dsn


@pytest.fixture
def pg_table(pg_dsn: str) -> object:
    """A unique table name in the test database, dropped (with the checkpoint table's row)
    afterwards."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP TABLE IF EXISTS "{name}"')


NATS_URL_DEFAULT = "nats://127.0.0.1:4222"
REDIS_URL_DEFAULT = "redis://127.0.0.1:6379/0"


def _service_missing(message: str) -> None:
    """Skip a test whose service is not there; under ``CI=true`` fail it instead."""
    import os

    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def nats_url() -> str:
    """The test NATS server with JetStream (``CONVEYOR_NATS_URL``, default 127.0.0.1:4222).

    Unreachable: skipped with what to start, except under ``CI=true`` where it fails."""
    import asyncio
    import os

    url = os.environ.get("CONVEYOR_NATS_URL", NATS_URL_DEFAULT)

    async def probe() -> None:
        import nats

        async def quiet(exc: Exception) -> None:
            pass

        nc = await nats.connect(
            url,
            connect_timeout=2,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=quiet,
        )
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        _service_missing(
            f"NATS with JetStream is not reachable at {url!r} ({type(exc).__name__}: {exc}); "
            "start it (nats-server -js -a 127.0.0.1 -p 4222) or set CONVEYOR_NATS_URL"
        )
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis (``CONVEYOR_REDIS_URL``, default 127.0.0.1:6379 db 0).

    Unreachable: skipped with what to start, except under ``CI=true`` where it fails."""
    import os

    url = os.environ.get("CONVEYOR_REDIS_URL", REDIS_URL_DEFAULT)
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        _service_missing(
            f"Redis is not reachable at {url!r} ({type(exc).__name__}: {exc}); start it "
            "(redis-server --bind 127.0.0.1 --port 6379 --daemonize yes) or set "
            "CONVEYOR_REDIS_URL"
        )
    return url
