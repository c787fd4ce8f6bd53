"""Contracts from Protobuf ``.proto`` files (the optional ``conveyor[protobuf]`` extra).

A ``.proto`` file is compiled when the contract is built, with the ``protoc`` that
grpcio-tools bundles (``python -m grpc_tools.protoc``: no system protoc needed), into a
descriptor set with its imports; the set is cached per file content (the file and every
file it imports), so building the same contract again does not run protoc again.

The contract checks one message of the file. A file with a single top-level message needs
no more; otherwise the message is named after a colon, ``contracts/order.proto:Order``, or
with ``message="Order"`` (a name relative to the file's package, a nested ``Order.Item``,
or a full name ``shop.Order``).
"""

from __future__ import annotations

import difflib
import errno
import functools
import hashlib
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.contracts._base import Contract, is_path, join_path, type_name
from conveyor.errors import ContractViolation, PipelineDefinitionError

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
    from google.protobuf.descriptor_pb2 import FileDescriptorProto, FileDescriptorSet
    from google.protobuf.descriptor_pool import DescriptorPool
    from google.protobuf.message import Message

__all__ = ["ProtoFile", "ProtobufContract", "compile_proto", "is_proto_spec", "split_proto_spec"]

_INSTALL = "pip install 'conveyor[protobuf]'"
_PROTOC_TIMEOUT = 120.0
_MAX_DEPTH = 100  # protobuf's own default recursion limit

# FieldDescriptor(Proto).Type numbers, fixed by descriptor.proto.
TYPE_NAMES: dict[int, str] = {
    1: "double",
    2: "float",
    3: "int64",
    4: "uint64",
    5: "int32",
    6: "fixed64",
    7: "fixed32",
    8: "bool",
    9: "string",
    10: "group",
    11: "message",
    12: "bytes",
    13: "uint32",
    14: "enum",
    15: "sfixed32",
    16: "sfixed64",
    17: "sint32",
    18: "sint64",
}
TYPE_MESSAGE, TYPE_GROUP, TYPE_ENUM = 11, 10, 14
_TYPE_DOUBLE, _TYPE_FLOAT, _TYPE_BOOL, _TYPE_STRING, _TYPE_BYTES = 1, 2, 8, 9, 12
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INT_RANGES: dict[int, tuple[int, int]] = {
    5: _INT32,  # int32
    17: _INT32,  # sint32
    15: _INT32,  # sfixed32
    3: _INT64,  # int64
    18: _INT64,  # sint64
    16: _INT64,  # sfixed64
    13: (0, 2**32 - 1),  # uint32
    7: (0, 2**32 - 1),  # fixed32
    4: (0, 2**64 - 1),  # uint64
    6: (0, 2**64 - 1),  # fixed64
}
_FLOAT_MAX = 3.4028234663852886e38
_PACKABLE = frozenset(_INT_RANGES) | {_TYPE_DOUBLE, _TYPE_FLOAT, _TYPE_BOOL, TYPE_ENUM}

_MESSAGE_SUFFIX = re.compile(r"^(?P<file>.+\.proto):(?P<message>[A-Za-z_][A-Za-z0-9_.]*)$", re.I)
_PROTOC_LINE = re.compile(r"^(?P<file>[^:\s][^:]*\.proto):(?P<rest>\d+:\d+: .*)$")


def _protobuf() -> None:
    try:
        found = importlib.util.find_spec("google.protobuf")
    except ModuleNotFoundError:  # pragma: no cover - no "google" package at all
        found = None
    if found is None:  # pragma: no cover - the extra is not installed
        raise ImportError(
            f"Protobuf contracts need protobuf, which is not installed: {_INSTALL}",
            name="google.protobuf",
        )


def _protoc_include() -> Path:
    """The folder of grpcio-tools' bundled ``google/protobuf/*.proto`` (well-known types)."""
    spec = importlib.util.find_spec("grpc_tools")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "Protobuf contracts compile .proto files with grpcio-tools, which is not "
            f"installed: {_INSTALL}",
            name="grpc_tools",
        )
    return Path(next(iter(spec.submodule_search_locations))) / "_proto"


# --- naming ------------------------------------------------------------------------------------


