"""The stored form of a stateful stage's state in a checkpoint: JSON text, never pickle.

A checkpoint is plain JSON (ADR 0006), and so is the state in it (ADR 0011): loading a
checkpoint never runs code named by it. JSON's own values are written as they are, by the C
encoder (a checkpoint of a window holding thousands of records costs milliseconds). Values
JSON has no form for are written as a tagged object ``{"$conveyor": TYPE, "v": …}`` and
come back exactly: ``datetime``, ``date``, ``time``, ``timedelta``, ``Decimal``, ``UUID``,
``bytes``, ``set``, ``frozenset``, an ``Enum`` member, a dataclass instance and a Pydantic
model (the last three by ``module:QualName`` of a class that must be importable and of that
kind: nothing else is ever called). What JSON changes on the way: a tuple comes back as a
list, and a dict's ``int``/``float``/``bool``/``None`` keys as strings. Keys of the state
itself (the stage's keys) and members of sets come back hashable (lists as tuples).
Anything else raises :class:`TypeError` naming the type.

>>> from datetime import datetime, UTC
>>> text = dumps({"at": datetime(2026, 1, 2, tzinfo=UTC), "tags": {"a"}, "n": (1, 2)})
>>> back = loads(text)
>>> back["at"] == datetime(2026, 1, 2, tzinfo=UTC), back["tags"], back["n"]
(True, {'a'}, [1, 2])
>>> hashable([1, ["a", 2]])
(1, ('a', 2))
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import decimal
import enum
import importlib
import json
import uuid
from collections.abc import Callable
from typing import Any

__all__ = ["dumps", "hashable", "loads"]

TAG = "$conveyor"


def dumps(value: Any) -> str:
    """``value`` as JSON text (see the module docstring); :class:`TypeError` names a type
    that cannot be stored."""
    return json.dumps(value, default=_tagged, separators=(",", ":"), ensure_ascii=False)


def loads(text: str) -> Any:
    """The value :func:`dumps` wrote."""
    return json.loads(text, object_hook=_revive)


def hashable(value: Any) -> Any:
    """``value`` with every list made a tuple (a key that went through JSON)."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    return value


def _class_name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _tagged(value: Any) -> dict[str, Any]:
    kind = type(value)
    simple = _SIMPLE.get(kind)
    if simple is not None:
        name, encode = simple
        return {TAG: name, "v": encode(value)}
    if isinstance(value, enum.Enum):
        return {TAG: "enum", "class": _class_name(kind), "v": value.value}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        return {TAG: "dataclass", "class": _class_name(kind), "v": fields}
    dump = getattr(value, "model_dump", None)
    if callable(dump) and hasattr(kind, "model_validate"):
        return {TAG: "model", "class": _class_name(kind), "v": dump(mode="python")}
    for base, (name, encode) in _SIMPLE.items():  # subclasses (a pendulum DateTime …)
        if isinstance(value, base):
            return {TAG: name, "v": encode(value)}
    raise TypeError(
        f"a {kind.__module__}.{kind.__qualname__} cannot be kept in a checkpoint's state "
        "(JSON values, datetimes, Decimals, UUIDs, bytes, sets, enums, dataclasses and "
        "Pydantic models can)"
    )


def _timedelta(value: dt.timedelta) -> list[int]:
    return [value.days, value.seconds, value.microseconds]


_SIMPLE: dict[type, tuple[str, Callable[[Any], Any]]] = {
    dt.datetime: ("datetime", dt.datetime.isoformat),
    dt.date: ("date", dt.date.isoformat),
    dt.time: ("time", dt.time.isoformat),
    dt.timedelta: ("timedelta", _timedelta),
    decimal.Decimal: ("decimal", str),
    uuid.UUID: ("uuid", str),
    bytes: ("bytes", lambda b: base64.b64encode(b).decode("ascii")),
    bytearray: ("bytes", lambda b: base64.b64encode(bytes(b)).decode("ascii")),
    set: ("set", list),
    frozenset: ("frozenset", list),
}

_DECODE: dict[str, Callable[[Any], Any]] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": decimal.Decimal,
    "uuid": uuid.UUID,
    "bytes": lambda v: base64.b64decode(v.encode("ascii")),
    "set": lambda v: {hashable(m) for m in v},
    "frozenset": lambda v: frozenset(hashable(m) for m in v),
}


def _revive(obj: dict[str, Any]) -> Any:
    kind = obj.get(TAG)
    if kind is None or not isinstance(kind, str) or "v" not in obj:
        return obj
    decode = _DECODE.get(kind)
    if decode is not None and len(obj) == 2:
        return decode(obj["v"])
    if kind in ("enum", "dataclass", "model") and len(obj) == 3:
        cls = _class(obj.get("class"), kind)
        value = obj["v"]
        if kind == "enum":
            return cls(value)
        if kind == "dataclass":
            return cls(**value)
        return cls.model_validate(value)  # type: ignore[attr-defined]
    return obj


def _class(name: Any, kind: str) -> type:
    """The class ``module:QualName``, which must be of ``kind`` (nothing else is loaded)."""
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"a {kind} in the state names no class ({name!r})")
    module, _, qualname = name.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    ok = isinstance(found, type) and (
        (kind == "enum" and issubclass(found, enum.Enum))
        or (kind == "dataclass" and dataclasses.is_dataclass(found))
        or (kind == "model" and callable(getattr(found, "model_validate", None)))
    )
    if not ok:
        raise ValueError(f"{name} is not a {kind} class; the state was not loaded")
    return found  # type: ignore[no-any-return]
