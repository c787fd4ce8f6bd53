"""Properties shared by every contract kind: check_many finds exactly the planted bad records,
at the planted path, and agrees with check."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typing_extensions import TypedDict

from conveyor.contracts import (
    AvroContract,
    Contract,
    ContractCheck,
    JsonSchemaContract,
    TypeContract,
)


class ItemModel(BaseModel):
    id: int
    name: str
    price: float
    tags: list[str]


@dataclasses.dataclass
class ItemDataclass:
    id: int
    name: str
    price: float
    tags: list[str]


class ItemDict(TypedDict):
    id: int
    name: str
    price: float
    tags: list[str]


ITEM_JSON_SCHEMA = {
    "type": "object",
    "required": ["id", "name", "price", "tags"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "price": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
ITEM_AVRO_SCHEMA = {
    "type": "record",
    "name": "Item",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "name", "type": "string"},
        {"name": "price", "type": "double"},
        {"name": "tags", "type": {"type": "array", "items": "string"}},
    ],
}

CONTRACTS: dict[str, Contract] = {
    "model": TypeContract(ItemModel),
    "dataclass": TypeContract(ItemDataclass),
    "typeddict": TypeContract(ItemDict),
    "jsonschema": JsonSchemaContract(ITEM_JSON_SCHEMA),
    "avro": AvroContract(ITEM_AVRO_SCHEMA),
}

records = st.fixed_dictionaries(
    {
        "id": st.integers(-(2**63), 2**63 - 1),
        "name": st.text(max_size=5),
        "price": st.floats(allow_nan=False, allow_infinity=False),
        "tags": st.lists(st.text(max_size=3), max_size=3),
    }
)


@st.composite
def corrupted(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A record with one wrong field, and the path every contract should report."""
    record = draw(records)
    how = draw(st.sampled_from(["id", "name", "price", "tag", "missing"]))
    if how == "id":
        record["id"] = str(record["id"])
        return record, "id"
    if how == "name":
        record["name"] = draw(st.integers())
        return record, "name"
    if how == "price":
        record["price"] = draw(st.sampled_from(["1.5", None, [1.5]]))
        return record, "price"
    if how == "tag":
        position = draw(st.integers(0, len(record["tags"])))
        record["tags"].insert(position, draw(st.integers()))
        return record, f"tags.{position}"
    del record["name"]
    return record, "name"


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[int, str]]:
    size = draw(st.integers(0, 60))
    bad = draw(st.sets(st.integers(0, max(size - 1, 0)), max_size=size))
    batch: list[dict[str, Any]] = []
    planted: dict[int, str] = {}
    for index in range(size):
        if index in bad:
            record, path = draw(corrupted())
            planted[index] = path
        else:
            record = draw(records)
        batch.append(record)
    return batch, planted


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
@settings(max_examples=60, deadline=None)
@given(batch_and_planted=batches())
def test_check_many_finds_exactly_the_planted_records(
    kind: str, batch_and_planted: tuple[list[dict[str, Any]], dict[int, str]]
) -> None:
    batch, planted = batch_and_planted
    contract = CONTRACTS[kind]
    found = contract.check_many(batch)
    assert {index for index, _ in found} == set(planted)
    assert [index for index, _ in found] == sorted(planted)
    assert {index: violation.path for index, violation in found} == planted
    assert [(i, str(v)) for i, v in found] == [
        (i, str(contract.check(batch[i]))) for i in sorted(planted)
    ]


@pytest.mark.parametrize("kind", sorted(CONTRACTS))
@settings(max_examples=30, deadline=None)
@given(batch_and_planted=batches(), seed=st.integers(0, 1000))
def test_sampled_violations_are_planted_ones(
    kind: str, batch_and_planted: tuple[list[dict[str, Any]], dict[int, str]], seed: int
) -> None:
    batch, planted = batch_and_planted
    check = ContractCheck("sample", sample_rate=0.3, seed=seed)
    found = check.violations(CONTRACTS[kind], batch, edge="input", stage="s")
    assert {index for index, _ in found} <= set(planted)
    assert all(violation.path == planted[index] for index, violation in found)
    assert check.statistics().checked == check.sample_size(len(batch))
