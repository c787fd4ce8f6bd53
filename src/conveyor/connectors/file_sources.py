"""File sources: ``csv``, ``jsonl`` and ``parquet``, resumable, rejecting bad lines one by one.

Each source reads one file or every file a glob matches (``data/in/*.csv``, ``**`` for
subfolders), in sorted order, and yields one record per CSV row, JSON line or Parquet row:
a dict, or an instance of ``model`` when one is given (a Pydantic model, dataclass or
TypedDict that types the record, in lax mode: the text ``"3"`` becomes the int ``3``).

What cannot become a record becomes a :class:`~conveyor.Rejected` in its place — a line
that does not decode, parse or fit the model, a NUL byte, a wrong number of CSV fields, a
JSON value that is not an object or is nested too deeply, a line longer than
``max_line_bytes`` — and with it a dead letter of the source's row, ``FILE:LINE: reason``,
whose record is ``{"file", "line", "raw"}``; the rest flows on.

Every source is seekable (:class:`~conveyor.core.checkpoint.SeekableSource`), so a resumed
run starts where its checkpoint says without reading the files again. ``offset`` is:

- ``csv``, ``jsonl``: ``[file, byte offset of the next line, its line number]``;
- ``parquet``: ``[file, row group, row within the group]``.

``file`` is the path relative to the project folder (or the working directory in code).

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> with open(os.path.join(folder, "in.csv"), "w") as f:
...     _ = f.write('id,name\\n1,Ada\\n2,NA\\nthree\\n4,"Grace\\nHopper"\\n')
>>> source = CsvSource("in.csv", root=folder)
>>> for item in source:
...     print(getattr(item, "error", item), source.offset)
{'id': '1', 'name': 'Ada'} ['in.csv', 14, 3]
{'id': '2', 'name': None} ['in.csv', 19, 4]
in.csv:4: 1 field, expected 2 (id, name) ['in.csv', 25, 5]
{'id': '4', 'name': 'Grace\\nHopper'} ['in.csv', 42, 7]
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import itertools
import json
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from conveyor.core._imports import (
    OptionError,
    is_reference,
    record_model,
    record_validator,
    short,
    validation_reason,
)
from conveyor.core._lazy import pyarrow_modules
from conveyor.core._paths import OutsideProject, inside_project
from conveyor.core.source import Rejected, Source
from conveyor.errors import CheckpointError, PipelineDefinitionError, SourceRecordError

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_NA_VALUES",
    "RAW_LIMIT",
    "CsvSource",
    "JsonlSource",
    "ParquetSource",
]

DEFAULT_NA_VALUES: tuple[str, ...] = ("", "NA", "N/A", "NULL", "null", "NaN")
"""The CSV cells read as ``None`` unless ``na_values`` says otherwise (compared exactly,
after the CSV quoting is undone: ``""`` and an empty cell are both empty)."""

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
"""The longest line (in bytes, without its line break) read by default; a longer one is
rejected without being held in memory."""

RAW_LIMIT = 64 * 1024
"""At most this many bytes of a rejected line are kept in its dead letter's ``raw``."""

_KEY = "source.path"
_BLOCK = 256 * 1024  # bytes of whole lines a csv source parses at once
_FRESH = "run with --fresh (resume=False in code) to start from the beginning"
_BOM = codecs.BOM_UTF8
_PROBE = '\n\r,;\t|"'


# -- options shared by the formats ----------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _path_field() -> Any:
    return Field(
        description="The file to read, or a glob matching several (data/in/*.csv; ** for "
        "subfolders), read in sorted order; relative to the project folder."
    )


def _model_field() -> Any:
    return Field(
        None,
        description="A Pydantic model (or dataclass or TypedDict) of the project typing "
        "each record, as package.module:Class (e.g. pipeline.contracts.models:Penguin); "
        "values are coerced (lax mode: '3' becomes 3) and a record that does not fit is "
        "rejected. Records are then model instances, else dicts.",
    )


def _outside_field() -> Any:
    return Field(
        False, description="Allow a path outside the project folder (off: such a path is refused)."
    )


def _max_line_field() -> Any:
    return Field(
        DEFAULT_MAX_LINE_BYTES,
        gt=0,
        description="The longest line read, in bytes; a longer line is rejected (and not "
        "held in memory).",
    )


def _check_model_ref(value: str | None) -> str | None:
    if value is not None and not is_reference(value):
        raise ValueError(
            f"{value!r} is not a class reference; write package.module:Class, e.g. "
            "pipeline.contracts.models:Penguin"
        )
    return value


def _check_encoding(value: str) -> str:
    """``value`` if it names a known codec that encodes ASCII as ASCII (lines are split at
    the byte ``\\n``): utf-8, latin-1, cp1252 …; not utf-16 or utf-32."""
    try:
        info = codecs.lookup(value)
    except LookupError:
        raise ValueError(f"unknown encoding {value!r}") from None
    if info.name == "utf-8-sig":
        return value
    try:
        same = _PROBE.encode(info.name) == _PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        same = False
    if not same:
        raise ValueError(
            f"encoding {value!r} does not write line breaks as the byte \\n, which the file "
            "sources split lines at; convert the file to UTF-8 (e.g. iconv -f utf-16 -t "
            "utf-8), or use an ASCII-compatible encoding such as utf-8, latin-1 or cp1252"
        )
    return value


def _codec(encoding: str) -> tuple[str, bool]:
    """The codec to decode lines with, and whether a UTF-8 byte-order mark at the start of
    a file is skipped (it is for utf-8 and utf-8-sig)."""
    name = codecs.lookup(encoding).name
    if name in ("utf-8", "utf-8-sig"):
        return "utf-8", True
    return name, False


