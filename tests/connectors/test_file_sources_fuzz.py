"""Generated malformed inputs for the file sources (Hypothesis): every bad line is rejected
with ``FILE:LINE: reason`` naming its line, every good one is read, nothing crashes or hangs.

Each example is a small file mixing good lines (rows) with at least one malformed one —
invalid UTF-8, truncated lines and unclosed quotes, NUL bytes, values of the wrong type
for the model, huge numbers, deep nesting, wrong field counts, over-long lines, values
that are not JSON objects; for Parquet, rows that do not fit the model (nulls, NaN and
infinities, integers out of range, numbers as text, nested lists, undecodable bytes) and
damaged files. A deadline of one second holds for every example, and reading it again from
an offset taken after a random number of records gives exactly the rest.

Size: ``CONVEYOR_FUZZ_EXAMPLES`` examples per format (each holding malformed input); by
default 300, or 10,000 under ``CONVEYOR_FAULTS=full`` (``make faults``).
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field, ValidationError

from conveyor import Rejected
from conveyor.connectors.file_sources import CsvSource, JsonlSource, ParquetSource
from conveyor.errors import SourceRecordError

FULL = os.environ.get("CONVEYOR_FAULTS") == "full"
EXAMPLES = int(os.environ.get("CONVEYOR_FUZZ_EXAMPLES") or (10_000 if FULL else 300))
MAX_LINE = 8192  # max_line_bytes of the sources under test

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=1000,  # ms per example: a malformed line is handled fast, never hangs
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

pytestmark = pytest.mark.timeout(7200 if FULL else 600)


class Row(BaseModel):
    id: int
    name: str
    score: Annotated[float, Field(allow_inf_nan=False)]


class Bounded(BaseModel):
    id: Annotated[int, Field(ge=-(10**15), le=10**15)]
    name: str
    score: Annotated[float, Field(allow_inf_nan=False)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _shown(item: Any) -> Any:
    return ("rejected", item.record, str(item.error)) if isinstance(item, Rejected) else item


def _check_rejects(got: list[Any], name: str) -> list[Rejected]:
    rejects = [item for item in got if isinstance(item, Rejected)]
    for reject in rejects:
        assert isinstance(reject.error, SourceRecordError)
        line = reject.record["line"]
        assert reject.record["file"] == name
        assert isinstance(line, int)
        assert line >= 1
        prefix = f"{name}:{line}: "
        message = str(reject.error)
        assert message.startswith(prefix), message
        assert len(message) > len(prefix) + 3, message  # a reason
        assert "\n" not in message
    return rejects


def _check_seek(make: Any, got: list[Any], k: int) -> None:
    """Reading again from the offset after ``k`` items gives exactly the rest."""
    first = make()
    iterator = iter(first)
    for _ in range(k):
        next(iterator)
    offset = json.loads(json.dumps(first.offset))
    first.close()
    again = make()
    again.seek(offset)
    assert [_shown(i) for i in again] == [_shown(i) for i in got[k:]]


# -- csv ---------------------------------------------------------------------------------------

NA = {"", "NA", "N/A", "NULL", "null", "NaN"}
LETTERS = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCXYZ éüßøç日本語-_."),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in NA and s.strip() == s)
WORDS = st.text(alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyz"), min_size=1, max_size=8)
IDS = st.integers(-(10**9), 10**9)
SCORES = st.floats(allow_nan=False, allow_infinity=False, width=64)
BAD_UTF8 = st.sampled_from(
    [b"\xff", b"\xfe\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf8\x88\x80"]
)


@st.composite
def csv_good(draw: st.DrawFn) -> tuple[bytes, bool, Any]:
    i, score = draw(IDS), draw(SCORES)
    if draw(st.booleans()):
        name = draw(LETTERS)
        text = f"{i},{name},{score!r}"
    else:  # quoted: a comma, and maybe line breaks (their later lines start with a letter)
        parts = draw(st.lists(WORDS, min_size=1, max_size=3))
        name = "\n".join(parts) + ", " + draw(WORDS)
        text = f'{i},"{name}",{score!r}'
    return text.encode(), False, Row(id=i, name=name, score=score)


@st.composite
def csv_bad(draw: st.DrawFn) -> tuple[bytes, bool, Any]:
    i, name, score = draw(IDS), draw(LETTERS), draw(SCORES)
    kind = draw(
        st.sampled_from(
            [
                "fields",
                "utf8",
                "nul",
                "type",
                "huge_int",
                "huge_float",
                "quote",
                "truncated",
                "unclosed",
                "too_long",
            ]
        )
    )
    good = f"{i},{name},{score!r}".encode()
    if kind == "fields":
        count = draw(st.sampled_from([1, 2, 4, 5, 9]))
        line = b",".join(str(draw(IDS)).encode() for _ in range(count))
    elif kind == "utf8":
        at = draw(st.integers(0, len(good)))
        line = good[:at] + draw(BAD_UTF8) + b"x" + good[at:]
    elif kind == "nul":
        at = draw(st.integers(0, len(good)))
        line = good[:at] + b"\x00" + good[at:]
    elif kind == "type":
        if draw(st.booleans()):
            bad = draw(st.sampled_from(["abc", "1.5", "", "0x10", "--1"]))
            line = f"{bad},{name},{score!r}".encode()
        else:
            line = f"{i},{name},{draw(st.sampled_from(['x', 'one', '1;5', '']))}".encode()
    elif kind == "huge_int":
        line = f"{'9' * draw(st.integers(4301, MAX_LINE - 100))},{name},{score!r}".encode()
    elif kind == "huge_float":
        exponent = draw(st.integers(309, 100_000))
        line = f"{i},{name},{draw(st.sampled_from(['', '-']))}1e{exponent}".encode()
    elif kind == "quote":
        line = f'{i},"{name}"{draw(WORDS)},{score!r}'.encode()
    elif kind == "truncated":  # cut before its last comma: fields are missing
        last = good.rindex(b",")
        line = good[: draw(st.integers(1, last))]
    elif kind == "unclosed":
        line = f'{i},"{name}'.encode()
    else:
        line = f"{i},{'x' * draw(st.integers(MAX_LINE + 1, 4 * MAX_LINE))},{score!r}".encode()
    return line, True, kind


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[list[tuple[bytes, bool, Any]], bytes, bool]:
    bads = draw(st.lists(csv_bad(), min_size=1, max_size=4))
    goods = draw(st.lists(csv_good(), max_size=8))
    blanks = [(b"", False, None)] * draw(st.integers(0, 2))
    lines = draw(st.permutations(bads + goods + blanks))
    return lines, draw(st.sampled_from([b"\n", b"\r\n"])), draw(st.booleans())


@FUZZ
@given(spec=csv_files(), data=st.data())
def test_csv_malformed_lines_are_rejected_one_by_one(
    folder: Path, spec: tuple[list[tuple[bytes, bool, Any]], bytes, bool], data: st.DataObject
) -> None:
    lines, newline, final = spec
    body = newline.join(line for line, _, _ in lines)
    raw = b"id,name,score" + newline + body + (newline if final else b"")
    (folder / "f.csv").write_bytes(raw)

    def make() -> CsvSource:
        return CsvSource("f.csv", root=folder, model=Row, max_line_bytes=MAX_LINE)

    got = list(make())
    rejects = _check_rejects(got, "f.csv")
    spans = [(r.record["line"], r.record["line"] + r.record["raw"].count("\n")) for r in rejects]

    def covered(line: int) -> bool:
        return any(a <= line <= b for a, b in spans)

    expected: list[Any] = []
    number = 2  # line 1 is the header
    for line, bad, value in lines:
        physical = 1 + line.count(b"\n")
        if bad:
            assert covered(number), f"bad line {number} ({value}) not rejected: {line!r:.200}"
        elif value is not None and not any(covered(n) for n in range(number, number + physical)):
            expected.append(value)
        number += physical
    assert [g for g in got if not isinstance(g, Rejected)] == expected
    _check_seek(make, got, data.draw(st.integers(0, len(got)), label="seek after"))


# -- jsonl -------------------------------------------------------------------------------------

JSON_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], min_codepoint=1), max_size=12
)


def _deep(depth: int, opener: str) -> str:
    """``depth`` arrays (or objects) inside each other."""
    if opener == "{":
        return '{"a": ' * depth + "1" + "}" * depth
    return "[" * depth + "1" + "]" * depth


@st.composite
def jsonl_good(draw: st.DrawFn) -> tuple[bytes, str, Any]:
    row = Row(id=draw(IDS), name=draw(JSON_TEXT), score=draw(SCORES))
    text = json.dumps(row.model_dump(), ensure_ascii=draw(st.booleans()))
    return text.encode(), "good", row


@st.composite
def jsonl_bad(draw: st.DrawFn) -> tuple[bytes, str, Any]:
    i, name, score = draw(IDS), draw(JSON_TEXT), draw(SCORES)
    good = json.dumps({"id": i, "name": name, "score": score})
    kind = draw(
        st.sampled_from(
            [
                "truncated",
                "not_object",
                "deep",
                "deep_value",
                "huge_int",
                "huge_float",
                "utf8",
                "nul",
                "type",
                "missing",
                "extra",
                "too_long",
            ]
        )
    )
    if kind == "truncated":
        line = good[: draw(st.integers(0, len(good) - 1))].encode()
        if not line.strip():
            line = b"{"
    elif kind == "not_object":
        value = draw(
            st.one_of(st.lists(IDS, max_size=3), JSON_TEXT, IDS, SCORES, st.none(), st.booleans())
        )
        line = json.dumps(value).encode()
    elif kind == "deep":
        line = _deep(draw(st.integers(50, 4_000)), draw(st.sampled_from("[{"))).encode()
    elif kind == "deep_value":
        nested = _deep(draw(st.integers(1, 1_100)), draw(st.sampled_from("[{")))
        line = f'{{"id": {i}, "name": {nested}, "score": {score!r}}}'.encode()
    elif kind == "huge_int":
        digits = "9" * draw(st.integers(4301, MAX_LINE - 100))
        line = f'{{"id": {digits}, "name": "a", "score": 1}}'.encode()
    elif kind == "huge_float":
        line = f'{{"id": {i}, "name": "a", "score": 1e{draw(st.integers(309, 9999))}}}'.encode()
    elif kind == "utf8":
        line = f'{{"id": {i}, "name": "'.encode() + draw(BAD_UTF8) + b'", "score": 1}'
    elif kind == "nul":
        at = draw(st.integers(0, len(good)))
        line = good[:at].encode() + b"\x00" + good[at:].encode()
    elif kind == "type":
        field, value = draw(
            st.sampled_from(
                [
                    ("id", '"abc"'),
                    ("id", "1.5"),
                    ("id", "[1]"),
                    ("id", "{}"),
                    ("name", "5"),
                    ("name", "true"),
                    ("name", "null"),
                    ("score", '"x"'),
                    ("score", "[]"),
                ]
            )
        )
        row = {"id": str(i), "name": json.dumps(name), "score": repr(score), field: value}
        line = ("{" + ", ".join(f'"{k}": {v}' for k, v in row.items()) + "}").encode()
    elif kind == "missing":
        row = {"id": i, "name": name, "score": score}
        del row[draw(st.sampled_from(sorted(row)))]
        line = json.dumps(row).encode()
    elif kind == "extra":
        line = (good + draw(st.sampled_from([" x", " {}", ",", "]"]))).encode()
    else:
        line = json.dumps({"id": i, "name": "y" * (MAX_LINE + draw(IDS) % 2000 + 1)}).encode()
    return line, kind, None


@FUZZ
@given(
    bads=st.lists(jsonl_bad(), min_size=1, max_size=4),
    goods=st.lists(jsonl_good(), max_size=8),
    blanks=st.integers(0, 2),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    final=st.booleans(),
    data=st.data(),
)
def test_jsonl_malformed_lines_are_rejected_one_by_one(
    folder: Path,
    bads: list[tuple[bytes, str, Any]],
    goods: list[tuple[bytes, str, Any]],
    blanks: int,
    newline: bytes,
    final: bool,
    data: st.DataObject,
) -> None:
    blank = [
        (data.draw(st.sampled_from([b"", b"  ", b"\t"])), "blank", None) for _ in range(blanks)
    ]
    lines = data.draw(st.permutations(bads + goods + blank), label="lines")
    (folder / "f.jsonl").write_bytes(
        newline.join(line for line, _, _ in lines) + (newline if final else b"")
    )

    def make() -> JsonlSource:
        return JsonlSource("f.jsonl", root=folder, model=Row, max_line_bytes=MAX_LINE)

    got = list(make())
    rejects = _check_rejects(got, "f.jsonl")
    expected_bad = [n for n, (_, kind, _) in enumerate(lines, 1) if kind not in ("good", "blank")]
    assert [r.record["line"] for r in rejects] == expected_bad
    assert [g for g in got if not isinstance(g, Rejected)] == [
        row for _, kind, row in lines if kind == "good"
    ]
    _check_seek(make, got, data.draw(st.integers(0, len(got)), label="seek after"))


# -- parquet -----------------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=64)


@st.composite
def parquet_tables(draw: st.DrawFn) -> tuple[Any, int]:
    n = draw(st.integers(1, 40))
    variant = draw(st.sampled_from(["typed", "text_ids", "nested_names", "binary_names"]))
    ids: list[Any] = draw(st.lists(st.one_of(INT64, st.none()), min_size=n, max_size=n))
    names: list[Any] = draw(st.lists(st.one_of(JSON_TEXT, st.none()), min_size=n, max_size=n))
    scores = draw(st.lists(st.one_of(FLOATS, st.none()), min_size=n, max_size=n))
    columns: dict[str, Any] = {"score": pa.array(scores, pa.float64())}
    if variant == "text_ids":
        texts = st.one_of(
            st.integers(-(10**18), 10**18).map(str),
            st.sampled_from(["abc", "1.5", "", " 7 ", "9" * 5000]),
            st.none(),
        )
        columns["id"] = pa.array(draw(st.lists(texts, min_size=n, max_size=n)), pa.string())
    else:
        columns["id"] = pa.array(ids, pa.int64())
    if variant == "nested_names":
        depth = draw(st.integers(1, 20))
        kind: Any = pa.string()
        values: list[Any] = names
        for _ in range(depth):
            kind = pa.list_(kind)
            values = [None if v is None else [v] for v in values]
        columns["name"] = pa.array(values, kind)
    elif variant == "binary_names":
        raw = st.one_of(st.binary(max_size=8), BAD_UTF8, st.none())
        columns["name"] = pa.array(draw(st.lists(raw, min_size=n, max_size=n)), pa.binary())
    else:
        columns["name"] = pa.array(names, pa.string())
    table = pa.table({k: columns[k] for k in ("id", "name", "score")})
    # at least one row that does not fit: a null id
    bad = draw(st.integers(0, n - 1))
    ids_column = table.column("id").to_pylist()
    ids_column[bad] = None
    table = table.set_column(0, "id", pa.array(ids_column, table.schema.field("id").type))
    return table, draw(st.integers(1, 12))


@FUZZ
@given(spec=parquet_tables(), batch=st.integers(1, 7), data=st.data())
def test_parquet_rows_that_do_not_fit_are_rejected_with_their_row_number(
    folder: Path, spec: tuple[Any, int], batch: int, data: st.DataObject
) -> None:
    table, group = spec
    pq.write_table(table, folder / "f.parquet", row_group_size=group)

    def make() -> ParquetSource:
        return ParquetSource("f.parquet", root=folder, model=Bounded, batch_rows=batch)

    got = list(make())
    rejects = _check_rejects(got, "f.parquet")
    expected_records, expected_bad = [], []
    for number, row in enumerate(table.to_pylist(), 1):
        try:
            expected_records.append(Bounded.model_validate(row))
        except ValidationError:
            expected_bad.append(number)
    assert [r.record["line"] for r in rejects] == expected_bad
    assert expected_bad  # (each example holds a row that does not fit)
    assert [g for g in got if not isinstance(g, Rejected)] == expected_records
    _check_seek(make, got, data.draw(st.integers(0, len(got)), label="seek after"))


_GOOD_PARQUET: list[bytes] = []


def _good_parquet() -> bytes:
    if not _GOOD_PARQUET:
        n = 120
        table = pa.table(
            {
                "id": list(range(n)),
                "name": [f"n{i}" for i in range(n)],
                "score": [i / 3 for i in range(n)],
            }
        )
        for compression in ("none", "zstd"):
            buffer = io.BytesIO()
            pq.write_table(table, buffer, row_group_size=25, compression=compression)
            _GOOD_PARQUET.append(buffer.getvalue())
    return _GOOD_PARQUET[0]


@FUZZ
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=12),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_a_damaged_parquet_file_stops_the_run_with_its_name_or_reads(
    folder: Path, which: int, edits: list[tuple[float, int]], cut: float | None
) -> None:
    _good_parquet()
    data = bytearray(_GOOD_PARQUET[which])
    for where, value in edits:
        data[min(len(data) - 1, int(where * len(data)))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    (folder / "d.parquet").write_bytes(bytes(data))
    stopped: SourceRecordError | None = None
    got: list[Any] = []
    try:
        got = list(ParquetSource("d.parquet", root=folder, model=Row))
    except SourceRecordError as exc:  # the only error a damaged file may raise
        stopped = exc
    if stopped is not None:
        assert str(stopped).startswith("d.parquet: ")
        return
    _check_rejects(got, "d.parquet")
    for item in got:
        assert isinstance(item, Row | Rejected)
        if isinstance(item, Row):
            assert not math.isnan(item.score)
