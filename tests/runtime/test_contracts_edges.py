"""Contracts checked at a stage's edges in streaming mode: violations become dead letters
naming the failing field; ``contracts="off"`` and ``"sample"`` check less."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import _fns
import pydantic
import pytest
from typing_extensions import TypedDict

from conveyor import MapStage, Pipeline, PipelineDefinitionError, StageOptions
from conveyor.testing import run_pipeline_on


class Address(pydantic.BaseModel):
    zip: str


class User(pydantic.BaseModel):
    id: int
    address: Address


@dataclass
class Point:
    x: int
    y: int


class Person(TypedDict):
    name: str
    age: int


PERSON_SCHEMA = {
    "title": "person",
    "type": "object",
    "required": ["name", "age"],
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
}

CASES = {
    "pydantic": (
        User,
        [{"id": 1, "address": {"zip": "75001"}}, {"id": 2, "address": {"zip": 75002}}],
        "address.zip",
    ),
    "dataclass": (Point, [{"x": 1, "y": 2}, {"x": 1, "y": "2"}], "y"),
    "typeddict": (Person, [{"name": "Ada", "age": 36}, {"name": "Bob", "age": "old"}], "age"),
    "jsonschema": (None, [{"name": "Ada", "age": 36}, {"name": "Bob", "age": -1}], "age"),
}


def contract_of(case: str, tmp_path: Path) -> Any:
    contract = CASES[case][0]
    if contract is None:  # JSON Schema, from a file under contracts/
        path = tmp_path / "contracts" / "person.json"
        path.parent.mkdir()
        path.write_text(json.dumps(PERSON_SCHEMA))
        return str(path)
    return contract


def ident_pipeline(**options: Any) -> Pipeline[Any, Any]:
    return Pipeline[Any, Any]("edges").add_stage(
        MapStage(_fns.ident, name="load"), options=StageOptions(**options)
    )


@pytest.mark.parametrize("case", list(CASES))
def test_input_violations_go_to_the_dlq_naming_the_field(case: str, tmp_path: Path) -> None:
    _, records, field = CASES[case]
    pipeline = ident_pipeline(input_contract=contract_of(case, tmp_path))
    run = run_pipeline_on(pipeline, records * 3, batch_size=4)
    assert run.outputs == [records[0]] * 3
    assert len(run.dead_letters) == 3
    for letter in run.dead_letters:
        assert letter.record == records[1]
        assert letter.stage == "load"
        assert letter.error_type == "conveyor.errors.ContractViolation"
        assert f"field {field!r}" in letter.message
        assert letter.message.startswith("load input: ")
    assert run.report.stage("load").dead_lettered == 3


def test_output_violations_are_caught_on_the_way_out() -> None:
    pipeline = Pipeline[Any, Any]("edges").add_stage(
        MapStage(_fns.negate, name="neg"),
        options=StageOptions(output_contract=pydantic.PositiveInt),
    )
    run = run_pipeline_on(pipeline, [-1, 2, -3])
    assert run.outputs == [1, 3]
    [letter] = run.dead_letters
    assert letter.record == 2  # the record as it entered the stage: replayable
    assert letter.output == -2  # the output that broke the contract, beside it
    assert letter.error_type == "conveyor.errors.ContractViolation"
    assert letter.message.startswith("neg output: ")
    run.report.check_conservation()


class Typed(MapStage[Any, Any]):
    """A stage declaring its contracts on the class."""

    input_contract: ClassVar[Any] = Point
    output_contract: ClassVar[Any] = int


def add(point: dict[str, int]) -> Any:
    return point["x"] + point["y"] if point["x"] else "zero"


def test_contracts_declared_by_the_stage_class() -> None:
    pipeline = Pipeline[Any, Any]("edges").add_stage(Typed(add, name="add"))
    run = run_pipeline_on(pipeline, [{"x": 1, "y": 2}, {"x": "1", "y": 2}, {"x": 0, "y": 1}])
    assert run.outputs == [3]
    messages = sorted(d.message for d in run.dead_letters)
    assert messages[0].startswith("add input: field 'x'")
    assert messages[1].startswith("add output: record violates contract int")


def test_contracts_off_lets_violations_through() -> None:
    pipeline = ident_pipeline(input_contract=Point)
    records = [{"x": 1, "y": "not a number"}] * 5
    run = run_pipeline_on(pipeline, records, contracts="off")
    assert run.outputs == records
    assert run.dead_letters == []


def test_contracts_sample_checks_a_subset() -> None:
    pipeline = ident_pipeline(input_contract=Point)
    records = [{"x": i, "y": "bad"} for i in range(40)]
    run = run_pipeline_on(pipeline, records, contracts="sample", sample_rate=0.25, batch_size=10)
    # Every record is bad, but only a quarter of each micro-batch of 10 is checked (3).
    assert len(run.dead_letters) == 4 * 3
    assert len(run.outputs) == 40 - 12
    run.report.check_conservation()


def test_an_unusable_contract_is_a_definition_error() -> None:
    pipeline = ident_pipeline(input_contract=42)
    with pytest.raises(PipelineDefinitionError, match="'load': its input_contract 42"):
        run_pipeline_on(pipeline, [1])


def test_a_micro_batch_with_no_valid_record_left() -> None:
    pipeline = ident_pipeline(input_contract=Point)
    records = [{"x": 1, "y": "bad"}] * 3 + [{"x": 1, "y": 2}]
    run = run_pipeline_on(pipeline, records, batch_size=3)
    assert run.outputs == [{"x": 1, "y": 2}]
    assert len(run.dead_letters) == 3
    run.report.check_conservation()
