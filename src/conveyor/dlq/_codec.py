"""The storage form of a dead letter, shared by every store.

A letter is stored twice over: a JSON rendering for people (``record_json``,
``output_json`` and ``source_offset_json``, always possible thanks to
:func:`~conveyor.core._render.render_value`) and an exact pickle for replay
(``record_pickle``, ``None`` when the record cannot be pickled). Decoding prefers the pickle
and falls back to the JSON rendering, marking the letter ``record_exact=False``.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.core._render import render_value, safe_str
from conveyor.dlq._letter import DeadLetter, qualified_name

__all__ = [
    "EncodedLetter",
    "decode",
    "encode",
    "encode_values",
    "json_text",
    "warn_unloadable",
]

_log = logging.getLogger("conveyor.dlq")

PICKLE_PROTOCOL = 5
_NULL = "null"


@dataclass(frozen=True, slots=True)
class EncodedLetter:
    """A dead letter in storable form: text, numbers and at most one ``bytes`` field.

    ``record_pickle`` holds ``pickle.dumps((record, source_offset, output))`` (letters
    stored by earlier versions hold ``(record, source_offset)``, which still decodes);
    ``record_json``, ``source_offset_json`` and ``output_json`` are JSON texts;
    ``created_at`` is ISO 8601 with its UTC offset. Store implementations persist these
    fields and give them back unchanged. ``records`` and ``output_json`` have defaults (1
    and ``"null"``) so that a store of your own written for the earlier fields still works.
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
    records: int = 1
    output_json: str = "null"


