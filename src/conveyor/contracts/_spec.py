"""``contract_for``: one entry point from whatever a stage declares to a :class:`Contract`."""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.contracts._avro import AvroContract
from conveyor.contracts._base import Contract, is_path
from conveyor.contracts._jsonschema import JsonSchemaContract
from conveyor.contracts._protobuf import ProtobufContract, is_proto_spec
from conveyor.contracts._typed import TypeContract
from conveyor.errors import PipelineDefinitionError

__all__ = ["contract_for"]

_ACCEPTED = (
    "a Contract, a Python type (a pydantic model, dataclass, TypedDict, builtin, union or "
    "container such as list[int]), a JSON Schema dict, or the path of a .json (JSON Schema), "
    ".avsc (Avro) or .proto (Protobuf, 'file.proto:Message' to name the message) file"
)
_AVRO_NAMED_TYPES = frozenset({"record", "enum", "fixed"})


def contract_for(spec: object) -> Contract:
    """The contract a stage declares, from any of the forms a stage may use.

    - a :class:`Contract`: returned as it is;
    - a Python type (``Order``, ``list[int]``, ``int | None``): a :class:`TypeContract`;
    - a dict: a :class:`JsonSchemaContract`, or an :class:`AvroContract` when it is
      plainly Avro (``"type"`` is ``record``, ``enum`` or ``fixed``, which JSON Schema
      does not have);
    - a ``str`` or ``Path`` ending ``.json`` or ``.avsc``: the schema in that file;
    - a ``str`` or ``Path`` ending ``.proto``, or ``.proto:Message`` to name one message of
      the file: a :class:`ProtobufContract` (the file is compiled with grpcio-tools' protoc).

    >>> contract_for(int).check("1").reason
    'Input should be a valid integer'
    >>> contract_for({"type": "object", "title": "point"}).name
    'point'
    >>> contract_for(42)
    Traceback (most recent call last):
    ...
    conveyor.errors.PipelineDefinitionError: cannot make a contract from int 42; a contract \
is a Contract, a Python type (a pydantic model, dataclass, TypedDict, builtin, union or \
container such as list[int]), a JSON Schema dict, or the path of a .json (JSON Schema), \
.avsc (Avro) or .proto (Protobuf, 'file.proto:Message' to name the message) file

    Raises:
        PipelineDefinitionError: ``spec`` is none of these (it is a ``TypeError``), or the
            type or schema it names cannot be checked.
        FileNotFoundError: a schema path that does not exist.
    """
    if isinstance(spec, Contract):
        return spec
    if is_proto_spec(spec):
        return ProtobufContract(spec)  # type: ignore[arg-type]
    if is_path(spec):
        return _from_file(Path(spec))  # type: ignore[arg-type]
    if isinstance(spec, Mapping):
        if spec.get("type") in _AVRO_NAMED_TYPES:
            return AvroContract(spec)
        return JsonSchemaContract(spec)
    if _is_type(spec):
        return TypeContract(spec)
    raise PipelineDefinitionError(
        f"cannot make a contract from {type(spec).__name__} {_short(spec)}; "
        f"a contract is {_ACCEPTED}"
    )


def _from_file(path: Path) -> Contract:
    suffix = path.suffix.lower()
    if suffix == ".json":
        return JsonSchemaContract(path)
    if suffix == ".avsc":
        return AvroContract(path)
    raise PipelineDefinitionError(
        f"cannot make a contract from the file {str(path)!r}: a contract file ends with "
        f".json (JSON Schema), .avsc (Avro) or .proto (Protobuf); a contract is {_ACCEPTED}"
    )


def _is_type(spec: object) -> bool:
    """Classes and typing constructs (``list[int]``, ``int | None``, ``Literal[1]`` …)."""
    if isinstance(spec, type | types.UnionType | types.GenericAlias):
        return True
    return typing.get_origin(spec) is not None or spec is Any


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."
