"""SQL sinks: SQLite and PostgreSQL, exactly-once by writing the checkpoint in the same
transaction as the rows.

In a run with checkpoints, a sink keeps one transaction open from one checkpoint to the
next: each micro-batch is written inside a savepoint (so a batch that fails writes nothing
and the runner can bisect it down to its bad records), and :meth:`commit` writes the
checkpoint row into ``conveyor_checkpoints`` of the same database and commits. A crash
loses exactly the uncommitted rows, which a resume writes again. If the connection drops
(PostgreSQL restarting, SQLite locked by another writer), the write raises
:class:`~conveyor.errors.SinkUnavailableError`, the runner retries with back-off, and the
sink reconnects and writes the micro-batches of the lost transaction again before going
on. Without checkpoints every write is its own transaction.

A table that does not exist is created: columns from ``model`` (a Pydantic model or a
dataclass) or from the first micro-batch, typed by its values, ``key`` as the primary key.
An existing table is used as it is. With a ``key``, rows are upserted (``INSERT … ON
CONFLICT (key) DO UPDATE``); without one, inserted (PostgreSQL through ``COPY``).
Identifiers are quoted by the driver's rules and values are always bound parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import itertools
import json
import operator
import sqlite3
import uuid
from abc import abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.connectors._records import columns_of, rows_of
from conveyor.connectors._sql import pg_identifier, pg_regclass, pg_split
from conveyor.connectors._sql import safe_dsn as _safe_dsn
from conveyor.connectors._sql import sqlite_quote as _sqlite_quote
from conveyor.core._paths import inside_project
from conveyor.core.checkpoint import Checkpoint, CheckpointStore, CheckpointTable
from conveyor.core.options import RetryPolicy
from conveyor.core.result import RunStatus
from conveyor.core.sink import RunInfo, Sink
from conveyor.errors import CheckpointError, PipelineDefinitionError, SinkUnavailableError

__all__ = ["PostgresSink", "SqliteSink"]

SINK_RETRY = RetryPolicy(attempts=8, backoff=0.2, multiplier=2.0, max_backoff=5.0)
"""The SQL sinks' default retries: about 20 s of back-off before a run fails on an outage."""


class _SqlConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="the table to write (created when it does not exist)")
    key: list[str] = Field(
        default_factory=list,
        description="primary-key columns: rows are upserted by them (ON CONFLICT)",
    )

    @field_validator("table")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("table must not be empty")
        return value


