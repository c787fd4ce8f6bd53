"""ProtobufContract: .proto files compiled with grpcio-tools' protoc, records checked at the
edges (dicts, serialized bytes, message instances), naming, caching, pickling, projects."""

from __future__ import annotations

import datetime
import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor import MapStage, Pipeline, StageOptions
from conveyor.contracts import ProtobufContract, ProtoFile, compile_proto, contract_for
from conveyor.contracts import _protobuf as protobuf_module
from conveyor.errors import PipelineDefinitionError
from conveyor.testing import run_pipeline_on

SHOP = """
syntax = "proto3";
package shop;

import "google/protobuf/any.proto";
import "google/protobuf/duration.proto";
import "google/protobuf/struct.proto";
import "google/protobuf/timestamp.proto";
import "google/protobuf/wrappers.proto";

message Order {
  enum Status {
    STATUS_UNKNOWN = 0;
    PAID = 1;
    SHIPPED = 2;
  }
  int64 id = 1;
  uint32 quantity = 2;
  int32 delta = 3;
  uint64 big = 4;
  float ratio = 5;
  double total = 6;
  bool gift = 7;
  string customer_id = 8;
  bytes blob = 9;
  Status status = 10;
  repeated Item items = 11;
  repeated string tags = 12;
  map<string, int32> counts = 13;
  map<int32, Item> by_position = 14;
  oneof payment {
    string card = 15;
    string iban = 16;
  }
  optional string note = 17;
  Address address = 18;
  google.protobuf.Timestamp placed_at = 19;
  google.protobuf.Duration delay = 20;
  google.protobuf.Int32Value priority = 21;
  google.protobuf.Struct meta = 22;
  google.protobuf.Any extra = 23;
  sint32 offset = 24;
  fixed64 checksum = 25;
  map<bool, string> flags = 26;
  reserved 30, 40 to 45;
  reserved "legacy";
}

message Item {
  string sku = 1;
  double price = 2;
}

message Address {
  string zip = 1;
}
"""

LEGACY = """
syntax = "proto2";
package legacy;

message Row {
  enum Kind {
    A = 1;
    B = 2;
  }
  required int32 id = 1;
  optional Kind kind = 2;
  repeated Row children = 3;
}
"""

VALID: dict[str, Any] = {
    "id": 1,
    "quantity": 2,
    "delta": -3,
    "big": 2**64 - 1,
    "ratio": 0.5,
    "total": 10,  # an int is a valid double
    "gift": False,
    "customer_id": "c-1",
    "blob": b"\x00\xff",
    "status": "PAID",
    "items": [{"sku": "a", "price": 1.5}, {"sku": "b"}],
    "tags": ["x", "y"],
    "counts": {"a": 1},
    "by_position": {1: {"sku": "a"}, "2": {"sku": "b"}},  # int keys, or their JSON text
    "card": "4111",
    "note": None,  # None is "not set"
    "address": {"zip": "10115"},
    "placed_at": datetime.datetime(2024, 5, 1, tzinfo=datetime.UTC),
    "delay": "1.5s",
    "priority": 3,
    "meta": {"source": "web", "scores": [1, 2.5, None, {"deep": True}]},
    "extra": {"@type": "type.googleapis.com/shop.Item", "sku": "z"},
    "offset": -7,
    "checksum": 2**64 - 1,
}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def shop_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("proto"), "shop.proto", SHOP)


@pytest.fixture(scope="module")
def order(shop_file: Path) -> ProtobufContract:
    return ProtobufContract(f"{shop_file}:Order")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> ProtobufContract:
    return ProtobufContract(write(tmp_path_factory.mktemp("proto"), "legacy.proto", LEGACY))


def failing(contract: ProtobufContract, record: object) -> tuple[str, str]:
    found = contract.check(record)
    assert found is not None, f"{record!r} should violate {contract.name}"
    assert found.contract == contract.name
    return found.path, found.reason


# --- dict records ----------------------------------------------------------------------------


def test_a_valid_record_passes_and_is_not_modified(order: ProtobufContract) -> None:
    record = {**VALID}
    assert order.check(record) is None
    assert record == VALID
    assert order.check({}) is None  # proto3: every field is optional
    assert order.check_many([VALID, {}, {"id": 2}]) == []


