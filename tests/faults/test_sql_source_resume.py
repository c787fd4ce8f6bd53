"""SIGKILL at random moments during runs that read a SQL source (SQLite, PostgreSQL), then
resume to the end: every source id ends up exactly once in the sink or the dead-letter
queue, and each resume *seeks* (a keyset read after the checkpoint's key), never re-reads.

The source table holds ``N`` rows ``(id, v)``, ``v`` as text; rows with ``id % 211 == 5``
hold ``"bad"`` and do not fit the source's model (``Row``: ``id: int, v: int``), so they
become the source's own dead letters (``TABLE[ID]: does not fit Row …``). The pipeline: the
source -> a MapStage ``work`` that refuses ``id % 100 == 13`` -> a SQLite sink without a key
(plain inserts: a row written twice would show). Kills are placed by progress, as in
test_crash.py: the parent polls the records the sink has committed (the checkpoint row the
sink writes in the same transaction) until a random target is passed, waits a random
0-40 ms more and sends SIGKILL; each resume of a chain is killed again.

Oracle: with I the ids, S the sink's, Q the letters': S | Q = I, S & Q = {}, no id twice in
S or Q, Q exactly the refused ids, every sink value the one ``work`` computes. The seed is
printed (``pytest -rP``); ``CONVEYOR_FAULTS_SEED=<seed>`` repeats it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _faultkit import (
    CHILD_RESUMED,
    CHILD_TIMEOUT,
    FULL,
    PG_DSN,
    pg_connect,
    record_figures,
    require_postgres,
    sqlite_sink_committed,
)

N = 300_000 if FULL else 40_000
KILLS = 10 if FULL else 4
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED") or random.SystemRandom().randrange(2**32))
JITTER = 0.04

pytestmark = pytest.mark.timeout(1800 if FULL else 300)

MODELS = """
from pydantic import BaseModel


class Row(BaseModel):
    id: int
    v: int
"""

CHILD = (
    r"""
import json, sys, time

cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["models"])

from sqlmodels import Row

from conveyor import MapStage, Pipeline
from conveyor.connectors import PostgresSource, SqliteSink, SqliteSource
from conveyor.errors import CheckpointError


def work(r):
    if r.id % 100 == 13:
        raise ValueError(f"record {r.id} is bad (1% fail, deterministic)")
    if r.id % 500 == 0:
        time.sleep(0.002)  # a run lasts long enough to be killed at many points
    return {"id": r.id, "v": r.v + 1}


options = {"key": ["id"], "batch_size": cfg["fetch"], "model": Row}
if cfg["source"] == "sqlite":
    source = SqliteSource(cfg["db"], cfg["table"], **options)
else:
    source = PostgresSource(cfg["dsn"], cfg["table"], **options)


def go(resume):
    return Pipeline(cfg["pipeline"]).add_stage(MapStage(work, name="work")).run(
        source,
        SqliteSink(cfg["out"], "out"),
        dead_letters=cfg["dlq"],
        checkpoint=True,
        checkpoint_every="2000r",
        batch_size=500,
        resume=resume,
    )


"""
    + CHILD_RESUMED
    + r"""

