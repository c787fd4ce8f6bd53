"""Contracts from Python types, checked with pydantic in strict mode.

How a type is checked:

- ``validate_python(record, strict=True)``: no coercion, so ``"1"`` for an ``int``, ``1``
  for a ``str``, ``True`` for an ``int`` and ``"2024-01-01"`` for a ``datetime`` are
  violations. The record passes on unchanged, so the stage gets exactly what was checked;
  coercing here would wave through records the stage cannot use.
- Strict pydantic accepts a ``dict`` for a ``BaseModel`` and a ``TypedDict``, but only
  *instances* for a dataclass. Records are usually dicts, so where Conveyor builds the
  validator it rewrites each dataclass node to "a dict with the dataclass's fields" (its
  pydantic config, e.g. ``extra="forbid"``, kept); an instance is checked through its field
  values, which also catches a wrongly-typed stdlib dataclass that nothing validated.
- The record's own ``BaseModel`` (one without model validators, a custom ``__init__``,
  ``model_post_init`` or a root) is checked as "a dict with the model's fields", like a
  dataclass: no model instance is built only to be thrown away (a third of the cost of a
  batch), and an instance is checked through its field values.
- A *nested* ``BaseModel`` (or one with model validators) is validated by its own compiled
  validator (pydantic reuses it and ignores rewrites inside it). Two consequences: such a
  model *instance* is trusted as pydantic trusts it (set ``revalidate_instances="always"``
  in the model's config to recheck), and inside it a stdlib-dataclass field needs a
  dataclass instance: declare nested parts of dict records as models or TypedDicts.

The violation's path is the pydantic ``loc`` of the first error, dotted, with union member
labels and discriminator tags taken out (they are not fields): they are recognised because
they do not name anything in the record. When no member of a plain union matches, the path
is the union's field and the reason lists each member's first error.
"""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast, overload

from pydantic import TypeAdapter, ValidationError
from pydantic_core import CoreSchema, SchemaValidator, core_schema

from conveyor.contracts._base import Contract, join_path
from conveyor.errors import ContractViolation, PipelineDefinitionError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails

__all__ = ["TypeContract"]

T = TypeVar("T")

# keys of a core schema node whose values hold further schema nodes
_SCHEMA_KEYS = frozenset(
    {
        "schema",
        "items_schema",
        "keys_schema",
        "values_schema",
        "choices",
        "definitions",
        "fields",
        "steps",
        "lax_schema",
        "strict_schema",
        "python_schema",
        "json_schema",
        "return_schema",
        "arguments_schema",
        "var_args_schema",
        "var_kwargs_schema",
        "extras_schema",
        "extras_keys_schema",
    }
)
# error types whose last loc item is a field that is absent from the record
_MISSING_TYPES = frozenset(
    {
        "missing",
        "missing_argument",
        "missing_keyword_only_argument",
        "missing_positional_only_argument",
    }
)
_DICT_KEY = "[key]"


class _Validator(Protocol):
    def validate_python(self, input: Any, *, strict: bool | None = None) -> Any: ...


class TypeContract(Contract, Generic[T]):
    """A contract from a Python type: a pydantic model, dataclass, TypedDict, builtin,
    union or container, checked strictly (no coercion; see :mod:`conveyor.contracts`).

    >>> from pydantic import BaseModel
    >>> class Order(BaseModel):
    ...     id: int
    ...     prices: list[float]
    >>> contract = TypeContract(Order)
    >>> contract.check({"id": 1, "prices": [9.5]}) is None
    True
    >>> bad = contract.check({"id": 1, "prices": [9.5, "2"]})
    >>> bad.path, bad.reason
    ('prices.1', 'Input should be a valid number')
    >>> contract.check({"id": "1", "prices": []}).reason
    'Input should be a valid integer'
    >>> [(i, v.path) for i, v in TypeContract(list[int]).check_many([[1], [2, "3"], [4]])]
    [(1, '1')]

    Args:
        tp: the type records must have.
        name: how violations name the contract; default the type's qualified name.
        version: the contract's version, if it has one.

    Raises:
        PipelineDefinitionError: pydantic cannot build a validator for ``tp``.
    """

    @overload
    def __init__(
        self, tp: type[T], *, name: str | None = None, version: str | None = None
    ) -> None: ...

    @overload
    def __init__(
        self: TypeContract[Any], tp: object, *, name: str | None = None, version: str | None = None
    ) -> None: ...

    def __init__(self, tp: object, *, name: str | None = None, version: str | None = None) -> None:
        super().__init__(name if name is not None else _type_name(tp), version)
        self.type = tp
        self._one = _strict_validator(tp, self.name)
        self._many = _strict_validator(list.__class_getitem__(tp), self.name)

    def check(self, record: object) -> ContractViolation | None:
        """Return the violation of the first failing field of ``record``, or ``None``."""
        try:
            self._one.validate_python(record, strict=True)
        except ValidationError as error:
            return self._from_errors(record, _errors(error))
        except Exception as error:  # a user validator raised something pydantic passes on
            return self.violation("", f"validation raised {type(error).__name__}: {error}")
        return None

    def check_many(self, records: Sequence[object]) -> list[tuple[int, ContractViolation]]:
        """Validate the whole batch as one ``list[T]``; only its errors are looked at
        record by record, so an all-valid batch costs one pydantic call."""
        if not records:
            return []
        batch = records if isinstance(records, list) else list(records)
        # Validating builds a model instance per record, thrown away at once (freed by
        # reference counting): collecting garbage meanwhile only costs time (a third here).
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            self._many.validate_python(batch, strict=True)
        except ValidationError as error:
            grouped = _by_index(_errors(error))
            if grouped is None:
                return super().check_many(batch)
            return [(i, self._from_errors(batch[i], errors)) for i, errors in grouped]
        except Exception:  # a user validator raised: find out which record, one by one
            return super().check_many(batch)
        finally:
            if collecting:
                gc.enable()
        return []

    def _from_errors(self, record: object, errors: Sequence[ErrorDetails]) -> ContractViolation:
        path, reason = _describe(record, errors)
        return self.violation(path, reason)

    def __reduce__(self) -> tuple[Callable[..., TypeContract[Any]], tuple[object]]:
        rebuild = functools.partial(TypeContract, name=self.name, version=self.version)
        return (rebuild, (self.type,))