@pytest.mark.parametrize(
    ("change", "path", "reason"),
    [
        ({"id": "1"}, "id", "expected int64, got str"),
        ({"id": True}, "id", "expected int64, got bool"),
        ({"id": 1.0}, "id", "expected int64, got float"),
        (
            {"id": 2**63},
            "id",
            f"{2**63} is out of range for int64 (-{2**63} to {2**63 - 1})",
        ),
        ({"quantity": -1}, "quantity", "-1 is out of range for uint32 (0 to 4294967295)"),
        ({"quantity": 2**32}, "quantity", f"{2**32} is out of range for uint32"),
        ({"delta": 2**31}, "delta", f"{2**31} is out of range for int32"),
        ({"delta": -(2**31) - 1}, "delta", "out of range for int32 (-2147483648 to 2147483647)"),
        ({"big": -1}, "big", "-1 is out of range for uint64"),
        ({"big": 2**64}, "big", f"{2**64} is out of range for uint64"),
        ({"offset": 2**31}, "offset", "out of range for sint32"),
        ({"checksum": -1}, "checksum", "-1 is out of range for fixed64"),
        ({"ratio": 1e39}, "ratio", "1e+39 is out of range for float"),
        ({"ratio": "0.5"}, "ratio", "expected float, got str"),
        ({"total": True}, "total", "expected double, got bool"),
        ({"gift": 1}, "gift", "expected bool, got int"),
        ({"customer_id": 5}, "customer_id", "expected string, got int"),
        ({"customer_id": "\ud800"}, "customer_id", "string is not valid UTF-8"),
        ({"blob": "text"}, "blob", "expected bytes, got str"),
        (
            {"status": "LOST"},
            "status",
            "'LOST' is not a value of enum shop.Order.Status (STATUS_UNKNOWN, PAID, SHIPPED)",
        ),
        ({"status": 2.0}, "status", "expected enum shop.Order.Status (a value name or number)"),
        ({"status": 2**31}, "status", "out of range for enum shop.Order.Status"),
        ({"items": {"sku": "a"}}, "items", "expected a list for repeated message shop.Item"),
        ({"tags": "x"}, "tags", "expected a list for repeated string, got str"),
        ({"tags": ["x", 2]}, "tags.1", "expected string, got int"),
        ({"tags": ["x", None]}, "tags.1", "null in a repeated field (expected string)"),
        ({"items": [{"sku": "a"}, {"price": "2"}]}, "items.1.price", "expected double, got str"),
        ({"items": [{"sku": "a"}, "b"]}, "items.1", "expected message shop.Item (a mapping)"),
        ({"address": {"zip": 10115}}, "address.zip", "expected string, got int"),
        ({"address": "Berlin"}, "address", "expected message shop.Address (a mapping), got str"),
        ({"counts": {"a": "1"}}, "counts.a", "expected int32, got str"),
        ({"counts": {"a": None}}, "counts.a", "null map value (expected int32)"),
        ({"counts": {1: 1}}, "counts.1", "map key must be a string, got int"),
        ({"counts": [("a", 1)]}, "counts", "expected a mapping for map<string, int32>, got list"),
        ({"by_position": {"x": {}}}, "by_position.x", "map key 'x': expected int32, got str"),
        ({"by_position": {2**31: {}}}, f"by_position.{2**31}", "out of range for int32"),
        ({"by_position": {1: {"sku": 1}}}, "by_position.1.sku", "expected string, got int"),
        (
            {"card": "4111", "iban": "DE00"},
            "iban",
            "oneof 'payment' allows one field to be set, but card and iban are set",
        ),
        ({"placed_at": "yesterday"}, "placed_at", "not an RFC 3339 timestamp"),
        ({"placed_at": 1714521600}, "placed_at", "expected google.protobuf.Timestamp"),
        ({"delay": "soon"}, "delay", "not a duration for google.protobuf.Duration"),
        ({"priority": "high"}, "priority", "expected int32, got str"),
        ({"priority": 2**31}, "priority", "out of range for int32"),
        ({"meta": ["a"]}, "meta", "expected google.protobuf.Struct (a mapping), got list"),
        ({"meta": {"when": datetime.date(2024, 1, 1)}}, "meta.when", "date is not a JSON value"),
        (
            {"extra": {"@type": "type.googleapis.com/shop.Nope"}},
            "extra.@type",
            "type 'type.googleapis.com/shop.Nope' is not defined",
        ),
        (
            {"extra": {"@type": "type.googleapis.com/shop.Item", "price": "1"}},
            "extra.price",
            "expected double, got str",
        ),
        (
            {"extra": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "x"}},
            "extra.value",
            "not a duration",
        ),
    ],
)
def test_each_violation_names_its_field(
    order: ProtobufContract, change: dict[str, Any], path: str, reason: str
) -> None:
    found_path, found_reason = failing(order, {**VALID, **change})
    assert (found_path, reason in found_reason) == (path, True), found_reason


