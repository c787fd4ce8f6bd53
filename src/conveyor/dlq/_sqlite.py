"""Dead letters in a SQLite file: the embedded default store."""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from conveyor.dlq._codec import EncodedLetter
from conveyor.dlq._store import DeadLetterStore, LetterQuery

__all__ = ["SqliteDeadLetterStore"]

SCHEMA_VERSION: Final = 1
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
)

_SCHEMA: Final = """
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
    replayed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dead_letters_stage_run ON dead_letters (stage, run_id);
"""

_SELECT: Final = f"SELECT {', '.join(_COLUMNS)} FROM dead_letters"
_INSERT: Final = (
    f"INSERT OR IGNORE INTO dead_letters ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


class SqliteDeadLetterStore(DeadLetterStore):
    """Dead letters in one table of a SQLite file (WAL mode), the embedded default.

    One connection per store, shared by the threads that call it under the store's lock
    (``check_same_thread=False``); other stores and processes may use the same file, SQLite
    serialises their writes and waits up to ``timeout`` seconds for a lock. Each
    :meth:`write` is one transaction (``synchronous=FULL``: durable once it returns).

    Table ``dead_letters``: the letter's fields, ``record_json`` (JSON text for people),
    ``record_pickle`` (the exact pickle, a BLOB, NULL when the record cannot be pickled),
    ``replayed`` (0/1) and ``seq`` (insertion order), with an index on ``(stage, run_id)``.
    Text that is not valid Unicode (lone surrogates) is stored with ``\\uXXXX`` escapes.

    The parent folders and the database are created at once, so a bad location fails here.

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

    @property
    def description(self) -> str:
        """The database file's path."""
        return str(self._path)

    @property
    def path(self) -> Path:
        """The database file's path."""
        return self._path

    # -- storage hooks ----------------------------------------------------------------------

    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        with self._transaction() as conn:
            conn.executemany(_INSERT, [_params(row) for row in rows])

    def _select(self, query: LetterQuery) -> builtins.list[EncodedLetter]:
        where, params = _where(query)
        limit = -1 if query.limit is None else query.limit
        sql = f"{_SELECT}{where} ORDER BY seq LIMIT ?"
        return [_row(values) for values in self._conn.execute(sql, [*params, limit])]

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
        sql = "UPDATE dead_letters SET replayed = 1 WHERE id = ? AND replayed = 0"
        with self._transaction() as conn:
            return conn.executemany(sql, [(id,) for id in ids]).rowcount

    def _close(self) -> None:
        self._conn.close()

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


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    try:
        retry_while_busy(lambda: _prepare(conn), timeout)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise sqlite3.DatabaseError(
            f"schema version {version} is newer than this Conveyor's ({SCHEMA_VERSION}); "
            "upgrade Conveyor to read it"
        )
    conn.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")


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
    if not query.include_replayed:
        clauses.append("replayed = 0")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _text(value: str) -> str:
    # SQLite TEXT must be valid UTF-8: lone surrogates become \uXXXX escapes (in the JSON
    # columns that is a JSON escape for the very same character).
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _params(row: EncodedLetter) -> tuple[Any, ...]:
    return (
        _text(row.id),
        _text(row.stage),
        _text(row.run_id),
        row.attempts,
        _text(row.error_type),
        _text(row.message),
        _text(row.traceback),
        row.created_at,
        _text(row.source_offset_json),
        _text(row.record_json),
        row.record_pickle,
        int(row.replayed),
    )


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
    )
