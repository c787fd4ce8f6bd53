"""The file sources (CSV, JSON Lines, Parquet): records, rejects with their exact
``FILE:LINE: reason``, offsets and ``seek``, memory bounds, and runs through the runner."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, ValidationError

import conveyor.connectors
from conveyor import MapStage, Pipeline, Rejected
from conveyor.connectors import connector, describe_connector
from conveyor.connectors import file_sources as fs
from conveyor.connectors.file_sources import CsvSource, JsonlSource, ParquetSource
from conveyor.connectors.files import JsonlSink
from conveyor.core._imports import OptionError
from conveyor.core._paths import OutsideProject
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import CheckpointError, PipelineDefinitionError, SourceRecordError

pytestmark = pytest.mark.timeout(120)


class Penguin(BaseModel):
    id: int
    species: str
    bill_length_mm: float | None
    body_mass_g: int | None
    sex: Literal["male", "female"] | None


def items(source: Any) -> list[Any]:
    """What iterating ``source`` yields, Rejected as ``(record, message)``."""
    return [(i.record, str(i.error)) if isinstance(i, Rejected) else i for i in source]


def with_offsets(source: Any) -> list[tuple[Any, list[Any]]]:
    out = []
    for item in source:
        shown = (item.record, str(item.error)) if isinstance(item, Rejected) else item
        out.append((shown, source.offset))
    return out


def messages(source: Any) -> list[str]:
    return [str(i.error) for i in source if isinstance(i, Rejected)]


PENGUINS = (
    "id,species,bill_length_mm,body_mass_g,sex\n"
    "1,Adelie,39.1,3750,male\n"
    "2,Adelie,NA,,female\n"
    "3,Gentoo,47.5,heavy,NA\n"
    "4,Chinstrap,N/A,3800,null\n"
)


# -- csv ---------------------------------------------------------------------------------------


def test_typed_csv_with_na_values_and_a_model(tmp_path: Path) -> None:
    (tmp_path / "penguins.csv").write_text(PENGUINS)
    got = items(CsvSource("penguins.csv", root=tmp_path, model=Penguin))
    assert got[0] == Penguin(
        id=1, species="Adelie", bill_length_mm=39.1, body_mass_g=3750, sex="male"
    )
    assert got[1] == Penguin(
        id=2, species="Adelie", bill_length_mm=None, body_mass_g=None, sex="female"
    )
    assert got[2] == (
        {"file": "penguins.csv", "line": 4, "raw": "3,Gentoo,47.5,heavy,NA"},
        "penguins.csv:4: field 'body_mass_g': Input should be a valid integer, unable to "
        "parse string as an integer (got 'heavy')",
    )
    assert got[3] == Penguin(
        id=4, species="Chinstrap", bill_length_mm=None, body_mass_g=3800, sex=None
    )
    assert len(got) == 4
    # without a model: dicts of text, the NA cells None
    plain = items(CsvSource(tmp_path / "penguins.csv"))
    assert plain[1] == {
        "id": "2",
        "species": "Adelie",
        "bill_length_mm": None,
        "body_mass_g": None,
        "sex": "female",
    }
    # other na_values: "NA" stays text, and the model refuses it for a float
    other = messages(CsvSource("penguins.csv", root=tmp_path, model=Penguin, na_values=[""]))
    assert other[0] == (
        "penguins.csv:3: field 'bill_length_mm': Input should be a valid number, unable to "
        "parse string as a number (got 'NA')"
    )


def test_several_model_errors_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(
        "id,species,bill_length_mm,body_mass_g,sex\nx,Adelie,long,,other\n"
    )
    (reason,) = messages(CsvSource("p.csv", root=tmp_path, model=Penguin))
    assert "\n" not in reason
    assert reason.startswith("p.csv:2: field 'id': Input should be a valid integer")
    assert "; field 'bill_length_mm': " in reason
    assert "; field 'sex': Input should be 'male' or 'female' (got 'other')" in reason


def test_a_glob_reads_several_files_in_sorted_order(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.csv").write_text("id,name\n3,c\n4,d\n")
    (folder / "a.csv").write_text("id,name\n1,a\n2,b,extra\n")
    (folder / "sub" / "c.csv").write_text("name,id\ne,5\n")  # its own header
    (folder / "notes.txt").write_text("not csv\n")
    source = CsvSource("data/in/*.csv", root=tmp_path)
    assert source.inputs() == ["data/in/a.csv", "data/in/b.csv"]
    assert source.identity == "csv:data/in/*.csv"
    assert items(source) == [
        {"id": "1", "name": "a"},
        (
            {"file": "data/in/a.csv", "line": 3, "raw": "2,b,extra"},
            "data/in/a.csv:3: 3 fields, expected 2 (id, name)",
        ),
        {"id": "3", "name": "c"},
        {"id": "4", "name": "d"},
    ]
    deep = CsvSource("data/in/**/*.csv", root=tmp_path)
    assert deep.inputs() == ["data/in/a.csv", "data/in/b.csv", "data/in/sub/c.csv"]
    assert items(deep)[-1] == {"name": "e", "id": "5"}


MULTILINE = (
    "id,text,n\n"
    '1,"one line",1\n'
    '2,"two\nlines",2\n'
    "\n"
    '3,"three\n\nlines, with ""quotes""",3\n'
    "4,only two fields\n"
    '5,"café, naïve\r\nCRLF inside",5\r\n'
    "6,last,6"
)


