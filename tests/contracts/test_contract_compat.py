"""Contract versions and BACKWARD compatibility: every rule, both ways, JSON Schema and Avro."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from conveyor.contracts import (
    AvroContract,
    BreakingChange,
    JsonSchemaContract,
    TypeContract,
    check_compatibility,
    check_directory,
    find_contract_versions,
)
from conveyor.contracts._compat import version_key
from conveyor.errors import PipelineDefinitionError

pytest.importorskip("fastavro")

DATA = Path(__file__).parent / "data"


def rules(old: Any, new: Any) -> list[tuple[str, str]]:
    return [(change.path, change.rule) for change in check_compatibility(old, new)]


# --- JSON Schema ----------------------------------------------------------------------------


def obj(
    properties: dict[str, Any], required: list[str] | None = None, **extra: Any
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, **extra}
    if required is not None:
        schema["required"] = required
    return schema


INT, STR, NUM = {"type": "integer"}, {"type": "string"}, {"type": "number"}


def test_json_identical_schema_is_compatible() -> None:
    schema = json.loads((DATA / "order.schema.json").read_text())
    assert check_compatibility(schema, schema) == []
    assert check_compatibility(DATA / "order.schema.json", str(DATA / "order.schema.json")) == []


def test_json_required_added_breaks_and_required_removed_does_not() -> None:
    assert rules(obj({"a": INT}), obj({"a": INT}, ["a"])) == [("a", "required-added")]
    assert rules(obj({"a": INT}), obj({"a": INT, "b": STR}, ["b"])) == [("b", "required-added")]
    assert rules(obj({"a": INT}, ["a"]), obj({"a": INT})) == []


def test_json_optional_property_added_is_compatible_unless_model_explicitly_open() -> None:
    assert rules(obj({"a": INT}), obj({"a": INT, "b": STR})) == []
    closed = obj({"a": INT}, additionalProperties=False)
    assert rules(closed, obj({"a": INT, "b": STR}, additionalProperties=False)) == []
    explicit = obj({"a": INT}, additionalProperties=True)
    assert rules(explicit, obj({"a": INT, "b": STR}, additionalProperties=True)) == [
        ("b", "property-added-to-open-model")
    ]
    assert rules(explicit, obj({"a": INT, "b": {}}, additionalProperties=True)) == []


def test_json_property_added_is_checked_against_old_additional_properties_schema() -> None:
    old = obj({}, additionalProperties=STR)
    assert rules(old, obj({"b": INT}, additionalProperties=STR)) == [("b", "type-changed")]
    assert rules(old, obj({"b": STR}, additionalProperties=STR)) == []


def test_json_property_removed_breaks_only_a_closed_new_model() -> None:
    assert rules(obj({"a": INT, "b": STR}), obj({"a": INT})) == []
    closed_old = obj({"a": INT, "b": STR}, additionalProperties=False)
    assert rules(closed_old, obj({"a": INT}, additionalProperties=False)) == [
        ("b", "field-removed")
    ]
    assert rules(obj({"a": INT, "b": STR}), obj({"a": INT}, additionalProperties=STR)) == [
        ("", "additional-properties-narrowed")
    ]
    assert rules(obj({"b": INT}, additionalProperties=STR), obj({}, additionalProperties=STR)) == [
        ("b", "type-changed")
    ]


def test_json_additional_properties_rules() -> None:
    assert rules(obj({"a": INT}), obj({"a": INT}, additionalProperties=False)) == [
        ("", "additional-properties-narrowed")
    ]
    closed = obj({"a": INT}, additionalProperties=False)
    assert rules(closed, obj({"a": INT})) == []
    assert rules(closed, obj({"a": INT}, additionalProperties=INT)) == []
    assert rules(obj({}, additionalProperties=INT), obj({}, additionalProperties=NUM)) == []
    assert rules(obj({}, additionalProperties=NUM), obj({}, additionalProperties=INT)) == [
        ("*", "type-changed")
    ]


@pytest.mark.parametrize(
    ("old", "new", "breaks"),
    [
        ("integer", "number", False),
        ("number", "integer", True),
        ("string", "integer", True),
        (["string", "null"], "string", True),
        ("string", ["string", "null"], False),
        (["integer", "string"], ["number", "string", "boolean"], False),
        (None, "string", True),
        ("string", None, False),
    ],
)
def test_json_type_changes(old: Any, new: Any, breaks: bool) -> None:
    def field(kind: Any) -> dict[str, Any]:
        return {} if kind is None else {"type": kind}

    found = rules(obj({"a": field(old)}), obj({"a": field(new)}))
    assert found == ([("a", "type-changed")] if breaks else [])


def test_json_type_message_names_field_old_and_new() -> None:
    [change] = check_compatibility(
        obj({"a": {"type": ["string", "null"]}}, title="t"), obj({"a": STR}, title="t")
    )
    assert change.contract == "t"
    assert "'a'" in change.message
    assert "null|string" in change.message
    assert "to string" in change.message


def test_json_enum_rules() -> None:
    old = obj({"s": {"type": "string", "enum": ["a", "b"]}})
    assert rules(old, obj({"s": {"type": "string", "enum": ["a", "b", "c"]}})) == []
    assert rules(old, obj({"s": STR})) == []
    [change] = check_compatibility(old, obj({"s": {"type": "string", "enum": ["a"]}}))
    assert (change.path, change.rule) == ("s", "enum-value-removed")
    assert '"b"' in change.message
    assert rules(obj({"s": STR}), obj({"s": {"type": "string", "enum": ["a"]}})) == [
        ("s", "enum-added")
    ]
    assert rules(obj({"s": {"const": "a"}}), obj({"s": {"enum": ["a", "b"]}})) == []
    assert rules(obj({"s": {"enum": [1, 2]}}), obj({"s": {"enum": [1.0, 2]}})) == []
    assert rules(obj({"s": {"enum": [1]}}), obj({"s": {"enum": [True]}})) == [
        ("s", "enum-value-removed")
    ]


def test_json_old_enum_values_count_as_their_types() -> None:
    assert rules(obj({"s": {"enum": ["a", "b"]}}), obj({"s": STR})) == []
    assert rules(obj({"s": {"enum": ["a", 1]}}), obj({"s": STR})) == [("s", "type-changed")]


def test_json_nested_objects_and_arrays_give_dotted_paths() -> None:
    old = obj({"address": obj({"zip": STR}), "items": {"type": "array", "items": obj({"p": NUM})}})
    new = obj(
        {
            "address": obj({"zip": INT}),
            "items": {"type": "array", "items": obj({"p": INT}, ["p"])},
        }
    )
    changes = check_compatibility(old, new)
    assert [(c.path, c.rule) for c in changes] == [
        ("address.zip", "type-changed"),
        ("items.*.p", "type-changed"),
        ("items.*.p", "required-added"),
    ]
    assert "'address.zip'" in changes[0].message
    assert "'items.*.p'" in changes[1].message


def test_json_tuple_items() -> None:
    old = {"type": "array", "items": [STR, INT]}
    assert rules(old, {"type": "array", "items": [STR, NUM]}) == []
    assert rules(old, {"type": "array", "items": [STR, STR]}) == [("1", "type-changed")]
    assert rules(old, {"type": "array", "items": [STR]}) == []
    assert rules(old, {"type": "array", "items": [STR], "additionalItems": False}) == [
        ("1", "type-changed"),
        ("*", "type-changed"),
    ]


def test_json_constraints() -> None:
    assert rules({"type": "string"}, {"type": "string", "maxLength": 5}) == [
        ("", "constraint-tightened")
    ]
    assert rules({"type": "string", "maxLength": 5}, {"type": "string", "maxLength": 9}) == []
    assert rules({"type": "integer", "minimum": 0}, {"type": "integer", "minimum": 1}) == [
        ("", "constraint-tightened")
    ]
    assert rules({"type": "integer", "minimum": 1}, {"type": "integer", "minimum": 0}) == []
    assert rules({"type": "number", "multipleOf": 4}, {"type": "number", "multipleOf": 2}) == []
    assert rules({"type": "number", "multipleOf": 2}, {"type": "number", "multipleOf": 4}) == [
        ("", "constraint-tightened")
    ]
    assert rules({"type": "string"}, {"type": "string", "pattern": "^a"}) == [
        ("", "constraint-tightened")
    ]
    assert rules({"type": "string", "pattern": "^a"}, {"type": "string"}) == []
    # a string keyword does not constrain an integer field
    assert rules({"type": "integer"}, {"type": "integer", "maxLength": 1}) == []


def test_json_refs_any_of_and_boolean_schemas() -> None:
    old = {
        "definitions": {"Addr": obj({"zip": STR})},
        "type": "object",
        "properties": {"a": {"$ref": "#/definitions/Addr"}},
    }
    new = {
        "$defs": {"Addr": obj({"zip": INT})},
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/Addr"}},
    }
    assert rules(old, new) == [("a.zip", "type-changed")]
    nullable = obj({"a": {"anyOf": [INT, {"type": "null"}]}})
    assert rules(obj({"a": INT}), nullable) == []
    assert rules(nullable, obj({"a": INT})) == [("a", "type-changed")]
    assert rules(obj({"a": {"oneOf": [STR, INT]}}), obj({"a": {"anyOf": [NUM, STR]}})) == []
    assert rules(obj({"a": INT}), obj({"a": {"anyOf": [STR, {"type": "null"}]}})) == [
        ("a", "type-changed")
    ]
    assert rules(obj({"a": False}), obj({"a": INT})) == []
    assert rules(obj({"a": True}), obj({"a": False})) == [("a", "type-changed")]
    assert rules({"allOf": [obj({"a": INT}), obj({"b": STR})]}, obj({"a": NUM, "b": STR})) == []


def test_json_recursive_refs_terminate() -> None:
    tree = {
        "definitions": {
            "Node": obj(
                {"children": {"type": "array", "items": {"$ref": "#/definitions/Node"}}, "v": INT}
            )
        },
        "$ref": "#/definitions/Node",
    }
    assert check_compatibility(tree, tree) == []


# --- Pydantic models -------------------------------------------------------------------------


class OrderV1(BaseModel):
    id: int
    note: str | None = None


class OrderV2(BaseModel):
    id: int
    note: str | None = None
    tags: list[str] = []


class OrderV3(BaseModel):
    id: str
    note: str
    tags: list[str] = []


class OrderClosed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int


def test_pydantic_models_compare_through_their_json_schema() -> None:
    assert check_compatibility(OrderV1, OrderV2) == []
    assert check_compatibility(TypeContract(OrderV1), TypeContract(OrderV2)) == []
    found = rules(TypeContract(OrderV2), TypeContract(OrderV3))
    assert ("id", "type-changed") in found
    assert ("note", "type-changed") in found
    assert ("note", "required-added") in found
    assert rules(OrderV1, OrderClosed) == [
        ("note", "field-removed"),
        ("", "additional-properties-narrowed"),
    ]
    change = check_compatibility(OrderV1, TypeContract(OrderClosed))[0]
    assert change.contract == "OrderClosed"


def test_pydantic_model_against_json_schema_file_contract() -> None:
    schema = JsonSchemaContract(obj({"id": INT}, ["id"], title="order"))
    assert check_compatibility(schema, OrderV1) == []


# --- Avro -----------------------------------------------------------------------------------


def rec(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def fld(name: str, kind: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": kind, **extra}


def test_avro_identical_file_is_compatible() -> None:
    assert check_compatibility(DATA / "order.avsc", AvroContract(DATA / "order.avsc")) == []


def test_avro_field_added_needs_a_default_field_removed_is_fine() -> None:
    old = rec("R", fld("a", "int"))
    [change] = check_compatibility(old, rec("R", fld("a", "int"), fld("b", "string")))
    assert (change.path, change.rule) == ("b", "default-missing")
    assert "'b'" in change.message
    assert rules(old, rec("R", fld("a", "int"), fld("b", "string", default=""))) == []
    assert rules(rec("R", fld("a", "int"), fld("b", "string")), rec("R", fld("a", "int"))) == []


@pytest.mark.parametrize(
    ("default", "kind", "ok"),
    [
        (None, ["null", "string"], True),
        ("x", ["null", "string"], False),
        ("x", ["string", "null"], True),
        (1, "long", True),
        ("AB", {"type": "fixed", "name": "F", "size": 2}, True),
        ("A", {"type": "enum", "name": "E", "symbols": ["A"]}, True),
        ("Z", {"type": "enum", "name": "E", "symbols": ["A"]}, False),
        ([1], {"type": "array", "items": "int"}, True),
        ({"k": "v"}, {"type": "map", "values": "int"}, False),
        ({"x": 1}, rec("Inner", fld("x", "int"), fld("y", "int", default=0)), True),
        ({}, rec("Inner", fld("x", "int")), False),
    ],
)
def test_avro_added_field_default_must_fit(default: Any, kind: Any, ok: bool) -> None:
    old = rec("R", fld("a", "int"))
    new = rec("R", fld("a", "int"), fld("b", kind, default=default))
    assert rules(old, new) == ([] if ok else [("b", "default-invalid")])


def test_avro_defaults_fastavro_rejects_fail_when_the_contract_is_built() -> None:
    with pytest.raises(PipelineDefinitionError, match="Default value"):
        check_compatibility(rec("R"), rec("R", fld("b", "int", default=1.5)))


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        ("int", "long", True),
        ("int", "float", True),
        ("int", "double", True),
        ("long", "float", True),
        ("long", "double", True),
        ("float", "double", True),
        ("string", "bytes", True),
        ("bytes", "string", True),
        ("long", "int", False),
        ("double", "float", False),
        ("float", "long", False),
        ("string", "int", False),
        ("boolean", "int", False),
        ("int", ["null", "long"], True),
        (["null", "int"], ["null", "string", "long"], True),
        (["null", "string"], "string", False),
        (["null", "string"], ["string"], False),
        ("string", ["null", "int"], False),
    ],
)
def test_avro_type_promotions_and_unions(old: Any, new: Any, ok: bool) -> None:
    found = rules(rec("R", fld("a", old)), rec("R", fld("a", new)))
    assert found == ([] if ok else [("a", "type-changed")])


def test_avro_union_message_names_the_lost_branch() -> None:
    [change] = check_compatibility(
        rec("R", fld("a", ["null", "string"])), rec("R", fld("a", "string"))
    )
    assert "'a'" in change.message
    assert "[null, string]" in change.message
    assert "old null values" in change.message


def test_avro_enum_symbols() -> None:
    def enum(*symbols: str, **extra: Any) -> dict[str, Any]:
        return rec("R", fld("s", {"type": "enum", "name": "S", "symbols": list(symbols), **extra}))

    assert rules(enum("A", "B"), enum("A", "B", "C")) == []
    [change] = check_compatibility(enum("A", "B"), enum("A"))
    assert (change.path, change.rule) == ("s", "enum-symbol-removed")
    assert "'B'" in change.message
    assert rules(enum("A", "B"), enum("A", "OTHER", default="OTHER")) == []


def test_avro_names_fixed_arrays_and_maps() -> None:
    assert rules(rec("A", fld("x", "int")), rec("B", fld("x", "int"))) == [("", "name-changed")]
    assert rules(rec("A", fld("x", "int")), rec("B", fld("x", "int"), aliases=["A"])) == []
    assert (
        rules(
            rec("A", fld("x", "int"), namespace="one"), rec("A", fld("x", "int"), namespace="two")
        )
        == []
    )
    fixed = {"type": "fixed", "name": "F", "size": 4}
    assert rules(rec("R", fld("f", fixed)), rec("R", fld("f", {**fixed, "size": 8}))) == [
        ("f", "fixed-size-changed")
    ]
    arr = rec("R", fld("xs", {"type": "array", "items": "long"}))
    assert rules(arr, rec("R", fld("xs", {"type": "array", "items": "int"}))) == [
        ("xs.*", "type-changed")
    ]
    assert rules(arr, rec("R", fld("xs", {"type": "map", "values": "long"}))) == [
        ("xs", "type-changed")
    ]
    mp = rec("R", fld("m", {"type": "map", "values": "int"}))
    assert rules(mp, rec("R", fld("m", {"type": "map", "values": "double"}))) == []


def test_avro_field_aliases_and_nested_paths() -> None:
    item = rec("Item", fld("price", "double"))
    old = rec("Order", fld("items", {"type": "array", "items": item}), fld("zip", "string"))
    new_item = rec("Item", fld("price", "float"), fld("sku", "string"))
    new = rec(
        "Order",
        fld("items", {"type": "array", "items": new_item}),
        fld("postcode", "string", aliases=["zip"]),
    )
    changes = check_compatibility(old, new)
    assert [(c.path, c.rule) for c in changes] == [
        ("items.*.price", "type-changed"),
        ("items.*.sku", "default-missing"),
    ]
    assert "'items.*.price'" in changes[0].message
    assert "double" in changes[0].message
    assert "float" in changes[0].message


def test_avro_named_references_and_recursion() -> None:
    node = rec(
        "Node",
        fld("value", "int"),
        fld("next", ["null", "Node"], default=None),
        namespace="ll",
    )
    assert check_compatibility(node, node) == []
    changed = rec(
        "Node",
        fld("value", "string"),
        fld("next", ["null", "Node"], default=None),
        namespace="ll",
    )
    assert rules(node, changed) == [("value", "type-changed")]
    old = rec("R", fld("a", rec("Addr", fld("zip", "string"))), fld("b", "Addr"))
    new = rec("R", fld("a", rec("Addr", fld("zip", "int"))), fld("b", "Addr"))
    assert rules(old, new) == [("a.zip", "type-changed"), ("b.zip", "type-changed")]


def test_avro_logical_types_compare_by_their_underlying_type() -> None:
    old = rec("R", fld("t", {"type": "int", "logicalType": "date"}))
    new = rec("R", fld("t", {"type": "long", "logicalType": "timestamp-millis"}))
    assert rules(old, new) == []


def test_avro_top_level_union_list() -> None:
    assert rules(["null", "int"], ["null", "long"]) == []
    assert rules(["null", "int"], ["int"]) == [("", "type-changed")]


def test_kind_changed_and_bad_arguments() -> None:
    assert rules(obj({"a": INT}), rec("R", fld("a", "int"))) == [("", "kind-changed")]
    with pytest.raises(ValueError, match="mode"):
        check_compatibility(INT, INT, mode="forward")  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError):
        check_compatibility(42, INT)


def test_breaking_change_is_frozen_and_prints() -> None:
    change = BreakingChange("order", "a", "type-changed", "msg", "1", "2")
    with pytest.raises(AttributeError):
        change.rule = "x"  # type: ignore[misc]
    assert str(change) == "order 1 -> 2: msg [type-changed]"
    assert str(BreakingChange("order", "", "r", "m")) == "order: m [r]"


# --- versions and directories ------------------------------------------------------------------


def write(folder: Path, name: str, schema: Any) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema))
    return path


def test_version_key_is_numeric_aware() -> None:
    assert sorted(["v10", "v2", "v1"], key=version_key) == ["v1", "v2", "v10"]
    assert sorted(["1.10.0", "1.2.0", "1.9"], key=version_key) == ["1.2.0", "1.9", "1.10.0"]
    assert version_key("1.0") == version_key("1") == version_key("v1")
    assert version_key("2") < version_key("2.1")


def test_find_versions_in_names_sorted_numerically(tmp_path: Path) -> None:
    for version in (10, 2, 1):
        write(tmp_path, f"order.v{version}.json", obj({"a": INT}))
    write(tmp_path, "user-v1.avsc", rec("User", fld("a", "int")))
    write(tmp_path, "user_v2.avsc", rec("User", fld("a", "int")))
    write(tmp_path, "sem.1.10.0.json", INT)
    write(tmp_path, "sem.1.2.0.json", INT)
    write(tmp_path, ".hidden/order.v3.json", INT)
    write(tmp_path, "notes.txt", "ignored")
    found = find_contract_versions(tmp_path)
    assert list(found) == ["order", "sem", "user"]
    assert [f.version for f in found["order"]] == ["1", "2", "10"]
    assert [f.version for f in found["sem"]] == ["1.2.0", "1.10.0"]
    assert [(f.version, f.kind) for f in found["user"]] == [("1", "avro"), ("2", "avro")]


def test_find_versions_in_content(tmp_path: Path) -> None:
    write(tmp_path, "v10/order.json", obj({"a": INT}, **{"x-version": 10}))
    write(tmp_path, "v9/order.json", obj({"a": INT}, version="9"))
    write(tmp_path, "v1/order.avsc", rec("Order", fld("a", "int"), version=1))
    write(tmp_path, "lonely.json", INT)
    found = find_contract_versions(tmp_path)
    assert [f.version for f in found["order"]] == ["1", "9", "10"]
    assert [f.declared_version for f in found["order"]] == ["1", "9", "10"]
    assert [f.version for f in found["lonely"]] == [None]


def test_find_versions_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        find_contract_versions(tmp_path / "missing")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(PipelineDefinitionError, match=r"bad\.json"):
        find_contract_versions(tmp_path)


def test_check_directory_checks_each_consecutive_pair(tmp_path: Path) -> None:
    write(tmp_path, "order.v1.json", obj({"a": INT}))
    write(tmp_path, "order.v2.json", obj({"a": NUM}))
    write(tmp_path, "order.v10.json", obj({"a": INT, "b": STR}, ["b"]))
    write(tmp_path, "user.v1.avsc", rec("User", fld("a", "int")))
    write(tmp_path, "user.v2.avsc", rec("User", fld("a", "long"), fld("c", "int", default=0)))
    changes = check_directory(tmp_path)
    assert [(c.contract, c.old_version, c.new_version, c.path, c.rule) for c in changes] == [
        ("order", "2", "10", "a", "type-changed"),
        ("order", "2", "10", "b", "required-added"),
    ]
    assert str(changes[0]).startswith("order 2 -> 10: field 'a': type changed from")


def test_check_directory_version_problems(tmp_path: Path) -> None:
    write(tmp_path, "order.v1.json", obj({"a": INT}))
    write(tmp_path, "a/order.json", obj({"a": INT}, version=1))
    write(tmp_path, "b/order.json", obj({"a": INT}))
    write(tmp_path, "user.v2.json", obj({"a": INT}, version=3))
    write(tmp_path, "user.v4.avsc", rec("User", fld("a", "int")))
    write(tmp_path, "same.v1.json", INT)
    write(tmp_path, "same.v1.0.json", INT)
    found = [(c.contract, c.rule) for c in check_directory(tmp_path)]
    assert found == [
        ("order", "version-missing"),
        ("order", "version-duplicate"),
        ("same", "version-duplicate"),
        ("user", "version-mismatch"),
        ("user", "kind-changed"),
    ]


def test_check_directory_clean_and_single_files(tmp_path: Path) -> None:
    write(tmp_path, "lonely.json", INT)
    write(tmp_path, "order.v1.json", obj({"a": INT}))
    write(tmp_path, "order.v2.json", obj({"a": NUM, "b": STR}))
    assert check_directory(tmp_path) == []
