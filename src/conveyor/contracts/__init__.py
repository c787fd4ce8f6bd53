"""Contracts: what a stage takes and gives, checked at its edges.

A stage declares an input and an output contract, as a Python type or a schema file under
``contracts/`` (JSON Schema ``.json``, Avro ``.avsc``, Protobuf ``.proto``);
:func:`contract_for` turns any of those forms into a :class:`Contract`.
The runner asks a :class:`ContractCheck` to check each micro-batch (``"all"`` records, a
``"sample"``, or ``"off"``); every violation is a :class:`~conveyor.errors.ContractViolation`
*value* naming the contract, the failing field path (``"address.zip"``,
``"items.2.price"``), the reason, the edge and the stage, ready to become a dead letter.

Design:

- **Checks return, never raise.** ``check(record)`` gives a violation or ``None``;
  ``check_many(records)`` gives ``(index, violation)`` for the bad records of a batch.
  Only building a contract raises (``PipelineDefinitionError``, ``FileNotFoundError``):
  a broken contract is found when the pipeline is built, not mid-stream.
- **Records are never modified.** A check validates and throws its result away: the
  original record passes on. (That is why JSON Schema defaults are not filled in.)
- **The all-valid batch is the fast path.** :class:`TypeContract` validates a whole batch
  as one ``list[T]`` in pydantic's Rust core and looks at records one by one only when
  that fails; JSON Schema validators are compiled once; fastavro validates in C; a
  ``.proto`` file is compiled once per content.
- **One path format.** Dotted field names and list indices, ``""`` for the whole record,
  the same for every contract kind. Each kind documents how it finds the path.
- **Picklable.** Contracts and violations pickle (violations cross process boundaries
  with dead letters; contracts are rebuilt from their type or schema).

Strictness: a contract catches a value of the wrong type instead of converting it.
:class:`TypeContract` runs pydantic in strict mode, so ``"1"`` for an ``int`` or ``True``
for an ``int`` is a violation, as it is for JSON Schema (``"type": "integer"``) and Avro
(``"long"``). Strict pydantic still accepts a ``dict`` record for a model, a TypedDict and
(by Conveyor's rewrite) a dataclass when its fields are right; the details, and the one
limit (a stdlib dataclass inside a *nested* ``BaseModel`` needs an instance), are in
:class:`TypeContract`'s module. Text that needs parsing (dates, enums, UUIDs from JSON)
must be parsed by a stage before a contract that declares the parsed type.

>>> from dataclasses import dataclass
>>> @dataclass
... class Point:
...     x: int
...     y: int
>>> contract = contract_for(Point)
>>> contract.check({"x": 1, "y": 2}) is None
True
>>> print(contract.check({"x": 1, "y": "2"}))
field 'y' violates contract Point: Input should be a valid integer
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from conveyor.core._lazy import lazy_attributes

if TYPE_CHECKING:
    from conveyor.contracts._avro import AvroContract
    from conveyor.contracts._base import Contract
    from conveyor.contracts._check import (
        CheckMode,
        ContractCheck,
        ContractCheckStatistics,
        Edge,
    )
    from conveyor.contracts._compat import (
        BreakingChange,
        ContractFile,
        check_compatibility,
        check_directory,
        find_contract_versions,
    )
    from conveyor.contracts._jsonschema import JsonSchemaContract
    from conveyor.contracts._protobuf import ProtobufContract, ProtoFile, compile_proto
    from conveyor.contracts._spec import contract_for
    from conveyor.contracts._typed import TypeContract

# Each name is imported from its module when first used: checking contracts needs pydantic,
# fastjsonschema, fastavro or protobuf, and a run without contracts should not pay for
# importing them.
_MODULES = {
    "AvroContract": "_avro",
    "BreakingChange": "_compat",
    "CheckMode": "_check",
    "Contract": "_base",
    "ContractCheck": "_check",
    "ContractCheckStatistics": "_check",
    "ContractFile": "_compat",
    "Edge": "_check",
    "JsonSchemaContract": "_jsonschema",
    "ProtoFile": "_protobuf",
    "ProtobufContract": "_protobuf",
    "TypeContract": "_typed",
    "check_compatibility": "_compat",
    "check_directory": "_compat",
    "compile_proto": "_protobuf",
    "contract_for": "_spec",
    "find_contract_versions": "_compat",
}

__all__ = [
    "AvroContract",
    "BreakingChange",
    "CheckMode",
    "Contract",
    "ContractCheck",
    "ContractCheckStatistics",
    "ContractFile",
    "Edge",
    "JsonSchemaContract",
    "ProtoFile",
    "ProtobufContract",
    "TypeContract",
    "check_compatibility",
    "check_directory",
    "compile_proto",
    "contract_for",
    "find_contract_versions",
]


__getattr__ = lazy_attributes(
    globals(),
    {name: f"conveyor.contracts.{module}" for name, module in _MODULES.items()},
    "conveyor.contracts",
)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