def test_other_accepted_forms(order: ProtobufContract) -> None:
    item_class = type(order.message_class().items.add())  # type: ignore[attr-defined]
    accepted: list[dict[str, Any]] = [
        {"placed_at": "2024-05-01T12:00:00Z"},
        {"placed_at": {"seconds": 1714521600, "nanos": 5}},
        {"delay": datetime.timedelta(seconds=3)},
        {"delay": {"seconds": 3}},
        {"priority": {"value": 3}},
        {"extra": {"type_url": "type.googleapis.com/shop.Item", "value": b""}},
        {"extra": {"@type": "type.googleapis.com/google.protobuf.Duration", "value": "2s"}},
        {"flags": {True: "on", "false": "off"}},
        {"items": [item_class(sku="a")]},  # a message instance as a nested value
        {"items": ({"sku": "a"},)},  # a tuple is a list
        {"meta": {}},
    ]
    for change in accepted:
        assert order.check({**VALID, **change}) is None, change
    rejected = [
        ({"placed_at": {"seconds": "1"}}, "placed_at.seconds", "expected int64, got str"),
        ({"delay": 3}, "delay", "expected google.protobuf.Duration (a timedelta or '1.5s')"),
        ({"priority": {"value": "3"}}, "priority.value", "expected int32, got str"),
        ({"flags": {"yes": "on"}}, "flags.yes", "map key must be a bool (or 'true'/'false')"),
        ({"total": 10**400}, "total", "is out of range for double"),
        ({"extra": {"@type": 7}}, "extra.@type", "expected a type URL string, got int"),
        (
            {"items": [order.message_class()]},
            "items.0",
            "expected message shop.Item, got shop.Order",
        ),
    ]
    for change, path, reason in rejected:
        found_path, found_reason = failing(order, {**VALID, **change})
        assert found_path == path, (change, found_path)
        assert reason in found_reason, (change, found_reason)


def test_unknown_field_numbers_inside_map_values_in_bytes(order: ProtobufContract) -> None:
    item = order.descriptor.fields_by_name["items"].message_type
    assert item is not None
    from google.protobuf import message_factory

    raw_item = message_factory.GetMessageClass(item)(sku="a").SerializeToString() + bytes(
        [9 << 3, 1]
    )
    entry = bytes([1 << 3, 7, 2 << 3 | 2, len(raw_item)]) + raw_item  # key 7, value the item
    data = bytes([14 << 3 | 2, len(entry)]) + entry
    assert failing(order, data) == (
        "by_position.7",
        "unknown field number 9: message shop.Item has no field 9",
    )
    good = order.message_class()
    good.by_position[7].sku = "a"  # type: ignore[attr-defined]
    good.counts["a"] = 1  # type: ignore[attr-defined]
    assert order.check(good.SerializeToString()) is None


def test_unknown_fields_are_violations_with_a_hint(order: ProtobufContract) -> None:
    assert failing(order, {"idd": 1}) == (
        "idd",
        "unknown field: message shop.Order has no field 'idd' (did you mean 'id'?)",
    )
    path, reason = failing(order, {"customerId": "c"})
    assert path == "customerId"
    assert "not JSON names: use 'customer_id'" in reason
    path, reason = failing(order, {"items": [{"sku": "a", "colour": "red"}]})
    assert path == "items.0.colour"
    assert (
        reason == "unknown field: message shop.Item has no field 'colour' (its fields: sku, price)"
    )
    assert failing(order, {7: "x"}) == ("", "field names are strings, got int 7")


def test_reserved_names_are_accepted_so_records_from_before_a_retirement_pass(
    order: ProtobufContract,
) -> None:
    assert order.check({"id": 1, "legacy": "whatever"}) is None


