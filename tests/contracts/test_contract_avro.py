"""AvroContract: fastavro's verdict, the walked field path, versions, the optional extra."""

from __future__ import annotations

import copy
import datetime
import decimal
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.contracts import AvroContract
from conveyor.errors import PipelineDefinitionError

pytest.importorskip("fastavro")

DATA = Path(__file__).parent / "data"
ORDER_FILE = DATA / "order.avsc"
ORDER: dict[str, Any] = {
    "id": 1,
    "address": {"zip": "10115"},
    "items": [{"sku": "a", "price": 1.5}, {"sku": "b", "price": 2}],
}


@pytest.fixture(scope="module")
def order() -> AvroContract:
    return AvroContract(ORDER_FILE)


def failing(contract: AvroContract, record: object) -> tuple[str, str]:
    found = contract.check(record)
    assert found is not None, f"{record!r} should violate {contract.name}"
    assert found.contract == contract.name
    return found.path, found.reason


class TestPaths:
    def test_valid(self, order: AvroContract) -> None:
        assert order.check(ORDER) is None
        assert order.check({**ORDER, "billing": {"zip": "1"}, "extra": "ignored"}) is None
        assert order.check({**ORDER, "status": "PAID", "attributes": {"a": 1}}) is None

    @pytest.mark.parametrize(
        ("change", "path", "reason"),
        [
            ({"id": "1"}, "id", "expected long, got str"),
            ({"id": True}, "id", "expected long, got bool"),
            ({"id": 2**64}, "id", f"{2**64} is out of range for long"),
            ({"address": {"zip": 10115}}, "address.zip", "expected string, got int"),
            ({"address": {}}, "address.zip", "required field is missing"),
            ({"address": None}, "address", "expected record shop.Address, got NoneType"),
            ({"billing": {"zip": 1}}, "billing.zip", "expected string, got int"),
            ({"billing": 5}, "billing", "expected null | shop.Address, got int"),
            (
                {"items": [{"sku": "a", "price": 1.0}, {"sku": "b", "price": "2"}]},
                "items.1.price",
                "expected double, got str",
            ),
            ({"items": [{"price": 1.0}]}, "items.0.sku", "required field is missing"),
            ({"items": "ab"}, "items", "expected array, got str"),
            ({"status": "LOST"}, "status", "'LOST' is not a symbol of enum shop.Status"),
            ({"attributes": {"a": "1"}}, "attributes.a", "expected int, got str"),
            ({"attributes": {1: 1}}, "attributes", "map keys must be strings, got int"),
            ({"attributes": [1]}, "attributes", "expected map, got list"),
        ],
    )
    def test_field_paths(
        self, order: AvroContract, change: dict[str, Any], path: str, reason: str
    ) -> None:
        found_path, found_reason = failing(order, {**ORDER, **change})
        assert found_path == path
        assert found_reason.startswith(reason)

    def test_missing_field_without_default(self, order: AvroContract) -> None:
        assert failing(order, {"id": 1}) == ("address", "required field is missing")

    def test_whole_record(self, order: AvroContract) -> None:
        assert failing(order, [ORDER]) == ("", "expected record shop.Order, got list")

    def test_type_marker(self, order: AvroContract) -> None:
        path, reason = failing(order, {**ORDER, "-type": "shop.Other"})
        assert path == ""
        assert "'-type'" in reason

    def test_tuple_notation_for_unions(self, order: AvroContract) -> None:
        assert order.check({**ORDER, "billing": ("shop.Address", {"zip": "1"})}) is None
        assert failing(order, {**ORDER, "billing": ("shop.Address", {"zip": 1})}) == (
            "billing.zip",
            "expected string, got int",
        )
        assert failing(order, {**ORDER, "billing": ("shop.Nope", {})}) == (
            "billing",
            "the union has no branch named 'shop.Nope'",
        )
        assert failing(order, {**ORDER, "billing": (1, 2, 3)})[0] == "billing"
        found = order.check_many([ORDER, {**ORDER, "billing": (1, 2, 3)}])
        assert [(i, v.path) for i, v in found] == [(1, "billing")]

    def test_records_are_not_modified(self, order: AvroContract) -> None:
        record = copy.deepcopy(ORDER)
        order.check(record)
        order.check_many([record])
        assert record == ORDER

    def test_check_many(self, order: AvroContract) -> None:
        records = [ORDER, {**ORDER, "id": "x"}, ORDER, {"id": 1}]
        assert [(i, v.path) for i, v in order.check_many(records)] == [(1, "id"), (3, "address")]
        assert order.check_many([ORDER, ORDER]) == []
        assert order.check_many([]) == []


