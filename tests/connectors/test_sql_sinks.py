"""The SQL sinks against real SQLite files and the real PostgreSQL: tables created from a
model or the first batch, existing tables used as they are, upserts by key, hostile names
and values, records of every shape, bad records isolated, the checkpoint in the same
transaction as the rows."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from conveyor import MapStage, Pipeline, RunInfo, RunStatus
from conveyor.connectors import PostgresSink, SqliteSink
from conveyor.core.checkpoint import Checkpoint, PipelineIdentity
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import SinkUnavailableError


class Reading(BaseModel):
    id: int
    value: float
    label: str | None = None


@dataclasses.dataclass
class Row:
    id: int
    value: float
    label: str | None = None


def run(records: list[Any], sink: Any, tmp: Path, name: str = "p", **options: Any) -> Any:
    return (
        Pipeline[Any, Any](name)
        .add_stage(MapStage(lambda r: r, name="same"))
        .run(records, sink, dead_letters=tmp / "dl.db", max_dead_letters="100%", **options)
    )


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


# -- SQLite ---------------------------------------------------------------------------------


def test_sqlite_creates_the_table_from_the_first_batch_and_takes_every_shape(
    tmp_path: Path,
) -> None:
    records = [{"id": 1, "value": 0.5, "label": "a"}, Reading(id=2, value=1.5), Row(3, 2.5, "c")]
    report = run(records, SqliteSink(tmp_path / "o.db", "readings", key=["id"]), tmp_path)
    assert report.records_out == 3
    assert sqlite_rows(tmp_path / "o.db", "SELECT id, value, label FROM readings ORDER BY id") == [
        (1, 0.5, "a"),
        (2, 1.5, None),
        (3, 2.5, "c"),
    ]
    info = sqlite_rows(tmp_path / "o.db", "PRAGMA table_info(readings)")
    assert [(c[1], c[2], c[5]) for c in info] == [
        ("id", "INTEGER", 1),
        ("value", "REAL", 0),
        ("label", "TEXT", 0),
    ]


def test_sqlite_columns_from_the_model(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "o.db", "readings", model=Reading)
    run([{"id": 1, "value": 2.0}], sink, tmp_path)
    names = [c[1] for c in sqlite_rows(tmp_path / "o.db", "PRAGMA table_info(readings)")]
    assert names == ["id", "value", "label"]


def test_sqlite_upserts_by_key(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    run(
        [{"id": 1, "value": 1.0}, {"id": 2, "value": 2.0}],
        SqliteSink(path, "t", key=["id"]),
        tmp_path,
    )
    run(
        [{"id": 2, "value": 20.0}, {"id": 3, "value": 3.0}],
        SqliteSink(path, "t", key=["id"]),
        tmp_path,
    )
    assert sqlite_rows(path, "SELECT id, value FROM t ORDER BY id") == [
        (1, 1.0),
        (2, 20.0),
        (3, 3.0),
    ]


def test_sqlite_uses_an_existing_table_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER, value REAL, note TEXT DEFAULT 'kept')")
    report = run(
        [{"id": 1, "value": 1.0}, {"id": 2, "value": 2.0, "oops": 1}],
        SqliteSink(path, "t"),
        tmp_path,
    )
    assert sqlite_rows(path, "SELECT id, value, note FROM t") == [(1, 1.0, None)]
    assert report.dead_lettered == 1
    with open_dead_letter_store(tmp_path / "dl.db") as store:
        (letter,) = store.list()
    assert "no column(s) 'oops'" in letter.message
    assert letter.stage == "sink"


def test_sqlite_hostile_names_and_values_are_quoted_and_bound(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    evil = 'x"; DROP TABLE t; --'
    table = 'my "table"'
    run([{"id": 1, evil: "'); DROP TABLE t; --"}], SqliteSink(path, table), tmp_path)
    assert sqlite_rows(path, 'SELECT * FROM "my ""table"""') == [(1, "'); DROP TABLE t; --")]


