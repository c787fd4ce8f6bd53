"""Protobuf's compatibility rules between two versions of a ``.proto`` file.

:func:`compare_proto` compares the messages and enums that the two files define (not those
they import), matched by name relative to the file's package, and returns each breaking
change as ``(path, rule, message)``; :mod:`conveyor.contracts._compat` turns them into
:class:`~conveyor.contracts.BreakingChange` values (its documentation lists the rules).
Paths name the type: ``Order.email`` (a field), ``Order.Status.PAID`` (an enum value),
``Order`` (a message).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import TYPE_CHECKING

from conveyor.contracts._protobuf import (
    TYPE_ENUM,
    TYPE_GROUP,
    TYPE_MESSAGE,
    TYPE_NAMES,
    ProtoFile,
    packable,
)

if TYPE_CHECKING:
    from google.protobuf.descriptor_pb2 import (
        DescriptorProto,
        EnumDescriptorProto,
        FieldDescriptorProto,
        FileDescriptorProto,
    )

__all__ = ["compare_proto"]

Change = tuple[str, str, str]

_LABEL_REQUIRED, _LABEL_REPEATED = 2, 3
# Scalar types whose values are read unchanged (or truncated as in C++) as one another.
_WIRE_GROUPS = (
    frozenset({"int32", "uint32", "int64", "uint64", "bool"}),
    frozenset({"sint32", "sint64"}),
    frozenset({"fixed32", "sfixed32"}),
    frozenset({"fixed64", "sfixed64"}),
    frozenset({"string", "bytes"}),  # as long as the bytes are valid UTF-8
)


def compare_proto(old: ProtoFile, new: ProtoFile) -> list[Change]:
    """The changes from ``old`` to ``new`` that break readers of data written with ``old``."""
    return _ProtoCompat(_Types(old.file_proto()), _Types(new.file_proto())).run()


class _Types:
    """The messages and enums one file defines, by name relative to its package."""

    def __init__(self, file: FileDescriptorProto) -> None:
        self.package = file.package
        self.messages: dict[str, DescriptorProto] = {}
        self.enums: dict[str, EnumDescriptorProto] = {}
        self.map_entries: dict[str, DescriptorProto] = {}
        for enum in file.enum_type:
            self.enums[enum.name] = enum
        self._walk(file.message_type, "")

    def _walk(self, messages: Iterable[DescriptorProto], prefix: str) -> None:
        for message in messages:
            name = f"{prefix}{message.name}"
            if message.options.map_entry:
                self.map_entries[self._full(name)] = message
                continue
            self.messages[name] = message
            for enum in message.enum_type:
                self.enums[f"{name}.{enum.name}"] = enum
            self._walk(message.nested_type, f"{name}.")

    def _full(self, name: str) -> str:
        return f".{self.package}.{name}" if self.package else f".{name}"

    def relative(self, type_name: str) -> str:
        """``.shop.Order.Item`` -> ``Order.Item`` in package ``shop``; others keep their
        full name (``google.protobuf.Timestamp``)."""
        name = type_name.lstrip(".")
        prefix = f"{self.package}." if self.package else ""
        return name[len(prefix) :] if prefix and name.startswith(prefix) else name

    def entry(self, field: FieldDescriptorProto) -> DescriptorProto | None:
        """The map entry of a ``map<K, V>`` field, else ``None``."""
        if field.label != _LABEL_REPEATED or field.type != TYPE_MESSAGE:
            return None
        return self.map_entries.get(field.type_name)

    def describe(self, field: FieldDescriptorProto) -> str:
        entry = self.entry(field)
        if entry is not None:
            key, value = sorted(entry.field, key=lambda item: item.number)
            return f"map<{self.describe(key)}, {self.describe(value)}>"
        if field.type in (TYPE_MESSAGE, TYPE_GROUP, TYPE_ENUM):
            return self.relative(field.type_name)
        return TYPE_NAMES.get(field.type, str(field.type))


class _ProtoCompat:
    def __init__(self, old: _Types, new: _Types) -> None:
        self.old, self.new = old, new

    def run(self) -> list[Change]:
        changes: list[Change] = []
        if self.old.package != self.new.package:
            changes.append(
                (
                    "",
                    "package-changed",
                    f"the package changed from {self.old.package or '(none)'!r} to "
                    f"{self.new.package or '(none)'!r}: every message's full name changes, "
                    "and with it Any type URLs, JSON '@type' values and generated code; keep "
                    "the package, or publish the new package as a new contract",
                )
            )
        added = [name for name in self.new.messages if name not in self.old.messages]
        for name, old in self.old.messages.items():
            new = self.new.messages.get(name)
            if new is None:
                changes.append(self._message_removed(name, old, added))
            else:
                changes.extend(self._message(name, old, new))
        for name, old_enum in self.old.enums.items():
            new_enum = self.new.enums.get(name)
            if new_enum is None:
                changes.append(
                    (
                        name,
                        "enum-removed",
                        f"enum {name} was removed (or renamed): old data and fields typed "
                        f"{name} can no longer be read; keep the enum",
                    )
                )
            else:
                changes.extend(self._enum(name, old_enum, new_enum))
        return changes

    # messages

    def _message_removed(self, name: str, old: DescriptorProto, added: list[str]) -> Change:
        numbers = sorted(field.number for field in old.field)
        renamed = [
            other
            for other in added
            if sorted(field.number for field in self.new.messages[other].field) == numbers
        ]
        how = f" (renamed to {renamed[0]}?)" if len(renamed) == 1 else ""
        return (
            name,
            "message-removed",
            f"message {name} was removed{how}: records of it, fields typed {name} and Any "
            "values naming it can no longer be read, and renaming changes the full name that "
            "JSON and type URLs use; keep the message (mark it `option deprecated = true;` "
            "when it is no longer used)",
        )

    def _message(self, name: str, old: DescriptorProto, new: DescriptorProto) -> list[Change]:
        changes: list[Change] = []
        old_fields = {field.number: field for field in old.field}
        new_fields = {field.number: field for field in new.field}
        new_by_name = {field.name: field for field in new.field}
        old_names = {field.name for field in old.field}
        new_ranges = [(item.start, item.end) for item in new.reserved_range]  # end exclusive
        old_ranges = [(item.start, item.end) for item in old.reserved_range]
        for number, before in old_fields.items():
            after = new_fields.get(number)
            if after is None:
                moved = new_by_name.get(before.name)
                if moved is not None:
                    changes.append(self._renumbered(name, before, moved))
                else:
                    changes.extend(self._removed(name, before, new_ranges, new.reserved_name))
                continue
            changes.extend(self._field(name, before, after))
        for number, after in new_fields.items():
            if number in old_fields:
                continue
            here = f"{name}.{after.name}"
            if _reserved(number, old_ranges):
                changes.append(
                    (
                        here,
                        "reserved-reused",
                        f"field '{after.name}' uses number {number}, which the old version "
                        f"reserved: data written when {number} was another field would be "
                        f"read as '{after.name}'; give '{after.name}' an unused number and "
                        f"keep {number} reserved",
                    )
                )
            elif after.name in old.reserved_name and after.name not in old_names:
                changes.append(
                    (
                        here,
                        "reserved-reused",
                        f"field '{after.name}' ({number}) uses the name '{after.name}', which "
                        "the old version reserved: records and JSON carrying the retired "
                        f"'{after.name}' would be read as the new field; pick another name and "
                        f'keep "{after.name}" reserved',
                    )
                )
            if after.label == _LABEL_REQUIRED:
                changes.append(
                    (
                        here,
                        "required-added",
                        f"field '{after.name}' ({number}) was added as required: old data "
                        "lacks it; add it as optional",
                    )
                )
        changes.extend(self._oneofs(name, old, new))
        return changes

    def _renumbered(
        self, name: str, before: FieldDescriptorProto, after: FieldDescriptorProto
    ) -> Change:
        return (
            f"{name}.{before.name}",
            "field-renumbered",
            f"field '{before.name}' changed its number from {before.number} to "
            f"{after.number}: data written with the old version carries it as number "
            f"{before.number}, which the new version does not read as '{before.name}'; keep "
            f"number {before.number}",
        )

    def _removed(
        self,
        name: str,
        before: FieldDescriptorProto,
        ranges: list[tuple[int, int]],
        names: Iterable[str],
    ) -> list[Change]:
        number_free = not _reserved(before.number, ranges)
        name_free = before.name not in set(names)
        if not number_free and not name_free:
            return []
        what = (
            "its number and name"
            if number_free and name_free
            else ("its number" if number_free else "its name")
        )
        parts: list[str] = []
        statements: list[str] = []
        if number_free:
            parts.append(str(before.number))
            statements.append(f"reserved {before.number};")
        if name_free:
            parts.append(f'"{before.name}"')
            statements.append(f'reserved "{before.name}";')
        wanted = " and ".join(parts)
        pronoun = "them" if len(parts) == 2 else "it"
        return [
            (
                f"{name}.{before.name}",
                "field-removed",
                f"field '{before.name}' ({before.number}) was removed without reserving {what}: "
                f"a later version could reuse {pronoun} and misread old data; reserve "
                f"{wanted} (add `{' '.join(statements)}` to message {name})",
            )
        ]

    def _field(
        self, name: str, before: FieldDescriptorProto, after: FieldDescriptorProto
    ) -> list[Change]:
        changes: list[Change] = []
        number, here = before.number, f"{name}.{after.name}"
        retire = f'add a new field with a new number and reserve {number} and "{before.name}"'
        if after.name != before.name:
            changes.append(
                (
                    f"{name}.{before.name}",
                    "field-renamed",
                    f"field {number} was renamed from '{before.name}' to '{after.name}': the "
                    "binary format is unchanged, but records, JSON and text format name "
                    f"fields, so old records carrying '{before.name}' are rejected; keep the "
                    f"name '{before.name}', or add '{after.name}' as a new field and reserve "
                    f'{number} and "{before.name}"',
                )
            )
        old_type, new_type = self.old.describe(before), self.new.describe(after)
        if not self._compatible(before, after):
            changes.append(
                (
                    here,
                    "type-changed",
                    f"field '{after.name}' ({number}) changed type from {old_type} to "
                    f"{new_type}, which is not wire-compatible: old data cannot be read as "
                    f"the new type; keep {old_type}, or {retire}",
                )
            )
        elif self.old.entry(before) is None and self.new.entry(after) is None:
            was_repeated = before.label == _LABEL_REPEATED
            if was_repeated != (after.label == _LABEL_REPEATED):
                wire = (
                    "; on the wire, packed repeated numbers cannot be read as a singular field"
                    if packable(before.type) or packable(after.type)
                    else " (the binary format tolerates this for string, bytes and message "
                    "fields; records do not)"
                )
                was, now = ("repeated", "singular") if was_repeated else ("singular", "repeated")
                changes.append(
                    (
                        here,
                        "cardinality-changed",
                        f"field '{after.name}' ({number}) changed from {was} to {now}: records "
                        f"hold a list for a repeated field and one value otherwise{wire}; "
                        f"{retire}",
                    )
                )
        if after.label == _LABEL_REQUIRED and before.label != _LABEL_REQUIRED:
            changes.append(
                (
                    here,
                    "required-added",
                    f"field '{after.name}' ({number}) became required: old data may lack it; "
                    "keep it optional",
                )
            )
        return changes

    def _compatible(self, before: FieldDescriptorProto, after: FieldDescriptorProto) -> bool:
        old_entry, new_entry = self.old.entry(before), self.new.entry(after)
        if (old_entry is None) != (new_entry is None):
            return False
        if old_entry is not None and new_entry is not None:
            old_key, old_value = sorted(old_entry.field, key=lambda item: item.number)
            new_key, new_value = sorted(new_entry.field, key=lambda item: item.number)
            return self._compatible(old_key, new_key) and self._compatible(old_value, new_value)
        named = (TYPE_MESSAGE, TYPE_GROUP, TYPE_ENUM)
        if before.type in named or after.type in named:
            return before.type == after.type and self.old.relative(
                before.type_name
            ) == self.new.relative(after.type_name)
        old_type, new_type = TYPE_NAMES.get(before.type), TYPE_NAMES.get(after.type)
        return old_type == new_type or any(
            old_type in group and new_type in group for group in _WIRE_GROUPS
        )

    def _oneofs(self, name: str, old: DescriptorProto, new: DescriptorProto) -> list[Change]:
        old_group = {field.number: _oneof(old, field) for field in old.field}
        members: dict[str, list[FieldDescriptorProto]] = {}
        for field in new.field:
            group = _oneof(new, field)
            if group is not None:
                members.setdefault(group, []).append(field)
        changes: list[Change] = []
        for group, fields in members.items():
            existing = [field for field in fields if field.number in old_group]
            together = [
                (a, b)
                for a, b in itertools.combinations(existing, 2)
                if old_group[a.number] is None or old_group[a.number] != old_group[b.number]
            ]
            if together:
                a, b = together[0]
                changes.append(
                    (
                        f"{name}.{b.name}",
                        "oneof-narrowed",
                        f"fields '{a.name}' ({a.number}) and '{b.name}' ({b.number}) are now in "
                        f"oneof '{group}', but the old version let both be set: old records "
                        "that set both are rejected (and a reader keeps only the last); keep "
                        "them out of the oneof",
                    )
                )
        return changes

    # enums

    def _enum(self, name: str, old: EnumDescriptorProto, new: EnumDescriptorProto) -> list[Change]:
        changes: list[Change] = []
        pairs = {(value.name, value.number) for value in new.value}
        by_name = {value.name: value.number for value in new.value}
        by_number: dict[int, str] = {}
        for value in new.value:
            by_number.setdefault(value.number, value.name)
        ranges = [(item.start, item.end + 1) for item in new.reserved_range]  # end inclusive
        for value in old.value:
            if (value.name, value.number) in pairs:
                continue
            here = f"{name}.{value.name}"
            if value.name in by_name:
                now = by_number.get(value.number)
                read_as = f"read as {now}" if now is not None else "read as an unknown value"
                changes.append(
                    (
                        here,
                        "enum-value-renumbered",
                        f"enum value {value.name} of {name} changed its number from "
                        f"{value.number} to {by_name[value.name]}: old data holding "
                        f"{value.number} is {read_as}; keep {value.name} = {value.number}",
                    )
                )
            elif value.number in by_number:
                changes.append(
                    (
                        here,
                        "enum-value-renamed",
                        f"enum value {value.number} of {name} was renamed from {value.name} to "
                        f"{by_number[value.number]}: records and JSON name enum values, so old "
                        f"records holding '{value.name}' are rejected; keep {value.name} (with "
                        "`option allow_alias = true;` both names can stay)",
                    )
                )
            else:
                reserved = _reserved(value.number, ranges) and value.name in new.reserved_name
                advice = (
                    ""
                    if reserved
                    else f', or, if it must go, reserve {value.number} and "{value.name}" so '
                    "neither is reused"
                )
                changes.append(
                    (
                        here,
                        "enum-value-removed",
                        f"enum value {value.name} ({value.number}) of {name} was removed: old "
                        f"records holding {value.name} or {value.number} are rejected; keep it "
                        f"(mark it `[deprecated = true]`){advice}",
                    )
                )
        old_ranges = [(item.start, item.end + 1) for item in old.reserved_range]
        old_names = {value.name for value in old.value}
        old_numbers = {value.number for value in old.value}
        for value in new.value:
            if value.number not in old_numbers and _reserved(value.number, old_ranges):
                changes.append(
                    (
                        f"{name}.{value.name}",
                        "reserved-reused",
                        f"enum value {value.name} of {name} uses number {value.number}, which "
                        "the old version reserved: old data holding it meant another value; "
                        f"give {value.name} an unused number",
                    )
                )
            elif value.name not in old_names and value.name in old.reserved_name:
                changes.append(
                    (
                        f"{name}.{value.name}",
                        "reserved-reused",
                        f"enum value {value.name} of {name} uses a name the old version "
                        "reserved: old records holding it meant another value; pick another "
                        "name",
                    )
                )
        return changes


def _oneof(message: DescriptorProto, field: FieldDescriptorProto) -> str | None:
    """The real (not proto3 ``optional``) oneof a field belongs to."""
    if not field.HasField("oneof_index") or field.proto3_optional:
        return None
    return message.oneof_decl[field.oneof_index].name


def _reserved(number: int, ranges: Iterable[tuple[int, int]]) -> bool:
    return any(start <= number < end for start, end in ranges)