def _check_columns(columns: list[str] | None) -> list[str] | None:
    if columns is None:
        return None
    if not columns:
        raise ValueError("columns must not be empty")
    seen: set[str] = set()
    for column in columns:
        if column in seen:
            raise ValueError(f"column {column!r} is given twice")
        seen.add(column)
    return columns


def _checked(what: str, check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)``, its ValueError as the PipelineDefinitionError of a source built in
    code."""
    try:
        return check(value)
    except ValueError as exc:
        raise PipelineDefinitionError(f"{what}: {exc}") from None


# -- files ----------------------------------------------------------------------------------


def _files(
    pattern: str | os.PathLike[str],
    root: Path,
    *,
    allow_outside: bool,
    what: str,
    folder_suffix: str | None = None,
) -> tuple[list[Path], list[str]]:
    """The files ``pattern`` names (a path or a glob, relative to ``root``), sorted, and
    their names for records and offsets (relative to ``root`` when inside it)."""
    text = os.path.expanduser(os.fspath(pattern))
    place = f"the project folder {root}" if not allow_outside else str(root)
    full = os.path.normpath(text if os.path.isabs(text) else os.path.join(root, text))
    if glob.has_magic(text) and not os.path.isfile(full):  # (a file named x[1].csv is a file)
        fixed: list[str] = []
        for part in Path(text).parts:
            if glob.has_magic(part):
                break
            fixed.append(part)
        if not allow_outside:
            folder = Path(*fixed) if fixed else Path(".")
            try:
                inside_project(root, folder, key=_KEY)
            except OutsideProject as exc:  # named by the whole pattern
                raise OutsideProject(_KEY, text, root, (root / folder).resolve()) from exc
        found = sorted(p for p in glob.glob(full, recursive=True) if os.path.isfile(p))
        if not found:
            raise OptionError(
                _KEY,
                f"{_KEY} {os.fspath(pattern)!r} matches no file ({what} reads every "
                f"file the glob matches); put the input files there, or correct "
                f"{_KEY} (a path or a glob relative to {place})",
            )
    elif os.path.isdir(full) and folder_suffix is not None:
        found = sorted(
            entry.path
            for entry in os.scandir(full)
            if entry.is_file() and entry.name.endswith(folder_suffix) and entry.name[0] != "."
        )
        if not found:
            raise OptionError(
                _KEY,
                f"{_KEY} {os.fspath(pattern)!r} is a folder without {folder_suffix} files "
                f"({full}); put the input files there, or correct {_KEY}",
            )
    elif os.path.isdir(full):
        raise OptionError(
            _KEY,
            f"{_KEY} {os.fspath(pattern)!r} is a folder ({full}); name a file, or the files "
            f"in it with a glob such as {os.path.join(text, '*')!r}",
        )
    elif not os.path.isfile(full):
        raise OptionError(
            _KEY,
            f"{_KEY} {os.fspath(pattern)!r}: no such file ({full}); create it, or correct "
            f"{_KEY} (a path or a glob such as data/in/*.csv, relative to {place})",
        )
    else:
        found = [full]
    paths = [Path(p) for p in found]
    if not allow_outside:
        for path in paths:  # a symbolic link out of the project is refused too
            inside_project(root, path, key=_KEY)
    names = []
    for path in paths:
        try:
            names.append(path.relative_to(root).as_posix())
        except ValueError:
            names.append(str(path))
    return paths, names


def _read_span(path: Path, start: int, size: int) -> bytes:
    """``size`` bytes of ``path`` at ``start`` (without moving any open reader)."""
    pread = getattr(os, "pread", None)
    with open(path, "rb") as file:
        if pread is not None:
            return bytes(pread(file.fileno(), size, start))
        file.seek(start)
        return file.read(size)


def _raw_text(data: bytes, encoding: str, total: int) -> str:
    """A rejected line (or the lines of a record) as the dead letter keeps it: decoded,
    undecodable bytes and NULs as backslash escapes, the last line break dropped, cut at
    :data:`RAW_LIMIT` bytes."""
    text = data.decode(encoding, "backslashreplace").replace("\x00", "\\x00")
    if total > len(data):
        return f"{text}… ({total} bytes in all)"
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text


def _bad_offset(identity: str, offset: Any, why: str) -> CheckpointError:
    return CheckpointError(
        identity, f"the checkpoint's source offset {short(offset, 120)} {why}; {_FRESH}"
    )


# -- the base -------------------------------------------------------------------------------


class _FileSource(Source):
    """What the file sources share: the files, ``identity``, ``inputs()``, ``offset`` and
    ``seek()``, ``close()`` and the model."""

    rejects: ClassVar[bool] = True
    kind: ClassVar[str] = ""
    folder_suffix: ClassVar[str | None] = None
    _first: ClassVar[tuple[int, int]] = (0, 1)  # the offset of a file's start

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        model: Any,
        root: str | os.PathLike[str] | None,
        allow_outside_project: bool,
        name: str,
    ) -> None:
        self.pattern = os.fspath(path)
        self.root = Path(root if root is not None else os.getcwd()).absolute()
        self.name = name
        self.identity = f"{self.kind}:{self.pattern}"
        self.model = record_model(model, self.root, key="source.model")
        self._validate = record_validator(self.model)
        self._paths, self._names = _files(
            self.pattern,
            self.root,
            allow_outside=allow_outside_project,
            what=f"the {self.kind} source",
            folder_suffix=self.folder_suffix,
        )
        self._index = 0
        self._st: list[Any] = list(self._first)
        self._blk: list[Any] | None = None  # csv: the block being parsed
        self._start: tuple[int, int, int] = (0, *self._first)
        self._iterators: list[Iterator[Any]] = []

    # -- what it reads ---------------------------------------------------------------------

    @property
    def files(self) -> list[Path]:
        """The files read, in order."""
        return list(self._paths)

    def inputs(self) -> list[str]:
        """The files read, relative to the project folder (absolute when outside it)."""
        return list(self._names)

    def read(self) -> Self:
        """The source itself: it is its own iterable (so that its offset moves as it is read)."""
        return self

    def __iter__(self) -> Iterator[Any]:
        iterator = self._records()
        self._iterators.append(iterator)
        return iterator

    def _records(self) -> Iterator[Any]:
        """Every record (or Rejected) from :attr:`_start` on."""
        index, a, b = self._start
        for i in range(index, len(self._paths)):
            self._index = i
            start = (a, b) if i == index else self._first
            self._st, self._blk = list(start), None  # (an empty file's offset is its start)
            yield from self._read_file(i, start)

    def _read_file(self, index: int, start: tuple[int, int]) -> Iterator[Any]:
        raise NotImplementedError

    # -- where it is -----------------------------------------------------------------------

    @property
    def offset(self) -> list[Any]:
        """Where the next record comes from: ``[file, a, b]`` (see the module docstring)."""
        blk = self._blk
        if blk is not None:
            return [self._names[self._index], *self._block_offset(blk)]
        st = self._st
        return [self._names[self._index], st[0], st[1]]

    def seek(self, offset: Any) -> None:
        """Start iteration at ``offset``, a value :attr:`offset` gave (a checkpoint's)."""
        if (
            not isinstance(offset, list | tuple)
            or len(offset) != 3
            or not isinstance(offset[0], str)
            or not all(type(v) is int and v >= 0 for v in offset[1:])
        ):
            raise _bad_offset(self.identity, offset, f"is not one of a {self.kind} source")
        name, a, b = offset
        if name not in self._names:
            raise _bad_offset(
                self.identity,
                offset,
                f"is in {name}, which {_KEY} {self.pattern!r} no longer matches (the input "
                "files changed since)",
            )
        index = self._names.index(name)
        self._check_offset(self._paths[index], a, b, offset)
        self._start = (index, a, b)
        self._index, self._st, self._blk = index, [a, b], None

    def _block_offset(self, blk: list[Any]) -> tuple[int, int]:
        raise NotImplementedError

    def _check_offset(self, path: Path, a: int, b: int, offset: Any) -> None:
        """Refuse an offset that cannot be in ``path`` (the file changed since)."""

    def close(self) -> None:
        """Close the files being read."""
        for iterator in self._iterators:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except ValueError:  # it is running (in another thread): it ends by itself
                    continue
        self._iterators.clear()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pattern}>"

    # -- rejects ---------------------------------------------------------------------------

    def _rejected(self, name: str, line: int, raw: str, reason: str) -> Rejected:
        return Rejected(
            {"file": name, "line": line, "raw": raw}, SourceRecordError(f"{name}:{line}", reason)
        )


