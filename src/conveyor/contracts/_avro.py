"""Contracts from Avro schemas, checked with fastavro (the optional ``conveyor[avro]`` extra)."""

from __future__ import annotations

import array
import copy
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from conveyor.contracts._base import (
    Contract,
    is_path,
    join_path,
    load_json,
    schema_version,
    type_name,
)
from conveyor.errors import ContractViolation, PipelineDefinitionError

__all__ = ["AvroContract"]

_RECORD_TYPES = frozenset({"record", "error", "request"})
_INTEGERS = frozenset({"int", "long"})
_NO_VALUE = object()

Path_ = tuple[str | int, ...]
Found = tuple[Path_, str] | None


def _fastavro() -> ModuleType:
    try:
        import fastavro.validation
    except ImportError as error:
        raise ImportError(
            "Avro contracts need fastavro, which is not installed: pip install 'conveyor[avro]'",
            name="fastavro",
        ) from error
    return fastavro


class AvroContract(Contract):
    """A contract from an Avro schema, given as a dict or an ``.avsc`` file.

    fastavro decides whether a record is valid (its rules: no ``bool`` for ``int``/``long``,
    ints fit their width, enum symbols, missing fields take their default, extra keys are
    ignored). fastavro's own errors name the *record type* of the failing field
    (``shop.Item.price``), not where it is, so for an invalid record the contract walks
    the record along the schema to find the dotted path (``items.2.price``). Where a
    union has no matching branch, the path stops at the union unless the value's shape
    (mapping, list) fits exactly one branch, which is then followed.

    ``name`` is the file name, else the schema's full name; ``version`` is the schema's
    top-level ``x-version``, else ``version`` attribute (Avro keeps unknown attributes).

    >>> contract = AvroContract({
    ...     "type": "record", "name": "Order", "namespace": "shop", "version": 3,
    ...     "fields": [
    ...         {"name": "id", "type": "long"},
    ...         {"name": "items", "type": {"type": "array", "items": {
    ...             "type": "record", "name": "Item",
    ...             "fields": [{"name": "price", "type": "double"}]}}},
    ...     ],
    ... })
    >>> contract.name, contract.version
    ('shop.Order', '3')
    >>> bad = contract.check({"id": 1, "items": [{"price": 1.5}, {"price": "2"}]})
    >>> bad.path, bad.reason
    ('items.1.price', 'expected double, got str')

    Args:
        schema: the schema as a mapping (or a list, for a top-level union), or the path of
            an ``.avsc`` file.
        name: how violations name the contract, overriding the default above.

    Raises:
        ImportError: fastavro is not installed (``pip install 'conveyor[avro]'``).
        FileNotFoundError: the schema file does not exist.
        PipelineDefinitionError: the file is not JSON or not a valid Avro schema.
    """

    def __init__(
        self,
        schema: Mapping[str, Any] | list[Any] | str | os.PathLike[str],
        *,
        name: str | None = None,
    ) -> None:
        fastavro = _fastavro()
        if is_path(schema):
            self.path: Path | None = Path(schema)  # type: ignore[arg-type]
            source = str(self.path)
            loaded = load_json(self.path, "Avro schema")
        elif isinstance(schema, Mapping | list):
            self.path, source, loaded = None, "Avro schema", copy.deepcopy(schema)
        else:
            raise PipelineDefinitionError(
                f"an Avro contract needs a dict or an .avsc path, got {type(schema).__name__}"
            )
        named: dict[str, Any] = {}
        try:
            parsed = fastavro.parse_schema(loaded, named_schemas=named)
        except Exception as error:
            raise PipelineDefinitionError(
                f"{source}: not a valid Avro schema: {type(error).__name__}: {error}"
            ) from error
        default = self.path.name if self.path is not None else _full_name(parsed)
        super().__init__(name or default, schema_version(loaded, source))
        self.schema = loaded
        self._parsed = parsed
        self._validate: Callable[..., bool] = fastavro.validation.validate
        self._validate_many: Callable[..., bool] = fastavro.validation.validate_many
        self._locator = _Locator(named, self._validate)

    def check(self, record: object) -> ContractViolation | None:
        """Return the violation of the first failing field of ``record``, or ``None``."""
        if self._valid(record):
            return None
        found = self._locator.find(record, self._parsed, ())
        if found is None:  # fastavro and the walk disagree: report fastavro's words
            return self.violation("", self._fastavro_reason(record))
        path, reason = found
        return self.violation(join_path(path), reason)

    def check_many(self, records: Sequence[object]) -> list[tuple[int, ContractViolation]]:
        """One fastavro call for the whole batch; record by record only when it fails."""
        try:
            if self._validate_many(records, self._parsed, raise_errors=False):
                return []
        except Exception:
            pass  # a logical type's converter raised: find the record one by one
        return super().check_many(records)

    def _valid(self, record: object) -> bool:
        try:
            return self._validate(record, self._parsed, raise_errors=False)
        except Exception:  # a logical type's converter raised on a wrong value
            return False

    def _fastavro_reason(self, record: object) -> str:
        try:
            self._validate(record, self._parsed, raise_errors=True)
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return "record rejected by fastavro"

    def __reduce__(self) -> tuple[Callable[..., AvroContract], tuple[Any]]:
        return (functools.partial(AvroContract, name=self.name), (self.schema,))


