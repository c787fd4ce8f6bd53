"""File sinks, exactly once across a crash: ``jsonl``, ``csv`` and ``parquet``.

Each sink appends to one place: :class:`JsonlSink` and :class:`CsvSink` to a file,
:class:`ParquetSink` to a directory of shards. At each checkpoint :meth:`~Sink.commit`
fsyncs what was written and returns the *committed place*: the file's length in bytes, or
the list of shards. A resumed run's :meth:`~Sink.open` goes back there (truncates the file,
deletes the shards the checkpoint does not list), and the records written after it are
written again by the resume, once: nothing is lost, nothing is doubled.

Every write is all or nothing, which is what makes the sinks ``idempotent`` for the runner
(a failing micro-batch is split in halves to dead-letter only the bad records): the whole
micro-batch is serialised before a byte is written, so a record that cannot be stored
fails the write with the file untouched, and an :class:`OSError` in the middle of the
write (a full disk) truncates the file back to its length before the write. Only a
process killed in the middle of a write leaves a torn tail, past the committed length: a
resume cuts it off.

A run without checkpoints makes everything it wrote durable when it closes; a run with
checkpoints that is aborted drops what it wrote after its last checkpoint (the resume
writes it again). A run with ``mode="replay"`` (dead letters replayed into the sink)
appends to what an earlier run wrote; any other run starts the file (or the shards) afresh.

>>> import os, tempfile
>>> from conveyor.core.result import RunStatus
>>> from conveyor.core.sink import RunInfo
>>> path = os.path.join(tempfile.mkdtemp(), "out", "rows.jsonl")
>>> sink = JsonlSink(path)
>>> sink.open(RunInfo("run-1", "demo"))
>>> sink.write([{"id": 1}, {"id": 2, "name": "café"}])
>>> sink.close(RunStatus.COMPLETED)
>>> print(sink.path.read_text(encoding="utf-8"), end="")
{"id": 1}
{"id": 2, "name": "café"}
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import enum
import io
import json
import os
import re
import threading
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.connectors._records import columns_of, row_of, rows_of
from conveyor.core._durable import fsync_dir
from conveyor.core._lazy import pyarrow_modules
from conveyor.core._paths import inside_project
from conveyor.core.result import RunStatus
from conveyor.core.sink import RunInfo, Sink
from conveyor.errors import (
    CheckpointError,
    PipelineDefinitionError,
    SinkUnavailableError,
    UsageError,
)

if TYPE_CHECKING:
    from conveyor.core.checkpoint import Checkpoint

__all__ = ["CsvSink", "JsonlSink", "ParquetSink"]

_FRESH_HINT = "run with --fresh (resume=False in code) to start from the beginning"


# -- helpers -------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    """What :func:`json.dumps` cannot encode on its own: dates and times as ISO 8601,
    ``Decimal`` and ``UUID`` as strings, enums by value, nested models and dataclasses as
    objects; ``bytes`` (and anything else) is refused."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(
            "bytes cannot be written as JSON; decode them (or base64-encode them) in a stage"
        )
    if callable(getattr(value, "model_dump", None)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type)
    ):
        return row_of(value)
    raise TypeError(f"Object of type {type(value).__qualname__} is not JSON serializable")