def _type_name(tp: object) -> str:
    if isinstance(tp, type) and not hasattr(tp, "__origin__"):
        return tp.__qualname__
    return re.sub(r"\b(typing_extensions|typing|builtins)\.", "", repr(tp))


def _strict_validator(tp: object, name: str) -> _Validator:
    try:
        adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, tp))
        relaxer = _DataclassRelaxer()
        schema = relaxer.node(adapter.core_schema)
        unwrapped = _without_top_instance(schema)
        if not relaxer.found and unwrapped is None:
            return adapter.validator
        return SchemaValidator(unwrapped or schema)
    except Exception as error:
        raise PipelineDefinitionError(
            f"cannot build a type contract for {name}: {error}; a type contract needs a type "
            "pydantic can validate (BaseModel, dataclass, TypedDict, builtins and their unions "
            "and containers)"
        ) from error


class _DataclassRelaxer:
    """Rewrites dataclass nodes of a core schema so that strict mode accepts a dict."""

    def __init__(self) -> None:
        self.found = False

    def node(self, schema: Any) -> Any:
        new = dict(schema)
        for key in _SCHEMA_KEYS.intersection(schema):
            new[key] = self.value(schema[key])
        if new.get("type") == "dataclass":
            self.found = True
            return _dataclass_as_dict(new)
        return new

    def value(self, value: Any) -> Any:
        if isinstance(value, dict):
            if isinstance(value.get("type"), str):
                return self.node(value)
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value


def _dataclass_as_dict(node: dict[str, Any]) -> CoreSchema:
    """A dataclass node as a TypedDict of its fields, after turning instances into dicts."""
    fields: dict[str, core_schema.TypedDictField] = {}
    for field in node["schema"]["fields"]:
        inner = field["schema"]
        required = (
            field.get("init", True) is not False
            and not field.get("init_only", False)
            and inner.get("type") != "default"
        )
        fields[field["name"]] = core_schema.typed_dict_field(
            inner, required=required, validation_alias=field.get("validation_alias")
        )
    as_dict = core_schema.typed_dict_schema(fields, config=node.get("config"))
    to_dict = functools.partial(_field_values, node["cls"], tuple(fields))
    return core_schema.no_info_before_validator_function(to_dict, as_dict, ref=node.get("ref"))


def _without_top_instance(schema: Any) -> Any:
    """The schema with its record-level model node (the type itself, or a list's items)
    checked as a TypedDict of its fields, or ``None`` if there is none to rewrite: checking
    a record then builds no model instance, which is thrown away at once and is a third of
    the cost of checking a batch. Nested models are left as they are."""
    if schema.get("type") == "definitions":
        inner = _without_top_instance(schema["schema"])
        return None if inner is None else {**schema, "schema": inner}
    if schema.get("type") == "list":
        items = schema.get("items_schema")
        if isinstance(items, dict) and items.get("type") == "model" and _plain_model(items):
            return {**schema, "items_schema": _model_as_dict(items)}
        return None
    if schema.get("type") == "model" and _plain_model(schema):
        return _model_as_dict(schema)
    return None


def _plain_model(node: dict[str, Any]) -> bool:
    """A model node whose validation is its fields' alone: no model validators, custom
    ``__init__``, ``model_post_init`` or root model."""
    cls = node.get("cls")
    decorators = getattr(cls, "__pydantic_decorators__", None)
    return (
        decorators is not None
        and not decorators.model_validators
        and not node.get("root_model")
        and not node.get("custom_init")
        and "post_init" not in node
        and node.get("schema", {}).get("type") == "model-fields"
        and not node["schema"].get("computed_fields")
    )