def test_enums_take_names_or_numbers(order: ProtobufContract, legacy: ProtobufContract) -> None:
    assert order.check({"status": "SHIPPED"}) is None
    assert order.check({"status": 2}) is None
    assert order.check({"status": 99}) is None  # a proto3 enum is open: any int32
    assert legacy.check({"id": 1, "kind": "B"}) is None
    assert legacy.check({"id": 1, "kind": 2}) is None
    assert failing(legacy, {"id": 1, "kind": 3}) == (
        "kind",
        "3 is not a number of closed enum legacy.Row.Kind (A=1, B=2)",
    )


def test_proto2_required_fields(legacy: ProtobufContract) -> None:
    assert failing(legacy, {}) == ("id", "required field is missing")
    assert failing(legacy, {"id": None}) == ("id", "required field is missing")
    assert failing(legacy, {"id": 1, "children": [{"id": 2}, {"kind": "A"}]}) == (
        "children.1.id",
        "required field is missing",
    )


def test_not_a_record(order: ProtobufContract) -> None:
    assert failing(order, [1, 2]) == (
        "",
        "expected a mapping, serialized bytes or a shop.Order message, got list",
    )


def test_deep_nesting_is_a_violation_not_a_crash(legacy: ProtobufContract) -> None:
    record: dict[str, Any] = {"id": 0}
    for _ in range(150):
        record = {"id": 0, "children": [record]}
    path, reason = failing(legacy, record)
    assert reason == "nested deeper than 100 levels"
    assert path.startswith("children.0.children.0")


# --- bytes and message records ---------------------------------------------------------------


def test_serialized_messages_are_parsed(order: ProtobufContract) -> None:
    message = order.message_class(id=5, customer_id="c")
    message.items.add(sku="a", price=1.0)  # type: ignore[attr-defined]
    data = message.SerializeToString()
    assert order.check(data) is None
    assert order.check(bytearray(data)) is None
    assert order.check(memoryview(data)) is None
    assert order.check(message) is None
    path, reason = failing(order, b"\xff\xff\xff")
    assert path == ""
    assert reason.startswith("not a serialized shop.Order: ")


def test_unknown_field_numbers_in_bytes_are_violations_except_reserved(
    order: ProtobufContract,
) -> None:
    data = order.message_class(id=5).SerializeToString()
    field_50_varint = bytes([50 << 3 & 0x7F | 0x80, 50 >> 4, 1])
    assert failing(order, data + field_50_varint) == (
        "",
        "unknown field number 50: message shop.Order has no field 50",
    )
    field_42_varint = bytes([42 << 3 & 0x7F | 0x80, 42 >> 4, 1])  # reserved 40 to 45
    assert order.check(data + field_42_varint) is None
    item = order.descriptor.fields_by_name["items"].message_type
    assert item is not None
    from google.protobuf import message_factory

    raw_item = message_factory.GetMessageClass(item)(sku="a").SerializeToString() + bytes(
        [9 << 3, 1]
    )
    two_items = (bytes([11 << 3 | 2, 0]) + bytes([11 << 3 | 2, len(raw_item)])) + raw_item
    assert failing(order, data + two_items) == (
        "items.1",
        "unknown field number 9: message shop.Item has no field 9",
    )


def test_required_fields_missing_from_bytes(legacy: ProtobufContract) -> None:
    row = legacy.message_class(id=1)
    row.children.add()  # type: ignore[attr-defined]
    assert failing(legacy, row.SerializePartialToString()) == (
        "children.0.id",
        "required field is missing",
    )
    assert legacy.check(legacy.message_class(id=1).SerializeToString()) is None


def test_a_message_of_another_type_is_a_violation(
    order: ProtobufContract, legacy: ProtobufContract
) -> None:
    assert failing(order, legacy.message_class(id=1)) == (
        "",
        "expected message shop.Order, got legacy.Row",
    )


# --- naming, loading, compiling --------------------------------------------------------------


