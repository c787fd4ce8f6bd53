"""Persisted stage outputs: sharded Parquet or JSONL datasets with a manifest (ADR 0003).

A *dataset* is a directory of shards (``part-00000.jsonl``, ``part-00001.jsonl`` … or
``part-NNNNN.parquet``) and a ``_manifest.json`` that lists them with their record counts,
sizes and sha256 hashes. :class:`DatasetWriter` writes one into a temporary sibling
directory and renames it into place on :meth:`~DatasetWriter.commit`, so a failed run never
leaves a half-written dataset behind and the previous dataset stays intact until the new
one is complete. :func:`read_dataset` streams the records back shard by shard, and
:func:`dataset_fingerprint` gives the content hash that the run cache compares.

>>> import tempfile
>>> from pathlib import Path
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = Path(tmp) / "data" / "processed"
...     with DatasetWriter(path, "jsonl", shard_records=2) as sink:
...         sink([{"id": 1, "tags": ["a"]}, {"id": 2, "tags": []}])
...         sink([{"id": 3, "tags": ["b", "c"]}])
...     records = list(read_dataset(path))
...     manifest = load_manifest(path)
>>> records
[{'id': 1, 'tags': ['a']}, {'id': 2, 'tags': []}, {'id': 3, 'tags': ['b', 'c']}]
>>> [(shard.name, shard.records) for shard in manifest.shards]
[('part-00000.jsonl', 2), ('part-00001.jsonl', 1)]
>>> manifest.total_records
3

Parquet needs the optional extra (``pip install 'conveyor[parquet]'``); pyarrow is imported
only when a Parquet dataset is written or read. JSONL needs nothing beyond the standard
library. Parquet stores columns: the records of a shard share the union of their top-level
fields, and a field a record lacks reads back as ``None``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, TypeGuard, get_args

from conveyor.connectors._records import row_of
from conveyor.contracts._base import Contract
from conveyor.core._durable import fsync_dir
from conveyor.core._lazy import pyarrow_modules
from conveyor.errors import ContractViolation, ConveyorError, UsageError

__all__ = [
    "MANIFEST_NAME",
    "DatasetError",
    "DatasetFormat",
    "DatasetManifest",
    "DatasetWriter",
    "ShardInfo",
    "dataset_fingerprint",
    "load_manifest",
    "read_dataset",
]

DatasetFormat = Literal["parquet", "jsonl"]
"""The formats a dataset can be written in."""

MANIFEST_NAME: Final = "_manifest.json"
"""The file in a dataset directory that lists its shards."""

MANIFEST_VERSION: Final = 1
_FORMATS: Final[tuple[str, ...]] = get_args(DatasetFormat)
_SUFFIX: Final[dict[str, str]] = {"parquet": ".parquet", "jsonl": ".jsonl"}
_HASH_CHUNK: Final = 1 << 20
_READ_BATCH: Final = 10_000


class DatasetError(ConveyorError, ValueError):
    """A dataset on disk is broken: its manifest is unreadable or does not match its shards.

    Attributes:
        path: the dataset directory.
        detail: what is wrong.
    """

    def __init__(self, path: Path, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"dataset {path} is corrupt: {detail}; delete it and run the stage that writes it again"
        )

    def __reduce__(self) -> tuple[type[DatasetError], tuple[Path, str]]:
        return (type(self), (self.path, self.detail))


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One shard of a dataset as the manifest lists it."""

    name: str
    records: int
    bytes: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class DatasetManifest:
    """The parsed ``_manifest.json`` of a dataset."""

    format: DatasetFormat
    shards: tuple[ShardInfo, ...]
    total_records: int

    def to_json(self) -> dict[str, Any]:
        """The manifest as the JSON object written to disk."""
        return {
            "version": MANIFEST_VERSION,
            "format": self.format,
            "total_records": self.total_records,
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
        }


# --------------------------------------------------------------------------- pyarrow


