"""The README example "CSV to PostgreSQL": a project whose config.yaml names its source (a
CSV file validated with a Pydantic model) and its sink (a PostgreSQL table upserted by
``id``), run by ``conveyor run`` as a user runs it. Rows that do not fit the model, and
penguins the check stage refuses, end up in the dead-letter queue; the rest in the table,
each once, also after a second run (an upsert).

The files below are the example, as README.md shows it (only the table
name is made unique per test run).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor.dlq import open_dead_letter_store

CONFIG = """\
pipeline:
  name: penguins
  max_dead_letters: 10%
source:
  connector: csv
  path: data/penguins.csv
  model: pipeline.models:Penguin      # each row validated (and coerced) into a Penguin
sink:
  connector: postgres
  dsn: ${PG_DSN}
  table: penguins
  key: [id]                           # upsert: a second run updates, never duplicates
"""

MODELS = '''\
"""What a penguin row must look like."""

from typing import Literal

from pydantic import BaseModel


class Penguin(BaseModel):
    id: int
    species: Literal["Adelie", "Chinstrap", "Gentoo"]
    island: str
    bill_length_mm: float
    body_mass_g: int | None = None
'''

CHECK = '''\
"""Refuse implausible measurements (a dead letter each; the rest flows on)."""

from conveyor import MapStage
from pipeline.models import Penguin


def check(penguin: Penguin) -> Penguin:
    if penguin.body_mass_g is not None and not 2000 <= penguin.body_mass_g <= 7000:
        raise ValueError(f"penguin {penguin.id}: body mass {penguin.body_mass_g} g is implausible")
    return penguin


stage = MapStage(check)
'''

SPECIES = ["Adelie", "Chinstrap", "Gentoo"]
ISLANDS = ["Torgersen", "Dream", "Biscoe"]
N = 300


def csv_text(mass_offset: int = 0) -> tuple[str, set[int], set[int]]:
    """The CSV, the ids the model refuses, and the ids the check refuses."""
    lines = ["id,species,island,bill_length_mm,body_mass_g"]
    unfit, implausible = set(), set()
    for i in range(1, N + 1):
        species, island = SPECIES[i % 3], ISLANDS[i % 3]
        bill, mass = f"{35 + i % 20}.{i % 10}", str(3000 + i * 7 % 2000 + mass_offset)
        if i % 50 == 7:
            bill = "not measured"  # not a float: the source rejects the row
            unfit.add(i)
        elif i % 61 == 3:
            species = "Emperor"  # not one of the species
            unfit.add(i)
        elif i % 73 == 5:
            mass = "95000"  # fits the model, refused by the check stage
            implausible.add(i)
        elif i % 10 == 0:
            mass = ""  # empty cells are None
        lines.append(f"{i},{species},{island},{bill},{mass}")
    return "\n".join(lines) + "\n", unfit, implausible


def make_project(root: Path, table: str) -> Path:
    pipeline = root / "src" / "pipeline"
    (pipeline / "stages").mkdir(parents=True)
    (pipeline / "__init__.py").write_text("")
    (pipeline / "stages" / "__init__.py").write_text("")
    (pipeline / "models.py").write_text(MODELS)
    (pipeline / "stages" / "10_check.py").write_text(CHECK)
    (pipeline / "config.yaml").write_text(CONFIG.replace("table: penguins", f"table: {table}"))
    (root / "data").mkdir()
    return root


def conveyor_run(root: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PG_DSN": dsn, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "run", str(root), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def letters(root: Path) -> list[Any]:
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        return list(store.list())


def test_csv_to_postgres_from_config(tmp_path: Path, pg_dsn: str, pg_table: str) -> None:
    root = make_project(tmp_path / "penguins", pg_table)
    text, unfit, implausible = csv_text()
    (root / "data" / "penguins.csv").write_text(text)
    try:
        done = conveyor_run(root, pg_dsn)
        assert done.returncode == 0, done.stdout + done.stderr
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                f'SELECT id, species, bill_length_mm, body_mass_g FROM "{pg_table}"'
            ).fetchall()
        ids = [r[0] for r in rows]
        assert sorted(ids) == sorted(set(range(1, N + 1)) - unfit - implausible)
        by_id = {r[0]: r for r in rows}
        assert by_id[1] == (1, "Chinstrap", 36.1, 3007)  # coerced: int, float, int
        assert by_id[10][3] is None  # an empty cell

        dead = letters(root)
        from_source = [d for d in dead if d.stage == "source"]
        from_check = [d for d in dead if d.stage != "source"]
        assert {d.record["line"] - 1 for d in from_source} == unfit  # line 1 is the header
        assert all(d.record["file"] == "data/penguins.csv" for d in from_source)
        messages = {d.record["line"]: d.message for d in from_source}
        assert messages[8].startswith("data/penguins.csv:8: field 'bill_length_mm'")
        assert messages[4].startswith("data/penguins.csv:4: field 'species'")
        # (Penguin records: read back as their JSON rendering, pipeline.models not imported)
        assert {d.record["id"] for d in from_check} == implausible
        assert all("is implausible" in d.message for d in from_check)

        # a second run of changed data upserts: the same ids, the new values, no duplicate
        text, _, _ = csv_text(mass_offset=1)
        (root / "data" / "penguins.csv").write_text(text)
        again = conveyor_run(root, pg_dsn)
        assert again.returncode == 0, again.stdout + again.stderr
        with psycopg.connect(pg_dsn) as conn:
            after: dict[int, int] = dict(
                conn.execute(f'SELECT id, body_mass_g FROM "{pg_table}"').fetchall()
            )
        assert sorted(after) == sorted(ids)
        assert after[1] == 3008
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                "DELETE FROM conveyor_checkpoints WHERE pipeline = %s", (f"penguins -> {pg_table}",)
            )


def test_the_example_in_the_readme_is_the_one_tested() -> None:
    draft = Path(__file__).resolve().parents[2] / "README.md"
    if not draft.exists():
        pytest.fail("README.md is missing")
    text = draft.read_text(encoding="utf-8")
    for block in (CONFIG, MODELS, CHECK):
        assert textwrap.dedent(block).strip() in text
