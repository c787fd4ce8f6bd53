"""TypeContract: strict pydantic checks, field paths, bulk checks, definition errors."""

from __future__ import annotations

import copy
import dataclasses
import datetime
import enum
import pickle
import sys
import typing
from typing import Annotated, Any, Literal, NotRequired

import pydantic
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from typing_extensions import TypedDict

from conveyor.contracts import TypeContract
from conveyor.contracts._typed import _child
from conveyor.errors import ContractViolation, PipelineDefinitionError


class Address(BaseModel):
    zip: str
    city: str = "Berlin"


class Item(BaseModel):
    sku: str
    price: float


class Order(BaseModel):
    id: int
    address: Address
    items: list[Item] = []
    note: str | None = None


@dataclasses.dataclass
class DCAddress:
    zip: str


@dataclasses.dataclass
class DCOrder:
    id: int
    address: DCAddress
    tags: list[str] = dataclasses.field(default_factory=list)


@pydantic.dataclasses.dataclass(config=ConfigDict(extra="forbid"))
class StrictPoint:
    x: int
    y: int


class TDAddress(TypedDict):
    zip: str


class TDOrder(TypedDict):
    id: int
    address: TDAddress
    comment: NotRequired[str]


class Cat(BaseModel):
    kind: Literal["cat"]
    meows: int


class Dog(BaseModel):
    kind: Literal["dog"]
    barks: int


class Owner(BaseModel):
    pet: Cat | Dog
    tagged: Annotated[Cat | Dog, Field(discriminator="kind")] | None = None
    scores: dict[int, float] = {}


class Color(enum.Enum):
    RED = "red"


def violation(contract: TypeContract[Any], record: object) -> tuple[str, str]:
    found = contract.check(record)
    assert found is not None, f"{record!r} should violate {contract.name}"
    assert isinstance(found, ContractViolation)
    assert found.contract == contract.name
    return found.path, found.reason


ORDER = {"id": 7, "address": {"zip": "10115"}, "items": [{"sku": "a", "price": 1.5}]}


