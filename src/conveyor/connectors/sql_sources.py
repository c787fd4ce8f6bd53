"""SQL sources: rows of a SQLite or PostgreSQL table (or of a ``SELECT``) in key order,
resumable from the key of the last record a checkpoint covers.

Both sources read with a *keyset cursor* on ``key`` (one or more columns that together
identify a row): rows come in ``ORDER BY key`` and a read that starts again (a resume, a
reconnect) asks for the rows after the last key it yielded, with a row-value comparison::

    SELECT cols FROM t WHERE (k1, k2) > (?, ?) ORDER BY k1, k2 LIMIT n

so nothing is skipped by counting and nothing is read twice, however long ago the last run
stopped. ``offset`` (what a checkpoint keeps) is the key of the last row yielded, as a JSON
list (``None`` before the first); ``seek(offset)`` continues after it. An index on the key
columns (a primary key is one) makes every batch a short index range scan.

- :class:`SqliteSource` (``sqlite``) is a sync iterable (SQLite reads are local and short):
  each batch is one ``… LIMIT batch_size`` query on a read-only connection, its own read
  transaction, so a long run does not hold a WAL snapshot (nor block a writer's checkpoint)
  between batches.
- :class:`PostgresSource` (``postgres``) is an async iterable on psycopg 3's
  ``AsyncConnection`` (the event loop keeps running while rows travel): one server-side
  (named) cursor per connection, inside one ``READ ONLY`` ``REPEATABLE READ`` transaction,
  fetching ``batch_size`` rows at a time. One transaction per run rather than per batch:
  the run reads one consistent snapshot, and the server plans and sorts the query once
  (a per-batch ``LIMIT`` query re-plans every batch and, without an index on the key,
  sorts the whole table every batch). The cost is a long transaction, which holds back
  VACUUM on a busy database for as long as the run reads. If the connection drops (a
  restart, ``idle_in_transaction_session_timeout``), the source reconnects with back-off
  and continues after the last key it yielded, in a new snapshot; after ``attempts``
  failed tries in a row it raises :class:`~conveyor.errors.SourceUnavailableError`.

Rows are dicts (column → value), or instances of ``model`` (a Pydantic model, coercing:
``"3"`` becomes ``3``); a row that does not fit the model is yielded as a
:class:`~conveyor.core.source.Rejected` ``{"table", "key", "row"}`` whose error reads
``TABLE[KEY]: reason`` and becomes a dead letter of the source while the rest flows on.

Identifiers (table, columns, key) are quoted by each driver's rules (psycopg's
``sql.Identifier``, its ``%`` doubled for a query with parameters; SQLite double quotes,
inner ones doubled) and looked up with bound parameters before the read: a table or
column that does not exist is refused with the names that do. Values (the key of a
resume) are always bound parameters. ``query`` is SQL you write yourself (a single
``SELECT``, run read-only): it is wrapped as a subquery and the keyset applied outside it.
There is no ``where`` option (a filter as SQL text is what ``query`` is for).

A key column that is NULL in some row is refused before reading: the keyset cannot place
such a row and would silently skip it. The check is free for key columns declared NOT NULL
(and a SQLite ``INTEGER PRIMARY KEY``); otherwise, and for a ``query``, it costs one
``… WHERE k IS NULL LIMIT 1`` query per run.

Rows written while a run reads: one whose key is above the last key read is still read
(SQLite: by a later batch; PostgreSQL: only after a reconnect, as the run reads one
snapshot); one inserted or changed below it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import difflib
import hashlib
import re
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from conveyor.connectors._sql import (
    pg_name,
    pg_regclass,
    pg_split,
    safe_dsn,
    sqlite_quote,
)
from conveyor.core._imports import (
    OptionError,
    is_reference,
    record_model,
    record_validator,
    short,
    validation_reason,
)
from conveyor.core._paths import inside_project
from conveyor.core.options import RetryPolicy
from conveyor.core.source import Rejected, Source
from conveyor.errors import (
    CheckpointError,
    PipelineDefinitionError,
    SourceRecordError,
    SourceUnavailableError,
)

__all__ = ["SOURCE_RETRY", "PostgresSource", "SqliteSource"]

SOURCE_RETRY = RetryPolicy(attempts=8, backoff=0.2, multiplier=2.0, max_backoff=5.0)
"""The PostgreSQL source's default reconnects: about 20 s of back-off before a run fails."""