class _SqlSink(Sink):
    """What the SQLite and PostgreSQL sinks share; see the module docstring."""

    exactly_once = True
    idempotent = True  # each write is all-or-nothing (a savepoint), or an upsert by key
    default_retry: ClassVar[RetryPolicy | None] = SINK_RETRY
    table_name = CheckpointTable.NAME

    def __init__(
        self, table: str, *, key: Sequence[str] = (), model: Any = None, name: str = "sink"
    ) -> None:
        if not table or not isinstance(table, str):
            raise PipelineDefinitionError(f"{type(self).__name__}: table must be a name")
        self.table = table
        self.key = list(key)
        self.model = model
        self.name = name
        self._conn: Any = None
        self._columns: list[str] | None = None
        self._checkpointing = False
        self._uncommitted: list[list[tuple[Any, ...]]] = []  # batches of the open transaction
        self._in_transaction = False
        self._broken = False
        self._careful = False  # a batch failed: savepoints from now on (no more redo)
        self._pending = 0  # writes in the open transaction
        self._lost = False  # a transaction with writes was lost and cannot be redone
        self._committing: Checkpoint | None = None  # the checkpoint of a commit under way
        self._checkpoints = CheckpointTable(self._paramstyle)

    _paramstyle: ClassVar[Any] = "qmark"
    _savepoints: ClassVar[bool] = True  # a failed batch rolls back alone (else: redo the rest)
    _redo: ClassVar[bool] = True  # keep the open transaction's batches to write them again
    _native: ClassVar[frozenset[type]] = frozenset()  # bound by the driver as they are

    @staticmethod
    def _convert(value: Any) -> Any:
        """A value the driver cannot bind as it is, in a form it can."""
        return value

    # -- the driver's part -----------------------------------------------------------------

    @property
    @abstractmethod
    def where(self) -> str:
        """The database and table, for messages."""

    @abstractmethod
    def _connect(self) -> Any:
        """A new connection (no autocommit: the sink runs its transactions)."""

    @abstractmethod
    def _existing_columns(self, cursor: Any) -> list[str] | None:
        """The table's columns, or ``None`` if it does not exist."""

    @abstractmethod
    def _create(self, cursor: Any, columns: list[str], sample: list[dict[str, Any]]) -> None:
        """Create the table with ``columns`` typed by the ``sample`` rows (or the model)."""

    @abstractmethod
    def _insert(self, cursor: Any, columns: list[str], values: list[tuple[Any, ...]]) -> None:
        """Insert (or upsert, with a key) ``values`` (tuples in column order)."""

    @abstractmethod
    def _unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the database cannot be reached (not a bad record)."""

    # -- lifecycle -------------------------------------------------------------------------

    def _connection(self) -> Any:
        if not self._lost and (self._conn is None or self._broken):
            self._reconnect()
            if self._committing is not None:
                self._settle_commit()
            if not self._lost:
                try:
                    for values in self._uncommitted:  # the transaction was lost: redo it
                        self._write_values(values)
                except Exception as exc:
                    if self._unavailable(exc):
                        self._lose_transaction()
                        raise SinkUnavailableError(self.name, f"{self.where}: {exc}") from exc
                    raise
        if self._lost:
            raise SinkUnavailableError(
                self.name,
                f"{self.where}: the transaction since the last checkpoint was lost; the run "
                "stops (its checkpoint is consistent: resume it with --resume)",
                retryable=False,
            )
        return self._conn

    def _reconnect(self) -> None:
        self._drop_connection()
        try:
            self._conn = self._connect()
        except Exception as exc:
            self._broken = True
            raise SinkUnavailableError(self.name, f"cannot connect to {self.where}: {exc}") from exc
        self._broken = False
        self._in_transaction = False

    def _settle_commit(self) -> None:
        """The connection broke during a commit: the server may have committed before the
        answer was lost. If the checkpoint row is there, the transaction landed (its rows
        must not be written again); otherwise it is lost like any other."""
        checkpoint, self._committing = self._committing, None
        assert checkpoint is not None
        try:
            cursor = self._conn.cursor()
            key = self._row_key(checkpoint.identity.name)
            landed = self._checkpoints.load(cursor, key, self._store_name)
            self._conn.commit()
        except Exception as exc:
            self._lose_transaction()
            self._committing = checkpoint  # decide again after the next reconnect
            raise SinkUnavailableError(self.name, f"{self.where}: {exc}") from exc
        if landed is not None and landed.to_json() == checkpoint.to_json():
            self._uncommitted, self._pending, self._lost = [], 0, False
        elif self._pending and not self._redo:
            self._lost = True

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    @property
    def identity(self) -> str:
        """The table: the checkpoint lives in the same database, so a copy of the database
        (a restored backup) carries its checkpoint along."""
        return f"table {self.table}"

    @property
    def description(self) -> str:
        """The kind of database, where it is and the table, e.g. ``sqlite out.db table
        orders`` (a PostgreSQL DSN without its password)."""
        return self.where

    def checkpoint_store(self) -> CheckpointStore:
        """The checkpoints live in ``conveyor_checkpoints`` of this sink's database."""
        return _SinkCheckpointStore(self)

    def open(self, run: RunInfo) -> None:
        """Connect (checkpointing runs keep one transaction per checkpoint interval)."""
        self._checkpointing = run.checkpointing
        self._connection()

    def write(self, records: list[Any]) -> None:
        """Write one micro-batch: all of it, or nothing."""
        rows = rows_of(records)
        self._connection()
        values = self._write_rows(rows)
        if self._checkpointing:
            self._pending += 1
            if self._redo:
                self._uncommitted.append(values)
        else:
            self._commit_now()

    def _write_rows(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        try:
            columns = self._columns if self._columns is not None else self._prepare(rows)
            values = _values(rows, columns, self._native, self._convert, self)
            self._write_values(values)
        except Exception as exc:
            if self._unavailable(exc):
                self._lose_transaction()
                raise SinkUnavailableError(self.name, f"{self.where}: {exc}") from exc
            raise
        return values

    def _write_values(self, values: list[tuple[Any, ...]]) -> None:
        """Insert ``values`` into the open transaction, all or nothing."""
        assert self._columns is not None
        cursor = self._conn.cursor()
        self._begin(cursor)
        if self._savepoints or self._careful:
            cursor.execute("SAVEPOINT conveyor_write")
            try:
                self._insert(cursor, self._columns, values)
            except BaseException:
                cursor.execute("ROLLBACK TO SAVEPOINT conveyor_write")
                raise
            cursor.execute("RELEASE SAVEPOINT conveyor_write")
            return
        try:
            self._insert(cursor, self._columns, values)
        except Exception as exc:
            if self._unavailable(exc):
                raise
            # The server aborted the whole transaction: write its earlier batches again,
            # then use savepoints for the rest of the run (the bisection of this batch, and
            # later bad records, cost two round trips a batch instead of a redo each).
            self._conn.rollback()
            self._in_transaction = False
            for earlier in self._uncommitted:
                self._write_values(earlier)
            self._careful = True  # bad records come in bunches: isolate them cheaply
            raise

    def _begin(self, cursor: Any) -> None:
        if not self._in_transaction:
            cursor.execute("BEGIN IMMEDIATE")  # SQLite: take the write lock now
            self._in_transaction = True

    def _prepare(self, rows: list[dict[str, Any]]) -> list[str]:
        """Find the table's columns, or create it (committed at once, before any rows)."""
        cursor = self._conn.cursor()
        existing = self._existing_columns(cursor)
        if existing is None:
            columns = columns_of(self.model, rows)
            missing = [k for k in self.key if k not in columns]
            if missing:
                raise PipelineDefinitionError(
                    f"{self.where}: key column(s) {missing} are not among the columns {columns}"
                )
            if not self._in_transaction:
                self._create(cursor, columns, rows)
                self._conn.commit()
            else:  # (after a checkpoint's row, in the same transaction)
                self._create(cursor, columns, rows)
            existing = columns
        self._columns = existing
        return existing

    def _lose_transaction(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.rollback()
        self._broken = True
        self._in_transaction = False
        if self._pending and not self._redo and self._committing is None:
            self._lost = True

    def _commit_now(self) -> None:
        try:
            self._conn.commit()
        except Exception as exc:
            if self._unavailable(exc):
                self._lose_transaction()
                raise SinkUnavailableError(self.name, f"{self.where}: {exc}") from exc
            raise
        self._in_transaction = False
        self._uncommitted = []
        self._pending = 0

    def commit(self, checkpoint: Checkpoint) -> None:
        """Write ``checkpoint`` into this database and commit it with the rows written since
        the last one, in one transaction."""
        self._connection()  # after an outage: reconnects and writes the lost batches again
        try:
            cursor = self._conn.cursor()
            self._begin(cursor)
            cursor.execute(CheckpointTable.create_sql)
            self._checkpoints.save(cursor, checkpoint, self._row_key(checkpoint.identity.name))
        except Exception as exc:
            if self._unavailable(exc):
                self._lose_transaction()
                raise SinkUnavailableError(self.name, f"{self.where}: {exc}") from exc
            raise
        self._committing = checkpoint  # if the answer to COMMIT is lost, look for it
        self._commit_now()
        self._committing = None

    def close(self, status: RunStatus) -> None:
        """Without checkpoints, everything written was committed by its write. With them,
        what was written after the last checkpoint is rolled back (a resume writes it
        again); a drained run's final checkpoint committed everything before this."""
        if self._conn is None:
            return
        with contextlib.suppress(Exception):
            self._conn.rollback()
        self._uncommitted = []
        self._drop_connection()

    # -- the checkpoint store's part --------------------------------------------------------

    def _load_checkpoint(self, pipeline: str) -> Checkpoint | None:
        conn = self._connection()
        try:
            cursor = conn.cursor()
            cursor.execute(CheckpointTable.create_sql)
            found = self._checkpoints.load(cursor, self._row_key(pipeline), self._store_name)
            conn.commit()
        except CheckpointError:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise CheckpointError(self._store_name, f"cannot be read: {exc}") from exc
        return found

    def _save_checkpoint(self, checkpoint: Checkpoint) -> None:
        conn = self._connection()
        try:
            cursor = conn.cursor()
            cursor.execute(CheckpointTable.create_sql)
            self._checkpoints.save(cursor, checkpoint, self._row_key(checkpoint.identity.name))
            conn.commit()
        except Exception as exc:
            with contextlib.suppress(Exception):
                conn.rollback()
            raise CheckpointError(self._store_name, f"cannot be written: {exc}") from exc

    def _row_key(self, pipeline: str) -> str:
        """The checkpoint row's key: the pipeline and the table (two pipelines of the same
        name writing to two tables of one database keep two checkpoints)."""
        return f"{pipeline} -> {self.table}"

    @property
    def _store_name(self) -> str:
        return f"{self.where.rsplit(' table ', 1)[0]} table {CheckpointTable.NAME}"


class _SinkCheckpointStore(CheckpointStore):
    """A SQL sink's checkpoints, in its own database."""

    def __init__(self, sink: _SqlSink) -> None:
        self._sink = sink

    @property
    def description(self) -> str:
        return self._sink._store_name

    def load(self, pipeline: str) -> Checkpoint | None:
        return self._sink._load_checkpoint(pipeline)

    def save(self, checkpoint: Checkpoint) -> None:
        self._sink._save_checkpoint(checkpoint)

    def close(self) -> None:
        """Close the sink's connection if the sink is not using it any more."""
        self._sink._drop_connection()


def _unknown_keys(rows: list[dict[str, Any]], columns: list[str], sink: _SqlSink) -> None:
    """Refuse the first row with a key the table has no column for."""
    known = set(columns)
    if known.issuperset(itertools.chain.from_iterable(rows)):
        return
    for row in rows:
        if not known.issuperset(row):
            unknown = sorted(set(row) - known)
            raise ValueError(
                f"{sink.where} has no column(s) {', '.join(map(repr, unknown))}; its columns: "
                f"{', '.join(columns)}"
            )


def _values(
    rows: list[dict[str, Any]],
    columns: list[str],
    native: frozenset[type],
    convert: Callable[[Any], Any],
    sink: _SqlSink,
) -> list[tuple[Any, ...]]:
    """The rows as tuples in column order (a missing key is NULL; a key without a column is
    refused), converted where the driver cannot bind a value as it is. The checks run at C
    speed, once per batch: a row with every column and as many keys has no other key."""
    getter = operator.itemgetter(*columns)
    values: list[tuple[Any, ...]]
    try:
        if len(columns) == 1:
            values = [(getter(row),) for row in rows]
        else:
            values = [getter(row) for row in rows]
        exact = set(map(len, rows)) == {len(columns)}
    except KeyError:
        values = [tuple(row.get(c) for c in columns) for row in rows]
        exact = False
    if not exact:
        _unknown_keys(rows, columns, sink)
    if set(map(type, itertools.chain.from_iterable(values))) <= native:
        return values
    return [tuple(map(convert, value)) for value in values]


def _sample_types(
    model: Any, columns: list[str], rows: list[dict[str, Any]]
) -> dict[str, type | None]:
    """The Python type of each column: the model's annotation, or the first non-null value."""
    types: dict[str, type | None] = dict.fromkeys(columns)
    fields = getattr(model, "model_fields", None)
    if isinstance(fields, Mapping):
        for name, info in fields.items():
            types[name] = _plain(info.annotation)
    elif model is not None and dataclasses.is_dataclass(model):
        for f in dataclasses.fields(model):
            types[f.name] = _plain(f.type) if isinstance(f.type, type) else None
    for column in columns:
        if types[column] is None:
            for row in rows:
                value = row.get(column)
                if value is not None:
                    types[column] = type(value)
                    break
    return types


def _plain(annotation: Any) -> type | None:
    """``int`` for ``int`` or ``int | None``; ``None`` when it is not one plain type."""
    if isinstance(annotation, type):
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) is not None and len(args) == 1 and isinstance(args[0], type):
        return args[0]
    return None


# -- SQLite -------------------------------------------------------------------------------


_SQLITE_TYPES: list[tuple[type, str]] = [
    (bool, "INTEGER"),
    (int, "INTEGER"),
    (float, "REAL"),
    (decimal.Decimal, "TEXT"),
    (bytes, "BLOB"),
]


def _sqlite_value(value: Any) -> Any:
    if value is None or isinstance(value, int | float | str | bytes):
        return value
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=str)
    raise TypeError(f"cannot store a {type(value).__qualname__} in SQLite: {value!r:.80}")


