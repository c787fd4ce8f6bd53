"""config.yaml's top-level ``sink:`` section, and `conveyor run --resume / --fresh` of a
project killed mid-run (SIGKILL): exactly once into SQLite, refusals that say what to do."""

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

SOURCE = '''
"""Numbered records; every 50th is bad."""

from pydantic import BaseModel

from conveyor.project import Source


class Numbers(Source):
    deterministic = True

    class Config(BaseModel):
        count: int = 100

    def __init__(self, config: Config) -> None:
        self.count = config.count

    def read(self):
        for i in range(self.count):
            yield {"id": i, "bad": i % 50 == 7}
'''

CHECK = '''
"""Refuses the bad records; slow when asked, so that a run can be killed."""

import time

from conveyor import MapStage


def check(record):
    if record["bad"]:
        raise ValueError(f"record {record['id']} is bad")
    if record["id"] % 100 == 0:
        time.sleep(float(__import__("os").environ.get("SLOW", "0")))
    return {"id": record["id"], "square": record["id"] ** 2}


stage = MapStage(check)
'''


def make(tmp_path: Path, sink: str, *, count: int = 100, extra: str = "") -> Path:
    root = tmp_path / "nums"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "00_source.py").write_text(SOURCE)
    (stages / "10_check.py").write_text(CHECK)
    (root / "src" / "pipeline" / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            pipeline:
              name: nums
              batch_size: 50
              max_dead_letters: 50%
              checkpoint_every: 0.05
            {extra}stages:
              source:
                params: {{count: {count}}}
            sink: {sink}
            """
        )
    )
    return root


def sqlite_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as conn:
        try:
            return [r[0] for r in conn.execute("SELECT id FROM squares")]
        except sqlite3.OperationalError:
            return []


def letter_ids(root: Path) -> list[int]:
    with open_dead_letter_store(root / ".conveyor" / "dead_letters.db") as store:
        return [letter.record["id"] for letter in store.list()]


SQLITE = "{connector: sqlite, path: data/out.db, table: squares}"


def test_a_sqlite_sink_from_config_alone(tmp_path: Path) -> None:
    root = make(tmp_path, SQLITE)
    done = conveyor("run", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    s, q = sqlite_ids(root / "data" / "out.db"), letter_ids(root)
    assert sorted(s + q) == list(range(100))
    assert len(q) == 2
    assert "nums completed: 100 in, 98 out" in flat(done.stdout)


def test_a_jsonl_sink_from_config_alone(tmp_path: Path) -> None:
    root = make(tmp_path, "{connector: jsonl, path: data/out.jsonl}")
    done = conveyor("run", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (root / "data" / "out.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == [
        i for i in range(100) if i % 50 != 7
    ]


def test_a_sink_section_and_a_sink_stage_file_together_are_refused(tmp_path: Path) -> None:
    root = make(tmp_path, SQLITE)
    stages = root / "src" / "pipeline" / "stages"
    (stages / "90_sink.py").write_text(
        "from conveyor.project import Sink\n\n"
        "class Out(Sink):\n    def write(self, records):\n        pass\n"
    )
    with pytest.raises(ConfigError) as refused:
        load_project(root)
    text = str(refused.value)
    assert "config.yaml:" in text
    assert "90_sink.py" in text
    assert "`sink:` section" in text


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        (
            "{connector: sqlit, path: x.db, table: t}",
            "'sqlit' is not a sink connector; did you mean 'sqlite'? (connectors: csv, jsonl, "
            "parquet, postgres, sqlite; `conveyor connectors` lists their options)",
        ),
        ("{path: x.db, table: t}", "sink.connector is missing"),
        (
            "{connector: sqlite, path: x.db, tabel: t}",
            "unknown key 'tabel' in sink; did you mean 'table'?",
        ),
        ("{connector: sqlite, path: x.db}", "sink.table: Field required"),
        ("{connector: sqlite, path: x.db, table: t, key: id}", "sink.key: Input should be"),
    ],
)
def test_sink_options_are_validated_with_their_place(
    tmp_path: Path, sink: str, expected: str
) -> None:
    root = make(tmp_path, sink)
    with pytest.raises(ConfigError) as refused:
        load_project(root)
    text = str(refused.value)
    assert expected in text
    assert f"{root / 'src' / 'pipeline' / 'config.yaml'}:" in text  # file:line:column


def test_a_postgres_dsn_from_the_environment_is_never_printed(tmp_path: Path, pg_dsn: str) -> None:
    root = make(tmp_path, "{connector: postgres, dsn: '${PG_DSN}', table: 1, key: [id]}")
    secret = pg_dsn + " password=hunter2"
    env = {**ENV, "PG_DSN": secret}
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "run", str(root)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "hunter2" not in done.stdout + done.stderr
    assert "sink.table: Input should be a valid string" in flat(done.stderr)


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", str(root), *args],
        cwd=root.parent,
        env={**ENV, "SLOW": "0.01"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def kill_when(root: Path, process: subprocess.Popen[str], rows: int) -> None:
    deadline = time.monotonic() + 60
    while len(sqlite_ids(root / "data" / "out.db")) < rows:
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline, "the run never got that far"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


@pytest.mark.timeout(180)
def test_a_killed_project_run_refuses_a_plain_rerun_and_resumes_exactly_once(
    tmp_path: Path,
) -> None:
    root = make(tmp_path, SQLITE, count=20_000)
    kill_when(root, start(root), rows=3_000)
    committed = sqlite_ids(root / "data" / "out.db")
    assert 3_000 <= len(committed) < 19_000

    plain = conveyor("run", str(root), cwd=tmp_path)
    assert plain.returncode == 1
    text = flat(plain.stderr)
    assert "unfinished checkpoint" in text
    assert "--resume" in text
    assert "--fresh" in text
    assert "data/out.db table conveyor_checkpoints" in text

    both = conveyor("run", str(root), "--resume", "--fresh", cwd=tmp_path)
    assert both.returncode == 1
    assert "exclude each other" in flat(both.stderr)

    resumed = conveyor("run", str(root), "--resume", cwd=tmp_path, timeout=150)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    out = flat(resumed.stdout)
    assert "resumed from the checkpoint of run" in out
    assert "records already done were skipped" in out
    s, q = sqlite_ids(root / "data" / "out.db"), letter_ids(root)
    assert len(s) == len(set(s))
    assert len(q) == len(set(q))
    assert not set(s) & set(q)
    assert set(s) | set(q) == set(range(20_000))

    again = conveyor("run", str(root), cwd=tmp_path)  # finished: a plain run is allowed
    assert again.returncode == 0


@pytest.mark.timeout(180)
def test_fresh_starts_again_and_retires_the_abandoned_letters(tmp_path: Path) -> None:
    keyed = "{connector: sqlite, path: data/out.db, table: squares, key: [id]}"
    root = make(tmp_path, keyed, count=20_000)
    kill_when(root, start(root), rows=2_000)
    fresh = conveyor("run", str(root), "--fresh", cwd=tmp_path, timeout=150)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    s, q = sqlite_ids(root / "data" / "out.db"), letter_ids(root)
    assert len(q) == len(set(q))
    assert set(s) | set(q) == set(range(20_000))


def test_resume_on_a_persisting_project_says_why_not(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        SQLITE,
        extra="",
        count=100,
    )
    config = root / "src" / "pipeline" / "config.yaml"
    config.write_text(
        config.read_text().replace(
            "stages:\n", "stages:\n  check:\n    persist: {path: data/checked}\n", 1
        )
    )
    done = conveyor("run", str(root), "--resume", cwd=tmp_path)
    assert done.returncode == 1
    assert "persist datasets" in flat(done.stderr)


@pytest.mark.timeout(180)
def test_sigterm_drains_with_a_final_checkpoint_and_a_resume_keeps_every_letter(
    tmp_path: Path,
) -> None:
    root = make(tmp_path, SQLITE, count=20_000)
    process = start(root)
    deadline = time.monotonic() + 60
    while len(sqlite_ids(root / "data" / "out.db")) < 2_000:
        assert process.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    text = flat(out)
    assert "nums interrupted:" in text
    assert "conveyor run --resume" in text
    written = int(text.split("nums interrupted: ")[1].split(" in, ")[1].split(" out")[0])
    assert len(sqlite_ids(root / "data" / "out.db")) == written  # all committed at the stop

    resumed = conveyor("run", str(root), "--resume", cwd=tmp_path, timeout=150)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "0 records replayed" in flat(resumed.stdout)
    s, q = sqlite_ids(root / "data" / "out.db"), letter_ids(root)
    assert len(s) == len(set(s))
    assert len(q) == len(set(q))
    assert not set(s) & set(q)
    assert set(s) | set(q) == set(range(20_000))


def test_resume_with_nothing_to_resume_is_refused(tmp_path: Path) -> None:
    root = make(tmp_path, SQLITE)
    done = conveyor("run", str(root), "--resume", cwd=tmp_path)
    assert done.returncode == 1
    text = flat(done.stderr)
    assert "there is no checkpoint of pipeline 'nums' here: there is nothing to resume" in text
    assert "run without --resume" in text
    assert not (root / "data" / "out.db").exists() or sqlite_ids(root / "data" / "out.db") == []


@pytest.mark.timeout(180)
def test_a_plain_run_after_a_resumed_chain_retires_every_letter_of_the_chain(
    tmp_path: Path,
) -> None:
    root = make(
        tmp_path, "{connector: sqlite, path: data/out.db, table: squares, key: [id]}", count=20_000
    )
    kill_when(root, start(root), rows=3_000)
    assert conveyor("run", str(root), "--resume", cwd=tmp_path, timeout=150).returncode == 0
    assert conveyor("run", str(root), cwd=tmp_path, timeout=150).returncode == 0
    q = letter_ids(root)
    assert len(q) == len(set(q)) == 20_000 // 50  # one letter per bad record, not per run