_SUBQUERY = "conveyor_query"
_CURSOR = "conveyor_source"
_SELECT = re.compile(
    r"^\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(select|with|values|table)\b", re.I | re.S
)


# -- options ------------------------------------------------------------------------------


class _SqlSourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str | None = Field(
        None, description="the table (or view) to read; exactly one of table and query"
    )
    query: str | None = Field(
        None,
        description="a SELECT to read instead of a table (wrapped as a subquery; the keyset "
        "is applied outside it); exactly one of table and query",
    )
    key: list[str] = Field(
        min_length=1,
        description="the column(s) identifying a row (a list of names, e.g. id): rows are "
        "read in this order and a resume continues after the last key read (unique, NOT NULL)",
    )
    columns: list[str] | None = Field(
        None, description="the columns to read (default: all of them)"
    )
    batch_size: int = Field(1000, ge=1, description="rows per fetch from the database")
    model: str | None = Field(
        None,
        description="a Pydantic model (or dataclass or TypedDict) of the project typing each "
        "row, as package.module:Class (e.g. pipeline.contracts.models:Reading); values are "
        "coerced ('3' becomes 3) and a row that does not fit becomes a dead letter",
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` (a table or view) and `query` (a SELECT)")
        return self

    @field_validator("table")
    @classmethod
    def _named(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("table must not be empty")
        return value

    @field_validator("query")
    @classmethod
    def _selects(cls, value: str | None) -> str | None:
        if value is not None:
            _check_query(value)
        return value

    @field_validator("model")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not is_reference(value):
            raise ValueError(
                f"{value!r} is not a class reference; write package.module:Class, e.g. "
                "pipeline.contracts.models:Reading"
            )
        return value


def _check_query(query: str) -> str:
    """``query`` without a trailing ``;``; a :class:`ValueError` unless it is one SELECT."""
    text = query.strip().rstrip(";").rstrip()
    if not _SELECT.match(text):
        raise ValueError("query must be one SELECT (or WITH … SELECT) statement")
    return text


# -- shared behaviour --------------------------------------------------------------------


def _offset_value(value: Any) -> Any:
    """A key value as JSON: numbers, text and booleans as they are; bytes as
    ``{"bytes": hex}``; dates, times, decimals and UUIDs as text (bound again as text,
    PostgreSQL casts it back to the column's type).

    >>> _offset_value(3), _offset_value(b"\\x01"), _offset_value(dt.date(2024, 1, 2))
    (3, {'bytes': '01'}, '2024-01-02')
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return f"{value.total_seconds()!r} seconds"
    return str(value)


def _bound_value(value: Any) -> Any:
    """The parameter for a key value of an offset (the inverse of :func:`_offset_value`)."""
    if isinstance(value, dict) and set(value) == {"bytes"}:
        return bytes.fromhex(str(value["bytes"]))
    return value


def _reason(name: str, error: ValidationError) -> str:
    """A model's refusal in one line, in the form the file sources use."""
    return f"does not fit {name}: {validation_reason(error)}"


def _did_you_mean(name: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    """What the checks before a read found: the selected columns (those yielded first,
    then any key column not among them) and where the key columns sit in a row."""

    select: list[str]
    names: list[str]  # the columns of a record
    key_at: list[int]
    check_nulls: bool  # a key column may hold NULL: look for such rows before reading


class _SqlSource(Source):
    """What the SQLite and PostgreSQL sources share; see the module docstring."""

    rejects = True

    def __init__(
        self,
        table: str | None = None,
        *,
        query: str | None = None,
        key: Sequence[str],
        columns: Sequence[str] | None = None,
        batch_size: int = 1000,
        model: Any = None,
        root: str | Path | None = None,
        name: str = "source",
    ) -> None:
        kind = type(self).__name__
        if (table is None) == (query is None):
            raise PipelineDefinitionError(
                f"{kind}: give exactly one of table= (a table or view) and query= (a SELECT)"
            )
        if table is not None and (not isinstance(table, str) or not table.strip()):
            raise PipelineDefinitionError(f"{kind}: table must be a name, got {table!r}")
        if isinstance(key, str) or not key or not all(isinstance(k, str) and k for k in key):
            raise PipelineDefinitionError(
                f"{kind}: key must be a list of column names, e.g. key=['id'] (the keyset "
                f"that orders the rows and lets a resume continue), got {key!r}"
            )
        if len(set(key)) != len(key):
            raise PipelineDefinitionError(f"{kind}: key names a column twice: {list(key)}")
        if columns is not None and (isinstance(columns, str) or len(set(columns)) != len(columns)):
            raise PipelineDefinitionError(
                f"{kind}: columns must be a list of distinct column names, got {columns!r}"
            )
        if batch_size < 1:
            raise PipelineDefinitionError(f"{kind}: batch_size must be >= 1, got {batch_size}")
        try:
            self.query = None if query is None else _check_query(query)
        except ValueError as exc:
            raise PipelineDefinitionError(f"{kind}: {exc}") from None
        self.model = record_model(model, None if root is None else Path(root), key="source.model")
        self._validate = record_validator(self.model)
        self._model_name = getattr(self.model, "__name__", "the model")
        self.table = table
        self.key = list(key)
        self.columns = None if columns is None else list(columns)
        self.batch_size = batch_size
        self.name = name
        self._after: list[Any] | None = None  # the key of the last row yielded
        self._plan: _Plan | None = None

    # -- the checkpoint's part ------------------------------------------------------------

    @property
    def offset(self) -> list[Any] | None:
        """The key (a JSON list, one value per key column) of the last row yielded;
        ``None`` before the first."""
        return self._after

    def seek(self, offset: Any) -> None:
        """Continue after the row whose key is ``offset`` (``None``: from the start)."""
        if offset is not None and (not isinstance(offset, list) or len(offset) != len(self.key)):
            raise CheckpointError(
                self.identity,
                f"the checkpoint's source offset {short(offset, 120)} is not a key of "
                f"{len(self.key)} value(s) (key {self.key}); run with --fresh (resume=False "
                "in code) to start from the beginning",
            )
        self._after = offset

    # -- what the drivers provide ---------------------------------------------------------

    @property
    def where(self) -> str:
        """The database and table (or query), for messages."""
        raise NotImplementedError

    @property
    def _label(self) -> str:
        """The table, or ``query``: the place named in a rejected row's letter."""
        return self.table if self.table is not None else "query"

    def _query_id(self) -> str:
        assert self.query is not None
        return "query sha256:" + hashlib.sha256(self.query.encode()).hexdigest()[:12]

    def _what(self) -> str:
        return f"table {self.table}" if self.table is not None else self._query_id()

    # -- planning and rows ----------------------------------------------------------------

    def _make_plan(self, available: Sequence[str], nullable: set[str] | None) -> _Plan:
        """Check ``key`` and ``columns`` against the table's ``available`` columns;
        ``nullable``: the key columns that may be NULL (``None``: unknown, check)."""
        where = self.where
        if len(set(available)) != len(available):
            twice = sorted({c for c in available if list(available).count(c) > 1})
            raise PipelineDefinitionError(
                f"{where}: the query returns column(s) {twice} more than once; give each "
                "column a distinct name (SELECT a.id AS a_id, …)"
            )
        known = set(available)
        for option, names in (("key", self.key), ("columns", self.columns or [])):
            for column in names:
                if column not in known:
                    raise PipelineDefinitionError(
                        f"{where}: {option} column {column!r} is not a column"
                        f"{_did_you_mean(column, available)}; its columns: "
                        f"{', '.join(available)}"
                    )
        names = list(self.columns) if self.columns is not None else list(available)
        select = names + [k for k in self.key if k not in names]
        key_at = [select.index(k) for k in self.key]
        check = nullable is None or any(k in nullable for k in self.key)
        return _Plan(select, names, key_at, check)

    def _null_keys_error(self) -> PipelineDefinitionError:
        keys = ", ".join(self.key)
        return PipelineDefinitionError(
            f"{self.where}: key column(s) {keys} are NULL in some row; a keyset read orders "
            "rows by the key and continues after the last one, so it cannot place a row "
            "without one (it would be skipped): use NOT NULL key columns, or a `query` that "
            f"leaves such rows out (… WHERE {' IS NOT NULL AND '.join(self.key)} IS NOT NULL) "
            "or gives them a key (COALESCE)"
        )

    def _item(self, plan: _Plan, row: Sequence[Any]) -> Any:
        """The record (or :class:`Rejected`) of ``row``; the offset moves past it first."""
        key = [row[i] for i in plan.key_at]
        if None in key:  # written since the check: refuse rather than skip it later
            raise self._null_keys_error()
        self._after = [_offset_value(v) for v in key]
        record = dict(zip(plan.names, row, strict=False))
        if self._validate is None:
            return record
        try:
            return self._validate(record)
        except ValidationError as exc:
            at = ", ".join(map(str, self._after))
            return Rejected(
                {"table": self._label, "key": self._after, "row": record},
                SourceRecordError(f"{self._label}[{at}]", _reason(self._model_name, exc)),
            )

    def _params(self) -> list[Any]:
        return [] if self._after is None else [_bound_value(v) for v in self._after]


# -- SQLite -------------------------------------------------------------------------------


class SqliteSource(_SqlSource):
    """Rows of a SQLite table (or ``SELECT``) in key order; see the module docstring.

    >>> import os, sqlite3, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "in.db")
    >>> with sqlite3.connect(path) as conn:
    ...     _ = conn.execute("CREATE TABLE readings (id INTEGER PRIMARY KEY, v REAL)")
    ...     rows = [(1, 0.5), (2, 1.5), (3, 2.5)]
    ...     _ = conn.executemany("INSERT INTO readings VALUES (?, ?)", rows)
    >>> source = SqliteSource(path, "readings", key=["id"], batch_size=2)
    >>> [next(iter(source))], source.offset
    ([{'id': 1, 'v': 0.5}], [1])
    >>> again = SqliteSource(path, "readings", key=["id"]); again.seek([1]); list(again)
    [{'id': 2, 'v': 1.5}, {'id': 3, 'v': 2.5}]
    """

    class Config(_SqlSourceConfig):
        """Options of ``source: {connector: sqlite, …}``."""

        path: str = Field(description="the SQLite database file (relative to the project)")
        allow_outside_project: bool = Field(
            False, description="allow a path outside the project folder"
        )
        timeout: float = Field(
            5.0, gt=0, description="seconds to wait for a writer's lock before failing"
        )

    def __init__(
        self,
        path: str | Path,
        table: str | None = None,
        *,
        query: str | None = None,
        key: Sequence[str],
        columns: Sequence[str] | None = None,
        batch_size: int = 1000,
        model: Any = None,
        timeout: float = 5.0,
        root: str | Path | None = None,
        name: str = "source",
    ) -> None:
        super().__init__(
            table,
            query=query,
            key=key,
            columns=columns,
            batch_size=batch_size,
            model=model,
            root=root,
            name=name,
        )
        self.path = Path(path)
        self.timeout = timeout
        self._shown = str(path)  # the path as given (relative to the project from config)
        self._inputs: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self.identity = f"sqlite:{self._shown} {self._what()} key ({', '.join(self.key)})"
        if not self.path.is_file():
            raise self._missing()

    @classmethod
    def from_config(cls, config: SqliteSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes (``path`` inside the project)."""
        path = inside_project(
            root, config.path, key="source.path", allow_outside=config.allow_outside_project
        )
        source = cls(
            path,
            config.table,
            query=config.query,
            key=config.key,
            columns=config.columns,
            batch_size=config.batch_size,
            model=config.model,
            timeout=config.timeout,
            root=root,
        )
        source._shown = config.path
        source.identity = f"sqlite:{config.path} {source._what()} key ({', '.join(source.key)})"
        if path.is_relative_to(root.resolve()):
            source._inputs = [path.relative_to(root.resolve()).as_posix()]
        return source

    @property
    def where(self) -> str:
        return f"sqlite {self._shown} {self._what()}"

    def inputs(self) -> list[str]:
        """The database file, relative to the project (when it is inside it)."""
        return list(self._inputs)

    def close(self) -> None:
        """Close the connection (an iteration left unfinished keeps it open)."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    # -- reading --------------------------------------------------------------------------

    def _missing(self) -> OptionError:
        return OptionError(
            "source.path",
            f"source.path {self._shown!r}: no SQLite database file at {self.path.absolute()}; "
            "correct source.path (the source reads an existing database, read-only)",
        )

    def _open(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise self._missing()
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise SourceUnavailableError(self.name, f"{self.where}: cannot open: {exc}") from exc

    def _prepare(self, conn: sqlite3.Connection) -> _Plan:
        """Check the table (or query), its columns and the key; see :class:`_Plan`."""
        if self.table is not None:
            found = conn.execute(
                "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name = ? COLLATE NOCASE",
                (self.table,),
            ).fetchone()
            if found is None:
                tables = [
                    row[0]
                    for row in conn.execute(
                        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                        "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
                    )
                ]
                listed = ", ".join(map(repr, tables)) if tables else "none"
                raise PipelineDefinitionError(
                    f"{self.where}: there is no table {self.table!r} in {self.path}"
                    f"{_did_you_mean(self.table, tables)}; its tables: {listed}"
                )
            info = conn.execute(
                'SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (found[0],)
            ).fetchall()
            pks = [row for row in info if row[3]]
            nullable = {
                row[0]
                for row in info
                if not row[2]
                and not (len(pks) == 1 and row[3] and str(row[1]).upper() == "INTEGER")
            }
            available = [row[0] for row in info]
            # SQLite names are case-insensitive: use the table's own spelling
            spelled = {name.lower(): name for name in available}
            self.key = [spelled.get(k.lower(), k) for k in self.key]
            if self.columns is not None:
                self.columns = [spelled.get(c.lower(), c) for c in self.columns]
            return self._make_plan(available, nullable)
        cursor = conn.execute(f"SELECT * FROM ({self.query}) AS {_SUBQUERY} LIMIT 0")
        return self._make_plan([d[0] for d in cursor.description], None)

    def _source_sql(self) -> str:
        if self.table is not None:
            return sqlite_quote(self.table)
        return f"({self.query}) AS {_SUBQUERY}"

    def read(self) -> Self:
        """The source itself (a sync iterable of its rows)."""
        return self

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._rows()
        except sqlite3.OperationalError as exc:
            text = str(exc).lower()
            if "locked" in text or "busy" in text or "unable to open" in text:
                raise SourceUnavailableError(self.name, f"{self.where}: {exc}") from exc
            raise PipelineDefinitionError(f"{self.where}: {exc}") from exc
        except sqlite3.Error as exc:
            raise PipelineDefinitionError(f"{self.where}: {exc}") from exc
        finally:
            self.close()

    def _rows(self) -> Iterator[Any]:
        conn = self._conn = self._open()
        plan = self._plan = self._prepare(conn)
        source = self._source_sql()
        keys = ", ".join(map(sqlite_quote, self.key))
        if plan.check_nulls:
            nulls = " OR ".join(f"{sqlite_quote(k)} IS NULL" for k in self.key)
            if conn.execute(f"SELECT 1 FROM {source} WHERE {nulls} LIMIT 1").fetchone():
                raise self._null_keys_error()
        select = ", ".join(map(sqlite_quote, plan.select))
        first = f"SELECT {select} FROM {source} ORDER BY {keys} LIMIT ?"
        marks = ", ".join("?" * len(self.key))
        after = f"SELECT {select} FROM {source} WHERE ({keys}) > ({marks}) ORDER BY {keys} LIMIT ?"
        while True:
            sql = first if self._after is None else after
            rows = conn.execute(sql, [*self._params(), self.batch_size]).fetchall()
            for row in rows:
                yield self._item(plan, row)
            if len(rows) < self.batch_size:
                return


# -- PostgreSQL ---------------------------------------------------------------------------


class PostgresSource(_SqlSource):
    """Rows of a PostgreSQL table (or ``SELECT``) in key order, with psycopg 3 (the
    ``postgres`` extra); an async iterable. ``table`` may be ``schema.table``. See the
    module docstring for the cursor, the transaction and the reconnects."""

    class Config(_SqlSourceConfig):
        """Options of ``source: {connector: postgres, …}``."""

        dsn: str = Field(
            description="libpq connection string or URL, e.g. ${PG_DSN} or "
            "postgresql://user@127.0.0.1:5432/db"
        )
        connect_timeout: float = Field(5.0, gt=0, description="seconds to wait for a connection")
        attempts: int = Field(
            SOURCE_RETRY.attempts,
            ge=1,
            description="tries to (re)connect, with back-off from 0.2 s doubling to 5 s, "
            "before the source is unavailable",
        )

    def __init__(
        self,
        dsn: str,
        table: str | None = None,
        *,
        query: str | None = None,
        key: Sequence[str],
        columns: Sequence[str] | None = None,
        batch_size: int = 1000,
        model: Any = None,
        connect_timeout: float = 5.0,
        retry: RetryPolicy = SOURCE_RETRY,
        root: str | Path | None = None,
        name: str = "source",
    ) -> None:
        super().__init__(
            table,
            query=query,
            key=key,
            columns=columns,
            batch_size=batch_size,
            model=model,
            root=root,
            name=name,
        )
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        self.retry = retry
        self._schema, self._bare = pg_split(table) if table is not None else (None, "")
        self._server = safe_dsn(dsn)
        self._conn: Any = None
        self._iteration: AsyncGenerator[Any, None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.identity = f"postgres:{self._server} {self._what()} key ({', '.join(self.key)})"

    @classmethod
    def from_config(cls, config: PostgresSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes."""
        return cls(
            config.dsn,
            config.table,
            query=config.query,
            key=config.key,
            columns=config.columns,
            batch_size=config.batch_size,
            model=config.model,
            connect_timeout=config.connect_timeout,
            retry=dataclasses.replace(SOURCE_RETRY, attempts=config.attempts),
            root=root,
        )

    @property
    def where(self) -> str:
        return f"postgres {self._server} {self._what()}"

    def close(self) -> None:
        """End a read left unfinished (a run stopped midway): its cursor, transaction and
        connection. The runner calls this in a worker thread while its event loop runs: the
        suspended iteration is closed on that loop (``aclose``); failing that, the
        connection is closed at the socket (the server rolls back)."""
        iteration, self._iteration = self._iteration, None
        loop = self._loop
        if iteration is not None and self._conn is not None and loop is not None:
            try:
                on_loop = asyncio.get_running_loop() is loop
            except RuntimeError:
                on_loop = False
            if loop.is_running() and not on_loop:
                with contextlib.suppress(Exception):
                    done = asyncio.run_coroutine_threadsafe(iteration.aclose(), loop)
                    done.result(timeout=max(5.0, self.connect_timeout))
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                conn.pgconn.finish()

    # -- reading --------------------------------------------------------------------------

    async def _connect(self) -> Any:
        import psycopg

        conn = await psycopg.AsyncConnection.connect(
            self.dsn, connect_timeout=max(1, round(self.connect_timeout))
        )
        try:
            await conn.set_read_only(True)
            await conn.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def _prepare(self, cursor: Any) -> _Plan:
        """Check the table (or query), its columns and the key; see :class:`_Plan`."""
        from psycopg import sql

        if self.table is not None:
            regclass = pg_regclass(self._schema, self._bare)
            await cursor.execute(
                "SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = to_regclass(%s) "
                "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (regclass,),
            )
            info = await cursor.fetchall()
            if not info:
                await cursor.execute(
                    "SELECT CASE WHEN table_schema = ANY (current_schemas(false)) THEN "
                    "table_name ELSE table_schema || '.' || table_name END FROM "
                    "information_schema.tables WHERE table_schema NOT IN ('pg_catalog', "
                    "'information_schema') ORDER BY 1 LIMIT 50"
                )
                tables = [row[0] for row in await cursor.fetchall()]
                listed = ", ".join(map(repr, tables)) if tables else "none"
                raise PipelineDefinitionError(
                    f"{self.where}: there is no table {self.table!r} (or no permission to "
                    f"see it){_did_you_mean(self.table, tables)}; tables: {listed}"
                )
            nullable = {name for name, notnull in info if not notnull}
            return self._make_plan([row[0] for row in info], nullable)
        await cursor.execute(
            sql.SQL("SELECT * FROM ({}) AS {} LIMIT 0").format(
                self._query_sql(), pg_name(_SUBQUERY)
            ),
            [],
        )
        return self._make_plan([d.name for d in cursor.description or []], None)

    def _query_sql(self) -> Any:
        from psycopg import sql

        assert self.query is not None
        return sql.SQL(self.query.replace("%", "%%"))

    def _source_sql(self) -> Any:
        from psycopg import sql

        if self.table is not None:
            parts = (self._schema, self._bare) if self._schema else (self._bare,)
            return pg_name(*parts)
        return sql.SQL("({}) AS {}").format(self._query_sql(), pg_name(_SUBQUERY))

    def _statement(self, plan: _Plan) -> Any:
        from psycopg import sql

        keys = sql.SQL(", ").join(map(pg_name, self.key))
        select = sql.SQL(", ").join(map(pg_name, plan.select))
        if self._after is None:
            return sql.SQL("SELECT {} FROM {} ORDER BY {}").format(select, self._source_sql(), keys)
        marks = sql.SQL(", ").join(sql.Placeholder() * len(self.key))
        return sql.SQL("SELECT {} FROM {} WHERE ({}) > ({}) ORDER BY {}").format(
            select, self._source_sql(), keys, marks, keys
        )

    async def _check_nulls(self, cursor: Any) -> None:
        from psycopg import sql

        nulls = sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(pg_name(k)) for k in self.key)
        await cursor.execute(
            sql.SQL("SELECT 1 FROM {} WHERE {} LIMIT 1").format(self._source_sql(), nulls), []
        )
        if await cursor.fetchone() is not None:
            raise self._null_keys_error()

    def read(self) -> Self:
        """The source itself (an async iterable of its rows)."""
        return self

    def __aiter__(self) -> AsyncIterator[Any]:
        # kept, so that close() can end it on its loop (an iteration dropped by its reader
        # would otherwise be closed by the garbage collector, in a task that the end of
        # asyncio.run may cancel halfway)
        self._iteration = self._rows()
        return self._iteration

    async def _rows(self) -> AsyncGenerator[Any, None]:
        import psycopg

        self._loop = asyncio.get_running_loop()
        failures = 0
        try:
            while True:
                try:
                    conn = self._conn = await self._connect()
                    # autocommit is off: the first statement opens the transaction (READ
                    # ONLY, REPEATABLE READ), the checks and the cursor share its snapshot
                    if self._plan is None:
                        async with conn.cursor() as cursor:
                            plan = await self._prepare(cursor)
                            if plan.check_nulls:
                                await self._check_nulls(cursor)
                        self._plan = plan
                    plan = self._plan
                    cursor = conn.cursor(name=_CURSOR)
                    try:
                        await cursor.execute(self._statement(plan), self._params())
                        while True:
                            rows = await cursor.fetchmany(self.batch_size)
                            failures = 0
                            if not rows:
                                break
                            for row in rows:
                                yield self._item(plan, row)
                    finally:
                        with contextlib.suppress(Exception):
                            await cursor.close()
                    await conn.rollback()  # (it wrote nothing: end the snapshot)
                    return
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    failures += 1
                    await self._drop()
                    if failures >= self.retry.attempts:
                        raise SourceUnavailableError(
                            self.name,
                            f"{self.where}: {exc}".rstrip()
                            + f" (after {failures} attempt(s); check that the server runs "
                            "and the dsn is right)",
                        ) from exc
                    await asyncio.sleep(self.retry.delay(failures))
                except psycopg.Error as exc:
                    raise PipelineDefinitionError(f"{self.where}: {exc}".rstrip()) from exc
        finally:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.close()
        except BaseException as exc:  # (cancelled while closing: close at the socket)
            with contextlib.suppress(Exception):
                conn.pgconn.finish()
            if not isinstance(exc, Exception):
                raise