class TestPaths:
    @pytest.mark.parametrize(
        ("change", "path", "reason"),
        [
            ({"id": "7"}, "id", "Input should be a valid integer"),
            ({"address": {"zip": 10115}}, "address.zip", "Input should be a valid string"),
            ({"address": {}}, "address.zip", "Field required"),
            ({"address": "Berlin"}, "address", "Input should be a valid dictionary or instance"),
            (
                {"items": [{"sku": "a", "price": 1}, {"sku": "b", "price": "2"}]},
                "items.1.price",
                "Input should be a valid number",
            ),
            ({"items": [{"sku": "a", "price": 1}, {"price": 2}]}, "items.1.sku", "Field required"),
            ({"note": 5}, "note", "Input should be a valid string"),
        ],
    )
    def test_model_paths(self, change: dict[str, object], path: str, reason: str) -> None:
        found_path, found_reason = violation(TypeContract(Order), {**ORDER, **change})
        assert found_path == path
        assert found_reason.startswith(reason)

    def test_missing_top_level_field(self) -> None:
        assert violation(TypeContract(Order), {"address": {"zip": "1"}}) == (
            "id",
            "Field required",
        )

    def test_valid_records(self) -> None:
        contract = TypeContract(Order)
        assert contract.check(ORDER) is None
        assert contract.check(Order.model_validate(ORDER)) is None
        assert contract.check({**ORDER, "unknown": 1}) is None  # the model ignores extras

    def test_whole_record_wrong_has_empty_path(self) -> None:
        path, reason = violation(TypeContract(Order), [ORDER])
        assert path == ""
        assert "valid dictionary" in reason

    def test_first_error_wins(self) -> None:
        record = {"id": "x", "address": {"zip": 1}}
        assert violation(TypeContract(Order), record)[0] == "id"

    def test_top_level_list(self) -> None:
        contract = TypeContract(list[Item])
        record = [{"sku": "a", "price": 1.0}, {"sku": "b", "price": None}]
        assert violation(contract, record) == ("1.price", "Input should be a valid number")

    def test_dict_value_and_key(self) -> None:
        contract = TypeContract(Owner)
        base = {"pet": {"kind": "cat", "meows": 1}}
        assert violation(contract, {**base, "scores": {1: "x"}}) == (
            "scores.1",
            "Input should be a valid number",
        )
        assert violation(contract, {**base, "scores": {"a": 1.0}}) == (
            "scores.a",
            "key: Input should be a valid integer",
        )

    def test_plain_union_reports_the_union_field(self) -> None:
        path, reason = violation(TypeContract(Owner), {"pet": {"kind": "dog", "barks": "x"}})
        assert path == "pet"
        assert reason == (
            "matches no member of the union (Cat: kind: Input should be 'cat'; "
            "Dog: barks: Input should be a valid integer)"
        )

    def test_plain_union_of_scalars(self) -> None:
        path, reason = violation(TypeContract(dict[str, int | str]), {"a": 1.5})
        assert path == "a"
        assert reason.startswith("matches no member of the union (int: ")
        assert "str: Input should be a valid string" in reason

    def test_top_level_union(self) -> None:
        path, reason = violation(TypeContract(int | str), 1.5)
        assert path == ""
        assert reason.startswith("matches no member of the union")

    def test_discriminated_union_path_skips_the_tag(self) -> None:
        record = {"pet": {"kind": "cat", "meows": 1}, "tagged": {"kind": "dog", "barks": "x"}}
        assert violation(TypeContract(Owner), record) == (
            "tagged.barks",
            "Input should be a valid integer",
        )

    def test_discriminated_union_unknown_tag(self) -> None:
        record = {"pet": {"kind": "cat", "meows": 1}, "tagged": {"kind": "cow"}}
        path, reason = violation(TypeContract(Owner), record)
        assert path == "tagged"
        assert "'cow'" in reason

    def test_union_missing_field_inside_member(self) -> None:
        path, reason = violation(TypeContract(Cat | list[int]), {"kind": "cat"})
        assert path == ""
        assert "Cat: meows: Field required" in reason

    def test_union_first_then_other_errors(self) -> None:
        record = {"pet": {"kind": "dog", "barks": "x"}, "scores": {1: "x"}}
        path, reason = violation(TypeContract(Owner), record)
        assert path == "pet"
        assert "scores" not in reason

    def test_union_nested_in_a_union_member(self) -> None:
        path, reason = violation(TypeContract(dict[str, list[int | str] | int]), {"a": [1.5]})
        assert path == "a"
        assert reason.startswith("matches no member of the union (list[")
        assert "0: Input should be a valid integer" in reason

    def test_set_positions_are_kept(self) -> None:
        assert violation(TypeContract(dict[str, frozenset[int]]), {"a": frozenset({"x"})}) == (
            "a.0",
            "Input should be a valid integer",
        )

    def test_attribute_lookup_that_raises_names_nothing(self) -> None:
        class Grumpy:
            def __getattr__(self, name: str) -> object:
                raise RuntimeError(name)

        assert _child(Grumpy(), "anything") is not None
        assert _child(Grumpy(), "anything") is _child({}, "missing")
        assert _child([1, 2], 5) is _child({}, "missing")
        assert _child([1, 2], -1) == 2

    def test_model_instance_paths_use_attributes(self) -> None:
        owner = Owner.model_construct(pet=Cat.model_construct(kind="cat", meows="many"))
        contract = TypeContract(Owner)
        assert contract.check(owner) is None  # instances are trusted, as pydantic does

        class Recheck(BaseModel):
            model_config = ConfigDict(revalidate_instances="always")
            pet: Cat

        bad = Recheck.model_construct(pet={"kind": "cat", "meows": "many"})
        assert violation(TypeContract(Recheck), bad) == (
            "pet.meows",
            "Input should be a valid integer",
        )


class TestStrictness:
    @pytest.mark.parametrize(
        ("tp", "value"),
        [
            (int, "1"),
            (int, True),
            (int, 1.0),
            (str, 1),
            (float, "1.5"),
            (bool, 1),
            (bool, "true"),
            (list[int], (1, 2)),
            (datetime.datetime, "2024-01-01T00:00:00"),
            (datetime.date, "2024-01-01"),
            (Color, "red"),
            (dict[str, int], {"a": "1"}),
        ],
    )
    def test_wrong_types_are_not_coerced(self, tp: Any, value: object) -> None:
        assert TypeContract(tp).check(value) is not None

    @pytest.mark.parametrize(
        ("tp", "value"),
        [
            (int, 1),
            (float, 1),  # an int is a valid float, as in pydantic strict mode
            (float, 1.5),
            (datetime.date, datetime.date(2024, 1, 1)),
            (Color, Color.RED),
            (int | None, None),
            (Literal["a", "b"], "b"),
            (Any, object()),
        ],
    )
    def test_right_types_pass(self, tp: Any, value: object) -> None:
        assert TypeContract(tp).check(value) is None

    @pytest.mark.parametrize("tp", [Order, DCOrder, TDOrder])
    def test_dict_records_are_accepted_for_models(self, tp: Any) -> None:
        record = {"id": 1, "address": {"zip": "10115"}}
        assert TypeContract(tp).check(record) is None
        assert violation(TypeContract(tp), {**record, "id": "1"}) == (
            "id",
            "Input should be a valid integer",
        )
        assert violation(TypeContract(tp), {"id": 1, "address": {"zip": 1}}) == (
            "address.zip",
            "Input should be a valid string",
        )

    def test_records_are_not_modified(self) -> None:
        record = {"id": 1, "address": {"zip": "10115"}, "items": [{"sku": "a", "price": 1}]}
        before = copy.deepcopy(record)
        for tp in (Order, DCOrder, TDOrder):
            TypeContract(tp).check(record)
            TypeContract(tp).check_many([record, record])
        assert record == before
        assert isinstance(record["items"][0]["price"], int)  # type: ignore[index]


