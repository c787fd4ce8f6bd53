"""Connectors: sinks (and, later, sources) for the places data lives, usable from code and
from ``config.yaml`` alone (a top-level ``sink:`` section with ``connector: NAME``).

Every sink here subclasses :class:`conveyor.Sink`, has a Pydantic ``Config`` model (the
options of its ``sink:`` section) and ``from_config(config, root)``, takes dicts, Pydantic
models and dataclasses as records, and is exactly-once across a crash and a resume:

- ``sqlite`` and ``postgres`` write the checkpoint in the same transaction as the rows
  (:class:`SqliteSink`, :class:`PostgresSink`);
- ``jsonl``, ``csv`` and ``parquet`` fsync at each checkpoint and record their committed
  length or shard list in it; a resume truncates to it or drops uncommitted shards
  (:class:`JsonlSink`, :class:`CsvSink`, :class:`ParquetSink`).

Heavy drivers (psycopg, pyarrow) are imported when a sink that needs them is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from conveyor.core._lazy import lazy_attributes

if TYPE_CHECKING:
    from conveyor.connectors.brokers import NatsSource, RedisSource
    from conveyor.connectors.file_sources import CsvSource, JsonlSource, ParquetSource
    from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink
    from conveyor.connectors.generate import GenerateSource
    from conveyor.connectors.http import DownloadError, HttpClient, HttpError, HttpSource
    from conveyor.connectors.sql import PostgresSink, SqliteSink
    from conveyor.connectors.sql_sources import PostgresSource, SqliteSource

__all__ = [
    "CsvSink",
    "CsvSource",
    "DownloadError",
    "GenerateSource",
    "HttpClient",
    "HttpError",
    "HttpSource",
    "JsonlSink",
    "JsonlSource",
    "NatsSource",
    "ParquetSink",
    "ParquetSource",
    "PostgresSink",
    "PostgresSource",
    "RedisSource",
    "SqliteSink",
    "SqliteSource",
    "connector",
    "connector_names",
    "sink_connectors",
    "source_connectors",
]

_WHERE = {
    "CsvSink": "conveyor.connectors.files",
    "CsvSource": "conveyor.connectors.file_sources",
    "DownloadError": "conveyor.connectors.http",
    "GenerateSource": "conveyor.connectors.generate",
    "HttpClient": "conveyor.connectors.http",
    "HttpError": "conveyor.connectors.http",
    "HttpSource": "conveyor.connectors.http",
    "JsonlSink": "conveyor.connectors.files",
    "JsonlSource": "conveyor.connectors.file_sources",
    "NatsSource": "conveyor.connectors.brokers",
    "ParquetSink": "conveyor.connectors.files",
    "ParquetSource": "conveyor.connectors.file_sources",
    "PostgresSink": "conveyor.connectors.sql",
    "PostgresSource": "conveyor.connectors.sql_sources",
    "RedisSource": "conveyor.connectors.brokers",
    "SqliteSink": "conveyor.connectors.sql",
    "SqliteSource": "conveyor.connectors.sql_sources",
}

__getattr__ = lazy_attributes(globals(), _WHERE, __name__)


_SINKS = {
    "csv": "conveyor.connectors.files:CsvSink",
    "jsonl": "conveyor.connectors.files:JsonlSink",
    "parquet": "conveyor.connectors.files:ParquetSink",
    "postgres": "conveyor.connectors.sql:PostgresSink",
    "sqlite": "conveyor.connectors.sql:SqliteSink",
}

_SOURCES = {
    "csv": "conveyor.connectors.file_sources:CsvSource",
    "generate": "conveyor.connectors.generate:GenerateSource",
    "http": "conveyor.connectors.http:HttpSource",
    "jsonl": "conveyor.connectors.file_sources:JsonlSource",
    "nats": "conveyor.connectors.brokers:NatsSource",
    "parquet": "conveyor.connectors.file_sources:ParquetSource",
    "postgres": "conveyor.connectors.sql_sources:PostgresSource",
    "redis": "conveyor.connectors.brokers:RedisSource",
    "sqlite": "conveyor.connectors.sql_sources:SqliteSource",
}


def _load(where: str) -> Any:
    module, _, name = where.partition(":")
    return getattr(importlib.import_module(module), name)


def sink_connectors() -> dict[str, Any]:
    """``{connector name: sink class}`` of every built-in sink connector."""
    return {name: _load(where) for name, where in _SINKS.items()}


def source_connectors() -> dict[str, Any]:
    """``{connector name: source class}`` of every built-in source connector."""
    return {name: _load(where) for name, where in _SOURCES.items()}


def connector_names() -> tuple[list[str], list[str]]:
    """The names of the source and of the sink connectors (nothing imported)."""
    return sorted(_SOURCES), sorted(_SINKS)


def connector(kind: str, name: str) -> Any:
    """The ``kind`` (``"source"`` or ``"sink"``) connector class called ``name``; a
    ``KeyError`` if there is none."""
    table = _SOURCES if kind == "source" else _SINKS
    return _load(table[name])


def describe_connector(cls: Any) -> list[dict[str, str]]:
    """The options of a connector class's ``Config`` model: ``name``, ``type``,
    ``default`` (``"required"`` when there is none) and ``description``."""
    from pydantic_core import PydanticUndefined

    rows: list[dict[str, str]] = []
    for name, field in cls.Config.model_fields.items():
        kind = field.annotation
        text = getattr(kind, "__name__", None) if isinstance(kind, type) else None
        default: Any = field.default
        if field.default_factory is not None:
            default = field.default_factory()
        rows.append(
            {
                "name": field.alias or name,
                "type": text or str(kind).replace("typing.", ""),
                "default": "required" if default is PydanticUndefined else repr(default),
                "description": field.description or "",
            }
        )
    return rows
