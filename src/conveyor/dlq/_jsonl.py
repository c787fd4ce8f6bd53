"""Dead letters in an append-only JSON-lines file."""

from __future__ import annotations

import base64
import builtins
import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from conveyor.dlq._codec import EncodedLetter
from conveyor.dlq._store import (
    DeadLetterStore,
    FileIdentity,
    LetterQuery,
    check_same_file,
    file_lost_error,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: the thread lock alone guards writes
    fcntl = None  # type: ignore[assignment]

__all__ = ["JsonlDeadLetterStore"]

_log = logging.getLogger("conveyor.dlq")

FORMAT_VERSION: Final = 2
_LETTER: Final = "dead_letter"
_REPLAYED: Final = "replayed"
_TAIL_CHUNK = 64 * 1024


class JsonlDeadLetterStore(DeadLetterStore):
    """Dead letters as JSON lines in one file, for small queues, inspection and interchange.

    The file is only ever appended to. Each letter is one line (``"kind": "dead_letter"``,
    format version ``"v": 2``) with the record's JSON rendering under ``"record"``, the
    number of records it holds under ``"records"``, the violating output (or ``null``) under
    ``"output"`` and the exact pickle, base64, under ``"record_pickle"``;
    :meth:`mark_replayed` appends a ``"kind": "replayed"`` line listing ids. Lines of format
    version 1 (without ``records`` and ``output``) read as ``records=1``, ``output=None``.
    Each write is one ``O_APPEND`` write followed by ``fsync``, under an exclusive ``flock``
    where the platform has it, so threads and processes may share the file. A write that
    fails is truncated away; a torn last line left by a crash is dropped by the next write
    (it was never acknowledged). Reads parse the whole file, so prefer
    :class:`SqliteDeadLetterStore` for large queues.

    The parent folders and the file are created at once, so a bad location fails here.
    Later writes never create it again: if the file is deleted or replaced (by another file
    at the same path) while the store is open, :meth:`write` and :meth:`mark_replayed` raise
    :class:`~conveyor.errors.DeadLetterStoreError` instead of starting an empty file.

    >>> import tempfile, pathlib
    >>> from conveyor.dlq import DeadLetter
    >>> letter = DeadLetter.from_exception(
    ...     ("row", 3), ValueError("bad"), stage="load", attempts=1, run_id="r1"
    ... )
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "state" / "dlq.jsonl"
    ...     with JsonlDeadLetterStore(path) as store:
    ...         store.write([letter])
    ...     with JsonlDeadLetterStore(path) as reopened:
    ...         print(reopened.get(letter.id).record, reopened.count())
    ('row', 3) 1
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = Path(path)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                stat = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._error("cannot create the file", exc) from exc
        self._identity: FileIdentity = (stat.st_dev, stat.st_ino)

    @property
    def description(self) -> str:
        """The file's path."""
        return str(self._path)

    @property
    def path(self) -> Path:
        """The file's path."""
        return self._path

    # -- storage hooks ----------------------------------------------------------------------

    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        data = b"".join(_letter_line(row) for row in rows)
        action = f"cannot write {len(rows)} dead letter(s)"
        with self._locked_file(action, "the letters of this batch were not stored") as file:
            self._append_locked(file, data)

    def _select(self, query: LetterQuery) -> builtins.list[EncodedLetter]:
        return query.take(self._scan().rows())

    def _find(self, id: str) -> EncodedLetter | None:
        scan = self._scan()
        row = scan.letters.get(id)
        return None if row is None else scan.resolve(row)

    def _find_many(self, ids: builtins.list[str]) -> builtins.list[EncodedLetter]:
        scan = self._scan()  # one read of the file for them all
        return [scan.resolve(scan.letters[i]) for i in ids if i in scan.letters]

    def _count(self, query: LetterQuery) -> int:
        return sum(1 for row in self._scan().rows() if query.matches(row))

    def _mark_replayed(self, ids: builtins.list[str]) -> int:
        action = f"cannot mark {len(ids)} dead letter(s) replayed"
        with self._locked_file(action, "the replay marks were not stored") as file:
            scan = _parse(_read_all(file), self.description)
            done = scan.replayed_ids()
            fresh = [i for i in ids if i in scan.letters and i not in done]
            if fresh:
                marker = {"kind": _REPLAYED, "v": FORMAT_VERSION, "ids": fresh, "at": _now()}
                self._append_locked(file, _line(marker))
            return len(fresh)

    def _delete(self, ids: builtins.list[str]) -> int:
        """Rewrite the file without these letters (the only change that is not an append).

        Under the exclusive lock, the letters kept (with their replay marks folded in) are
        written to a new file beside it, synced, and moved over the old one in one rename,
        so a crash leaves either file whole. Another store that has the file open (a run
        writing to it) sees it replaced and stops with an error instead of writing into the
        old file: purge a JSON-lines store between runs.
        """
        action = f"cannot delete {len(ids)} dead letter(s)"
        lost = "the letters were not deleted"
        with self._locked_file(action, lost, check_after=False) as file:
            scan = _parse(_read_all(file), self.description)
            gone = set(ids)
            kept = [scan.resolve(row) for i, row in scan.letters.items() if i not in gone]
            deleted = len(scan.letters) - len(kept)
            if not deleted:
                return 0
            data = b"".join(_letter_line(row) for row in kept)
            temporary = self._path.with_name(f".{self._path.name}.{os.getpid()}.purge")
            try:
                with open(temporary, "wb", buffering=0) as out:
                    _write_all(out, data)
                    os.fsync(out.fileno())
                os.replace(temporary, self._path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
            _fsync_folder(self._path.parent)
            stat = os.stat(self._path)
            self._identity = (stat.st_dev, stat.st_ino)
            return deleted

    def _close(self) -> None:
        """Nothing to release: the file is opened per call."""

    # -- file access ------------------------------------------------------------------------

    def _scan(self) -> _Scan:
        with open(self._path, "rb", buffering=0) as file:
            _flock(file, shared=True)
            return _parse(_read_all(file), self.description)

    @contextlib.contextmanager
    def _locked_file(
        self, action: str, lost: str, *, check_after: bool = True
    ) -> Iterator[io.FileIO]:
        """The store's file, opened for appending (never created) and locked exclusively.

        Raises :class:`~conveyor.errors.DeadLetterStoreError` if the file is no longer the
        one the store opened: before the caller writes, and after it wrote.
        """
        try:
            file = open(self._path, "a+b", buffering=0, opener=_open_existing)  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise file_lost_error(self.description, self._path, action, lost, gone=True) from exc
        with file:
            _flock(file, shared=False)
            stat = os.fstat(file.fileno())
            if (stat.st_dev, stat.st_ino) != self._identity:
                raise file_lost_error(self.description, self._path, action, lost, gone=False)
            yield file
            if check_after:
                check_same_file(self.description, self._path, self._identity, action, lost)

    def _append_locked(self, file: io.FileIO, data: bytes) -> None:
        end = self._repair_tail(file)
        try:
            _write_all(file, data)
            os.fsync(file.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                file.truncate(end)
            raise

    def _repair_tail(self, file: io.FileIO) -> int:
        """Make the file end in a newline; returns its size afterwards.

        An unterminated last line that is a complete JSON object (an editor dropped the
        newline) gets its newline; anything else there is a torn write and is cut off.
        """
        end = file.seek(0, os.SEEK_END)
        if end == 0 or _read_at(file, end - 1, 1) == b"\n":
            return end
        start = _last_newline(file, end) + 1
        tail = _read_at(file, start, end - start)
        if _json_object(tail) is not None:
            _write_all(file, b"\n")
            return end + 1
        _log.warning(
            "%s: dropping %d bytes of an incomplete last line (a write that never finished)",
            self._path,
            end - start,
        )
        file.truncate(start)
        return start


@dataclass(slots=True)
class _Scan:
    """What a file holds: letters by id (first copy wins) and replay marks."""

    letters: dict[str, EncodedLetter] = field(default_factory=dict)
    marked: set[str] = field(default_factory=set)

    def replayed_ids(self) -> set[str]:
        return {i for i, row in self.letters.items() if row.replayed or i in self.marked}

    def resolve(self, row: EncodedLetter) -> EncodedLetter:
        if row.id in self.marked and not row.replayed:
            return replace(row, replayed=True)
        return row

    def rows(self) -> Iterator[EncodedLetter]:
        return (self.resolve(row) for row in self.letters.values())


def _parse(data: bytes, where: str) -> _Scan:
    scan = _Scan()
    lines = data.split(b"\n")
    last = len(lines) - 1
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        obj = _json_object(raw)
        if obj is None:
            if number - 1 == last:
                continue  # a torn write in progress or never finished: not acknowledged
            raise ValueError(f"{where}:{number}: not a JSON object; fix or delete that line")
        _apply(scan, obj, f"{where}:{number}")
    return scan


def _apply(scan: _Scan, obj: dict[str, Any], where: str) -> None:
    version = obj.get("v")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(
            f"{where}: format version {version!r} is not supported (this Conveyor reads "
            f"versions 1 to {FORMAT_VERSION}); upgrade Conveyor or fix the line"
        )
    kind = obj.get("kind")
    if kind == _LETTER:
        row = _row(obj, version, where)
        scan.letters.setdefault(row.id, row)
    elif kind == _REPLAYED:
        scan.marked.update(obj["ids"])
    else:
        raise ValueError(f"{where}: unknown kind {kind!r}; expected {_LETTER!r} or {_REPLAYED!r}")


def _row(obj: dict[str, Any], version: int, where: str) -> EncodedLetter:
    try:
        pickled = obj["record_pickle"]
        # Version 1 had no records and output: one record, no output.
        records = obj["records"] if version >= 2 else 1
        output = obj["output"] if version >= 2 else None
        return EncodedLetter(
            id=obj["id"],
            stage=obj["stage"],
            run_id=obj["run_id"],
            attempts=obj["attempts"],
            error_type=obj["error_type"],
            message=obj["message"],
            traceback=obj["traceback"],
            created_at=obj["created_at"],
            source_offset_json=json.dumps(obj["source_offset"], ensure_ascii=False),
            record_json=json.dumps(obj["record"], ensure_ascii=False),
            record_pickle=None if pickled is None else base64.b64decode(pickled, validate=True),
            replayed=bool(obj["replayed"]),
            records=records,
            output_json=json.dumps(output, ensure_ascii=False),
        )
    except KeyError as exc:
        raise ValueError(f"{where}: dead letter without the field {exc}; fix the line") from exc


def _letter_line(row: EncodedLetter) -> bytes:
    pickled = None if row.record_pickle is None else base64.b64encode(row.record_pickle)
    obj = {
        "kind": _LETTER,
        "v": FORMAT_VERSION,
        "id": row.id,
        "created_at": row.created_at,
        "run_id": row.run_id,
        "stage": row.stage,
        "attempts": row.attempts,
        "error_type": row.error_type,
        "message": row.message,
        "source_offset": json.loads(row.source_offset_json),
        "records": row.records,
        "record": json.loads(row.record_json),
        "output": json.loads(row.output_json),
        "traceback": row.traceback,
        "record_pickle": None if pickled is None else pickled.decode("ascii"),
        "replayed": row.replayed,
    }
    return _line(obj)


def _line(obj: dict[str, Any]) -> bytes:
    # Lone surrogates cannot be UTF-8; "backslashreplace" turns them into JSON \uXXXX
    # escapes, which read back as the same characters.
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8", "backslashreplace")


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _read_all(file: io.FileIO) -> bytes:
    file.seek(0)
    return file.readall()


def _read_at(file: io.FileIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size) or b""


def _last_newline(file: io.FileIO, end: int) -> int:
    """Offset of the last ``\\n`` before ``end``, or -1."""
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_CHUNK)
        found = _read_at(file, start, pos - start).rfind(b"\n")
        if found >= 0:
            return start + found
        pos = start
    return -1


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(f"write to {file.name!r} made no progress")
        view = view[written:]


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not POSIX
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - a file system that cannot sync folders
        pass
    finally:
        os.close(fd)


def _open_existing(path: str, flags: int) -> int:
    """``os.open`` without ``O_CREAT``: a store's file deleted during the run stays deleted."""
    return os.open(path, flags & ~os.O_CREAT)


def _flock(file: io.FileIO, *, shared: bool) -> None:
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)


def _now() -> str:
    return datetime.now(UTC).isoformat()
