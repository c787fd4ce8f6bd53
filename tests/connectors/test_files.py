"""The file sinks (JSONL, CSV, Parquet): through the real runner, on their own, and across
a crash (a child process killed with SIGKILL) and a resume."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel, ValidationError

import conveyor.connectors
from conveyor import MapStage, Pipeline, RunInfo, RunStatus
from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink
from conveyor.core._paths import OutsideProject
from conveyor.core.checkpoint import Checkpoint, PipelineIdentity, SqliteCheckpointStore
from conveyor.dlq import DeadLetter, open_dead_letter_store
from conveyor.errors import CheckpointError, PipelineDefinitionError, UsageError

pytestmark = pytest.mark.timeout(120)


class Reading(BaseModel):
    id: int
    name: str
    at: datetime
    amount: Decimal
    key: UUID


@dataclass
class Point:
    id: int
    name: str
    on: date


def _identity(record: Any) -> Any:
    return record


def _run(
    tmp_path: Path,
    records: list[Any],
    sink: Any,
    fn: Any = _identity,
    **options: Any,
) -> Any:
    options.setdefault("resume", False)
    return (
        Pipeline("p")
        .add_stage(MapStage(fn, name="m"))
        .run(
            records,
            sink,
            dead_letters=tmp_path / "dl.db",
            checkpoint=tmp_path / "cp.db",
            checkpoint_every="100r",
            batch_size=50,
            **options,
        )
    )


def _letters(tmp_path: Path) -> list[DeadLetter]:
    with open_dead_letter_store(tmp_path / "dl.db") as store:
        return store.list()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "a torn last line"
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def _csv(path: Path, encoding: str = "utf-8") -> list[list[str]]:
    text = path.read_text(encoding=encoding)
    assert not text or text.endswith("\n"), "a torn last row"
    return list(csv.reader(io.StringIO(text, newline="")))


def _resume_from(sink_state: Any) -> RunInfo:
    checkpoint = Checkpoint(PipelineIdentity("p", "f", "s"), "run-0", sink=sink_state)
    return RunInfo("run-1", "p", "run", checkpointing=True, resume_from=checkpoint)


# -- JSONL -----------------------------------------------------------------------------------


def test_jsonl_round_trips_dicts_models_and_dataclasses(tmp_path: Path) -> None:
    at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    key = UUID(int=7)

    def shape(record: dict[str, Any]) -> Any:
        i = record["id"]
        if i % 3 == 1:
            return Reading(id=i, name=f"r{i}", at=at, amount=Decimal("1.10"), key=key)
        if i % 3 == 2:
            return Point(id=i, name=f"p{i}", on=date(2024, 1, i % 28 + 1))
        return {"id": i, "name": "naïve ☃", "tags": ["a", "b"], "none": None}

    out = tmp_path / "out" / "rows.jsonl"
    report = _run(tmp_path, [{"id": i} for i in range(300)], JsonlSink(out), shape)

    rows = _jsonl(out)
    assert [row["id"] for row in rows] == list(range(300))
    assert rows[0] == {"id": 0, "name": "naïve ☃", "tags": ["a", "b"], "none": None}
    assert rows[1] == {
        "id": 1,
        "name": "r1",
        "at": "2024-05-01T12:30:00+00:00",
        "amount": "1.10",
        "key": str(key),
    }
    assert rows[2] == {"id": 2, "name": "p2", "on": "2024-01-03"}
    assert "naïve ☃".encode() in out.read_bytes()  # written as UTF-8, not escaped
    assert report.status is RunStatus.COMPLETED
    assert report.records_out == 300
    assert report.checkpoints_written > 1
    assert report.sink_guarantee == "exactly-once"
    assert report.checkpoint.sink == {"path": str(out), "length": out.stat().st_size}
    assert report.checkpoint.records["written"] == 300


def test_a_record_that_cannot_be_json_is_dead_lettered_alone(tmp_path: Path) -> None:
    bad = {17: object(), 60: float("nan"), 133: b"raw", 150: float("inf")}
    records = [{"id": i, "value": bad.get(i, i)} for i in range(200)]
    out = tmp_path / "rows.jsonl"
    report = _run(tmp_path, records, JsonlSink(out))

    assert [row["id"] for row in _jsonl(out)] == [i for i in range(200) if i not in bad]
    letters = _letters(tmp_path)
    assert sorted(letter.record["id"] for letter in letters) == sorted(bad)
    assert {letter.stage for letter in letters} == {"sink"}
    by_id = {letter.record["id"]: letter for letter in letters}
    assert "not JSON serializable" in by_id[17].message
    assert "Out of range float" in by_id[60].message
    assert "bytes cannot be written as JSON" in by_id[133].message
    assert "record 0 of the batch" in by_id[133].traceback  # isolated: a batch of one
    assert report.dead_lettered == 4
    assert report.records_out == 196


def test_jsonl_replay_appends_and_a_new_run_starts_afresh(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    sink = JsonlSink(out)
    sink.open(RunInfo("r1", "p"))
    sink.write([{"id": 1}])
    sink.close(RunStatus.COMPLETED)

    sink.open(RunInfo("r2", "p", "replay"))
    sink.write([{"id": 2}, {"id": 3}])
    sink.close(RunStatus.COMPLETED)
    assert [row["id"] for row in _jsonl(out)] == [1, 2, 3]

    sink.open(RunInfo("r3", "p"))
    sink.write([{"id": 4}])
    sink.close(RunStatus.INTERRUPTED)
    assert [row["id"] for row in _jsonl(out)] == [4]


def test_a_failed_write_leaves_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "rows.jsonl"
    sink = JsonlSink(out)
    sink.open(RunInfo("r", "p"))
    sink.write([{"id": 0}])
    before = out.read_bytes()
    real_write = os.write

    def disk_full(fd: int, data: Any) -> int:
        if fd == sink._fd:
            real_write(fd, bytes(data)[: len(data) // 2])  # half of it lands, then ENOSPC
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        sink.write([{"id": i, "pad": "x" * 100} for i in range(1, 20)])
    assert out.read_bytes() == before
    monkeypatch.setattr(os, "write", real_write)
    sink.write([{"id": 20}])
    sink.close(RunStatus.COMPLETED)
    assert [row["id"] for row in _jsonl(out)] == [0, 20]


def test_commit_returns_the_length_and_an_aborted_run_is_cut_back_to_it(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    sink = JsonlSink(out)
    checkpoint = Checkpoint(PipelineIdentity("p", "f", "s"), "r")
    sink.open(RunInfo("r", "p", "run", checkpointing=True))
    sink.write([{"id": 1}])
    assert sink.commit(checkpoint) == {"path": str(out), "length": len(b'{"id": 1}\n')}
    sink.write([{"id": 2}])
    sink.close(RunStatus.ABORTED)
    assert [row["id"] for row in _jsonl(out)] == [1]

    # without checkpoints nothing would replay the records: close keeps everything written
    sink.open(RunInfo("r2", "p", "replay"))
    sink.write([{"id": 2}])
    sink.close(RunStatus.ABORTED)
    assert [row["id"] for row in _jsonl(out)] == [1, 2]


def test_a_resume_truncates_to_the_committed_length(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    committed = b'{"id": 1}\n{"id": 2}\n'
    out.write_bytes(committed + b'{"id": 3}\n{"id": 4, "na')  # uncommitted, and a torn line
    sink = JsonlSink(out)
    sink.open(_resume_from({"path": str(out), "length": len(committed)}))
    sink.write([{"id": 3}])
    sink.close(RunStatus.COMPLETED)
    assert [row["id"] for row in _jsonl(out)] == [1, 2, 3]

    # a checkpoint taken before the first commit: nothing was committed
    sink.open(_resume_from(None))
    sink.close(RunStatus.COMPLETED)
    assert out.read_bytes() == b""


def test_a_file_shorter_than_its_checkpoint_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rows.jsonl"
    out.write_bytes(b'{"id": 1}\n')
    sink = JsonlSink(out)
    with pytest.raises(CheckpointError, match=r"shorter than the checkpoint.*--fresh"):
        sink.open(_resume_from({"path": str(out), "length": 1000}))
    assert out.read_bytes() == b'{"id": 1}\n'  # untouched
    sink.close(RunStatus.ABORTED)  # safe after a failed open

    with pytest.raises(CheckpointError, match="not to this file"):
        sink.open(_resume_from({"path": str(tmp_path / "other.jsonl"), "length": 0}))
    with pytest.raises(CheckpointError, match="not written by a JsonlSink"):
        sink.open(_resume_from({"path": str(out), "shards": []}))


def test_close_before_open_does_nothing_and_write_before_open_is_refused(tmp_path: Path) -> None:
    for sink in (
        JsonlSink(tmp_path / "a.jsonl"),
        CsvSink(tmp_path / "a.csv"),
        ParquetSink(tmp_path / "a"),
    ):
        sink.close(RunStatus.COMPLETED)
        with pytest.raises(UsageError, match="open"):
            sink.write([{"id": 1}])
    assert not (tmp_path / "a.jsonl").exists()


# -- CSV -------------------------------------------------------------------------------------


def test_csv_writes_the_header_once_and_refuses_an_unknown_key(tmp_path: Path) -> None:
    records = [{"id": i, "name": f"n{i}"} for i in range(120)]
    records[72] = {"id": 72, "name": "n72", "size": 3}  # not in the first batch
    out = tmp_path / "rows.csv"
    report = _run(tmp_path, records, CsvSink(out))
    rows = _csv(out)
    assert rows[0] == ["id", "name"]
    assert [int(r[0]) for r in rows[1:]] == [i for i in range(120) if i != 72]
    (letter,) = _letters(tmp_path)
    assert letter.record["id"] == 72
    assert "'size'" in letter.message
    assert "columns: id, name" in letter.message
    assert report.records_out == 119

    sink = CsvSink(out)  # a replay appends, under the same header (read from the file)
    sink.open(RunInfo("r2", "p", "replay"))
    assert sink.columns == ["id", "name"]
    sink.write([{"name": "late", "id": 72}])
    sink.close(RunStatus.COMPLETED)
    rows = _csv(out)
    assert [r for r in rows if r == ["id", "name"]] == [["id", "name"]]
    assert rows[-1] == ["72", "late"]


def test_csv_columns_from_a_model_missing_keys_are_empty(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    sink = CsvSink(out, model=Point, delimiter=";")
    sink.open(RunInfo("r", "p"))
    sink.write([Point(1, "a;b", date(2024, 2, 3)), {"id": 2}, {"name": None, "id": 3}])
    sink.close(RunStatus.COMPLETED)
    assert out.read_text() == 'id;name;on\n1;"a;b";2024-02-03\n2;;\n3;;\n'

    empty = tmp_path / "empty.csv"  # known columns: the header even without a row
    sink = CsvSink(empty, columns=["a", "b"])
    sink.open(RunInfo("r", "p"))
    sink.close(RunStatus.COMPLETED)
    assert empty.read_text() == "a,b\n"


def test_csv_values_and_what_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    sink = CsvSink(out, header=False)
    sink.open(RunInfo("r", "p"))
    sink.write(
        [
            {
                "at": datetime(2024, 1, 2, 3, 4, 5),
                "amount": Decimal("2.50"),
                "nested": {"k": [1, 2]},
                "flag": True,
                "text": 'say "hi"\nbye',
            }
        ]
    )
    with pytest.raises(TypeError, match="column 'at': a value of type bytes"):
        sink.write([{"at": b"raw"}])
    sink.close(RunStatus.COMPLETED)
    assert _csv(out) == [
        ["2024-01-02T03:04:05", "2.50", '{"k": [1, 2]}', "True", 'say "hi"\nbye'],
    ]


def test_csv_byte_order_mark_only_at_the_start(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    sink = CsvSink(out, encoding="utf-8-sig")
    for mode in ("run", "replay"):
        sink.open(RunInfo("r", "p", mode))  # type: ignore[arg-type]
        sink.write([{"id": 1, "name": "é"}])
        sink.close(RunStatus.COMPLETED)
    data = out.read_bytes()
    assert data.startswith(b"\xef\xbb\xbf")
    assert data.count(b"\xef\xbb\xbf") == 1
    assert _csv(out, "utf-8-sig") == [["id", "name"], ["1", "é"], ["1", "é"]]


def test_csv_appending_under_another_header_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "rows.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(PipelineDefinitionError, match="header is a, b"):
        CsvSink(out, columns=["b", "a"]).open(RunInfo("r", "p", "replay"))
    sink = CsvSink(out)
    sink.open(RunInfo("r", "p", "replay"))
    sink.write([{"b": 4, "a": 3}])
    sink.close(RunStatus.COMPLETED)
    assert out.read_text() == "a,b\n1,2\n3,4\n"


# -- Parquet ---------------------------------------------------------------------------------


def test_parquet_shards_of_rows_per_shard(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "shards"
    sink = ParquetSink(out, rows_per_shard=100)
    sink.open(RunInfo("r", "p"))
    for start in range(0, 250, 50):
        sink.write([{"id": i, "name": f"n{i}"} for i in range(start, start + 50)])
    assert sink.shards == ["part-00000.parquet", "part-00001.parquet"]
    sink.close(RunStatus.COMPLETED)
    names = sorted(os.listdir(out))
    assert names == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [pq.read_metadata(out / n).num_rows for n in names] == [100, 100, 50]
    table = pq.read_table(out)
    assert sorted(table.column("id").to_pylist()) == list(range(250))

    sink.open(RunInfo("r2", "p", "replay"))  # a replay adds shards after the others
    sink.write([{"id": 250, "name": "late"}])
    sink.close(RunStatus.COMPLETED)
    assert sorted(os.listdir(out))[-1] == "part-00003.parquet"

    sink.open(RunInfo("r3", "p"))  # a new run starts afresh
    sink.write([{"id": 0, "name": "again"}])
    sink.close(RunStatus.COMPLETED)
    assert os.listdir(out) == ["part-00000.parquet"]


def test_parquet_through_the_runner_casts_to_the_first_schema(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    records: list[dict[str, Any]] = [
        {"id": i, "value": i * 0.5, "note": None if i < 70 else f"n{i}"} for i in range(300)
    ]
    records[77]["value"] = "not a number"
    records[78]["value"] = 7  # an int into the float column: cast
    records[79]["value"] = 2.5
    records[90]["extra"] = 1
    out = tmp_path / "shards"
    report = _run(tmp_path, records, ParquetSink(out, rows_per_shard=1000))

    table = pq.read_table(out)
    ids = table.column("id").to_pylist()
    assert sorted(ids) == [i for i in range(300) if i not in (77, 90)]
    assert str(table.schema.field("value").type) == "double"
    assert str(table.schema.field("note").type) == "string"  # only None in the first batch
    assert sorted(letter.record["id"] for letter in _letters(tmp_path)) == [77, 90]
    assert report.checkpoint.sink == {"path": str(out), "shards": sorted(os.listdir(out))}
    assert 1 < len(os.listdir(out)) <= report.checkpoints_written  # a checkpoint cuts a shard


def test_parquet_refuses_a_lossy_cast_and_a_value_for_a_null_column(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    sink = ParquetSink(tmp_path / "s", rows_per_shard=2)
    sink.open(RunInfo("r", "p"))
    sink.write([{"n": 1, "gone": None}, {"n": 2, "gone": None}])  # a shard: `gone` is null
    with pytest.raises(ValueError, match="truncated"):
        sink.write([{"n": 2.5}])
    with pytest.raises(ValueError, match="holds only nulls"):
        sink.write([{"n": 3, "gone": "x"}])
    sink.close(RunStatus.COMPLETED)
    assert sink.shards == ["part-00000.parquet"]


def test_parquet_later_batches_convert_exactly_or_cast_safely(tmp_path: Path) -> None:
    # No null column: later batches take the straight conversion to the schema; a value it
    # does not take exactly goes column by column (a safe cast, or an error naming it).
    pq = pytest.importorskip("pyarrow.parquet")
    sink = ParquetSink(tmp_path / "s", rows_per_shard=100)
    sink.open(RunInfo("r", "p"))
    sink.write([{"n": 1, "label": "a", "x": 0.5}])
    sink.write([{"n": 2, "label": "b", "x": 1}])
    sink.write([{"n": 3, "label": 7, "x": 2.0}])
    sink.write([{"n": 4}])  # missing keys are nulls
    sink.write([{"n": 5}, {"n": 6, "label": "late"}])  # a key the first row lacks is kept
    with pytest.raises(ValueError, match="truncated"):
        sink.write([{"n": 2.5, "label": "c", "x": 1.0}])
    with pytest.raises(ValueError, match="has the key 'extra'"):
        sink.write([{"n": 5, "extra": 1}])
    with pytest.raises(ValueError, match="record 1 of the batch has the key 'extra'"):
        sink.write([{"n": 5}, {"n": 6, "extra": "x"}, {"n": 7, "extra": 2}])
    sink.close(RunStatus.COMPLETED)
    table = pq.read_table(tmp_path / "s")
    assert table.to_pylist() == [
        {"n": 1, "label": "a", "x": 0.5},
        {"n": 2, "label": "b", "x": 1.0},
        {"n": 3, "label": "7", "x": 2.0},  # an int into the string column: cast, as before
        {"n": 4, "label": None, "x": None},
        {"n": 5, "label": None, "x": None},
        {"n": 6, "label": "late", "x": None},
    ]
    assert [str(f.type) for f in table.schema] == ["int64", "string", "double"]


def test_parquet_resume_and_abort_drop_uncommitted_shards(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "s"
    sink = ParquetSink(out, rows_per_shard=2)
    checkpoint = Checkpoint(PipelineIdentity("p", "f", "s"), "r")
    sink.open(RunInfo("r", "p", "run", checkpointing=True))
    sink.write([{"id": 1}, {"id": 2}, {"id": 3}])
    state = sink.commit(checkpoint)
    assert state == {"path": str(out), "shards": ["part-00000.parquet", "part-00001.parquet"]}
    sink.write([{"id": 4}, {"id": 5}, {"id": 6}])  # one shard, one row buffered
    sink.close(RunStatus.ABORTED)
    assert sorted(os.listdir(out)) == state["shards"]

    (out / "part-00002.parquet").write_bytes(b"half a shard")  # left by a killed run
    (out / ".part-00003.parquet.tmp").write_bytes(b"")
    sink.open(_resume_from(state))
    sink.write([{"id": 4}])
    sink.close(RunStatus.COMPLETED)
    assert sorted(os.listdir(out)) == [*state["shards"], "part-00002.parquet"]
    assert sorted(pq.read_table(out).column("id").to_pylist()) == [1, 2, 3, 4]

    with pytest.raises(CheckpointError, match=r"part-00009.parquet.*missing"):
        sink.open(_resume_from({"path": str(out), "shards": ["part-00009.parquet"]}))


# -- configuration ---------------------------------------------------------------------------


def test_configs_and_from_config(tmp_path: Path) -> None:
    sink = JsonlSink.from_config(JsonlSink.Config(path="out/a.jsonl"), tmp_path)
    assert sink.path == tmp_path / "out" / "a.jsonl"
    csv_sink = CsvSink.from_config(
        CsvSink.Config(path="a.csv", delimiter="\t", header=False, columns=["x"]), tmp_path
    )
    assert (csv_sink.path, csv_sink.delimiter, csv_sink.header, csv_sink.columns) == (
        tmp_path / "a.csv",
        "\t",
        False,
        ["x"],
    )
    with pytest.raises(OutsideProject, match=r"^sink\.path '.*abs' is outside the project"):
        ParquetSink.from_config(ParquetSink.Config(path=str(tmp_path / "abs")), Path("/elsewhere"))
    parquet = ParquetSink.from_config(
        ParquetSink.Config(
            path=str(tmp_path / "abs"),
            rows_per_shard=5,
            compression="snappy",
            allow_outside_project=True,
        ),
        Path("/elsewhere"),
    )
    assert (parquet.path, parquet.rows_per_shard, parquet.compression) == (
        tmp_path / "abs",
        5,
        "snappy",
    )
    for bad in (
        lambda: JsonlSink.Config(path="a", model="x"),  # type: ignore[call-arg]
        lambda: CsvSink.Config(path="a", delimiter=";;"),
        lambda: CsvSink.Config(path="a", encoding="klingon"),
        lambda: CsvSink.Config(path="a", columns=["a", "a"]),
        lambda: ParquetSink.Config(path="a", rows_per_shard=0),
        lambda: ParquetSink.Config(path="a", compression="zip"),
    ):
        with pytest.raises(ValidationError):
            bad()
    with pytest.raises(PipelineDefinitionError, match="delimiter"):
        CsvSink(tmp_path / "a.csv", delimiter="ab")
    with pytest.raises(PipelineDefinitionError, match="rows_per_shard"):
        ParquetSink(tmp_path / "s", rows_per_shard=0)
    assert JsonlSink.Config.model_fields["path"].description
    assert conveyor.connectors.JsonlSink is JsonlSink
    for cls in (JsonlSink, CsvSink, ParquetSink):
        assert cls.exactly_once
        assert cls.idempotent


# -- a crash and a resume ----------------------------------------------------------------------

CHILD = r"""
import json, math, os, signal, sys
from conveyor import MapStage, Pipeline
from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink

spec = json.loads(sys.argv[1])
kind, n = spec["kind"], spec["n"]

def record(i):
    rec = {"id": i, "name": f"r{i}", "value": i * 0.5}
    if i % 97 == 13:  # refused by the sink
        if kind == "jsonl":
            rec["value"] = math.nan
        elif kind == "csv":
            rec["extra"] = 1
        else:
            rec["value"] = "not a number"
    return rec

def fn(rec):
    if rec["id"] == spec.get("kill_at"):
        os.kill(os.getpid(), signal.SIGKILL)
    if rec["id"] % 211 == 7:
        raise ValueError(f"the map refuses {rec['id']}")
    return rec

if kind == "jsonl":
    sink = JsonlSink(spec["out"])
elif kind == "csv":
    sink = CsvSink(spec["out"], columns=["id", "name", "value"])
else:
    sink = ParquetSink(spec["out"], rows_per_shard=spec.get("rows_per_shard", 1000))
try:
    report = Pipeline("p").add_stage(MapStage(fn, name="m")).run(
        [record(i) for i in range(n)], sink, dead_letters=spec["dl"], checkpoint=spec["cp"],
        checkpoint_every=spec.get("every", "100r"), batch_size=spec.get("batch", 50),
        resume=spec["resume"],
    )
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(3)
cp = report.checkpoint
print(json.dumps({"status": report.status.value, "written": cp.records["written"],
                  "finished": cp.finished, "replayed": report.replayed}))
