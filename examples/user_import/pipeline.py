"""The user import, built from Conveyor stages, one job each::

    read_csv -> validate -> store_rejects -> to_user -> drop_repeats_in_file
             -> drop_known_users -> batch -> insert_users

- ``read_csv`` (FunctionStage) reads the file into :class:`RawRow` records;
- ``validate`` (ValidateStage, ``continue_on_error=True``) rejects rows that cannot be
  imported, each with a human-readable reason, and passes the rest on;
- ``store_rejects`` writes the rejected rows and their reasons to the ``rejected_users``
  table for human review (the import does not stop for them);
- ``to_user`` (MapStage) turns each row into the internal :class:`User` format;
- ``drop_repeats_in_file`` drops a user seen earlier in the same file;
- ``drop_known_users`` drops a user already in the database;
- ``batch`` (BatchStage) cuts the survivors into batches;
- ``insert_users`` inserts each batch with one ``executemany`` in one transaction.

A user's identity is the normalised e-mail; ``external_id`` is unique too, so a row that
repeats either one is a duplicate. Every row read ends up in exactly one of: rejected,
duplicate in the file, already in the database, inserted; :class:`ImportReport` carries
the four counts. Per-stage timings and counts come from the pipeline's :class:`EventBus`.

The database is plain :mod:`sqlite3`; :func:`run_import` is the entry point.
"""

from __future__ import annotations

import csv
import json
import re
import sqlite3
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from conveyor import (
    BatchStage,
    Event,
    EventBus,
    EventType,
    FunctionStage,
    MapStage,
    Pipeline,
    PipelineContext,
    PipelineStage,
    RecordValidationError,
    StageResult,
    ValidateStage,
)

__all__ = [
    "COLUMNS",
    "REJECTS_TABLE",
    "REQUIRED",
    "STAGES",
    "USERS_TABLE",
    "DropKnownUsers",
    "DropRepeatsInFile",
    "ImportFailedError",
    "ImportReport",
    "InsertUsers",
    "RawRow",
    "StageTimer",
    "StageTiming",
    "StoreRejects",
    "User",
    "build_pipeline",
    "ensure_schema",
    "read_csv_rows",
    "run_import",
    "to_user",
    "validate_row",
]

USERS_TABLE = "users"
REJECTS_TABLE = "rejected_users"
DEFAULT_BATCH_SIZE = 500
SOURCE_FILE_KEY = "source_file"
"""``context.metadata`` key: the CSV path, set by :func:`run_import` for ``rejected_users``."""
REJECTS_STORED_KEY = "rejects_stored"
"""``context.metadata`` key: how many rows :class:`StoreRejects` wrote."""

COLUMNS = ("external_id", "email", "first_name", "last_name", "signup_date", "country", "age")
REQUIRED = ("external_id", "email", "first_name", "last_name", "signup_date", "country")
MIN_AGE, MAX_AGE = 13, 120