class SqliteSink(_SqlSink):
    """Rows into a SQLite table; exactly-once with checkpoints (see the module docstring).

    >>> import os, sqlite3, tempfile
    >>> from conveyor import Pipeline, MapStage
    >>> path = os.path.join(tempfile.mkdtemp(), "out.db")
    >>> report = Pipeline("p").add_stage(MapStage(lambda r: r, name="same")).run(
    ...     [{"id": 1, "v": 0.5}, {"id": 2, "v": 1.5}], SqliteSink(path, "readings", key=["id"]),
    ...     dead_letters="memory")
    >>> sqlite3.connect(path).execute("SELECT id, v FROM readings ORDER BY id").fetchall()
    [(1, 0.5), (2, 1.5)]
    """

    class Config(_SqlConfig):
        """Options of ``sink: {connector: sqlite, …}``."""

        path: str = Field(description="the SQLite database file (relative to the project)")
        allow_outside_project: bool = Field(
            False,
            description="allow a `path` outside the project folder (refused otherwise: `..`, "
            "absolute paths elsewhere and symlinks out)",
        )
        timeout: float = Field(
            5.0, gt=0, description="seconds to wait for another writer's lock before retrying"
        )

    def __init__(
        self,
        path: str | Path,
        table: str,
        *,
        key: Sequence[str] = (),
        model: Any = None,
        timeout: float = 5.0,
        name: str = "sink",
    ) -> None:
        super().__init__(table, key=key, model=model, name=name)
        self.path = Path(path)
        self.timeout = timeout
        self._statement: str | None = None

    # The write lock is taken when a transaction begins (BEGIN IMMEDIATE) and held to its
    # commit: another writer makes it wait there, before anything is written, so nothing
    # needs redoing; a transaction lost midway (an I/O error) stops the run instead.
    _redo = False
    _native = frozenset({type(None), int, float, str, bytes, bool})
    _convert = staticmethod(_sqlite_value)

    @classmethod
    def from_config(cls, config: SqliteSink.Config, root: Path) -> Self:
        """The sink a ``sink:`` section describes (``path`` relative to ``root``, kept
        inside it unless ``allow_outside_project``).

        >>> SqliteSink.from_config(SqliteSink.Config(path="out.db", table="t"), Path("/proj")).where
        'sqlite /proj/out.db table t'
        >>> SqliteSink.from_config(SqliteSink.Config(path="/tmp/x.db", table="t"), Path("/proj"))
        Traceback (most recent call last):
        ...
        conveyor.core._paths.OutsideProject: sink.path '/tmp/x.db' is outside the project \
folder /proj; use a path inside the project, or set `allow_outside_project: true` beside \
it to allow this path
        """
        path = inside_project(
            root, config.path, key="sink.path", allow_outside=config.allow_outside_project
        )
        return cls(path, config.table, key=config.key, timeout=config.timeout)

    @property
    def where(self) -> str:
        return f"sqlite {self.path} table {self.table}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return _Autocommitless(conn)  # type: ignore[return-value]

    def _existing_columns(self, cursor: Any) -> list[str] | None:
        rows = cursor.execute(f"PRAGMA table_info({_sqlite_quote(self.table)})").fetchall()
        return [row[1] for row in rows] or None

    def _create(self, cursor: Any, columns: list[str], sample: list[dict[str, Any]]) -> None:
        types = _sample_types(self.model, columns, sample)
        defs = []
        for column in columns:
            kind = next((t for base, t in _SQLITE_TYPES if _is(types[column], base)), "TEXT")
            defs.append(f"{_sqlite_quote(column)} {kind}")
        if self.key:
            defs.append(f"PRIMARY KEY ({', '.join(map(_sqlite_quote, self.key))})")
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {_sqlite_quote(self.table)} ({', '.join(defs)})"
        )

    def _insert(self, cursor: Any, columns: list[str], values: list[tuple[Any, ...]]) -> None:
        if self._statement is None:
            names = ", ".join(map(_sqlite_quote, columns))
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {_sqlite_quote(self.table)} ({names}) VALUES ({marks})"
            others = [c for c in columns if c not in self.key]
            if self.key:
                update = (
                    "DO UPDATE SET "
                    + ", ".join(f"{_sqlite_quote(c)} = excluded.{_sqlite_quote(c)}" for c in others)
                    if others
                    else "DO NOTHING"
                )
                sql += f" ON CONFLICT ({', '.join(map(_sqlite_quote, self.key))}) {update}"
            self._statement = sql
        cursor.executemany(self._statement, values)

    def _unavailable(self, exc: BaseException) -> bool:
        if not isinstance(exc, sqlite3.OperationalError):
            return False
        text = str(exc).lower()
        return "locked" in text or "busy" in text or "unable to open" in text or "disk i/o" in text