def _csv_value(value: Any, column: str) -> Any:
    """A row value as the ``csv`` module should write it (see :class:`CsvSink`)."""
    if isinstance(value, enum.Enum):
        return _csv_value(value.value, column)
    if value is None or isinstance(value, str | int | float):
        return "" if value is None else value
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, Mapping | list | tuple) or callable(getattr(value, "model_dump", None)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    raise TypeError(
        f"column {column!r}: a value of type {type(value).__qualname__} cannot be written to "
        "a CSV file (bytes and other objects are refused; convert them in a stage)"
    )


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` at ``fd``'s position (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def _resolve(path: str, root: Path, allow_outside: bool) -> Path:
    """``path`` from a ``sink:`` section: ``~`` expanded, relative to ``root``, resolved,
    and refused (:class:`~conveyor.core._paths.OutsideProject`, located at ``sink.path``
    by the config loader) when it leaves ``root`` unless ``allow_outside``."""
    return inside_project(Path(root), path, key="sink.path", allow_outside=allow_outside)


_OUTSIDE_HELP = (
    "Allow a `path` outside the project folder (refused otherwise: `..`, absolute paths "
    "elsewhere and symlinks out)."
)


def _pyarrow() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, imported on first use, with the fix if absent."""
    return pyarrow_modules("the parquet sink", "the jsonl or csv sink")


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- the byte-file sinks -------------------------------------------------------------------


class _ByteFileSink(Sink):
    """What :class:`JsonlSink` and :class:`CsvSink` share: one file, appended to with
    all-or-nothing writes, its committed length returned by :meth:`commit`."""

    exactly_once: ClassVar[bool] = True
    """The committed length is in every checkpoint; a resume truncates back to it."""
    idempotent: ClassVar[bool] = True
    """Not an upsert, but as good for the runner: a write is all or nothing (the batch is
    serialised before a byte is written; an :class:`OSError` mid-write truncates back), so
    writing the halves of a failed batch again writes no record twice. Do not give the
    sink a ``timeout``: a write that timed out could still finish in its thread."""

    def __init__(self, path: str | os.PathLike[str], *, name: str = "sink") -> None:
        self.path = Path(path)
        self.name = name
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._length = 0  # bytes in the file: where the next write goes
        self._committed = 0  # bytes the last commit made durable
        self._checkpointing = False
        self._broken: BaseException | None = None

    @property
    def identity(self) -> str:
        """The file (folder) it writes, for checkpoints."""
        return str(self.path.absolute())

    @property
    def description(self) -> str:
        """The format and the file (folder) as given, e.g. ``csv out/penguins.csv``."""
        return f"{type(self).__name__.removesuffix('Sink').lower()} {self.path}"

    # -- the lifecycle ---------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Open the file (creating its folders): a resumed run truncates it to the length
        its checkpoint committed, a replay appends to it, any other run starts it afresh.

        A file shorter than the checkpoint says is refused with a
        :class:`~conveyor.errors.CheckpointError` (it changed since the crash).
        """
        with self._lock:
            self._release()
            resume = run.resume_from
            restore = None if resume is None else self._committed_length(resume.sink)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
            fd = os.open(self.path, flags, 0o666)
            try:
                size = os.fstat(fd).st_size
                if resume is not None and restore is not None:
                    if size < restore:
                        raise CheckpointError(
                            str(self.path),
                            f"the sink file is {size} bytes long, shorter than the checkpoint "
                            f"of run {resume.run_id} says was committed ({restore} bytes): "
                            f"the file changed since; restore it, or {_FRESH_HINT}",
                        )
                    length = restore
                elif run.replay:
                    length = size
                else:
                    length = 0
                if size != length:
                    os.ftruncate(fd, length)
                os.lseek(fd, length, os.SEEK_SET)
                length = self._opened(fd, length)
                os.fsync(fd)
                if created:
                    fsync_dir(self.path.parent)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._length = self._committed = length
            self._checkpointing = run.checkpointing
            self._broken = None

    def write(self, records: list[Any]) -> None:
        """Append one micro-batch, all or nothing (see the module docstring)."""
        with self._lock:
            fd = self._require_open()
            start = self._length
            data = self._serialise(records, start)
            if not data:
                return
            try:
                _write_all(fd, data)
            except BaseException as exc:
                self._rewind(fd, start, exc)
                raise
            self._length = start + len(data)
            self._written()

    def commit(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Fsync what was written and return ``{"path": ..., "length": bytes}``, the place
        a resume truncates the file back to."""
        with self._lock:
            fd = self._require_open()
            os.fsync(fd)
            self._committed = self._length
            return {"path": str(self.path), "length": self._committed}

    def close(self, status: RunStatus) -> None:
        """Make everything written durable and close the file; an aborted run with
        checkpoints first truncates it to its last commit (a resume writes the rest again).
        Does nothing if the sink is not open."""
        with self._lock:
            fd = self._fd
            if fd is None:
                return
            self._fd = None
            try:
                if self._broken is None:
                    aborted = self._checkpointing and status == RunStatus.ABORTED
                    if aborted and self._length != self._committed:
                        os.ftruncate(fd, self._committed)  # a resume writes the rest again
                        self._length = self._committed
                    os.fsync(fd)
            finally:
                os.close(fd)

    # -- what the formats fill in ----------------------------------------------------------

    def _opened(self, fd: int, length: int) -> int:
        """The file is open at ``length``: read or write what the format needs there (a
        CSV header); returns the length after that."""
        return length

    @abstractmethod
    def _serialise(self, records: list[Any], at: int) -> bytes:
        """The bytes of a micro-batch appended at offset ``at``; raises for a record that
        cannot be stored, before anything is written."""

    def _written(self) -> None:
        """The bytes of the last :meth:`_serialise` are in the file."""

    # -- internals -------------------------------------------------------------------------

    def _committed_length(self, state: Any) -> int:
        """The length a checkpoint's ``sink`` field says was committed (0: none was)."""
        if state is None:
            return 0  # the crashed run checkpointed before its first commit
        length = state.get("length") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("path"), str)
            or not isinstance(length, int)
            or isinstance(length, bool)
            or length < 0
        ):
            raise CheckpointError(
                str(self.path),
                f"the checkpoint's sink state {state!r:.200} was not written by a "
                f"{type(self).__name__}; the sink changed since the crash: {_FRESH_HINT}",
            )
        if not _same_path(state["path"], self.path):
            raise CheckpointError(
                str(self.path),
                f"the checkpoint was committed to {state['path']}, not to this file: the "
                f"sink changed since the crash; point it back there, or {_FRESH_HINT}",
            )
        return length

    def _require_open(self) -> int:
        if self._broken is not None:
            raise SinkUnavailableError(
                self.name, f"{self.path} could not be truncated after a failed write"
            ) from self._broken
        if self._fd is None:
            raise UsageError(
                f"{type(self).__name__} {self.path}: write or commit called while the sink "
                "is not open; call open(run) first"
            )
        return self._fd

    def _rewind(self, fd: int, start: int, error: BaseException) -> None:
        """Undo a failed write: truncate back to ``start``."""
        try:
            os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        except OSError as exc:
            self._broken = exc
            error.add_note(f"{self.path} could not be truncated back to {start} bytes: {exc}")

    def _release(self) -> None:
        """Close a file left open by an earlier open() (a sink object used twice)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path}>"


class JsonlSink(_ByteFileSink):
    """Write records as JSON lines to the file ``path``, exactly once across a crash.

    Records are dicts, Pydantic models or dataclasses, one UTF-8 line each (``\\n``
    ends every line; non-ASCII text is written as is). Dates and times are written in ISO
    8601, ``Decimal`` and ``UUID`` values as strings; ``NaN``, infinities, ``bytes`` and
    other objects are refused: that record fails the write, alone (the runner splits the
    batch, since ``idempotent`` holds: see the module docstring) and becomes a dead letter.

    >>> import tempfile, os
    >>> from datetime import date
    >>> from conveyor.core.result import RunStatus
    >>> from conveyor.core.sink import RunInfo
    >>> sink = JsonlSink(os.path.join(tempfile.mkdtemp(), "out.jsonl"))
    >>> sink.open(RunInfo("r", "p")); sink.write([{"on": date(2024, 5, 1)}])
    >>> sink.write([{"bad": float("nan")}])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Out of range float values are not JSON compliant...
    >>> sink.close(RunStatus.COMPLETED); print(sink.path.read_text(), end="")
    {"on": "2024-05-01"}
    """

    class Config(_Options):
        """The options of a ``jsonl`` sink (``sink: {connector: jsonl, path: ...}``)."""

        path: str = Field(
            description="The JSON Lines file to write; a relative path is relative to the "
            "project's root."
        )
        allow_outside_project: bool = Field(False, description=_OUTSIDE_HELP)

    def __init__(self, path: str | os.PathLike[str], *, name: str = "sink") -> None:
        super().__init__(path, name=name)

    @classmethod
    def from_config(cls, config: JsonlSink.Config, root: Path) -> Self:
        """The sink a ``sink:`` section describes, its path resolved against ``root``
        (and kept inside it unless ``allow_outside_project``).

        >>> JsonlSink.from_config(JsonlSink.Config(path="out/a.jsonl"), Path("/proj"))
        <JsonlSink /proj/out/a.jsonl>
        >>> JsonlSink.from_config(JsonlSink.Config(path="../a.jsonl"), Path("/proj"))
        Traceback (most recent call last):
        ...
        conveyor.core._paths.OutsideProject: sink.path '../a.jsonl' is outside the project \
folder /proj (it resolves to /a.jsonl); use a path inside the project, or set \
`allow_outside_project: true` beside it to allow this path
        """
        return cls(_resolve(config.path, root, config.allow_outside_project))

    def _serialise(self, records: list[Any], at: int) -> bytes:
        lines = []
        for index, record in enumerate(records):
            try:
                lines.append(
                    json.dumps(
                        row_of(record), ensure_ascii=False, allow_nan=False, default=_json_default
                    )
                )
            except (TypeError, ValueError) as exc:
                exc.add_note(f"{self.path}: record {index} of the batch cannot be written as JSON")
                raise
        if not lines:
            return b""
        lines.append("")
        return "\n".join(lines).encode("utf-8")


class CsvSink(_ByteFileSink):
    """Write records as CSV rows to the file ``path``, exactly once across a crash.

    The columns are ``columns`` when given, else the fields of ``model`` (a Pydantic model
    or a dataclass type), else the header of the file a replay or a resume appends to, else
    the keys of the first micro-batch written, in order of appearance. The header (when
    ``header``) is written once, when the file starts empty. A record with a key that is
    not a column is refused (it becomes a dead letter, alone); a missing key is an empty
    field, as is ``None``. Dates and times are written in ISO 8601, ``Decimal`` and ``UUID``
    values as strings, dicts and lists as JSON; ``bytes`` and other objects are refused.
    Rows end with ``\\n``; the text is encoded with ``encoding`` (a byte-order mark, as of
    ``utf-8-sig``, once at the start of the file).

    >>> import tempfile, os
    >>> from conveyor.core.result import RunStatus
    >>> from conveyor.core.sink import RunInfo
    >>> sink = CsvSink(os.path.join(tempfile.mkdtemp(), "out.csv"), columns=["id", "name"])
    >>> sink.open(RunInfo("r", "p")); sink.write([{"id": 1, "name": "a, b"}, {"id": 2}])
    >>> sink.write([{"id": 3, "size": 9}])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...record 0 of the batch has the key 'size', which is not a column...
    >>> sink.close(RunStatus.COMPLETED); print(sink.path.read_text(), end="")
    id,name
    1,"a, b"
    2,
    """

    class Config(_Options):
        """The options of a ``csv`` sink (``sink: {connector: csv, path: ...}``)."""

        path: str = Field(
            description="The CSV file to write; a relative path is relative to the project's root."
        )
        allow_outside_project: bool = Field(False, description=_OUTSIDE_HELP)
        delimiter: str = Field(",", description="The one character between fields.")
        header: bool = Field(True, description="Write a header row when the file starts empty.")
        columns: list[str] | None = Field(
            None,
            description="The columns, in order; by default the keys of the first records "
            "written (or the header of the file appended to).",
        )
        encoding: str = Field("utf-8", description="The text encoding of the file.")

        @field_validator("delimiter")
        @classmethod
        def _one_character(cls, value: str) -> str:
            _check_delimiter(value)
            return value

        @field_validator("encoding")
        @classmethod
        def _known_encoding(cls, value: str) -> str:
            _check_encoding(value)
            return value

        @field_validator("columns")
        @classmethod
        def _distinct(cls, value: list[str] | None) -> list[str] | None:
            if value is not None:
                _check_columns(value)
            return value

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        delimiter: str = ",",
        header: bool = True,
        columns: Sequence[str] | None = None,
        encoding: str = "utf-8",
        model: Any = None,
        name: str = "sink",
    ) -> None:
        super().__init__(path, name=name)
        try:
            _check_delimiter(delimiter)
            _check_encoding(encoding)
            fixed = list(columns) if columns is not None else None
            if fixed is not None:
                _check_columns(fixed)
        except ValueError as exc:
            raise PipelineDefinitionError(f"CsvSink {self.path}: {exc}") from None
        if fixed is None and model is not None:
            fixed = columns_of(model, [])
        self.delimiter = delimiter
        self.header = header
        self.encoding = encoding
        self.model = model
        self._fixed = fixed
        self._columns = fixed
        self._pending: list[str] | None = None
        self._bom = "".encode(encoding)  # what the codec puts before any text (a BOM)

    @classmethod
    def from_config(cls, config: CsvSink.Config, root: Path) -> Self:
        """The sink a ``sink:`` section describes, its path resolved against ``root``
        (and kept inside it unless ``allow_outside_project``).

        >>> CsvSink.from_config(CsvSink.Config(path="out/a.csv", delimiter=";"), Path("/proj"))
        <CsvSink /proj/out/a.csv>
        >>> options = CsvSink.Config(path="/data/a.csv", allow_outside_project=True)
        >>> CsvSink.from_config(options, Path("/proj"))
        <CsvSink /data/a.csv>
        """
        return cls(
            _resolve(config.path, root, config.allow_outside_project),
            delimiter=config.delimiter,
            header=config.header,
            columns=config.columns,
            encoding=config.encoding,
        )

    @property
    def columns(self) -> list[str] | None:
        """The file's columns (``None`` until they are known: the first write)."""
        return None if self._columns is None else list(self._columns)

    def _opened(self, fd: int, length: int) -> int:
        self._columns, self._pending = self._fixed, None
        if length and self.header:
            found = self._read_header()
            if self._fixed is not None and found != self._fixed:
                raise PipelineDefinitionError(
                    f"CsvSink {self.path}: the file's header is {', '.join(found)}, not the "
                    f"sink's columns {', '.join(self._fixed)}; write to another file, or "
                    "give the file's columns"
                )
            self._columns = found
        elif not length and self.header and self._fixed is not None:
            data = self._encode(self._lines([], self._fixed, header=True), 0)
            _write_all(fd, data)
            length = len(data)
        return length

    def _read_header(self) -> list[str]:
        try:
            with self.path.open(encoding=self.encoding, newline="") as file:
                found = next(csv.reader(file, delimiter=self.delimiter), [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise PipelineDefinitionError(
                f"CsvSink {self.path}: the file's first line is not a CSV header in "
                f"{self.encoding} ({exc}); write to another file"
            ) from exc
        if not found:
            raise PipelineDefinitionError(
                f"CsvSink {self.path}: the file does not start with a header row; write to "
                "another file, or set header=False and give the columns"
            )
        return found

    def _serialise(self, records: list[Any], at: int) -> bytes:
        if not records:
            return b""
        rows = rows_of(records)
        columns = self._columns if self._columns is not None else columns_of(None, rows)
        if not columns:
            raise ValueError(f"CsvSink {self.path}: the records have no fields to write")
        known = set(columns)
        for index, row in enumerate(rows):
            for key in row:
                if key not in known:
                    raise ValueError(
                        f"CsvSink {self.path}: record {index} of the batch has the key "
                        f"{key!r}, which is not a column of the file (columns: "
                        f"{', '.join(columns)})"
                    )
        text = self._lines(rows, columns, header=self.header and at == 0)
        self._pending = columns
        return self._encode(text, at)

    def _lines(self, rows: list[dict[str, Any]], columns: list[str], *, header: bool) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.delimiter, lineterminator="\n")
        if header:
            writer.writerow(columns)
        for index, row in enumerate(rows):
            try:
                writer.writerow([_csv_value(row.get(column), column) for column in columns])
            except (TypeError, csv.Error) as exc:
                exc.add_note(f"{self.path}: record {index} of the batch")
                raise
        return buffer.getvalue()

    def _encode(self, text: str, at: int) -> bytes:
        data = text.encode(self.encoding)
        if at and self._bom and data.startswith(self._bom):
            data = data[len(self._bom) :]  # the byte-order mark goes at the start only
        return data

    def _written(self) -> None:
        self._columns = self._pending


def _check_delimiter(value: str) -> None:
    if len(value) != 1 or value in '\r\n"':
        raise ValueError(
            f"delimiter must be one character other than a quote or a line break, got {value!r}"
        )


def _check_encoding(value: str) -> None:
    try:
        codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None


def _check_columns(columns: list[str]) -> None:
    if not columns:
        raise ValueError("columns must not be empty")
    seen: set[str] = set()
    for column in columns:
        if not isinstance(column, str):
            raise ValueError(f"columns must be strings, got {column!r}")
        if column in seen:
            raise ValueError(f"column {column!r} is given twice")
        seen.add(column)


# -- parquet ---------------------------------------------------------------------------------

_SHARD = re.compile(r"^part-(\d{5,})\.parquet$")
_TEMP = re.compile(r"^\.part-\d{5,}\.parquet\.tmp$")
_CODECS = ("none", "snappy", "gzip", "brotli", "lz4", "zstd")


class ParquetSink(Sink):
    """Write records as Parquet shards into the directory ``path``, exactly once across a
    crash.

    Rows are buffered and written as shards ``part-00000.parquet``, ``part-00001.parquet``
    …: one each time ``rows_per_shard`` rows are buffered, and one with the rows buffered at
    every checkpoint and at the end. A shard is written under a temporary name (a dot
    file, which readers skip), fsynced and renamed into place, so no half shard ever has a
    shard's name. A checkpoint records the list of shards; a resume deletes the others.

    The schema is that of the first micro-batch written (or of the first shard already
    there, when a replay or a resume appends): each column's type is inferred from all its
    values. Later records are cast to it, safely: a record with a key that is not a column,
    or a value that cannot be cast (``"abc"`` for an integer, ``2.5`` for an integer) is
    refused, alone, and becomes a dead letter. A column that held only ``None`` takes the
    type of its first values while no shard is written yet. ``Decimal`` columns keep the
    precision and scale of the first batch: round them in a stage if they vary.

    Needs pyarrow (``pip install 'conveyor[parquet]'``).

    >>> import tempfile, os
    >>> from conveyor.core.result import RunStatus
    >>> from conveyor.core.sink import RunInfo
    >>> sink = ParquetSink(os.path.join(tempfile.mkdtemp(), "out"), rows_per_shard=2)
    >>> sink.open(RunInfo("r", "p")); sink.write([{"id": i} for i in range(3)])
    >>> sink.close(RunStatus.COMPLETED); sorted(os.listdir(sink.path))
    ['part-00000.parquet', 'part-00001.parquet']
    """

    exactly_once: ClassVar[bool] = True
    """The committed shards are in every checkpoint; a resume deletes any other."""
    idempotent: ClassVar[bool] = True
    """A write is all or nothing: the batch is cast before it is buffered, and a shard
    that fails to be written is deleted with the batch's rows taken back, so writing the
    halves of a failed batch again writes no record twice (no ``timeout``, as for
    :class:`JsonlSink`)."""

    class Config(_Options):
        """The options of a ``parquet`` sink (``sink: {connector: parquet, path: ...}``)."""

        path: str = Field(
            description="The directory the shards go into; a relative path is relative to "
            "the project's root."
        )
        allow_outside_project: bool = Field(False, description=_OUTSIDE_HELP)
        rows_per_shard: int = Field(
            100_000, gt=0, description="The most rows a shard holds (a checkpoint cuts one)."
        )
        compression: str = Field(
            "zstd",
            description="The shards' compression: none, snappy, gzip, brotli, lz4 or zstd.",
        )

        @field_validator("compression")
        @classmethod
        def _known_codec(cls, value: str) -> str:
            _check_codec(value)
            return value

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        rows_per_shard: int = 100_000,
        compression: str = "zstd",
        name: str = "sink",
    ) -> None:
        self.path = Path(path)
        self.name = name
        if (
            isinstance(rows_per_shard, bool)
            or not isinstance(rows_per_shard, int)
            or rows_per_shard < 1
        ):
            raise PipelineDefinitionError(
                f"ParquetSink {self.path}: rows_per_shard must be an int > 0, got "
                f"{rows_per_shard!r}"
            )
        try:
            _check_codec(compression)
        except ValueError as exc:
            raise PipelineDefinitionError(f"ParquetSink {self.path}: {exc}") from None
        _pyarrow()  # fail when the sink is built, not at the first shard of a long run
        self.rows_per_shard = rows_per_shard
        self.compression = compression.lower()
        self._lock = threading.Lock()
        self._open = False
        self._checkpointing = False
        self._schema: Any = None  # a pyarrow.Schema once known
        self._pending: list[Any] = []  # pyarrow Tables of the buffered rows, cast to it
        self._pending_rows = 0
        self._shards: list[str] = []  # shards in the directory, in order
        self._committed: list[str] = []  # the shards of the last commit
        self._next = 0  # the number of the next shard

    @classmethod
    def from_config(cls, config: ParquetSink.Config, root: Path) -> Self:
        """The sink a ``sink:`` section describes, its path resolved against ``root``
        (and kept inside it unless ``allow_outside_project``).

        >>> ParquetSink.from_config(ParquetSink.Config(path="out"), Path("/proj"))
        <ParquetSink /proj/out>
        """
        return cls(
            _resolve(config.path, root, config.allow_outside_project),
            rows_per_shard=config.rows_per_shard,
            compression=config.compression,
        )

    @property
    def shards(self) -> list[str]:
        """The names of the shards written so far (kept ones first)."""
        return list(self._shards)

    @property
    def identity(self) -> str:
        """The file (folder) it writes, for checkpoints."""
        return str(self.path.absolute())

    @property
    def description(self) -> str:
        """The format and the file (folder) as given, e.g. ``csv out/penguins.csv``."""
        return f"{type(self).__name__.removesuffix('Sink').lower()} {self.path}"

    # -- the lifecycle ---------------------------------------------------------------------

    def open(self, run: RunInfo) -> None:
        """Create the directory; a resumed run deletes the shards its checkpoint does not
        list, a replay appends new shards, any other run deletes the old ones. Temporary
        files of a killed run are deleted. A shard the checkpoint lists that is gone is
        refused with a :class:`~conveyor.errors.CheckpointError`."""
        with self._lock:
            self._open = False
            keep_from = None
            if run.resume_from is not None:
                keep_from = self._committed_shards(run.resume_from.sink)
            if self.path.exists() and not self.path.is_dir():
                raise PipelineDefinitionError(
                    f"ParquetSink {self.path}: it is a file; the sink writes a directory of shards"
                )
            self.path.mkdir(parents=True, exist_ok=True)
            names = sorted(entry.name for entry in os.scandir(self.path))
            existing = [n for n in names if _SHARD.match(n)]
            drop = [n for n in names if _TEMP.match(n)]
            if keep_from is not None:
                missing = [n for n in keep_from if n not in existing]
                if missing:
                    raise CheckpointError(
                        str(self.path),
                        f"shard {missing[0]}, which the checkpoint lists as committed, is "
                        f"missing: the directory changed since; restore it, or {_FRESH_HINT}",
                    )
                keep = keep_from
            elif run.replay:
                keep = existing
            else:
                keep = []
            drop += [n for n in existing if n not in keep]
            for entry in drop:
                (self.path / entry).unlink(missing_ok=True)
            fsync_dir(self.path)
            self._schema = None
            if keep:
                _, pq = _pyarrow()
                self._schema = pq.read_schema(self.path / keep[0]).remove_metadata()
            self._pending, self._pending_rows = [], 0
            self._shards, self._committed = list(keep), list(keep)
            self._next = max((_number(n) for n in keep), default=-1) + 1
            self._checkpointing = run.checkpointing
            self._open = True

    def write(self, records: list[Any]) -> None:
        """Buffer one micro-batch, cast to the schema, and write a shard each time
        ``rows_per_shard`` rows are buffered; all or nothing (see the class docstring)."""
        with self._lock:
            self._require_open()
            if not records:
                return
            rows = rows_of(records)
            saved = (self._schema, list(self._pending), self._pending_rows, self._next)
            count = len(self._shards)
            try:
                table = self._table(rows)
                self._pending.append(table)
                self._pending_rows += table.num_rows
                while self._pending_rows >= self.rows_per_shard:
                    self._write_shard(self.rows_per_shard)
            except BaseException:  # undo it all: the shards made, the rows, the schema
                for name in self._shards[count:]:
                    (self.path / name).unlink(missing_ok=True)
                del self._shards[count:]
                self._schema, self._pending, self._pending_rows, self._next = saved
                raise

    def commit(self, checkpoint: Checkpoint) -> dict[str, Any]:
        """Write the buffered rows as a shard and return ``{"path": ..., "shards": [...]}``,
        the shards a resume keeps."""
        with self._lock:
            self._require_open()
            if self._pending_rows:
                self._write_shard(self._pending_rows)
            self._committed = list(self._shards)
            return {"path": str(self.path), "shards": list(self._committed)}

    def close(self, status: RunStatus) -> None:
        """Write the buffered rows as a last shard; an aborted run with checkpoints instead
        drops them and deletes the shards written since its last commit (a resume writes
        them again). Does nothing if the sink is not open."""
        with self._lock:
            if not self._open:
                return
            self._open = False
            if self._checkpointing and status == RunStatus.ABORTED:
                self._pending, self._pending_rows = [], 0
                for name in self._shards:
                    if name not in self._committed:
                        (self.path / name).unlink(missing_ok=True)
                self._shards = list(self._committed)
                fsync_dir(self.path)
            elif self._pending_rows:
                self._write_shard(self._pending_rows)

    # -- internals -------------------------------------------------------------------------

    def _require_open(self) -> None:
        if not self._open:
            raise UsageError(
                f"ParquetSink {self.path}: write or commit called while the sink is not "
                "open; call open(run) first"
            )

    def _committed_shards(self, state: Any) -> list[str]:
        """The shards a checkpoint's ``sink`` field lists ([]: none was committed)."""
        if state is None:
            return []
        shards = state.get("shards") if isinstance(state, dict) else None
        if (
            not isinstance(state, dict)
            or not isinstance(state.get("path"), str)
            or not isinstance(shards, list)
            or not all(isinstance(n, str) and _SHARD.match(n) for n in shards)
        ):
            raise CheckpointError(
                str(self.path),
                f"the checkpoint's sink state {state!r:.200} was not written by a "
                f"ParquetSink; the sink changed since the crash: {_FRESH_HINT}",
            )
        if not _same_path(state["path"], self.path):
            raise CheckpointError(
                str(self.path),
                f"the checkpoint was committed to {state['path']}, not to this directory: "
                f"the sink changed since the crash; point it back there, or {_FRESH_HINT}",
            )
        return list(shards)

    def _table(self, rows: list[dict[str, Any]]) -> Any:
        """The rows as a pyarrow Table of the sink's schema (set by the first batch)."""
        pa, _ = _pyarrow()
        schema = self._schema
        if schema is None:
            columns = columns_of(None, rows)
            if not columns:
                raise ValueError(f"ParquetSink {self.path}: the records have no fields to write")
            table = pa.Table.from_pydict({c: [row.get(c) for row in rows] for c in columns})
            self._schema = table.schema
            return table
        if not any(pa.types.is_null(field.type) for field in schema):
            return self._typed_table(pa, rows, schema)
        self._refuse_unknown(rows, schema, None)
        arrays = []
        for position, target in enumerate(schema):
            values = pa.array([row.get(target.name) for row in rows])
            if pa.types.is_null(target.type) and not pa.types.is_null(values.type):
                if self._shards:
                    raise ValueError(
                        f"ParquetSink {self.path}: column {target.name!r} holds only nulls "
                        "in the shards written already, so it cannot take a value now; give "
                        "the first records a value there (or drop the column in a stage)"
                    )
                schema = schema.set(position, target.with_type(values.type))  # it takes it
                arrays.append(values)
                continue
            arrays.append(self._cast(pa, values, target))
        if schema is not self._schema:
            self._pending = [t.cast(schema) for t in self._pending]
            self._schema = schema
        return pa.Table.from_arrays(arrays, schema=schema)

    def _typed_table(self, pa: Any, rows: list[dict[str, Any]], schema: Any) -> Any:
        """The common case, a schema without null columns, all columns at once.

        Columns of a type that pyarrow's conversion from Python fills only with what fits
        (strings, binaries, booleans: a value of another kind is refused) are built
        in one go as a struct array of that type. The others (integers, which pyarrow's
        typed conversion would fill with 2.5 truncated to 2; floats, where a numpy.uint64
        of 2**64 - 1 would become -1.0; dates, times, lists, ...) are
        built as pa.array infers them and then cast safely, so that 2.5 is refused there
        as in the column-by-column way. When the struct refuses a value (the int 7 for a
        string column), its columns are built that way too: 7 is cast to "7", as a value
        that does not fit is refused. A key that is not a column is refused first.
        """
        names = frozenset(schema.names)
        if not all(map(names.issuperset, rows)):
            self._refuse_unknown(rows, schema, None)
        direct = [f for f in schema if _direct_type(pa, f.type)]
        columns: dict[str, Any] = {}
        if direct:
            try:
                struct = pa.array(rows, type=pa.struct(direct))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass  # a value of another kind (7 for a string): each column cast safely
            else:
                columns = {f.name: struct.field(i) for i, f in enumerate(direct)}
        for target in schema:
            if target.name not in columns:
                values = pa.array([row.get(target.name) for row in rows])
                columns[target.name] = self._cast(pa, values, target)
        return pa.Table.from_arrays([columns[n] for n in schema.names], schema=schema)

    def _cast(self, pa: Any, values: Any, target: Any) -> Any:
        """``values`` (as pa.array inferred them) cast safely to the column ``target``. An
        extension type (a uuid.UUID is ``arrow.uuid``) is refused unless it is the column's:
        cast to a string or binary column it would give the 16 raw bytes, not the text."""
        if isinstance(values.type, pa.BaseExtensionType) and values.type != target.type:
            raise ValueError(
                f"ParquetSink {self.path}: column {target.name!r} is {target.type}, and the "
                f"batch holds values of {values.type} there (e.g. uuid.UUID), which do not "
                "convert to it; make them text in a stage (str(value))"
            )
        return values.cast(target.type, safe=True)

    def _refuse_unknown(
        self, rows: list[dict[str, Any]], schema: Any, present: list[str] | None
    ) -> None:
        """A ValueError naming the first record with a key that is not a column (``present``:
        the keys of the batch when known, so that a clean batch is not scanned)."""
        names = frozenset(schema.names)
        if present is not None and names.issuperset(present):
            return
        for index, row in enumerate(rows):
            if not names.issuperset(row):
                key = next(k for k in row if k not in names)
                raise ValueError(
                    f"ParquetSink {self.path}: record {index} of the batch has the key "
                    f"{key!r}, which is not a column of the shards (columns: "
                    f"{', '.join(schema.names)})"
                )

    def _write_shard(self, rows: int) -> None:
        """Write the first ``rows`` buffered rows as the next shard, atomically; the state
        changes only once the shard is in place."""
        pa, pq = _pyarrow()
        buffered = pa.concat_tables(self._pending)
        shard, rest = buffered.slice(0, rows), buffered.slice(rows)
        name = f"part-{self._next:05d}.parquet"
        temp = self.path / f".{name}.tmp"
        try:
            with temp.open("wb") as file:
                pq.write_table(shard, file, compression=self.compression)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, self.path / name)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self._shards.append(name)
        self._next += 1
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        fsync_dir(self.path)

    def __repr__(self) -> str:
        return f"<ParquetSink {self.path}>"


def _direct_type(pa: Any, kind: Any) -> bool:
    """Whether pyarrow's typed conversion from Python values to ``kind`` refuses what does
    not fit instead of changing it (a float into an int column is truncated, a large
    numpy.uint64 into a float column turns negative; a string, binary or boolean column
    takes only what it can hold)."""
    t = pa.types
    return bool(
        t.is_string(kind)
        or t.is_large_string(kind)
        or t.is_binary(kind)
        or t.is_large_binary(kind)
        or t.is_boolean(kind)
    )


def _number(shard: str) -> int:
    match = _SHARD.match(shard)
    assert match is not None
    return int(match.group(1))


def _check_codec(value: str) -> None:
    if value.lower() not in _CODECS:
        raise ValueError(f"compression must be one of {', '.join(_CODECS)}, got {value!r}")
