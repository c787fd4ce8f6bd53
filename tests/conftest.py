"""Fixtures shared by the whole test suite (kept deliberately small)."""

from __future__ import annotations

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
