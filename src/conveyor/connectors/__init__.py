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

from typing import TYPE_CHECKING, Any

from conveyor.core._lazy import lazy_attributes

if TYPE_CHECKING:
    from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink
    from conveyor.connectors.sql import PostgresSink, SqliteSink

__all__ = [
    "CsvSink",
    "JsonlSink",
    "ParquetSink",
    "PostgresSink",
    "SqliteSink",
    "sink_connectors",
]

_WHERE = {
    "CsvSink": "conveyor.connectors.files",
    "JsonlSink": "conveyor.connectors.files",
    "ParquetSink": "conveyor.connectors.files",
    "PostgresSink": "conveyor.connectors.sql",
    "SqliteSink": "conveyor.connectors.sql",
}

__getattr__ = lazy_attributes(globals(), _WHERE, __name__)


def sink_connectors() -> dict[str, Any]:
    """``{connector name: sink class}`` of every built-in sink connector."""
    from conveyor.connectors.files import CsvSink, JsonlSink, ParquetSink
    from conveyor.connectors.sql import PostgresSink, SqliteSink

    return {
        "csv": CsvSink,
        "jsonl": JsonlSink,
        "parquet": ParquetSink,
        "postgres": PostgresSink,
        "sqlite": SqliteSink,
    }