class _LineSource(_FileSource):
    """csv and jsonl: text files read line by line, offsets in bytes."""

    appends_keep_records: ClassVar[bool] = True
    """Lines appended to a file that ends with a newline add records and change none: a
    run of the longer file reads every record a run of the shorter one read."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: str,
        max_line_bytes: int,
        model: Any,
        root: str | os.PathLike[str] | None,
        allow_outside_project: bool,
        name: str,
    ) -> None:
        what = f"{type(self).__name__} {os.fspath(path)}"
        _checked(what, _check_encoding, encoding)
        if isinstance(max_line_bytes, bool) or not isinstance(max_line_bytes, int):
            raise PipelineDefinitionError(f"{what}: max_line_bytes must be an int > 0")
        if max_line_bytes < 1:
            raise PipelineDefinitionError(f"{what}: max_line_bytes must be an int > 0")
        self.encoding = encoding
        self.max_line_bytes = max_line_bytes
        self._decoding, self._skip_bom = _codec(encoding)
        super().__init__(
            path, model=model, root=root, allow_outside_project=allow_outside_project, name=name
        )

    def _check_offset(self, path: Path, a: int, b: int, offset: Any) -> None:
        size = path.stat().st_size
        if a > size:
            raise _bad_offset(
                self.identity, offset, f"is past the end of {path} ({size} bytes): it changed"
            )
        if b < 1:
            raise _bad_offset(self.identity, offset, "has no line number")
        if 0 < a < size and _read_span(path, a - 1, 1) != b"\n":
            raise _bad_offset(
                self.identity, offset, f"is not at the start of a line of {path}: it changed"
            )

    def _too_long(self, length: int) -> str:
        return (
            f"the line is longer than max_line_bytes ({self.max_line_bytes} bytes): {length} bytes"
        )

    def _reject_span(self, index: int, line: int, start: int, end: int, reason: str) -> Rejected:
        """A Rejected for the bytes ``start:end`` of file ``index`` (read back from the file)."""
        total = end - start
        data = _read_span(self._paths[index], start, min(total, RAW_LIMIT))
        raw = _raw_text(data, self._decoding, total)
        return self._rejected(self._names[index], line, raw, reason)

    def _open_at(self, file: io.BufferedReader, pos: int) -> int:
        """Position ``file`` at ``pos``; at the start of a file, past a UTF-8 byte-order
        mark (when the encoding skips one). Returns the position."""
        if pos == 0 and self._skip_bom and file.read(len(_BOM)) == _BOM:
            return len(_BOM)
        file.seek(pos)
        return pos


def _decode_reason(exc: UnicodeDecodeError, encoding: str) -> str:
    """Why a line does not decode: the codec's reason and the first bad byte."""
    bad = exc.object[exc.start : exc.start + 1]
    return f"not valid {encoding}: {exc.reason} (byte {bad!r} at column {exc.start + 1})"


def _drain(readline: Callable[[int], bytes], first: bytes) -> tuple[int, int]:
    """Read on to the end of the over-long line that began with ``first``, holding one
    MiB at a time: the bytes read after ``first``, and the line's length without its
    line break."""
    extra, chunk = 0, first
    while not chunk.endswith(b"\n"):
        chunk = readline(1 << 20)
        if not chunk:
            break
        extra += len(chunk)
    length = len(first) + extra
    return extra, length - 1 if chunk.endswith(b"\n") else length


