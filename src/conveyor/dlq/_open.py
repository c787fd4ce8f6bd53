"""Pick a dead-letter store from a short spec: ``"memory"`` or a file path."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.dlq._jsonl import JsonlDeadLetterStore
from conveyor.dlq._sqlite import SqliteDeadLetterStore
from conveyor.dlq._store import DeadLetterStore, MemoryDeadLetterStore

__all__ = ["open_dead_letter_store"]

_MEMORY = frozenset({"memory", "memory:"})
_JSONL = frozenset({".jsonl"})
_SQLITE = frozenset({".db", ".sqlite", ".sqlite3"})


def open_dead_letter_store(spec: str | os.PathLike[str]) -> DeadLetterStore:
    """Open the store that ``spec`` names.

    ``"memory"`` (or ``"memory:"``) is a :class:`MemoryDeadLetterStore`; a path ending in
    ``.jsonl`` a :class:`JsonlDeadLetterStore`; a path ending in ``.db``, ``.sqlite`` or
    ``.sqlite3`` a :class:`SqliteDeadLetterStore` (``~`` is expanded; the suffix is matched
    without regard to case). Anything else raises :class:`ValueError` listing these forms.

    >>> open_dead_letter_store("memory")
    MemoryDeadLetterStore('memory')
    >>> open_dead_letter_store("state/dlq.parquet")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown dead-letter store 'state/dlq.parquet': use 'memory', a path ending ...
    """
    if isinstance(spec, str) and spec.strip().lower() in _MEMORY:
        return MemoryDeadLetterStore()
    path = Path(spec).expanduser()
    suffix = path.suffix.lower()
    if suffix in _JSONL:
        return JsonlDeadLetterStore(path)
    if suffix in _SQLITE:
        return SqliteDeadLetterStore(path)
    raise ValueError(
        f"unknown dead-letter store {os.fspath(spec)!r}: use 'memory', a path ending in .jsonl "
        "(JSON lines) or a path ending in .db, .sqlite or .sqlite3 (SQLite)"
    )
