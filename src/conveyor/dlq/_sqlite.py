"""Dead letters in a SQLite file: the embedded default store."""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from conveyor.dlq._codec import EncodedLetter, encode_values
from conveyor.dlq._letter import DeadLetter
from conveyor.dlq._store import (
    DeadLetterStore,
    FileIdentity,
    LetterQuery,
    check_same_file,
    file_identity,
)

__all__ = ["SqliteDeadLetterStore"]

SCHEMA_VERSION: Final = 2
_BUSY_PAUSE: Final = 0.005

T = TypeVar("T")

_COLUMNS: Final = (
    "id",
    "stage",
    "run_id",
    "attempts",
    "error_type",
    "message",
    "traceback",
    "created_at",
    "source_offset",
    "record_json",
    "record_pickle",
    "replayed",
    "records",
    "output_json",
)

_TABLE: Final = """
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    stage         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    error_type    TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    traceback     TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    source_offset TEXT    NOT NULL,
    record_json   TEXT    NOT NULL,
    record_pickle BLOB,
    replayed      INTEGER NOT NULL DEFAULT 0,
    records       INTEGER NOT NULL DEFAULT 1,
    output_json   TEXT    NOT NULL DEFAULT 'null'
)
"""
_INDEX: Final = "CREATE INDEX IF NOT EXISTS dead_letters_stage_run ON dead_letters (stage, run_id)"
# Columns added after version 1, with their definitions: opening a version-1 file adds them
# (its letters then read back with records=1 and output=None).
_ADDED_COLUMNS: Final = (
    ("records", "INTEGER NOT NULL DEFAULT 1"),
    ("output_json", "TEXT NOT NULL DEFAULT 'null'"),
)

_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM dead_letters"
_PLACEHOLDERS: Final = f"({', '.join('?' for _ in _COLUMNS)})"
_INSERT: Final = (
    f"INSERT OR IGNORE INTO dead_letters ({', '.join(_COLUMNS)}) VALUES {_PLACEHOLDERS}"
)
# Bigger batches are inserted this many rows per statement (fewer statement steps than one
# per row; 14 columns x 64 rows stay below SQLite's oldest limit of 999 parameters).
_ROWS_PER_INSERT: Final = 64
_INSERT_MANY: Final = (
    f"INSERT OR IGNORE INTO dead_letters ({', '.join(_COLUMNS)}) "
    f"VALUES {', '.join(_PLACEHOLDERS for _ in range(_ROWS_PER_INSERT))}"
)