# -- csv ------------------------------------------------------------------------------------


class _Rows:
    """How the rows of a CSV file become records: the column names, the cells read as
    ``None``, the model's validation."""

    __slots__ = ("expected", "index", "na", "names", "validate", "width")

    def __init__(
        self,
        index: int,
        names: list[str],
        expected: str,
        na: set[str],
        validate: Callable[[Any], Any] | None,
    ) -> None:
        self.index, self.names, self.width = index, names, len(names)
        self.expected, self.validate = expected, validate
        # Each cell read as None maps to None: ``na.get(cell, cell)`` is the cell's value,
        # and ``map(na.get, row, row)`` all of a row's at C speed.
        self.na: dict[str, None] = dict.fromkeys(na)

    def make(self, row: list[str]) -> Any:
        """The record of a row of the right length (may raise a ValidationError)."""
        record: Any = dict(zip(self.names, map(self.na.get, row, row)))  # noqa: B905
        return record if self.validate is None else self.validate(record)

    def miscount(self, fields: int) -> str:
        """Why a row of ``fields`` fields is rejected."""
        return f"{fields} field{'s' if fields != 1 else ''}, {self.expected}"


def _feed(
    readline: Callable[[int], bytes],
    st: list[Any],
    limit: int,
    encoding: str,
    too_long: Callable[[int], str],
) -> Iterator[str]:
    """The lines of a CSV file as text for ``csv.reader``, counting what it consumes.

    ``st`` is ``[byte offset of the next line, its line number, problem, problem's line]``:
    a line that is too long, does not decode or holds a NUL byte is passed on (as an empty
    line, decoded with replacements, without its NULs) with its problem noted, so that the
    record it belongs to is rejected whole when the reader returns it.
    """
    while True:
        line = readline(limit)
        if not line:
            return
        st[0] += len(line)
        st[1] += 1
        if len(line) == limit and line[-1] != 10:  # longer than max_line_bytes
            extra, length = _drain(readline, line)
            st[0] += extra
            if st[2] is None:
                st[2], st[3] = too_long(length), st[1] - 1
            yield "\n"
            continue
        if b"\x00" in line:
            if st[2] is None:
                st[2], st[3] = f"a NUL byte at column {line.index(0) + 1}", st[1] - 1
            line = line.replace(b"\x00", b"")
        try:
            yield line.decode(encoding)
        except UnicodeDecodeError as exc:
            if st[2] is None:
                st[2], st[3] = _decode_reason(exc, encoding), st[1] - 1
            yield line.decode(encoding, "replace")


