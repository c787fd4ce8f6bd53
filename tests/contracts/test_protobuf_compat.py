"""Protobuf compatibility: each rule between two versions of a .proto file, by its message,
the compatible changes that must pass, versions in a folder and `conveyor contracts check`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conveyor.cli import app
from conveyor.contracts import (
    BreakingChange,
    ProtobufContract,
    check_compatibility,
    check_directory,
    compile_proto,
    find_contract_versions,
)

Compare = Callable[..., list[BreakingChange]]


def proto(folder: Path, name: str, body: str, *, package: str = "shop") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'syntax = "proto3";\npackage {package};\n{body}\n')
    return path


@pytest.fixture
def versions(tmp_path: Path) -> Compare:
    """``compare(old_body, new_body)``: the breaking changes from one to the other."""
    counter = iter(range(1, 1000))

    def compare(
        old: str, new: str, old_package: str = "shop", new_package: str = "shop"
    ) -> list[BreakingChange]:
        n = next(counter)
        before = proto(tmp_path, f"old{n}/order.proto", old, package=old_package)
        after = proto(tmp_path, f"new{n}/order.proto", new, package=new_package)
        return check_compatibility(before, after)

    return compare


def rules(changes: list[BreakingChange]) -> list[tuple[str, str]]:
    return [(change.path, change.rule) for change in changes]


def only(changes: list[BreakingChange]) -> BreakingChange:
    assert len(changes) == 1, [str(change) for change in changes]
    return changes[0]


ORDER = "message Order { int64 id = 1; string email = 2; repeated string tags = 3; }"


def test_identical_files_are_compatible(versions: Compare) -> None:
    assert versions(ORDER, ORDER) == []


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # adding fields, messages, enums and enum values
        (ORDER, ORDER.replace("}", "string note = 4; } message Extra { bool on = 1; }")),
        ("enum E { A = 0; }", "enum E { A = 0; B = 1; }"),
        # removing a field with its number and name reserved
        (
            ORDER,
            'message Order { int64 id = 1; repeated string tags = 3; reserved 2; reserved "email";'
            " }",
        ),
        (
            ORDER,
            "message Order { int64 id = 1; repeated string tags = 3; reserved 2 to 2, 9 to max;"
            ' reserved "email"; }',
        ),
        # each wire-compatible type group
        ("message M { int32 a = 1; }", "message M { int64 a = 1; }"),
        ("message M { int32 a = 1; }", "message M { uint32 a = 1; }"),
        ("message M { uint64 a = 1; }", "message M { bool a = 1; }"),
        ("message M { sint32 a = 1; }", "message M { sint64 a = 1; }"),
        ("message M { fixed32 a = 1; }", "message M { sfixed32 a = 1; }"),
        ("message M { fixed64 a = 1; }", "message M { sfixed64 a = 1; }"),
        ("message M { string a = 1; }", "message M { bytes a = 1; }"),
        ("message M { map<string, int32> a = 1; }", "message M { map<string, int64> a = 1; }"),
        # presence: proto3 optional on and off
        ("message M { string a = 1; }", "message M { optional string a = 1; }"),
        # one field moved into a new oneof
        (
            "message M { string a = 1; string b = 2; }",
            "message M { oneof o { string a = 1; } string b = 2; }",
        ),
        # fields of one oneof stay in it, with a new member
        (
            "message M { oneof o { string a = 1; string b = 2; } }",
            "message M { oneof o { string a = 1; string b = 2; string c = 3; } }",
        ),
    ],
)
def test_compatible_changes(versions: Compare, old: str, new: str) -> None:
    assert versions(old, new) == []


def test_a_removed_field_must_be_reserved(versions: Compare) -> None:
    change = only(versions(ORDER, "message Order { int64 id = 1; repeated string tags = 3; }"))
    assert (change.contract, change.path, change.rule) == (
        "order.proto",
        "Order.email",
        "field-removed",
    )
    assert change.message == (
        "field 'email' (2) was removed without reserving its number and name: a later version "
        'could reuse them and misread old data; reserve 2 and "email" (add `reserved 2; '
        'reserved "email";` to message Order)'
    )
    name_only = only(
        versions(ORDER, "message Order { int64 id = 1; repeated string tags = 3; reserved 2; }")
    )
    assert name_only.rule == "field-removed"
    assert "without reserving its name: a later version could reuse it" in name_only.message
    assert 'reserve "email" (add `reserved "email";`' in name_only.message
    number_only = only(
        versions(
            ORDER, 'message Order { int64 id = 1; repeated string tags = 3; reserved "email"; }'
        )
    )
    assert "without reserving its number" in number_only.message
    assert "reserve 2 (add `reserved 2;`" in number_only.message


def test_reusing_a_reserved_number_or_name(versions: Compare) -> None:
    old = 'message Order { int64 id = 1; reserved 2, 5 to 7; reserved "email"; }'
    number = only(versions(old, "message Order { int64 id = 1; string phone = 6; }"))
    assert (number.path, number.rule) == ("Order.phone", "reserved-reused")
    assert "uses number 6, which the old version reserved" in number.message
    assert "keep 6 reserved" in number.message
    name = only(
        versions(old, "message Order { int64 id = 1; string email = 9; reserved 2, 5 to 7; }")
    )
    assert (name.path, name.rule) == ("Order.email", "reserved-reused")
    assert "uses the name 'email', which the old version reserved" in name.message


@pytest.mark.parametrize(
    ("old_type", "new_type"),
    [
        ("int32", "sint32"),  # varint vs zigzag: same wire type, different values
        ("int32", "string"),
        ("int64", "fixed64"),
        ("fixed32", "fixed64"),
        ("sint64", "int64"),
        ("double", "float"),
        ("string", "Item"),
        ("Item", "Other"),
        ("Status", "int32"),
        ("map<string, int32>", "map<string, string>"),
        ("map<string, int32>", "map<int32, int32>"),
        ("map<string, Item>", "repeated Item"),
    ],
)
def test_type_changes_outside_the_wire_groups(
    versions: Compare, old_type: str, new_type: str
) -> None:
    common = (
        "message Item { string sku = 1; } message Other { string sku = 1; } enum Status { S = 0; }"
    )
    change = only(
        versions(
            f"message M {{ {old_type} a = 1; }} {common}",
            f"message M {{ {new_type} a = 1; }} {common}",
        )
    )
    assert (change.path, change.rule) == ("M.a", "type-changed")
    shown_old = old_type.removeprefix("repeated ")
    shown_new = new_type.removeprefix("repeated ")
    assert change.message == (
        f"field 'a' (1) changed type from {shown_old} to {shown_new}, which is not "
        f"wire-compatible: old data cannot be read as the new type; keep {shown_old}, or add a "
        'new field with a new number and reserve 1 and "a"'
    )


def test_a_renamed_field(versions: Compare) -> None:
    change = only(versions(ORDER, ORDER.replace("email", "mail")))
    assert (change.path, change.rule) == ("Order.email", "field-renamed")
    assert change.message.startswith("field 2 was renamed from 'email' to 'mail': ")
    assert "old records carrying 'email' are rejected" in change.message
    assert 'reserve 2 and "email"' in change.message


def test_a_renumbered_field(versions: Compare) -> None:
    change = only(versions(ORDER, ORDER.replace("email = 2", "email = 9")))
    assert (change.path, change.rule) == ("Order.email", "field-renumbered")
    assert "changed its number from 2 to 9" in change.message
    assert "keep number 2" in change.message


def test_cardinality_changes(versions: Compare) -> None:
    to_single = only(versions(ORDER, ORDER.replace("repeated string tags", "string tags")))
    assert (to_single.path, to_single.rule) == ("Order.tags", "cardinality-changed")
    assert "changed from repeated to singular" in to_single.message
    assert (
        "the binary format tolerates this for string, bytes and message fields" in to_single.message
    )
    to_repeated = only(
        versions("message M { int32 n = 1; }", "message M { repeated int32 n = 1; }")
    )
    assert to_repeated.rule == "cardinality-changed"
    assert "changed from singular to repeated" in to_repeated.message
    assert "packed repeated numbers cannot be read as a singular field" in to_repeated.message


def test_fields_that_could_be_set_together_moved_into_a_oneof(versions: Compare) -> None:
    change = only(
        versions(
            "message M { string card = 1; string iban = 2; }",
            "message M { oneof pay { string card = 1; string iban = 2; } }",
        )
    )
    assert (change.path, change.rule) == ("M.iban", "oneof-narrowed")
    assert "'card' (1) and 'iban' (2) are now in oneof 'pay'" in change.message
    merged = only(
        versions(
            "message M { oneof a { string x = 1; } oneof b { string y = 2; } }",
            "message M { oneof a { string x = 1; string y = 2; } }",
        )
    )
    assert merged.rule == "oneof-narrowed"


def test_required_fields_in_proto2(tmp_path: Path) -> None:
    old = tmp_path / "a" / "row.proto"
    new = tmp_path / "b" / "row.proto"
    for path, body in (
        (old, "message Row { optional int32 a = 1; }"),
        (new, "message Row { required int32 a = 1; required int32 b = 2; }"),
    ):
        path.parent.mkdir()
        path.write_text(f'syntax = "proto2";\n{body}\n')
    assert rules(check_compatibility(old, new)) == [
        ("Row.a", "required-added"),
        ("Row.b", "required-added"),
    ]


def test_removed_and_renamed_messages(versions: Compare) -> None:
    old = "message Order { int64 id = 1; } message Customer { string name = 1; }"
    renamed = only(
        versions(old, "message Order { int64 id = 1; } message Client { string name = 1; }")
    )
    assert (renamed.path, renamed.rule) == ("Customer", "message-removed")
    assert renamed.message.startswith("message Customer was removed (renamed to Client?): ")
    removed = only(versions(old, "message Order { int64 id = 1; }"))
    assert removed.message.startswith("message Customer was removed: ")
    nested = versions(
        "message Order { message Line { int32 n = 1; } Line line = 1; }",
        "message Order { message Row { int32 n = 1; } Row line = 1; }",
    )
    assert rules(nested) == [("Order.line", "type-changed"), ("Order.Line", "message-removed")]


def test_enum_rules(versions: Compare) -> None:
    old = "enum Status { UNKNOWN = 0; PAID = 1; SHIPPED = 2; LOST = 3; } enum Gone { G = 0; }"
    new = "enum Status { UNKNOWN = 0; PAID = 5; SENT = 2; }"
    changes = versions(old, new)
    assert rules(changes) == [
        ("Status.PAID", "enum-value-renumbered"),
        ("Status.SHIPPED", "enum-value-renamed"),
        ("Status.LOST", "enum-value-removed"),
        ("Gone", "enum-removed"),
    ]
    renumbered, renamed, removed, gone = changes
    assert (
        "changed its number from 1 to 5: old data holding 1 is read as an unknown value"
        in renumbered.message
    )
    assert "renamed from SHIPPED to SENT" in renamed.message
    assert removed.message == (
        "enum value LOST (3) of Status was removed: old records holding LOST or 3 are rejected; "
        'keep it (mark it `[deprecated = true]`), or, if it must go, reserve 3 and "LOST" so '
        "neither is reused"
    )
    assert gone.message.startswith("enum Gone was removed (or renamed)")
    reserved = versions("enum S { Z = 0; A = 1; }", 'enum S { Z = 0; reserved 1; reserved "A"; }')
    assert rules(reserved) == [("S.A", "enum-value-removed")]
    assert "so neither is reused" not in reserved[0].message
    reused = versions(
        'enum S { Z = 0; reserved 1 to 3; reserved "OLD"; }', "enum S { Z = 0; NEW = 2; OLD = 7; }"
    )
    assert rules(reused) == [("S.NEW", "reserved-reused"), ("S.OLD", "reserved-reused")]


def test_a_package_change(versions: Compare) -> None:
    change = only(versions(ORDER, ORDER, old_package="shop.v1", new_package="shop.v2"))
    assert (change.path, change.rule) == ("", "package-changed")
    assert "from 'shop.v1' to 'shop.v2'" in change.message


def test_contracts_and_message_specs_compare_whole_files(tmp_path: Path) -> None:
    old = proto(
        tmp_path,
        "v1/order.proto",
        "message Order { int64 id = 1; } message Item { string sku = 1; }",
    )
    new = proto(
        tmp_path,
        "v2/order.proto",
        "message Order { int64 id = 1; } message Item { int32 sku = 1; }",
    )
    expected = [("Item.sku", "type-changed")]
    assert rules(check_compatibility(f"{old}:Order", f"{new}:Order")) == expected
    assert (
        rules(
            check_compatibility(
                ProtobufContract(old, message="Order"), ProtobufContract(new, message="Order")
            )
        )
        == expected
    )
    assert rules(check_compatibility(compile_proto(old), compile_proto(new))) == expected
    change = check_compatibility(
        ProtobufContract(old, message="Order"), ProtobufContract(new, message="Order")
    )[0]
    assert change.contract == "order.proto:Order"


def test_versions_in_a_folder(tmp_path: Path) -> None:
    proto(tmp_path, "order.v1.proto", ORDER)
    proto(tmp_path, "order.v2.proto", ORDER.replace("}", "string note = 4; }"))
    proto(tmp_path, "order.v10.proto", "message Order { int64 id = 1; string note = 4; }")
    proto(tmp_path, "common.proto", "message Money { int64 cents = 1; }")
    found = find_contract_versions(tmp_path)
    assert [(f.version, f.kind) for f in found["order"]] == [
        ("1", "protobuf"),
        ("2", "protobuf"),
        ("10", "protobuf"),
    ]
    assert [f.version for f in found["common"]] == [None]
    changes = check_directory(tmp_path)
    assert [(c.contract, c.old_version, c.new_version, c.path, c.rule) for c in changes] == [
        ("order", "2", "10", "Order.email", "field-removed"),
        ("order", "2", "10", "Order.tags", "field-removed"),
    ]
    assert str(changes[0]).startswith(
        "order 2 -> 10: field 'email' (2) was removed without reserving"
    )


def test_kind_changed_between_avro_and_protobuf(tmp_path: Path) -> None:
    avro = {"type": "record", "name": "Order", "fields": [{"name": "id", "type": "long"}]}
    (tmp_path / "order.v1.avsc").write_text(json.dumps(avro))
    proto(tmp_path, "order.v2.proto", "message Order { int64 id = 1; }")
    assert rules(check_directory(tmp_path)) == [("", "kind-changed")]
    assert "from avro to protobuf" in check_directory(tmp_path)[0].message


def test_contracts_check_command(tmp_path: Path) -> None:
    contracts = tmp_path / "contracts"
    proto(contracts, "order.v1.proto", ORDER)
    proto(contracts, "order.v2.proto", ORDER.replace("}", "string note = 4; }"))
    runner = CliRunner()
    result = runner.invoke(app, ["contracts", "check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "backward compatible" in result.output
    proto(contracts, "order.v3.proto", "message Order { int64 id = 1; string note = 4; }")
    result = runner.invoke(app, ["contracts", "check", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "2 breaking change(s)" in result.output
    assert "field-removed" in result.output
    assert 'reserve 2 and "email"' in " ".join(result.output.split())
    (contracts / "broken.proto").write_text('syntax = "proto3";\nmessage B { Nope n = 1; }\n')
    result = runner.invoke(app, ["contracts", "check", str(tmp_path)])
    assert result.exit_code == 1
    assert '"Nope" is not defined' in result.output
