"""Checkpoints: where a run got to, so that a crashed or stopped run can resume.

The streaming runner numbers every element it reads from the source (its *position*: 0,
1, 2 …). A :class:`Checkpoint` says which positions have fully left the pipeline (through
the sink, a filter or a durable dead letter): every position below :attr:`Checkpoint.position`,
plus the ranges in :attr:`Checkpoint.done` above it (source batches that finished out of
order). A resumed run reads the source again from there (seeking when the source can,
re-reading and skipping when it cannot) and skips what is done, so each record ends up once
in the sink or the dead-letter queue.

A checkpoint is plain JSON with a SHA-256 checksum, stored one row per pipeline in a table
``conveyor_checkpoints`` (:class:`CheckpointTable`): in ``.conveyor/checkpoints.db``
(:class:`SqliteCheckpointStore`) by default, or in the sink's own database, in the same
transaction as the rows (the ``sqlite`` and ``postgres`` sinks). A damaged checkpoint, one
of another pipeline or of a changed stage list, or one of a newer format is refused with a
:class:`~conveyor.errors.CheckpointError`, never silently replaced by a start from zero.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from conveyor.core._faults import fault_point
from conveyor.core.kinds import flatten_stages, stage_kind
from conveyor.errors import CheckpointError, PipelineDefinitionError

if TYPE_CHECKING:
    pass

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "CheckpointInterval",
    "CheckpointStore",
    "CheckpointTable",
    "PipelineIdentity",
    "SeekableSource",
    "SqliteCheckpointStore",
    "pipeline_fingerprint",
    "source_identity",
]

CHECKPOINT_FORMAT = 3
"""The format version this Conveyor writes; a checkpoint of a newer one is refused (format
3 added the state of stateful stages: an older Conveyor must not resume without it)."""

Range = tuple[int, int]


@runtime_checkable
class SeekableSource(Protocol):
    """What a source implements so that a resume seeks instead of re-reading.

    ``offset`` is where the *next* record that iteration yields comes from (any JSON value:
    a line number, a byte offset, ``[file, row group]``, a key); ``seek(offset)`` is called
    before iteration starts and makes it begin at that record. A source without both is
    re-read from its start and the records before the checkpoint are skipped.
    """

    @property
    def offset(self) -> Any:
        """Where the next record comes from (JSON-serialisable)."""
        ...

    def seek(self, offset: Any) -> None:
        """Start iteration at ``offset`` (a value :attr:`offset` gave earlier)."""
        ...


_INTERVAL = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|r)?\s*$")


@dataclass(frozen=True, slots=True)
class CheckpointInterval:
    """How often a run checkpoints: every ``seconds`` or every ``records`` records
    written, whichever a run is given.

    >>> CheckpointInterval.parse(1.0), CheckpointInterval.parse("10000r")
    (CheckpointInterval(seconds=1.0, records=None), CheckpointInterval(seconds=None, records=10000))
    >>> str(CheckpointInterval.parse("2.5s"))
    '2.5s'
    """

    seconds: float | None = 1.0
    records: int | None = None

    @classmethod
    def parse(cls, value: float | str | CheckpointInterval) -> CheckpointInterval:
        """An interval from seconds (``1.0``, ``"1.0"``, ``"2s"``) or a record count
        (``"10000r"``); anything else is refused with the accepted forms."""
        if isinstance(value, CheckpointInterval):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return cls(seconds=float(value))
        if isinstance(value, str):
            match = _INTERVAL.match(value)
            if match:
                number, unit = match.groups()
                if unit == "r" and number.isdigit() and int(number) > 0:
                    return cls(seconds=None, records=int(number))
                if unit != "r" and float(number) > 0:
                    return cls(seconds=float(number))
        raise PipelineDefinitionError(
            "checkpoint_every must be seconds > 0 (e.g. 1.0 or '2s') or a record count "
            f"(e.g. '10000r'), got {value!r}"
        )

    def __str__(self) -> str:
        return f"{self.records}r" if self.records is not None else f"{self.seconds:g}s"


@dataclass(frozen=True, slots=True)
class PipelineIdentity:
    """Which pipeline a checkpoint belongs to: its name, a fingerprint of its stage list
    (names, kinds, classes and functions), and the identity of its source."""

    name: str
    fingerprint: str
    source: str


def _callable_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def _describe(stage: Any) -> list[Any]:
    kind = stage_kind(stage).value
    described: list[Any] = [stage.name, kind, _callable_name(type(stage))]
    fn = getattr(stage, "fn", None)
    if callable(fn):
        described.append(_callable_name(fn))
    state = getattr(stage, "state_identity", None)  # a stateful stage: what its state means
    if isinstance(state, list):
        described.append(state)
    branches = getattr(stage, "branches", None)
    if isinstance(branches, Mapping):
        described.append(
            {
                arm: [_describe(s) for s in flatten_stages([chain])]
                for arm, chain in branches.items()
            }
        )
    return described


def pipeline_fingerprint(stages: Sequence[Any], extra: Any = None) -> str:
    """A short hash of a stage list: names, kinds, classes and functions, in order (plus
    ``extra``, JSON, for what else changes results, such as a project's stage config).

    >>> from conveyor import MapStage
    >>> a = pipeline_fingerprint([MapStage(abs, name="a")])
    >>> a == pipeline_fingerprint([MapStage(abs, name="a")]), a == pipeline_fingerprint([])
    (True, False)
    """
    described = [_describe(stage) for stage in flatten_stages(list(stages))]
    text = json.dumps([described, extra], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_identity(source: object) -> str:
    """A source's identity: its ``identity`` attribute when it has one (a path, a table, a
    topic), else its type."""
    identity = getattr(source, "identity", None)
    if isinstance(identity, str) and identity:
        return identity
    return _callable_name(type(source))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a run got to; see the module docstring.

    Attributes:
        identity: the pipeline it belongs to.
        run_id: the run that wrote it.
        runs: every run of this chain (the first run and each resume), oldest first.
        position: every source position below it is done.
        offset: the source's own offset at :attr:`position` (``None``: the source cannot
            seek, a resume re-reads it and skips).
        done: ranges ``[first, last]`` of positions above :attr:`position` that are done too.
        read: positions read when it was written (how far the run had got).
        records: counts over the whole chain: ``done`` (records fully out), ``written``
            (records the sink committed).
        sink: what the sink recorded for its resume (a file's committed length, a shard list).
        source_state: what an acknowledging source keeps for a resume (the covered messages
            it had not acknowledged yet when the checkpoint was written).
        state: the state of each stateful stage (windows, keyed state) by stage name, as
            JSON text, consistent with :attr:`position` and :attr:`done`: it holds exactly
            the records those positions cover (ADR 0011).
        finished: the source was read to its end and every record is out: nothing to resume.
        written_at: when it was written (ISO 8601, UTC).
        format: the format version (:data:`CHECKPOINT_FORMAT`).
    """

    identity: PipelineIdentity
    run_id: str
    runs: tuple[str, ...] = ()
    position: int = 0
    offset: Any = None
    done: tuple[Range, ...] = ()
    read: int = 0
    records: Mapping[str, int] = field(default_factory=dict)
    sink: Any = None
    source_state: Any = None
    finished: bool = False
    written_at: str = ""
    format: int = CHECKPOINT_FORMAT
    state: Mapping[str, str] = field(default_factory=dict)

    def covers(self, first: int, last: int) -> bool:
        """Whether positions ``first..last`` are all done."""
        if last < self.position:
            return True
        return any(a <= first and last <= b for a, b in self.done)

    def covers_all(self, ranges: Iterable[Sequence[int]]) -> bool:
        """Whether every ``[first, last]`` of ``ranges`` is done (``False`` for none)."""
        seen = False
        for first, last in ranges:
            seen = True
            if not self.covers(first, last):
                return False
        return seen

    @property
    def skipped_positions(self) -> int:
        """How many positions a resume from here does not process again."""
        return self.position + sum(b - a + 1 for a, b in self.done)

    def stamped(self, **changes: Any) -> Checkpoint:
        """A copy with ``changes`` and the current time."""
        return replace(self, written_at=datetime.now(UTC).isoformat(), **changes)

    # -- plain data ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint as JSON-able data (without the checksum)."""
        return {
            "format": self.format,
            "pipeline": self.identity.name,
            "fingerprint": self.identity.fingerprint,
            "source": self.identity.source,
            "run_id": self.run_id,
            "runs": list(self.runs),
            "position": self.position,
            "offset": self.offset,
            "done": [list(r) for r in self.done],
            "read": self.read,
            "records": dict(self.records),
            "sink": self.sink,
            "source_state": self.source_state,
            "finished": self.finished,
            "written_at": self.written_at,
            "state": dict(self.state),
        }

    def to_json(self) -> str:
        """The stored text: the data and a SHA-256 checksum of it."""
        body = _canonical(self.to_dict())
        return json.dumps(
            {"checkpoint": json.loads(body), "sha256": hashlib.sha256(body.encode()).hexdigest()},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, store: str) -> Checkpoint:
        """Read a stored checkpoint; anything wrong with it is a :class:`CheckpointError`
        naming ``store`` and the cause."""

        def refuse(cause: str) -> CheckpointError:
            return CheckpointError(
                store,
                f"the checkpoint is {cause}; it was not used (the run did not start from "
                "zero on its own). Run with --fresh (resume=False in code) to "
                "start again from the beginning, or restore the store from a backup",
            )

        try:
            outer = json.loads(text)
            body, digest = outer["checkpoint"], outer["sha256"]
        except (ValueError, TypeError, KeyError):
            raise refuse("damaged (not a checkpoint's JSON: truncated or corrupted)") from None
        if not isinstance(body, dict) or not isinstance(digest, str):
            raise refuse("damaged (not a checkpoint's JSON: truncated or corrupted)")
        if hashlib.sha256(_canonical(body).encode()).hexdigest() != digest:
            raise refuse("damaged (its checksum does not match its content)")
        version = body.get("format")
        if not isinstance(version, int) or isinstance(version, bool):
            raise refuse("damaged (a field is missing or of the wrong type: format)")
        if version > CHECKPOINT_FORMAT:
            raise CheckpointError(
                store,
                f"the checkpoint has format version {version!r}, newer than this Conveyor's "
                f"({CHECKPOINT_FORMAT}); upgrade Conveyor to resume it, or run with --fresh",
            )
        try:
            return cls(
                identity=PipelineIdentity(
                    str(body["pipeline"]), str(body["fingerprint"]), str(body["source"])
                ),
                run_id=str(body["run_id"]),
                runs=tuple(str(r) for r in body["runs"]),
                position=_nonnegative(body["position"]),
                offset=body["offset"],
                done=tuple((_nonnegative(a), _nonnegative(b)) for a, b in body["done"]),
                read=_nonnegative(body["read"]),
                records={str(k): _nonnegative(v) for k, v in body["records"].items()},
                sink=body["sink"],
                # (format 2 added it: a format-1 checkpoint has none)
                source_state=body["source_state"] if version >= 2 else None,
                finished=bool(body["finished"]),
                written_at=str(body["written_at"]),
                format=version,
                # (format 3 added it: an earlier checkpoint has no stateful stage's state)
                state=_states(body["state"]) if version >= 3 else {},
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise refuse("damaged (a field is missing or of the wrong type)") from None

    def check_identity(self, identity: PipelineIdentity, store: str) -> None:
        """Refuse this checkpoint for a run of ``identity`` unless it is the same pipeline,
        stage list and source."""
        mine = self.identity
        if mine.name != identity.name:
            cause = f"of another pipeline ({mine.name!r}, not {identity.name!r})"
        elif mine.fingerprint != identity.fingerprint:
            cause = (
                f"of a different stage list (fingerprint {mine.fingerprint}, now "
                f"{identity.fingerprint}): stages were added, removed, renamed or changed, "
                "or the sink writes elsewhere"
            )
        elif mine.source != identity.source:
            cause = f"of another source ({mine.source!r}, now {identity.source!r})"
        else:
            return
        raise CheckpointError(
            store,
            f"the checkpoint of run {self.run_id} is {cause}; resuming it would mix two "
            "pipelines' records. Run with --fresh (resume=False in code) to start from the "
            "beginning",
        )


def _states(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise TypeError("state")
    return value


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _nonnegative(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


class CheckpointStore(ABC):
    """Where checkpoints are kept: one per pipeline name, replaced as the run goes on."""

    @property
    @abstractmethod
    def description(self) -> str:
        """The store's path or table, for messages."""

    @abstractmethod
    def load(self, pipeline: str) -> Checkpoint | None:
        """The checkpoint of ``pipeline``, or ``None``; a damaged one raises."""

    @abstractmethod
    def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` durably (replacing the pipeline's previous one)."""

    def close(self) -> None:  # noqa: B027 - an optional hook
        """Release the store's resources."""


Paramstyle = Literal["qmark", "format"]


class CheckpointTable:
    """The SQL of the ``conveyor_checkpoints`` table, for any DB-API cursor: the default
    SQLite store uses it, and so do the SQL sinks inside their own transaction.

    >>> CheckpointTable("format").upsert_sql.split(" VALUES ")[1][:8]
    '(%s, %s)'
    """

    NAME = "conveyor_checkpoints"
    create_sql = (
        f"CREATE TABLE IF NOT EXISTS {NAME} (pipeline TEXT PRIMARY KEY, payload TEXT NOT NULL)"
    )

    def __init__(self, paramstyle: Paramstyle = "qmark") -> None:
        mark = "?" if paramstyle == "qmark" else "%s"
        self.select_sql = f"SELECT payload FROM {self.NAME} WHERE pipeline = {mark}"
        self.upsert_sql = (
            f"INSERT INTO {self.NAME} (pipeline, payload) VALUES ({mark}, {mark}) "
            "ON CONFLICT (pipeline) DO UPDATE SET payload = excluded.payload"
        )

    def load(self, cursor: Any, pipeline: str, store: str) -> Checkpoint | None:
        """Read the checkpoint in row ``pipeline`` with ``cursor`` (``None``: none)."""
        cursor.execute(self.select_sql, (pipeline,))
        row = cursor.fetchone()
        if row is None:
            return None
        payload = row[0]
        if isinstance(payload, bytes | memoryview):
            payload = bytes(payload).decode("utf-8", "replace")
        if not isinstance(payload, str):
            raise CheckpointError(store, "the checkpoint is damaged (its payload is not text)")
        return Checkpoint.from_json(payload, store)

    def save(self, cursor: Any, checkpoint: Checkpoint, key: str | None = None) -> None:
        """Write ``checkpoint`` with ``cursor``, inside the caller's transaction, in the row
        ``key`` (default: the pipeline's name)."""
        row = checkpoint.identity.name if key is None else key
        cursor.execute(self.upsert_sql, (row, checkpoint.to_json()))
        fault_point("checkpoint_write")  # test hook: a crash after the write, before commit


class SqliteCheckpointStore(CheckpointStore):
    """The default store: a SQLite file (WAL, ``synchronous=FULL``), by default
    ``.conveyor/checkpoints.db`` in the state folder.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "cp.db")
    >>> store = SqliteCheckpointStore(path)
    >>> cp = Checkpoint(PipelineIdentity("p", "f", "s"), "run-1", position=10)
    >>> store.save(cp); store.load("p").position, store.load("q")
    (10, None)
    >>> store.pragmas()
    {'journal_mode': 'wal', 'synchronous': 2}
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        import sqlite3  # when a run keeps checkpoints, not when conveyor is imported

        self._sqlite = sqlite3
        self._path = Path(path)
        self._table = CheckpointTable("qmark")
        self._lock = threading.Lock()
        existed = self._path.exists()
        if existed and self._path.stat().st_size == 0:
            raise CheckpointError(
                str(self._path),
                "the file is empty (truncated); it was not used. Move it away or restore it, "
                "then run with --fresh to start from the beginning",
            )
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self._path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise CheckpointError(str(self._path), f"cannot be opened: {exc}") from exc
        try:
            if existed:  # a truncated or corrupted file is refused, not read as empty
                (verdict,) = self._conn.execute("PRAGMA integrity_check").fetchone()
                if verdict != "ok":
                    raise sqlite3.DatabaseError(f"integrity check: {verdict}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._conn.execute(self._table.create_sql)
        except sqlite3.Error as exc:
            self._conn.close()
            raise CheckpointError(
                str(self._path),
                f"is not a usable SQLite database ({exc}); move it away or "
                "restore it, then run with --fresh to start from the beginning",
            ) from exc

    @property
    def description(self) -> str:
        return str(self._path)

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def pragmas(self) -> dict[str, Any]:
        """The journal mode and synchronous level in force (asserted by the tests)."""
        with self._lock:
            (mode,) = self._conn.execute("PRAGMA journal_mode").fetchone()
            (sync,) = self._conn.execute("PRAGMA synchronous").fetchone()
        return {"journal_mode": mode, "synchronous": sync}

    def load(self, pipeline: str) -> Checkpoint | None:
        with self._lock:
            try:
                return self._table.load(self._conn.cursor(), pipeline, self.description)
            except self._sqlite.Error as exc:
                raise CheckpointError(
                    self.description, f"cannot be read ({exc}); the file is damaged"
                ) from exc

    def save(self, checkpoint: Checkpoint) -> None:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._table.save(self._conn.cursor(), checkpoint)
                    self._conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(self._sqlite.Error):
                        self._conn.execute("ROLLBACK")
                    raise
            except self._sqlite.Error as exc:
                raise CheckpointError(self.description, f"cannot be written: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"<SqliteCheckpointStore {self._path}>"