report = resumed(go)
resume = report.resume
print("RESULT " + json.dumps({
    "status": report.status.value,
    "finished": report.checkpoint.finished,
    "resumed": None if resume is None else {
        "seeked": resume.seeked, "offset": resume.offset, "position": resume.position,
    },
}), flush=True)
"""
)


def bad_source_row(i: int) -> bool:
    return i % 211 == 5


def refused(i: int) -> bool:
    return bad_source_row(i) or i % 100 == 13


def table_rows(n: int) -> list[tuple[int, str]]:
    return [(i, "bad" if bad_source_row(i) else str(i * 7 % 1000)) for i in range(n)]


class SourceChain:
    """One source table, one sink file, one DLQ, and the child runs over them."""

    def __init__(self, tmp: Path, source: str, rng: random.Random) -> None:
        self.tmp, self.source, self.rng = tmp, source, rng
        uid = uuid.uuid4().hex[:10]
        self.pipeline = f"faults_sqlsrc_{source}_{uid}"
        self.table = f"faults_sqlsrc_{uid}"
        self.out = tmp / "out.db"
        self.dlq = tmp / "dead_letters.db"
        (tmp / "sqlmodels.py").write_text(MODELS)
        self.script = tmp / "child.py"
        self.script.write_text(CHILD)
        self.db = tmp / "in.db"
        if source == "sqlite":
            with sqlite3.connect(self.db) as conn:
                conn.execute(f"CREATE TABLE {self.table} (id INTEGER PRIMARY KEY, v TEXT)")
                conn.executemany(f"INSERT INTO {self.table} VALUES (?, ?)", table_rows(N))
        else:
            with pg_connect() as conn:
                conn.execute(f'CREATE TABLE "{self.table}" (id bigint PRIMARY KEY, v text)')
                with conn.cursor() as cur, cur.copy(f'COPY "{self.table}" FROM STDIN') as copy:
                    for row in table_rows(N):
                        copy.write_row(row)
                conn.commit()
        self.children: list[tuple[int, str, dict[str, Any] | None]] = []

    def drop(self) -> None:
        if self.source == "pg":
            with contextlib.suppress(Exception), pg_connect(autocommit=True) as conn:
                conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')

    def start(self, resume: bool | None) -> tuple[subprocess.Popen[str], Path]:
        cfg = {
            "models": str(self.tmp),
            "source": self.source,
            "db": str(self.db),
            "dsn": PG_DSN,
            "table": self.table,
            "fetch": self.rng.choice([97, 500, 1000, 4096]),
            "pipeline": self.pipeline,
            "out": str(self.out),
            "dlq": str(self.dlq),
            "resume": resume,
        }
        log = self.tmp / f"child{len(self.children)}.log"
        env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, str(self.script), json.dumps(cfg)],
                cwd=self.tmp,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        return proc, log

    def finish(self, proc: subprocess.Popen[str], log: Path) -> dict[str, Any] | None:
        try:
            proc.wait(timeout=CHILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"child run did not end in {CHILD_TIMEOUT}s: {log.read_text()[-3000:]}")
        text = log.read_text(errors="replace")
        result = None
        for line in text.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
        self.children.append((proc.returncode, text, result))
        return result

    def committed(self) -> int:
        """Sink records committed so far (the checkpoint the sink wrote with them)."""
        return sqlite_sink_committed(self.out, self.pipeline)

    def kill_at(self, target: int, resume: bool | None) -> bool:
        """Run until ``target`` sink records are committed (plus jitter), then SIGKILL;
        ``False`` if the run completed first."""
        proc, log = self.start(resume)
        deadline = time.monotonic() + CHILD_TIMEOUT
        while proc.poll() is None and self.committed() < target:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"no progress to {target} in {CHILD_TIMEOUT}s: {log.read_text()}")
            time.sleep(0.003)
        time.sleep(self.rng.uniform(0.0, JITTER))
        sent = proc.poll() is None
        if sent:
            proc.send_signal(signal.SIGKILL)
        result = self.finish(proc, log)
        if sent and proc.returncode == -signal.SIGKILL:
            return True
        assert proc.returncode == 0, log.read_text()[-3000:]
        assert result is not None, log.read_text()[-3000:]
        assert result["status"] == "completed", log.read_text()[-3000:]
        return False

    def resume_to_end(self) -> dict[str, Any]:
        for _ in range(3):
            proc, log = self.start(True)
            result = self.finish(proc, log)
            assert proc.returncode == 0, log.read_text()[-3000:]
            assert result is not None, log.read_text()[-3000:]
            assert result["status"] == "completed", log.read_text()[-3000:]
            if result["finished"]:
                return result
        pytest.fail("no finished run after 3 resumes")

    def verify(self) -> dict[str, int]:
        with sqlite3.connect(self.out) as conn:
            rows = [(int(a), int(b)) for a, b in conn.execute("SELECT id, v FROM out")]
        sys.path.insert(0, str(self.tmp))  # the letters' records are Row instances
        try:
            from conveyor.dlq import open_dead_letter_store

            with open_dead_letter_store(self.dlq) as store:
                found = list(store.list())
        finally:
            sys.path.remove(str(self.tmp))
        letter_ids = []
        for letter in found:
            record = letter.record
            if letter.stage == "source":
                letter_ids.append(int(record["key"][0]))
                assert letter.message.startswith(f"{self.table}[{record['key'][0]}]: does not fit")
            else:
                letter_ids.append(int(record["id"] if isinstance(record, dict) else record.id))
        sink, dead = Counter(i for i, _ in rows), Counter(letter_ids)
        inputs = set(range(N))
        figures = {
            "I": N,
            "S": len(sink),
            "Q": len(dead),
            "duplicates": sum(c - 1 for c in sink.values()) + sum(c - 1 for c in dead.values()),
            "missing": len(inputs - set(sink) - set(dead)),
            "in_both": len(set(sink) & set(dead)),
            "wrong_values": sum(1 for i, v in rows if v != i * 7 % 1000 + 1),
        }
        where = f"{self.source} source (seed {SEED}): {figures}"
        print(f"[faults] {where}")
        assert figures["missing"] == 0, where
        assert figures["duplicates"] == 0, where
        assert figures["in_both"] == 0, where
        assert figures["wrong_values"] == 0, where
        assert set(sink) | set(dead) == inputs, where
        assert set(dead) == {i for i in range(N) if refused(i)}, where
        return figures


@contextlib.contextmanager
def source_chain(tmp: Path, source: str, rng: random.Random) -> Iterator[SourceChain]:
    made = SourceChain(tmp, source, rng)
    try:
        yield made
    finally:
        made.drop()


@pytest.mark.parametrize("source", ["sqlite", "pg"])
def test_sigkill_while_reading_a_sql_source_then_resume_is_exactly_once(
    tmp_path: Path, source: str
) -> None:
    if source == "pg":
        require_postgres()
    rng = random.Random(f"{SEED}:{source}")
    print(f"[faults] sql source {source}: n={N} kills={KILLS} seed={SEED}")
    total = sum(1 for i in range(N) if not refused(i))
    kills, runs, seeked = 0, 0, False
    with source_chain(tmp_path, source, rng) as chain:
        targets = sorted(int(rng.uniform(0.03, 0.9) * total) for _ in range(KILLS))
        for j, target in enumerate(targets):
            if not chain.kill_at(target, resume=None if j == 0 else True):
                break
            kills += 1
            print(f"[faults]   kill {j} at >= {target} committed: now {chain.committed()}")
        final = chain.resume_to_end() if kills else chain.children[-1][2]
        assert final is not None
        runs = len(chain.children)
        # (a killed run prints nothing: these are the resumes that ran to their end)
        resumed = [r["resumed"] for _, _, r in chain.children if r and r.get("resumed")]
        seeked = bool(resumed) and all(r["seeked"] for r in resumed)
        if kills and chain.committed() and resumed:
            # a resume of a run killed after a checkpoint seeks to the checkpoint's key
            assert all(r["seeked"] and isinstance(r["offset"], list) for r in resumed), resumed
        figures = chain.verify()
    assert kills >= 1, "no kill landed before the run ended"
    record_figures(
        f"sql-source/random-sigkill/{source}",
        trials=kills,
        runs=runs,
        resume_seeked=seeked,
        **figures,
    )
