"""Contracts from JSON Schema files, compiled with fastjsonschema."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import fastjsonschema

from conveyor.contracts._base import Contract, is_path, join_path, load_json, schema_version
from conveyor.errors import ContractViolation, PipelineDefinitionError

__all__ = ["JsonSchemaContract"]

_UNSUPPORTED_DRAFTS = ("2019-09", "2020-12")


class JsonSchemaContract(Contract):
    """A contract from a JSON Schema (drafts 4, 6 and 7), given as a dict or a ``.json`` file.

    The schema is compiled once with `fastjsonschema` (defaults are *not* filled into
    records: records are never modified). Only references inside the schema
    (``"#/definitions/..."``) are resolved; a ``$ref`` to another file or URL is refused
    when the contract is built, so checking never touches the network.

    ``name`` is the file name, else the schema's ``title``, else its ``$id``;
    ``version`` is the schema's top-level ``x-version`` key, else ``version`` (a string or
    a number; ``$id`` is not parsed for a version).

    >>> contract = JsonSchemaContract({
    ...     "title": "order", "x-version": "2",
    ...     "type": "object", "required": ["id"],
    ...     "properties": {
    ...         "id": {"type": "integer"},
    ...         "items": {"type": "array", "items": {
    ...             "type": "object", "properties": {"price": {"type": "number"}}}},
    ...     },
    ... })
    >>> contract.name, contract.version
    ('order', '2')
    >>> bad = contract.check({"id": 1, "items": [{"price": 1}, {"price": "2"}]})
    >>> bad.path, bad.reason
    ('items.1.price', 'must be number')
    >>> contract.check({}).path
    'id'

    Args:
        schema: the schema as a mapping, or the path of a ``.json`` file holding it.
        name: how violations name the contract, overriding the default above.

    Raises:
        FileNotFoundError: the schema file does not exist.
        PipelineDefinitionError: the file is not JSON or the schema cannot be compiled.
    """

    def __init__(
        self, schema: Mapping[str, Any] | str | os.PathLike[str], *, name: str | None = None
    ) -> None:
        if is_path(schema):
            self.path: Path | None = Path(schema)  # type: ignore[arg-type]
            source = str(self.path)
            loaded = load_json(self.path, "JSON Schema")
        elif isinstance(schema, Mapping):
            self.path, source, loaded = None, "JSON Schema", copy.deepcopy(dict(schema))
        else:
            raise PipelineDefinitionError(
                f"a JSON Schema contract needs a dict or a .json path, got {type(schema).__name__}"
            )
        if not isinstance(loaded, dict):
            raise PipelineDefinitionError(
                f"{source}: a JSON Schema contract must be an object, got {type(loaded).__name__}"
            )
        super().__init__(name or _default_name(self.path, loaded), schema_version(loaded, source))
        self.schema: dict[str, Any] = loaded
        self._validate = _compile(loaded, source)

    def check(self, record: object) -> ContractViolation | None:
        """Return the violation of the first failing field of ``record``, or ``None``."""
        try:
            self._validate(record)
        except fastjsonschema.JsonSchemaValueException as error:
            return self.violation(*_describe(error))
        except Exception as error:
            return self.violation("", f"validation raised {type(error).__name__}: {error}")
        return None

    def __reduce__(self) -> tuple[Callable[..., JsonSchemaContract], tuple[dict[str, Any]]]:
        return (functools.partial(JsonSchemaContract, name=self.name), (self.schema,))


def _default_name(path: Path | None, schema: Mapping[str, Any]) -> str:
    if path is not None:
        return path.name
    for key in ("title", "$id"):
        if isinstance(schema.get(key), str) and schema[key]:
            return str(schema[key])
    return "json-schema"


def _compile(schema: dict[str, Any], source: str) -> Callable[[object], object]:
    declared = schema.get("$schema")
    if isinstance(declared, str) and any(draft in declared for draft in _UNSUPPORTED_DRAFTS):
        raise PipelineDefinitionError(
            f"{source}: JSON Schema {declared} is not supported (drafts 4, 6 and 7 are); "
            'set "$schema" to "http://json-schema.org/draft-07/schema#"'
        )
    try:
        validate: Callable[[object], object] = fastjsonschema.compile(
            schema, handlers=_NoRemoteRefs(), use_default=False
        )
    except PipelineDefinitionError as error:
        raise PipelineDefinitionError(f"{source}: {error}") from error
    except Exception as error:
        raise PipelineDefinitionError(
            f"{source}: not a usable JSON Schema: {type(error).__name__}: {error}"
        ) from error
    return validate


def _refuse(uri: str) -> NoReturn:
    raise PipelineDefinitionError(
        f"$ref {uri!r} points outside the schema; contracts resolve only references inside "
        "their own file (#/definitions/...): copy the referenced schema into definitions"
    )


class _NoRemoteRefs(Mapping[str, Callable[[str], Any]]):
    """fastjsonschema's ref handlers: every scheme (and none) is refused, never fetched."""

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return _refuse

    def __contains__(self, scheme: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _describe(error: fastjsonschema.JsonSchemaValueException) -> tuple[str, str]:
    """(path, reason) of fastjsonschema's error: its path without the leading ``data``."""
    parts: list[str | int] = list(error.path[1:])
    prefix = f"{error.name} "
    reason = error.message[len(prefix) :] if error.message.startswith(prefix) else error.message
    if error.rule == "required" and isinstance(error.value, dict):
        required = (error.definition or {}).get("required", [])
        missing = [key for key in required if key not in error.value]
        if missing:
            parts.append(missing[0])
            also = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
            reason = f"required property is missing{also}"
    return join_path(parts), reason
