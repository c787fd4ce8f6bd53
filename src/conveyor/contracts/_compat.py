"""Contract versions and BACKWARD compatibility between them.

A contract file carries a version, in its name (``order.v1.json``, ``order_v2.avsc``,
``order.1.2.0.json``) or in its schema (top-level ``x-version``, else ``version``, as
:class:`~conveyor.contracts.Contract` reads it). :func:`check_directory` groups the files of
a folder by contract, orders each contract's versions and checks every consecutive pair with
:func:`check_compatibility`; each problem is a :class:`BreakingChange` naming the field.

**BACKWARD** (Confluent Schema Registry's word): a reader using the *new* schema can read
every record written with the *old* one. Field paths are dotted as in contract violations,
with ``*`` for "any list item / map value" (``items.*.price``) and ``""`` for the record.

Avro (the Avro specification's schema resolution, reader = new, writer = old):

=========================  ================================================================
rule                       breaks when, and why
=========================  ================================================================
``default-missing``        the new schema adds a field without a ``default``: old records
                           have no value for it. Adding a field *with* a default, and
                           removing a field, are compatible (the reader ignores it).
``default-invalid``        an added field's default does not fit its type (for a union,
                           its *first* branch, as the spec says): the reader cannot use it.
``type-changed``           a value written as the old type cannot be read as the new one.
                           Allowed promotions: int -> long -> float -> double (int and
                           long to any wider one), string <-> bytes. A union is readable
                           when *each* old branch matches a new branch (so adding a union
                           branch is fine, removing one, e.g. ``null``, breaks).
``name-changed``           a record, enum or fixed changed its name (unqualified names are
                           compared; namespace changes and ``aliases`` naming the old full
                           name are accepted).
``enum-symbol-removed``    an old symbol is gone and the new enum has no ``default``.
``fixed-size-changed``     a ``fixed`` changed its size.
=========================  ================================================================

Logical types are not compared (the spec resolves the underlying types).

JSON Schema (drafts 4-7 subset; a simplified form of Confluent's JSON Schema rules). A
record valid under the old schema must stay valid under the new one, so the new schema
may only *widen*:

==================================  =======================================================
rule                                breaks when, and why
==================================  =======================================================
``required-added``                  a property becomes required: old records may lack it
                                    (defaults do not help: contracts never fill them in).
``type-changed``                    the new ``type`` does not cover an old type
                                    (``integer`` -> ``number`` widens, the reverse, or
                                    dropping ``null``/a type of a list or ``anyOf``,
                                    narrows). An old ``enum``/``const`` counts as the types
                                    of its values. ``false`` as a new schema accepts nothing.
``enum-value-removed``              an old ``enum``/``const`` value is not in the new enum.
``enum-added``                      the new schema restricts a field to an ``enum`` the old
                                    one did not have.
``field-removed``                   a property is removed and the new schema forbids
                                    additional properties: old records carrying it fail.
``additional-properties-narrowed``  ``additionalProperties`` goes from open (absent or
                                    ``true``) to ``false`` or a schema: old records with
                                    undeclared keys fail.
``property-added-to-open-model``    a constrained property is added where the old schema
                                    said ``additionalProperties: true`` explicitly: old
                                    records could carry that key with any value.
``constraint-tightened``            ``minimum``/``maximum``/``exclusive*``/``minLength``/
                                    ``maxLength``/``minItems``/``maxItems``/
                                    ``minProperties``/``maxProperties`` tighten or appear;
                                    ``multipleOf``, ``pattern``, ``format`` appear or
                                    change in a way not implied by the old one;
                                    ``uniqueItems`` appears. Each keyword is judged on its
                                    own, so the check errs on the side of "breaking".
==================================  =======================================================

Properties present in both versions, ``items`` (a schema, or draft-4..7 tuple form with
``additionalItems``), ``additionalProperties`` schemas, local ``$ref`` (``#/definitions``,
``#/$defs``) and ``allOf`` (merged) are followed; ``anyOf``/``oneOf`` are read as unions
(oneOf's exclusivity is ignored). ``patternProperties``, ``dependencies``, ``not`` and
``if``/``then``/``else`` are not compared.

One deliberate departure from Confluent: adding an optional property to an object whose old
schema does not mention ``additionalProperties`` is *compatible*. Confluent calls it
breaking (an old record might carry that key with another type), which flags nearly every
schema evolution, Pydantic models included; here a schema that does not declare
``additionalProperties`` is taken to describe all the keys its writers produce. Say
``additionalProperties: true`` to get Confluent's strict reading for that object.

Pydantic models (a :class:`~conveyor.contracts.TypeContract`, or a type) are compared as
JSON Schema through ``model_json_schema()`` (any other type through pydantic's
``TypeAdapter(...).json_schema()``).

Protobuf (``.proto`` files, compiled with grpcio-tools' protoc; protobuf's rules for
updating a message type, with Conveyor's records in mind: records are dicts keyed by field
*name*, so a name matters as much as a number). Every message and enum the file defines is
compared with the one of the same name (relative to the package) in the other version;
paths name the type (``Order.email``, ``Order.Status.PAID``, ``Order``):

=========================  ================================================================
rule                       breaks when, and why
=========================  ================================================================
``field-removed``          a field is gone and its number or name is not ``reserved``: a
                           later version could reuse them and misread old data (the
                           message says what to add: ``reserved 3; reserved "email";``).
                           A field removed with both reserved is compatible (records still
                           carrying a reserved name or number pass the contract).
``reserved-reused``        a new field (or enum value) takes a number or name the old
                           version reserved.
``type-changed``           a field keeps its number but changes type outside protobuf's
                           wire-compatible groups: int32/uint32/int64/uint64/bool,
                           sint32/sint64, fixed32/sfixed32, fixed64/sfixed64, string/bytes
                           (for valid UTF-8). Messages and enums must keep their name;
                           ``map<K, V>`` compares keys and values by the same groups; map
                           against non-map breaks.
``field-renamed``          a number keeps its type but changes its name: binary data still
                           reads, but records, JSON and text format use the name.
``field-renumbered``       a name moves to another number: old data carries the old one.
``cardinality-changed``    singular <-> repeated: the record's shape changes (a value or a
                           list), and packed repeated numbers do not read as singular.
``required-added``         a proto2 ``required`` field is added, or an existing one becomes
                           required.
``oneof-narrowed``         fields that could be set together are moved into one ``oneof``.
``message-removed``        a message is gone or renamed (its full name is in JSON, Any
                           type URLs and generated code).
``enum-removed``           an enum is gone or renamed.
``enum-value-removed``     an enum value is gone (records holding its name or number are
                           rejected); reserving it does not help old records.
``enum-value-renumbered``  an enum value keeps its name under another number.
``enum-value-renamed``     an enum number keeps its value under another name (records
                           name values).
``package-changed``        the package changed: every full name changes.
=========================  ================================================================

Adding fields, messages, enum values and reservations, and moving a single field into a
new ``oneof``, are compatible. A ``.proto`` file's version is in its name only
(``order.v2.proto``).

>>> old = {"title": "order", "type": "object", "properties": {"id": {"type": "integer"}}}
>>> new = {"title": "order", "type": "object", "required": ["id", "at"],
...        "properties": {"id": {"type": "string"}, "at": {"type": "string"}}}
>>> for change in check_compatibility(old, new):
...     print(change.rule, change.path)
type-changed id
required-added at
required-added id
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, cast

from conveyor.contracts._avro import AvroContract
from conveyor.contracts._base import Contract, is_path, load_json, schema_version
from conveyor.contracts._jsonschema import JsonSchemaContract
from conveyor.contracts._protobuf import (
    ProtobufContract,
    ProtoFile,
    compile_proto,
    is_proto_spec,
    split_proto_spec,
)
from conveyor.contracts._protocompat import compare_proto
from conveyor.contracts._spec import contract_for
from conveyor.contracts._typed import TypeContract
from conveyor.errors import PipelineDefinitionError

__all__ = [
    "BreakingChange",
    "ContractFile",
    "check_compatibility",
    "check_directory",
    "find_contract_versions",
]

Kind = Literal["json-schema", "avro", "protobuf"]
_SUFFIXES: dict[str, Kind] = {".json": "json-schema", ".avsc": "avro", ".proto": "protobuf"}
# ``order.v1``, ``order-v2``, ``order_V10``, ``order.1.2.0``
_VERSION_IN_NAME = (
    re.compile(r"^(?P<name>.+?)[._-][vV](?P<version>\d+(?:\.\d+)*)$"),
    re.compile(r"^(?P<name>.+?)\.(?P<version>\d+(?:\.\d+)*)$"),
)
_MAX_DEPTH = 64


@dataclass(frozen=True)
class BreakingChange:
    """One way a new contract version breaks readers of the previous one.

    >>> change = BreakingChange("order", "address.zip", "type-changed",
    ...     "field 'address.zip': type changed from string to integer")
    >>> print(change)
    order: field 'address.zip': type changed from string to integer [type-changed]

    Attributes:
        contract: the contract's name.
        path: the dotted field path (``*`` for any list item or map value), ``""`` for
            the record as a whole.
        rule: a short rule id (``"field-removed"``, ``"type-changed"`` … see
            :mod:`conveyor.contracts._compat`).
        message: what changed, naming the field and the old and new form.
        old_version: the old version, when known (set by :func:`check_directory`).
        new_version: the new version, when known.
    """

    contract: str
    path: str
    rule: str
    message: str
    old_version: str | None = None
    new_version: str | None = None

    def __str__(self) -> str:
        versions = ""
        if self.old_version is not None or self.new_version is not None:
            versions = f" {self.old_version or '?'} -> {self.new_version or '?'}"
        return f"{self.contract}{versions}: {self.message} [{self.rule}]"


@dataclass(frozen=True)
class ContractFile:
    """A contract schema file found by :func:`find_contract_versions`.

    Attributes:
        path: the file.
        name: the contract's name: the file name without version and extension
            (``order`` for ``order.v2.avsc`` and for ``v2/order.json``).
        version: the version from the file name, else from the schema; ``None`` when
            neither has one.
        kind: ``"json-schema"`` (``.json``), ``"avro"`` (``.avsc``) or ``"protobuf"``
            (``.proto``).
        declared_version: the version the schema itself declares, if any (a ``.proto``
            file declares none: its version is in its name).
        schema: the loaded schema, or the compiled :class:`~conveyor.contracts.ProtoFile`
            (not compared).
    """

    path: Path
    name: str
    version: str | None
    kind: Kind
    declared_version: str | None = None
    schema: Any = field(default=None, compare=False, repr=False)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key that orders versions numerically: ``2 < 10``, ``1.2.0 < 1.10``.

    A leading ``v`` is ignored, and so are trailing zero parts (``1.0`` == ``1``); parts
    that are not numbers sort after numbers, alphabetically.

    >>> sorted(["v10", "v2", "1.10.0", "1.2"], key=version_key)
    ['1.2', '1.10.0', 'v2', 'v10']
    """
    text = version.strip()
    if text[:1] in ("v", "V") and text[1:2].isdigit():
        text = text[1:]
    parts: list[tuple[int, int | str]] = [
        (0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-_+]", text)
    ]
    while len(parts) > 1 and parts[-1] == (0, 0):
        parts.pop()
    return tuple(parts)