class TestDataclasses:
    def test_instances_are_checked_field_by_field(self) -> None:
        contract = TypeContract(DCOrder)
        assert contract.check(DCOrder(1, DCAddress("10115"))) is None
        bad = DCOrder("1", DCAddress(10115))  # type: ignore[arg-type]
        assert violation(contract, bad) == ("id", "Input should be a valid integer")
        assert violation(contract, DCOrder(1, DCAddress(10115))) == (  # type: ignore[arg-type]
            "address.zip",
            "Input should be a valid string",
        )

    def test_instance_of_another_class_is_rejected(self) -> None:
        path, reason = violation(TypeContract(DCAddress), DCOrder(1, DCAddress("1")))
        assert path == ""
        assert "dictionary" in reason

    def test_pydantic_dataclass_keeps_its_config(self) -> None:
        contract = TypeContract(StrictPoint)
        assert contract.check({"x": 1, "y": 2}) is None
        assert contract.check(StrictPoint(1, 2)) is None
        assert violation(contract, {"x": 1, "y": 2, "z": 3}) == (
            "z",
            "Extra inputs are not permitted",
        )

    def test_defaults_init_false_and_aliases(self) -> None:
        @dataclasses.dataclass
        class Row:
            a: int
            b: int = 0
            c: int = dataclasses.field(default=0, init=False)
            d: Annotated[int, Field(validation_alias="D")] = 1

        contract = TypeContract(Row)
        assert contract.check({"a": 1}) is None
        assert contract.check({"a": 1, "D": 2}) is None
        assert violation(contract, {"a": 1, "D": "2"}) == ("D", "Input should be a valid integer")
        assert contract.check(Row(1, 2)) is None

    def test_init_var_is_not_required_of_an_instance(self) -> None:
        @dataclasses.dataclass
        class WithInitVar:
            a: int
            scale: dataclasses.InitVar[int] = 1

        assert TypeContract(WithInitVar).check(WithInitVar(1, 2)) is None

    def test_dataclass_nested_in_typed_dict_and_list(self) -> None:
        class Holder(TypedDict):
            points: list[DCAddress]

        contract = TypeContract(Holder)
        assert contract.check({"points": [{"zip": "1"}, DCAddress("2")]}) is None
        record = {"points": [{"zip": "1"}, {"zip": 2}]}
        assert violation(contract, record) == ("points.1.zip", "Input should be a valid string")

    def test_dataclass_inside_a_nested_model_needs_an_instance(self) -> None:
        # documented limit: pydantic validates a nested BaseModel with its own compiled
        # validator, where strict mode wants dataclass instances; this test shows if that
        # ever changes. The record's own model is checked field by field, so there a dict
        # is fine.
        class Shipment(BaseModel):
            to: DCAddress

        class Order(BaseModel):
            shipment: Shipment

        assert TypeContract(Shipment).check({"to": {"zip": "10115"}}) is None
        contract = TypeContract(Order)
        assert contract.check({"shipment": {"to": DCAddress("10115")}}) is None
        path, reason = violation(contract, {"shipment": {"to": {"zip": "10115"}}})
        assert path == "shipment.to"
        assert "instance of DCAddress" in reason

    def test_recursive_dataclass(self) -> None:
        contract = TypeContract(Node)
        assert contract.check({"value": 1, "children": [{"value": 2, "children": []}]}) is None
        record = {"value": 1, "children": [{"value": "2", "children": []}]}
        assert violation(contract, record) == (
            "children.0.value",
            "Input should be a valid integer",
        )


