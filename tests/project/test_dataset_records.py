"""Persisted datasets take Pydantic models and dataclasses as well as dicts (issue 11):
read back, they are dicts; something else is still refused by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.project.datasets import DatasetWriter, read_dataset


class Penguin(BaseModel):
    id: int
    species: str


@dataclasses.dataclass
class Reading:
    id: int
    value: float


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_models_and_dataclasses_are_stored_as_rows(tmp_path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    penguins = DatasetWriter(tmp_path / f"penguins-{fmt}", fmt)
    penguins.write([Penguin(id=i, species="Adelie") for i in range(3)])
    penguins.commit()
    assert sorted(r["id"] for r in read_dataset(tmp_path / f"penguins-{fmt}")) == [0, 1, 2]
    readings = DatasetWriter(tmp_path / f"readings-{fmt}", fmt)
    readings.write([Reading(i, i / 2) for i in range(4)])
    readings.commit()
    rows = list(read_dataset(tmp_path / f"readings-{fmt}"))
    assert sorted((r["id"], r["value"]) for r in rows) == [(i, i / 2) for i in range(4)]


def test_other_objects_are_refused_by_name(tmp_path: Path) -> None:
    writer = DatasetWriter(tmp_path / "d", "jsonl")
    with pytest.raises(TypeError, match="dicts, Pydantic models or dataclasses, got int"):
        writer.write([{"id": 1}, 7])
    assert writer.problem(7) == "records must be dicts, Pydantic models or dataclasses, got int"
    assert writer.problem(Penguin(id=1, species="x")) is None
