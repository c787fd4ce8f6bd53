"""Records as rows: dicts, Pydantic models and dataclasses, all taken by every sink."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from conveyor.errors import PipelineDefinitionError

__all__ = ["columns_of", "row_of", "rows_of"]


def row_of(record: Any) -> dict[str, Any]:
    """``record`` as a dict of column values: a mapping as it is, a Pydantic model by
    ``model_dump()``, a dataclass by its fields; anything else is refused (a
    :class:`TypeError` naming its type, so the record becomes a dead letter).

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Reading:
    ...     id: int
    ...     value: float
    >>> row_of(Reading(1, 2.5)), row_of({"id": 2})
    ({'id': 1, 'value': 2.5}, {'id': 2})
    """
    if isinstance(record, Mapping):
        return dict(record)
    dump = getattr(record, "model_dump", None)
    if callable(dump):
        return dict(dump())
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    raise TypeError(
        f"a sink row must be a dict, a Pydantic model or a dataclass, got "
        f"{type(record).__qualname__}"
    )


def rows_of(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Every record of a micro-batch as a row (see :func:`row_of`); a plain dict is used
    as it is (sinks only read rows)."""
    if set(map(type, records)) <= {dict}:
        return records  # type: ignore[return-value]
    rows = []
    for index, record in enumerate(records):
        try:
            rows.append(record if type(record) is dict else row_of(record))
        except TypeError as exc:
            exc.add_note(f"record {index} of the batch")
            raise
    return rows


def columns_of(model: Any, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The columns of a new table or file: the fields of ``model`` (a Pydantic model or a
    dataclass type) when given, else the keys of the first rows in order of appearance."""
    if model is not None:
        fields = getattr(model, "model_fields", None)
        if isinstance(fields, Mapping):
            return list(fields)
        if dataclasses.is_dataclass(model):
            return [f.name for f in dataclasses.fields(model)]
        raise PipelineDefinitionError(
            f"model must be a Pydantic model or a dataclass, got {model!r}"
        )
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)