class SqliteDeadLetterStore(DeadLetterStore):
    """Dead letters in one table of a SQLite file (WAL mode), the embedded default.

    One connection per store, shared by the threads that call it under the store's lock
    (``check_same_thread=False``); other stores and processes may use the same file, SQLite
    serialises their writes and waits up to ``timeout`` seconds for a lock. Each
    :meth:`write` is one transaction (``synchronous=FULL``: durable once it returns).

    Table ``dead_letters``: the letter's fields, ``record_json`` and ``output_json`` (JSON
    text for people), ``record_pickle`` (the exact pickle, a BLOB, NULL when the record
    cannot be pickled), ``records`` (how many records the letter holds), ``replayed`` (0/1)
    and ``seq`` (insertion order), with an index on ``(stage, run_id)``. Text that is not
    valid Unicode (lone surrogates) is stored with ``\\uXXXX`` escapes.

    The schema version is SQLite's ``user_version``, now 2. A version-1 file (before
    ``records`` and ``output_json``) is upgraded in place when opened, in one transaction;
    its letters read back with ``records=1`` and ``output=None``. A file of a newer version
    is refused.

    The parent folders and the database are created at once, so a bad location fails here.
    The store remembers which file it opened: if that file is deleted or replaced (by
    another file at the same path) while the store is open, :meth:`write` and
    :meth:`mark_replayed` raise :class:`~conveyor.errors.DeadLetterStoreError` instead of
    writing into a file nobody will read again.

    >>> import tempfile, pathlib
    >>> from conveyor.dlq import DeadLetter
    >>> letter = DeadLetter.from_exception(
    ...     {"id": 3}, ValueError("bad"), stage="load", attempts=2, run_id="r1"
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "state" / "dlq.db"
    ...     with SqliteDeadLetterStore(path) as store:
    ...         store.write([letter])
    ...     with SqliteDeadLetterStore(path) as reopened:
    ...         for stored in reopened.list(run_id="r1"):
    ...             print(stored.record, stored.attempts, stored.error_type)
    {'id': 3} 2 builtins.ValueError
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        super().__init__()
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = _connect(self._path, timeout)
        except (OSError, sqlite3.Error) as exc:
            raise self._error("cannot open the database", exc) from exc
        try:
            self._identity: FileIdentity = file_identity(self._path)
        except OSError as exc:
            self._conn.close()
            raise self._error("cannot open the database", exc) from exc

    @property
    def description(self) -> str:
        """The database file's path."""
        return str(self._path)

    @property
    def path(self) -> Path:
        """The database file's path."""
        return self._path

    # -- storage hooks ----------------------------------------------------------------------

    def _write(self, letters: builtins.list[DeadLetter]) -> None:
        self._insert([_params(encode_values(letter)) for letter in letters])

    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        self._insert([_params(_values(row)) for row in rows])

    def _insert(self, params: builtins.list[tuple[Any, ...]]) -> None:
        """Insert the rows in one transaction, many rows per statement."""
        action = f"cannot write {len(params)} dead letter(s)"
        lost = "the letters of this batch were not stored"
        self._check_file(action, lost)
        per = _ROWS_PER_INSERT
        whole = len(params) - len(params) % per
        with self._transaction() as conn:
            for start in range(0, whole, per):
                conn.execute(_INSERT_MANY, [v for row in params[start : start + per] for v in row])
            if whole < len(params):
                conn.executemany(_INSERT, params[whole:])
        self._check_file(action, lost)  # deleted while writing: written to a lost file

    def _select(self, query: LetterQuery) -> builtins.list[EncodedLetter]:
        where, params = _where(query)
        limit = -1 if query.limit is None else query.limit
        if query.newest and query.limit is not None:
            inner = f"SELECT seq, {', '.join(_COLUMNS)} FROM dead_letters{where}"
            sql = (
                f"SELECT {', '.join(_COLUMNS)} FROM ({inner} ORDER BY seq DESC LIMIT ?) "
                "ORDER BY seq"
            )
        else:
            sql = f"{_SELECT}{where} ORDER BY seq LIMIT ?"
        return [_row(values) for values in self._conn.execute(sql, [*params, limit])]

    def _ids(self, query: LetterQuery) -> builtins.list[str]:
        where, params = _where(query)
        sql = f"SELECT id FROM dead_letters{where} ORDER BY seq"
        return [str(values[0]) for values in self._conn.execute(sql, params)]

    def _delete(self, ids: builtins.list[str]) -> int:
        action = f"cannot delete {len(ids)} dead letter(s)"
        lost = "the letters were not deleted"
        self._check_file(action, lost)
        with self._transaction() as conn:
            deleted = conn.executemany(
                "DELETE FROM dead_letters WHERE id = ?", [(id,) for id in ids]
            ).rowcount
        self._check_file(action, lost)
        return deleted

    def _find(self, id: str) -> EncodedLetter | None:
        values = self._conn.execute(f"{_SELECT} WHERE id = ?", [id]).fetchone()
        return None if values is None else _row(values)

    def _count(self, query: LetterQuery) -> int:
        where, params = _where(query)
        (count,) = self._conn.execute(
            f"SELECT COUNT(*) FROM dead_letters{where}", params
        ).fetchone()
        return int(count)

    def _mark_replayed(self, ids: builtins.list[str]) -> int:
        action = f"cannot mark {len(ids)} dead letter(s) replayed"
        lost = "the replay marks were not stored"
        self._check_file(action, lost)
        sql = "UPDATE dead_letters SET replayed = 1 WHERE id = ? AND replayed = 0"
        with self._transaction() as conn:
            marked = conn.executemany(sql, [(id,) for id in ids]).rowcount
        self._check_file(action, lost)
        return marked

    def _close(self) -> None:
        self._conn.close()

    def _check_file(self, action: str, lost: str) -> None:
        check_same_file(self.description, self._path, self._identity, action, lost)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            raise