def _pyarrow() -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet``, imported on first use, with the fix if absent."""
    return pyarrow_modules("Parquet datasets", "format 'jsonl'")


# --------------------------------------------------------------------------- writing


def _check_format(format: str) -> DatasetFormat:
    if format not in _FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; expected one of {list(_FORMATS)}")
    return format  # type: ignore[return-value]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DatasetWriter:
    """Write records into a sharded dataset at ``path``, atomically.

    Call the writer with lists of records (it is a sync sink for the runner's micro-batches);
    every ``shard_records`` records close a shard. Everything goes into a temporary sibling
    directory ``<path>.tmp-<uuid>/``; :meth:`commit` writes the manifest and renames it to
    ``path``, replacing the dataset that was there, and :meth:`abort` removes it, leaving
    any old dataset untouched. Used as a context manager the writer commits when the block
    succeeds and aborts when it raises.

    ``path`` must not be anything but a dataset: an existing directory without a
    ``_manifest.json`` (hand-made input files, say) is never replaced, and :meth:`commit`
    raises :class:`FileExistsError` instead.

    Records are dicts of JSON-able values. Parquet (pyarrow) also takes ``bytes`` and
    infers one column type per field and shard; JSONL takes what :func:`json.dumps` takes.

    With ``append=True`` (a replay of dead letters adding its records to a dataset) the
    records go into *new* shards: :meth:`commit` moves them next to the existing ones and
    then replaces the manifest atomically, so readers see either the old dataset or the
    old one plus every new shard, never a part. Appending to a dataset of another format
    is refused; appending where there is no dataset yet writes a new one.
    """

    def __init__(
        self,
        path: Path | str,
        format: DatasetFormat,
        *,
        shard_records: int = 100_000,
        append: bool = False,
    ) -> None:
        self.path = Path(path)
        self.format: DatasetFormat = _check_format(format)
        if isinstance(shard_records, bool) or not isinstance(shard_records, int):
            raise TypeError(f"shard_records must be an int, got {type(shard_records).__name__}")
        if shard_records < 1:
            raise ValueError(f"shard_records must be >= 1, got {shard_records}")
        self.shard_records = shard_records
        if self.format == "parquet":
            _pyarrow()  # fail at construction, not after the first shard of a long run
        self.tmp_path = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex}")
        self._base: DatasetManifest | None = None
        if append and (self.path / MANIFEST_NAME).exists():
            self._base = load_manifest(self.path)
            if self._base.format != self.format:
                raise DatasetError(
                    self.path,
                    f"it holds {self._base.format} shards and cannot be appended to as "
                    f"{self.format}",
                )
        self._first_shard = _next_shard_number(self._base)
        self._shards: list[ShardInfo] = []
        self._buffer: list[dict[str, Any]] = []  # Parquet: the current shard's records
        self._file: IO[str] | None = None  # JSONL: the current shard's open file
        self._in_shard = 0  # records in the current shard
        self._state: Literal["open", "committed", "aborted"] = "open"

    # -- sink protocol -----------------------------------------------------------------

    def __call__(self, records: Sequence[Any]) -> None:
        """Append a micro-batch of records."""
        self.write(records)

    def write(self, records: Sequence[Any]) -> None:
        """Append ``records`` (dicts, Pydantic models or dataclasses), closing a shard every
        ``shard_records``.

        All or nothing: every record is checked (and, for JSONL, encoded) before any is
        written, so a write that fails can be retried, or split, without writing a record
        twice.
        """
        self._check_open("write")
        lines: list[str] | None = [] if self.format == "jsonl" else None
        rows: list[Mapping[str, Any]] = []
        for index, record in enumerate(records):
            try:
                row = _row(record)
                if lines is not None:
                    lines.append(_json_line(row))
                rows.append(row)
            except (TypeError, ValueError):
                reason = self.problem(record)
                raise TypeError(
                    f"dataset {self.path}: record {index} of the batch: {reason}"
                ) from None
        for index, row in enumerate(rows):
            if lines is not None:
                self._write_line(lines[index])
            else:
                self._buffer.append(dict(row))
            self._in_shard += 1
            if self._in_shard >= self.shard_records:
                self._close_shard()

    def problem(self, record: object) -> str | None:
        """Why ``record`` cannot be written here, or ``None`` when it can."""
        try:
            record = _row(record)
        except TypeError as exc:
            return str(exc)
        if self.format == "jsonl":
            try:
                _json_line(record)
            except (TypeError, ValueError) as exc:
                return (
                    f"cannot be written as JSON ({exc}); JSONL takes JSON values only "
                    "(use format 'parquet' for bytes)"
                )
        return None

    @property
    def records_written(self) -> int:
        """How many records were written so far."""
        return sum(shard.records for shard in self._shards) + self._in_shard

    # -- commit / abort ----------------------------------------------------------------

    def commit(self) -> DatasetManifest:
        """Close the last shard, write the manifest and move the dataset to ``path``.

        An old dataset at ``path`` is replaced; if the move fails it is put back.
        Returns the manifest written.
        """
        self._check_open("commit")
        try:
            self._close_shard()
            self._ensure_tmp()
            shards = (*(self._base.shards if self._base else ()), *self._shards)
            manifest = DatasetManifest(
                format=self.format,
                shards=shards,
                total_records=sum(shard.records for shard in shards),
            )
            if self._base is not None:
                self._append_into_place(manifest)
            else:
                _write_manifest(self.tmp_path / MANIFEST_NAME, manifest)
                self._replace()
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        return manifest

    def abort(self) -> None:
        """Drop everything written; the dataset at ``path`` (if any) is left as it was."""
        if self._state == "committed":
            raise UsageError(f"dataset writer for {self.path} was already committed")
        self._state = "aborted"
        self._buffer.clear()
        if self._file is not None:
            self._file.close()
            self._file = None
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != "open":
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"<DatasetWriter {str(self.path)!r} {self.format} {self._state}>"

    # -- internals ---------------------------------------------------------------------

    def _check_open(self, action: str) -> None:
        if self._state != "open":
            raise UsageError(
                f"cannot {action}: dataset writer for {self.path} was already {self._state}"
            )

    def _ensure_tmp(self) -> None:
        self.tmp_path.mkdir(parents=True, exist_ok=True)

    def _shard_path(self) -> Path:
        number = self._first_shard + len(self._shards)
        return self.tmp_path / f"part-{number:05d}{_SUFFIX[self.format]}"

    def _append_into_place(self, manifest: DatasetManifest) -> None:
        """Move the new shards into the dataset, then switch the manifest atomically."""
        listed = {shard.name for shard in manifest.shards}
        for stray in self.path.glob("part-*"):  # left by an append that never committed
            if stray.name not in listed:
                stray.unlink()
        for shard in self._shards:
            (self.tmp_path / shard.name).rename(self.path / shard.name)
        fsync_dir(self.path, best_effort=True)
        staged = self.path / f".{MANIFEST_NAME}.{uuid.uuid4().hex}.tmp"
        _write_manifest(staged, manifest)
        os.replace(staged, self.path / MANIFEST_NAME)
        fsync_dir(self.path, best_effort=True)
        shutil.rmtree(self.tmp_path, ignore_errors=True)

    def _write_line(self, line: str) -> None:
        if self._file is None:
            self._ensure_tmp()
            self._file = self._shard_path().open("w", encoding="utf-8", newline="\n")
        self._file.write(line)
        self._file.write("\n")

    def _close_shard(self) -> None:
        if self._in_shard == 0:
            return
        shard_path = self._shard_path()
        if self.format == "jsonl":
            assert self._file is not None
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        else:
            self._ensure_tmp()
            self._write_parquet(shard_path, self._buffer)
            self._buffer = []
        self._shards.append(
            ShardInfo(
                name=shard_path.name,
                records=self._in_shard,
                bytes=shard_path.stat().st_size,
                sha256=_sha256_file(shard_path),
            )
        )
        self._in_shard = 0

    def _write_parquet(self, shard_path: Path, records: list[dict[str, Any]]) -> None:
        pa, pq = _pyarrow()
        # Table.from_pylist takes its columns from the first record only: use the union.
        columns: dict[str, None] = {}
        for record in records:
            columns.update(dict.fromkeys(record))
        if not columns:
            raise ValueError(
                f"dataset {self.path}: Parquet cannot store records without fields; "
                "use format 'jsonl'"
            )
        try:
            table = pa.Table.from_pydict(
                {column: [record.get(column) for record in records] for column in columns}
            )
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise TypeError(
                f"dataset {self.path}: shard {shard_path.name} cannot be written as Parquet: "
                f"{exc}; every record's field must hold values of one type"
            ) from exc
        pq.write_table(table, shard_path)
        with shard_path.open("rb") as file:
            os.fsync(file.fileno())

    def _replace(self) -> None:
        """Move the temporary directory to ``path``, replacing an old dataset."""
        path = self.path
        parent = path.parent
        old: Path | None = None
        if path.exists() or path.is_symlink():
            if not path.is_dir() or not (path / MANIFEST_NAME).is_file():
                if path.is_dir() and not any(path.iterdir()):
                    path.rmdir()  # an empty directory holds nothing to lose
                else:
                    raise FileExistsError(
                        f"{path} exists and is not a Conveyor dataset (no {MANIFEST_NAME}); "
                        "refusing to replace it: move it away or choose another persist path"
                    )
            else:
                old = path.with_name(f"{path.name}.old-{uuid.uuid4().hex}")
                path.rename(old)
        try:
            self.tmp_path.rename(path)
        except BaseException:
            if old is not None:
                old.rename(path)
            raise
        fsync_dir(parent, best_effort=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _json_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _write_manifest(path: Path, manifest: DatasetManifest) -> None:
    with path.open("w", encoding="utf-8") as file:
        json.dump(manifest.to_json(), file, indent=2)
        file.write("\n")
        file.flush()
        os.fsync(file.fileno())


def _next_shard_number(manifest: DatasetManifest | None) -> int:
    """The number of the first new shard appended after ``manifest``'s shards."""
    if manifest is None:
        return 0
    numbers = [int(s.name[5:10]) for s in manifest.shards if s.name[5:10].isdigit()]
    return max(numbers, default=-1) + 1


class Persistable(Contract):
    """What a dataset writer can store, as an output contract of the stage that persists
    there (with the stage's own output contract, if any, checked first).

    Checked on every record whatever the run's ``contracts`` setting: a record the dataset
    cannot hold then becomes a dead letter *of that stage*, holding the record as it
    entered the stage (replayable once the stage is fixed), instead of failing the write.
    """

    always = True

    def __init__(self, writer: DatasetWriter, inner: Contract | None = None) -> None:
        super().__init__(f"{writer.format} dataset {writer.path.name}")
        self.writer = writer
        self.inner = inner

    def check(self, record: object) -> ContractViolation | None:
        if self.inner is not None:
            violation = self.inner.check(record)
            if violation is not None:
                return violation
        reason = self.writer.problem(record)
        return None if reason is None else self.violation("", reason)

    def check_many(self, records: Sequence[object]) -> list[tuple[int, ContractViolation]]:
        found = dict(self.inner.check_many(records)) if self.inner is not None else {}
        problem = self.writer.problem
        for index, record in enumerate(records):
            if index not in found and (reason := problem(record)) is not None:
                found[index] = self.violation("", reason)
        return sorted(found.items())


# --------------------------------------------------------------------------- reading


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parse_manifest(path: Path, data: object) -> DatasetManifest:
    def bad(detail: str) -> DatasetError:
        return DatasetError(path, f"{MANIFEST_NAME}: {detail}")

    if not isinstance(data, dict):
        raise bad("not a JSON object")
    version = data.get("version")
    if version != MANIFEST_VERSION:
        raise bad(f"unsupported version {version!r} (this Conveyor reads {MANIFEST_VERSION})")
    format = data.get("format")
    if format not in _FORMATS:
        raise bad(f"unknown format {format!r}")
    raw_shards = data.get("shards")
    if not isinstance(raw_shards, list):
        raise bad("'shards' is not a list")
    shards: list[ShardInfo] = []
    for index, raw in enumerate(raw_shards):
        if not isinstance(raw, dict):
            raise bad(f"shard {index} is not an object")
        name, records, size, sha = (raw.get(k) for k in ("name", "records", "bytes", "sha256"))
        if (
            not isinstance(name, str)
            or not name
            or Path(name).name != name
            or name in {".", ".."}
            or name == MANIFEST_NAME
        ):
            raise bad(f"shard {index} has an invalid name {name!r}")
        if not _is_count(records):
            raise bad(f"shard {name}: 'records' is not a count: {records!r}")
        if not _is_count(size):
            raise bad(f"shard {name}: 'bytes' is not a count: {size!r}")
        if not isinstance(sha, str) or len(sha) != 64:
            raise bad(f"shard {name}: 'sha256' is not a sha256 hex digest: {sha!r}")
        shards.append(ShardInfo(name=name, records=records, bytes=size, sha256=sha))
    total = data.get("total_records")
    if total != sum(shard.records for shard in shards):
        raise bad(f"'total_records' {total!r} is not the sum of the shards' records")
    return DatasetManifest(format=format, shards=tuple(shards), total_records=total)


def load_manifest(path: Path | str, *, check_files: bool = True) -> DatasetManifest:
    """Read and validate the manifest of the dataset at ``path``.

    With ``check_files`` (the default) every shard must exist with the size the manifest
    gives (cheap: no hashing). Raises :class:`FileNotFoundError` naming ``path`` when there
    is no dataset there, :class:`DatasetError` when the manifest or a shard is broken.
    """
    path = Path(path)
    manifest_path = path / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}: the directory does not exist")
    if not path.is_dir():
        raise FileNotFoundError(f"no dataset at {path}: it is a file, not a dataset directory")
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no dataset at {path}: {MANIFEST_NAME} is missing "
            "(not written by Conveyor, or its write was never committed)"
        )
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    manifest = _parse_manifest(path, data)
    if check_files:
        for shard in manifest.shards:
            shard_path = path / shard.name
            if not shard_path.is_file():
                raise DatasetError(path, f"shard {shard.name} is missing")
            size = shard_path.stat().st_size
            if size != shard.bytes:
                raise DatasetError(
                    path, f"shard {shard.name} has {size} bytes, the manifest says {shard.bytes}"
                )
    return manifest


