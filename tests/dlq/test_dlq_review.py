"""Dead-letter review: ``dlq list --run/--limit``, repeated failures counted once, ``dlq
purge``, ``dlq export`` and a ``dlq show`` that says once what it could not load, on real
SQLite and JSON-lines stores filled by real pipeline runs."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conveyor import MapStage, Pipeline
from conveyor.cli import app
from conveyor.dlq import DeadLetterStore, open_dead_letter_store
from conveyor.dlq._review import record_digest, spreadsheet_safe
from conveyor.project.scaffold import new_project

STORES = {"sqlite": ".conveyor/dead_letters.db", "jsonl": ".conveyor/dead_letters.jsonl"}
BAD = {0, 5, 10}  # the ids that fail the "check" stage
TRICKY = '=HYPERLINK("http://x")\x1b[2J'


def check(record: dict[str, Any]) -> dict[str, Any]:
    if record["id"] in BAD:
        raise ValueError(f"bad id {record['id']}")
    return record


def rows(n: int = 12) -> list[dict[str, Any]]:
    return [{"id": i, "note": TRICKY if i == 5 else f"row {i}"} for i in range(n)]


@pytest.fixture(autouse=True)
def _isolated_imports() -> Iterator[None]:
    path, modules = list(sys.path), set(sys.modules)
    yield
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name == "pipeline" or name.startswith(("pipeline.", "review_records")):
            del sys.modules[name]


@pytest.fixture(params=sorted(STORES))
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A scaffolded project whose dead letters go to a SQLite or a JSON-lines store."""
    root = tmp_path / "demo"
    new_project(root)
    config = root / "src" / "pipeline" / "config.yaml"
    text = config.read_text().replace(
        "  batch_size: 500\n", f"  batch_size: 500\n  dead_letters: {STORES[request.param]}\n"
    )
    config.write_text(text)
    return root.resolve()


def store_path(project: Path) -> Path:
    for spec in STORES.values():
        if spec in (project / "src" / "pipeline" / "config.yaml").read_text():
            return project / spec
    raise AssertionError("no dead_letters in config.yaml")


def run_pipeline(
    project: Path, records: list[Any], *, stage: Any = check, name: str = "check"
) -> str:
    report = (
        Pipeline[Any, Any]("review")
        .add_stage(MapStage(stage, name=name))
        .run(
            records,
            [].extend,
            dead_letters=store_path(project),
            max_dead_letters="100%",
            handle_signals=False,
        )
    )
    return str(report.run_id)


def opened(project: Path) -> DeadLetterStore:
    return open_dead_letter_store(store_path(project))


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def short_ids(output: str) -> set[str]:
    """The 12-character ids at the start of listing lines."""
    return {line.split(" ", 1)[0] for line in output.splitlines() if " check " in line}


def tails(ids: Any) -> set[str]:
    return {i[-12:] for i in ids}