"""


def _child(tmp_path: Path, fault: str | None = None, **spec: Any) -> tuple[int, dict[str, Any]]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    spec.setdefault("dl", str(tmp_path / "dl.db"))
    spec.setdefault("cp", str(tmp_path / "cp.db"))
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
    if fault is not None:
        env["CONVEYOR_FAULT"] = fault
    done = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode in (0, 3, -9), done.stderr
    return done.returncode, json.loads(lines[-1]) if lines else {}


def _sink_ids(kind: str, out: Path) -> list[int]:
    if kind == "jsonl":
        return [row["id"] for row in _jsonl(out)]
    if kind == "csv":
        rows = _csv(out)
        assert rows[0] == ["id", "name", "value"]
        assert all(len(row) == 3 for row in rows[1:])
        return [int(row[0]) for row in rows[1:]]
    import pyarrow.parquet as pq

    assert not [name for name in os.listdir(out) if name.startswith(".")]
    return list(pq.read_table(out).column("id").to_pylist())


def _check_exactly_once(kind: str, out: Path, tmp_path: Path, n: int, written: int) -> None:
    ids = _sink_ids(kind, out)
    letters = [letter.record["id"] for letter in _letters(tmp_path)]
    assert len(ids) == len(set(ids)), "a record written twice"
    assert len(letters) == len(set(letters)), "a record dead-lettered twice"
    assert not set(ids) & set(letters)
    assert set(ids) | set(letters) == set(range(n))
    refused = {i for i in range(n) if i % 211 == 7 or i % 97 == 13}
    assert set(letters) == refused
    assert len(ids) == written  # what the final checkpoint says was committed


def _out(kind: str, tmp_path: Path) -> Path:
    return tmp_path / {"jsonl": "out.jsonl", "csv": "out.csv", "parquet": "shards"}[kind]


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize(
    ("fault", "kill_at"),
    [("checkpoint_write:3", None), ("after_sink_commit:3", None), (None, 1234)],
    ids=["checkpoint_write", "after_sink_commit", "killed_in_map"],
)
def test_resume_after_a_crash_is_exactly_once(
    tmp_path: Path, kind: str, fault: str | None, kill_at: int | None
) -> None:
    if kind == "parquet":
        pytest.importorskip("pyarrow")
    n, out = 2000, _out(kind, tmp_path)
    spec: dict[str, Any] = {"kind": kind, "n": n, "out": str(out), "rows_per_shard": 120}
    code, _ = _child(tmp_path, fault, resume=False, kill_at=kill_at, **spec)
    assert code == -9  # SIGKILL: no close, no final checkpoint
    code, result = _child(tmp_path, resume=True, **spec)
    assert code == 0, result
    assert result["status"] == "completed"
    assert result["finished"]
    assert result["replayed"] > 0  # the records after the last checkpoint, written again
    _check_exactly_once(kind, out, tmp_path, n, result["written"])


def test_a_sink_file_cut_shorter_after_a_crash_is_refused_on_resume(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    spec: dict[str, Any] = {"kind": "jsonl", "n": 2000, "out": str(out)}
    code, _ = _child(tmp_path, "after_sink_commit:4", resume=False, **spec)
    assert code == -9
    store = SqliteCheckpointStore(tmp_path / "cp.db")
    checkpoint = store.load("p")
    store.close()
    assert checkpoint is not None
    assert checkpoint.sink["length"] > 0
    with out.open("r+b") as file:
        file.truncate(checkpoint.sink["length"] - 1)
    code, result = _child(tmp_path, resume=True, **spec)
    assert code == 3
    assert result["error"] == "CheckpointError"
    assert "shorter than the checkpoint" in result["message"]
    assert "--fresh" in result["message"]

    code, result = _child(tmp_path, resume=False, **spec)  # --fresh starts again
    assert code == 0
    assert result["finished"]
    _check_exactly_once("jsonl", out, tmp_path, 2000, result["written"])


def test_parquet_typed_columns_take_only_what_fits(tmp_path: Path) -> None:
    # Strings, floats and booleans are built straight as the schema's types; a batch with a
    # value of another kind there goes column by column and is cast safely, or refused.
    pq = pytest.importorskip("pyarrow.parquet")
    sink = ParquetSink(tmp_path / "s", rows_per_shard=100)
    sink.open(RunInfo("r", "p"))
    sink.write([{"name": "a", "x": 0.5, "ok": True}])
    sink.write([{"name": "b", "x": 1, "ok": 1}])  # an int for the float and the bool: cast
    sink.write([{"name": "c", "x": "2.5", "ok": False}])  # a number as text: parsed
    with pytest.raises(ValueError, match="Failed to parse string: 'many'"):
        sink.write([{"name": "d", "x": "many", "ok": True}])
    with pytest.raises(ValueError, match="record 0 of the batch has the key 'y'"):
        sink.write([{"name": "e", "y": 1.0}])
    with pytest.raises(ValueError, match=r"column 'name' is string.*make them text"):
        sink.write([{"name": UUID(int=7), "x": 1.0}])  # not its 16 raw bytes as text
    sink.close(RunStatus.COMPLETED)
    table = pq.read_table(tmp_path / "s")
    assert table.to_pylist() == [
        {"name": "a", "x": 0.5, "ok": True},
        {"name": "b", "x": 1.0, "ok": True},
        {"name": "c", "x": 2.5, "ok": False},
    ]
    assert [str(f.type) for f in table.schema] == ["string", "double", "bool"]