def split_proto_spec(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``"contracts/order.proto:Order"`` -> ``(Path("contracts/order.proto"), "Order")``.

    >>> split_proto_spec("contracts/order.proto:shop.Order")
    (PosixPath('contracts/order.proto'), 'shop.Order')
    >>> split_proto_spec("contracts/order.proto")
    (PosixPath('contracts/order.proto'), None)
    """
    text = os.fspath(spec)
    match = _MESSAGE_SUFFIX.match(text)
    if match:
        return Path(match["file"]), match["message"]
    return Path(text), None


def is_proto_spec(spec: object) -> bool:
    """True for a path ending ``.proto``, or ``.proto:Message``."""
    if not is_path(spec):
        return False
    text = os.fspath(spec)  # type: ignore[call-overload]
    return isinstance(text, str) and (
        text.lower().endswith(".proto") or _MESSAGE_SUFFIX.match(text) is not None
    )


# --- compiling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProtoFile:
    """A compiled ``.proto`` file: a serialized ``FileDescriptorSet`` holding the file and
    everything it imports (dependencies first, the file itself last).

    Attributes:
        name: the file's name inside the set (relative to its import folder).
        descriptor_set: the serialized ``google.protobuf.FileDescriptorSet``.
        path: the file it was compiled from, when it came from disk.
        sources: ``(path, sha256)`` of each file on disk the set was compiled from.
    """

    name: str
    descriptor_set: bytes = field(repr=False)
    path: Path | None = None
    sources: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    @property
    def source(self) -> str:
        """How errors name the file: its path, else its name in the set."""
        return str(self.path) if self.path is not None else self.name

    def fresh(self) -> bool:
        """True while every source file still has the content the set was compiled from."""
        return all(_digest(Path(path)) == digest for path, digest in self.sources)

    def file_proto(self) -> FileDescriptorProto:
        """The ``FileDescriptorProto`` of the file itself (not of its imports)."""
        for proto in _descriptor_set(self.descriptor_set).file:
            if proto.name == self.name:
                return proto
        raise PipelineDefinitionError(
            f"{self.source}: the descriptor set does not hold {self.name}"
        )

    def pool(self) -> DescriptorPool:
        """A descriptor pool holding the set (one per distinct set, shared)."""
        return _pool(self.descriptor_set)


_COMPILED: dict[tuple[str, tuple[str, ...]], ProtoFile] = {}
_LOCK = threading.Lock()


def compile_proto(
    path: str | os.PathLike[str], include: Sequence[str | os.PathLike[str]] = ()
) -> ProtoFile:
    """Compile a ``.proto`` file with grpcio-tools' protoc (cached per file content).

    Imports are looked up in the ``include`` folders, then in the file's own folder, then
    among protobuf's well-known types (``google/protobuf/timestamp.proto`` …).

    Raises:
        FileNotFoundError: the file does not exist.
        ImportError: grpcio-tools is not installed.
        PipelineDefinitionError: protoc rejects the file (its errors, with file:line:column).
    """
    _protobuf()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, f"Protobuf file not found: {file}", str(file))
    folders = tuple(dict.fromkeys([*(Path(d).resolve() for d in include), file.resolve().parent]))
    key = (str(file.resolve()), tuple(map(str, folders)))
    with _LOCK:
        cached = _COMPILED.get(key)
    if cached is not None and cached.fresh():
        return cached if cached.path == file else _replace_path(cached, file)
    data = _run_protoc(file, folders)
    files = _descriptor_set(data).file
    if not files:  # pragma: no cover - protoc always writes the file it compiled
        raise PipelineDefinitionError(f"{file}: protoc produced no descriptor")
    sources: list[tuple[str, str]] = []
    for proto in files:
        found = _locate(proto.name, folders)
        if found is not None:
            sources.append((str(found), _digest(found)))
    compiled = ProtoFile(files[-1].name, data, file, tuple(sources))
    with _LOCK:
        _COMPILED[key] = compiled
    return compiled


def _replace_path(compiled: ProtoFile, path: Path) -> ProtoFile:
    return ProtoFile(compiled.name, compiled.descriptor_set, path, compiled.sources)


def _run_protoc(file: Path, folders: tuple[Path, ...]) -> bytes:
    wkt = _protoc_include()
    with tempfile.TemporaryDirectory(prefix="conveyor-protoc-") as tmp:
        out = Path(tmp) / "descriptor_set.pb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            *(f"--proto_path={folder}" for folder in folders),
            f"--proto_path={wkt}",
            "--include_imports",
            f"--descriptor_set_out={out}",
            str(file.resolve()),
        ]
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=_PROTOC_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise PipelineDefinitionError(
                f"{file}: protoc did not finish within {_PROTOC_TIMEOUT:g}s"
            ) from error
        if result.returncode != 0 or not out.is_file():
            errors = _protoc_errors(result.stderr or result.stdout, (*folders, wkt))
            raise PipelineDefinitionError(f"{file}: not a valid .proto file:\n{errors}")
        return out.read_bytes()


def _protoc_errors(text: str, folders: tuple[Path, ...]) -> str:
    """protoc's messages, with each file named by its path on disk."""
    lines = []
    for line in text.strip().splitlines() or ["protoc failed without a message"]:
        match = _PROTOC_LINE.match(line)
        if match:
            found = _locate(match["file"], folders)
            if found is not None:
                line = f"{found}:{match['rest']}"
        lines.append(f"  {line}")
    return "\n".join(lines)


def _locate(name: str, folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


@functools.lru_cache(maxsize=64)
def _descriptor_set(data: bytes) -> FileDescriptorSet:
    from google.protobuf import descriptor_pb2

    return descriptor_pb2.FileDescriptorSet.FromString(data)


@functools.lru_cache(maxsize=64)
def _pool(data: bytes) -> DescriptorPool:
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    for proto in _descriptor_set(data).file:
        pool.Add(proto)
    return pool


# --- the contract ------------------------------------------------------------------------------


class ProtobufContract(Contract):
    """A contract from one message of a ``.proto`` file.

    Records may be:

    - **mappings** keyed by the fields' proto names, checked against the message: unknown
      keys (JSON names such as ``userId`` included) are violations; a field missing or
      ``None`` is unset (a proto2 ``required`` field must be set); scalar types are strict
      (``bool`` is not an ``int32``, ``"1"`` is not an ``int64``) and integers must fit
      their type (``uint32`` is 0 to 4294967295); ``float``/``double`` take ints and
      floats; ``string`` takes ``str``, ``bytes`` takes ``bytes``; an enum takes a value's
      name, or a number (any int32 for an open proto3 enum, a declared one for a closed
      proto2 enum); repeated fields take lists; maps take mappings (integer and bool keys
      as ints/bools or as their JSON strings ``"7"``, ``"true"``); at most one field of a
      ``oneof`` may be set; nested messages are mappings. Names and numbers the message
      declares ``reserved`` are accepted and ignored, so records written before a field
      was retired still pass. Well-known types take their JSON forms or their Python
      values: ``Timestamp`` a ``datetime`` or RFC 3339 text, ``Duration`` a ``timedelta``
      or ``"1.5s"``, wrappers (``Int32Value`` …) the bare value, ``Struct``/``Value``/
      ``ListValue`` JSON-like values, ``Any`` a mapping with ``"@type"``;
    - **bytes**: a serialized message, parsed; bytes that do not parse, unknown field
      numbers and missing ``required`` fields are violations;
    - **message instances** of the contract's message, checked like parsed bytes.

    Paths are dotted as for the other contracts (``items.2.price``, ``tags.blue`` for a map
    value). ``name`` is the file name, with ``:Message`` when the message was named;
    ``version`` is ``None`` (a ``.proto`` file's version is in its name, for
    ``conveyor contracts check``).

    >>> import pathlib, tempfile
    >>> proto = pathlib.Path(tempfile.mkdtemp()) / "order.proto"
    >>> _ = proto.write_text('''
    ...     syntax = "proto3";
    ...     package shop;
    ...     message Order {
    ...       uint32 id = 1;
    ...       repeated Item items = 2;
    ...     }
    ...     message Item { double price = 1; }
    ... ''')
    >>> contract = ProtobufContract(f"{proto}:Order")
    >>> contract.name, contract.message
    ('order.proto:Order', 'shop.Order')
    >>> contract.check({"id": 7, "items": [{"price": 1.5}]}) is None
    True
    >>> print(contract.check({"id": -1}))
    field 'id' violates contract order.proto:Order: -1 is out of range for uint32 (0 to 4294967295)
    >>> contract.check({"id": 7, "items": [{"price": 1.5}, {"cost": 2}]}).path
    'items.1.cost'
    >>> contract.check(contract.message_class(id=7).SerializeToString()) is None
    True

    Args:
        proto: the path of a ``.proto`` file (optionally ``path.proto:Message``), or a
            compiled :class:`ProtoFile`.
        message: the message to check (needed when the file has several top-level ones).
        name: how violations name the contract, overriding the default above.
        include: more folders to look up imports in (before the file's own folder).

    Raises:
        ImportError: protobuf or grpcio-tools is not installed (``pip install
            'conveyor[protobuf]'``).
        FileNotFoundError: the file does not exist.
        PipelineDefinitionError: protoc rejects the file, or the message is not in it.
    """

    def __init__(
        self,
        proto: str | os.PathLike[str] | ProtoFile,
        *,
        message: str | None = None,
        name: str | None = None,
        include: Sequence[str | os.PathLike[str]] = (),
    ) -> None:
        _protobuf()
        from google.protobuf import message_factory

        if isinstance(proto, ProtoFile):
            compiled = proto
        elif is_path(proto):
            path, named = split_proto_spec(proto)
            if named is not None and message is not None and named != message:
                raise PipelineDefinitionError(
                    f"{proto}: names message {named!r} but message={message!r} was given too"
                )
            message = message or named
            compiled = compile_proto(path, include)
        else:
            raise PipelineDefinitionError(
                f"a Protobuf contract needs the path of a .proto file, got {type(proto).__name__}"
            )
        pool = compiled.pool()
        descriptor = _choose_message(pool, compiled, message)
        file_name = compiled.path.name if compiled.path is not None else Path(compiled.name).name
        default = f"{file_name}:{message}" if message else file_name
        super().__init__(name or default)
        self.proto = compiled
        self.descriptor = descriptor
        self.message: str = descriptor.full_name
        self.message_class: type[Message] = message_factory.GetMessageClass(descriptor)
        self._checker = _Checker(pool, compiled)

    def check(self, record: object) -> ContractViolation | None:
        """Return the violation of the first failing field of ``record``, or ``None``."""
        try:
            found = self._checker.record(record, self.descriptor, self.message_class)
        except RecursionError:
            found = ((), f"nested deeper than {_MAX_DEPTH} levels")
        if found is None:
            return None
        path, reason = found
        return self.violation(join_path(path), reason)

    def __reduce__(self) -> tuple[Callable[..., ProtobufContract], tuple[ProtoFile]]:
        return (
            functools.partial(ProtobufContract, message=self.message, name=self.name),
            (self.proto,),
        )


def _choose_message(pool: DescriptorPool, compiled: ProtoFile, message: str | None) -> Descriptor:
    file = pool.FindFileByName(compiled.name)
    top = list(file.message_types_by_name)
    if message is None:
        if len(top) == 1:
            return file.message_types_by_name[top[0]]
        if not top:
            raise PipelineDefinitionError(f"{compiled.source} defines no message to check")
        raise PipelineDefinitionError(
            f"{compiled.source} defines {len(top)} messages ({', '.join(top)}): name the one "
            f"the contract checks, as '{compiled.source}:{top[0]}' or message={top[0]!r}"
        )
    package = file.package
    for candidate in (f"{package}.{message}" if package else message, message):
        try:
            return pool.FindMessageTypeByName(candidate)
        except KeyError:
            continue
    known = _all_messages(file.message_types_by_name.values())
    raise PipelineDefinitionError(
        f"{compiled.source} has no message {message!r}; its messages: {', '.join(known)}"
    )


def _all_messages(messages: Any, prefix: str = "") -> list[str]:
    names: list[str] = []
    for descriptor in messages:
        if descriptor.GetOptions().map_entry:
            continue
        names.append(f"{prefix}{descriptor.name}")
        names.extend(_all_messages(descriptor.nested_types, f"{prefix}{descriptor.name}."))
    return names


# --- checking ----------------------------------------------------------------------------------

Path_ = tuple[str | int, ...]
Found = tuple[Path_, str] | None


@dataclass
class _Plan:
    """What checking a mapping against one message needs, computed once per message."""

    descriptor: Descriptor
    fields: dict[str, FieldDescriptor]
    json_names: dict[str, str]
    oneofs: list[tuple[str, tuple[str, ...]]]
    reserved_names: frozenset[str]


class _Checker:
    def __init__(self, pool: DescriptorPool, compiled: ProtoFile) -> None:
        from google.protobuf.message import Message

        self.pool = pool
        self.message_type = Message
        self.plans: dict[str, _Plan] = {}
        self.reserved = _reserved(compiled)

    # records

    def record(self, record: object, descriptor: Descriptor, cls: type[Message]) -> Found:
        if isinstance(record, Mapping):
            return self.message(record, descriptor, ())
        if isinstance(record, bytes | bytearray | memoryview):
            return self.serialized(bytes(record), descriptor, cls)
        if isinstance(record, self.message_type):
            return self.instance(record, descriptor, ())
        return (), (
            f"expected a mapping, serialized bytes or a {descriptor.full_name} message, "
            f"got {type_name(record)}"
        )

    def serialized(self, data: bytes, descriptor: Descriptor, cls: type[Message]) -> Found:
        try:
            parsed = cls.FromString(data)
        except Exception as error:
            return (), f"not a serialized {descriptor.full_name}: {error}"
        return self.instance(parsed, descriptor, ())

    def instance(self, message: Message, descriptor: Descriptor, path: Path_) -> Found:
        if message.DESCRIPTOR.full_name != descriptor.full_name:
            return (
                path,
                f"expected message {descriptor.full_name}, got {message.DESCRIPTOR.full_name}",
            )
        found = self._unknown(message, path)
        if found is not None:
            return found
        if message.IsInitialized():
            return None
        missing: list[str] = []
        message.IsInitialized(missing)  # type: ignore[call-arg]  # fills in the missing fields
        if missing:
            parts = re.sub(r"\[(\d+)\]", r".\1", missing[0]).split(".")
            return (*path, *parts), "required field is missing"
        return None

    def _unknown(self, message: Message, path: Path_) -> Found:
        from google.protobuf.unknown_fields import UnknownFieldSet

        full = message.DESCRIPTOR.full_name
        retired = self.reserved.get(full, _NOTHING_RESERVED)[1]
        unknown = UnknownFieldSet(message)
        for index in range(len(unknown)):
            number = unknown[index].field_number
            if not any(low <= number < high for low, high in retired):
                return path, f"unknown field number {number}: message {full} has no field {number}"
        for descriptor, value in message.ListFields():
            if descriptor.type not in (TYPE_MESSAGE, TYPE_GROUP):
                continue
            here = (*path, descriptor.name)
            if _is_map(descriptor):
                value_field = descriptor.message_type.fields_by_name["value"]  # type: ignore[union-attr]
                if value_field.type != TYPE_MESSAGE:
                    continue
                items: Any = ((str(k), v) for k, v in value.items())
            elif descriptor.is_repeated:
                items = enumerate(value)
            else:
                items = [(None, value)]
            for key, item in items:
                found = self._unknown(item, here if key is None else (*here, key))
                if found is not None:
                    return found
        return None

    # mappings

    def plan(self, descriptor: Descriptor) -> _Plan:
        plan = self.plans.get(descriptor.full_name)
        if plan is None:
            fields = {f.name: f for f in descriptor.fields}
            plan = _Plan(
                descriptor,
                fields,
                {f.json_name: f.name for f in descriptor.fields if f.json_name != f.name},
                [
                    (oneof.name, tuple(f.name for f in oneof.fields))
                    for oneof in descriptor.oneofs
                    if len(oneof.fields) > 1
                ],
                self.reserved.get(descriptor.full_name, _NOTHING_RESERVED)[0],
            )
            self.plans[descriptor.full_name] = plan
        return plan

    def message(self, value: Mapping[Any, Any], descriptor: Descriptor, path: Path_) -> Found:
        if len(path) > _MAX_DEPTH:
            return path, f"nested deeper than {_MAX_DEPTH} levels"
        plan = self.plan(descriptor)
        for key in value:
            if not isinstance(key, str):
                return path, f"field names are strings, got {type_name(key)} {key!r}"
            if key not in plan.fields and key not in plan.reserved_names:
                return (*path, key), _unknown_field(key, plan)
        for name, field_descriptor in plan.fields.items():
            item = value.get(name)
            if item is None:
                if field_descriptor.is_required:
                    return (*path, name), "required field is missing"
                continue
            found = self.field(item, field_descriptor, (*path, name))
            if found is not None:
                return found
        for oneof, members in plan.oneofs:
            chosen = [member for member in members if value.get(member) is not None]
            if len(chosen) > 1:
                return (*path, chosen[1]), (
                    f"oneof {oneof!r} allows one field to be set, but {' and '.join(chosen)} "
                    "are set"
                )
        return None

    def field(self, value: object, descriptor: FieldDescriptor, path: Path_) -> Found:
        if _is_map(descriptor):
            return self.map(value, descriptor, path)
        if descriptor.is_repeated:
            if not isinstance(value, list | tuple):
                return path, (
                    f"expected a list for repeated {describe_field(descriptor)}, got "
                    f"{type_name(value)}"
                )
            for index, item in enumerate(value):
                if item is None:
                    return (*path, index), (
                        f"null in a repeated field (expected {describe_field(descriptor)})"
                    )
                found = self.single(item, descriptor, (*path, index))
                if found is not None:
                    return found
            return None
        return self.single(value, descriptor, path)

    def map(self, value: object, descriptor: FieldDescriptor, path: Path_) -> Found:
        entry = descriptor.message_type
        assert entry is not None
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        if not isinstance(value, Mapping):
            return (
                path,
                f"expected a mapping for {describe_field(descriptor)}, got {type_name(value)}",
            )
        for key, item in value.items():
            reason = _map_key_reason(key, key_field.type)
            if reason is not None:
                return (*path, str(key)), reason
            if item is None:
                return (*path, str(key)), (
                    f"null map value (expected {describe_field(value_field)})"
                )
            found = self.single(item, value_field, (*path, str(key)))
            if found is not None:
                return found
        return None

    def single(self, value: object, descriptor: FieldDescriptor, path: Path_) -> Found:
        kind = descriptor.type
        if kind in (TYPE_MESSAGE, TYPE_GROUP):
            assert descriptor.message_type is not None
            return self.message_value(value, descriptor.message_type, path)
        if kind == TYPE_ENUM:
            assert descriptor.enum_type is not None
            return _enum_reason(value, descriptor.enum_type, path)
        reason = _scalar_reason(value, kind)
        return None if reason is None else (path, reason)

    def message_value(self, value: object, descriptor: Descriptor, path: Path_) -> Found:
        if isinstance(value, self.message_type):
            return self.instance(value, descriptor, path)
        special = _WELL_KNOWN.get(descriptor.full_name)
        if special is not None:
            found = special(self, value, descriptor, path)
            if found is not _DEFER:
                return found  # type: ignore[return-value]
        if not isinstance(value, Mapping):
            return (
                path,
                f"expected message {descriptor.full_name} (a mapping), got {type_name(value)}",
            )
        return self.message(value, descriptor, path)


_Reserved = tuple[frozenset[str], tuple[tuple[int, int], ...]]
_NOTHING_RESERVED: _Reserved = (frozenset(), ())


def _reserved(compiled: ProtoFile) -> dict[str, _Reserved]:
    """Reserved field names and number ranges (end exclusive) by message full name."""
    found: dict[str, _Reserved] = {}

    def walk(messages: Any, prefix: str) -> None:
        for message in messages:
            full = f"{prefix}{message.name}"
            ranges = tuple((item.start, item.end) for item in message.reserved_range)
            found[full] = (frozenset(message.reserved_name), ranges)
            walk(message.nested_type, f"{full}.")

    for file in _descriptor_set(compiled.descriptor_set).file:
        walk(file.message_type, f"{file.package}." if file.package else "")
    return found


def _unknown_field(key: str, plan: _Plan) -> str:
    full = plan.descriptor.full_name
    if key in plan.json_names:
        return (
            f"unknown field: message {full} has no field {key!r}; records use field names, "
            f"not JSON names: use {plan.json_names[key]!r}"
        )
    close = difflib.get_close_matches(key, list(plan.fields), n=1)
    if close:
        return f"unknown field: message {full} has no field {key!r} (did you mean {close[0]!r}?)"
    names = list(plan.fields)
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"unknown field: message {full} has no field {key!r} (its fields: {shown or 'none'})"


def _is_map(descriptor: FieldDescriptor) -> bool:
    message = descriptor.message_type
    return bool(descriptor.is_repeated and message is not None and message.GetOptions().map_entry)


def describe_field(descriptor: FieldDescriptor) -> str:
    """``int32``, ``enum shop.Status``, ``message shop.Item``, ``map<string, int32>``."""
    if _is_map(descriptor):
        entry = descriptor.message_type
        assert entry is not None
        key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
        return f"map<{describe_field(key)}, {_type_only(value)}>"
    return _type_only(descriptor)


def _type_only(descriptor: FieldDescriptor) -> str:
    if descriptor.type in (TYPE_MESSAGE, TYPE_GROUP) and descriptor.message_type is not None:
        return f"message {descriptor.message_type.full_name}"
    if descriptor.type == TYPE_ENUM and descriptor.enum_type is not None:
        return f"enum {descriptor.enum_type.full_name}"
    return TYPE_NAMES.get(descriptor.type, str(descriptor.type))


def _scalar_reason(value: object, kind: int) -> str | None:
    name = TYPE_NAMES.get(kind, str(kind))
    bounds = _INT_RANGES.get(kind)
    if bounds is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected {name}, got {type_name(value)}"
        low, high = bounds
        if not low <= value <= high:
            return f"{value} is out of range for {name} ({low} to {high})"
        return None
    if kind in (_TYPE_DOUBLE, _TYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected {name}, got {type_name(value)}"
        try:
            number = float(value)
        except OverflowError:
            return f"{value} is out of range for {name}"
        if kind == _TYPE_FLOAT and math.isfinite(number) and abs(number) > _FLOAT_MAX:
            return f"{value} is out of range for float (at most {_FLOAT_MAX:.7g} in magnitude)"
        return None
    if kind == _TYPE_BOOL:
        return None if isinstance(value, bool) else f"expected bool, got {type_name(value)}"
    if kind == _TYPE_STRING:
        if not isinstance(value, str):
            return f"expected string, got {type_name(value)}"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "string is not valid UTF-8 (it holds a lone surrogate)"
        return None
    if kind == _TYPE_BYTES:
        if isinstance(value, bytes | bytearray | memoryview):
            return None
        return f"expected bytes, got {type_name(value)}"
    return f"unsupported field type {name}"  # pragma: no cover - every scalar is above


def _map_key_reason(key: object, kind: int) -> str | None:
    """Map keys: strings for string maps; ints (or their JSON text) for integer maps."""
    if kind == _TYPE_STRING:
        return None if isinstance(key, str) else f"map key must be a string, got {type_name(key)}"
    if kind == _TYPE_BOOL:
        if isinstance(key, bool) or key in ("true", "false"):
            return None
        return f"map key must be a bool (or 'true'/'false'), got {type_name(key)} {key!r}"
    number: object = key
    if isinstance(key, str) and re.fullmatch(r"-?\d+", key):
        number = int(key)
    reason = _scalar_reason(number, kind)
    if reason is None:
        return None
    return f"map key {key!r}: {reason}"


def _enum_reason(value: object, enum: EnumDescriptor, path: Path_) -> Found:
    if isinstance(value, str):
        if value in enum.values_by_name:
            return None
        names = ", ".join(enum.values_by_name)
        return path, f"{value!r} is not a value of enum {enum.full_name} ({names})"
    if isinstance(value, int) and not isinstance(value, bool):
        if value in enum.values_by_number:
            return None
        if enum.is_closed:
            numbers = ", ".join(f"{v.name}={v.number}" for v in enum.values)
            return path, f"{value} is not a number of closed enum {enum.full_name} ({numbers})"
        low, high = _INT32
        if not low <= value <= high:
            return path, f"{value} is out of range for enum {enum.full_name} (an int32)"
        return None
    return path, f"expected enum {enum.full_name} (a value name or number), got {type_name(value)}"


# --- well-known types ----------------------------------------------------------------------------

_DEFER = object()
_Special = Callable[[_Checker, object, "Descriptor", Path_], object]


def _timestamp(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if isinstance(value, datetime):
        return None
    if isinstance(value, str):
        from google.protobuf import timestamp_pb2

        try:
            timestamp_pb2.Timestamp().FromJsonString(value)
        except ValueError as error:
            return path, f"not an RFC 3339 timestamp for {descriptor.full_name}: {error}"
        return None
    if isinstance(value, Mapping):
        return _DEFER
    return path, (
        f"expected {descriptor.full_name} (a datetime or RFC 3339 text), got {type_name(value)}"
    )


def _duration(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if isinstance(value, timedelta):
        return None
    if isinstance(value, str):
        from google.protobuf import duration_pb2

        try:
            duration_pb2.Duration().FromJsonString(value)
        except ValueError as error:
            return path, f"not a duration for {descriptor.full_name} ('1.5s'): {error}"
        return None
    if isinstance(value, Mapping):
        return _DEFER
    return path, f"expected {descriptor.full_name} (a timedelta or '1.5s'), got {type_name(value)}"


def _wrapper(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if isinstance(value, Mapping):
        return _DEFER
    return checker.single(value, descriptor.fields_by_name["value"], path)


def _json_value(value: object, path: Path_, depth: int = 0) -> Found:
    if depth > _MAX_DEPTH:
        return path, f"nested deeper than {_MAX_DEPTH} levels"
    if value is None or isinstance(value, bool | int | float | str):
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = _json_value(item, (*path, index), depth + 1)
            if found is not None:
                return found
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, f"keys of a google.protobuf.Struct are strings, got {type_name(key)}"
            found = _json_value(item, (*path, key), depth + 1)
            if found is not None:
                return found
        return None
    return path, (
        f"{type_name(value)} is not a JSON value (google.protobuf.Value holds null, bool, "
        "number, string, list or mapping)"
    )


def _struct(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if not isinstance(value, Mapping):
        return path, f"expected {descriptor.full_name} (a mapping), got {type_name(value)}"
    return _json_value(value, path)


def _list_value(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if not isinstance(value, list | tuple):
        return path, f"expected {descriptor.full_name} (a list), got {type_name(value)}"
    return _json_value(value, path)


def _value(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    return _json_value(value, path)


def _field_mask(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    return None if isinstance(value, str) else _DEFER


def _any(checker: _Checker, value: object, descriptor: Descriptor, path: Path_) -> object:
    if not isinstance(value, Mapping) or "@type" not in value:
        return _DEFER
    url = value["@type"]
    if not isinstance(url, str):
        return (*path, "@type"), f"expected a type URL string, got {type_name(url)}"
    try:
        packed = checker.pool.FindMessageTypeByName(url.rpartition("/")[2])
    except KeyError:
        return (*path, "@type"), (
            f"type {url!r} is not defined in the contract's .proto file or its imports"
        )
    if packed.full_name in _WELL_KNOWN:  # their JSON form inside an Any is under "value"
        return checker.message_value(value.get("value"), packed, (*path, "value"))
    rest = {key: item for key, item in value.items() if key != "@type"}
    return checker.message(rest, packed, path)


_WRAPPERS = (
    "DoubleValue",
    "FloatValue",
    "Int64Value",
    "UInt64Value",
    "Int32Value",
    "UInt32Value",
    "BoolValue",
    "StringValue",
    "BytesValue",
)
_WELL_KNOWN: dict[str, _Special] = {
    "google.protobuf.Timestamp": _timestamp,
    "google.protobuf.Duration": _duration,
    "google.protobuf.Struct": _struct,
    "google.protobuf.ListValue": _list_value,
    "google.protobuf.Value": _value,
    "google.protobuf.FieldMask": _field_mask,
    "google.protobuf.Any": _any,
    **{f"google.protobuf.{name}": _wrapper for name in _WRAPPERS},
}


def packable(kind: int) -> bool:
    """True for the scalar types a repeated field packs (numbers, bools, enums)."""
    return kind in _PACKABLE