def find_contract_versions(directory: Path) -> dict[str, list[ContractFile]]:
    """The ``.json``, ``.avsc`` and ``.proto`` files under ``directory`` (recursively), by
    contract name, each contract's files ordered by version (numerically; unversioned files
    last).

    The version comes from the file name (``order.v2.json``, ``order-v2.json``,
    ``order_v2.json``, ``order.1.2.0.json``, ``order.v2.proto``), else from the schema's
    top-level ``x-version`` or ``version`` (JSON Schema and Avro; a ``.proto`` file's version
    is only in its name). The contract name is the file name without version and extension, so
    ``v1/order.json`` and ``v2/order.json`` (versions in content) are one contract.
    Hidden files and folders are skipped.

    >>> import json, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ("order.v10.json", "order.v2.json", "user.json"):
    ...     _ = (folder / name).write_text(json.dumps({"type": "object", "version": 1}))
    >>> {name: [f.version for f in files] for name, files in
    ...  find_contract_versions(folder).items()}
    {'order': ['2', '10'], 'user': ['1']}

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        PipelineDefinitionError: a file is not JSON (or a ``.proto`` file does not compile),
            or its version is not a string or number.
        ImportError: a ``.proto`` file is found and grpcio-tools is not installed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"contracts folder not found: {directory}")
    found: dict[str, list[ContractFile]] = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts):
            continue
        kind = _SUFFIXES.get(path.suffix.lower())
        if kind is None or not path.is_file():
            continue
        file = _contract_file(path, kind)
        found.setdefault(file.name, []).append(file)
    return {name: sorted(files, key=_file_order) for name, files in sorted(found.items())}


def check_directory(directory: Path) -> list[BreakingChange]:
    """Check every contract under ``directory``: each version against the one before it.

    Besides the breaking changes of :func:`check_compatibility` (with ``old_version`` and
    ``new_version`` set), the versions themselves are checked:

    - ``version-duplicate``: two files of one contract have the same version;
    - ``version-missing``: a contract has several files and one of them has no version
      (it cannot be placed, so it is not compared);
    - ``version-mismatch``: the file name and the schema declare different versions;
    - ``kind-changed``: consecutive versions are of different kinds (JSON Schema, Avro,
      Protobuf), which cannot be checked against each other.

    An empty list means every contract evolved compatibly.

    >>> import json, tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> def write(name, fields):
    ...     schema = {"type": "record", "name": "Order", "fields": fields}
    ...     _ = (folder / name).write_text(json.dumps(schema))
    >>> write("order.v1.avsc", [{"name": "id", "type": "int"}])
    >>> write("order.v2.avsc", [{"name": "id", "type": "long"},
    ...                         {"name": "note", "type": "string"}])
    >>> for change in check_directory(folder):
    ...     print(change)
    order 1 -> 2: field 'note' was added without a default: records written with the old \