class TestList:
    def test_a_repeated_failure_is_one_line_with_its_count_and_times(self, project: Path) -> None:
        runs = [run_pipeline(project, rows()) for _ in range(3)]
        with opened(project) as store:
            letters = store.list()
        assert len(letters) == 9  # 3 bad rows x 3 runs
        newest = {}
        for letter in letters:
            newest[letter.record["id"]] = letter
        code, out = cli("dlq", "list", str(project))
        assert code == 0, out
        assert short_ids(out) == tails(d.id for d in newest.values())
        assert out.count(" | 3x, first ") == 3
        assert "9 dead letter(s)" in out
        assert "3 failure(s) shown" in out
        first = min(d.created_at for d in letters).strftime("%Y-%m-%d %H:%M:%S")
        assert f"first {first}Z" in out
        assert len({d.run_id for d in letters}) == len(runs) == 3

    def test_all_occurrences_shows_every_letter(self, project: Path) -> None:
        for _ in range(2):
            run_pipeline(project, rows())
        with opened(project) as store:
            every = tails(d.id for d in store.list())
        code, out = cli("dlq", "list", str(project), "--all-occurrences")
        assert code == 0, out
        assert short_ids(out) == every
        assert len(every) == 6
        assert "6 dead letter(s)" in out

    def test_same_record_other_error_type_is_another_failure(self, project: Path) -> None:
        def key_error(record: dict[str, Any]) -> dict[str, Any]:
            if record["id"] in BAD:
                raise KeyError("missing")
            return record

        run_pipeline(project, rows())
        run_pipeline(project, rows(), stage=key_error)
        with opened(project) as store:
            groups = store.groups()
        assert {(g.error_type, json.loads(g.record_json)["id"]) for g in groups} == {
            (kind, i) for kind in ("builtins.ValueError", "builtins.KeyError") for i in BAD
        }
        assert {g.occurrences for g in groups} == {1}

    def test_run_latest_and_run_id(self, project: Path) -> None:
        first = run_pipeline(project, rows())
        BAD.add(7)
        try:
            second = run_pipeline(project, rows())
        finally:
            BAD.discard(7)
        with opened(project) as store:
            by_run = {run: tails(d.id for d in store.list(run_id=run)) for run in (first, second)}
        assert len(by_run[second]) == 4
        code, out = cli("dlq", "list", str(project), "--run", "latest", "--all-occurrences")
        assert code == 0, out
        assert short_ids(out) == by_run[second]
        assert f"of run {second}" in out
        code, out = cli("dlq", "list", str(project), "--run", first, "--all-occurrences")
        assert short_ids(out) == by_run[first]
        code, out = cli("dlq", "list", str(project), "--run", "latest")  # grouped: once each
        assert short_ids(out) == by_run[second]

    def test_limit_keeps_the_newest_and_says_n_of_total(self, project: Path) -> None:
        run_pipeline(project, rows())
        BAD.update({1, 2})
        try:
            run_pipeline(project, rows())
        finally:
            BAD.difference_update({1, 2})
        with opened(project) as store:
            letters = store.list()
        assert len(letters) == 8
        code, out = cli("dlq", "list", str(project), "--all-occurrences", "--limit", "3")
        assert code == 0, out
        assert short_ids(out) == tails(d.id for d in letters[-3:])
        assert "3 of 8 dead letter(s)" in out
        code, out = cli("dlq", "list", str(project), "--limit", "2")
        assert code == 0, out
        assert "2 of 5 failure(s) shown" in out
        assert short_ids(out) == tails(d.id for d in letters[-2:])

    def test_store_list_newest(self, project: Path) -> None:
        run_pipeline(project, rows())
        with opened(project) as store:
            every = store.list()
            assert store.list(limit=2, newest=True) == every[-2:]
            assert store.list(limit=0, newest=True) == []
            assert store.latest_run() == every[-1].run_id


class TestPurge:
    def test_without_yes_nothing_is_deleted(self, project: Path) -> None:
        run_pipeline(project, rows())
        with opened(project) as store:
            before = {d.id for d in store.list()}
        code, out = cli("dlq", "purge", str(project), "--stage", "check")
        assert code == 0, out
        assert "would delete 3 dead letter(s)" in out
        assert "--yes" in out
        assert short_ids(out) == tails(before)
        with opened(project) as store:
            assert {d.id for d in store.list()} == before

    def test_no_filter_is_refused(self, project: Path) -> None:
        run_pipeline(project, rows())
        code, out = cli("dlq", "purge", str(project), "--yes")
        assert code == 1
        assert "say what to purge" in out
        with opened(project) as store:
            assert store.count() == 3
            with pytest.raises(ValueError, match="without a filter"):
                store.purge()

    def test_replayed_deletes_only_replayed_letters(self, project: Path) -> None:
        run_pipeline(project, rows())
        with opened(project) as store:
            letters = store.list()
            store.mark_replayed([letters[0].id])
        code, out = cli("dlq", "purge", str(project), "--replayed", "--yes")
        assert code == 0, out
        assert "deleted 1 dead letter(s)" in out
        with opened(project) as store:
            assert {d.id for d in store.list(include_replayed=True)} == {d.id for d in letters[1:]}

    def test_before_and_stage(self, project: Path) -> None:
        def other(record: dict[str, Any]) -> dict[str, Any]:
            raise ValueError("always")

        run_pipeline(project, rows())
        run_pipeline(project, rows(2), stage=other, name="other")
        with opened(project) as store:
            letters = store.list()
            assert store.purge(before=datetime.now(UTC) - timedelta(days=1)) == []
        tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
        code, out = cli("dlq", "purge", str(project), "--before", tomorrow, "--stage", "other")
        assert code == 0, out
        assert "would delete 2" in out
        code, out = cli(
            "dlq", "purge", str(project), "--before", tomorrow, "--stage", "other", "--yes"
        )
        assert code == 0, out
        with opened(project) as store:
            assert {d.id for d in store.list()} == {d.id for d in letters if d.stage == "check"}
            # the store still takes letters after a purge (the JSON-lines file was rewritten)
            run_pipeline(project, rows())
        with opened(project) as store:
            assert store.count() == 6

    def test_a_bad_date_is_a_usage_error(self, project: Path) -> None:
        code, out = cli("dlq", "purge", str(project), "--before", "last tuesday")
        assert code == 2
        assert "ISO date" in out