def test_sqlite_bad_record_is_isolated_and_the_batch_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    records = [{"id": i, "value": float(i)} for i in range(10)]
    records[4] = {"id": 4, "value": object()}  # cannot be stored
    report = run(records, SqliteSink(path, "t"), tmp_path, batch_size=10)
    assert sorted(r[0] for r in sqlite_rows(path, "SELECT id FROM t")) == [
        0,
        1,
        2,
        3,
        5,
        6,
        7,
        8,
        9,
    ]
    assert report.dead_lettered == 1
    assert report.status is RunStatus.COMPLETED


def test_sqlite_values_of_other_types(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    when = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.UTC)
    run(
        [{"id": 1, "at": when, "tags": ["a", "b"], "blob": b"\x00\x01"}],
        SqliteSink(path, "t"),
        tmp_path,
    )
    assert sqlite_rows(path, "SELECT at, tags, blob FROM t") == [
        (when.isoformat(), '["a", "b"]', b"\x00\x01")
    ]


def test_sqlite_checkpoint_is_in_the_same_transaction(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    sink = SqliteSink(path, "t")
    store = sink.checkpoint_store()
    sink.open(RunInfo("r1", "p", checkpointing=True))
    sink.write([{"id": 1}])
    assert sqlite_rows(path, "SELECT count(*) FROM t") == [(0,)]  # the row is not committed yet
    cp = Checkpoint(PipelineIdentity("p", "f", "s"), "r1", ("r1",), position=1, read=1)
    sink.commit(cp)
    assert sqlite_rows(path, "SELECT count(*) FROM t") == [(1,)]
    assert store.load("p") == cp
    sink.write([{"id": 2}])
    sink.close(RunStatus.ABORTED)  # what came after the checkpoint is rolled back
    assert sqlite_rows(path, "SELECT id FROM t") == [(1,)]
    store.close()


def test_sqlite_locked_longer_than_the_retries_fails_the_run(tmp_path: Path) -> None:
    from conveyor import RetryPolicy, StageOptions

    path = tmp_path / "o.db"
    run([{"id": 0}], SqliteSink(path, "t"), tmp_path)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(SinkUnavailableError, match="locked"):
            run(
                [{"id": 1}],
                SqliteSink(path, "t", timeout=0.05),
                tmp_path,
                stage_options={"sink": StageOptions(retry=RetryPolicy(attempts=2, backoff=0.01))},
            )
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with open_dead_letter_store(tmp_path / "dl.db") as store:
        assert store.list() == []  # the record is fine: no dead letter, the run failed


# -- PostgreSQL -----------------------------------------------------------------------------


def pg_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


def test_postgres_creates_the_table_and_copies(tmp_path: Path, pg_dsn: str, pg_table: str) -> None:
    when = dt.datetime(2026, 12, 2, 5, 0, tzinfo=dt.UTC)
    records = [
        {"id": 1, "value": 0.5, "label": "a", "at": when, "meta": {"k": [1, 2]}},
        Reading(id=2, value=1.5),
        Row(3, 2.5, "c"),
    ]
    report = run(records, PostgresSink(pg_dsn, pg_table), tmp_path, name=pg_table)
    assert report.records_out == 3
    assert report.dead_lettered == 0
    got = pg_rows(pg_dsn, f'SELECT id, value, label, at, meta FROM "{pg_table}" ORDER BY id')
    assert got == [
        (1, 0.5, "a", when, {"k": [1, 2]}),
        (2, 1.5, None, None, None),
        (3, 2.5, "c", None, None),
    ]
    types = pg_rows(
        pg_dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        f"WHERE table_name = '{pg_table}' ORDER BY ordinal_position",
    )
    assert types == [
        ("id", "bigint"),
        ("value", "double precision"),
        ("label", "text"),
        ("at", "timestamp with time zone"),
        ("meta", "jsonb"),
    ]


def test_postgres_upserts_by_key(tmp_path: Path, pg_dsn: str, pg_table: str) -> None:
    sink = PostgresSink(pg_dsn, pg_table, key=["id"])
    run([{"id": 1, "v": 1.0}, {"id": 2, "v": 2.0}], sink, tmp_path, name=pg_table)
    run(
        [{"id": 2, "v": 20.0}, {"id": 3, "v": 3.0}],
        PostgresSink(pg_dsn, pg_table, key=["id"]),
        tmp_path,
        name=pg_table,
    )
    assert pg_rows(pg_dsn, f'SELECT id, v FROM "{pg_table}" ORDER BY id') == [
        (1, 1.0),
        (2, 20.0),
        (3, 3.0),
    ]


def test_postgres_hostile_names_and_a_bad_record(
    tmp_path: Path, pg_dsn: str, pg_table: str
) -> None:
    evil = 'c"; DROP TABLE x; --'
    records = [{"id": i, evil: f"'); DROP TABLE x; -- {i}"} for i in range(6)]
    records[2] = {"id": "not a number", evil: "x"}  # bigint column: refused by the server
    report = run(records, PostgresSink(pg_dsn, pg_table), tmp_path, name=pg_table)
    assert report.dead_lettered == 1
    got = pg_rows(pg_dsn, f'SELECT id FROM "{pg_table}" ORDER BY id')
    assert [r[0] for r in got] == [0, 1, 3, 4, 5]


def test_postgres_checkpoint_with_the_rows(tmp_path: Path, pg_dsn: str, pg_table: str) -> None:
    sink = PostgresSink(pg_dsn, pg_table)
    store = sink.checkpoint_store()
    sink.open(RunInfo("r1", pg_table, checkpointing=True))
    sink.write([{"id": 1}])
    cp = Checkpoint(PipelineIdentity(pg_table, "f", "s"), "r1", ("r1",), position=1, read=1)
    sink.commit(cp)
    sink.write([{"id": 2}])
    sink.close(RunStatus.ABORTED)
    assert pg_rows(pg_dsn, f'SELECT id FROM "{pg_table}"') == [(1,)]
    assert store.load(pg_table) == cp
    store.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM conveyor_checkpoints WHERE pipeline LIKE %s", (f"{pg_table}%",))


def test_postgres_unreachable_is_a_clear_error(tmp_path: Path) -> None:
    from conveyor import RetryPolicy, StageOptions

    sink = PostgresSink("host=127.0.0.1 port=1 user=postgres dbname=test", "t", connect_timeout=1)
    where = r"cannot connect to postgres 127\.0\.0\.1:1/test"
    with pytest.raises(SinkUnavailableError, match=where):
        run(
            [{"id": 1}],
            sink,
            tmp_path,
            stage_options={"sink": StageOptions(retry=RetryPolicy(attempts=2, backoff=0.01))},
        )


def test_postgres_bad_record_inside_a_checkpoint_interval_keeps_the_earlier_batches(
    tmp_path: Path, pg_dsn: str, pg_table: str
) -> None:
    """The server aborts the whole transaction on a bad row: the batches written before it
    in the same checkpoint interval are written again, the bad record isolated."""
    records: list[Any] = [{"id": i, "v": float(i)} for i in range(500)]
    records[333] = {"id": "x", "v": 1.0}
    report = run(
        records,
        PostgresSink(pg_dsn, pg_table),
        tmp_path,
        name=pg_table,
        batch_size=50,
        checkpoint=tmp_path / "cp.db",
        checkpoint_every=60.0,
    )
    assert report.dead_lettered == 1
    assert report.records_out == 499
    got = sorted(r[0] for r in pg_rows(pg_dsn, f'SELECT id FROM "{pg_table}"'))
    assert got == [i for i in range(500) if i != 333]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM conveyor_checkpoints WHERE pipeline LIKE %s", (f"{pg_table}%",))