def _before(created_at: str, before: str) -> bool:
    return datetime.fromisoformat(created_at) < datetime.fromisoformat(before)


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.create_function("conveyor_before", 2, _before, deterministic=True)
    try:
        retry_while_busy(lambda: _prepare(conn), timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    version = _schema_version(conn)  # a newer file is refused before anything changes
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if _schema_version(conn) < SCHEMA_VERSION:  # not done by another opener meanwhile
            _create_or_upgrade(conn)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _schema_version(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this Conveyor's ({SCHEMA_VERSION}); "
            "upgrade Conveyor to read it"
        )
    return int(version)


def _create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Create the table, or add the columns a version-1 table lacks (inside a transaction)."""
    conn.execute(_TABLE)
    present = {row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")}
    for name, definition in _ADDED_COLUMNS:
        if name not in present:
            conn.execute(f"ALTER TABLE dead_letters ADD COLUMN {name} {definition}")
    conn.execute(_INDEX)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def retry_while_busy(action: Callable[[], T], timeout: float) -> T:
    """Run ``action``; while it fails with ``SQLITE_BUSY``, retry for up to ``timeout`` s.

    The busy timeout covers ordinary lock waits, but SQLite fails one side of a lock
    upgrade at once instead of waiting (as when several connections switch a new file to
    WAL together), so opening a store retries on its own.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if (
                getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY
                or time.monotonic() >= deadline
            ):
                raise
        time.sleep(_BUSY_PAUSE)


def _where(query: LetterQuery) -> tuple[str, builtins.list[Any]]:
    clauses: builtins.list[str] = []
    params: builtins.list[Any] = []
    if query.stage is not None:
        clauses.append("stage = ?")
        params.append(query.stage)
    if query.run_id is not None:
        clauses.append("run_id = ?")
        params.append(query.run_id)
    if query.only_replayed:
        clauses.append("replayed = 1")
    elif not query.include_replayed:
        clauses.append("replayed = 0")
    if query.before is not None:
        # created_at is ISO 8601 in UTC (+00:00), so text order is time order; the
        # comparison runs in Python to be exact about fractions of seconds.
        clauses.append("conveyor_before(created_at, ?)")
        params.append(query.before.isoformat())
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _text(value: str) -> str:
    # SQLite TEXT must be valid UTF-8: lone surrogates become \uXXXX escapes (in the JSON
    # columns that is a JSON escape for the very same character).
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _values(row: EncodedLetter) -> tuple[Any, ...]:
    """``row``'s fields in order (those of :func:`encode_values`, and of ``_COLUMNS``)."""
    return (
        row.id,
        row.stage,
        row.run_id,
        row.attempts,
        row.error_type,
        row.message,
        row.traceback,
        row.created_at,
        row.source_offset_json,
        row.record_json,
        row.record_pickle,
        row.replayed,
        row.records,
        row.output_json,
    )


def _params(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """SQL parameters for a row's values (in ``_COLUMNS`` order; ``replayed`` binds as 0/1).

    ASCII text (the usual case; a constant-time check) is valid UTF-8 as it is.
    """
    if (
        values[0].isascii()
        and values[1].isascii()
        and values[2].isascii()
        and values[4].isascii()
        and values[5].isascii()
        and values[6].isascii()
        and values[7].isascii()
        and values[8].isascii()
        and values[9].isascii()
        and values[13].isascii()
    ):
        return values
    return tuple(_text(value) if isinstance(value, str) else value for value in values)


def _row(values: tuple[Any, ...]) -> EncodedLetter:
    (
        id,
        stage,
        run_id,
        attempts,
        error_type,
        message,
        traceback,
        created_at,
        offset,
        record_json,
        record_pickle,
        replayed,
        records,
        output_json,
    ) = values
    return EncodedLetter(
        id=id,
        stage=stage,
        run_id=run_id,
        attempts=attempts,
        error_type=error_type,
        message=message,
        traceback=traceback,
        created_at=created_at,
        source_offset_json=offset,
        record_json=record_json,
        record_pickle=record_pickle,
        replayed=bool(replayed),
        records=records,
        output_json=output_json,
    )