class TestExport:
    def test_csv_is_spreadsheet_safe_and_complete(self, project: Path, tmp_path: Path) -> None:
        for _ in range(2):
            run_pipeline(project, rows())
        target = tmp_path / "review" / "rejects.csv"
        code, out = cli("dlq", "export", str(project), "--output", str(target))
        assert code == 0, out
        table = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8"))))
        assert {json.loads(r["record"])["id"] for r in table} == BAD
        assert {r["occurrences"] for r in table} == {"2"}
        with opened(project) as store:
            assert {r["id"] for r in table} == {g.id for g in store.groups()}
        five = next(r for r in table if json.loads(r["record"])["id"] == 5)
        assert "\x1b" not in target.read_text()
        assert {r["error_type"] for r in table} == {"builtins.ValueError"}
        assert five["first_seen"] < five["last_seen"]
        assert five["message"] == "bad id 5"

    def test_formula_cells_are_quoted(self, project: Path) -> None:
        def formula(record: dict[str, Any]) -> dict[str, Any]:
            raise ValueError(TRICKY)

        run_pipeline(project, rows(1), stage=formula, name="check")
        code, out = cli("dlq", "export", str(project))
        assert code == 0, out
        (row,) = csv.DictReader(io.StringIO(out))
        assert row["message"] == '\'=HYPERLINK("http://x")\\x1b[2J'
        assert spreadsheet_safe("@SUM(A1)") == "'@SUM(A1)"
        assert spreadsheet_safe("+1") == "'+1"
        assert spreadsheet_safe("-1") == "'-1"
        assert spreadsheet_safe("plain") == "plain"

    def test_jsonl_by_stage_and_run(self, project: Path) -> None:
        run_pipeline(project, rows())
        latest = run_pipeline(project, rows(6))  # ids 0 and 5 fail again
        code, out = cli("dlq", "export", str(project), "--format", "jsonl", "--run", "latest")
        assert code == 0, out
        lines = [json.loads(line) for line in out.splitlines()]
        assert {line["record"]["id"] for line in lines} == {0, 5}
        assert {tuple(line["run_ids"]) for line in lines} == {(latest,)}
        assert "\x1b" not in out
        assert "\\u001b" in out
        code, out = cli("dlq", "export", str(project), "--format", "jsonl", "--stage", "nope")
        assert code == 0
        assert out == ""
        code, out = cli("dlq", "export", str(project), "--format", "xml")
        assert code == 1
        assert "csv or jsonl" in out

    def test_the_same_record_is_recognised_by_its_canonical_json(self) -> None:
        assert record_digest('{"a": 1, "b": [1, 2]}') == record_digest('{"b":[1,2],"a":1}')
        assert record_digest('{"a": 1}') != record_digest('{"a": 2}')


RECORD_MODULE = """
from dataclasses import dataclass

@dataclass
class Reading:
    id: int
    note: str
"""