def read_dataset(path: Path | str, *, verify: bool = False) -> Iterator[dict[str, Any]]:
    """Stream the records of the dataset at ``path``, shard by shard.

    The manifest is checked at once (so a missing or corrupt dataset raises here, not at
    the first ``next``); the shards are read lazily. With ``verify`` each shard's sha256 is
    checked before it is read. A shard whose record count differs from the manifest's
    raises :class:`DatasetError` when it has been read.
    """
    path = Path(path)
    manifest = load_manifest(path)
    if manifest.format == "parquet" and manifest.shards:
        _pyarrow()
    return _iter_records(path, manifest, verify=verify)


def _iter_records(
    path: Path, manifest: DatasetManifest, *, verify: bool
) -> Iterator[dict[str, Any]]:
    for shard in manifest.shards:
        shard_path = path / shard.name
        if verify and _sha256_file(shard_path) != shard.sha256:
            raise DatasetError(path, f"shard {shard.name} does not match its sha256")
        count = 0
        records = (
            _read_jsonl_shard(path, shard_path)
            if manifest.format == "jsonl"
            else _read_parquet_shard(path, shard_path)
        )
        for record in records:
            count += 1
            yield record
        if count != shard.records:
            raise DatasetError(
                path, f"shard {shard.name} holds {count} records, the manifest says {shard.records}"
            )


