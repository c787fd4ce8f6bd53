"""The ``generate`` source: records from field specs, the same for the same seed, resumed at
a position with the records the interrupted run would have made next, paced by ``rate``,
endless until stopped; its options checked in config.yaml terms."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from conveyor import MapStage, Pipeline
from conveyor.connectors import GenerateSource, SqliteSink, source_connectors
from conveyor.errors import PipelineDefinitionError

FIELDS: dict[str, Any] = {
    "id": "sequence",
    "colour": {"choice": ["red", "green", "blue"]},
    "die": {"randint": [1, 6]},
    "x": {"uniform": [-1, 1]},
    "noise": {"normal": [10, 2]},
    "kind": {"constant": "reading"},
}


def collect(source: GenerateSource, limit: int | None = None) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        got = []
        async for record in source:
            got.append(record)
            if limit is not None and len(got) >= limit:
                break
        return got

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_records_follow_from_the_seed_and_the_specs() -> None:
    first = collect(GenerateSource(FIELDS, count=2000, seed=3))
    assert first == collect(GenerateSource(FIELDS, count=2000, seed=3))
    assert first != collect(GenerateSource(FIELDS, count=2000, seed=4))
    assert [r["id"] for r in first] == list(range(2000))
    assert Counter(r["colour"] for r in first).keys() == {"red", "green", "blue"}
    assert {r["die"] for r in first} == {1, 2, 3, 4, 5, 6}
    assert all(-1 <= r["x"] <= 1 for r in first)
    assert 9.5 < sum(r["noise"] for r in first) / len(first) < 10.5
    assert {r["kind"] for r in first} == {"reading"}
    assert first == GenerateSource(FIELDS, count=2000, seed=3).records_from(0)


def test_a_resume_goes_on_with_the_records_the_run_would_have_made_next() -> None:
    whole = collect(GenerateSource(FIELDS, count=500, seed=9))
    interrupted = GenerateSource(FIELDS, count=500, seed=9)
    assert collect(interrupted, limit=137) == whole[:137]
    assert interrupted.offset == 137
    resumed = GenerateSource(FIELDS, count=500, seed=9)
    resumed.seek(interrupted.offset)
    assert collect(resumed) == whole[137:]
    with pytest.raises(ValueError, match="offset must be a position >= 0"):
        resumed.seek(-1)


def test_now_fields_read_the_wall_clock_up_to_their_disorder_behind() -> None:
    before = time.time()
    got = collect(GenerateSource({"ts": {"now": "2s"}, "at": "now"}, count=300, seed=1))
    after = time.time()
    assert all(before - 2 <= r["ts"] <= after for r in got)
    assert all(before <= r["at"] <= after for r in got)
    assert max(r["at"] - r["ts"] for r in got) > 1.0  # out of order, as asked


def test_rate_paces_the_records_and_an_endless_source_goes_on() -> None:
    began = time.monotonic()
    got = collect(GenerateSource({"id": "sequence"}, rate=400), limit=120)  # endless
    assert [r["id"] for r in got] == list(range(120))
    assert time.monotonic() - began >= 119 / 400 * 0.9


def test_bad_specs_are_refused_naming_the_field() -> None:
    cases = [
        ({"a": "dice"}, "field 'a': a spec is sequence, now, or a mapping"),
        ({"a": {"choice": []}}, "field 'a': choice takes a non-empty list"),
        ({"a": {"randint": [6, 1]}}, "randint's LOW 6 is above its HIGH 1"),
        ({"a": {"randint": [1.5, 3]}}, "randint takes a list of two integers"),
        ({"a": {"uniform": "0..1"}}, "uniform takes a list of two numbers"),
        ({"a": {"normal": [0, -1]}}, "normal's STDDEV must be >= 0"),
        ({"a": {"now": "soon"}}, "field 'a': now must be a duration"),
        ({"a": {"gauss": [0, 1]}}, "unknown spec 'gauss'"),
    ]
    for fields, message in cases:
        with pytest.raises(ValidationError, match=message):
            GenerateSource.Config(fields=fields)
        with pytest.raises(PipelineDefinitionError, match=message):
            GenerateSource(fields)
    with pytest.raises(ValidationError, match="rate"):
        GenerateSource.Config(fields={"a": "now"}, rate=0)
    with pytest.raises(ValidationError, match="fields"):
        GenerateSource.Config(fields={})
    with pytest.raises(ValidationError, match="Extra inputs"):
        GenerateSource.Config.model_validate({"fields": {"a": "now"}, "speed": 3})


def test_it_is_a_source_connector_and_resumable_in_a_run(tmp_path: Path) -> None:
    assert source_connectors()["generate"] is GenerateSource
    source = GenerateSource.from_config(
        GenerateSource.Config(fields={"id": "sequence", "v": {"randint": [0, 9]}}, count=700),
        tmp_path,
    )
    db = tmp_path / "out.db"
    report = (
        Pipeline("gen")
        .add_stage(MapStage(lambda r: {**r, "w": r["v"] * 2}))
        .run(source, SqliteSink(db, "t", key=["id"]), checkpoint=True)
    )
    assert report.status.value == "completed", report.summary()
    with sqlite3.connect(db) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM t ORDER BY id")]
    assert ids == list(range(700))
    assert source.where == "generate (700 records, seed 0)"


def test_conveyor_connectors_lists_it_with_its_options_literally() -> None:
    from typer.testing import CliRunner

    from conveyor.cli import app

    result = CliRunner().invoke(app, ["connectors", "generate"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "source: generate  (GenerateSource)" in result.output
    assert "{choice: [a, b]}, {randint: [1, 6]}" in result.output  # brackets are no markup
    for option in ("fields", "count", "rate", "seed"):
        assert f"│ {option} " in result.output