def _model_as_dict(node: dict[str, Any]) -> CoreSchema:
    """A plain model node as a TypedDict of its fields (instances of it pass as dicts)."""
    fields: dict[str, core_schema.TypedDictField] = {}
    for name, field in node["schema"]["fields"].items():
        inner = field["schema"]
        fields[name] = core_schema.typed_dict_field(
            inner,
            required=inner.get("type") != "default",
            validation_alias=field.get("validation_alias"),
        )
    config = dict(node.get("config") or {})
    extra = node["schema"].get("extra_behavior")
    if extra is not None:
        config.setdefault("extra_fields_behavior", extra)
    as_dict = core_schema.typed_dict_schema(fields, config=cast(Any, config))
    to_dict = functools.partial(_field_values, node["cls"], tuple(fields))
    return core_schema.no_info_before_validator_function(to_dict, as_dict, ref=node.get("ref"))


_ABSENT = object()


def _field_values(cls: type, names: tuple[str, ...], value: object) -> object:
    if not isinstance(value, cls):
        return value
    values = {name: getattr(value, name, _ABSENT) for name in names}
    return {name: item for name, item in values.items() if item is not _ABSENT}


def _errors(error: ValidationError) -> list[ErrorDetails]:
    return error.errors(include_url=False, include_context=False, include_input=False)


def _by_index(errors: Sequence[ErrorDetails]) -> list[tuple[int, list[ErrorDetails]]] | None:
    """Errors of a ``list[T]`` validation grouped per record index (None if not indexed)."""
    grouped: dict[int, list[ErrorDetails]] = {}
    for error in errors:
        loc = error["loc"]
        if not loc or not isinstance(loc[0], int):
            return None
        grouped.setdefault(loc[0], []).append({**error, "loc": loc[1:]})
    return sorted(grouped.items())


@dataclass(frozen=True, slots=True)
class _Located:
    """An error's loc resolved against the record."""

    parts: tuple[str | int, ...]  # the loc without union labels: a field path
    cut: int | None  # where in ``parts`` the first union label stood, if any
    label: str | None  # that label
    key: bool  # the error is about the key at ``parts`` of a dict, not its value


def _describe(record: object, errors: Sequence[ErrorDetails]) -> tuple[str, str]:
    """(path, reason) of a record's first error, union labels resolved."""
    first = errors[0]
    where = _locate(record, first)
    reason = f"key: {first['msg']}" if where.key else first["msg"]
    if where.cut is None:
        return join_path(where.parts), reason
    cut, prefix = where.cut, where.parts[: where.cut]
    members: dict[str, str] = {}
    for error in errors:
        other = _locate(record, error)
        if other.cut == cut and other.parts[:cut] == prefix and other.label is not None:
            inside = join_path(other.parts[cut:])
            members.setdefault(other.label, f"{inside}: {error['msg']}" if inside else error["msg"])
    if len(members) == 1:  # a tagged union (or one member tried): the label is transparent
        return join_path(where.parts), reason
    listed = "; ".join(f"{label}: {detail}" for label, detail in members.items())
    return join_path(prefix), f"matches no member of the union ({listed})"


_UNKNOWN = object()


def _locate(record: object, error: ErrorDetails) -> _Located:
    loc = error["loc"]
    missing = error["type"] in _MISSING_TYPES
    current: object = record
    parts: list[str | int] = []
    cut: int | None = None
    label: str | None = None
    for position, item in enumerate(loc):
        if item == _DICT_KEY:
            return _Located(tuple(parts), cut, label, key=True)
        if current is not _UNKNOWN:
            child = _child(current, item)
            last = position == len(loc) - 1
            if child is not _UNKNOWN or (last and missing):
                parts.append(item)
                current = child
                continue
            if isinstance(item, str):  # names nothing in the record: a union label or tag
                if cut is None:
                    cut, label = len(parts), item
                continue
        parts.append(item)
        current = _UNKNOWN
    return _Located(tuple(parts), cut, label, key=False)


_SCALARS = (str, bytes, bytearray, int, float, complex, type(None))


def _child(value: object, item: str | int) -> object:
    if isinstance(value, Mapping):
        return value.get(item, _UNKNOWN)
    if isinstance(item, int):
        if isinstance(value, Sequence) and not isinstance(value, _SCALARS):
            return value[item] if -len(value) <= item < len(value) else _UNKNOWN
        return _UNKNOWN
    if isinstance(value, (*_SCALARS, Sequence)):
        return _UNKNOWN
    try:
        return getattr(value, item, _UNKNOWN)
    except Exception:
        return _UNKNOWN