def test_naming_the_message(shop_file: Path, tmp_path: Path) -> None:
    assert ProtobufContract(f"{shop_file}:Order").name == "shop.proto:Order"
    assert ProtobufContract(shop_file, message="Item").message == "shop.Item"
    assert ProtobufContract(shop_file, message="shop.Address").message == "shop.Address"
    assert ProtobufContract(f"{shop_file}:Item", name="items").name == "items"
    single = write(tmp_path, "point.proto", 'syntax = "proto3"; message Point { int32 x = 1; }')
    contract = ProtobufContract(single)
    assert (contract.name, contract.message, contract.version) == ("point.proto", "Point", None)
    with pytest.raises(
        PipelineDefinitionError, match=r"defines 3 messages \(Order, Item, Address\)"
    ):
        ProtobufContract(shop_file)
    with pytest.raises(PipelineDefinitionError, match=r":Order' or message='Order'"):
        ProtobufContract(shop_file)
    with pytest.raises(PipelineDefinitionError, match="has no message 'Nope'; its messages: Order"):
        ProtobufContract(f"{shop_file}:Nope")
    with pytest.raises(PipelineDefinitionError, match="names message 'Order' but message='Item'"):
        ProtobufContract(f"{shop_file}:Order", message="Item")
    empty = write(tmp_path, "empty.proto", 'syntax = "proto3"; enum E { Z = 0; }')
    with pytest.raises(PipelineDefinitionError, match="defines no message"):
        ProtobufContract(empty)


def test_nested_messages_can_be_named(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "outer.proto",
        'syntax = "proto3"; message Outer { message Inner { bool on = 1; } Inner inner = 1; }',
    )
    inner = ProtobufContract(f"{path}:Outer.Inner")
    assert inner.message == "Outer.Inner"
    assert failing(inner, {"on": "yes"}) == ("on", "expected bool, got str")


def test_contract_for_dispatches_proto_paths(shop_file: Path) -> None:
    for spec in (f"{shop_file}:Order", Path(f"{shop_file}:Order")):
        contract = contract_for(spec)
        assert isinstance(contract, ProtobufContract)
        assert contract.message == "shop.Order"