def _row(record: object) -> Mapping[str, Any]:
    """``record`` as the mapping a dataset stores: a mapping as it is, a Pydantic model by
    ``model_dump()``, a dataclass by its fields (read back, they are dicts)."""
    if isinstance(record, Mapping):
        return record
    try:
        return row_of(record)
    except TypeError:
        raise TypeError(
            f"records must be dicts, Pydantic models or dataclasses, got {type(record).__name__}"
        ) from None


def _read_jsonl_shard(path: Path, shard_path: Path) -> Iterator[dict[str, Any]]:
    with shard_path.open("r", encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    path, f"{shard_path.name}:{number}: not valid JSON: {exc}"
                ) from exc
            if not isinstance(record, dict):
                raise DatasetError(
                    path,
                    f"{shard_path.name}:{number}: not a JSON object but a {type(record).__name__}",
                )
            yield record


def _read_parquet_shard(path: Path, shard_path: Path) -> Iterator[dict[str, Any]]:
    pa, pq = _pyarrow()
    try:
        parquet_file = pq.ParquetFile(shard_path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"shard {shard_path.name} is not a Parquet file: {exc}") from exc
    try:
        for batch in parquet_file.iter_batches(batch_size=_READ_BATCH):
            rows: list[dict[str, Any]] = batch.to_pylist()
            yield from rows
    finally:
        parquet_file.close()


# --------------------------------------------------------------------------- fingerprint


def dataset_fingerprint(path: Path | str) -> str:
    """The content hash of the dataset at ``path``: sha256 over its format and the sha256 of
    each of its shards, in order, as the manifest gives them.

    Two datasets with the same shards in the same format have the same fingerprint; any
    changed record changes a shard's hash and so the fingerprint. The shards are not read
    (the manifest is trusted, with sizes checked): it is cheap for large datasets.
    Raises like :func:`load_manifest`.
    """
    manifest = load_manifest(path)
    digest = hashlib.sha256(f"conveyor-dataset-v{MANIFEST_VERSION}\n{manifest.format}\n".encode())
    for shard in manifest.shards:
        digest.update(f"{shard.sha256}\n".encode())
    return digest.hexdigest()