schema have no value for it [default-missing]

    Raises:
        FileNotFoundError: ``directory`` does not exist.
        PipelineDefinitionError: a file is not a valid schema.
        ImportError: an ``.avsc`` file is found and fastavro is not installed, or a
            ``.proto`` file and grpcio-tools.
    """
    changes: list[BreakingChange] = []
    for name, files in find_contract_versions(Path(directory)).items():
        changes.extend(_check_versions(name, files))
    return changes


def check_compatibility(
    old: object, new: object, *, mode: Literal["backward"] = "backward"
) -> list[BreakingChange]:
    """The changes from ``old`` to ``new`` that break readers using ``new`` on old data.

    ``old`` and ``new`` are each a :class:`~conveyor.contracts.Contract`, a schema dict
    (JSON Schema, or Avro when its ``type`` is ``record``/``enum``/``fixed``), an Avro
    union list, the path of a ``.json``, ``.avsc`` or ``.proto`` file (or a compiled
    :class:`~conveyor.contracts.ProtoFile`), or a type (a Pydantic model is compared through
    ``model_json_schema()``). The changes are named after the new contract. Two kinds
    (say JSON Schema and Avro) cannot be compared: that is one ``kind-changed`` change.
    Protobuf contracts are compared file against file: every message and enum the file
    defines, whichever message the contract checks.

    >>> old = {"type": "record", "name": "User", "fields": [
    ...     {"name": "age", "type": "int"},
    ...     {"name": "role", "type": {"type": "enum", "name": "Role", "symbols": ["A", "B"]}}]}
    >>> new = {"type": "record", "name": "User", "fields": [
    ...     {"name": "age", "type": "long"},
    ...     {"name": "role", "type": {"type": "enum", "name": "Role", "symbols": ["A"]}}]}
    >>> [(c.path, c.rule) for c in check_compatibility(old, new)]
    [('role', 'enum-symbol-removed')]

    Args:
        old: the previous version (the writer's schema).
        new: the new version (the reader's schema).
        mode: only ``"backward"`` (see the module documentation).

    Raises:
        ValueError: an unknown ``mode``.
        PipelineDefinitionError: a spec that is no contract, or a contract kind that has
            no schema to compare.
    """
    if mode != "backward":
        raise ValueError(f"unknown compatibility mode {mode!r}; the only mode is 'backward'")
    old_kind, old_schema, _ = _schema_of(old)
    new_kind, new_schema, name = _schema_of(new)
    return _compare(name, old_kind, old_schema, new_kind, new_schema)


# --- loading -----------------------------------------------------------------------------


def _contract_file(path: Path, kind: Kind) -> ContractFile:
    schema: Any
    if kind == "protobuf":
        schema, declared = compile_proto(path), None
    else:
        schema = load_json(path, "Avro schema" if kind == "avro" else "JSON Schema")
        declared = schema_version(schema, str(path))
    stem = path.name[: -len(path.suffix)]
    for pattern in _VERSION_IN_NAME:
        match = pattern.match(stem)
        if match:
            return ContractFile(path, match["name"], match["version"], kind, declared, schema)
    return ContractFile(path, stem, declared, kind, declared, schema)


def _file_order(file: ContractFile) -> tuple[int, tuple[tuple[int, int | str], ...], str]:
    if file.version is None:
        return (1, (), str(file.path))
    return (0, version_key(file.version), str(file.path))


def _check_versions(name: str, files: list[ContractFile]) -> list[BreakingChange]:
    changes: list[BreakingChange] = []
    versioned = [file for file in files if file.version is not None]
    if len(files) > 1:
        for file in files:
            if file.version is None:
                changes.append(
                    BreakingChange(
                        name,
                        "",
                        "version-missing",
                        f"{file.path} has no version (none in its name, no 'x-version' or "
                        f"'version' in the schema), so it cannot be ordered among the "
                        f"{len(files)} files of contract {name!r}",
                    )
                )
    for file in versioned:
        assert file.version is not None
        declared = file.declared_version
        if declared is not None and version_key(file.version) != version_key(declared):
            changes.append(
                BreakingChange(
                    name,
                    "",
                    "version-mismatch",
                    f"{file.path} is version {file.version} by its name but declares "
                    f"version {file.declared_version}",
                    new_version=file.version,
                )
            )
    for previous, current in itertools.pairwise(versioned):
        assert previous.version is not None
        assert current.version is not None
        if version_key(previous.version) == version_key(current.version):
            changes.append(
                BreakingChange(
                    name,
                    "",
                    "version-duplicate",
                    f"{previous.path} and {current.path} are both version "
                    f"{current.version} of contract {name!r}; give each file its own version",
                    previous.version,
                    current.version,
                )
            )
            continue
        old_kind, old_schema, _ = _schema_of(_load(previous))
        new_kind, new_schema, _ = _schema_of(_load(current))
        for change in _compare(name, old_kind, old_schema, new_kind, new_schema):
            changes.append(
                dataclasses.replace(
                    change, old_version=previous.version, new_version=current.version
                )
            )
    return changes


def _load(file: ContractFile) -> Contract | ProtoFile:
    if file.kind == "protobuf":
        return cast(ProtoFile, file.schema)
    if file.kind == "avro":
        return AvroContract(file.schema, name=file.name)
    return JsonSchemaContract(file.schema, name=file.name)


def _schema_of(spec: object) -> tuple[Kind, Any, str]:
    """(kind, raw schema, name) of whatever :func:`check_compatibility` accepts."""
    if isinstance(spec, ProtoFile):
        return "protobuf", spec, Path(spec.name).name
    if is_proto_spec(spec):  # the whole file, whichever message a contract would check
        path, _ = split_proto_spec(spec)  # type: ignore[arg-type]
        return "protobuf", compile_proto(path), path.name
    if isinstance(spec, list):
        spec = AvroContract(spec)
    elif not isinstance(spec, Contract):
        if is_path(spec):
            spec = Path(spec)  # type: ignore[arg-type]
        spec = contract_for(spec)
    if isinstance(spec, ProtobufContract):
        return "protobuf", spec.proto, spec.name
    if isinstance(spec, AvroContract):
        return "avro", spec.schema, spec.name
    if isinstance(spec, JsonSchemaContract):
        return "json-schema", spec.schema, spec.name
    if isinstance(spec, TypeContract):
        return "json-schema", _type_schema(spec.type), spec.name
    raise PipelineDefinitionError(
        f"cannot check the compatibility of {type(spec).__name__} {spec.name!r}: only JSON "
        "Schema, Avro, Protobuf and type contracts have a schema to compare"
    )


def _type_schema(tp: object) -> dict[str, Any]:
    from pydantic import BaseModel, TypeAdapter

    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp.model_json_schema()
    adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, tp))
    return adapter.json_schema()


def _compare(name: str, old_kind: Kind, old: Any, new_kind: Kind, new: Any) -> list[BreakingChange]:
    if old_kind != new_kind:
        return [
            BreakingChange(
                name,
                "",
                "kind-changed",
                f"the contract changed from {old_kind} to {new_kind}; the two cannot be "
                "checked against each other, so readers of the old version may break",
            )
        ]
    if old_kind == "avro":
        return _dedupe(_AvroCompat(name, old, new).run())
    if old_kind == "protobuf":
        return _dedupe(
            BreakingChange(name, path, rule, message)
            for path, rule, message in compare_proto(old, new)
        )
    return _dedupe(_JsonCompat(name, old, new).run())


def _dedupe(changes: Iterable[BreakingChange]) -> list[BreakingChange]:
    return list(dict.fromkeys(changes))


def _field(path: tuple[str, ...]) -> str:
    return f"field {'.'.join(path)!r}" if path else "the record"


def _show(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# --- Avro ---------------------------------------------------------------------------------

_AVRO_PRIMITIVES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_AVRO_NAMED = frozenset({"record", "error", "enum", "fixed"})
_PROMOTIONS = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


class _AvroNames:
    """One Avro schema with its named types by full name, references made full names."""

    def __init__(self, schema: Any) -> None:
        self.named: dict[str, dict[str, Any]] = {}
        self.root = self._walk(schema, "")

    def _walk(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, str):
            if schema in _AVRO_PRIMITIVES:
                return schema
            return schema if "." in schema or not namespace else self._ref(schema, namespace)
        if isinstance(schema, list):
            return [self._walk(branch, namespace) for branch in schema]
        if not isinstance(schema, Mapping):
            raise PipelineDefinitionError(f"not an Avro schema: {_show(schema)}")
        kind = schema.get("type")
        if isinstance(kind, list | Mapping):
            return self._walk(kind, namespace)
        if kind in _AVRO_NAMED:
            return self._named(schema, namespace)
        if kind == "array":
            return {"type": "array", "items": self._walk(schema.get("items"), namespace)}
        if kind == "map":
            return {"type": "map", "values": self._walk(schema.get("values"), namespace)}
        return self._walk(kind, namespace)  # a primitive, perhaps with a logicalType

    def _ref(self, name: str, namespace: str) -> str:
        full = f"{namespace}.{name}"
        return full if full in self.named else name

    def _named(self, schema: Mapping[str, Any], namespace: str) -> str:
        short = str(schema["name"])
        if "." in short:
            full = short
        else:
            ns = schema.get("namespace", namespace) or ""
            full = f"{ns}.{short}" if ns else short
        inner = full.rpartition(".")[0]
        node: dict[str, Any] = {
            key: value for key, value in schema.items() if key not in ("fields", "namespace")
        }
        node["name"], node["short"] = full, full.rpartition(".")[2]
        node["aliases"] = [
            alias if "." in alias or not inner else f"{inner}.{alias}"
            for alias in schema.get("aliases", [])
        ]
        self.named[full] = node
        if schema["type"] in ("record", "error"):
            node["fields"] = [
                {**item, "type": self._walk(item["type"], inner)} for item in schema["fields"]
            ]
        return full

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _AVRO_PRIMITIVES:
            if schema not in self.named:
                raise PipelineDefinitionError(f"Avro schema names unknown type {schema!r}")
            return self.named[schema]
        return schema


def _avro_kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return "record" if schema["type"] == "error" else str(schema["type"])
    return str(schema)


def _avro_describe(schema: Any, names: _AvroNames) -> str:
    schema = names.resolve(schema)
    if isinstance(schema, list):
        return "[" + ", ".join(_avro_describe(branch, names) for branch in schema) + "]"
    if isinstance(schema, dict):
        kind = _avro_kind(schema)
        if kind == "array":
            return f"array<{_avro_describe(schema['items'], names)}>"
        if kind == "map":
            return f"map<{_avro_describe(schema['values'], names)}>"
        return f"{kind} {schema['name']}"
    return str(schema)


class _AvroCompat:
    def __init__(self, contract: str, old: Any, new: Any) -> None:
        self.contract = contract
        self.writer = _AvroNames(old)
        self.reader = _AvroNames(new)
        self.active: set[tuple[int, int]] = set()

    def run(self) -> list[BreakingChange]:
        return self.compare(self.writer.root, self.reader.root, ())

    def change(self, path: tuple[str, ...], rule: str, message: str) -> BreakingChange:
        return BreakingChange(self.contract, ".".join(path), rule, message)

    def compare(self, old: Any, new: Any, path: tuple[str, ...]) -> list[BreakingChange]:
        old, new = self.writer.resolve(old), self.reader.resolve(new)
        if isinstance(old, list):
            changes: list[BreakingChange] = []
            for branch in old:
                changes.extend(self._branch(branch, new, path, union=old))
            return changes
        return self._branch(old, new, path, union=None)

    def _branch(
        self, old: Any, new: Any, path: tuple[str, ...], union: list[Any] | None
    ) -> list[BreakingChange]:
        """Resolve one (non-union) writer schema against the reader schema."""
        old = self.writer.resolve(old)
        branches = new if isinstance(new, list) else [new]
        resolved = [self.reader.resolve(branch) for branch in branches]
        exact = [b for b in resolved if self._matches(old, b, promote=False)]
        promoted = [b for b in resolved if self._matches(old, b, promote=True)]
        chosen = (exact or promoted or [None])[0]
        if chosen is None:
            renamed = [b for b in resolved if _avro_kind(b) == _avro_kind(old)]
            if renamed and _avro_kind(old) in ("record", "enum", "fixed"):
                return [
                    self.change(
                        path,
                        "name-changed",
                        f"{_field(path)}: {_avro_kind(old)} {old['name']} was renamed to "
                        f"{renamed[0]['name']} without an alias naming the old one",
                    )
                ]
            was = _avro_describe(union if union is not None else old, self.writer)
            written = (
                f"; old {_avro_describe(old, self.writer)} values" if union else "; old values"
            )
            return [
                self.change(
                    path,
                    "type-changed",
                    f"{_field(path)}: type changed from {was} to "
                    f"{_avro_describe(new, self.reader)}{written} cannot be read as the new type",
                )
            ]
        return self._resolve_same(old, chosen, path)

    def _matches(self, old: Any, new: Any, *, promote: bool) -> bool:
        old_kind, new_kind = _avro_kind(old), _avro_kind(new)
        if old_kind != new_kind:
            return promote and new_kind in _PROMOTIONS.get(old_kind, frozenset())
        if old_kind in ("record", "enum", "fixed"):
            return bool(self._same_name(old, new))
        return True

    @staticmethod
    def _same_name(old: dict[str, Any], new: dict[str, Any]) -> bool:
        return bool(old["short"] == new["short"] or old["name"] in new["aliases"])

    def _resolve_same(self, old: Any, new: Any, path: tuple[str, ...]) -> list[BreakingChange]:
        kind = _avro_kind(old)
        if kind == "array":
            return self.compare(old["items"], new["items"], (*path, "*"))
        if kind == "map":
            return self.compare(old["values"], new["values"], (*path, "*"))
        if kind == "fixed" and old["size"] != new["size"]:
            return [
                self.change(
                    path,
                    "fixed-size-changed",
                    f"{_field(path)}: fixed {new['name']} changed size from {old['size']} "
                    f"to {new['size']} bytes",
                )
            ]
        if kind == "enum":
            return self._enum(old, new, path)
        if kind == "record":
            key = (id(old), id(new))
            if key in self.active or len(path) > _MAX_DEPTH:
                return []
            self.active.add(key)
            try:
                return self._record(old, new, path)
            finally:
                self.active.discard(key)
        return []

    def _enum(
        self, old: dict[str, Any], new: dict[str, Any], path: tuple[str, ...]
    ) -> list[BreakingChange]:
        removed = [symbol for symbol in old["symbols"] if symbol not in new["symbols"]]
        if not removed or new.get("default") in new["symbols"]:
            return []
        return [
            self.change(
                path,
                "enum-symbol-removed",
                f"{_field(path)}: enum {new['name']} no longer has "
                f"{', '.join(map(repr, removed))} (old symbols {old['symbols']}, new "
                f"{new['symbols']}) and has no default to read them as",
            )
        ]

    def _record(
        self, old: dict[str, Any], new: dict[str, Any], path: tuple[str, ...]
    ) -> list[BreakingChange]:
        changes: list[BreakingChange] = []
        written = {item["name"]: item for item in old["fields"]}
        for item in new["fields"]:
            here = (*path, item["name"])
            names = [item["name"], *item.get("aliases", [])]
            source = next((written[name] for name in names if name in written), None)
            if source is not None:
                changes.extend(self.compare(source["type"], item["type"], here))
            elif "default" not in item:
                changes.append(
                    self.change(
                        here,
                        "default-missing",
                        f"{_field(here)} was added without a default: records written with "
                        "the old schema have no value for it",
                    )
                )
            elif not self._default_fits(item["default"], item["type"]):
                changes.append(
                    self.change(
                        here,
                        "default-invalid",
                        f"{_field(here)} was added with default {_show(item['default'])}, "
                        f"which is not a {_avro_describe(item['type'], self.reader)} (a "
                        "union's default must fit its first branch)",
                    )
                )
        return changes

    def _default_fits(self, value: Any, schema: Any) -> bool:
        schema = self.reader.resolve(schema)
        kind = _avro_kind(schema)
        if kind == "union":
            return bool(schema) and self._default_fits(value, schema[0])
        number = isinstance(value, int | float) and not isinstance(value, bool)
        simple: dict[str, bool] = {
            "null": value is None,
            "boolean": isinstance(value, bool),
            "int": number and isinstance(value, int) and -(2**31) <= value < 2**31,
            "long": number and isinstance(value, int) and -(2**63) <= value < 2**63,
            "float": number,
            "double": number,
            "bytes": isinstance(value, str),
            "string": isinstance(value, str),
        }
        if kind in simple:
            return simple[kind]
        if kind == "enum":
            return value in schema["symbols"]
        if kind == "fixed":
            return isinstance(value, str) and len(value) == schema["size"]
        if kind == "array":
            return isinstance(value, list) and all(
                self._default_fits(item, schema["items"]) for item in value
            )
        if kind == "map":
            return isinstance(value, dict) and all(
                self._default_fits(item, schema["values"]) for item in value.values()
            )
        if kind == "record" and isinstance(value, dict):
            return all(
                self._default_fits(value[item["name"]], item["type"])
                if item["name"] in value
                else "default" in item
                for item in schema["fields"]
            )
        return False


# --- JSON Schema --------------------------------------------------------------------------

_JSON_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")
_ALL_TYPES = frozenset(_JSON_TYPES)
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
_BOUND_TYPES = {
    "minimum": "number",
    "exclusiveMinimum": "number",
    "maximum": "number",
    "exclusiveMaximum": "number",
    "multipleOf": "number",
    "minLength": "string",
    "maxLength": "string",
    "pattern": "string",
    "format": "string",
    "minItems": "array",
    "maxItems": "array",
    "uniqueItems": "array",
    "minProperties": "object",
    "maxProperties": "object",
}
_UNION_KEYS = ("anyOf", "oneOf")


def _json_type_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _declared_types(schema: Mapping[str, Any]) -> frozenset[str]:
    declared = schema.get("type")
    if declared is None:
        return _ALL_TYPES
    names = [declared] if isinstance(declared, str) else list(declared)
    return frozenset(names)


def _values(schema: Mapping[str, Any]) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    enum = schema.get("enum")
    return list(enum) if isinstance(enum, list) else None


def _value_key(value: object) -> str:
    """Equality as JSON sees it: ``1`` and ``True`` differ, ``1`` and ``1.0`` do not."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return _show(value)


def _covers(new: frozenset[str], old_type: str) -> bool:
    return old_type in new or (old_type == "integer" and "number" in new)


def _describe_types(types: Iterable[str]) -> str:
    chosen = set(types)
    if chosen >= _ALL_TYPES:
        return "any"
    return "|".join(name for name in _JSON_TYPES if name in chosen) or "nothing"


def _open(value: Any) -> bool:
    return value is None or value is True or value == {}


class _JsonCompat:
    def __init__(self, contract: str, old: Any, new: Any) -> None:
        self.contract = contract
        self.old_root, self.new_root = old, new
        self.active: set[tuple[int, int]] = set()

    def run(self) -> list[BreakingChange]:
        return self.compare(self.old_root, self.new_root, ())

    def change(self, path: tuple[str, ...], rule: str, message: str) -> BreakingChange:
        return BreakingChange(self.contract, ".".join(path), rule, message)

    # resolution

    def _resolve(self, schema: Any, root: Any, depth: int = 0) -> Any:
        if schema is True or schema is None:
            return {}
        if schema is False or not isinstance(schema, Mapping):
            return schema
        if depth > _MAX_DEPTH:
            return {}
        if isinstance(schema.get("$ref"), str):
            target = self._pointer(root, schema["$ref"])
            rest = {key: value for key, value in schema.items() if key != "$ref"}
            resolved = self._resolve(target, root, depth + 1)
            if not rest:
                return resolved
            if resolved is False:
                return False
            return self._resolve(_merge(rest, resolved), root, depth + 1)
        if isinstance(schema.get("allOf"), list):
            merged: Any = {key: value for key, value in schema.items() if key != "allOf"}
            for part in schema["allOf"]:
                part = self._resolve(part, root, depth + 1)
                if part is False:
                    return False
                merged = _merge(merged, part)
            return self._resolve(merged, root, depth + 1)
        return schema

    @staticmethod
    def _pointer(root: Any, ref: str) -> Any:
        base, _, fragment = ref.partition("#")
        own = root.get("$id", "") if isinstance(root, Mapping) else ""
        if base and base != str(own).rstrip("#"):
            raise PipelineDefinitionError(
                f"$ref {ref!r} points outside the schema; only references inside the schema "
                "(#/definitions/...) can be compared"
            )
        node = root
        for part in filter(None, fragment.split("/")):
            key = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or key not in node:
                raise PipelineDefinitionError(f"$ref {ref!r} does not resolve in the schema")
            node = node[key]
        return node

    # comparison

    def compare(self, old: Any, new: Any, path: tuple[str, ...]) -> list[BreakingChange]:
        key = (id(old), id(new))
        if key in self.active or len(path) > _MAX_DEPTH:
            return []
        self.active.add(key)
        try:
            return self._compare(
                self._resolve(old, self.old_root), self._resolve(new, self.new_root), path
            )
        finally:
            self.active.discard(key)

    def _compare(self, old: Any, new: Any, path: tuple[str, ...]) -> list[BreakingChange]:
        if old is False or not isinstance(old, Mapping):
            return []  # the old schema accepted nothing
        if new is False or not isinstance(new, Mapping):
            return [
                self.change(
                    path,
                    "type-changed",
                    f"{_field(path)}: the new schema accepts no value (false); the old "
                    f"accepted {_describe_types(self._old_types(old))}",
                )
            ]
        for union_key in _UNION_KEYS:
            if isinstance(old.get(union_key), list):
                changes: list[BreakingChange] = []
                for branch in _branches(old, union_key):
                    changes.extend(self.compare(branch, new, path))
                return changes
        for union_key in _UNION_KEYS:
            if isinstance(new.get(union_key), list):
                return self._into_union(old, new, _branches(new, union_key), path)
        return self._plain(old, new, path)

    def _into_union(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        branches: list[Any],
        path: tuple[str, ...],
    ) -> list[BreakingChange]:
        old_types = self._old_types(old)
        candidates: list[list[BreakingChange]] = []
        for branch in branches:
            found = self.compare(old, branch, path)
            if not found:
                return []
            resolved = self._resolve(branch, self.new_root)
            if isinstance(resolved, Mapping) and any(
                _covers(self._new_types(resolved), name) for name in old_types
            ):
                candidates.append(found)
        if candidates:
            return min(candidates, key=len)
        return [
            self.change(
                path,
                "type-changed",
                f"{_field(path)}: type changed from {_describe_types(old_types)} to "
                f"{_describe_types(self._union_types(branches))}; "
                "old values are rejected",
            )
        ]

    def _union_types(self, branches: list[Any]) -> set[str]:
        types: set[str] = set()
        for branch in branches:
            types |= self._new_types(self._resolve(branch, self.new_root))
        return types

    def _old_types(self, old: Mapping[str, Any]) -> frozenset[str]:
        types = _declared_types(old)
        values = _values(old)
        if values is not None:
            types = types & frozenset(_json_type_of(value) for value in values)
        return types

    @staticmethod
    def _new_types(new: Any) -> frozenset[str]:
        return _declared_types(new) if isinstance(new, Mapping) else frozenset()

    def _plain(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: tuple[str, ...]
    ) -> list[BreakingChange]:
        changes: list[BreakingChange] = []
        old_types, new_types = self._old_types(old), _declared_types(new)
        lost = [name for name in _JSON_TYPES if name in old_types and not _covers(new_types, name)]
        if lost:
            changes.append(
                self.change(
                    path,
                    "type-changed",
                    f"{_field(path)}: type changed from {_describe_types(old_types)} to "
                    f"{_describe_types(new_types)}; old {_describe_types(lost)} values are "
                    "rejected",
                )
            )
        shared = frozenset(name for name in old_types if _covers(new_types, name))
        if not shared:
            return changes
        changes.extend(self._enum(old, new, path, shared))
        if "object" in shared:
            changes.extend(self._object(old, new, path))
        if "array" in shared:
            changes.extend(self._array(old, new, path))
        changes.extend(self._constraints(old, new, path, shared))
        return changes

    def _enum(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: tuple[str, ...],
        shared: frozenset[str],
    ) -> list[BreakingChange]:
        new_values = _values(new)
        if new_values is None:
            return []
        old_values = _values(old)
        if old_values is None:
            return [
                self.change(
                    path,
                    "enum-added",
                    f"{_field(path)}: the new schema allows only {_show(new_values)}; the old "
                    f"accepted any {_describe_types(shared)}",
                )
            ]
        allowed = {_value_key(value) for value in new_values}
        removed = [
            value
            for value in old_values
            if _value_key(value) not in allowed and _json_type_of(value) in shared
        ]
        if not removed:
            return []
        return [
            self.change(
                path,
                "enum-value-removed",
                f"{_field(path)}: {', '.join(_show(value) for value in removed)} removed from "
                f"the enum (old {_show(old_values)}, new {_show(new_values)})",
            )
        ]

    def _object(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: tuple[str, ...]
    ) -> list[BreakingChange]:
        changes: list[BreakingChange] = []
        old_props: Mapping[str, Any] = old.get("properties") or {}
        new_props: Mapping[str, Any] = new.get("properties") or {}
        old_extra, new_extra = old.get("additionalProperties"), new.get("additionalProperties")
        for name in new_props:
            here = (*path, name)
            if name in old_props:
                changes.extend(self.compare(old_props[name], new_props[name], here))
            elif old_extra is True and not _open(self._resolve(new_props[name], self.new_root)):
                changes.append(
                    self.change(
                        here,
                        "property-added-to-open-model",
                        f"{_field(here)} was added with schema {_show(new_props[name])}, but "
                        "the old schema allowed any additional property "
                        "(additionalProperties: true), so old records may carry it with any "
                        "value",
                    )
                )
            elif isinstance(old_extra, Mapping):
                changes.extend(self.compare(old_extra, new_props[name], here))
        for name in old_props:
            if name in new_props:
                continue
            here = (*path, name)
            if new_extra is False:
                changes.append(
                    self.change(
                        here,
                        "field-removed",
                        f"{_field(here)} was removed and the new schema forbids additional "
                        "properties: old records that carry it are rejected",
                    )
                )
            elif isinstance(new_extra, Mapping):
                changes.extend(self.compare(old_props[name], new_extra, here))
        new_required = set(new.get("required") or ()) - set(old.get("required") or ())
        for name in sorted(new_required):
            here = (*path, name)
            changes.append(
                self.change(
                    here,
                    "required-added",
                    f"{_field(here)} is required by the new schema but was optional or absent "
                    "in the old one: old records may lack it",
                )
            )
        if old_extra is not False:
            old_open = _open(self._resolve(old_extra, self.old_root))
            new_open = _open(self._resolve(new_extra, self.new_root))
            if old_open and not new_open:
                changes.append(
                    self.change(
                        path,
                        "additional-properties-narrowed",
                        f"{_field(path)}: additionalProperties changed from "
                        f"{_show(True if old_extra is None else old_extra)} to "
                        f"{_show(new_extra)}: old records with undeclared properties are "
                        "rejected",
                    )
                )
            elif not old_open:
                changes.extend(self.compare(old_extra, new_extra, (*path, "*")))
        return changes

    def _array(
        self, old: Mapping[str, Any], new: Mapping[str, Any], path: tuple[str, ...]
    ) -> list[BreakingChange]:
        old_items, new_items = old.get("items", {}), new.get("items", {})
        if not isinstance(old_items, list) and not isinstance(new_items, list):
            return self.compare(old_items, new_items, (*path, "*"))
        changes: list[BreakingChange] = []
        width = max(len(items) for items in (old_items, new_items) if isinstance(items, list))
        for index in range(width):
            changes.extend(
                self.compare(_item_at(old, index), _item_at(new, index), (*path, str(index)))
            )
        changes.extend(self.compare(_item_at(old, width), _item_at(new, width), (*path, "*")))
        return changes

    def _constraints(
        self,
        old: Mapping[str, Any],
        new: Mapping[str, Any],
        path: tuple[str, ...],
        shared: frozenset[str],
    ) -> list[BreakingChange]:
        changes: list[BreakingChange] = []
        for keyword, applies in _BOUND_TYPES.items():
            if keyword not in new or not _applies(applies, shared):
                continue
            before, after = old.get(keyword), new[keyword]
            if _tighter(keyword, before, after):
                was = "absent" if before is None else _show(before)
                changes.append(
                    self.change(
                        path,
                        "constraint-tightened",
                        f"{_field(path)}: {keyword} changed from {was} to {_show(after)}; old "
                        "values may not satisfy it",
                    )
                )
        return changes


def _applies(applies: str, shared: frozenset[str]) -> bool:
    return applies in shared or (applies == "number" and "integer" in shared)


def _tighter(keyword: str, before: Any, after: Any) -> bool:
    if isinstance(after, bool) or isinstance(before, bool):
        return bool(after) and not before  # draft-4 exclusive flags, uniqueItems
    if before is None:
        return True
    if keyword in _LOWER_BOUNDS:
        return bool(after > before)
    if keyword in _UPPER_BOUNDS:
        return bool(after < before)
    if keyword == "multipleOf":
        try:
            return (Fraction(str(before)) / Fraction(str(after))).denominator != 1
        except (ValueError, ZeroDivisionError):
            return True
    return bool(after != before)


def _item_at(schema: Mapping[str, Any], index: int) -> Any:
    items = schema.get("items", {})
    if not isinstance(items, list):
        return items
    if index < len(items):
        return items[index]
    return schema.get("additionalItems", {})


def _branches(schema: Mapping[str, Any], key: str) -> list[Any]:
    rest = {name: value for name, value in schema.items() if name not in _UNION_KEYS}
    annotations = {"title", "description", "default", "examples", "$comment"}
    if set(rest) <= annotations:
        return list(schema[key])
    out: list[Any] = []
    for branch in schema[key]:
        if branch is False:
            continue
        out.append(_merge(rest, {} if branch is True else branch))
    return out


def _merge(first: Mapping[str, Any], second: Mapping[str, Any]) -> dict[str, Any]:
    """A naive ``allOf``: properties and required united, other keywords from ``second``."""
    merged = {**first, **second}
    if "properties" in first and "properties" in second:
        merged["properties"] = {**first["properties"], **second["properties"]}
    if "required" in first and "required" in second:
        merged["required"] = list(dict.fromkeys([*first["required"], *second["required"]]))
    if "type" in first and "type" in second:
        both = _declared_types(first) & _declared_types(second)
        merged["type"] = [name for name in _JSON_TYPES if name in both]
    return merged
