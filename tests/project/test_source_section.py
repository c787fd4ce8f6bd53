"""config.yaml's top-level ``source:`` section with a file connector (no source stage
file): ``conveyor run`` reads a glob of CSV files typed by a model of the project, the bad
rows are dead letters ``FILE:LINE: reason`` in ``conveyor dlq list``, mistakes in the
section are reported at their file:line:column, and a run killed with SIGKILL resumes
(``--resume``) by seeking the files, every id once in the sink or the dead letters."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _cli import ENV, conveyor, flat

from conveyor.dlq import open_dead_letter_store
from conveyor.errors import ConfigError
from conveyor.project.project import load_project

MODELS = '''
"""The records of the penguins pipeline."""

from pydantic import BaseModel


class Penguin(BaseModel):
    id: int
    species: str
    bill_length_mm: float | None
    body_mass_g: int | None
'''

CLEAN = '''
"""Keeps what the sink needs, as a dict."""

from conveyor import MapStage
from pipeline.contracts.models import Penguin


def clean(penguin: Penguin) -> dict:
    if penguin.species == "Unicorn":
        raise ValueError(f"penguin {penguin.id} is no penguin")
    return {"id": penguin.id, "heavy": (penguin.body_mass_g or 0) > 4000}


stage = MapStage(clean)
'''

SOURCE_STAGE = """
from conveyor.project import Source


class Nothing(Source):
    def read(self):
        return []
