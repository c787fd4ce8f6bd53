"""Persisted datasets: sharded Parquet / JSONL with a manifest, atomic replace, fingerprints."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import MapStage, PipelineSpec, RunOptions
from conveyor.dlq import MemoryDeadLetterStore
from conveyor.errors import UsageError
from conveyor.project.datasets import (
    MANIFEST_NAME,
    DatasetError,
    DatasetWriter,
    dataset_fingerprint,
    load_manifest,
    read_dataset,
)
from conveyor.runtime import StreamRunner

HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None
FORMATS = [
    "jsonl",
    pytest.param(
        "parquet",
        marks=pytest.mark.skipif(not HAS_PYARROW, reason="needs pip install 'conveyor[parquet]'"),
    ),
]


def records(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "name": f"r{i}", "score": i / 2, "tags": ["a", "b"][: i % 3], "ok": i % 2 == 0}
        for i in range(start, start + n)
    ]


def write(path: Path, fmt: Any, data: list[dict[str, Any]], **kw: Any) -> None:
    with DatasetWriter(path, fmt, **kw) as sink:
        sink(data)


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_over_many_shards_and_batches(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "data" / "processed"
    data = records(23)
    with DatasetWriter(path, fmt, shard_records=5) as sink:
        for i in range(0, 23, 4):  # micro-batches that straddle shard borders
            sink(data[i : i + 4])
        assert sink.records_written == 23
    assert list(read_dataset(path)) == data
    manifest = load_manifest(path)
    suffix = "parquet" if fmt == "parquet" else "jsonl"
    assert [s.name for s in manifest.shards] == [f"part-0000{i}.{suffix}" for i in range(5)]
    assert [s.records for s in manifest.shards] == [5, 5, 5, 5, 3]
    assert manifest.total_records == 23
    assert manifest.format == fmt
    assert leftovers(path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_exact_multiple_leaves_no_empty_shard(tmp_path: Path, fmt: Any) -> None:
    write(tmp_path / "d", fmt, records(6), shard_records=3)
    assert [s.records for s in load_manifest(tmp_path / "d").shards] == [3, 3]


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_empty_dataset(tmp_path: Path, fmt: Any) -> None:
    write(tmp_path / "d", fmt, [])
    manifest = load_manifest(tmp_path / "d")
    assert manifest.shards == ()
    assert manifest.total_records == 0
    assert list(read_dataset(tmp_path / "d")) == []


def test_parquet_nested_values_bytes_and_nulls(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    data = [
        {"id": 1, "blob": b"\x00\x01", "nested": [[1, 2], [3]], "meta": {"k": "v"}, "x": None},
        {"id": 2, "blob": b"", "nested": [], "meta": {"k": "w"}, "x": 1.5},
    ]
    write(tmp_path / "d", "parquet", data)
    assert list(read_dataset(tmp_path / "d")) == data


def test_parquet_takes_the_union_of_fields(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    write(tmp_path / "d", "parquet", [{"a": 1}, {"a": 2, "b": "x"}])
    assert list(read_dataset(tmp_path / "d")) == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_jsonl_keeps_unicode_and_heterogeneous_records(tmp_path: Path) -> None:
    data: list[dict[str, Any]] = [{"a": "é✓"}, {"b": [1, {"c": None}]}, {}]
    write(tmp_path / "d", "jsonl", data)
    assert list(read_dataset(tmp_path / "d")) == data
    lines = (tmp_path / "d" / "part-00000.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[0] == '{"a":"é✓"}'


def test_reading_is_lazy_and_streams_shard_by_shard(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, "jsonl", records(4), shard_records=2)
    it = read_dataset(path)
    assert next(it)["id"] == 0
    # shard 1 goes bad after the manifest check: only reading it finds out
    (path / "part-00001.jsonl").write_text('{"id": 2}\n{"id"\n', encoding="utf-8")
    assert next(it)["id"] == 1
    with pytest.raises(DatasetError, match=r"part-00001.jsonl:2: not valid JSON"):
        list(it)


def test_the_writer_is_a_runner_sink(tmp_path: Path) -> None:
    path = tmp_path / "data" / "processed"
    writer = DatasetWriter(path, "jsonl", shard_records=4)
    runner = StreamRunner(
        PipelineSpec("persist", (MapStage(lambda r: {**r, "double": r["n"] * 2}, name="double"),)),
        writer,
        RunOptions(batch_size=3, dead_letters=MemoryDeadLetterStore()),
    )
    asyncio.run(runner.run({"n": n} for n in range(10)))
    assert not path.exists()  # nothing is visible before the commit
    writer.commit()
    assert list(read_dataset(path)) == [{"n": n, "double": 2 * n} for n in range(10)]
    assert load_manifest(path).total_records == 10


# --- the manifest ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_manifest_lists_counts_sizes_and_hashes(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "d"
    write(path, fmt, records(7), shard_records=3)
    raw = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert raw["version"] == 1
    assert raw["format"] == fmt
    assert raw["total_records"] == 7
    assert [s["records"] for s in raw["shards"]] == [3, 3, 1]
    for shard in raw["shards"]:
        content = (path / shard["name"]).read_bytes()
        assert shard["sha256"] == hashlib.sha256(content).hexdigest()
        assert shard["bytes"] == len(content)
    assert sorted(p.name for p in path.iterdir()) == sorted(
        [MANIFEST_NAME, *(s["name"] for s in raw["shards"])]
    )


# --- atomicity -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_is_visible_before_commit(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "d"
    writer = DatasetWriter(path, fmt, shard_records=2)
    writer(records(5))
    assert not path.exists()
    assert writer.tmp_path.name.startswith("d.tmp-")
    assert writer.tmp_path.is_dir()
    manifest = writer.commit()
    assert manifest.total_records == 5
    assert not writer.tmp_path.exists()
    assert leftovers(path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_commit_replaces_an_old_dataset(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "d"
    write(path, fmt, records(10), shard_records=2)  # 5 shards
    write(path, fmt, records(3, start=100), shard_records=2)  # 2 shards
    assert [r["id"] for r in read_dataset(path)] == [100, 101, 102]
    assert len(list(path.iterdir())) == 3  # two shards and the manifest: no stale shards
    assert leftovers(path) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_failed_write_leaves_the_old_dataset_intact(tmp_path: Path, fmt: Any) -> None:
    path = tmp_path / "d"
    write(path, fmt, records(4))
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def failing_run() -> None:
        with DatasetWriter(path, fmt, shard_records=2) as sink:
            sink(records(5, start=50))  # two shards already on disk in the temp dir
            raise RuntimeError("stage crashed mid-way")

    with pytest.raises(RuntimeError, match="mid-way"):
        failing_run()
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [r["id"] for r in read_dataset(path)] == [0, 1, 2, 3]
    assert leftovers(path) == []


def test_abort_removes_the_temp_dir_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "d"
    writer = DatasetWriter(path, "jsonl", shard_records=1)
    writer(records(3))
    writer.abort()
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UsageError, match="already aborted"):
        writer(records(1))
    with pytest.raises(UsageError, match="already aborted"):
        writer.commit()


def test_a_committed_writer_is_closed(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "d", "jsonl")
    writer.commit()
    with pytest.raises(UsageError, match="already committed"):
        writer([{"a": 1}])
    with pytest.raises(UsageError, match="already committed"):
        writer.abort()
    with writer:  # exiting a closed writer does nothing
        pass


def test_a_bad_record_aborts_inside_the_context_manager(tmp_path: Path) -> None:
    path = tmp_path / "d"
    with (
        pytest.raises(TypeError, match="JSONL takes JSON values only"),
        DatasetWriter(path, "jsonl") as sink,
    ):
        sink([{"a": 1}, {"blob": b"x"}])
    assert list(tmp_path.iterdir()) == []


def test_a_directory_that_is_not_a_dataset_is_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "raw"
    path.mkdir()
    (path / "input.csv").write_text("precious\n", encoding="utf-8")
    writer = DatasetWriter(path, "jsonl")
    writer([{"a": 1}])
    with pytest.raises(FileExistsError, match="not a Conveyor dataset"):
        writer.commit()
    assert (path / "input.csv").read_text(encoding="utf-8") == "precious\n"
    assert leftovers(path) == []


def test_an_empty_directory_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write(tmp_path / "d", "jsonl", [{"a": 1}])
    assert list(read_dataset(tmp_path / "d")) == [{"a": 1}]


# --- argument and record errors --------------------------------------------------------------


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset format 'csv'"):
        DatasetWriter(tmp_path / "d", "csv")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shard_records must be >= 1"):
        DatasetWriter(tmp_path / "d", "jsonl", shard_records=0)
    with pytest.raises(TypeError, match="shard_records must be an int"):
        DatasetWriter(tmp_path / "d", "jsonl", shard_records=True)


@pytest.mark.parametrize("fmt", FORMATS)
def test_records_must_be_dicts(tmp_path: Path, fmt: Any) -> None:
    with DatasetWriter(tmp_path / "d", fmt) as sink, pytest.raises(TypeError, match="dicts"):
        sink([1, 2])  # type: ignore[list-item]


def test_parquet_refuses_mixed_types_and_fieldless_records(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    with pytest.raises(TypeError, match="cannot be written as Parquet"):
        write(tmp_path / "d", "parquet", [{"a": 1}, {"a": "x"}])
    with pytest.raises(ValueError, match="without fields; use format 'jsonl'"):
        write(tmp_path / "d", "parquet", [{}, {}])
    assert list(tmp_path.iterdir()) == []


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[parquet\]'"):
        DatasetWriter(tmp_path / "d", "parquet")
    write(tmp_path / "j", "jsonl", [{"a": 1}])  # JSONL needs nothing extra
    assert list(read_dataset(tmp_path / "j")) == [{"a": 1}]


# --- reading errors --------------------------------------------------------------------------


def test_a_missing_dataset_names_its_path_at_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "processed"
    with pytest.raises(FileNotFoundError, match=r"no dataset at .*processed.*does not exist"):
        read_dataset(path)  # raised by the call, before any next()
    path.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"_manifest\.json is missing"):
        read_dataset(path)
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="it is a file"):
        read_dataset(tmp_path / "file")


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        ('{"version": 9}', "unsupported version 9"),
        ('{"version": 1, "format": "csv"}', "unknown format 'csv'"),
        ('{"version": 1, "format": "jsonl", "shards": {}}', "'shards' is not a list"),
        ('{"version": 1, "format": "jsonl", "shards": [1]}', "shard 0 is not an object"),
        (
            '{"version": 1, "format": "jsonl", "shards": [{"name": "../x"}]}',
            "invalid name '../x'",
        ),
        (
            '{"version": 1, "format": "jsonl", "shards": [{"name": "p", "records": -1}]}',
            "'records' is not a count",
        ),
        (
            '{"version": 1, "format": "jsonl", "shards": '
            '[{"name": "p", "records": 1, "bytes": 1, "sha256": "x"}]}',
            "not a sha256",
        ),
        ('{"version": 1, "format": "jsonl", "shards": [], "total_records": 3}', "not the sum"),
    ],
)
def test_a_corrupt_manifest_is_a_dataset_error(tmp_path: Path, manifest: str, message: str) -> None:
    path = tmp_path / "d"
    path.mkdir()
    (path / MANIFEST_NAME).write_text(manifest, encoding="utf-8")
    with pytest.raises(DatasetError, match=message) as info:
        read_dataset(path)
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value)


def test_missing_and_truncated_shards_are_found_by_the_manifest_check(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, "jsonl", records(4), shard_records=2)
    shard = path / "part-00001.jsonl"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(DatasetError, match=r"part-00001\.jsonl has .* bytes, the manifest says"):
        read_dataset(path)
    shard.unlink()
    with pytest.raises(DatasetError, match=r"shard part-00001\.jsonl is missing"):
        load_manifest(path)


def test_verify_checks_shard_hashes(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, "jsonl", [{"a": 1}])
    (path / "part-00000.jsonl").write_text('{"a":2}\n', encoding="utf-8")  # same size
    assert list(read_dataset(path)) == [{"a": 2}]  # not verified by default
    with pytest.raises(DatasetError, match="does not match its sha256"):
        list(read_dataset(path, verify=True))


def test_a_shard_with_another_record_count_is_found_when_read(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, "jsonl", [{"a": 1}, {"a": 22}])
    (path / "part-00000.jsonl").write_text('{"a":1,"a":22}\n\n\n', encoding="utf-8")  # same size
    with pytest.raises(DatasetError, match="holds 1 records, the manifest says 2"):
        list(read_dataset(path))


def test_a_jsonl_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "d"
    write(path, "jsonl", [{"a": 1}])
    (path / "part-00000.jsonl").write_text("[1,2,3]\n", encoding="utf-8")  # same size
    with pytest.raises(DatasetError, match=r"part-00000.jsonl:1: not a JSON object but a list"):
        list(read_dataset(path))


def test_a_parquet_shard_that_is_not_parquet(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "d"
    write(path, "parquet", [{"a": 1}])
    shard = path / "part-00000.parquet"
    shard.write_bytes(b"x" * shard.stat().st_size)
    with pytest.raises(DatasetError, match="not a Parquet file"):
        list(read_dataset(path))


# --- fingerprints ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_fingerprint_changes_iff_content_changes(tmp_path: Path, fmt: Any) -> None:
    write(tmp_path / "a", fmt, records(10), shard_records=4)
    write(tmp_path / "b", fmt, records(10), shard_records=4)  # written anew, same content
    fp = dataset_fingerprint(tmp_path / "a")
    assert len(fp) == 64
    assert dataset_fingerprint(tmp_path / "b") == fp
    write(tmp_path / "a", fmt, records(10), shard_records=4)  # rewritten in place
    assert dataset_fingerprint(tmp_path / "a") == fp

    changed = records(10)
    changed[7]["name"] = "changed"
    write(tmp_path / "c", fmt, changed, shard_records=4)
    assert dataset_fingerprint(tmp_path / "c") != fp
    write(tmp_path / "d", fmt, records(9), shard_records=4)
    assert dataset_fingerprint(tmp_path / "d") != fp
    write(tmp_path / "e", fmt, records(11), shard_records=4)
    assert dataset_fingerprint(tmp_path / "e") != fp


def test_fingerprint_of_a_missing_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no dataset at"):
        dataset_fingerprint(tmp_path / "nope")