def test_compile_errors_name_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.proto", 'syntax = "proto3";\nmessage A {\n  Missing b = 1;\n}\n')
    with pytest.raises(PipelineDefinitionError) as raised:
        ProtobufContract(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: not a valid .proto file:")
    assert f"{path}:3:3: " in message
    assert '"Missing" is not defined' in message


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Protobuf file not found") as raised:
        ProtobufContract(tmp_path / "nope.proto")
    assert raised.value.filename == str(tmp_path / "nope.proto")
    with pytest.raises(FileNotFoundError):
        contract_for(f"{tmp_path / 'nope.proto'}:Order")


def test_wrong_argument() -> None:
    with pytest.raises(PipelineDefinitionError, match=r"needs the path of a \.proto file, got int"):
        ProtobufContract(42)  # type: ignore[arg-type]


def test_imports_from_the_same_folder_and_include_folders(tmp_path: Path) -> None:
    write(
        tmp_path / "contracts",
        "money.proto",
        'syntax = "proto3"; package m; message Money { int64 cents = 1; }',
    )
    order = write(
        tmp_path / "contracts",
        "order.proto",
        'syntax = "proto3"; import "money.proto"; message Order { m.Money price = 1; }',
    )
    contract = ProtobufContract(order)
    assert failing(contract, {"price": {"cents": "1"}}) == (
        "price.cents",
        "expected int64, got str",
    )
    write(
        tmp_path / "common" / "shared",
        "ids.proto",
        'syntax = "proto3"; package ids; message Id { string v = 1; }',
    )
    user = write(
        tmp_path / "contracts",
        "user.proto",
        'syntax = "proto3"; import "shared/ids.proto"; message User { ids.Id id = 1; }',
    )
    with pytest.raises(PipelineDefinitionError, match=r"shared/ids\.proto: File not found"):
        ProtobufContract(user)
    with_include = ProtobufContract(user, include=[tmp_path / "common"])
    assert failing(with_include, {"id": {"v": 1}}) == ("id.v", "expected string, got int")


def test_compiled_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    run = protobuf_module._run_protoc

    def counting(file: Path, folders: tuple[Path, ...]) -> bytes:
        calls.append(file)
        return run(file, folders)

    monkeypatch.setattr(protobuf_module, "_run_protoc", counting)
    write(tmp_path, "dep.proto", 'syntax = "proto3"; message Dep { int32 a = 1; }')
    main = write(
        tmp_path, "main.proto", 'syntax = "proto3"; import "dep.proto"; message M { Dep d = 1; }'
    )
    first = compile_proto(main)
    assert compile_proto(main) is first
    ProtobufContract(main)
    assert len(calls) == 1
    write(tmp_path, "main.proto", 'syntax = "proto3"; import "dep.proto"; message M { Dep e = 1; }')
    assert ProtobufContract(main).check({"e": {"a": 1}}) is None
    assert len(calls) == 2
    write(tmp_path, "dep.proto", 'syntax = "proto3"; message Dep { string a = 1; }')  # an import
    assert failing(ProtobufContract(main), {"e": {"a": 1}}) == ("e.a", "expected string, got int")
    assert len(calls) == 3


def test_pickles_without_recompiling(
    order: ProtobufContract, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = pickle.dumps(order)

    def no_protoc(*args: object) -> bytes:
        raise AssertionError("unpickling must not run protoc")

    monkeypatch.setattr(protobuf_module, "_run_protoc", no_protoc)
    copy = pickle.loads(data)
    assert isinstance(copy, ProtobufContract)
    assert (copy.name, copy.message) == (order.name, order.message)
    assert copy.check(VALID) is None
    assert failing(copy, {"quantity": -1})[0] == "quantity"
    assert isinstance(copy.proto, ProtoFile)


def test_without_grpcio_tools_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "grpc_tools" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    path = write(tmp_path, "fresh.proto", 'syntax = "proto3"; message Fresh { int32 a = 1; }')
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[protobuf\]'"):
        ProtobufContract(path)


# --- at stage edges, and in a project --------------------------------------------------------


def ident(record: Any) -> Any:
    return record


def test_violations_at_a_stage_edge_become_dead_letters(shop_file: Path) -> None:
    pipeline = Pipeline[Any, Any]("edges").add_stage(
        MapStage(ident, name="load"),
        options=StageOptions(input_contract=f"{shop_file}:Item"),
    )
    good, bad = {"sku": "a", "price": 1.0}, {"sku": "b", "price": "1.0"}
    run = run_pipeline_on(pipeline, [good, bad, good], batch_size=2)
    assert run.outputs == [good, good]
    [letter] = run.dead_letters
    assert letter.record == bad
    assert letter.error_type == "conveyor.errors.ContractViolation"
    assert letter.message == (
        "load input: field 'price' violates contract shop.proto:Item: expected double, got str"
    )


READING_PROTO = """
syntax = "proto3";
package sensors;

message Reading {
  string sensor = 1;
  double celsius = 2;
}
"""


@pytest.mark.usefixtures("isolated_imports")
def test_a_project_stage_checked_against_a_proto_in_contracts(tmp_path: Path) -> None:
    from conveyor.dlq import open_dead_letter_store
    from conveyor.project.run import run_project
    from conveyor.project.scaffold import new_project

    project = tmp_path / "proj"
    new_project(project)
    pipeline = project / "src" / "pipeline"
    write(pipeline / "contracts", "reading.proto", READING_PROTO)
    config = pipeline / "config.yaml"
    config.write_text(config.read_text().replace("count: 1000", "count: 40"))
    source = pipeline / "stages" / "00_source.py"
    text = source.read_text()
    old = 'yield {"sensor": f"s{i % 3}", "celsius": (i % 50) - 10.0}'
    assert old in text
    source.write_text(
        text.replace(
            old,
            'yield {"sensor": i if i % 20 == 3 else f"s{i % 3}", "celsius": (i % 50) - 10.0}',
        )
    )
    validate = pipeline / "stages" / "10_validate.py"
    validate.write_text(
        validate.read_text()
        + "\nfrom pathlib import Path\n\n"
        + 'stage.input_contract = Path(__file__).parent.parent / "contracts" / "reading.proto"\n'
    )
    result = run_project(project, handle_signals=False)
    assert result.report is not None
    assert result.report.stage("validate").dead_lettered == 2
    assert len((project / "data" / "readings.jsonl").read_text().splitlines()) == 38
    with open_dead_letter_store(project / ".conveyor" / "dead_letters.db") as store:
        letters = store.list()
    assert sorted(letter.record["sensor"] for letter in letters) == [3, 23]
    for letter in letters:
        assert letter.stage == "validate"
        assert letter.error_type == "conveyor.errors.ContractViolation"
        assert letter.message == (
            "validate input: field 'sensor' violates contract reading.proto: "
            "expected string, got int"
        )


def test_protobuf_is_imported_only_when_a_proto_contract_is_built() -> None:
    import subprocess

    code = (
        "import sys\n"
        "from conveyor.contracts import contract_for\n"
        "contract_for(int)\n"
        "print('google.protobuf' in sys.modules, 'grpc_tools' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]
