"""JsonSchemaContract: schema from file and dict, paths, versions, definition errors."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from conveyor.contracts import JsonSchemaContract
from conveyor.contracts._jsonschema import _NoRemoteRefs
from conveyor.errors import PipelineDefinitionError

DATA = Path(__file__).parent / "data"
ORDER_FILE = DATA / "order.schema.json"
ORDER = {
    "id": 1,
    "address": {"zip": "10115"},
    "items": [{"sku": "a", "price": 1.5}, {"sku": "b", "price": 2}],
}


@pytest.fixture(scope="module")
def order() -> JsonSchemaContract:
    return JsonSchemaContract(ORDER_FILE)


def failing(contract: JsonSchemaContract, record: object) -> tuple[str, str]:
    found = contract.check(record)
    assert found is not None, f"{record!r} should violate {contract.name}"
    assert found.contract == contract.name
    return found.path, found.reason


class TestPaths:
    def test_valid(self, order: JsonSchemaContract) -> None:
        assert order.check(ORDER) is None
        assert order.check({**ORDER, "items": []}) is None

    @pytest.mark.parametrize(
        ("change", "path", "reason"),
        [
            ({"id": "1"}, "id", "must be integer"),
            ({"id": True}, "id", "must be integer"),
            ({"address": {"zip": 10115}}, "address.zip", "must be string"),
            ({"address": {"zip": "1"}}, "address.zip", "must match pattern ^[0-9]{5}$"),
            ({"address": {}}, "address.zip", "required property is missing"),
            (
                {"items": [{"sku": "a", "price": 1}, {"sku": "b", "price": 1}, {"sku": "c"}]},
                "items.2.price",
                "required property is missing",
            ),
            ({"items": [{"sku": "a", "price": -1}]}, "items.0.price", "must be bigger than or"),
            ({"items": {"sku": "a"}}, "items", "must be array"),
            ({"status": "lost"}, "status", "must be one of ['new', 'paid']"),
        ],
    )
    def test_field_paths(
        self, order: JsonSchemaContract, change: dict[str, Any], path: str, reason: str
    ) -> None:
        found_path, found_reason = failing(order, {**ORDER, **change})
        assert found_path == path
        assert found_reason.startswith(reason)

    def test_several_missing_properties(self, order: JsonSchemaContract) -> None:
        assert failing(order, {"address": {"zip": "10115"}}) == (
            "id",
            "required property is missing (also missing: items)",
        )

    def test_whole_record(self, order: JsonSchemaContract) -> None:
        assert failing(order, [ORDER]) == ("", "must be object")

    def test_keys_with_spaces(self) -> None:
        contract = JsonSchemaContract(
            {"type": "object", "properties": {"first name": {"type": "string"}}}
        )
        assert failing(contract, {"first name": 1}) == ("first name", "must be string")

    def test_defaults_are_not_filled_in(self, order: JsonSchemaContract) -> None:
        record = copy.deepcopy(ORDER)
        assert order.check(record) is None
        assert order.check_many([record]) == []
        assert record == ORDER
        assert "status" not in record

    def test_check_many(self, order: JsonSchemaContract) -> None:
        records = [ORDER, {**ORDER, "id": "x"}, ORDER, {}, ORDER]
        assert [(i, v.path) for i, v in order.check_many(records)] == [(1, "id"), (3, "id")]

    def test_unexpected_validator_error_becomes_a_violation(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def explode(record: object) -> object:
            raise RuntimeError("compiled code hit something odd")

        contract = JsonSchemaContract({"type": "object"})
        monkeypatch.setattr(contract, "_validate", explode)
        assert failing(contract, {}) == (
            "",
            "validation raised RuntimeError: compiled code hit something odd",
        )


class TestSource:
    def test_name_and_version_from_file(self, order: JsonSchemaContract) -> None:
        assert order.name == "order.schema.json"
        assert order.version == "1.2.0"
        assert order.path == ORDER_FILE
        assert repr(order) == "JsonSchemaContract(name='order.schema.json', version='1.2.0')"

    def test_str_path(self) -> None:
        assert JsonSchemaContract(str(ORDER_FILE)).name == "order.schema.json"

    def test_dict_schema_name(self) -> None:
        schema = json.loads(ORDER_FILE.read_text())
        contract = JsonSchemaContract(schema)
        assert contract.name == "Order"
        assert contract.path is None
        del schema["title"]
        assert JsonSchemaContract(schema).name == "https://example.com/schemas/order.json"
        assert JsonSchemaContract({"type": "object"}).name == "json-schema"
        assert JsonSchemaContract({"type": "object"}, name="points").name == "points"

    def test_dict_is_copied(self) -> None:
        schema: dict[str, Any] = {"type": "object", "title": "t"}
        contract = JsonSchemaContract(schema)
        schema["type"] = "array"
        assert contract.schema["type"] == "object"
        assert contract.check({}) is None

    @pytest.mark.parametrize(
        ("schema", "version"),
        [
            ({"x-version": "2", "version": "1"}, "2"),
            ({"version": "1.0"}, "1.0"),
            ({"version": 3}, "3"),
            ({"x-version": 1.5}, "1.5"),
            ({"$id": "https://example.com/v9/order.json"}, None),
            ({}, None),
        ],
    )
    def test_version(self, schema: dict[str, Any], version: str | None) -> None:
        assert JsonSchemaContract({"type": "object", **schema}).version == version

    @pytest.mark.parametrize("bad", [True, ["1"], {"major": 1}, None])
    def test_version_of_wrong_type(self, bad: object) -> None:
        with pytest.raises(PipelineDefinitionError, match="'version' must be a string or a number"):
            JsonSchemaContract({"type": "object", "version": bad})

    def test_local_refs_resolve(self, order: JsonSchemaContract) -> None:
        assert failing(order, {**ORDER, "items": [{"sku": 1, "price": 1}]})[0] == "items.0.sku"


class TestDefinitionErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        missing = tmp_path / "nope.json"
        with pytest.raises(FileNotFoundError, match=r"nope\.json") as raised:
            JsonSchemaContract(missing)
        assert raised.value.filename == str(missing)

    def test_invalid_json_names_line_and_column(self) -> None:
        with pytest.raises(
            PipelineDefinitionError, match=r"broken\.json:3:\d+: JSON Schema is not"
        ):
            JsonSchemaContract(DATA / "broken.json")

    def test_schema_must_be_an_object(self, tmp_path: Path) -> None:
        file = tmp_path / "list.json"
        file.write_text("[1, 2]")
        with pytest.raises(PipelineDefinitionError, match="must be an object, got list"):
            JsonSchemaContract(file)

    def test_unusable_schema(self) -> None:
        with pytest.raises(PipelineDefinitionError, match="not a usable JSON Schema"):
            JsonSchemaContract({"type": "record"})

    def test_remote_ref_is_refused_not_fetched(self) -> None:
        with pytest.raises(PipelineDefinitionError, match="points outside the schema"):
            JsonSchemaContract(DATA / "remote_ref.json")

    def test_ref_handlers_cover_every_scheme(self) -> None:
        handlers = _NoRemoteRefs()
        assert "https" in handlers
        assert "" in handlers
        assert (len(handlers), list(handlers)) == (0, [])

    def test_relative_file_ref_is_refused(self) -> None:
        schema = {"properties": {"a": {"$ref": "other.json#/definitions/a"}}}
        with pytest.raises(PipelineDefinitionError, match="points outside the schema"):
            JsonSchemaContract(schema)

    @pytest.mark.parametrize("draft", ["2020-12", "2019-09"])
    def test_new_drafts_are_refused(self, draft: str) -> None:
        schema = {"$schema": f"https://json-schema.org/draft/{draft}/schema"}
        with pytest.raises(PipelineDefinitionError, match="draft-07"):
            JsonSchemaContract(schema)

    def test_wrong_argument(self) -> None:
        with pytest.raises(PipelineDefinitionError, match=r"needs a dict or a \.json path"):
            JsonSchemaContract(42)  # type: ignore[arg-type]


def test_pickles(order: JsonSchemaContract) -> None:
    copied = pickle.loads(pickle.dumps(order))
    assert (copied.name, copied.version) == (order.name, order.version)
    bad = {**ORDER, "id": "1"}
    assert str(copied.check(bad)) == str(order.check(bad))
