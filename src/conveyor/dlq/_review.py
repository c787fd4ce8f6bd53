"""Dead letters for people to review: repeated failures grouped, and exports.

A record that fails the same way run after run (each run writes a new letter for it) is
*one* failure to fix. :func:`group_rows` folds such letters into one :class:`LetterGroup`:
letters are the same failure when they have the same **stage**, the same **error type**
(qualified, ``builtins.ValueError``) and the same **record**, where the record is
identified by the SHA-256 digest of its canonical JSON (the stored JSON rendering
re-serialised with sorted keys and no spaces; see :func:`record_digest`). The message is
not part of the key (it may hold a time or a counter); a group shows its newest letter's.

Grouping reads the stored JSON only (no pickle is loaded), so it works on any machine,
whatever the records' classes.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from conveyor.core._render import _CONTROL_CODES, printable
from conveyor.dlq._codec import EncodedLetter
from conveyor.dlq._letter import _first_line, _shorten

__all__ = [
    "EXPORT_COLUMNS",
    "LetterGroup",
    "export_csv",
    "export_jsonl",
    "group_rows",
    "record_digest",
    "spreadsheet_safe",
]

#: The columns of an export, in order.
EXPORT_COLUMNS: Final = (
    "id",
    "stage",
    "error_type",
    "message",
    "first_seen",
    "last_seen",
    "occurrences",
    "run_ids",
    "record",
)

_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
# JSON escapes the C0 controls itself; the other characters a terminal obeys (DEL, C1,
# bidirectional overrides, line separators) become \uXXXX escapes, which JSON reads back
# as the same characters (they can only occur inside strings).
_JSON_ESCAPES: Final = {code: f"\\u{code:04x}" for code in _CONTROL_CODES if code >= 0x20}


def canonical_json(record_json: str) -> str:
    """The canonical form of a stored JSON text: sorted keys, no spaces.

    >>> canonical_json('{"b": 1, "a": [1, 2]}')
    '{"a":[1,2],"b":1}'
    """
    try:
        value = json.loads(record_json)
    except ValueError:  # not JSON (a damaged row): its text is its identity
        return record_json
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_digest(record_json: str) -> str:
    """SHA-256 (hex) of the record's canonical JSON: how "the same record" is recognised.

    >>> record_digest('{"id": 1, "v": 2}') == record_digest('{"v":2,"id":1}')
    True
    """
    return hashlib.sha256(
        canonical_json(record_json).encode("utf-8", "backslashreplace")
    ).hexdigest()


@dataclass(frozen=True, slots=True)
class LetterGroup:
    """One failure: the letters of the same record, stage and error type.

    ``id`` is the newest letter's id, ``ids`` every letter's (oldest first); ``message``
    the newest letter's; ``first_seen``/``last_seen`` the oldest and newest letters'
    ``created_at``; ``record_json`` the record's stored JSON rendering; ``run_ids`` the runs
    that wrote the letters (oldest first, each once); ``replayed`` whether every letter of
    the group is replayed.
    """

    digest: str
    id: str
    ids: tuple[str, ...]
    stage: str
    error_type: str
    message: str
    first_seen: datetime
    last_seen: datetime
    record_json: str
    run_ids: tuple[str, ...]
    replayed: bool

    @property
    def occurrences(self) -> int:
        """How many letters the group holds."""
        return len(self.ids)

    def summary(self) -> str:
        """One line for listings: short id, stage, error, record preview, occurrences.

        >>> from datetime import UTC
        >>> when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
        >>> LetterGroup(
        ...     "d", "0123456789abcdef", ("a", "0123456789abcdef"), "parse",
        ...     "builtins.ValueError", "bad", when, when, '{"id": 1}', ("r1", "r2"), False,
        ... ).summary().split(" x2 ")[0]
        '456789abcdef parse ValueError: bad record={"id": 1}'
        """
        error = self.error_type.removeprefix("builtins.")
        message = _shorten(_first_line(self.message), 120)
        seen = f"first={_when(self.first_seen)} last={_when(self.last_seen)}"
        flag = " [replayed]" if self.replayed else ""
        return (
            f"{self.id[-12:]} {self.stage} {error}: {message} "
            f"record={_shorten(self.record_json, 60)} x{self.occurrences} {seen}{flag}"
        )

    def as_row(self) -> dict[str, Any]:
        """The group as an export row (see :data:`EXPORT_COLUMNS`)."""
        return {
            "id": self.id,
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "occurrences": self.occurrences,
            "run_ids": list(self.run_ids),
            "record": _json_value(self.record_json),
        }


def group_rows(rows: Iterable[EncodedLetter]) -> list[LetterGroup]:
    """Fold ``rows`` (in write order) into groups, ordered by their newest letter (the
    group whose last letter was written last comes last)."""
    found: dict[tuple[str, str, str], list[EncodedLetter]] = {}
    last: dict[tuple[str, str, str], int] = {}
    for position, row in enumerate(rows):
        key = (row.stage, row.error_type, record_digest(row.record_json))
        found.setdefault(key, []).append(row)
        last[key] = position
    return [_group(key[2], found[key]) for key in sorted(found, key=last.__getitem__)]


def _group(digest: str, members: Sequence[EncodedLetter]) -> LetterGroup:
    newest = members[-1]
    times = [datetime.fromisoformat(row.created_at) for row in members]
    return LetterGroup(
        digest=digest,
        id=newest.id,
        ids=tuple(row.id for row in members),
        stage=newest.stage,
        error_type=newest.error_type,
        message=newest.message,
        first_seen=min(times),
        last_seen=max(times),
        record_json=newest.record_json,
        run_ids=tuple(dict.fromkeys(row.run_id for row in members)),
        replayed=all(row.replayed for row in members),
    )


def spreadsheet_safe(text: str) -> str:
    """``text`` for a spreadsheet cell: control characters escaped (``\\n``, ``\\x1b``…)
    and a cell that a spreadsheet would read as a formula (it starts with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return) prefixed with ``'``.

    >>> spreadsheet_safe("=HYPERLINK(1)"), spreadsheet_safe("-3"), spreadsheet_safe("a\\nb")
    ("'=HYPERLINK(1)", "'-3", 'a\\\\nb')
    """
    if text.startswith(_FORMULA_STARTS):
        text = "'" + text
    return printable(text)


def export_csv(groups: Iterable[LetterGroup]) -> str:
    """The groups as CSV text (a header, then one row a group), every cell spreadsheet-safe."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for group in groups:
        row = group.as_row()
        row["run_ids"] = " ".join(group.run_ids)
        row["record"] = canonical_json(group.record_json)
        writer.writerow([spreadsheet_safe(str(row[column])) for column in EXPORT_COLUMNS])
    return out.getvalue()


def export_jsonl(groups: Iterable[LetterGroup]) -> str:
    r"""The groups as JSON lines (one object a group, :data:`EXPORT_COLUMNS` as keys; the
    record as JSON, not text), every control character escaped.

    >>> from datetime import UTC
    >>> when = datetime(2024, 5, 1, tzinfo=UTC)
    >>> group = LetterGroup("d", "i", ("i",), "s", "E", "a\x1b\u202e", when, when, "1", (), False)
    >>> "\\u001b\\u202e" in export_jsonl([group])
    True
    """
    return "".join(
        json.dumps(group.as_row(), ensure_ascii=False, allow_nan=False).translate(_JSON_ESCAPES)
        + "\n"
        for group in groups
    )


def _json_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")
