"""The storage form of a dead letter, shared by every store.

A letter is stored twice over: a JSON rendering for people (``record_json``, always
possible thanks to ``repr()`` fallbacks) and an exact pickle for replay (``record_pickle``,
``None`` when the record cannot be pickled). Decoding prefers the pickle and falls back to
the JSON rendering, marking the letter ``record_exact=False``.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.dlq._letter import DeadLetter, qualified_name

__all__ = ["EncodedLetter", "decode", "encode", "json_text"]

_log = logging.getLogger("conveyor.dlq")

PICKLE_PROTOCOL = 5


@dataclass(frozen=True, slots=True)
class EncodedLetter:
    """A dead letter in storable form: text, numbers and at most one ``bytes`` field.

    ``record_pickle`` holds ``pickle.dumps((record, source_offset))``; ``record_json`` and
    ``source_offset_json`` are JSON texts; ``created_at`` is ISO 8601 with its UTC offset.
    Store implementations persist these fields and give them back unchanged.
    """

    id: str
    stage: str
    run_id: str
    attempts: int
    error_type: str
    message: str
    traceback: str
    created_at: str
    source_offset_json: str
    record_json: str
    record_pickle: bytes | None
    replayed: bool


def json_text(value: Any) -> str:
    """``value`` as JSON text for people; never fails.

    Unknown objects become their ``repr()``; a value JSON cannot express at all (a dict with
    tuple keys, NaN, a cycle) becomes the ``repr()`` string of the whole value.
    """
    try:
        return json.dumps(value, default=_safe_repr, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return json.dumps(_safe_repr(value), ensure_ascii=False)


def encode(letter: DeadLetter) -> EncodedLetter:
    """The storable form of ``letter``."""
    return EncodedLetter(
        id=letter.id,
        stage=letter.stage,
        run_id=letter.run_id,
        attempts=letter.attempts,
        error_type=letter.error_type,
        message=letter.message,
        traceback=letter.traceback,
        created_at=letter.created_at.isoformat(),
        source_offset_json=json_text(letter.source_offset),
        record_json=json_text(letter.record),
        record_pickle=_pickle(letter) if letter.record_exact else None,
        replayed=letter.replayed,
    )


def decode(row: EncodedLetter) -> DeadLetter:
    """The letter stored as ``row``; the exact record when its pickle loads, else the JSON.

    Raises ``ValueError`` when the JSON parts are corrupt.
    """
    exact = _unpickle(row)
    if exact is not None:
        record, offset = exact
    else:
        record, offset = json.loads(row.record_json), json.loads(row.source_offset_json)
    return DeadLetter(
        id=row.id,
        record=record,
        stage=row.stage,
        attempts=row.attempts,
        error_type=row.error_type,
        message=row.message,
        traceback=row.traceback,
        run_id=row.run_id,
        created_at=datetime.fromisoformat(row.created_at),
        source_offset=offset,
        replayed=row.replayed,
        record_exact=exact is not None,
    )


def _pickle(letter: DeadLetter) -> bytes | None:
    try:
        return pickle.dumps((letter.record, letter.source_offset), protocol=PICKLE_PROTOCOL)
    except Exception as exc:
        _log.warning(
            "dead letter %s: the record (%s) cannot be pickled (%s: %s); storing its JSON "
            "rendering only, so a replay gets plain JSON values instead of the original object",
            letter.id,
            qualified_name(type(letter.record)),
            type(exc).__name__,
            exc,
        )
        return None


def _unpickle(row: EncodedLetter) -> tuple[Any, Any] | None:
    if row.record_pickle is None:
        return None
    try:
        record, offset = pickle.loads(row.record_pickle)
    except Exception as exc:
        _log.warning(
            "dead letter %s: its exact record cannot be loaded here (%s: %s); using the JSON "
            "rendering instead (is the record's class importable in this process?)",
            row.id,
            type(exc).__name__,
            exc,
        )
        return None
    return record, offset


def _safe_repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<unrepresentable {qualified_name(type(value))}>"
