"""The dead letter: a failed record with everything needed to understand and replay it."""

from __future__ import annotations

import reprlib
import traceback as _traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

__all__ = ["DeadLetter", "qualified_name"]

_SUMMARY_MESSAGE_CHARS = 120
_SUMMARY_RECORD_CHARS = 60


def qualified_name(cls: type) -> str:
    """``module.QualName`` of a class: ``builtins.ValueError``, ``conveyor.errors.HookError``."""
    return f"{cls.__module__}.{cls.__qualname__}"


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
        id: unique id, a uuid4 in hex (32 characters).
        record: the original record object, exactly as the failing stage received it.
        stage: name of the stage that failed.
        attempts: how many times the stage tried the record (retries included).
        error_type: qualified name of the exception class (``"builtins.KeyError"``).
        message: ``str(exception)``.
        traceback: the exception formatted by :func:`traceback.format_exception`, with its
            frames and its chained causes.
        run_id: id of the run that produced the letter.
        created_at: when the letter was made, a timezone-aware UTC datetime (an aware
            datetime in another zone is converted to UTC; a naive one is refused).
        source_offset: the source offset the record came from, if known (JSON-able).
        replayed: whether the letter has been replayed (set by
            :meth:`DeadLetterStore.mark_replayed`; stores report it on read).
        record_exact: ``True`` when ``record`` is the original object. ``False`` when a store
            could not keep the exact form (the record could not be pickled when written, or
            its pickle cannot be loaded here) and ``record`` is the JSON rendering instead:
            plain dicts, lists, strings and numbers, with ``repr()`` strings for the rest.

    Letters compare equal field by field and hash by ``id``.
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    record: Any
    stage: str
    attempts: int
    error_type: str
    message: str
    traceback: str
    run_id: str
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    source_offset: Any = None
    replayed: bool = False
    record_exact: bool = True

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None or self.created_at.utcoffset() is None:
            raise ValueError(
                f"DeadLetter.created_at must be timezone-aware, got naive {self.created_at!r}; "
                "use datetime.now(UTC)"
            )
        if self.attempts < 0:
            raise ValueError(f"DeadLetter.attempts must be >= 0, got {self.attempts}")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC))

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
    ) -> Self:
        """A new letter for ``record``, which failed in ``stage`` with ``exc``.

        Pass the live exception (the one just caught): its traceback is formatted now.
        Cancellation, interrupts and exits (:class:`BaseException` that is not an
        :class:`Exception`) are not record errors and raise :class:`TypeError`: re-raise
        them instead.
        """
        if not isinstance(exc, Exception):
            raise TypeError(
                f"{qualified_name(type(exc))} is a signal to stop (cancellation, interrupt or "
                "exit), not an error of the record; re-raise it instead of dead-lettering"
            )
        return cls(
            record=record,
            stage=stage,
            attempts=attempts,
            error_type=qualified_name(type(exc)),
            message=str(exc),
            traceback="".join(_traceback.format_exception(exc)),
            run_id=run_id,
            source_offset=source_offset,
        )

    def summary(self) -> str:
        """One line for listings: short id, time, stage, attempts, error, record preview.

        >>> letter = DeadLetter(
        ...     id="0123456789abcdef0123456789abcdef", record={"id": 7}, stage="enrich",
        ...     attempts=3, error_type="builtins.KeyError", message="'email'",
        ...     traceback="", run_id="run-1",
        ...     created_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
        ... )
        >>> letter.summary()
        "0123456789ab 2024-05-01 12:30:00Z enrich attempts=3 KeyError: 'email' record={'id': 7}"
        """
        when = self.created_at.strftime("%Y-%m-%d %H:%M:%SZ")
        error = self.error_type.removeprefix("builtins.")
        message = _shorten(_first_line(self.message), _SUMMARY_MESSAGE_CHARS)
        record = _shorten(reprlib.repr(self.record), _SUMMARY_RECORD_CHARS)
        flag = " [replayed]" if self.replayed else ""
        return (
            f"{self.id[:12]} {when} {self.stage} attempts={self.attempts} "
            f"{error}: {message} record={record}{flag}"
        )


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    if not lines:
        return ""
    return lines[0] + (" …" if len(lines) > 1 else "")


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
