"""contract_for: every accepted form, and the errors for everything else."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from conveyor.contracts import (
    AvroContract,
    Contract,
    JsonSchemaContract,
    TypeContract,
    contract_for,
)
from conveyor.errors import PipelineDefinitionError

DATA = Path(__file__).parent / "data"


class User(BaseModel):
    id: int


@dataclasses.dataclass
class Point:
    x: int


def test_a_contract_is_returned_as_it_is() -> None:
    contract = TypeContract(User)
    assert contract_for(contract) is contract


@pytest.mark.parametrize(
    "spec",
    [
        User,
        Point,
        int,
        list[int],
        dict[str, User],
        int | None,
        typing.Optional[int],  # noqa: UP045
        typing.Union[int, str],  # noqa: UP007
        Literal["a", "b"],
        Annotated[int, Field(gt=0)],
        typing.List[int],  # noqa: UP006
        Any,
    ],
)
def test_types_make_type_contracts(spec: object) -> None:
    contract = contract_for(spec)
    assert isinstance(contract, TypeContract)
    assert contract.type is spec


def test_type_contract_checks() -> None:
    contract = contract_for(Annotated[int, Field(gt=0)])
    assert contract.check(1) is None
    found = contract.check(0)
    assert found is not None
    assert found.reason == "Input should be greater than 0"


def test_json_schema_dict() -> None:
    contract = contract_for({"type": "object", "required": ["id"]})
    assert isinstance(contract, JsonSchemaContract)
    assert contract.check({}) is not None


@pytest.mark.parametrize("kind", ["record", "enum", "fixed"])
def test_avro_dict_is_recognised(kind: str) -> None:
    schema = {
        "record": {"type": "record", "name": "R", "fields": []},
        "enum": {"type": "enum", "name": "E", "symbols": ["A"]},
        "fixed": {"type": "fixed", "name": "F", "size": 2},
    }[kind]
    assert isinstance(contract_for(schema), AvroContract)


@pytest.mark.parametrize("as_str", [False, True])
def test_files_by_suffix(as_str: bool) -> None:
    json_path: Any = DATA / "order.schema.json"
    avro_path: Any = DATA / "order.avsc"
    if as_str:
        json_path, avro_path = str(json_path), str(avro_path)
    assert isinstance(contract_for(json_path), JsonSchemaContract)
    assert isinstance(contract_for(avro_path), AvroContract)


def test_suffix_is_case_insensitive(tmp_path: Path) -> None:
    file = tmp_path / "ORDER.JSON"
    file.write_text('{"type": "object"}')
    assert contract_for(file).name == "ORDER.JSON"


@pytest.mark.parametrize("name", ["missing.json", "missing.avsc"])
def test_missing_file_names_the_path(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match=name) as raised:
        contract_for(tmp_path / name)
    assert raised.value.filename == str(tmp_path / name)


@pytest.mark.parametrize("spec", ["orders.yaml", "int", Path("schema.xsd")])
def test_unknown_file_kinds(spec: object) -> None:
    with pytest.raises(
        PipelineDefinitionError,
        match=r"ends with \.json \(JSON Schema\), \.avsc \(Avro\) or \.proto \(Protobuf\)",
    ):
        contract_for(spec)


@pytest.mark.parametrize("spec", [42, None, [1, 2], 1.5, object(), b"schema.json", User(id=1)])
def test_other_objects_list_the_accepted_forms(spec: object) -> None:
    with pytest.raises(PipelineDefinitionError, match="cannot make a contract from") as raised:
        contract_for(spec)
    assert "a Python type" in str(raised.value)
    assert "a JSON Schema dict" in str(raised.value)
    assert isinstance(raised.value, TypeError)


def test_long_reprs_are_shortened() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"\.\.\.; a contract is"):
        contract_for(list(range(100)))


def test_the_result_is_a_contract() -> None:
    assert all(
        isinstance(contract_for(spec), Contract)
        for spec in (int, {"type": "object"}, DATA / "order.avsc")
    )
