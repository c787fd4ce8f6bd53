"""Hostile table and column names given to the SQL sinks drop nothing: identifiers are
quoted by each driver's rules, so ``t"; DROP TABLE x;--`` is just an odd table name."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from conveyor import MapStage, Pipeline
from conveyor.connectors.sql import PostgresSink, SqliteSink

HOSTILE = 't"; DROP TABLE x;--'
HOSTILE_COLUMN = 'v"); DROP TABLE x;--'


def _run(sink: Any, records: list[dict[str, Any]]) -> None:
    report = (
        Pipeline("hostile")
        .add_stage(MapStage(lambda r: r, name="same"))
        .run(records, sink, dead_letters="memory")
    )
    assert report.records_out == len(records), report.summary()


@pytest.mark.parametrize("key", [[], ["id"]])
def test_sqlite_hostile_table_name_drops_nothing(tmp_path: Path, key: list[str]) -> None:
    path = tmp_path / "out.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE x (id INTEGER)")
        conn.execute("INSERT INTO x VALUES (42)")
    records = [{"id": 1, HOSTILE_COLUMN: "a"}, {"id": 2, HOSTILE_COLUMN: "b"}]
    _run(SqliteSink(path, HOSTILE, key=key), records)
    _run(SqliteSink(path, HOSTILE, key=key), records)  # the existing table, (up)serted into
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT id FROM x").fetchall() == [(42,)]
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"x", HOSTILE} <= tables
        rows = conn.execute(f'SELECT id FROM "{HOSTILE.replace(chr(34), chr(34) * 2)}"')
        assert sorted(r[0] for r in rows) == ([1, 2] if key else [1, 1, 2, 2])


def test_sqlite_hostile_table_name_from_config(tmp_path: Path) -> None:
    sink = SqliteSink.from_config(SqliteSink.Config(path="out.db", table=HOSTILE), tmp_path)
    with sqlite3.connect(tmp_path / "out.db") as conn:
        conn.execute("CREATE TABLE x (id INTEGER)")
    _run(sink, [{"id": 1}])
    with sqlite3.connect(tmp_path / "out.db") as conn:
        assert conn.execute("SELECT count(*) FROM x").fetchone() == (0,)  # still there
        assert conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = ?", (HOSTILE,)
        ).fetchone() == (1,)


@pytest.mark.parametrize("key", [[], ["id"]])
def test_postgres_hostile_table_name_drops_nothing(
    pg_dsn: str, pg_table: str, key: list[str]
) -> None:
    import psycopg
    from psycopg import sql

    victim = f"{pg_table}_x"  # the table `x` an injection would drop
    hostile = f'{pg_table}"; DROP TABLE {victim};--'
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(victim)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (42)").format(sql.Identifier(victim)))
    records = [{"id": 1, HOSTILE_COLUMN: "a"}, {"id": 2, HOSTILE_COLUMN: "b"}]
    try:
        _run(PostgresSink(pg_dsn, hostile, key=key), records)
        _run(PostgresSink(pg_dsn, hostile, key=key), records)
        with psycopg.connect(pg_dsn) as conn:
            kept = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(victim)))
            assert kept.fetchall() == [(42,)]
            written = conn.execute(sql.SQL("SELECT id FROM {}").format(sql.Identifier(hostile)))
            assert sorted(r[0] for r in written) == ([1, 2] if key else [1, 1, 2, 2])
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for name in (victim, hostile):
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