class _Autocommitless:
    """A sqlite3 connection in manual-transaction mode with ``commit``/``rollback`` that
    issue the statements (``isolation_level=None`` leaves them to us)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


def _is(kind: type | None, base: type) -> bool:
    return kind is not None and issubclass(kind, base)


# -- PostgreSQL ---------------------------------------------------------------------------


def _pg_value_of(value: Any) -> Any:
    if isinstance(value, dict | list):
        from psycopg.types.json import Jsonb

        return Jsonb(value)
    return value


class PostgresSink(_SqlSink):
    """Rows into a PostgreSQL table with psycopg 3 (the ``postgres`` extra); exactly-once
    with checkpoints (see the module docstring). ``table`` may be ``schema.table``."""

    _paramstyle = "format"

    class Config(_SqlConfig):
        """Options of ``sink: {connector: postgres, …}``."""

        dsn: str = Field(
            description="libpq connection string or URL, e.g. ${PG_DSN} or "
            "postgresql://user@127.0.0.1:5432/db"
        )
        connect_timeout: float = Field(5.0, gt=0, description="seconds to wait for a connection")

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        key: Sequence[str] = (),
        model: Any = None,
        connect_timeout: float = 5.0,
        name: str = "sink",
    ) -> None:
        super().__init__(table, key=key, model=model, name=name)
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self._schema, self._bare = pg_split(table)
        self._statement: Any = None
        self._where = f"postgres {_safe_dsn(dsn)} table {table}"

    _savepoints = False  # a savepoint costs two round trips per batch: redo on failure
    _native = frozenset(
        {
            type(None),
            int,
            float,
            str,
            bytes,
            bool,
            decimal.Decimal,
            uuid.UUID,
            dt.datetime,
            dt.date,
            dt.time,
            dt.timedelta,
        }
    )
    _convert = staticmethod(_pg_value_of)

    @classmethod
    def from_config(cls, config: PostgresSink.Config, root: Path) -> Self:
        """The sink a ``sink:`` section describes."""
        return cls(config.dsn, config.table, key=config.key, connect_timeout=config.connect_timeout)

    @property
    def where(self) -> str:
        return self._where

    def _ident(self) -> Any:
        return pg_identifier(self._schema, self._bare)

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, connect_timeout=max(1, round(self.connect_timeout)))

    def _begin(self, cursor: Any) -> None:
        self._in_transaction = True  # psycopg opens the transaction at the first statement

    def _existing_columns(self, cursor: Any) -> list[str] | None:
        cursor.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY attnum",
            (self._regclass(),),
        )
        names = [row[0] for row in cursor.fetchall()]
        return names or None

    def _regclass(self) -> str:
        return pg_regclass(self._schema, self._bare)

    def _create(self, cursor: Any, columns: list[str], sample: list[dict[str, Any]]) -> None:
        from psycopg import sql

        types = _sample_types(self.model, columns, sample)
        defs = [
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_pg_type(types[c]))) for c in columns
        ]
        if self.key:
            defs.append(
                sql.SQL("PRIMARY KEY ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, self.key))
                )
            )
        cursor.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(
                self._ident(), sql.SQL(", ").join(defs)
            )
        )

    def _insert(self, cursor: Any, columns: list[str], values: list[tuple[Any, ...]]) -> None:
        from psycopg import sql

        if self._statement is None:
            names = sql.SQL(", ").join(map(sql.Identifier, columns))
            if not self.key:
                self._statement = sql.SQL("COPY {} ({}) FROM STDIN").format(self._ident(), names)
            else:
                others = [c for c in columns if c not in self.key]
                update = (
                    sql.SQL("DO UPDATE SET ")
                    + sql.SQL(", ").join(
                        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                        for c in others
                    )
                    if others
                    else sql.SQL("DO NOTHING")
                )
                self._statement = sql.SQL(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}"
                ).format(
                    self._ident(),
                    names,
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                    sql.SQL(", ").join(map(sql.Identifier, self.key)),
                    update,
                )
        if self.key:
            cursor.executemany(self._statement, values)
            return
        with cursor.copy(self._statement) as pipe:
            for value in values:
                pipe.write_row(value)

    def _unavailable(self, exc: BaseException) -> bool:
        import psycopg

        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


_PG_TYPES: list[tuple[type, str]] = [
    (bool, "boolean"),
    (int, "bigint"),
    (float, "double precision"),
    (decimal.Decimal, "numeric"),
    (bytes, "bytea"),
    (dt.datetime, "timestamptz"),
    (dt.date, "date"),
    (uuid.UUID, "uuid"),
    (dict, "jsonb"),
    (list, "jsonb"),
]


def _pg_type(kind: type | None) -> str:
    return next((t for base, t in _PG_TYPES if _is(kind, base)), "text")