class TestSchemas:
    def test_union_of_records_follows_the_shape(self) -> None:
        contract = AvroContract(
            {
                "type": "record",
                "name": "Pet",
                "fields": [
                    {
                        "name": "animal",
                        "type": [
                            "string",
                            {"type": "array", "items": "int"},
                            {"type": "map", "values": "string"},
                        ],
                    }
                ],
            }
        )
        assert failing(contract, {"animal": [1, "2"]}) == ("animal.1", "expected int, got str")
        assert failing(contract, {"animal": {"a": 1}}) == ("animal.a", "expected string, got int")
        assert failing(contract, {"animal": 1.5})[1] == ("expected string | array | map, got float")

    def test_ambiguous_union_stops_at_the_union(self) -> None:
        contract = AvroContract(
            {
                "type": "record",
                "name": "Holder",
                "fields": [
                    {
                        "name": "value",
                        "type": [
                            {
                                "type": "record",
                                "name": "A",
                                "fields": [{"name": "a", "type": "int"}],
                            },
                            {
                                "type": "record",
                                "name": "B",
                                "fields": [{"name": "b", "type": "int"}],
                            },
                        ],
                    }
                ],
            }
        )
        assert failing(contract, {"value": {"c": 1}}) == ("value", "expected A | B, got dict")

    def test_top_level_primitive_and_union(self) -> None:
        assert failing(AvroContract(["null", "int"]), "x") == ("", "expected null | int, got str")
        fixed = AvroContract({"type": "fixed", "name": "Hash", "size": 4})
        assert fixed.name == "Hash"
        assert fixed.check(b"abcd") is None
        assert failing(fixed, b"abc") == ("", "expected 4 bytes for fixed Hash, got 3")
        assert failing(fixed, "abcd") == ("", "expected Hash, got str")
        plain = AvroContract({"type": "string"})
        assert plain.name == "avro-schema"
        assert failing(plain, 1) == ("", "expected string, got int")

    def test_logical_types(self) -> None:
        contract = AvroContract(
            {
                "type": "record",
                "name": "Event",
                "fields": [
                    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                    {
                        "name": "amount",
                        "type": {
                            "type": "bytes",
                            "logicalType": "decimal",
                            "precision": 5,
                            "scale": 2,
                        },
                    },
                ],
            }
        )
        now = datetime.datetime.now(tz=datetime.UTC)
        cents = decimal.Decimal("1.25")
        assert contract.check({"at": now, "amount": cents}) is None
        assert failing(contract, {"at": "today", "amount": cents}) == (
            "at",
            "expected long (timestamp-millis), got str",
        )
        path, reason = failing(contract, {"at": now, "amount": "x"})
        assert path == "amount"
        assert "bytes (decimal)" in reason
        records = [{"at": now, "amount": cents}, {"at": now, "amount": "x"}]
        assert [i for i, _ in contract.check_many(records)] == [1]
        too_precise = {"at": now, "amount": decimal.Decimal("123456.789")}
        path, reason = failing(contract, too_precise)
        assert path == "amount"
        assert reason.startswith("bytes (decimal) rejected the value: ValueError")
        assert [i for i, _ in contract.check_many([records[0], too_precise])] == [1]

    def test_null_in_dict_form_and_map_before_the_bad_field(self) -> None:
        contract = AvroContract(
            {
                "type": "record",
                "name": "R",
                "fields": [
                    {"name": "nothing", "type": {"type": "null"}},
                    {"name": "counts", "type": {"type": "map", "values": {"type": "int"}}},
                    {"name": "last", "type": "string"},
                    {"name": "either", "type": ["int", "string"], "default": 0},
                    {"name": "required_either", "type": ["int", "string"]},
                ],
            }
        )
        ok = {"counts": {}, "last": "x", "required_either": "y"}
        assert contract.check(ok) is None
        assert failing(contract, {**ok, "required_either": None}) == (
            "required_either",
            "expected int | string, got NoneType",
        )
        del ok["required_either"]
        assert failing(contract, ok) == ("required_either", "required field is missing")
        assert failing(contract, {"counts": {"a": 1}, "last": 1}) == (
            "last",
            "expected string, got int",
        )
        assert failing(contract, {"counts": {"a": "1"}, "last": "x", "required_either": 1}) == (
            "counts.a",
            "expected int, got str",
        )

    def test_named_reference_reused(self, order: AvroContract) -> None:
        # "billing" refers to shop.Address by name: the walk resolves it
        assert failing(order, {**ORDER, "billing": {}}) == (
            "billing.zip",
            "required field is missing",
        )

    def test_disagreement_falls_back_to_fastavro(
        self, order: AvroContract, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(order._locator, "find", lambda *args: None)
        path, reason = failing(order, {**ORDER, "id": "1"})
        assert path == ""
        assert "shop.Order.id" in reason
        monkeypatch.setattr(order, "_validate", lambda *args, **kwargs: False)
        assert failing(order, ORDER) == ("", "record rejected by fastavro")


class TestSource:
    def test_name_and_version_from_file(self, order: AvroContract) -> None:
        assert order.name == "order.avsc"
        assert order.version == "4"
        assert order.path == ORDER_FILE
        assert AvroContract(str(ORDER_FILE)).name == "order.avsc"

    def test_dict_schema(self) -> None:
        schema = {"type": "record", "name": "P", "namespace": "geo", "fields": []}
        contract = AvroContract(schema)
        assert (contract.name, contract.version, contract.path) == ("geo.P", None, None)
        assert AvroContract({**schema, "x-version": "2", "version": "1"}).version == "2"
        assert AvroContract(schema, name="points").name == "points"

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"Avro schema file not found: .*x\.avsc"):
            AvroContract(tmp_path / "x.avsc")

    def test_invalid_schema(self) -> None:
        with pytest.raises(PipelineDefinitionError, match=r"not_avro\.avsc: not a valid Avro"):
            AvroContract(DATA / "not_avro.avsc")

    def test_wrong_argument(self) -> None:
        with pytest.raises(PipelineDefinitionError, match=r"needs a dict or an \.avsc path"):
            AvroContract(3.5)  # type: ignore[arg-type]

    def test_pickles(self, order: AvroContract) -> None:
        copied = pickle.loads(pickle.dumps(order))
        assert (copied.name, copied.version) == (order.name, order.version)
        bad = {**ORDER, "id": "1"}
        assert str(copied.check(bad)) == str(order.check(bad))


def test_without_fastavro_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [name for name in sys.modules if name.startswith("fastavro")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "fastavro", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[avro\]'") as raised:
        AvroContract({"type": "string"})
    assert raised.value.name == "fastavro"