class Outer:
    class Inner(BaseModel):
        a: int


@dataclasses.dataclass
class Node:
    value: int
    children: list[Node]


class TestDefinition:
    def test_names(self) -> None:
        assert TypeContract(Order).name == "Order"
        assert TypeContract(Outer.Inner).name == "Outer.Inner"
        assert TypeContract(list[Order]).name.endswith("Order]")
        assert TypeContract(int | None).name == "int | None"
        assert TypeContract(typing.Optional[int]).name == "Optional[int]"  # noqa: UP045
        assert TypeContract(dict[str, int]).name == "dict[str, int]"
        assert TypeContract(int, name="ids").name == "ids"

    def test_version_and_repr(self) -> None:
        contract = TypeContract(Order, version="3")
        assert contract.version == "3"
        assert repr(contract) == "TypeContract(name='Order', version='3')"
        assert repr(TypeContract(int)) == "TypeContract(name='int')"
        assert TypeContract(int).type is int

    def test_a_type_pydantic_cannot_validate(self) -> None:
        class Opaque:
            pass

        with pytest.raises(PipelineDefinitionError, match="cannot build a type contract for"):
            TypeContract(Opaque)

    def test_definition_error_is_a_type_error(self) -> None:
        class Opaque:
            pass

        with pytest.raises(TypeError):
            TypeContract(list[Opaque])

    @pytest.mark.skipif(sys.version_info >= (3, 12), reason="typing.TypedDict works on 3.12+")
    def test_typing_typed_dict_names_the_fix(self) -> None:
        class Old(typing.TypedDict):
            a: int

        with pytest.raises(PipelineDefinitionError, match=r"typing_extensions\.TypedDict"):
            TypeContract(Old)

    def test_pickles(self) -> None:
        contract = TypeContract(Order, name="orders", version="2")
        copied = pickle.loads(pickle.dumps(contract))
        assert (copied.name, copied.version, copied.type) == ("orders", "2", Order)
        record = {**ORDER, "id": "7"}
        assert str(copied.check(record)) == str(contract.check(record))


class Picky(BaseModel):
    value: int

    @field_validator("value")
    @classmethod
    def not_thirteen(cls, value: int) -> int:
        if value == 13:
            raise TypeError("thirteen is a TypeError, which pydantic does not catch")
        if value < 0:
            raise ValueError("must not be negative")
        return value


class TestCheckMany:
    def test_indices_and_paths(self) -> None:
        contract = TypeContract(Order)
        records = [ORDER, {**ORDER, "id": "1"}, ORDER, {"id": 1}, ORDER]
        found = contract.check_many(records)
        assert [(i, v.path) for i, v in found] == [(1, "id"), (3, "address")]

    def test_same_as_check(self) -> None:
        contract = TypeContract(Owner)
        records: list[object] = [
            {"pet": {"kind": "dog", "barks": "x"}},
            {"pet": {"kind": "cat", "meows": 1}},
            {"pet": {"kind": "cat", "meows": 1}, "scores": {"k": 1.0}},
            None,
        ]
        expected = [(i, str(contract.check(r))) for i, r in enumerate(records) if contract.check(r)]
        assert [(i, str(v)) for i, v in contract.check_many(records)] == expected

    def test_empty_tuple_and_all_valid(self) -> None:
        contract = TypeContract(int)
        assert contract.check_many([]) == []
        assert contract.check_many((1, 2, 3)) == []
        assert [i for i, _ in contract.check_many((1, "2", 3))] == [1]

    def test_errors_without_an_index_fall_back_to_single_checks(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        class Unindexed:
            def validate_python(self, value: object, *, strict: bool | None = None) -> object:
                raise ValidationError.from_exception_data(
                    "odd", [{"type": "missing", "loc": ("x",), "input": value}]
                )

        contract = TypeContract(int)
        monkeypatch.setattr(contract, "_many", Unindexed())
        assert [i for i, _ in contract.check_many([1, "2", 3])] == [1]

    def test_validator_raising_a_non_validation_error(self) -> None:
        contract = TypeContract(Picky)
        path, reason = violation(contract, {"value": 13})
        assert path == ""
        assert reason.startswith("validation raised TypeError: thirteen")
        found = contract.check_many([{"value": 1}, {"value": 13}, {"value": -1}])
        assert [(i, v.path) for i, v in found] == [(1, ""), (2, "value")]
        assert "must not be negative" in found[1][1].reason