# Stage names, in pipeline order; run_import reads the counts of the report by these names.
READ = "read_csv"
VALIDATE = "validate"
STORE_REJECTS = "store_rejects"
TRANSFORM = "to_user"
DEDUPE_FILE = "drop_repeats_in_file"
DEDUPE_DB = "drop_known_users"
BATCH = "batch"
INSERT = "insert_users"
STAGES = (READ, VALIDATE, STORE_REJECTS, TRANSFORM, DEDUPE_FILE, DEDUPE_DB, BATCH, INSERT)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {USERS_TABLE} (
    id          INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL UNIQUE,
    email       TEXT NOT NULL UNIQUE,   -- normalised: trimmed, lower-case
    first_name  TEXT NOT NULL,
    last_name   TEXT NOT NULL,
    full_name   TEXT NOT NULL,
    signup_date TEXT NOT NULL,          -- ISO date
    country     TEXT NOT NULL,          -- ISO 3166 alpha-2, upper-case
    age         INTEGER,
    source_line INTEGER NOT NULL,
    import_run  TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {REJECTS_TABLE} (
    id          INTEGER PRIMARY KEY,
    run_id      TEXT NOT NULL,
    source_file TEXT NOT NULL,
    line_number INTEGER NOT NULL,       -- line in the CSV; the header is line 1
    raw_row     TEXT NOT NULL,          -- the row as read, JSON
    reason      TEXT NOT NULL,
    stage       TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS {REJECTS_TABLE}_run ON {REJECTS_TABLE} (run_id);
"""

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_AGE = re.compile(r"[+-]?\d+")


# --- records -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawRow:
    """One CSV row as read: its line number, its fields by column, any surplus fields."""

    line_number: int
    values: Mapping[str, str]
    extra: tuple[str, ...] = ()

    def get(self, column: str) -> str:
        """The field stripped of surrounding whitespace (``""`` when absent)."""
        return self.values.get(column, "").strip()

    def to_json(self) -> str:
        """The row as read, for the ``rejected_users.raw_row`` column."""
        data: dict[str, object] = dict(self.values)
        if self.extra:
            data["_extra"] = list(self.extra)
        return json.dumps(data, ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class User:
    """A user in the internal format: normalised and typed."""

    external_id: str
    email: str
    first_name: str
    last_name: str
    signup_date: date
    country: str
    age: int | None
    source_line: int

    @property
    def full_name(self) -> str:
        """``"first last"``."""
        return f"{self.first_name} {self.last_name}"


# --- the per-record functions --------------------------------------------------------------


def read_csv_rows(path: Path) -> list[RawRow]:
    """Read ``path`` into :class:`RawRow` records; fail on a header lacking required columns."""
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, restkey="_extra", restval="")
        missing = [column for column in REQUIRED if column not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(
                f"{path}: the header lacks the column(s) {', '.join(missing)}; "
                f"expected {', '.join(COLUMNS)}"
            )
        rows: list[RawRow] = []
        for values in reader:
            extra = values.pop("_extra", None)
            rows.append(
                RawRow(
                    reader.line_num,
                    values,
                    tuple(extra) if isinstance(extra, list) else (),
                )
            )
        return rows


def validate_row(row: RawRow) -> bool | str:
    """``True`` when ``row`` can be imported, else every problem found, joined by ``"; "``."""
    problems = [f"{column} is missing" for column in REQUIRED if not row.get(column)]
    if row.extra:
        problems.append(f"the row has {len(row.extra)} field(s) more than the header")
    email = row.get("email")
    if email and not _EMAIL.fullmatch(email):
        problems.append(f"email {email!r} is not a valid e-mail address")
    signup = row.get("signup_date")
    if signup:
        problems.extend(_date_problems(signup))
    country = row.get("country")
    if country and not (len(country) == 2 and country.isascii() and country.isalpha()):
        problems.append(f"country {country!r} is not a two-letter ISO 3166 code")
    age = row.get("age")
    if age:
        if not _AGE.fullmatch(age):
            problems.append(f"age {age!r} is not a whole number")
        elif not MIN_AGE <= int(age) <= MAX_AGE:
            problems.append(f"age {age} is outside {MIN_AGE}-{MAX_AGE}")
    return "; ".join(problems) if problems else True


def _date_problems(text: str) -> list[str]:
    if not _ISO_DATE.fullmatch(text):
        return [f"signup_date {text!r} is not an ISO date (YYYY-MM-DD)"]
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return [f"signup_date {text!r} is not a real calendar date"]
    if day > date.today():
        return [f"signup_date {text} is in the future"]
    return []


def to_user(row: RawRow) -> User:
    """The internal format of a valid row: trimmed, e-mail lower-case, typed fields."""
    age = row.get("age")
    return User(
        external_id=row.get("external_id"),
        email=row.get("email").lower(),
        first_name=" ".join(row.get("first_name").split()),
        last_name=" ".join(row.get("last_name").split()),
        signup_date=date.fromisoformat(row.get("signup_date")),
        country=row.get("country").upper(),
        age=int(age) if age else None,
        source_line=row.line_number,
    )


# --- custom stages -------------------------------------------------------------------------


class StoreRejects(PipelineStage[list[RawRow], list[RawRow]]):
    """Write the rows that ``validation_stage`` rejected to ``rejected_users``, in one
    transaction, and pass the valid rows on unchanged.

    The rejected rows are the failures the validation stage recorded in ``context.errors``;
    each is stored with its line number, raw fields (JSON), reason, stage and time, tagged
    with the run id (``context.pipeline_id``).
    """

    name = STORE_REJECTS

    def __init__(self, connection: sqlite3.Connection, *, validation_stage: str) -> None:
        self.connection = connection
        self.validation_stage = validation_stage

    async def process(
        self, data: list[RawRow], context: PipelineContext
    ) -> StageResult[list[RawRow]]:
        source = str(context.metadata.get(SOURCE_FILE_KEY, ""))
        now = _now()
        rejects = [
            (
                context.pipeline_id,
                source,
                error.item.line_number,
                error.item.to_json(),
                _reason(error.exception),
                error.stage,
                now,
            )
            for error in context.errors
            if error.stage == self.validation_stage and isinstance(error.item, RawRow)
        ]
        with self.connection:
            self.connection.executemany(
                f"INSERT INTO {REJECTS_TABLE} (run_id, source_file, line_number, raw_row, "
                "reason, stage, rejected_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rejects,
            )
        context.metadata[REJECTS_STORED_KEY] = len(rejects)
        return StageResult.ok(data, records_in=len(data))


def _reason(error: BaseException) -> str:
    if isinstance(error, RecordValidationError):
        return error.reason
    return f"{type(error).__name__}: {error}"  # the validator itself raised


class DropRepeatsInFile(PipelineStage[list[User], list[User]]):
    """Drop a user whose e-mail or external id appeared earlier in the same input; the
    first occurrence passes on. Dropped users are counted in ``records_filtered``."""

    name = DEDUPE_FILE

    async def process(self, data: list[User], context: PipelineContext) -> StageResult[list[User]]:
        emails: set[str] = set()
        ids: set[str] = set()
        kept: list[User] = []
        for user in data:
            if user.email in emails or user.external_id in ids:
                continue
            emails.add(user.email)
            ids.add(user.external_id)
            kept.append(user)
        return StageResult.ok(kept, records_in=len(data), records_filtered=len(data) - len(kept))


class DropKnownUsers(PipelineStage[list[User], list[User]]):
    """Drop a user whose e-mail or external id is already in the ``users`` table.

    Looks the keys up with one ``IN (...)`` query per ``chunk_size`` users and key (both
    columns are UNIQUE, so indexed). Dropped users are counted in ``records_filtered``.
    """

    name = DEDUPE_DB

    def __init__(self, connection: sqlite3.Connection, *, chunk_size: int = 500) -> None:
        self.connection = connection
        self.chunk_size = chunk_size

    async def process(self, data: list[User], context: PipelineContext) -> StageResult[list[User]]:
        known_emails = self._existing("email", [user.email for user in data])
        known_ids = self._existing("external_id", [user.external_id for user in data])
        kept = [
            user
            for user in data
            if user.email not in known_emails and user.external_id not in known_ids
        ]
        return StageResult.ok(kept, records_in=len(data), records_filtered=len(data) - len(kept))

    def _existing(self, column: str, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), self.chunk_size):
            chunk = keys[start : start + self.chunk_size]
            marks = ", ".join("?" * len(chunk))
            query = f"SELECT {column} FROM {USERS_TABLE} WHERE {column} IN ({marks})"
            found.update(value for (value,) in self.connection.execute(query, chunk))
        return found


class InsertUsers(PipelineStage[list[list[User]], int]):
    """Insert each batch with one ``executemany`` in its own transaction; output the number
    of rows inserted. A constraint violation fails the stage (it would be a dedupe bug);
    the batches committed before it stay committed."""

    name = INSERT

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def process(self, data: list[list[User]], context: PipelineContext) -> StageResult[int]:
        now, run_id = _now(), context.pipeline_id
        inserted = 0
        for batch in data:
            rows = [
                (
                    u.external_id,
                    u.email,
                    u.first_name,
                    u.last_name,
                    u.full_name,
                    u.signup_date.isoformat(),
                    u.country,
                    u.age,
                    u.source_line,
                    run_id,
                    now,
                )
                for u in batch
            ]
            with self.connection:
                cursor = self.connection.executemany(
                    f"INSERT INTO {USERS_TABLE} (external_id, email, first_name, last_name, "
                    "full_name, signup_date, country, age, source_line, import_run, "
                    "imported_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                inserted += cursor.rowcount
        total = sum(len(batch) for batch in data)
        return StageResult.ok(inserted, records_in=total, records_out=inserted)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --- observability -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StageTiming:
    """One stage of one run, as published on the event bus."""

    stage: str
    duration_ms: float
    records_in: int
    records_out: int
    records_failed: int
    records_filtered: int


@dataclass(slots=True)
class StageTimer:
    """An :class:`EventBus` subscriber to ``STAGE_COMPLETED``: collects every stage's timing
    and counts, in order, for the summary."""

    timings: list[StageTiming] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        payload = event.payload
        self.timings.append(
            StageTiming(
                stage=str(payload["stage"]),
                duration_ms=float(payload["duration_ms"]),
                records_in=int(payload["records_in"]),
                records_out=int(payload["records_out"]),
                records_failed=int(payload["records_failed"]),
                records_filtered=int(payload["records_filtered"]),
            )
        )


# --- assembling and running ----------------------------------------------------------------


def ensure_schema(connection: sqlite3.Connection) -> None:
    """Create the ``users`` and ``rejected_users`` tables when missing."""
    connection.executescript(SCHEMA)


def build_pipeline(
    connection: sqlite3.Connection,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    event_bus: EventBus | None = None,
) -> Pipeline[Path, int]:
    """The import pipeline over ``connection``: CSV path in, number of users inserted out."""
    return (
        Pipeline[Path, int]("user_import", event_bus=event_bus)
        .add_stage(FunctionStage(read_csv_rows, name=READ))
        .add_stage(ValidateStage(validate_row, continue_on_error=True, name=VALIDATE))
        .add_stage(StoreRejects(connection, validation_stage=VALIDATE))
        .add_stage(MapStage(to_user, name=TRANSFORM))
        .add_stage(DropRepeatsInFile())
        .add_stage(DropKnownUsers(connection))
        .add_stage(BatchStage[User](batch_size, name=BATCH))
        .add_stage(InsertUsers(connection))
    )


class ImportFailedError(RuntimeError):
    """The pipeline failed; ``stage`` is where, ``error`` is the stage's exception."""

    def __init__(self, stage: str | None, error: BaseException | None) -> None:
        self.stage = stage
        self.error = error
        detail = f"{type(error).__name__}: {error}" if error is not None else "unknown error"
        super().__init__(f"stage {stage or '?'} failed: {detail}")


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The outcome of one import run.

    Every row read is in exactly one of ``invalid``, ``duplicates_in_file``,
    ``already_present`` and ``inserted``; :attr:`unaccounted` is 0 when that holds.
    """

    run_id: str
    csv_path: Path
    db_path: Path
    rows_read: int
    invalid: int
    rejects_stored: int
    duplicates_in_file: int
    already_present: int
    inserted: int
    duration_s: float
    stages: tuple[StageTiming, ...]
    rejects_table: str = REJECTS_TABLE

    @property
    def unaccounted(self) -> int:
        """Rows read minus the rows in the four outcomes (0 when the counts add up)."""
        outcomes = self.invalid + self.duplicates_in_file + self.already_present + self.inserted
        return self.rows_read - outcomes

    def to_json(self) -> dict[str, object]:
        """The counts and locations, JSON-ready."""
        return {
            "run_id": self.run_id,
            "csv": str(self.csv_path),
            "db": str(self.db_path),
            "rejects_table": self.rejects_table,
            "rows_read": self.rows_read,
            "invalid": self.invalid,
            "rejects_stored": self.rejects_stored,
            "duplicates_in_file": self.duplicates_in_file,
            "already_present": self.already_present,
            "inserted": self.inserted,
            "duration_s": round(self.duration_s, 4),
            "stages": [
                {"stage": t.stage, "duration_ms": round(t.duration_ms, 3)} for t in self.stages
            ],
        }


def run_import(
    csv_path: Path, db_path: Path, *, batch_size: int = DEFAULT_BATCH_SIZE
) -> ImportReport:
    """Import ``csv_path`` into the SQLite database ``db_path`` (created when missing).

    Raises :class:`ImportFailedError` when a stage fails.
    """
    db_path.parent.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    bus = EventBus()
    bus.subscribe(EventType.STAGE_COMPLETED, timer)
    context = PipelineContext(metadata={SOURCE_FILE_KEY: str(csv_path)})
    with closing(sqlite3.connect(db_path)) as connection:
        ensure_schema(connection)
        pipeline = build_pipeline(connection, batch_size=batch_size, event_bus=bus)
        result = pipeline.execute_sync(csv_path, context=context)
    if not result.success:
        raise ImportFailedError(result.failed_stage, result.error)
    stage = result.stage_results
    return ImportReport(
        run_id=context.pipeline_id,
        csv_path=csv_path,
        db_path=db_path,
        rows_read=stage[READ].records_out,
        invalid=stage[VALIDATE].records_failed,
        rejects_stored=int(context.metadata.get(REJECTS_STORED_KEY, 0)),
        duplicates_in_file=stage[DEDUPE_FILE].records_filtered,
        already_present=stage[DEDUPE_DB].records_filtered,
        inserted=result.unwrap(),
        duration_s=result.duration_ms / 1000.0,
        stages=tuple(timer.timings),
    )
