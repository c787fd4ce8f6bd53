"""End-to-end tests of examples/user_import: counts are checked against the generator's
ground truth (its manifest), never against hard-coded numbers."""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "user_import"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

import generate_users  # noqa: E402
import pipeline  # noqa: E402
import run  # noqa: E402

ROWS = 2_000
SEED = 7

# Which field a rejection reason must name, per planted kind (missing_field: any "missing").
REASON_MENTIONS = {
    "missing_field": "is missing",
    "bad_email": "email",
    "bad_date": "signup_date",
    "bad_age": "age",
}


@pytest.fixture(scope="module")
def users_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2,000-row CSV shared by the module (tests never modify it)."""
    path = tmp_path_factory.mktemp("csv") / "users.csv"
    generate_users.generate_users(path, rows=ROWS, seed=SEED)
    return path


@pytest.fixture
def truth(users_csv: Path) -> generate_users.GroundTruth:
    return generate_users.read_manifest(users_csv)


def run_main(csv_path: Path, db: Path, summary: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    """``run.main`` in-process; return its exit status and the summary JSON it wrote."""
    argv = ["--csv", str(csv_path), "--db", str(db), "--summary-json", str(summary), *extra]
    status = run.main(argv)
    return status, json.loads(summary.read_text("utf-8"))


def query(db: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(db)) as connection:
        return connection.execute(sql, params).fetchall()


# --- the generator ---------------------------------------------------------------------------


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    a = generate_users.generate_users(tmp_path / "a.csv", rows=500, seed=3)
    b = generate_users.generate_users(tmp_path / "b.csv", rows=500, seed=3)
    c = generate_users.generate_users(tmp_path / "c.csv", rows=500, seed=4)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert (tmp_path / "a.manifest.json").read_bytes() == (
        tmp_path / "b.manifest.json"
    ).read_bytes()
    assert a == b
    assert (tmp_path / "a.csv").read_bytes() != (tmp_path / "c.csv").read_bytes()
    assert a != c


def test_fewer_rows_give_a_prefix(tmp_path: Path, users_csv: Path) -> None:
    generate_users.generate_users(tmp_path / "short.csv", rows=ROWS // 2, seed=SEED)
    short = (tmp_path / "short.csv").read_text("utf-8").splitlines()
    assert users_csv.read_text("utf-8").splitlines()[: len(short)] == short


def test_ground_truth_describes_the_file(
    users_csv: Path, truth: generate_users.GroundTruth
) -> None:
    with users_csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == generate_users.COLUMNS
    assert len(rows) - 1 == truth.rows == ROWS
    assert truth.unique_valid + truth.duplicates + truth.malformed == truth.rows
    # Every kind of defect is planted, a few percent of each sort.
    assert all(n > 0 for n in truth.malformed_by_kind.values()), truth.malformed_by_kind
    assert 0.02 * ROWS < truth.malformed < 0.07 * ROWS
    assert 0.01 * ROWS < truth.duplicates < 0.06 * ROWS
    # Among the well-formed rows, duplicates repeat an e-mail once normalised.
    emails = [
        row[1].strip().lower()
        for line, row in enumerate(rows[1:], start=2)
        if line not in truth.malformed_lines
    ]
    assert len(emails) - len(set(emails)) == truth.duplicates


def test_generator_script(tmp_path: Path) -> None:
    out = tmp_path / "script.csv"
    assert generate_users.main(["--rows", "300", "--seed", "5", "--out", str(out)]) == 0
    assert generate_users.read_manifest(out).rows == 300
    generate_users.generate_users(tmp_path / "module.csv", rows=300, seed=5)
    assert out.read_bytes() == (tmp_path / "module.csv").read_bytes()


# --- the import, in-process ------------------------------------------------------------------


def test_first_run_matches_the_ground_truth(
    tmp_path: Path,
    users_csv: Path,
    truth: generate_users.GroundTruth,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "users.db"
    status, summary = run_main(users_csv, db, tmp_path / "summary.json")
    assert status == 0
    assert summary["rows_read"] == truth.rows
    assert summary["invalid"] == truth.malformed
    assert summary["rejects_stored"] == truth.malformed
    assert summary["duplicates_in_file"] == truth.duplicates
    assert summary["already_present"] == 0
    assert summary["inserted"] == truth.unique_valid
    assert summary["db"] == str(db)
    assert summary["rejects_table"] == "rejected_users"

    users = query(db, "SELECT email, country, first_name, last_name, full_name FROM users")
    assert len(users) == truth.unique_valid
    assert len({email for email, *_ in users}) == truth.unique_valid
    for email, country, first, last, full in users:
        assert email == email.strip().lower()
        assert country == country.upper()
        assert full == f"{first} {last}" == full.strip()

    printed = capsys.readouterr().out
    for label in ("Rows read", "Invalid", "Duplicates within the file", "Already in the database"):
        assert label in printed
    assert "Inserted" in printed
    assert "Time taken" in printed
    assert "rejected_users" in printed
    assert "Counts add up" in printed


def test_rejected_users_holds_exactly_the_invalid_rows(
    tmp_path: Path, users_csv: Path, truth: generate_users.GroundTruth
) -> None:
    db = tmp_path / "users.db"
    status, summary = run_main(users_csv, db, tmp_path / "summary.json")
    assert status == 0
    rejects = query(
        db,
        "SELECT line_number, reason, stage, raw_row, run_id, source_file, rejected_at "
        "FROM rejected_users ORDER BY line_number",
    )
    assert {line for line, *_ in rejects} == set(truth.malformed_lines)
    assert len(rejects) == truth.malformed

    with users_csv.open(encoding="utf-8", newline="") as handle:
        lines = dict(enumerate(csv.DictReader(handle), start=2))
    for line, reason, stage, raw_row, run_id, source, rejected_at in rejects:
        kind = truth.malformed_lines[line]
        assert reason.strip(), f"line {line}: empty reason"
        assert REASON_MENTIONS[kind] in reason, (line, kind, reason)
        assert stage == "validate"
        assert json.loads(raw_row) == lines[line]
        assert run_id == summary["run_id"]
        assert source == str(users_csv)
        assert rejected_at


def test_second_run_inserts_nothing(
    tmp_path: Path, users_csv: Path, truth: generate_users.GroundTruth
) -> None:
    db = tmp_path / "users.db"
    first_status, first = run_main(users_csv, db, tmp_path / "first.json")
    second_status, second = run_main(users_csv, db, tmp_path / "second.json")
    assert (first_status, second_status) == (0, 0)
    assert first["inserted"] == truth.unique_valid
    assert second["inserted"] == 0
    assert second["already_present"] == truth.unique_valid
    assert second["duplicates_in_file"] == truth.duplicates
    assert second["invalid"] == truth.malformed
    assert query(db, "SELECT COUNT(*) FROM users") == [(truth.unique_valid,)]
    # Each run keeps its own rejects, told apart by run id.
    per_run = query(db, "SELECT run_id, COUNT(*) FROM rejected_users GROUP BY run_id")
    assert sorted(per_run) == sorted(
        [(first["run_id"], truth.malformed), (second["run_id"], truth.malformed)]
    )


def test_a_partly_imported_file(tmp_path: Path, users_csv: Path) -> None:
    """Import the first half, then the whole file: the first half is already there."""
    half = tmp_path / "half.csv"
    half_truth = generate_users.generate_users(half, rows=ROWS // 2, seed=SEED)
    full_truth = generate_users.read_manifest(users_csv)
    db = tmp_path / "users.db"
    assert run_main(half, db, tmp_path / "half.json")[0] == 0
    status, summary = run_main(users_csv, db, tmp_path / "full.json", "--batch-size", "64")
    assert status == 0
    assert summary["already_present"] == half_truth.unique_valid
    assert summary["inserted"] == full_truth.unique_valid - half_truth.unique_valid
    assert summary["duplicates_in_file"] == full_truth.duplicates
    assert query(db, "SELECT COUNT(*) FROM users") == [(full_truth.unique_valid,)]


def test_fresh_starts_from_an_empty_database(
    tmp_path: Path, users_csv: Path, truth: generate_users.GroundTruth
) -> None:
    db = tmp_path / "users.db"
    run_main(users_csv, db, tmp_path / "first.json")
    status, summary = run_main(users_csv, db, tmp_path / "again.json", "--fresh")
    assert status == 0
    assert summary["inserted"] == truth.unique_valid
    assert query(db, "SELECT COUNT(*) FROM rejected_users") == [(truth.malformed,)]


def test_missing_csv_is_generated(tmp_path: Path) -> None:
    csv_path = tmp_path / "new" / "users.csv"
    status, summary = run_main(
        csv_path, tmp_path / "users.db", tmp_path / "s.json", "--rows", "400", "--seed", "9"
    )
    assert status == 0
    truth = generate_users.read_manifest(csv_path)
    assert (truth.rows, truth.seed) == (400, 9)
    assert summary["inserted"] == truth.unique_valid


def test_counts_that_do_not_add_up_fail_the_run(
    tmp_path: Path,
    users_csv: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real_run_import = pipeline.run_import

    def leaky_run_import(*args: Any, **kwargs: Any) -> pipeline.ImportReport:
        report = real_run_import(*args, **kwargs)
        return dataclasses.replace(report, inserted=report.inserted - 1)

    monkeypatch.setattr(run, "run_import", leaky_run_import)
    status = run.main(["--csv", str(users_csv), "--db", str(tmp_path / "users.db")])
    assert status == 1
    err = capsys.readouterr().err
    assert "do not add up" in err
    assert "1 row(s) unaccounted for" in err


def test_a_failing_stage_fails_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("id,mail\n1,a@example.com\n", encoding="utf-8")
    assert run.main(["--csv", str(bad), "--db", str(tmp_path / "users.db")]) == 1
    err = capsys.readouterr().err
    assert "Import failed" in err
    assert "read_csv" in err
    assert "lacks the column" in err


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, True),
        ({"email": "  Ann.Lee@Example.COM "}, True),
        ({"age": ""}, True),
        ({"signup_date": "2023-02-30"}, "signup_date '2023-02-30' is not a real calendar date"),
        ({"signup_date": "yesterday"}, "signup_date 'yesterday' is not an ISO date (YYYY-MM-DD)"),
        ({"signup_date": "20230115"}, "signup_date '20230115' is not an ISO date (YYYY-MM-DD)"),
        ({"signup_date": "2999-01-01"}, "signup_date 2999-01-01 is in the future"),
        ({"email": "ann@"}, "email 'ann@' is not a valid e-mail address"),
        ({"email": " "}, "email is missing"),
        ({"age": "250"}, "age 250 is outside 13-120"),
        ({"country": "Deutschland"}, "country 'Deutschland' is not a two-letter ISO 3166 code"),
        (
            {"first_name": "", "email": "x"},
            "first_name is missing; email 'x' is not a valid e-mail address",
        ),
    ],
)
def test_validate_row_reasons(values: dict[str, str], expected: bool | str) -> None:
    good = {
        "external_id": "usr-1",
        "email": "ann.lee@example.com",
        "first_name": "Ann",
        "last_name": "Lee",
        "signup_date": "2020-05-17",
        "country": "DE",
        "age": "33",
    }
    assert pipeline.validate_row(pipeline.RawRow(2, good | values)) == expected


def test_to_user_normalises() -> None:
    row = pipeline.RawRow(
        5,
        {
            "external_id": " usr-9 ",
            "email": "  Zoe.Novak@Example.ORG ",
            "first_name": " Zoë ",
            "last_name": "de  Vries ",
            "signup_date": "2019-03-15",
            "country": "nl",
            "age": "",
        },
    )
    user = pipeline.to_user(row)
    assert user.email == "zoe.novak@example.org"
    assert user.full_name == "Zoë de Vries"
    assert (user.external_id, user.country, user.age, user.source_line) == ("usr-9", "NL", None, 5)
    assert user.signup_date.isoformat() == "2019-03-15"


# --- the import, as a script -----------------------------------------------------------------


def test_script_with_the_default_rows_from_another_cwd(tmp_path: Path) -> None:
    """The 10,000-row default, run as `python examples/user_import/run.py` from elsewhere."""
    csv_path, db, summary_path = tmp_path / "users.csv", tmp_path / "users.db", tmp_path / "s.json"
    command = [
        sys.executable,
        str(EXAMPLE / "run.py"),
        "--csv",
        str(csv_path),
        "--db",
        str(db),
        "--summary-json",
        str(summary_path),
    ]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    assert done.returncode == 0, done.stderr
    assert elapsed < 15, f"the 10,000-row import took {elapsed:.1f} s"

    truth = generate_users.read_manifest(csv_path)
    assert truth.rows == generate_users.DEFAULT_ROWS
    summary = json.loads(summary_path.read_text("utf-8"))
    assert summary["rows_read"] == truth.rows
    assert summary["invalid"] == truth.malformed
    assert summary["duplicates_in_file"] == truth.duplicates
    assert summary["already_present"] == 0
    assert summary["inserted"] == truth.unique_valid
    assert "Counts add up" in done.stdout
    assert "rejected_users" in done.stdout
    assert "users.db" in done.stdout

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert again.returncode == 0, again.stderr
    summary = json.loads(summary_path.read_text("utf-8"))
    assert (summary["inserted"], summary["already_present"]) == (0, truth.unique_valid)