def reading_records(folder: Path, package: str) -> list[Any]:
    """Records of a dataclass defined in ``folder/package``, importable now only."""
    module_dir = folder / package.replace(".", "/")
    module_dir.parent.mkdir(parents=True, exist_ok=True)
    (module_dir.parent / f"{module_dir.name}.py").write_text(textwrap.dedent(RECORD_MODULE))
    sys.path.insert(0, str(folder))
    module = __import__(package, fromlist=["Reading"])
    return [module.Reading(i, f"row {i}") for i in range(12)]


def checked_reading(record: Any) -> Any:
    if record.id in BAD:
        raise ValueError(f"bad id {record.id}")
    return record


def forget(package: str, folder: Path) -> None:
    sys.path.remove(str(folder))
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
    top = package.split(".")[0]
    sys.modules.pop(top, None)


class TestShow:
    def test_unloadable_records_are_said_once(
        self, project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        elsewhere = tmp_path / "elsewhere"
        records = reading_records(elsewhere, "review_records")
        for _ in range(3):
            run_pipeline(project, records, stage=checked_reading)
        forget("review_records", elsewhere)
        with opened(project) as store:
            letter = store.list(limit=1)[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            code, out = cli("dlq", "show", letter.id[-12:], str(project))
        assert code == 0, out
        assert "record (its JSON rendering): {'__type__': 'review_records.Reading', 'id': 0" in out
        warnings = [r for r in caplog.records if r.name == "conveyor.dlq"]
        assert len(warnings) == 1
        assert "ModuleNotFoundError" in warnings[0].getMessage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            code, out = cli("dlq", "list", str(project), "--all-occurrences")
        assert code == 0, out
        (warning,) = [r for r in caplog.records if r.name == "conveyor.dlq"]
        assert warning.getMessage().startswith("9 of 9 dead letter(s)")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            code, out = cli("dlq", "list", str(project))  # grouped: one letter a failure
        assert code == 0
        assert out.count(" | 3x, first ") == 3
        (warning,) = [r for r in caplog.records if r.name == "conveyor.dlq"]
        assert warning.getMessage().startswith("3 of 3 dead letter(s)")
        with opened(project) as store:  # export reads the stored JSON only
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
                assert {g.occurrences for g in store.groups()} == {3}
            assert not [r for r in caplog.records if r.name == "conveyor.dlq"]

    def test_records_of_the_project_package_load_exactly(
        self, project: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        src = project / "src"
        records = reading_records(src, "pipeline.shared.review_reading")
        run_pipeline(project, records, stage=checked_reading)
        forget("pipeline.shared.review_reading", src)
        with opened(project) as store:
            letter = store.list(limit=1)[0]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            code, out = cli("dlq", "show", letter.id, str(project))
        assert code == 0, out
        assert "record: Reading(id=0, note='row 0')" in out
        assert not [r for r in caplog.records if r.name == "conveyor.dlq"]
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            code, out = cli("dlq", "list", str(project), "--all-occurrences")
        assert code == 0, out
        assert "record=Reading(id=0" in out
        assert not [r for r in caplog.records if r.name == "conveyor.dlq"]
        assert str(src) not in sys.path  # the project's imports were for the show only


def test_a_jsonl_purge_stops_a_writer_that_had_the_old_file(tmp_path: Path) -> None:
    from conveyor.dlq import DeadLetter
    from conveyor.errors import DeadLetterStoreError

    path = tmp_path / "dl.jsonl"
    with open_dead_letter_store(path) as writer, open_dead_letter_store(path) as purger:
        letters = [
            DeadLetter.from_exception({"id": i}, ValueError("x"), stage="s", attempts=1, run_id="r")
            for i in range(3)
        ]
        writer.write(letters)
        writer.mark_replayed([letters[0].id])
        (gone,) = purger.purge(replayed=True)
        assert gone.ids == (letters[0].id,)
        assert {d.id for d in purger.list(include_replayed=True)} == {d.id for d in letters[1:]}
        more = DeadLetter.from_exception(
            {"id": 9}, ValueError("x"), stage="s", attempts=1, run_id="r"
        )
        with pytest.raises(DeadLetterStoreError, match="deleted or replaced"):
            writer.write([more])
        purger.write([more])  # the purging store goes on with the new file
        assert purger.count() == 3
