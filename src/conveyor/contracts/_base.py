"""The :class:`Contract` interface and helpers shared by the contract kinds."""

from __future__ import annotations

import errno
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor.errors import ContractViolation, PipelineDefinitionError

__all__ = ["Contract"]

_VERSION_KEYS = ("x-version", "version")


class Contract(ABC):
    """What a stage takes or gives: checks records and names the first failing field.

    A contract never raises for an invalid record and never modifies one: :meth:`check`
    returns a :class:`~conveyor.errors.ContractViolation` (``None`` when the record is
    valid), and :meth:`check_many` returns ``(index, violation)`` for each bad record of
    a batch. Subclasses implement :meth:`check`; the default :meth:`check_many` calls it
    per record, and the built-in contracts override it with a faster bulk path.

    >>> class Positive(Contract):
    ...     def __init__(self) -> None:
    ...         super().__init__("positive")
    ...     def check(self, record: object) -> ContractViolation | None:
    ...         ok = isinstance(record, int) and record > 0
    ...         return None if ok else self.violation("", "must be a positive int")
    >>> [(i, v.reason) for i, v in Positive().check_many([1, -2, 3, "4"])]
    [(1, 'must be a positive int'), (3, 'must be a positive int')]
    >>> print(Positive().check(0))
    record violates contract positive: must be a positive int

    Attributes:
        name: how violations name this contract (a type name or a schema file name).
        version: the contract's version, or ``None`` when it declares none.
        always: checked on every record whatever the run's ``contracts`` setting (a
            contract the run itself depends on, such as what a persisted dataset can store).
    """

    name: str
    version: str | None
    always: bool = False

    def __init__(self, name: str, version: str | None = None) -> None:
        self.name = name
        self.version = version

    @abstractmethod
    def check(self, record: object) -> ContractViolation | None:
        """Return the violation of the first failing field of ``record``, or ``None``."""

    def check_many(self, records: Sequence[object]) -> list[tuple[int, ContractViolation]]:
        """Check a batch; return ``(index, violation)`` per bad record, indices ascending."""
        check = self.check
        found: list[tuple[int, ContractViolation]] = []
        for index, record in enumerate(records):
            violation = check(record)
            if violation is not None:
                found.append((index, violation))
        return found

    def violation(self, path: str, reason: str) -> ContractViolation:
        """A :class:`~conveyor.errors.ContractViolation` of this contract (no edge/stage)."""
        return ContractViolation(self.name, path, reason)

    def __repr__(self) -> str:
        version = f", version={self.version!r}" if self.version is not None else ""
        return f"{type(self).__name__}(name={self.name!r}{version})"


def is_path(spec: object) -> bool:
    """True for the forms that name a schema file: ``str`` and ``os.PathLike``."""
    return isinstance(spec, str | os.PathLike)


def load_json(path: str | os.PathLike[str], what: str) -> Any:
    """Read a JSON file; a missing file is a ``FileNotFoundError`` naming the path."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"{what} file not found: {file}", str(file)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise PipelineDefinitionError(
            f"{file}:{error.lineno}:{error.colno}: {what} is not valid JSON: {error.msg}"
        ) from error


def schema_version(schema: object, source: str) -> str | None:
    """The version a schema declares in its top-level ``x-version`` or ``version`` key."""
    if not isinstance(schema, Mapping):
        return None
    for key in _VERSION_KEYS:
        if key in schema:
            value = schema[key]
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                raise PipelineDefinitionError(
                    f"{source}: {key!r} must be a string or a number, got {type(value).__name__}"
                )
            return str(value)
    return None


def join_path(parts: Sequence[str | int]) -> str:
    """``["items", 2, "price"]`` -> ``"items.2.price"``."""
    return ".".join(str(part) for part in parts)


def type_name(value: object) -> str:
    """The short type name used in violation reasons (``str``, ``NoneType`` …)."""
    return type(value).__name__
