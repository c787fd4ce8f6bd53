"""The dead-letter store interface and the in-memory store."""

from __future__ import annotations

import abc
import builtins
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self, TypeVar

from conveyor.dlq._codec import EncodedLetter, decode, encode, warn_unloadable
from conveyor.dlq._letter import DeadLetter
from conveyor.dlq._review import LetterGroup, group_rows
from conveyor.errors import DeadLetterStoreError

__all__ = [
    "DeadLetterStore",
    "FileIdentity",
    "LetterQuery",
    "MemoryDeadLetterStore",
    "check_same_file",
    "file_identity",
    "file_lost_error",
]

T = TypeVar("T")

#: Which file a path named when a store opened it: ``(st_dev, st_ino)``.
FileIdentity = tuple[int, int]


def file_identity(path: str | os.PathLike[str]) -> FileIdentity:
    """``(st_dev, st_ino)`` of the file at ``path``; raises :class:`OSError` if there is none."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def check_same_file(
    store: str, path: str | os.PathLike[str], identity: FileIdentity, action: str, lost: str
) -> None:
    """Raise :class:`DeadLetterStoreError` unless ``path`` is still the file ``identity`` names.

    A file store keeps its file open (SQLite) or reopens it by name (JSON lines); if the
    file was deleted, its folder removed, or another file put at its path during the run,
    writing on would store letters where nobody will find them, so the write fails
    instead. ``action`` says what failed (``"cannot write 3 dead letter(s)"``), ``lost``
    what that means (``"the letters of this batch were not stored"``).
    """
    try:
        now = file_identity(path)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise file_lost_error(store, path, action, lost, gone=True) from exc
    if now != identity:
        raise file_lost_error(store, path, action, lost, gone=False)


def file_lost_error(
    store: str, path: str | os.PathLike[str], action: str, lost: str, *, gone: bool
) -> DeadLetterStoreError:
    """The error for a store file deleted (``gone``) or replaced during the run."""
    state = "it is gone" if gone else "another file is at its path now"
    return DeadLetterStoreError(
        store,
        f"{action}: the file {os.fspath(path)} was deleted or replaced during the run "
        f"({state}); {lost}, so the run must stop",
    )


@dataclass(frozen=True, slots=True)
class LetterQuery:
    """Which letters a ``list`` or ``count`` asks for (``None`` means any).

    ``before`` (an aware datetime) keeps the letters created before it; ``only_replayed``
    the replayed ones (it implies ``include_replayed``); ``newest`` makes ``limit`` keep
    the *last* ``limit`` matching letters (still in write order) instead of the first.
    """

    stage: str | None = None
    run_id: str | None = None
    include_replayed: bool = False
    limit: int | None = None
    newest: bool = False
    before: datetime | None = None
    only_replayed: bool = False

    def matches(self, row: EncodedLetter) -> bool:
        """Whether ``row`` passes the filters (``limit`` aside)."""
        return (
            (self.stage is None or row.stage == self.stage)
            and (self.run_id is None or row.run_id == self.run_id)
            and (self.include_replayed or self.only_replayed or not row.replayed)
            and (not self.only_replayed or row.replayed)
            and (self.before is None or datetime.fromisoformat(row.created_at) < self.before)
        )

    def take(self, rows: Iterable[EncodedLetter]) -> builtins.list[EncodedLetter]:
        """The matching rows of ``rows``, in order, at most ``limit`` of them (the last
        ones when ``newest``)."""
        if self.newest and self.limit is not None:
            matching = [row for row in rows if self.matches(row)]
            return matching[len(matching) - self.limit :] if self.limit else []
        out: builtins.list[EncodedLetter] = []
        for row in rows:
            if self.limit is not None and len(out) >= self.limit:
                break
            if self.matches(row):
                out.append(row)
        return out


def _utc(when: datetime | None) -> datetime | None:
    if when is None:
        return None
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"before must be timezone-aware, got naive {when!r}")
    return when.astimezone(UTC)


class DeadLetterStore(abc.ABC):
    """Where dead letters are kept: written by the runner, listed and replayed by people.

    The API is synchronous and thread-safe (one lock per store); the asynchronous runner
    calls it through :func:`asyncio.to_thread`. Every method that touches storage raises
    :class:`~conveyor.errors.DeadLetterStoreError` naming the store, with the underlying
    exception as ``__cause__``, on any failure, so a run stops loudly rather than lose a
    record. A letter whose ``id`` is already stored is ignored by :meth:`write`, so a
    retried write never duplicates (the first copy wins).

    >>> store = MemoryDeadLetterStore()
    >>> try:
    ...     {}["email"]
    ... except KeyError as exc:
    ...     letter = DeadLetter.from_exception(
    ...         {"id": 7}, exc, stage="enrich", attempts=3, run_id="r1"
    ...     )
    >>> store.write([letter])
    >>> [(d.record, d.stage, d.error_type) for d in store.list(stage="enrich")]
    [({'id': 7}, 'enrich', 'builtins.KeyError')]
    >>> store.get(letter.id) == letter
    True
    >>> store.mark_replayed([letter.id]), store.count(), store.count(include_replayed=True)
    (1, 0, 1)

    Subclasses implement the storage hooks (``_append``, ``_select``, ``_find``, ``_count``,
    ``_mark_replayed``, ``_close``) on :class:`EncodedLetter` rows and the
    :attr:`description` property; the public methods add locking, encoding, decoding,
    argument checks and error wrapping. (``_write``, which encodes the letters of a
    :meth:`write` and calls ``_append``, may be overridden to skip the
    :class:`EncodedLetter` rows, as the SQLite store does.)
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._closed = False

    # -- public API -------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """What the store is, for messages: its path, or ``"memory"``."""

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters``, all or none of them.

        Raises :class:`~conveyor.errors.DeadLetterStoreError` (cause attached) if any part of
        the write fails; then none of the letters is stored.
        """
        if isinstance(letters, DeadLetter):
            raise TypeError("write() takes a sequence of dead letters; use write([letter])")
        batch = builtins.list(letters)
        if not batch:
            return
        self._call(f"cannot write {len(batch)} dead letter(s)", lambda: self._write(batch))

    def list(
        self,
        *,
        stage: str | None = None,
        run_id: str | None = None,
        include_replayed: bool = False,
        limit: int | None = None,
        newest: bool = False,
    ) -> builtins.list[DeadLetter]:
        """Stored letters in the order they were written, filtered by stage and run.

        Replayed letters are left out unless ``include_replayed``; ``limit`` caps the count:
        the first ``limit`` letters, or the last (the newest) with ``newest``. Letters
        whose exact records cannot be loaded here are read from their JSON, with one
        warning for the whole list on the ``conveyor.dlq`` logger.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0 or None, got {limit}")
        query = LetterQuery(stage, run_id, include_replayed, limit, newest=newest)

        def read() -> builtins.list[DeadLetter]:
            failures: builtins.list[str] = []
            letters = [decode(row, failures) for row in self._select(query)]
            warn_unloadable(failures, len(letters))
            return letters

        return self._call("cannot list dead letters", read)

    def groups(
        self,
        *,
        stage: str | None = None,
        run_id: str | None = None,
        include_replayed: bool = False,
        before: datetime | None = None,
        only_replayed: bool = False,
    ) -> builtins.list[LetterGroup]:
        """The stored letters folded into failures: one :class:`LetterGroup` for the
        letters of the same record, stage and error type (see
        :func:`~conveyor.dlq._review.record_digest`), ordered by their newest letter.

        Filters as for :meth:`list` (``before``: created before this aware datetime;
        ``only_replayed``: replayed letters only). Reads the stored JSON, never a pickle.
        """
        query = LetterQuery(
            stage,
            run_id,
            include_replayed,
            before=_utc(before),
            only_replayed=only_replayed,
        )
        return self._call("cannot list dead letters", lambda: group_rows(self._select(query)))

    def latest_run(self, *, stage: str | None = None, include_replayed: bool = False) -> str | None:
        """The run id of the newest letter (of ``stage``; replayed ones only with
        ``include_replayed``), or ``None`` when there is none."""
        query = LetterQuery(stage, None, include_replayed, 1, newest=True)
        rows = self._call("cannot list dead letters", lambda: self._select(query))
        return rows[-1].run_id if rows else None

    def find_ids(self, fragment: str) -> builtins.list[str]:
        """The ids (of every letter, replayed or not) that start or end with ``fragment``
        (as ``dlq list`` shows their last 12 characters); no letter is decoded."""
        if not fragment:
            return []
        ids = self._call(
            "cannot list dead letters", lambda: self._ids(LetterQuery(include_replayed=True))
        )
        return [i for i in ids if i.startswith(fragment) or i.endswith(fragment)]

    def purge(
        self,
        *,
        replayed: bool = False,
        before: datetime | None = None,
        stage: str | None = None,
        run_id: str | None = None,
        dry_run: bool = False,
    ) -> builtins.list[LetterGroup]:
        """Delete the letters that every given filter selects; returns them as groups.

        ``replayed``: only replayed letters. ``before``: letters created before this aware
        datetime. ``stage`` / ``run_id``: that stage's / run's letters. The rule: a letter
        that is not replayed is deleted only when a filter other than ``replayed`` names it
        (``before``, ``stage`` or ``run_id``); with no filter at all nothing is deleted and
        :class:`ValueError` is raised. With ``dry_run`` nothing is deleted: the groups say
        what would be.

        >>> store = MemoryDeadLetterStore()
        >>> a = DeadLetter.from_exception(1, ValueError("x"), stage="s", attempts=1, run_id="r")
        >>> b = DeadLetter.from_exception(2, ValueError("x"), stage="s", attempts=1, run_id="r")
        >>> store.write([a, b]); store.mark_replayed([a.id])
        1
        >>> [g.ids == (a.id,) for g in store.purge(replayed=True)]
        [True]
        >>> store.count(include_replayed=True)
        1
        """
        if not replayed and before is None and stage is None and run_id is None:
            raise ValueError(
                "purge() without a filter would delete every letter, the unreplayed ones too: "
                "pass replayed=True, before=, stage= or run_id="
            )
        query = LetterQuery(
            stage,
            run_id,
            include_replayed=True,
            before=_utc(before),
            only_replayed=replayed,
        )

        def purge() -> builtins.list[LetterGroup]:
            found = group_rows(self._select(query))
            ids = [i for group in found for i in group.ids]
            if ids and not dry_run:
                self._delete(ids)
            return found

        return self._call("cannot purge dead letters", purge)

    def get(self, id: str) -> DeadLetter:
        """The letter with this ``id``, replayed or not.

        Raises :class:`KeyError` (a :class:`LookupError`) when no such letter is stored.
        """
        row = self._call(f"cannot read dead letter {id!r}", lambda: self._find(id))
        if row is None:
            raise KeyError(
                f"no dead letter with id {id!r} in {self.description}; list() shows the stored ids"
            )

        def read() -> DeadLetter:
            assert row is not None
            failures: builtins.list[str] = []
            letter = decode(row, failures)
            warn_unloadable(failures, 1)
            return letter

        return self._call(f"cannot read dead letter {id!r}", read)

    def get_many(self, ids: Iterable[str]) -> builtins.list[DeadLetter]:
        """The letters with these ids (replayed or not), in the order of ``ids``; unknown
        ids are left out. One warning for the letters whose exact records cannot be loaded.
        """
        if isinstance(ids, str):
            raise TypeError("get_many() takes an iterable of ids; use get_many([id])")
        wanted = builtins.list(dict.fromkeys(ids))

        def read() -> builtins.list[DeadLetter]:
            found = {row.id: row for row in self._find_many(wanted)}
            failures: builtins.list[str] = []
            letters = [decode(found[i], failures) for i in wanted if i in found]
            warn_unloadable(failures, len(letters))
            return letters

        return self._call("cannot read dead letters", read) if wanted else []

    def count(
        self,
        *,
        stage: str | None = None,
        run_id: str | None = None,
        include_replayed: bool = False,
    ) -> int:
        """How many letters :meth:`list` would return with the same filters and no limit."""
        query = LetterQuery(stage, run_id, include_replayed)
        return self._call("cannot count dead letters", lambda: self._count(query))

    def mark_replayed(self, ids: Iterable[str]) -> int:
        """Mark the letters with these ids as replayed; returns how many were newly marked.

        Unknown ids and letters already marked are skipped (and not counted).
        """
        if isinstance(ids, str):
            raise TypeError("mark_replayed() takes an iterable of ids; use mark_replayed([id])")
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return 0
        return self._call(
            f"cannot mark {len(wanted)} dead letter(s) replayed",
            lambda: self._mark_replayed(wanted),
        )

    def supersede(self, stages: Iterable[str], *, runs: Iterable[str]) -> int:
        """Mark replayed the not-yet-replayed letters of ``stages`` made by ``runs``: a later
        run processed the same records through those stages again, so its own letters
        replace theirs. Returns how many were marked.

        >>> store = MemoryDeadLetterStore()
        >>> old = DeadLetter.from_exception(1, ValueError("x"), stage="s", attempts=1, run_id="r1")
        >>> new = DeadLetter.from_exception(1, ValueError("x"), stage="s", attempts=1, run_id="r2")
        >>> store.write([old, new]); store.supersede(["s"], runs=["r1"])
        1
        >>> [letter.run_id for letter in store.list()]
        ['r2']
        """
        names, earlier = set(stages), set(runs)
        if not names or not earlier:
            return 0

        def older() -> builtins.list[str]:
            rows = self._select(LetterQuery())
            return [r.id for r in rows if r.stage in names and r.run_id in earlier]

        ids = self._call("cannot list dead letters", older)
        return self.mark_replayed(ids) if ids else 0

    def close(self) -> None:
        """Release the store's resources; closing twice is harmless. Later calls raise."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._call_closing()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"

    # -- storage hooks ----------------------------------------------------------------------

    def _write(self, letters: builtins.list[DeadLetter]) -> None:
        """Persist ``letters`` atomically (first copy of an id wins); by default, encode
        each one and call :meth:`_append`. A store may override it to encode its own way."""
        self._append([encode(letter) for letter in letters])

    @abc.abstractmethod
    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        """Persist ``rows`` atomically, skipping ids already stored (first copy wins)."""

    @abc.abstractmethod
    def _select(self, query: LetterQuery) -> builtins.list[EncodedLetter]:
        """Rows matching ``query`` in insertion order, at most ``query.limit``."""

    @abc.abstractmethod
    def _find(self, id: str) -> EncodedLetter | None:
        """The row with this id, or ``None``."""

    @abc.abstractmethod
    def _count(self, query: LetterQuery) -> int:
        """How many rows match ``query`` (its limit is ``None``)."""

    @abc.abstractmethod
    def _mark_replayed(self, ids: builtins.list[str]) -> int:
        """Mark these (distinct) ids replayed; return how many changed."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release resources (called once)."""

    def _find_many(self, ids: builtins.list[str]) -> builtins.list[EncodedLetter]:
        """The rows with these (distinct) ids, in any order; by default one ``_find`` each."""
        return [row for row in map(self._find, ids) if row is not None]

    def _ids(self, query: LetterQuery) -> builtins.list[str]:
        """The ids of the rows matching ``query``; a store may read only the ids."""
        return [row.id for row in self._select(query)]

    def _delete(self, ids: builtins.list[str]) -> int:
        """Delete the letters with these (distinct) ids, atomically; return how many went.

        Not abstract, so that a store written before purging existed still works; it
        cannot purge."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete letters")

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, action: str, operation: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise DeadLetterStoreError(self.description, f"{action}: the store is closed")
            try:
                return operation()
            except DeadLetterStoreError:
                raise
            except Exception as exc:
                raise self._error(action, exc) from exc

    def _call_closing(self) -> None:
        try:
            self._close()
        except Exception as exc:
            raise self._error("cannot close", exc) from exc

    def _error(self, action: str, exc: BaseException) -> DeadLetterStoreError:
        return DeadLetterStoreError(self.description, f"{action}: {type(exc).__name__}: {exc}")


class MemoryDeadLetterStore(DeadLetterStore):
    """Letters kept in this process, for tests and the collection mode's default.

    Letters go through the same encoding as the file stores, so a record is copied when
    written (later changes to the original object do not show) and an unpicklable record
    falls back to its JSON rendering exactly as it would on disk.

    >>> store = MemoryDeadLetterStore()
    >>> record = {"id": 1, "tags": ["a"]}
    >>> letter = DeadLetter.from_exception(
    ...     record, ValueError("bad"), stage="s", attempts=1, run_id="r"
    ... )
    >>> store.write([letter]); record["tags"].append("b")
    >>> store.list()[0].record
    {'id': 1, 'tags': ['a']}
    >>> store
    MemoryDeadLetterStore('memory')
    """

    def __init__(self) -> None:
        super().__init__()
        self._rows: dict[str, EncodedLetter] = {}

    @property
    def description(self) -> str:
        """Always ``"memory"``."""
        return "memory"

    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        for row in rows:
            self._rows.setdefault(row.id, row)

    def _select(self, query: LetterQuery) -> builtins.list[EncodedLetter]:
        return query.take(self._rows.values())

    def _find(self, id: str) -> EncodedLetter | None:
        return self._rows.get(id)

    def _count(self, query: LetterQuery) -> int:
        return sum(1 for row in self._rows.values() if query.matches(row))

    def _mark_replayed(self, ids: builtins.list[str]) -> int:
        marked = 0
        for id in ids:
            row = self._rows.get(id)
            if row is not None and not row.replayed:
                self._rows[id] = dataclasses.replace(row, replayed=True)
                marked += 1
        return marked

    def _delete(self, ids: builtins.list[str]) -> int:
        return sum(1 for id in ids if self._rows.pop(id, None) is not None)

    def _close(self) -> None:
        self._rows.clear()
