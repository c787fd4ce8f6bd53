"""The SQL sources against real SQLite files and the real PostgreSQL: keyset reads in
batches, composite keys, seek round trips, query mode, model coercion and rejects, hostile
names, clear errors, reconnects, and whole runs with checkpoints (id-set oracles)."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import textwrap
import uuid
from collections.abc import AsyncIterable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from conveyor import MapStage, Pipeline, RetryPolicy
from conveyor.connectors import (
    PostgresSink,
    PostgresSource,
    SqliteSink,
    SqliteSource,
    connector,
    describe_connector,
)
from conveyor.core._imports import OptionError
from conveyor.core.checkpoint import SeekableSource
from conveyor.core.source import Rejected
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import (
    ConfigError,
    PipelineDefinitionError,
    SourceRecordError,
    SourceUnavailableError,
)

HOSTILE = 't"; DROP TABLE x;--'


class Reading(BaseModel):
    id: int
    value: float
    label: str


# -- helpers ---------------------------------------------------------------------------------


def sqlite_db(path: Path, ddl: str, rows: list[tuple[Any, ...]], table: str = "readings") -> Path:
    with sqlite3.connect(path) as conn:
        conn.execute(ddl)
        if rows:
            marks = ", ".join("?" * len(rows[0]))
            quoted = '"' + table.replace('"', '""') + '"'
            conn.executemany(f"INSERT INTO {quoted} VALUES ({marks})", rows)
    return path


def readings_db(tmp: Path, n: int = 50) -> Path:
    return sqlite_db(
        tmp / "in.db",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, value REAL, label TEXT)",
        [(i, i * 0.5, f"r{i}") for i in range(1, n + 1)],
    )


def drain(source: Any) -> list[Any]:
    """Every item of a sync or async source."""
    if isinstance(source, AsyncIterable):

        async def collect() -> list[Any]:
            return [item async for item in source]

        return asyncio.run(collect())
    return list(source)


def take(source: Any, k: int) -> list[Any]:
    """The first ``k`` items (the source left suspended, as the runner leaves it)."""
    if isinstance(source, AsyncIterable):

        async def collect() -> list[Any]:
            out: list[Any] = []
            if k == 0:
                return out
            iterator = source.__aiter__()
            async for item in iterator:
                out.append(item)
                if len(out) == k:
                    break
            await iterator.aclose()  # type: ignore[attr-defined]
            return out

        return asyncio.run(collect())
    return list(itertools.islice(iter(source), k))


def letters(path: Path) -> list[Any]:
    with open_dead_letter_store(path) as store:
        return list(store.list())


# -- SQLite ---------------------------------------------------------------------------------


def test_sqlite_reads_every_row_in_key_order_in_batches(tmp_path: Path) -> None:
    db = readings_db(tmp_path, 50)
    statements: list[str] = []
    source = SqliteSource(db, "readings", key=["id"], batch_size=7)
    iterator = iter(source)
    first = next(iterator)
    assert source._conn is not None
    source._conn.set_trace_callback(statements.append)
    rows = [first, *iterator]
    assert rows == [{"id": i, "value": i * 0.5, "label": f"r{i}"} for i in range(1, 51)]
    assert source.offset == [50]
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 7  # 50 rows / 7 a batch: 8 batches, the first before the trace
    assert all(" LIMIT 7" in s and '("id") > (' in s for s in selects)
    assert isinstance(source, SeekableSource)
    assert source._conn is None  # closed at the end


def test_sqlite_source_is_exported_and_registered() -> None:
    assert connector("source", "sqlite") is SqliteSource
    assert connector("source", "postgres") is PostgresSource
    names = {row["name"] for row in describe_connector(SqliteSource)}
    assert {"path", "table", "query", "key", "columns", "batch_size", "model"} <= names
    assert all(row["description"] for row in describe_connector(PostgresSource))


@pytest.mark.parametrize("k", [0, 1, 6, 7, 8, 49, 50])
def test_sqlite_seek_round_trip_gives_exactly_the_rest(tmp_path: Path, k: int) -> None:
    db = readings_db(tmp_path, 50)
    first = SqliteSource(db, "readings", key=["id"], batch_size=7)
    head = take(first, k)
    offset = json.loads(json.dumps(first.offset))  # as a checkpoint keeps it
    first.close()
    again = SqliteSource(db, "readings", key=["id"], batch_size=7)
    again.seek(offset)
    rest = drain(again)
    assert [r["id"] for r in head + rest] == list(range(1, 51))


def test_sqlite_composite_keys_with_text_and_seek(tmp_path: Path) -> None:
    rows = [(g, n, f"{g}-{n}") for g in ["b", "a", "c"] for n in [3, 1, 2]]
    db = sqlite_db(
        tmp_path / "c.db",
        "CREATE TABLE pairs (grp TEXT NOT NULL, n INTEGER NOT NULL, v TEXT, PRIMARY KEY (grp, n))",
        rows,
        "pairs",
    )
    want = [f"{g}-{n}" for g in "abc" for n in (1, 2, 3)]
    assert [r["v"] for r in SqliteSource(db, "pairs", key=["grp", "n"], batch_size=2)] == want
    for k in range(len(want) + 1):
        src = SqliteSource(db, "pairs", key=["grp", "n"], batch_size=2)
        head = take(src, k)
        again = SqliteSource(db, "pairs", key=["grp", "n"], batch_size=2)
        again.seek(json.loads(json.dumps(src.offset)))
        assert [r["v"] for r in head + drain(again)] == want, k


def test_sqlite_query_mode_wraps_the_select_and_seeks(tmp_path: Path) -> None:
    db = readings_db(tmp_path, 30)
    query = "SELECT id, value * 2 AS twice FROM readings WHERE id % 3 = 0 AND label LIKE 'r%';"
    source = SqliteSource(db, query=query, key=["id"], batch_size=4)
    assert drain(source) == [{"id": i, "twice": i * 1.0} for i in range(3, 31, 3)]
    half = SqliteSource(db, query=query, key=["id"], batch_size=4)
    head = take(half, 3)
    rest = SqliteSource(db, query=query, key=["id"], batch_size=4)
    rest.seek(half.offset)
    assert [r["id"] for r in head + drain(rest)] == list(range(3, 31, 3))
    assert "query sha256:" in source.identity


def test_sqlite_columns_subset_reads_the_key_but_yields_the_columns(tmp_path: Path) -> None:
    db = readings_db(tmp_path, 5)
    source = SqliteSource(db, "readings", key=["id"], columns=["label"])
    assert drain(source) == [{"label": f"r{i}"} for i in range(1, 6)]
    assert source.offset == [5]


def test_sqlite_model_coerces_and_rejects_what_does_not_fit(tmp_path: Path) -> None:
    db = sqlite_db(
        tmp_path / "m.db",
        "CREATE TABLE readings (id TEXT PRIMARY KEY NOT NULL, value TEXT, label TEXT)",
        [("1", "0.5", "a"), ("2", "not a number", "b"), ("3", "2.5", None), ("4", "3", "d")],
    )
    items = drain(SqliteSource(db, "readings", key=["id"], model=Reading))
    good = [i for i in items if not isinstance(i, Rejected)]
    assert good == [Reading(id=1, value=0.5, label="a"), Reading(id=4, value=3.0, label="d")]
    bad = [i for i in items if isinstance(i, Rejected)]
    assert [b.record for b in bad] == [
        {
            "table": "readings",
            "key": ["2"],
            "row": {"id": "2", "value": "not a number", "label": "b"},
        },
        {"table": "readings", "key": ["3"], "row": {"id": "3", "value": "2.5", "label": None}},
    ]
    assert all(isinstance(b.error, SourceRecordError) for b in bad)
    assert str(bad[0].error).startswith("readings[2]: does not fit Reading: field 'value'")
    assert str(bad[1].error).startswith("readings[3]: does not fit Reading: field 'label'")


def test_sqlite_model_by_path_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels_sql.py").write_text(
        "from pydantic import BaseModel\n\nclass R(BaseModel):\n    id: int\n    label: str\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    readings_db(tmp_path, 3)
    config = SqliteSource.Config(path="in.db", table="readings", key=["id"], model="mymodels_sql:R")
    source = SqliteSource.from_config(config, tmp_path)
    assert [type(r).__name__ for r in drain(source)] == ["R"] * 3
    assert source.inputs() == ["in.db"]
    assert source.identity == "sqlite:in.db table readings key (id)"
    with pytest.raises(ValueError, match="not a class reference"):
        SqliteSource.Config(path="in.db", table="readings", key=["id"], model="no model")
    bad = SqliteSource.Config(path="in.db", table="readings", key=["id"], model="nowhere_xyz:R")
    with pytest.raises(OptionError, match=r"source\.model 'nowhere_xyz:R' cannot be imported"):
        SqliteSource.from_config(bad, tmp_path)


def test_sqlite_hostile_table_name_drops_nothing(tmp_path: Path) -> None:
    db = readings_db(tmp_path, 3)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE x (id INTEGER)")
    with pytest.raises(PipelineDefinitionError) as caught:
        drain(SqliteSource(db, HOSTILE, key=["id"]))
    message = str(caught.value)
    assert repr(HOSTILE) in message
    assert "'readings', 'x'" in message
    for key in (["id"], [HOSTILE]):  # a hostile column name too
        with pytest.raises(PipelineDefinitionError):
            drain(SqliteSource(db, "readings", key=key, columns=[HOSTILE]))
    # a table that really has that name is read like any other
    quoted = '"' + HOSTILE.replace('"', '""') + '"'
    with sqlite3.connect(db) as conn:
        conn.execute(f"CREATE TABLE {quoted} ({quoted} INTEGER PRIMARY KEY)")
        conn.execute(f"INSERT INTO {quoted} VALUES (1), (2)")
    assert drain(SqliteSource(db, HOSTILE, key=[HOSTILE], batch_size=1)) == [
        {HOSTILE: 1},
        {HOSTILE: 2},
    ]
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"x", "readings", HOSTILE} <= tables


def test_sqlite_clear_errors(tmp_path: Path) -> None:
    db = readings_db(tmp_path, 3)
    with pytest.raises(
        PipelineDefinitionError, match=r"no table 'reading'.*did you mean 'readings'"
    ):
        drain(SqliteSource(db, "reading", key=["id"]))
    with pytest.raises(
        PipelineDefinitionError, match=r"key column 'idx'.*did you mean 'id'.*id, value, label"
    ):
        drain(SqliteSource(db, "readings", key=["idx"]))
    with pytest.raises(PipelineDefinitionError, match=r"columns column 'labels'"):
        drain(SqliteSource(db, "readings", key=["id"], columns=["labels"]))
    with pytest.raises(OptionError, match=r"source.path .*no SQLite database file"):
        SqliteSource(tmp_path / "missing.db", "readings", key=["id"])
    assert not (tmp_path / "missing.db").exists()  # read-only: nothing created
    with pytest.raises(PipelineDefinitionError, match="exactly one of"):
        SqliteSource(db, "readings", query="SELECT 1", key=["id"])
    with pytest.raises(PipelineDefinitionError, match="key must be a list"):
        SqliteSource(db, "readings", key="id")
    with pytest.raises(PipelineDefinitionError, match="one SELECT"):
        SqliteSource(db, query="DELETE FROM readings", key=["id"])
    with pytest.raises(PipelineDefinitionError):  # a second statement inside: refused by SQLite
        drain(SqliteSource(db, query="SELECT * FROM readings; DROP TABLE readings", key=["id"]))
    assert len(drain(SqliteSource(db, "readings", key=["id"]))) == 3
    with pytest.raises(ValueError, match="exactly one of"):
        SqliteSource.Config(path="in.db", key=["id"])


def test_sqlite_null_keys_are_refused_before_reading(tmp_path: Path) -> None:
    db = sqlite_db(
        tmp_path / "n.db",
        "CREATE TABLE readings (id INTEGER, value REAL, label TEXT)",
        [(1, 0.5, "a"), (None, 1.0, "b"), (3, 1.5, "c")],
    )
    with pytest.raises(PipelineDefinitionError, match=r"key column\(s\) id are NULL in some row"):
        drain(SqliteSource(db, "readings", key=["id"]))
    ok = SqliteSource(db, query="SELECT * FROM readings WHERE id IS NOT NULL", key=["id"])
    assert [r["id"] for r in drain(ok)] == [1, 3]


def test_sqlite_path_outside_the_project_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    readings_db(tmp_path, 3)
    config = SqliteSource.Config(path="../in.db", table="readings", key=["id"])
    with pytest.raises(ValueError, match="outside the project folder"):
        SqliteSource.from_config(config, root)
    allowed = SqliteSource.Config(
        path="../in.db", table="readings", key=["id"], allow_outside_project=True
    )
    assert len(drain(SqliteSource.from_config(allowed, root))) == 3


def test_sqlite_to_sqlite_run_with_checkpoints_every_id_once(tmp_path: Path) -> None:
    n = 3000
    db = sqlite_db(
        tmp_path / "in.db",
        "CREATE TABLE readings (id INTEGER PRIMARY KEY, value TEXT, label TEXT)",
        [(i, "bad" if i % 500 == 7 else str(i), f"r{i}") for i in range(n)],
    )

    def work(r: Reading) -> dict[str, Any]:
        if r.id % 100 == 13:
            raise ValueError(f"record {r.id} is bad")
        return {"id": r.id, "v": r.value + 1}

    source = SqliteSource(db, "readings", key=["id"], batch_size=256, model=Reading)
    report = (
        Pipeline[Any, Any]("sql_source_run")
        .add_stage(MapStage(work, name="work"))
        .run(
            source,
            SqliteSink(tmp_path / "out.db", "out", key=["id"]),
            dead_letters=tmp_path / "dl.db",
            checkpoint=True,
            checkpoint_every="500r",
            batch_size=200,
        )
    )
    with sqlite3.connect(tmp_path / "out.db") as conn:
        sink_ids = [r[0] for r in conn.execute("SELECT id FROM out")]
    dead = letters(tmp_path / "dl.db")
    dead_ids = [
        letter.record["key"][0] if letter.stage == "source" else letter.record.id for letter in dead
    ]
    assert sorted(sink_ids + dead_ids) == list(range(n))
    assert len(set(sink_ids)) == len(sink_ids)
    assert not set(sink_ids) & set(dead_ids)
    assert set(dead_ids) == {i for i in range(n) if i % 500 == 7 or i % 100 == 13}
    source_letters = [letter for letter in dead if letter.stage == "source"]
    assert len(source_letters) == 6
    assert source_letters[0].message.startswith("readings[7]: does not fit Reading")
    assert report.checkpoint is not None
    assert report.checkpoint.finished
    assert report.checkpoint.offset == [n - 1]


def test_sqlite_source_from_a_project_config_section(tmp_path: Path) -> None:
    from conveyor.project.run import run_project

    root = tmp_path / "proj"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "10_double.py").write_text(
        textwrap.dedent(
            """\
            from conveyor import MapStage

            stage = MapStage(lambda r: {"id": r["id"], "v": r["value"] * 2})
            """
        )
    )
    (root / "data").mkdir()
    readings_db(root / "data", 40)
    (root / "src" / "pipeline" / "config.yaml").write_text(
        textwrap.dedent(
            """\
            pipeline: {name: from_sqlite, batch_size: 16}
            source: {connector: sqlite, path: data/in.db, table: readings, key: [id], batch_size: 9}
            sink: {connector: sqlite, path: data/out.db, table: doubled, key: [id]}
            """
        )
    )
    try:
        done = run_project(root, handle_signals=False)
    finally:
        import sys

        for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
            del sys.modules[name]
    assert done.report is not None
    assert done.report.records_out == 40
    with sqlite3.connect(root / "data" / "out.db") as conn:
        assert conn.execute("SELECT count(*), sum(v) FROM doubled").fetchone() == (40, 820.0)
    (root / "src" / "pipeline" / "config.yaml").write_text(
        "source: {connector: sqlite, path: data/in.db, table: readings}\n"
    )
    from conveyor.project.project import load_project

    with pytest.raises(ConfigError, match=r"source\.key"):
        load_project(root)


# -- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture
def pg(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def pg_readings(pg: psycopg.Connection[Any], pg_table: str) -> str:
    pg.execute(
        f'CREATE TABLE "{pg_table}" (id bigint PRIMARY KEY, value double precision, label text)'
    )
    pg.execute(
        f"INSERT INTO \"{pg_table}\" SELECT i, i * 0.5, 'r' || i FROM generate_series(1, 50) i"
    )
    return pg_table


def test_pg_reads_every_row_in_key_order_with_a_server_cursor(
    pg_dsn: str, pg_readings: str
) -> None:
    source = PostgresSource(pg_dsn, pg_readings, key=["id"], batch_size=7)
    assert isinstance(source, AsyncIterable)
    assert isinstance(source, SeekableSource)
    assert drain(source) == [{"id": i, "value": i * 0.5, "label": f"r{i}"} for i in range(1, 51)]
    assert source.offset == [50]
    assert source._conn is None


def test_pg_reads_in_a_read_only_repeatable_read_transaction(pg_dsn: str, pg_readings: str) -> None:
    seen: dict[str, Any] = {}

    async def go() -> None:
        source = PostgresSource(pg_dsn, pg_readings, key=["id"], batch_size=5)
        rows = source.__aiter__()
        async for _ in rows:
            conn = source._conn
            for setting in ("transaction_isolation", "transaction_read_only"):
                async with conn.cursor() as cur:
                    await cur.execute(f"SHOW {setting}")
                    row = await cur.fetchone()
                    seen[setting] = row[0]
            async with conn.cursor() as cur:
                await cur.execute("SELECT name FROM pg_cursors")
                seen["cursors"] = [r[0] for r in await cur.fetchall()]
            break
        await rows.aclose()  # type: ignore[attr-defined]
        assert source._conn is None

    asyncio.run(go())
    assert seen == {
        "transaction_isolation": "repeatable read",
        "transaction_read_only": "on",
        "cursors": ["conveyor_source"],
    }


@pytest.mark.parametrize("k", [0, 1, 7, 8, 49, 50])
def test_pg_seek_round_trip_gives_exactly_the_rest(pg_dsn: str, pg_readings: str, k: int) -> None:
    first = PostgresSource(pg_dsn, pg_readings, key=["id"], batch_size=7)
    head = take(first, k)
    again = PostgresSource(pg_dsn, pg_readings, key=["id"], batch_size=7)
    again.seek(json.loads(json.dumps(first.offset)))
    assert [r["id"] for r in head + drain(again)] == list(range(1, 51))


def test_pg_composite_keys_of_every_type_and_schema_qualified_names(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_table: str
) -> None:
    pg.execute(
        f'CREATE TABLE public."{pg_table}" (day date, at timestamptz, amount numeric, '
        "u uuid, raw bytea, n int, PRIMARY KEY (day, at, amount, u, raw))"
    )
    rows = []
    for i in range(24):
        rows.append(
            (
                f"2024-01-0{1 + i % 3}",
                f"2024-01-01T00:00:0{i % 2}.12345{i % 10}+00",
                f"{i % 4}.25",
                str(uuid.UUID(int=i % 5)),
                bytes([i % 2, 255]),
                i,
            )
        )
    with pg.cursor() as cur:
        cur.executemany(f'INSERT INTO "{pg_table}" VALUES (%s, %s, %s, %s, %s, %s)', rows)
    key = ["day", "at", "amount", "u", "raw"]
    with pg.cursor() as cur:
        cur.execute(f'SELECT n FROM "{pg_table}" ORDER BY day, at, amount, u, raw')
        want = [r[0] for r in cur.fetchall()]
    name = f"public.{pg_table}"
    assert [r["n"] for r in drain(PostgresSource(pg_dsn, name, key=key, batch_size=4))] == want
    for k in (1, 5, 13, 23):
        src = PostgresSource(pg_dsn, name, key=key, batch_size=4)
        head = take(src, k)
        again = PostgresSource(pg_dsn, name, key=key, batch_size=4)
        again.seek(json.loads(json.dumps(src.offset)))
        assert [r["n"] for r in head + drain(again)] == want, k


def test_pg_query_mode_with_percent_signs_and_seek(pg_dsn: str, pg_readings: str) -> None:
    query = (
        f"SELECT id, value * 2 AS twice FROM \"{pg_readings}\" WHERE id % 3 = 0 AND label LIKE 'r%'"
    )
    source = PostgresSource(pg_dsn, query=query, key=["id"], batch_size=4)
    assert drain(source) == [{"id": i, "twice": i * 1.0} for i in range(3, 51, 3)]
    half = PostgresSource(pg_dsn, query=query, key=["id"], batch_size=4)
    head = take(half, 5)
    rest = PostgresSource(pg_dsn, query=query, key=["id"], batch_size=4)
    rest.seek(half.offset)
    assert [r["id"] for r in head + drain(rest)] == list(range(3, 51, 3))


def test_pg_query_mode_is_read_only(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_table: str
) -> None:
    pg.execute(f'CREATE TABLE "{pg_table}" (id int PRIMARY KEY)')
    pg.execute(f'INSERT INTO "{pg_table}" VALUES (1), (2)')
    writes = f'WITH gone AS (DELETE FROM "{pg_table}" RETURNING id) SELECT id FROM gone'
    with pytest.raises(PipelineDefinitionError, match="data-modifying"):  # as a subquery
        drain(PostgresSource(pg_dsn, query=writes, key=["id"]))
    pg.execute(f'CREATE SEQUENCE "{pg_table}_seq"')
    calls = f"SELECT nextval('\"{pg_table}_seq\"') AS id"
    with pytest.raises(PipelineDefinitionError, match="read-only transaction"):
        drain(PostgresSource(pg_dsn, query=calls, key=["id"]))
    assert pg.execute(f'SELECT count(*) FROM "{pg_table}"').fetchone() == (2,)
    pg.execute(f'DROP SEQUENCE "{pg_table}_seq"')


def test_pg_model_coerces_and_rejects(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_table: str
) -> None:
    pg.execute(f'CREATE TABLE "{pg_table}" (id text PRIMARY KEY, value text, label text)')
    pg.execute(
        f"INSERT INTO \"{pg_table}\" VALUES ('1', '0.5', 'a'), ('2', 'x', 'b'), ('3', '7', 'c')"
    )
    items = drain(PostgresSource(pg_dsn, pg_table, key=["id"], model=Reading))
    assert items[0] == Reading(id=1, value=0.5, label="a")
    assert items[2] == Reading(id=3, value=7.0, label="c")
    bad = items[1]
    assert isinstance(bad, Rejected)
    assert bad.record == {
        "table": pg_table,
        "key": ["2"],
        "row": {"id": "2", "value": "x", "label": "b"},
    }
    assert str(bad.error).startswith(f"{pg_table}[2]: does not fit Reading: field 'value'")


def test_pg_hostile_table_name_drops_nothing(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_readings: str
) -> None:
    x = f"x_{uuid.uuid4().hex[:8]}"
    hostile = f't"; DROP TABLE {x};--'
    pg.execute(f'CREATE TABLE "{x}" (id int)')
    try:
        with pytest.raises(PipelineDefinitionError) as caught:
            drain(PostgresSource(pg_dsn, hostile, key=["id"]))
        assert repr(hostile) in str(caught.value)
        assert repr(pg_readings) in str(caught.value)
        with pytest.raises(PipelineDefinitionError, match="is not a column"):
            drain(PostgresSource(pg_dsn, pg_readings, key=["id"], columns=[hostile]))
        # a table really named like that is read like any other
        pg.execute(
            f'CREATE TABLE "{hostile.replace(chr(34), chr(34) * 2)}" '
            f'("{hostile.replace(chr(34), chr(34) * 2)}" int PRIMARY KEY)'
        )
        pg.execute(f'INSERT INTO "{hostile.replace(chr(34), chr(34) * 2)}" VALUES (1), (2)')
        got = drain(PostgresSource(pg_dsn, hostile, key=[hostile], batch_size=1))
        assert got == [{hostile: 1}, {hostile: 2}]
        assert pg.execute("SELECT to_regclass(%s)", (f'"{x}"',)).fetchone() == (x,)
    finally:
        pg.execute(f'DROP TABLE IF EXISTS "{hostile.replace(chr(34), chr(34) * 2)}"')
        pg.execute(f'DROP TABLE IF EXISTS "{x}"')


def test_pg_clear_errors(pg_dsn: str, pg_readings: str, pg: psycopg.Connection[Any]) -> None:
    with pytest.raises(PipelineDefinitionError, match=rf"no table '{pg_readings}x'.*did you mean"):
        drain(PostgresSource(pg_dsn, pg_readings + "x", key=["id"]))
    with pytest.raises(
        PipelineDefinitionError,
        match=r"key column 'ID' is not a column; its columns: id, value, label",
    ):
        drain(PostgresSource(pg_dsn, pg_readings, key=["ID"]))
    with pytest.raises(PipelineDefinitionError, match="syntax error"):
        drain(PostgresSource(pg_dsn, query="SELECT FROM WHERE", key=["id"]))
    pg.execute(f'ALTER TABLE "{pg_readings}" ADD COLUMN maybe int')
    pg.execute(f'UPDATE "{pg_readings}" SET maybe = id WHERE id <> 7')
    with pytest.raises(PipelineDefinitionError, match=r"key column\(s\) maybe are NULL"):
        drain(PostgresSource(pg_dsn, pg_readings, key=["maybe"]))


def test_pg_unreachable_is_unavailable_after_retries() -> None:
    source = PostgresSource(
        "host=127.0.0.1 port=1 user=postgres dbname=test",
        "readings",
        key=["id"],
        connect_timeout=1,
        retry=RetryPolicy(attempts=3, backoff=0.01, jitter=0.0),
    )
    with pytest.raises(SourceUnavailableError, match=r"(?s)127.0.0.1:1/test .*after 3 attempt"):
        drain(source)


def test_pg_reconnects_after_the_server_drops_it_and_continues_after_the_last_key(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_readings: str
) -> None:
    async def go() -> list[int]:
        source = PostgresSource(
            pg_dsn,
            pg_readings,
            key=["id"],
            batch_size=4,
            retry=RetryPolicy(attempts=3, backoff=0.01),
        )
        got: list[int] = []
        async for row in source:
            got.append(row["id"])
            if len(got) in (10, 30):  # the server ends the session mid-batch
                pid = source._conn.info.backend_pid
                pg.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return got

    assert asyncio.run(go()) == list(range(1, 51))


def test_pg_config_and_identity(pg_dsn: str) -> None:
    config = PostgresSource.Config(
        dsn="postgresql://me:secret@db.example:6543/sales", table="public.orders", key=["id"]
    )
    source = PostgresSource.from_config(config, Path("."))
    assert source.identity == "postgres:db.example:6543/sales table public.orders key (id)"
    assert "secret" not in source.where
    with pytest.raises(ValueError, match="exactly one of"):
        PostgresSource.Config(dsn=pg_dsn, table="a", query="SELECT 1", key=["id"])


def test_pg_to_pg_run_with_checkpoints_every_id_once(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_table: str, tmp_path: Path
) -> None:
    n = 5000
    pg.execute(f'CREATE TABLE "{pg_table}" (id int PRIMARY KEY, value text, label text)')
    pg.execute(
        f"INSERT INTO \"{pg_table}\" SELECT i, CASE WHEN i %% 700 = 9 THEN 'bad' ELSE i::text END, "
        "'r' || i FROM generate_series(0, %s) i",
        (n - 1,),
    )
    out = pg_table + "_out"

    def work(r: Reading) -> dict[str, Any]:
        if r.id % 100 == 13:
            raise ValueError(f"record {r.id} is bad")
        return {"id": r.id, "v": r.value + 1}

    try:
        report = (
            Pipeline[Any, Any](f"pg_source_{pg_table}")
            .add_stage(MapStage(work, name="work"))
            .run(
                PostgresSource(pg_dsn, pg_table, key=["id"], batch_size=333, model=Reading),
                PostgresSink(pg_dsn, out, key=["id"]),
                dead_letters=tmp_path / "dl.db",
                checkpoint=True,
                checkpoint_every="1000r",
                batch_size=250,
            )
        )
        sink_ids = [r[0] for r in pg.execute(f'SELECT id FROM "{out}"')]
    finally:
        pg.execute(f'DROP TABLE IF EXISTS "{out}"')
        pg.execute(
            "DELETE FROM conveyor_checkpoints WHERE pipeline LIKE %s", (f"pg_source_{pg_table}%",)
        )
    dead = letters(tmp_path / "dl.db")
    dead_ids = [
        letter.record["key"][0] if letter.stage == "source" else letter.record.id for letter in dead
    ]
    assert sorted(sink_ids + dead_ids) == list(range(n))
    assert len(set(sink_ids)) == len(sink_ids)
    assert not set(sink_ids) & set(dead_ids)
    assert set(dead_ids) == {i for i in range(n) if i % 700 == 9 or i % 100 == 13}
    assert report.checkpoint is not None
    assert report.checkpoint.offset == [n - 1]


def test_pg_a_run_stopped_midway_closes_the_read_on_its_loop(
    pg_dsn: str, pg: psycopg.Connection[Any], pg_table: str, tmp_path: Path
) -> None:
    pg.execute(f'CREATE TABLE "{pg_table}" (id int PRIMARY KEY)')
    pg.execute(f'INSERT INTO "{pg_table}" SELECT generate_series(1, 100000)')
    source = PostgresSource(pg_dsn, pg_table, key=["id"], batch_size=500)

    def stop(r: dict[str, Any]) -> dict[str, Any]:
        if r["id"] == 2000:  # as a Ctrl-C would: the run drains and stops
            raise KeyboardInterrupt
        return r

    out: list[Any] = []
    with pytest.raises(KeyboardInterrupt):
        Pipeline[Any, Any]("stopped").add_stage(MapStage(stop, name="stop")).run(
            source, out.extend, dead_letters=tmp_path / "dl.db", batch_size=100
        )
    assert 0 < len(out) < 100000
    assert source._conn is None
    assert source._iteration is None
    assert source.offset is not None
    assert source.offset[0] < 100000
    idle = pg.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s AND pid <> pg_backend_pid()",
        (f"%{pg_table}%",),
    ).fetchone()
    assert idle == (0,)


def test_pg_close_from_another_thread_ends_a_suspended_read_on_its_loop(pg_dsn: str) -> None:
    async def go() -> PostgresSource:
        source = PostgresSource(
            pg_dsn, query="SELECT generate_series(1, 100000) AS id", key=["id"], batch_size=50
        )
        rows = source.__aiter__()
        assert await rows.__anext__() == {"id": 1}
        await asyncio.to_thread(source.close)  # as the runner does after a run
        assert rows.ag_frame is None  # type: ignore[attr-defined]  # closed, not just dropped
        return source

    source = asyncio.run(go())
    assert source._conn is None
    assert source.offset == [1]