class CsvSource(_LineSource):
    """Read CSV files: one record per row, a dict of the columns' text (``na_values`` as
    ``None``), or an instance of ``model``.

    The columns are named by the first row of each file (``header``), or by ``columns``
    (which, with ``header``, replace the names the first row gives). A quoted field may span
    lines: its record has the line number of its first line. Rows are parsed with the
    ``csv`` module's ``dialect`` (``excel`` by default; ``delimiter``/``quotechar`` change
    it) in ``strict`` mode: a quote that is not closed by the end of the file, or a
    character after a closing quote, is an error (rejected, with the lines it took). An
    unclosed quote takes the lines after it into its field, up to the ``csv`` module's field
    size limit (128 KiB): that record is rejected whole. Blank lines are skipped.

    Rejected (the rest flows on): a row with another number of fields than there are
    columns; a line that does not decode in ``encoding`` (line by line: a bad line does not
    spoil the file), holds a NUL byte or is longer than ``max_line_bytes``; a quoting
    error; a record that does not fit ``model`` (each field and its error, in one line).
    Lines end with ``\\n`` or ``\\r\\n``; a UTF-8 byte-order mark at the start of a file is
    skipped.

    ``offset``: ``[file, byte offset of the next line, its line number]``.

    >>> import tempfile, pathlib
    >>> from pydantic import BaseModel
    >>> class Row(BaseModel):
    ...     id: int
    ...     mass: float | None
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.csv").write_text("id;mass\\n1;3.5\\n2;\\nx;1\\n")
    >>> for item in CsvSource("a.csv", root=folder, delimiter=";", model=Row):
    ...     print(getattr(item, "error", item))
    id=1 mass=3.5
    id=2 mass=None
    a.csv:4: field 'id': Input should be a valid integer, ... (got 'x')
    """

    kind: ClassVar[str] = "csv"

    class Config(_Options):
        """The options of a ``csv`` source (``source: {connector: csv, path: ...}``)."""

        path: str = _path_field()
        header: bool = Field(
            True, description="The first row of each file names the columns (false: give columns)."
        )
        columns: list[str] | None = Field(
            None,
            description="The column names, in order (required without header; with header "
            "they replace the names of the first row).",
        )
        dialect: Literal["excel", "excel-tab", "unix"] | None = Field(
            None, description="The csv module's dialect (default excel: comma, double quotes)."
        )
        delimiter: str | None = Field(
            None, description="The one character between fields (default: the dialect's)."
        )
        quotechar: str | None = Field(
            None, description="The one character quoting fields (default: the dialect's)."
        )
        strict: bool = Field(
            True,
            description="Reject rows with quoting errors (an unclosed quote at the end of "
            "the file, text after a closing quote); false: read them as the csv module "
            "does by default.",
        )
        encoding: str = Field(
            "utf-8",
            description="The text encoding of the files (ASCII-compatible: utf-8, latin-1, "
            "cp1252 …); a line that does not decode is rejected.",
        )
        na_values: list[str] = Field(
            list(DEFAULT_NA_VALUES),
            description="Cells read as None (exact matches); [] keeps every cell as text.",
        )
        model: str | None = _model_field()
        max_line_bytes: int = _max_line_field()
        allow_outside_project: bool = _outside_field()

        @field_validator("encoding")
        @classmethod
        def _known_encoding(cls, value: str) -> str:
            return _check_encoding(value)

        @field_validator("model")
        @classmethod
        def _reference(cls, value: str | None) -> str | None:
            return _check_model_ref(value)

        @field_validator("columns")
        @classmethod
        def _distinct(cls, value: list[str] | None) -> list[str] | None:
            return _check_columns(value)

        @field_validator("delimiter", "quotechar")
        @classmethod
        def _one_character(cls, value: str | None) -> str | None:
            if value is not None and len(value) != 1:
                raise ValueError(f"must be one character, got {value!r}")
            return value

        @model_validator(mode="after")
        def _named(self) -> Self:
            if not self.header and self.columns is None:
                raise ValueError("without a header (header: false), columns must name the columns")
            return self

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        header: bool = True,
        columns: Sequence[str] | None = None,
        dialect: str | None = None,
        delimiter: str | None = None,
        quotechar: str | None = None,
        strict: bool = True,
        encoding: str = "utf-8",
        na_values: Sequence[str] = DEFAULT_NA_VALUES,
        model: Any = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        root: str | os.PathLike[str] | None = None,
        allow_outside_project: bool = True,
        name: str = "source",
    ) -> None:
        what = f"CsvSource {os.fspath(path)}"
        fixed = _checked(what, _check_columns, None if columns is None else list(columns))
        if not header and fixed is None:
            raise PipelineDefinitionError(
                f"{what}: without a header (header=False), columns must name the columns"
            )
        params: dict[str, Any] = {"strict": strict}
        if delimiter is not None:
            params["delimiter"] = delimiter
        if quotechar is not None:
            params["quotechar"] = quotechar
        try:
            csv.reader([], dialect or "excel", **params)
        except (csv.Error, TypeError) as exc:
            raise PipelineDefinitionError(f"{what}: {exc}") from None
        self.header = header
        self.columns = fixed
        self.dialect = dialect or "excel"
        self._format: dict[str, Any] = params
        self.na_values = list(na_values)
        super().__init__(
            path,
            encoding=encoding,
            max_line_bytes=max_line_bytes,
            model=model,
            root=root,
            allow_outside_project=allow_outside_project,
            name=name,
        )

    @classmethod
    def from_config(cls, config: CsvSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes, its paths inside the project
        (unless ``allow_outside_project``), its model imported from the project."""
        return cls(
            config.path,
            header=config.header,
            columns=config.columns,
            dialect=config.dialect,
            delimiter=config.delimiter,
            quotechar=config.quotechar,
            strict=config.strict,
            encoding=config.encoding,
            na_values=config.na_values,
            model=config.model,
            max_line_bytes=config.max_line_bytes,
            root=root,
            allow_outside_project=config.allow_outside_project,
            name="source",
        )

    def _reader(self, file: io.BufferedReader, st: list[Any]) -> Any:
        lines = _feed(file.readline, st, self.max_line_bytes + 1, self._decoding, self._too_long)
        return csv.reader(lines, self.dialect, **self._format)

    def _header(self, index: int, file: io.BufferedReader) -> tuple[list[str], list[Any]]:
        """The file's column names from its first row (``[]``: the file is empty), and
        ``st`` after it."""
        st: list[Any] = [self._open_at(file, 0), 1, None, 0]
        reader = self._reader(file, st)
        name = self._names[index]
        while True:
            line = st[1]
            try:
                row = next(reader)
            except StopIteration:
                return [], st
            except csv.Error as exc:
                st[2] = st[2] or f"invalid CSV: {exc}"
                row = None
            if st[2] is not None or row is None:
                raise SourceRecordError(
                    f"{name}:{line}",
                    f"the header row cannot be read: {st[2]}; fix the file, or set header: "
                    "false and give columns",
                )
            if row:
                break
        if self.columns is None:
            seen: set[str] = set()
            for column in row:
                if column in seen:
                    raise SourceRecordError(
                        f"{name}:{line}",
                        f"the header names column {column!r} twice; rename one, or give "
                        "columns (they replace the header's names)",
                    )
                seen.add(column)
        return row, st

    def _read_file(self, index: int, start: tuple[int, int]) -> Iterator[Any]:
        """The records of file ``index`` from ``start`` on.

        The file is read in blocks of whole lines: a block without NUL bytes that decodes
        is parsed at once by ``csv.reader`` over its text (:meth:`_block`; its offsets are
        worked out when asked for, from the reader's line count). A block that does not
        decode or holds a NUL byte, a line longer than a block, a record that goes on past
        its block, and every line with ``strict`` off, are read line by line
        (:meth:`_lines`), which notes each line's problem and byte offset as it goes.
        """
        with open(self._paths[index], "rb") as file:
            pos, line = start
            found: list[str] = []
            if self.header:
                found, st = self._header(index, file)
                if not found:  # an empty file
                    self._st = st
                    return
                if pos == 0:
                    pos, line = st[0], st[1]
            elif pos == 0:
                pos = self._open_at(file, 0)
            names = self.columns if self.columns is not None else found
            expected = f"expected {len(names)} ({', '.join(names)})"
            if len(expected) > 60:
                expected = f"expected {len(names)}"
            context = _Rows(index, names, expected, set(self.na_values), self._validate)
            blocks = self._format["strict"]  # (without strict, a cut-off record is unseen)
            size = min(_BLOCK, self.max_line_bytes + 1)
            while True:
                self._blk, self._st = None, [pos, line]
                until = -1  # the line-by-line part goes on to EOF (-1) or past this byte
                if blocks:
                    file.seek(pos)
                    data = file.read(size)
                    if not data:
                        return
                    cut = data.rfind(b"\n") + 1
                    text = None
                    if cut:
                        complete = data[:cut] if cut < len(data) else data
                        if b"\x00" not in complete:
                            try:
                                text = complete.decode(self._decoding)
                            except UnicodeDecodeError:
                                text = None
                    if text is None:
                        until = pos + max(cut, 1)
                    else:
                        blk = [pos, line, None, None, complete, None, index, complete.isascii()]
                        done = yield from self._block(blk, text, context)
                        self._blk = None
                        if done is None:  # all of the block
                            pos, line = pos + cut, line + complete.count(b"\n")
                            continue
                        # the record from line `done` of the block on is read line by line
                        pos, line = pos + self._line_end(blk, done), line + done
                        until = pos + 1
                        self._st = [pos, line]
                file.seek(pos)
                pos, line, ended = yield from self._lines(file, pos, line, until, context)
                if ended:
                    return

    def _block(self, blk: list[Any], text: str, rows: _Rows) -> Generator[Any, None, int | None]:
        """The records of a block of whole lines (``blk``: its byte offset, its first line's
        number, its text's StringIO and reader, its bytes, their line ends, the file's
        index, whether it is ASCII). Returns ``None`` once every line is read, or the
        number of lines before a record that may go on past the block."""
        lines = blk[2] = io.StringIO(text, newline="\n")
        reader = blk[3] = csv.reader(lines, self.dialect, **self._format)
        self._blk = blk
        names, width, validate = rows.names, rows.width, rows.validate
        cell = rows.na.get if rows.na else None
        last = 0  # the lines of the block before the current record
        # (the rows' lengths are checked before zip: a strict= keyword would cost per row)
        while True:
            try:
                for row in reader:
                    if len(row) == width:
                        if cell is not None:
                            record: Any = dict(zip(names, map(cell, row, row)))  # noqa: B905
                        else:
                            record = dict(zip(names, row))  # noqa: B905
                        if validate is not None:
                            try:
                                record = validate(record)
                            except ValidationError as exc:
                                taken = reader.line_num
                                yield self._block_reject(blk, last, taken, validation_reason(exc))
                                last = taken
                                continue
                        last = reader.line_num
                        yield record
                    elif row:
                        taken = reader.line_num
                        yield self._block_reject(blk, last, taken, rows.miscount(len(row)))
                        last = taken
                    else:  # a blank line
                        last = reader.line_num
                return None
            except csv.Error as exc:
                taken = reader.line_num
                if taken >= blk[4].count(b"\n"):  # at the block's end: it may go on past it
                    return last
                yield self._block_reject(blk, last, taken, f"invalid CSV: {exc}")
                last = taken

    def _lines(
        self,
        file: io.BufferedReader,
        pos: int,
        line: int,
        until: int,
        rows: _Rows,
    ) -> Generator[Any, None, tuple[int, int, bool]]:
        """Records read line by line from byte ``pos`` (line ``line``) until one ends at or
        past byte ``until`` (``-1``: to the end of the file). Returns where it stopped and
        whether that is the end of the file."""
        index, width, make = rows.index, rows.width, rows.make
        st: list[Any] = [pos, line, None, 0]
        self._st = st
        next_row = self._reader(file, st).__next__
        while True:
            begin, first = st[0], st[1]
            try:
                row = next_row()
            except StopIteration:
                return st[0], st[1], True
            except csv.Error as exc:
                reason = st[2] or f"invalid CSV: {exc}"
                yield self._problem(index, first, begin, st, reason)
            else:
                if st[2] is not None:
                    yield self._problem(index, first, begin, st, st[2])
                elif len(row) == width:
                    try:
                        record = make(row)
                    except ValidationError as exc:
                        yield self._problem(index, first, begin, st, validation_reason(exc))
                    else:
                        yield record
                elif row:
                    yield self._problem(index, first, begin, st, rows.miscount(len(row)))
            if 0 <= until <= st[0]:
                return st[0], st[1], False

    def _problem(self, index: int, line: int, begin: int, st: list[Any], reason: str) -> Rejected:
        """The Rejected for the record of lines ``line…`` (bytes ``begin`` to ``st[0]``); a
        problem noted on a later line of it names that line."""
        if st[2] is not None and st[3] != line:
            reason = f"line {st[3]}: {reason}"
        st[2] = None
        return self._reject_span(index, line, begin, st[0], reason)

    # -- blocks ----------------------------------------------------------------------------

    @staticmethod
    def _line_end(blk: list[Any], lines: int) -> int:
        """The byte offset, in a block, after its first ``lines`` lines."""
        if not lines:
            return 0
        ends = blk[5]
        if ends is None:  # worked out once per block, when first needed
            ends = blk[5] = list(itertools.accumulate(map(len, blk[4].split(b"\n"))))
        end: int = ends[lines - 1] + lines
        return end

    def _block_offset(self, blk: list[Any]) -> tuple[int, int]:
        """``(byte offset, line number)`` after what the reader of a block has read."""
        pos, line, lines, reader = blk[0], blk[1], blk[2], blk[3]
        taken = reader.line_num
        if blk[7]:  # ASCII: the text's offset is the bytes'
            return pos + lines.tell(), line + taken
        return pos + self._line_end(blk, taken), line + taken

    def _block_reject(self, blk: list[Any], first: int, end: int, reason: str) -> Rejected:
        """The Rejected for lines ``first`` to ``end`` (0-based, end excluded) of a block."""
        data: bytes = blk[4]
        start = self._line_end(blk, first)
        stop = self._line_end(blk, end)
        raw = _raw_text(data[start : min(stop, start + RAW_LIMIT)], self._decoding, stop - start)
        return self._rejected(self._names[blk[6]], blk[1] + first, raw, reason)


# -- jsonl ----------------------------------------------------------------------------------

_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number"}


class JsonlSource(_LineSource):
    """Read JSON Lines files: one JSON object per line, a dict (or an instance of
    ``model``).

    Blank lines are skipped (they are no record, and no position). Rejected (the rest
    flows on): a line that does not decode in ``encoding``, is not valid JSON (a NUL byte,
    a truncated line), holds a value that is not an object, is nested too deeply for the
    parser, holds an integer of more digits than Python converts
    (``sys.get_int_max_str_digits()``), is longer than ``max_line_bytes``, or does not fit
    ``model``.

    ``offset``: ``[file, byte offset of the next line, its line number]``.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "a.jsonl").write_text('{"id": 1}\\n\\n[2]\\n{"id": 3')
    >>> for item in JsonlSource("a.jsonl", root=folder):
    ...     print(getattr(item, "record", item))
    ...     print(getattr(item, "error", "-"))
    {'id': 1}
    -
    {'file': 'a.jsonl', 'line': 3, 'raw': '[2]'}
    a.jsonl:3: an array, not a JSON object
    {'file': 'a.jsonl', 'line': 4, 'raw': '{"id": 3'}
    a.jsonl:4: invalid JSON: Expecting ',' delimiter at column 9
    """

    kind: ClassVar[str] = "jsonl"

    class Config(_Options):
        """The options of a ``jsonl`` source (``source: {connector: jsonl, path: ...}``)."""

        path: str = _path_field()
        encoding: str = Field(
            "utf-8",
            description="The text encoding of the files (ASCII-compatible); a line that "
            "does not decode is rejected.",
        )
        model: str | None = _model_field()
        max_line_bytes: int = _max_line_field()
        allow_outside_project: bool = _outside_field()

        @field_validator("encoding")
        @classmethod
        def _known_encoding(cls, value: str) -> str:
            return _check_encoding(value)

        @field_validator("model")
        @classmethod
        def _reference(cls, value: str | None) -> str | None:
            return _check_model_ref(value)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        encoding: str = "utf-8",
        model: Any = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        root: str | os.PathLike[str] | None = None,
        allow_outside_project: bool = True,
        name: str = "source",
    ) -> None:
        super().__init__(
            path,
            encoding=encoding,
            max_line_bytes=max_line_bytes,
            model=model,
            root=root,
            allow_outside_project=allow_outside_project,
            name=name,
        )

    @classmethod
    def from_config(cls, config: JsonlSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes (see :meth:`CsvSource.from_config`)."""
        return cls(
            config.path,
            encoding=config.encoding,
            model=config.model,
            max_line_bytes=config.max_line_bytes,
            root=root,
            allow_outside_project=config.allow_outside_project,
        )

    def _read_file(self, index: int, start: tuple[int, int]) -> Iterator[Any]:
        path, name = self._paths[index], self._names[index]
        limit = self.max_line_bytes + 1
        encoding = self._decoding
        validate = self._validate
        loads = json.loads
        with open(path, "rb") as file:
            st = self._st = [self._open_at(file, start[0]), start[1]]
            readline = file.readline
            while True:
                line = readline(limit)
                if not line:
                    return
                st[0] += len(line)
                st[1] += 1
                if len(line) == limit and line[-1] != 10:
                    extra, length = _drain(readline, line)
                    st[0] += extra
                    yield self._rejected(
                        name,
                        st[1] - 1,
                        _raw_text(line[:RAW_LIMIT], encoding, len(line) + extra),
                        self._too_long(length),
                    )
                    continue
                try:
                    text = line.decode(encoding)
                    value = loads(text)
                except UnicodeDecodeError as exc:
                    reason = _decode_reason(exc, encoding)
                except RecursionError:
                    reason = "nested too deeply to parse (arrays or objects inside each other)"
                except json.JSONDecodeError as exc:
                    if text.isspace() or not text:
                        continue  # a blank line
                    column = min(exc.pos, len(text.rstrip("\r\n"))) + 1
                    reason = f"invalid JSON: {exc.msg.removesuffix(' at')} at column {column}"
                except ValueError as exc:  # an integer of too many digits
                    reason = f"invalid JSON: {' '.join(str(exc).split(';')[0].split())}"
                else:
                    if type(value) is not dict:
                        kind = "null" if value is None else _JSON_TYPES.get(type(value))
                        kind = kind or ("a boolean" if isinstance(value, bool) else "a value")
                        reason = f"{kind}, not a JSON object"
                    elif validate is None:
                        yield value
                        continue
                    else:
                        try:
                            yield validate(value)
                            continue
                        except ValidationError as exc:
                            reason = validation_reason(exc)
                yield self._rejected(
                    name, st[1] - 1, _raw_text(line[:RAW_LIMIT], encoding, len(line)), reason
                )


# -- parquet --------------------------------------------------------------------------------


def _pyarrow() -> tuple[Any, Any]:
    return pyarrow_modules("the parquet source", "the csv or jsonl source")


class ParquetSource(_FileSource):
    """Read Parquet files (a file, a glob, or a folder of ``*.parquet`` files such as a
    ``parquet`` sink writes): one record per row, a dict (``pyarrow``'s ``to_pylist``), or
    an instance of ``model``.

    Streamed by row group, ``batch_rows`` rows at a time: memory stays bounded by a row
    group and a batch of records, whatever the size of the files. ``columns`` reads only
    those. A row that does not fit ``model`` is rejected: its dead letter's ``line`` is the
    row's number in the file (1-based) and ``raw`` the row as JSON. A file that is not
    Parquet, or lacks a column of ``columns``, stops the run (it cannot be read at all).

    ``offset``: ``[file, row group, row within the group]``. Needs pyarrow
    (``pip install 'conveyor[parquet]'``).

    >>> import tempfile, pathlib
    >>> import pyarrow as pa, pyarrow.parquet as pq
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> pq.write_table(pa.table({"id": [1, 2, 3]}), folder / "a.parquet", row_group_size=2)
    >>> source = ParquetSource("a.parquet", root=folder)
    >>> for row in source:
    ...     print(row, source.offset)
    {'id': 1} ['a.parquet', 0, 1]
    {'id': 2} ['a.parquet', 0, 2]
    {'id': 3} ['a.parquet', 1, 1]
    """

    kind: ClassVar[str] = "parquet"
    folder_suffix: ClassVar[str | None] = ".parquet"
    _first: ClassVar[tuple[int, int]] = (0, 0)

    class Config(_Options):
        """The options of a ``parquet`` source (``source: {connector: parquet, path: ...}``)."""

        path: str = Field(
            description="The file to read, a glob matching several (data/in/*.parquet) or a "
            "folder of .parquet files, read in sorted order; relative to the project folder."
        )
        columns: list[str] | None = Field(None, description="Read only these columns.")
        batch_rows: int = Field(
            10_000, gt=0, description="Rows decoded at a time (memory: a row group and a batch)."
        )
        model: str | None = _model_field()
        allow_outside_project: bool = _outside_field()

        @field_validator("model")
        @classmethod
        def _reference(cls, value: str | None) -> str | None:
            return _check_model_ref(value)

        @field_validator("columns")
        @classmethod
        def _distinct(cls, value: list[str] | None) -> list[str] | None:
            return _check_columns(value)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Sequence[str] | None = None,
        batch_rows: int = 10_000,
        model: Any = None,
        root: str | os.PathLike[str] | None = None,
        allow_outside_project: bool = True,
        name: str = "source",
    ) -> None:
        what = f"ParquetSource {os.fspath(path)}"
        self.columns = _checked(what, _check_columns, None if columns is None else list(columns))
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise PipelineDefinitionError(f"{what}: batch_rows must be an int > 0")
        self.batch_rows = batch_rows
        _pyarrow()  # fail when the source is built, not when the run reads it
        super().__init__(
            path, model=model, root=root, allow_outside_project=allow_outside_project, name=name
        )

    @classmethod
    def from_config(cls, config: ParquetSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes (see :meth:`CsvSource.from_config`)."""
        return cls(
            config.path,
            columns=config.columns,
            batch_rows=config.batch_rows,
            model=config.model,
            root=root,
            allow_outside_project=config.allow_outside_project,
        )

    def _open(self, index: int) -> Any:
        """The ``ParquetFile`` of file ``index``, its columns checked."""
        _, pq = _pyarrow()
        name = self._names[index]
        try:
            parquet = pq.ParquetFile(self._paths[index])
        except Exception as exc:  # pyarrow's ArrowInvalid, OSError …
            raise SourceRecordError(
                name, f"cannot be read as Parquet ({type(exc).__name__}: {exc}); fix or remove it"
            ) from exc
        if self.columns is not None:
            have = parquet.schema_arrow.names
            missing = [c for c in self.columns if c not in have]
            if missing:
                parquet.close()
                raise SourceRecordError(
                    name,
                    f"has no column {missing[0]!r} of source.columns (it has: "
                    f"{', '.join(have)}); correct columns",
                )
        return parquet

    def _block_offset(self, blk: list[Any]) -> tuple[int, int]:
        """``(row group, row)`` after what the iterator of a batch's rows has given."""
        st, count, rows = blk
        return st[0], st[1] + count - rows.__length_hint__()

    def _check_offset(self, path: Path, a: int, b: int, offset: Any) -> None:
        parquet = self._open(self._paths.index(path))
        try:
            meta = parquet.metadata
            groups = meta.num_row_groups
            if a > groups or (a < groups and b > meta.row_group(a).num_rows):
                raise _bad_offset(
                    self.identity, offset, f"is past the rows of {path}: the file changed"
                )
        finally:
            parquet.close()

    def _rows_of(self, parquet: Any, index: int, group: int, skip: int) -> Iterator[list[Any]]:
        """The rows of row group ``group`` from row ``skip`` on, a batch at a time; a group
        that cannot be read (a damaged file) stops the run with the file's name."""
        batches = iter(
            parquet.iter_batches(
                batch_size=self.batch_rows, row_groups=[group], columns=self.columns
            )
        )
        while True:
            try:
                batch = next(batches)
                if skip:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    batch, skip = batch.slice(skip), 0
                rows: list[Any] = batch.to_pylist()
            except StopIteration:
                return
            except Exception as exc:  # OSError, ArrowInvalid, UnicodeDecodeError …
                raise SourceRecordError(
                    self._names[index],
                    f"row group {group} cannot be read ({type(exc).__name__}: {exc}); the "
                    "file is damaged: restore it, or remove it",
                ) from exc
            yield rows

    def _read_file(self, index: int, start: tuple[int, int]) -> Iterator[Any]:
        name = self._names[index]
        validate = self._validate
        parquet = self._open(index)
        try:
            meta = parquet.metadata
            before = sum(meta.row_group(g).num_rows for g in range(start[0]))
            for group in range(start[0], meta.num_row_groups):
                skip = start[1] if group == start[0] else 0
                st = self._st = [group, skip]
                for rows in self._rows_of(parquet, index, group, skip):
                    if validate is None:
                        # offset: st[1] plus what the iterator gave (see _block_offset)
                        self._blk = [st, len(rows), iter(rows)]
                        yield from self._blk[2]
                        self._blk = None
                        st[1] += len(rows)
                        continue
                    for row in rows:
                        st[1] += 1
                        try:
                            yield validate(row)
                        except ValidationError as exc:
                            raw = json.dumps(row, default=str, ensure_ascii=False)
                            yield self._rejected(
                                name,
                                before + st[1],
                                raw[:RAW_LIMIT],
                                validation_reason(exc),
                            )
                before += meta.row_group(group).num_rows
        finally:
            parquet.close()
