"""Import a CSV of users into SQLite with Conveyor, and print what happened.

    python examples/user_import/run.py            # from the repo root, or from anywhere

Without ``--csv`` the file is ``data/users-<rows>-seed<seed>.csv`` next to this script,
generated (deterministically) when missing; the database is ``data/users.db``. Rows that
fail validation are kept, with their reasons, in the ``rejected_users`` table of the same
database. Run it twice: the second run inserts nothing, every user is already there.

Exit status: 0 on success; 1 when the import fails or its counts do not add up.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # let `python path/to/run.py` find its sibling modules
    sys.path.insert(0, str(HERE))

from generate_users import DEFAULT_ROWS, DEFAULT_SEED, generate_users, manifest_path  # noqa: E402
from pipeline import DEFAULT_BATCH_SIZE, ImportFailedError, ImportReport, run_import  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

__all__ = ["DATA_DIR", "conservation_problem", "main"]

DATA_DIR = HERE / "data"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="run.py",
        description="Import users from a CSV into SQLite with a Conveyor pipeline.",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        help="CSV to import (default: data/users-<rows>-seed<seed>.csv next to this script, "
        "generated when missing)",
    )
    parser.add_argument(
        "--db", type=Path, help="SQLite database (default: data/users.db next to this script)"
    )
    parser.add_argument(
        "--rows",
        type=int,
        help=f"rows to generate when the CSV is missing (default {DEFAULT_ROWS})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seed of the generated CSV (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help=f"users per insert transaction (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--fresh", action="store_true", help="delete the database first")
    parser.add_argument(
        "--summary-json", type=Path, help="also write the summary's counts to this JSON file"
    )
    args = parser.parse_args(argv)
    if args.rows is not None and args.rows < 1:
        parser.error("--rows must be >= 1")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    return args


def conservation_problem(report: ImportReport) -> str | None:
    """Why the report's counts do not add up, or ``None`` when every row is accounted for."""
    problems = []
    if report.unaccounted:
        problems.append(
            f"rows read ({report.rows_read:,}) != invalid ({report.invalid:,}) + duplicates "
            f"in the file ({report.duplicates_in_file:,}) + already in the database "
            f"({report.already_present:,}) + inserted ({report.inserted:,}); "
            f"{report.unaccounted:+,} row(s) unaccounted for"
        )
    if report.rejects_stored != report.invalid:
        problems.append(
            f"{report.invalid:,} row(s) failed validation but {report.rejects_stored:,} were "
            f"stored in {report.rejects_table}"
        )
    return "; ".join(problems) or None


def main(argv: list[str] | None = None) -> int:
    """Run the import; print the summary; return the exit status."""
    args = parse_args(argv)
    out, err = Console(), Console(stderr=True)
    rows = DEFAULT_ROWS if args.rows is None else args.rows
    seed = DEFAULT_SEED if args.seed is None else args.seed
    csv_path: Path = args.csv or DATA_DIR / f"users-{rows}-seed{seed}.csv"
    db_path: Path = args.db or DATA_DIR / "users.db"

    if not csv_path.exists():
        truth = generate_users(csv_path, rows=rows, seed=seed)
        manifest = escape(_show(manifest_path(csv_path)))
        out.print(
            f"Generated {escape(_show(csv_path))} ({truth.rows:,} rows, seed {seed})\n"
            f"  with its ground truth in {manifest}",
            soft_wrap=True,
        )
    elif args.csv is not None and (args.rows is not None or args.seed is not None):
        out.print(
            f"{escape(_show(csv_path))} exists; --rows/--seed only apply when generating",
            soft_wrap=True,
        )
    if args.fresh and db_path.exists():
        db_path.unlink()
        out.print(f"Deleted {escape(_show(db_path))} (--fresh)", soft_wrap=True)

    try:
        report = run_import(csv_path, db_path, batch_size=args.batch_size)
    except ImportFailedError as exc:
        err.print(f"[bold red]Import failed[/] in stage {exc.stage!r}: {escape(str(exc.error))}")
        return 1

    out.print(_summary_table(report))
    out.print(_stage_table(report))
    if args.summary_json is not None:
        args.summary_json.parent.mkdir(parents=True, exist_ok=True)
        args.summary_json.write_text(json.dumps(report.to_json(), indent=2) + "\n", "utf-8")

    problem = conservation_problem(report)
    if problem is not None:
        err.print(f"[bold red]Counts do not add up:[/] {escape(problem)}")
        return 1
    out.print(
        f"Counts add up: {report.rows_read:,} read = {report.invalid:,} invalid "
        f"+ {report.duplicates_in_file:,} duplicates + {report.already_present:,} already "
        f"present + {report.inserted:,} inserted.",
        soft_wrap=True,
    )
    db = _show(db_path)
    out.print(
        f"Rejected rows ({report.invalid:,} this run) are kept for review, with their reasons,\n"
        f"in table [bold]{report.rejects_table}[/] of {escape(db)} (run_id {report.run_id}):",
        highlight=False,
        soft_wrap=True,
    )
    query = (
        f"SELECT line_number, reason FROM {report.rejects_table} "
        f"WHERE run_id = '{report.run_id}' ORDER BY line_number"
    )
    out.print(f'  sqlite3 {escape(db)} "{query}"', highlight=False, soft_wrap=True)
    return 0


def _summary_table(report: ImportReport) -> Table:
    table = Table(title=f"User import: {escape(report.csv_path.name)}", title_justify="left")
    table.add_column("Outcome")
    table.add_column("Rows", justify="right")
    table.add_row("Rows read", f"{report.rows_read:,}")
    table.add_row(f"Invalid (kept in {report.rejects_table})", f"{report.invalid:,}")
    table.add_row("Duplicates within the file", f"{report.duplicates_in_file:,}")
    table.add_row("Already in the database", f"{report.already_present:,}")
    table.add_row("Inserted", f"{report.inserted:,}", style="bold")
    table.add_section()
    table.add_row("Time taken (pipeline)", f"{report.duration_s:.2f} s")
    return table


def _stage_table(report: ImportReport) -> Table:
    table = Table(
        title="Per stage (from the event bus)",
        title_justify="left",
        caption="read_csv's input is the file; batch's output is batches",
        caption_justify="left",
    )
    for name in ("Stage", "In", "Out", "Failed", "Dropped", "ms"):
        table.add_column(name, justify="left" if name == "Stage" else "right")
    for t in report.stages:
        table.add_row(
            t.stage,
            f"{t.records_in:,}",
            f"{t.records_out:,}",
            f"{t.records_failed:,}" if t.records_failed else "",
            f"{t.records_filtered:,}" if t.records_filtered else "",
            f"{t.duration_ms:.1f}",
        )
    return table


def _show(path: Path) -> str:
    """``path`` relative to the working directory when it is under it, else absolute."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd()))
    except ValueError:
        return str(resolved)


if __name__ == "__main__":
    raise SystemExit(main())