def json_text(value: Any) -> str:
    """``value`` as JSON text for people; never fails.

    The text of :func:`~conveyor.core._render.render_value`'s rendering: plain JSON values
    kept, objects field by field or as their ``repr()``, and whatever cannot be shown as a
    placeholder, so a record that can neither be pickled nor ``repr()``'d still keeps every
    field that can be shown.

    >>> json_text({"id": 1, "tags": ("a", "b"), (1, 2): float("nan")})
    '{"id": 1, "tags": ["a", "b"], "(1, 2)": "nan"}'
    """
    kind = type(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return _NULL
    try:  # the C encoder for the usual plain values, render_value for the rest
        return _encode(value)
    except Exception:
        pass
    try:
        return _JSON.encode(render_value(value))
    except Exception:  # pragma: no cover - render_value gives plain JSON values
        return json.dumps(safe_str(value), ensure_ascii=False)


_JSON = json.JSONEncoder(default=render_value, ensure_ascii=False, allow_nan=False)


def _c_encoder() -> Callable[[Any], str]:
    """``_JSON.encode`` without building an encoder per call, where the C encoder allows.

    The encoder is made once, with no cycle markers (a cycle ends in ``RecursionError``,
    and the caller falls back to :func:`render_value`, which handles it).
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has the C accelerator
        return _JSON.encode
    try:
        # (markers, default, encoder, indent, key_separator, item_separator, sort_keys,
        # skipkeys, allow_nan), as json.JSONEncoder.iterencode passes them
        encoder = make(
            None,
            render_value,
            json.encoder.encode_basestring,
            None,
            ": ",
            ", ",
            False,
            False,
            False,
        )

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        sample = {"a": [1, "é", None, 2.5, True]}
        if encode(sample) != _JSON.encode(sample):
            return _JSON.encode  # pragma: no cover - a C encoder of another signature
        encode(float("nan"))
    except ValueError:  # NaN refused, as it must be
        return encode
    except Exception:  # pragma: no cover - a C encoder of another signature
        pass
    return _JSON.encode  # pragma: no cover - idem


_encode = _c_encoder()


def encode(letter: DeadLetter) -> EncodedLetter:
    """The storable form of ``letter``."""
    return EncodedLetter(*encode_values(letter))


_last_time: list[tuple[datetime | None, str]] = [(None, "")]
"""The last (datetime, its ISO text): the letters of a micro-batch share one datetime."""


def _iso(when: datetime) -> str:
    cached = _last_time[0]  # one tuple, swapped whole: safe beside other threads
    if cached[0] is when:
        return cached[1]
    text = when.isoformat()
    _last_time[0] = (when, text)
    return text


def encode_values(letter: DeadLetter) -> tuple[Any, ...]:
    """The fields of ``encode(letter)`` as a tuple, in :class:`EncodedLetter`'s field order.

    For stores that write rows as tuples: it saves building the frozen dataclass.
    """
    return (
        letter.id,
        letter.stage,
        letter.run_id,
        letter.attempts,
        letter.error_type,
        letter.message,
        letter.traceback,
        _iso(letter.created_at),
        json_text(letter.source_offset),
        json_text(letter.record),
        _pickle(letter) if letter.record_exact else None,
        letter.replayed,
        letter.records,
        _NULL if letter.output is None else json_text(letter.output),
    )


def decode(row: EncodedLetter, failures: list[str] | None = None) -> DeadLetter:
    """The letter stored as ``row``; the exact record when its pickle loads, else the JSON.

    A pickle that cannot be loaded is logged as a warning on the ``conveyor.dlq`` logger,
    or, when ``failures`` is given, its reason (``"ModuleNotFoundError: No module named
    'pipeline'"``) is appended there instead, so that a caller decoding many letters can
    say it once (see :func:`warn_unloadable`). Raises ``ValueError`` when the JSON parts
    are corrupt.
    """
    exact = _unpickle(row, failures)
    if exact is not None:
        record, offset, output = exact
    else:
        record = json.loads(row.record_json)
        offset = json.loads(row.source_offset_json)
        output = json.loads(row.output_json)
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
        records=row.records,
        output=output,
        replayed=row.replayed,
        record_exact=exact is not None,
    )


def _pickle(letter: DeadLetter) -> bytes | None:
    try:
        return pickle.dumps(
            (letter.record, letter.source_offset, letter.output), protocol=PICKLE_PROTOCOL
        )
    except Exception as exc:
        what = f"the record ({qualified_name(type(letter.record))})"
        if letter.output is not None:
            what += f" or its output ({qualified_name(type(letter.output))})"
        _log.warning(
            "dead letter %s: %s cannot be pickled (%s: %s); storing the JSON rendering only, "
            "so a replay gets plain JSON values instead of the original object",
            letter.id,
            what,
            type(exc).__name__,
            safe_str(exc),
        )
        return None


def warn_unloadable(failures: list[str], total: int) -> None:
    """One warning for the letters of one read whose exact records could not be loaded.

    >>> warn_unloadable([], 3)  # nothing to say
    """
    if not failures:
        return
    reasons = list(dict.fromkeys(failures))
    shown = "; ".join(reasons[:3]) + (
        f"; and {len(reasons) - 3} other reason(s)" if len(reasons) > 3 else ""
    )
    _log.warning(
        "%d of %d dead letter(s): the exact record cannot be loaded here (%s); using the JSON "
        "rendering instead (is the record's class importable in this process?)",
        len(failures),
        total,
        shown,
    )


def _unpickle(row: EncodedLetter, failures: list[str] | None = None) -> tuple[Any, Any, Any] | None:
    if row.record_pickle is None:
        return None
    try:
        loaded = pickle.loads(row.record_pickle)
        if not isinstance(loaded, tuple) or len(loaded) not in (2, 3):
            raise ValueError(
                f"expected (record, source_offset, output), got {qualified_name(type(loaded))}"
            )
    except Exception as exc:
        if failures is not None:
            failures.append(f"{type(exc).__name__}: {safe_str(exc)}")
            return None
        _log.warning(
            "dead letter %s: its exact record cannot be loaded here (%s: %s); using the JSON "
            "rendering instead (is the record's class importable in this process?)",
            row.id,
            type(exc).__name__,
            safe_str(exc),
        )
        return None
    if len(loaded) == 2:  # stored before letters had an output
        return loaded[0], loaded[1], None
    return loaded[0], loaded[1], loaded[2]