def _full_name(parsed: object) -> str:
    if isinstance(parsed, Mapping) and isinstance(parsed.get("name"), str):
        return str(parsed["name"])
    return "avro-schema"


class _Locator:
    """Walks a record along a parsed schema to the first value fastavro would reject."""

    def __init__(self, named: dict[str, Any], validate: Callable[..., bool]) -> None:
        self.named = named
        self.validate = validate

    def find(self, datum: object, schema: Any, path: Path_) -> Found:
        if datum is _NO_VALUE:
            return (
                None if _accepts_none(schema, self.named) else (path, "required field is missing")
            )
        if isinstance(schema, list):
            return self._union(datum, schema, path)
        if isinstance(schema, str) and schema in self.named:
            return self.find(datum, self.named[schema], path)
        if isinstance(schema, dict):
            kind = schema["type"]
            if kind in _RECORD_TYPES:
                return self._record(datum, schema, path)
            if kind == "array":
                return self._array(datum, schema, path)
            if kind == "map":
                return self._map(datum, schema, path)
        return self._leaf(datum, schema, path)

    def _record(self, datum: object, schema: dict[str, Any], path: Path_) -> Found:
        name = schema["name"]
        if not isinstance(datum, Mapping):
            return path, f"expected record {name}, got {type_name(datum)}"
        if "-type" in datum and datum["-type"] != name:
            return path, f"'-type' is {datum['-type']!r}, expected {name!r}"
        for field in schema["fields"]:
            value = datum.get(field["name"], field.get("default", _NO_VALUE))
            found = self.find(value, field["type"], (*path, field["name"]))
            if found is not None:
                return found
        return None

    def _array(self, datum: object, schema: dict[str, Any], path: Path_) -> Found:
        if not isinstance(datum, Sequence | array.array) or isinstance(datum, str):
            return path, f"expected array, got {type_name(datum)}"
        for index, item in enumerate(datum):
            found = self.find(item, schema["items"], (*path, index))
            if found is not None:
                return found
        return None

    def _map(self, datum: object, schema: dict[str, Any], path: Path_) -> Found:
        if not isinstance(datum, Mapping):
            return path, f"expected map, got {type_name(datum)}"
        for key, value in datum.items():
            if not isinstance(key, str):
                return path, f"map keys must be strings, got {type_name(key)}"
            found = self.find(value, schema["values"], (*path, key))
            if found is not None:
                return found
        return None

    def _union(self, datum: object, branches: list[Any], path: Path_) -> Found:
        if isinstance(datum, tuple):  # fastavro's (branch name, value) notation
            return self._named_branch(datum, branches, path)
        failures: list[tuple[Any, tuple[Path_, str]]] = []
        for branch in branches:
            found = self.find(datum, branch, path)
            if found is None:
                return None
            failures.append((branch, found))
        fits = [found for branch, found in failures if _shape_fits(datum, branch, self.named)]
        if len(fits) == 1:
            return fits[0]
        expected = " | ".join(_describe(branch) for branch in branches)
        return path, f"expected {expected}, got {type_name(datum)}"

    def _named_branch(self, datum: tuple[Any, ...], branches: list[Any], path: Path_) -> Found:
        if len(datum) != 2 or not isinstance(datum[0], str):
            return path, "a tuple in a union must be (branch name, value)"
        name, value = datum
        for branch in branches:
            if _branch_name(branch) == name:
                return self.find(value, branch, path)
        return path, f"the union has no branch named {name!r}"

    def _leaf(self, datum: object, schema: Any, path: Path_) -> Found:
        try:
            if self.validate(datum, schema, raise_errors=False):
                return None
        except Exception as error:
            return path, f"{_describe(schema)} rejected the value: {type(error).__name__}: {error}"
        return path, _leaf_reason(datum, schema)


def _leaf_reason(datum: object, schema: Any) -> str:
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if kind == "enum":
        return f"{_short(datum)} is not a symbol of enum {schema['name']} {schema['symbols']}"
    if kind in _INTEGERS and isinstance(datum, int) and not isinstance(datum, bool):
        return f"{datum} is out of range for {kind}"
    if kind == "fixed" and isinstance(datum, bytes):
        return f"expected {schema['size']} bytes for fixed {schema['name']}, got {len(datum)}"
    return f"expected {_describe(schema)}, got {type_name(datum)}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _describe(schema: Any) -> str:
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        base = schema.get("name") or schema["type"]
        return f"{base} ({logical})" if logical else str(base)
    return str(schema)


def _branch_name(branch: Any) -> object:
    return branch.get("name") if isinstance(branch, dict) else branch


def _resolve(schema: Any, named: dict[str, Any]) -> Any:
    return named.get(schema, schema) if isinstance(schema, str) else schema


def _accepts_none(schema: Any, named: dict[str, Any]) -> bool:
    schema = _resolve(schema, named)
    if isinstance(schema, list):
        return any(_accepts_none(branch, named) for branch in schema)
    if isinstance(schema, dict):
        return not schema.get("name") and _accepts_none(schema["type"], named)
    return bool(schema == "null")


def _shape_fits(datum: object, branch: Any, named: dict[str, Any]) -> bool:
    schema = _resolve(branch, named)
    kind = schema.get("type") if isinstance(schema, dict) else schema
    if isinstance(datum, Mapping):
        return kind in _RECORD_TYPES or kind == "map"
    if isinstance(datum, list | tuple):
        return kind == "array"
    return False
