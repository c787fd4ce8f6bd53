"""The dead letter: a failed record with everything needed to understand and replay it."""

from __future__ import annotations

import os
import reprlib
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

from conveyor.core._render import error_message, format_traceback, qualified_name, safe_repr

__all__ = ["DeadLetter", "new_id", "qualified_name"]

_SUMMARY_MESSAGE_CHARS = 120
_SUMMARY_RECORD_CHARS = 60


def new_id() -> str:
    """A time-ordered (version 7, RFC 9562) UUID in hex: 48 bits of Unix milliseconds, then
    74 random bits. Letters written later sort later, so a store's index of ids grows at its
    end instead of at random places (a SQLite index of random ids slows every write down as
    it grows). The random part is the end: :meth:`DeadLetter.summary` shows its last 12
    characters.

    >>> import uuid
    >>> uuid.UUID(hex=new_id()).version
    7
    >>> a = new_id(); b = new_id(); a[:12] <= b[:12]
    True
    """
    raw = bytearray((time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70  # version 7
    raw[8] = (raw[8] & 0x3F) | 0x80  # the RFC 9562 variant
    return raw.hex()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """One record that a stage could not process, frozen with its error.

    Build it with :meth:`from_exception` from the *live* exception, so the traceback keeps
    its frames:

    >>> def parse(row):
    ...     return int(row["n"])
    >>> try:
    ...     parse({"n": "seven"})
    ... except ValueError as exc:
    ...     letter = DeadLetter.from_exception(
    ...         {"n": "seven"}, exc, stage="parse", attempts=1, run_id="run-1"
    ...     )
    >>> letter.record, letter.stage, letter.error_type
    ({'n': 'seven'}, 'parse', 'builtins.ValueError')
    >>> letter.message
    "invalid literal for int() with base 10: 'seven'"
    >>> "in parse" in letter.traceback
    True

    Fields:
        id: unique id, a time-ordered UUID (version 7) in hex (32 characters).
        record: the original record object, exactly as it entered the failing stage (for a
            stage that takes records in groups, such as a ``BatchStage``, the whole group).
        stage: name of the stage that failed.
        attempts: how many times the stage tried the record (retries included).
        error_type: qualified name of the exception class (``"builtins.KeyError"``).
        message: ``str(exception)``; a placeholder such as ``<unprintable
            builtins.KeyError: RuntimeError>`` if that raises.
        traceback: the exception formatted as by :func:`traceback.format_exception`, with
            its frames and its chained causes.
        run_id: id of the run that produced the letter.
        created_at: when the letter was made, a timezone-aware UTC datetime (an aware
            datetime in another zone is converted to UTC; a naive one is refused).
        source_offset: where the record came from in the source, if known (JSON-able); a
            streaming run stores the ``[first, last]`` source positions of the micro-batch(es)
            its record came from, which tell a resumed run whether its checkpoint covers
            the letter.
        records: how many records the letter holds, at least 1: a group of ``n`` records
            that failed together (a ``BatchStage``'s batch) counts ``n``.
        output: for an output-contract violation, the stage's output that violated the
            contract (``record`` stays the record that went in); ``None`` otherwise.
        replayed: whether the letter has been replayed (set by
            :meth:`DeadLetterStore.mark_replayed`; stores report it on read).
        record_exact: ``True`` when ``record`` is the original object. ``False`` when a store
            could not keep the exact form (the record could not be pickled when written, or
            its pickle cannot be loaded here) and ``record`` is the JSON rendering instead:
            plain dicts, lists, strings and numbers, with ``repr()`` strings for the rest.

    Letters compare equal field by field and hash by ``id``.
    """

    id: str = field(default_factory=new_id)
    record: Any
    stage: str
    attempts: int
    error_type: str
    message: str
    traceback: str
    run_id: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source_offset: Any = None
    records: int = 1
    output: Any = None
    replayed: bool = False
    record_exact: bool = True

    def __post_init__(self) -> None:
        created = self.created_at
        if created.tzinfo is not UTC:  # (the usual UTC is checked at no cost)
            if created.tzinfo is None or created.utcoffset() is None:
                raise ValueError(
                    f"DeadLetter.created_at must be timezone-aware, got naive {created!r}; "
                    "use datetime.now(UTC)"
                )
            object.__setattr__(self, "created_at", created.astimezone(UTC))
        if self.attempts < 0:
            raise ValueError(f"DeadLetter.attempts must be >= 0, got {self.attempts}")
        if self.records < 1:
            raise ValueError(
                f"DeadLetter.records must be >= 1 (the letter holds at least its record), "
                f"got {self.records}"
            )

    def __hash__(self) -> int:
        return hash(self.id)

    @classmethod
    def from_exception(
        cls,
        record: Any,
        exc: BaseException,
        *,
        stage: str,
        attempts: int,
        run_id: str,
        source_offset: Any = None,
        records: int = 1,
        output: Any = None,
    ) -> Self:
        """A new letter for ``record``, which failed in ``stage`` with ``exc``.

        Pass the live exception (the one just caught): its traceback is formatted now.
        Formatting never fails: an exception whose ``__str__`` raises, or a ``KeyError``
        holding a record whose ``__repr__`` raises, gets a placeholder message (see
        :func:`conveyor.core._render.error_message`). Cancellation, interrupts and exits
        (:class:`BaseException` that is not an :class:`Exception`) are not record errors
        and raise :class:`TypeError`: re-raise them instead.

        >>> class Opaque:
        ...     def __repr__(self):
        ...         raise RuntimeError("no repr")
        >>> letter = DeadLetter.from_exception(
        ...     [1, 2, 3], KeyError(Opaque()), stage="group", attempts=1, run_id="r",
        ...     records=3, output={"total": "six"},
        ... )
        >>> letter.message, letter.records, letter.output
        ('<unprintable builtins.KeyError: RuntimeError>', 3, {'total': 'six'})
        """
        if not isinstance(exc, Exception):
            raise TypeError(
                f"{qualified_name(type(exc))} is a signal to stop (cancellation, interrupt or "
                "exit), not an error of the record; re-raise it instead of dead-lettering"
            )
        return cls(
            id=new_id(),
            record=record,
            stage=stage,
            attempts=attempts,
            error_type=qualified_name(type(exc)),
            message=error_message(exc),
            traceback=format_traceback(exc),
            run_id=run_id,
            created_at=datetime.now(UTC),
            source_offset=source_offset,
            records=records,
            output=output,
        )

    def summary(self) -> str:
        """One line for listings: short id, time, stage, attempts, error, record preview.

        ``records=n`` (after the attempts) and an ``output=`` preview (after the record)
        appear when they are not the defaults (1 and ``None``).

        >>> letter = DeadLetter(
        ...     id="0123456789abcdef0123456789abcdef", record={"id": 7}, stage="enrich",
        ...     attempts=3, error_type="builtins.KeyError", message="'email'",
        ...     traceback="", run_id="run-1",
        ...     created_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        ... )
        >>> letter.summary()
        "456789abcdef 2024-05-01 12:30:00Z enrich attempts=3 KeyError: 'email' record={'id': 7}"
        >>> import dataclasses
        >>> dataclasses.replace(letter, records=2, output=[{"id": 7}]).summary()[34:]
        "enrich attempts=3 records=2 KeyError: 'email' record={'id': 7} output=[{'id': 7}]"
        """
        when = self.created_at.strftime("%Y-%m-%d %H:%M:%SZ")
        error = self.error_type.removeprefix("builtins.")
        message = _shorten(_first_line(self.message), _SUMMARY_MESSAGE_CHARS)
        record = _preview(self.record)
        count = f" records={self.records}" if self.records != 1 else ""
        output = f" output={_preview(self.output)}" if self.output is not None else ""
        flag = " [replayed]" if self.replayed else ""
        return (
            f"{self.id[-12:]} {when} {self.stage} attempts={self.attempts}{count} "
            f"{error}: {message} record={record}{output}{flag}"
        )


def _preview(value: object) -> str:
    try:
        text = reprlib.repr(value)
    except Exception:  # pragma: no cover - reprlib catches the errors of repr() itself
        text = safe_repr(value)
    return _shorten(text, _SUMMARY_RECORD_CHARS)


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return ""
    return lines[0] + (" …" if len(lines) > 1 else "")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