"""

SOURCE = """\
source:
  connector: csv
  path: data/in/*.csv
  model: pipeline.contracts.models:Penguin
"""

A_CSV = (
    "id,species,bill_length_mm,body_mass_g\n"
    "1,Adelie,39.1,3750\n"
    "2,Adelie,NA,NA\n"
    "3,Gentoo,47.5,heavy\n"
    "4,Gentoo,49.1,5200\n"
    "5,Unicorn,1.0,1\n"
)
B_CSV = (
    "id,species,bill_length_mm,body_mass_g\n"
    "6,Chinstrap,46.5,3500\n"
    "7,Chinstrap\n"
    '8,"Gentoo\nsubspecies",50.0,5000\n'
    "nine,Adelie,40.0,3300\n"
)


def make(tmp_path: Path, source: str = SOURCE) -> Path:
    root = tmp_path / "penguins"
    package = root / "src" / "pipeline"
    (package / "stages").mkdir(parents=True)
    (package / "contracts").mkdir()
    (package / "__init__.py").write_text("")
    (package / "stages" / "__init__.py").write_text("")
    (package / "contracts" / "__init__.py").write_text("")
    (package / "contracts" / "models.py").write_text(MODELS)
    (package / "stages" / "10_clean.py").write_text(CLEAN)
    (package / "config.yaml").write_text(
        "pipeline:\n  name: penguins\n  batch_size: 3\n  max_dead_letters: 60%\n"
        + source
        + "sink: {connector: jsonl, path: data/out.jsonl}\n"
    )
    (root / "data" / "in").mkdir(parents=True)
    (root / "data" / "in" / "a.csv").write_text(A_CSV)
    (root / "data" / "in" / "b.csv").write_text(B_CSV)
    return root


def test_a_csv_source_from_config_alone_runs_and_letters_its_bad_rows(tmp_path: Path) -> None:
    root = make(tmp_path)
    done = conveyor("run", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "penguins completed: 9 in, 5 out" in flat(done.stdout)
    out = [json.loads(line) for line in (root / "data" / "out.jsonl").read_text().splitlines()]
    assert out == [
        {"id": 1, "heavy": False},
        {"id": 2, "heavy": False},
        {"id": 4, "heavy": True},
        {"id": 6, "heavy": False},
        {"id": 8, "heavy": True},
    ]
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        letters = {d.message: d for d in store.list()}
    assert sorted(letters) == [
        "data/in/a.csv:4: field 'body_mass_g': Input should be a valid integer, unable to "
        "parse string as an integer (got 'heavy')",
        "data/in/b.csv:3: 2 fields, expected 4 (id, species, bill_length_mm, body_mass_g)",
        "data/in/b.csv:6: field 'id': Input should be a valid integer, unable to parse "
        "string as an integer (got 'nine')",
        "penguin 5 is no penguin",
    ]
    rejected = letters[
        "data/in/b.csv:3: 2 fields, expected 4 (id, species, bill_length_mm, body_mass_g)"
    ]
    assert rejected.stage == "source"
    assert rejected.record == {"file": "data/in/b.csv", "line": 3, "raw": "7,Chinstrap"}

    listed = conveyor("dlq", "list", str(root), cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    text = flat(listed.stdout)
    error = "source attempts=1 conveyor.errors.SourceRecordError"
    assert f"{error}: data/in/a.csv:4: field 'body_m" in text  # (shortened)
    assert f"{error}: data/in/b.csv:3: 2 fields, expected 4" in text
    assert f"{error}: data/in/b.csv:6: field 'id'" in text
    assert "4 dead letter(s)" in text

    again = conveyor("run", str(root), cwd=tmp_path)  # finished: a plain rerun is allowed
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        (
            "source:\n  connector: cvs\n  path: data/in/*.csv\n",
            "6:3",
            "source.connector 'cvs' is not a source connector; did you mean 'csv'?",
        ),
        (
            "source:\n  connector: csv\n  path: data/in/*.csv\n  delimeter: ';'\n",
            "8:3",
            "unknown key 'delimeter' in source; did you mean 'delimiter'?",
        ),
        (
            "source:\n  connector: csv\n  path: data/none/*.csv\n",
            "7:3",
            "source.path 'data/none/*.csv' matches no file (the csv source reads every file "
            "the glob matches); put the input files there, or correct source.path",
        ),
        (
            "source:\n  connector: csv\n  path: ../*.csv\n",
            "7:3",
            "source.path '../*.csv' is outside the project folder",
        ),
        (
            "source:\n  connector: jsonl\n  path: data/in/*.csv\n  model: pipeline.contracts"
            ".models:Pengiun\n",
            "8:3",
            "source.model 'pipeline.contracts.models:Pengiun': module "
            "'pipeline.contracts.models' has no attribute 'Pengiun'",
        ),
        (
            "source:\n  connector: csv\n  path: data/in/*.csv\n  header: false\n",
            "5:1",
            "without a header (header: false), columns must name the columns",
        ),
        (
            "source: {connector: parquet, path: data/in, batch_rows: 0}\n",
            "5:45",
            "source.batch_rows: Input should be greater than 0",
        ),
    ],
)
def test_source_options_are_validated_with_their_place(
    tmp_path: Path, source: str, where: str, expected: str
) -> None:
    root = make(tmp_path, source)
    with pytest.raises(ConfigError) as refused:
        load_project(root)
    text = str(refused.value)
    assert expected in text
    assert text.startswith(f"{root / 'src' / 'pipeline' / 'config.yaml'}:{where}: "), text


def test_a_source_section_and_a_source_stage_file_together_are_refused(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "src" / "pipeline" / "stages" / "00_source.py").write_text(SOURCE_STAGE)
    with pytest.raises(ConfigError) as refused:
        load_project(root)
    text = str(refused.value)
    assert text.startswith(f"{root / 'src' / 'pipeline' / 'config.yaml'}:5:1: ")
    assert "both a `source:` section and the source stage file 00_source.py" in text
    done = conveyor("run", str(root), cwd=tmp_path)
    assert done.returncode == 1
    assert "both a `source:` section and the source stage file 00_source.py" in flat(done.stderr)


def test_the_source_reads_the_files_it_names_for_dvc_and_the_cache(tmp_path: Path) -> None:
    root = make(tmp_path)
    project = load_project(root)
    assert project.source is project.configured_source
    assert project.source is not None
    assert project.source.inputs() == ["data/in/a.csv", "data/in/b.csv"]
    assert type(project.source).__name__ == "CsvSource"
    assert textwrap.dedent(SOURCE) in (root / "src" / "pipeline" / "config.yaml").read_text()


SLOW_CLEAN = '''
"""Refuses ids ending in 13; slow when asked, so that a run can be killed."""

import os
import time

from conveyor import MapStage


def clean(penguin):
    if penguin.id % 100 == 13:
        raise ValueError(f"penguin {penguin.id} is refused")
    if penguin.id % 100 == 0:
        time.sleep(float(os.environ.get("SLOW", "0")))
    return {"id": penguin.id, "mass": penguin.body_mass_g}


stage = MapStage(clean)
'''


def _sqlite_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT id FROM penguins")]
        except sqlite3.OperationalError:
            return []


@pytest.mark.timeout(180)
def test_a_killed_run_resumes_by_seeking_the_csv_files(tmp_path: Path) -> None:
    root = make(tmp_path)
    (root / "src" / "pipeline" / "stages" / "10_clean.py").write_text(SLOW_CLEAN)
    config = root / "src" / "pipeline" / "config.yaml"
    config.write_text(
        config.read_text()
        .replace("batch_size: 3", "batch_size: 200\n  checkpoint_every: 500r")
        .replace(
            "sink: {connector: jsonl, path: data/out.jsonl}",
            "sink: {connector: sqlite, path: data/out.db, table: penguins}",
        )
    )
    n, bad = 20_000, set()
    for part in range(4):
        lines = ["id,species,bill_length_mm,body_mass_g"]
        for i in range(part * n // 4, (part + 1) * n // 4):
            if i % 97 == 5:
                bad.add(i)
                lines.append(f"{i},Adelie,NA,heavy")
            else:
                lines.append(f"{i},Adelie,40.5,{3000 + i % 1000}")
        (root / "data" / "in" / f"p{part}.csv").write_text("\n".join(lines) + "\n")
    for old in ("a.csv", "b.csv"):
        (root / "data" / "in" / old).unlink()
    out = root / "data" / "out.db"
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", str(root)],
        cwd=tmp_path,
        env={**ENV, "SLOW": "0.01"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    while len(_sqlite_ids(out)) < 3_000:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run never got that far"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)
    assert len(_sqlite_ids(out)) < n - len(bad)

    resumed = conveyor("run", str(root), "--resume", cwd=tmp_path, timeout=150)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    text = flat(resumed.stdout)
    assert "resumed from the checkpoint of run" in text
    assert "seeked to offset ['data/in/p" in text, text  # the files are not read again
    sink = _sqlite_ids(out)
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        every = store.list(limit=None)
    source = [int(d.record["raw"].split(",")[0]) for d in every if d.stage == "source"]
    stage = [int(d.record["id"]) for d in every if d.stage == "clean"]
    ids = sink + source + stage
    assert len(ids) == len(set(ids)) == n
    assert set(source) == bad
    assert set(stage) == {i for i in range(n) if i % 100 == 13} - bad