def _expected_multiline(name: str) -> list[tuple[Any, list[Any]]]:
    data = MULTILINE.encode()

    def after(marker: str) -> int:  # the byte offset of the line starting with `marker`
        return data.index(("\n" + marker).encode()) + 1

    return [
        ({"id": "1", "text": "one line", "n": "1"}, [name, after("2,"), 3]),
        ({"id": "2", "text": "two\nlines", "n": "2"}, [name, after("\n3,"), 5]),
        (
            {"id": "3", "text": 'three\n\nlines, with "quotes"', "n": "3"},
            [name, after("4,"), 9],
        ),
        (
            (
                {"file": name, "line": 9, "raw": "4,only two fields"},
                f"{name}:9: 2 fields, expected 3 (id, text, n)",
            ),
            [name, after("5,"), 10],
        ),
        (
            {"id": "5", "text": "café, naïve\r\nCRLF inside", "n": "5"},
            [name, after("6,"), 12],
        ),
        ({"id": "6", "text": "last", "n": "6"}, [name, len(data), 13]),
    ]


@pytest.mark.parametrize("block", [1, 7, 40, 100_000])
def test_multiline_quoted_fields_keep_exact_lines_and_byte_offsets(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Block parsing (any block size: records cut by a block's end are read line by line)
    and line-by-line parsing give the same records, line numbers and byte offsets."""
    monkeypatch.setattr(fs, "_BLOCK", block)
    (tmp_path / "m.csv").write_bytes(MULTILINE.encode())
    assert with_offsets(CsvSource("m.csv", root=tmp_path)) == _expected_multiline("m.csv")


def test_strict_off_reads_line_by_line_the_same(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(MULTILINE.encode())
    source = CsvSource("m.csv", root=tmp_path, strict=False)
    assert with_offsets(source) == _expected_multiline("m.csv")
    (tmp_path / "q.csv").write_text('a,b\n"x"y,1\n')
    assert items(CsvSource("q.csv", root=tmp_path, strict=False)) == [{"a": "xy", "b": "1"}]
    assert messages(CsvSource("q.csv", root=tmp_path)) == [
        "q.csv:2: invalid CSV: ',' expected after '\"'"
    ]


def test_csv_options_header_columns_dialect_encoding_bom(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text("1;a\n2;b\n")
    got = items(CsvSource("h.csv", root=tmp_path, header=False, columns=["id", "x"], delimiter=";"))
    assert got == [{"id": "1", "x": "a"}, {"id": "2", "x": "b"}]
    (tmp_path / "r.csv").write_text("A,B\n1,2\n")
    assert items(CsvSource("r.csv", root=tmp_path, columns=["a", "b"])) == [{"a": "1", "b": "2"}]
    (tmp_path / "t.tsv").write_text("a\tb\n'x\ty'\t2\n")
    assert items(CsvSource("t.tsv", root=tmp_path, dialect="excel-tab", quotechar="'")) == [
        {"a": "x\ty", "b": "2"}
    ]
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfid,name\r\n1,x\r\n")
    assert items(CsvSource("bom.csv", root=tmp_path)) == [{"id": "1", "name": "x"}]
    (tmp_path / "l1.csv").write_bytes("id,name\n1,Zoë\n".encode("latin-1"))
    assert items(CsvSource("l1.csv", root=tmp_path, encoding="latin-1")) == [
        {"id": "1", "name": "Zoë"}
    ]
    assert items(CsvSource("l1.csv", root=tmp_path)) == [
        (
            {"file": "l1.csv", "line": 2, "raw": "1,Zo\\xeb"},
            "l1.csv:2: not valid utf-8: invalid continuation byte (byte b'\\xeb' at column 5)",
        )
    ]
    (tmp_path / "empty.csv").write_text("")
    assert items(CsvSource("empty.csv", root=tmp_path)) == []
    (tmp_path / "twice.csv").write_text("a,a\n1,2\n")
    with pytest.raises(
        SourceRecordError, match=re.escape("twice.csv:1: the header names column 'a' twice")
    ):
        list(CsvSource("twice.csv", root=tmp_path))
    assert items(CsvSource("twice.csv", root=tmp_path, columns=["a", "b"])) == [
        {"a": "1", "b": "2"}
    ]


def test_csv_rejects_and_their_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (
        b"id,name\n"
        b"1,ok\n"
        b"2,bad \xff byte\n"
        b"3,nul\x00here\n"
        b"4," + b"L" * 300 + b"\n"
        b'5,"x"y\n'
        b"6,one,two\n"
        b"7\n"
        b"8,fine\n"
        b'9,"unclosed\n'
        b"10,swallowed\n"
    )
    (tmp_path / "bad.csv").write_bytes(data)
    for block in (1, 64, 100_000):  # the same whatever the parsing path
        monkeypatch.setattr(fs, "_BLOCK", block)
        got = items(CsvSource("bad.csv", root=tmp_path, max_line_bytes=100))
        assert [g for g in got if isinstance(g, dict)] == [
            {"id": "1", "name": "ok"},
            {"id": "8", "name": "fine"},
        ]
        assert [g[1] for g in got if isinstance(g, tuple)] == [
            "bad.csv:3: not valid utf-8: invalid start byte (byte b'\\xff' at column 7)",
            "bad.csv:4: a NUL byte at column 6",
            "bad.csv:5: the line is longer than max_line_bytes (100 bytes): 302 bytes",
            "bad.csv:6: invalid CSV: ',' expected after '\"'",
            "bad.csv:7: 3 fields, expected 2 (id, name)",
            "bad.csv:8: 1 field, expected 2 (id, name)",
            "bad.csv:10: invalid CSV: unexpected end of data",
        ]
        raws = [g[0]["raw"] for g in got if isinstance(g, tuple)]
        assert raws[:2] == ["2,bad \\xff byte", "3,nul\\x00here"]
        assert raws[2] == "4," + "L" * 300
        assert raws[-1] == '9,"unclosed\n10,swallowed'  # an unclosed quote takes the rest


def test_a_problem_on_a_later_line_of_a_record_names_that_line(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_bytes(b'id,t\n1,"a\nb\xff"\n2,x\n')
    assert items(CsvSource("m.csv", root=tmp_path)) == [
        (
            {"file": "m.csv", "line": 2, "raw": '1,"a\nb\\xff"'},
            "m.csv:2: line 3: not valid utf-8: invalid start byte (byte b'\\xff' at column 2)",
        ),
        {"id": "2", "t": "x"},
    ]


def test_a_huge_line_is_rejected_fast_without_holding_it(tmp_path: Path) -> None:
    path = tmp_path / "huge.csv"
    with path.open("wb") as file:
        file.write(b"id,v\n1,a\n2,")
        chunk = b"x" * (1 << 20)
        for _ in range(40):
            file.write(chunk)
        file.write(b"\n3,c\n")
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        got = items(CsvSource(path, max_line_bytes=1 << 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 8 << 20  # never the 40 MiB line
    assert got[0] == {"id": "1", "v": "a"}
    assert got[2] == {"id": "3", "v": "c"}
    record, message = got[1]
    assert message == (
        f"{path}:3: the line is longer than max_line_bytes (1048576 bytes): {40 * (1 << 20) + 2} "
        "bytes"
    )
    assert len(record["raw"]) < fs.RAW_LIMIT + 100
    assert record["raw"].endswith(f"… ({40 * (1 << 20) + 3} bytes in all)")


# -- jsonl ---------------------------------------------------------------------------------


def test_jsonl_objects_blank_lines_and_a_model(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text(
        '{"id": 1, "species": "Adelie", "bill_length_mm": 39.1, "body_mass_g": "3750", '
        '"sex": "male"}\n'
        "\n   \n"
        '{"id": "2", "species": "Gentoo", "bill_length_mm": null, "body_mass_g": null, '
        '"sex": null}\r\n'
        '{"id": 3, "species": "Gentoo", "bill_length_mm": "x", "body_mass_g": 1, "sex": null}\n'
    )
    source = JsonlSource("a.jsonl", root=tmp_path, model=Penguin)
    got = with_offsets(source)
    assert got[0][0] == Penguin(
        id=1, species="Adelie", bill_length_mm=39.1, body_mass_g=3750, sex="male"
    )
    assert got[1][0].id == 2
    assert got[1][0].body_mass_g is None
    assert got[2][0][1] == (
        "a.jsonl:5: field 'bill_length_mm': Input should be a valid number, unable to parse "
        "string as a number (got 'x')"
    )
    data = (tmp_path / "a.jsonl").read_bytes()
    ends = [i + 1 for i, b in enumerate(data) if b == 10]
    assert [o for _, o in got] == [
        ["a.jsonl", ends[0], 2],
        ["a.jsonl", ends[3], 5],
        ["a.jsonl", ends[4], 6],
    ]
    assert items(JsonlSource(tmp_path / "a.jsonl"))[0]["body_mass_g"] == "3750"


def test_jsonl_rejects_and_their_messages(tmp_path: Path) -> None:
    lines = [
        b'{"id": 1}',
        b'{"id": 2',
        b"[1, 2]",
        b'"text"',
        b"42",
        b"null",
        b"true",
        b"[" * 100_000,
        b'{"n": ' + b"9" * 5000 + b"}",
        b'{"s": "\xff"}',
        b'{"s": "a\x00b"}',
        b'{"s": "' + b"y" * 200_000 + b'"}',
        b'{"id": 3} {"id": 4}',
        b'{"id": 5}',
    ]
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    t0 = time.perf_counter()
    got = items(JsonlSource("bad.jsonl", root=tmp_path, max_line_bytes=150_000))
    assert time.perf_counter() - t0 < 2
    assert [g for g in got if isinstance(g, dict)] == [{"id": 1}, {"id": 5}]
    assert [g[1] for g in got if isinstance(g, tuple)] == [
        "bad.jsonl:2: invalid JSON: Expecting ',' delimiter at column 9",  # (the line's end)
        "bad.jsonl:3: an array, not a JSON object",
        "bad.jsonl:4: a string, not a JSON object",
        "bad.jsonl:5: a number, not a JSON object",
        "bad.jsonl:6: null, not a JSON object",
        "bad.jsonl:7: a boolean, not a JSON object",
        "bad.jsonl:8: nested too deeply to parse (arrays or objects inside each other)",
        "bad.jsonl:9: invalid JSON: Exceeds the limit (4300 digits) for integer string "
        "conversion: value has 5000 digits",
        "bad.jsonl:10: not valid utf-8: invalid start byte (byte b'\\xff' at column 8)",
        "bad.jsonl:11: invalid JSON: Invalid control character at column 9",
        "bad.jsonl:12: the line is longer than max_line_bytes (150000 bytes): 200009 bytes",
        "bad.jsonl:13: invalid JSON: Extra data at column 11",
    ]
    raws = {g[0]["line"]: g[0]["raw"] for g in got if isinstance(g, tuple)}
    assert raws[10] == '{"s": "\\xff"}'
    assert raws[11] == '{"s": "a\\x00b"}'
    assert raws[8] == "[" * fs.RAW_LIMIT + "… (100001 bytes in all)"  # cut at RAW_LIMIT
    assert raws[12] == '{"s": "' + "y" * (fs.RAW_LIMIT - 7) + "… (200010 bytes in all)"


# -- parquet -------------------------------------------------------------------------------


def _parquet(path: Path, ids: range, *, group: int) -> None:
    table = pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "name": [f"n{i}" for i in ids],
            "mass": [None if i % 5 == 0 else float(i) for i in ids],
        }
    )
    pq.write_table(table, path, row_group_size=group)


def test_parquet_row_groups_columns_and_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "shards"
    folder.mkdir()
    _parquet(folder / "part-00000.parquet", range(25), group=10)
    _parquet(folder / "part-00001.parquet", range(25, 30), group=10)
    (folder / ".part-00002.parquet.tmp").write_bytes(b"junk")  # skipped, as readers do
    source = ParquetSource("shards", root=tmp_path, batch_rows=4)
    got = with_offsets(source)
    assert [r["id"] for r, _ in got] == list(range(30))
    assert got[0] == ({"id": 0, "name": "n0", "mass": None}, ["shards/part-00000.parquet", 0, 1])
    assert got[9][1] == ["shards/part-00000.parquet", 0, 10]
    assert got[10][1] == ["shards/part-00000.parquet", 1, 1]
    assert got[29][1] == ["shards/part-00001.parquet", 0, 5]
    assert source.inputs() == ["shards/part-00000.parquet", "shards/part-00001.parquet"]
    only = items(ParquetSource("shards/*.parquet", root=tmp_path, columns=["name"]))
    assert only[:2] == [{"name": "n0"}, {"name": "n1"}]
    with pytest.raises(
        SourceRecordError, match=re.escape("has no column 'nope' of source.columns")
    ):
        list(ParquetSource("shards", root=tmp_path, columns=["nope"]))
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(
        SourceRecordError, match=re.escape("fake.parquet: cannot be read as Parquet")
    ):
        list(ParquetSource("fake.parquet", root=tmp_path))


class Mass(BaseModel):
    id: int
    mass: float


def test_parquet_rows_that_do_not_fit_the_model_are_rejected_with_their_row(
    tmp_path: Path,
) -> None:
    _parquet(tmp_path / "m.parquet", range(12), group=4)
    got = items(ParquetSource("m.parquet", root=tmp_path, model=Mass, batch_rows=3))
    rejected = [g for g in got if isinstance(g, tuple)]
    assert [r[1] for r in rejected] == [
        "m.parquet:1: field 'mass': Input should be a valid number (got None)",
        "m.parquet:6: field 'mass': Input should be a valid number (got None)",
        "m.parquet:11: field 'mass': Input should be a valid number (got None)",
    ]
    assert json.loads(rejected[1][0]["raw"]) == {"id": 5, "name": "n5", "mass": None}
    assert [m.id for m in got if isinstance(m, Mass)] == [1, 2, 3, 4, 6, 7, 8, 9, 11]


def test_parquet_memory_stays_bounded_by_a_row_group(tmp_path: Path) -> None:
    path = tmp_path / "big.parquet"
    groups, rows = 60, 5_000
    with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("text", pa.string())])) as out:
        for g in range(groups):
            ids = range(g * rows, (g + 1) * rows)
            out.write_table(
                pa.table(
                    {"id": pa.array(list(ids), pa.int64()), "text": [f"{i:0200d}" for i in ids]}
                ),
                row_group_size=rows,
            )
    group_bytes = rows * 220
    pool = pa.default_memory_pool()
    tracemalloc.start()
    t0 = time.perf_counter()
    arrow_peak = count = total = 0
    try:
        for record in ParquetSource(path, batch_rows=1_000):
            count += 1
            total += record["id"]
            if count % 500 == 0:
                arrow_peak = max(arrow_peak, pool.bytes_allocated())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.perf_counter() - t0
    n = groups * rows
    assert (count, total) == (n, n * (n - 1) // 2)
    assert elapsed < 30
    file_bytes = n * 220
    assert arrow_peak < 4 * group_bytes < file_bytes / 10  # a row group, not the file
    assert python_peak < 8 * 1_000 * 400  # a batch of records, not the file


# -- offsets and seek ---------------------------------------------------------------------------


def _csv_inputs(root: Path) -> Any:
    folder = root / "in"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b'id,name\n1,a\n2,"two\nlines"\n\n3,b,extra\n4,\xff\n5,e\n')
    (folder / "b.csv").write_bytes(b"id,name\n")
    (folder / "c.csv").write_bytes(b'id,name\n6,f\n7,"g"\n8\n9,i')
    return lambda: CsvSource("in/*.csv", root=root)


def _jsonl_inputs(root: Path) -> Any:
    folder = root / "in"
    folder.mkdir()
    (folder / "a.jsonl").write_bytes(b'{"id": 1}\n\n{"id": 2\n[3]\n{"id": 4}\n')
    (folder / "b.jsonl").write_bytes(b"")
    (folder / "c.jsonl").write_bytes(b'{"id": 5}\n\xff\n{"id": 6}\n"x"\n{"id": 7}')
    return lambda: JsonlSource("in/*.jsonl", root=root)


def _parquet_inputs(root: Path) -> Any:
    folder = root / "in"
    folder.mkdir()
    _parquet(folder / "a.parquet", range(11), group=4)
    _parquet(folder / "b.parquet", range(11, 14), group=2)
    return lambda: ParquetSource("in", root=root, model=Mass, batch_rows=3)


@pytest.mark.parametrize("make", [_csv_inputs, _jsonl_inputs, _parquet_inputs])
def test_seek_to_an_offset_yields_exactly_the_rest(tmp_path: Path, make: Any) -> None:
    new = make(tmp_path)
    everything = items(new())
    assert len(everything) >= 8
    first = new()
    assert json.loads(json.dumps(first.offset)) == first.offset
    for k in range(len(everything) + 1):
        source = new()
        iterator = iter(source)
        taken = [next(iterator) for _ in range(k)]
        offset = json.loads(json.dumps(source.offset))  # as a checkpoint keeps it
        source.close()
        again = new()
        again.seek(offset)
        assert items(taken) + items(again) == everything, f"after {k}: {offset}"
    first.seek(first.offset)  # the start is an offset too
    assert items(first) == everything


@pytest.mark.parametrize("block", [5, 100_000])
def test_csv_seek_inside_blocks_and_multiline_records(
    tmp_path: Path, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fs, "_BLOCK", block)
    rows = [f'{i},"{"x" * (i % 7)}\n{i}"' if i % 3 == 0 else f"{i},v{i}é" for i in range(60)]
    (tmp_path / "m.csv").write_text("id,t\n" + "\n".join(rows) + "\n")
    everything = items(CsvSource("m.csv", root=tmp_path))
    assert len(everything) == 60
    for k in range(0, 61, 7):
        source = CsvSource("m.csv", root=tmp_path)
        iterator = iter(source)
        taken = [next(iterator) for _ in range(k)]
        again = CsvSource("m.csv", root=tmp_path)
        again.seek(source.offset)
        assert items(taken) + items(again) == everything


def test_seek_refuses_offsets_that_do_not_fit(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id\n1\n2\n")
    source = CsvSource("a.csv", root=tmp_path)
    for offset, why in [
        (["b.csv", 0, 1], "is in b.csv, which source.path 'a.csv' no longer matches"),
        (["a.csv", 4, 2], "is not at the start of a line"),
        (["a.csv", 99, 2], "is past the end"),
        ([1, 2], "is not one of a csv source"),
        (None, "is not one of a csv source"),
    ]:
        with pytest.raises(CheckpointError, match=why) as refused:
            source.seek(offset)
        assert "--fresh" in str(refused.value)
    _parquet(tmp_path / "p.parquet", range(5), group=2)
    with pytest.raises(CheckpointError, match="is past the rows"):
        ParquetSource("p.parquet", root=tmp_path).seek(["p.parquet", 9, 0])


# -- through the runner ---------------------------------------------------------------------


def _fail_some(record: Any) -> Any:
    if record.id % 10 == 3:
        raise ValueError(f"stage refuses {record.id}")
    return {"id": record.id, "mass": record.body_mass_g}


def _id_of_raw(raw: str) -> int:
    return int(raw.split(",")[0])


def test_a_run_puts_every_id_once_in_the_sink_or_the_dead_letters(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    expected: set[int] = set()
    for part in range(3):
        lines = ["id,species,bill_length_mm,body_mass_g,sex"]
        for i in range(part * 1000, (part + 1) * 1000):
            expected.add(i)
            if i % 97 == 5:
                lines.append(f"{i},Adelie,NA,not-a-number,male")  # the model refuses it
            elif i % 89 == 7:
                lines.append(f"{i},Adelie,1.0")  # a field count
            elif i % 83 == 11:
                lines.append(f'{i},"Gentoo\nwith a line break",40.1,4000,NA')
            else:
                lines.append(f"{i},Chinstrap,{i % 50}.5,{3000 + i},female")
        (folder / f"p{part}.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    report = (
        Pipeline("files")
        .add_stage(MapStage(_fail_some, name="check"))
        .run(
            CsvSource("in/*.csv", root=tmp_path, model=Penguin),
            JsonlSink(out),
            checkpoint=tmp_path / "cp.db",
            dead_letters=tmp_path / "dl.db",
            batch_size=64,
            max_dead_letters="100%",
            handle_signals=False,
        )
    )
    sink_ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    with open_dead_letter_store(tmp_path / "dl.db") as store:
        letters = store.list(limit=None)
    source_letters = [d for d in letters if d.stage == "source"]
    stage_letters = [d for d in letters if d.stage == "check"]
    q_source = [_id_of_raw(d.record["raw"]) for d in source_letters]
    q_stage = [d.record.id if hasattr(d.record, "id") else d.record["id"] for d in stage_letters]
    every = sink_ids + q_source + q_stage
    assert len(every) == len(set(every)) == len(expected)
    assert set(every) == expected
    assert set(q_source) == {i for i in expected if i % 97 == 5 or (i % 89 == 7 and i % 97 != 5)}
    assert all(
        d.message.startswith(f"{d.record['file']}:{d.record['line']}: ") for d in source_letters
    )
    assert report.stage("source").dead_lettered == len(q_source)
    assert report.checkpoint is not None
    assert report.checkpoint.finished
    assert report.records_in == len(expected)


# -- errors, options, registry -------------------------------------------------------------------


def test_a_missing_file_or_a_glob_matching_nothing_names_the_key_and_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(OptionError) as missing:
        CsvSource("data/in.csv", root=tmp_path)
    text = str(missing.value)
    assert missing.value.key == "source.path"
    assert text.startswith("source.path 'data/in.csv': no such file (")
    assert "create it, or correct source.path" in text
    with pytest.raises(OptionError) as nothing:
        JsonlSource("data/*.jsonl", root=tmp_path)
    text = str(nothing.value)
    assert text.startswith("source.path 'data/*.jsonl' matches no file")
    assert "put the input files there, or correct source.path" in text
    (tmp_path / "data").mkdir()
    with pytest.raises(OptionError, match="is a folder"):
        CsvSource("data", root=tmp_path)
    with pytest.raises(OptionError, match=re.escape("is a folder without .parquet files")):
        ParquetSource("data", root=tmp_path)


def test_paths_outside_the_project_are_refused_from_config(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    (root / "data").mkdir(parents=True)
    (tmp_path / "outside.csv").write_text("a\n1\n")
    (root / "data" / "link.csv").symlink_to(tmp_path / "outside.csv")
    for path in ("../outside.csv", "data/*.csv", "../*.csv"):
        with pytest.raises(OutsideProject, match="outside the project folder"):
            CsvSource.from_config(CsvSource.Config(path=path), root)
    allowed = CsvSource.from_config(
        CsvSource.Config(path="../outside.csv", allow_outside_project=True), root
    )
    assert items(allowed) == [{"a": "1"}]
    assert allowed.inputs() == [str(tmp_path / "outside.csv")]


def test_configs_validate_their_options() -> None:
    with pytest.raises(ValidationError, match="columns must name the columns"):
        CsvSource.Config(path="a.csv", header=False)
    with pytest.raises(ValidationError, match="does not write line breaks as the byte"):
        CsvSource.Config(path="a.csv", encoding="utf-16")
    with pytest.raises(ValidationError, match="unknown encoding"):
        JsonlSource.Config(path="a.jsonl", encoding="nope")
    with pytest.raises(ValidationError, match="must be one character"):
        CsvSource.Config(path="a.csv", delimiter=";;")
    with pytest.raises(ValidationError, match="is not a class reference"):
        ParquetSource.Config(path="a", model="not a reference")
    with pytest.raises(ValidationError, match="greater than 0"):
        ParquetSource.Config(path="a", batch_rows=0)
    with pytest.raises(ValidationError, match="extra"):
        CsvSource.Config.model_validate({"path": "a.csv", "delimeter": ";"})
    for cls in (CsvSource, JsonlSource, ParquetSource):
        rows = describe_connector(cls)
        assert rows[0]["name"] == "path"
        assert rows[0]["default"] == "required"
        assert all(row["description"] for row in rows)
        assert "model" in {row["name"] for row in rows}
        assert cls.__doc__
    assert connector("source", "csv") is CsvSource
    assert connector("source", "jsonl") is JsonlSource
    assert connector("source", "parquet") is ParquetSource
    assert conveyor.connectors.ParquetSource is ParquetSource


def test_sources_built_in_code_refuse_bad_options(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("a\n1\n")
    with pytest.raises(PipelineDefinitionError, match="columns must name the columns"):
        CsvSource(tmp_path / "a.csv", header=False)
    with pytest.raises(PipelineDefinitionError, match="utf-32"):
        CsvSource(tmp_path / "a.csv", encoding="utf-32")
    with pytest.raises(PipelineDefinitionError, match="column 'a' is given twice"):
        CsvSource(tmp_path / "a.csv", columns=["a", "a"])
    with pytest.raises(PipelineDefinitionError, match="delimiter"):
        CsvSource(tmp_path / "a.csv", delimiter="::")
    with pytest.raises(PipelineDefinitionError, match="max_line_bytes"):
        JsonlSource(tmp_path / "a.csv", max_line_bytes=0)
    with pytest.raises(OptionError, match=re.escape("source.model must be a Pydantic model class")):
        CsvSource(tmp_path / "a.csv", model=3)


def test_a_model_reference_is_imported_from_the_project(tmp_path: Path) -> None:
    package = tmp_path / "src" / "fsmodels_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from pydantic import BaseModel\n\nclass Row(BaseModel):\n    a: int\n"
    )
    (tmp_path / "a.csv").write_text("a\n1\nx\n")
    path = list(sys.path)
    try:
        source = CsvSource.from_config(
            CsvSource.Config(path="a.csv", model="fsmodels_pkg.models:Row"), tmp_path
        )
        got = items(source)
        assert got[0].a == 1
        assert type(got[0]).__name__ == "Row"
        assert got[1][1].startswith("a.csv:3: field 'a': Input should be a valid integer")
        with pytest.raises(OptionError) as missing:
            CsvSource("a.csv", root=tmp_path, model="fsmodels_pkg.models:Nope")
        assert missing.value.key == "source.model"
        assert "has no attribute 'Nope'" in str(missing.value)
        with pytest.raises(OptionError, match=r"cannot be imported.*ModuleNotFoundError"):
            CsvSource("a.csv", root=tmp_path, model="fsmodels_pkg.nothing:Row")
    finally:
        sys.path[:] = path
        for name in [m for m in sys.modules if m.startswith("fsmodels_pkg")]:
            del sys.modules[name]


def _open_files() -> set[str]:
    folder = "/proc/self/fd"
    found = set()
    for fd in os.listdir(folder):
        try:
            found.add(os.readlink(os.path.join(folder, fd)))
        except OSError:
            continue
    return found


def test_close_releases_the_open_file(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n')
    source = JsonlSource("a.jsonl", root=tmp_path)
    iterator = iter(source)
    assert next(iterator) == {"a": 1}
    if os.path.isdir("/proc/self/fd"):
        assert str(path) in _open_files()
    source.close()
    if os.path.isdir("/proc/self/fd"):
        assert str(path) not in _open_files()
    assert list(iterator) == []
    assert repr(source) == "<JsonlSource a.jsonl>"
    assert source.read() is source
