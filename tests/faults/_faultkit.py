"""What the fault tests share: sizes, the child run, reading the sink and the dead-letter
queue back, the exactly-once check, and the figures written for RELIABILITY.md.

Every run goes in a child process (the script below, written to the test's tmp dir) so
that a test can SIGKILL or SIGTERM it at any moment. Its pipeline: ``N`` records
``{"id": i, "v": i * 7 % 1000}`` -> a MapStage ``work`` that fails records whose
``id % 100 == 13`` (1%, deterministic) -> the sink (SQLite, PostgreSQL, or an
at-least-once JSON-lines file). Let I be the input ids, S the sink's, Q the dead-letter
queue's (letters not superseded); :func:`check_exactly_once` asserts S | Q = I (union),
S & Q = {} (disjoint) and no id twice in S (or, for an at-least-once sink, a bounded
number) or in Q.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("CONVEYOR_FAULTS") == "full"
"""``CONVEYOR_FAULTS=full`` (``make faults``): the full sizes; else the reduced ones."""

PG_DSN = os.environ.get(
    "CONVEYOR_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test"
)

CHILD_TIMEOUT = 300.0 if FULL else 120.0
"""No child run may take longer than this (the test fails, the child is killed)."""


def expected_sink_ids(n: int) -> set[int]:
    return {i for i in range(n) if i % 100 != 13}


def expected_letter_ids(n: int) -> set[int]:
    return {i for i in range(n) if i % 100 == 13}


def value_of(i: int) -> int:
    """What the pipeline writes as ``v`` for id ``i``."""
    return i * 7 % 1000 + 1


# -- the child --------------------------------------------------------------------------------

CHILD_RESUMED = r"""
def resumed(go):
    # go(resume) for cfg["resume"], or a plain run when there is nothing to resume (a run
    # killed before it registered in the checkpoint store wrote nothing: a resume is
    # refused, never guessed)
    try:
        return go(cfg.get("resume"))
    except CheckpointError as exc:
        if not cfg.get("resume") or "nothing to resume" not in str(exc):
            raise
        return go(None)
"""
"""The child scripts' resume-or-run (each defines ``cfg`` and imports ``CheckpointError``)."""


CHILD = (
    r"""
import json, os, sys, time

cfg = json.loads(sys.argv[1])

from conveyor import MapStage, Pipeline, RetryPolicy, StageOptions
from conveyor.errors import CheckpointError, ResumeRequired, SinkUnavailableError

N = cfg["n"]
PAUSE = cfg.get("pause")  # [every, seconds]: a throttle, so that a run lasts a while


def source():
    marker = cfg.get("marker")
    if marker:  # the run has started reading (signal handlers are installed by now)
        with open(marker, "a") as f:
            f.write("started\n")
    slow = cfg.get("source_pause")  # [every, seconds]: a slow source (a resume re-reads it)
    for i in range(N):
        if slow and i % slow[0] == 0:
            time.sleep(slow[1])
        yield {"id": i, "v": i * 7 % 1000}


def work(r):
    i = r["id"]
    if i % 100 == 13:
        raise ValueError(f"record {i} is bad (1% fail, deterministic)")
    if PAUSE and i % PAUSE[0] == 0:
        time.sleep(PAUSE[1])
    return {"id": i, "v": r["v"] + 1}


def jsonl_sink(path):
    def write(records):
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
    return write


kind = cfg["sink"]
if kind == "sqlite":
    from conveyor.connectors.sql import SqliteSink
    sink = SqliteSink(cfg["path"], cfg["table"], timeout=cfg.get("timeout", 5.0))
elif kind == "pg":
    from conveyor.connectors.sql import PostgresSink
    sink = PostgresSink(cfg["dsn"], cfg["table"], connect_timeout=cfg.get("connect_timeout", 5.0))
else:
    sink = jsonl_sink(cfg["path"])

options = {}
if cfg.get("sink_retry"):
    attempts, backoff = cfg["sink_retry"]
    options["stage_options"] = {
        "sink": StageOptions(retry=RetryPolicy(attempts=attempts, backoff=backoff))
    }
if cfg.get("handle_signals"):
    options["handle_signals"] = True
    options["grace_period"] = cfg.get("grace_period", 10.0)

t0 = time.monotonic()
out = {"pid": os.getpid()}
code = 0


def go(resume):
    return Pipeline(cfg["pipeline"]).add_stage(MapStage(work, name="work")).run(
        source(),
        sink,
        dead_letters=cfg["dlq"],
        checkpoint=cfg.get("checkpoint", True),
        checkpoint_every=cfg.get("every", "5000r"),
        resume=resume,
        batch_size=cfg.get("batch_size", 1000),
        **options,
    )


"""
    + CHILD_RESUMED
    + r"""

try:
    report = resumed(go)
except ResumeRequired as exc:
    out.update(error="ResumeRequired", message=str(exc))
    code = 4
except CheckpointError as exc:
    out.update(error="CheckpointError", message=str(exc))
    code = 5
except SinkUnavailableError as exc:
    out.update(error="SinkUnavailableError", message=str(exc))
    code = 3
else:
    cp = report.checkpoint
    resume = report.resume
    out.update(
        status=report.status.value,
        records_in=report.records_in,
        records_out=report.records_out,
        dead=report.dead_lettered,
        retried=report.retried,
        sink_retried=report.sink.retried,
        replayed=report.replayed,
        resumed=None if resume is None else {
            "position": resume.position, "skipped": resume.skipped,
            "superseded_letters": resume.superseded_letters,
        },
        checkpoints_written=report.checkpoints_written,
        checkpoint=None if cp is None else {
            "position": cp.position, "read": cp.read, "done": [list(d) for d in cp.done],
            "finished": cp.finished, "records": dict(cp.records), "runs": list(cp.runs),
        },
        summary=report.summary(),
    )
out["elapsed"] = time.monotonic() - t0
print("RESULT " + json.dumps(out), flush=True)
sys.exit(code)
"""
)


def child_env(fault: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CONVEYOR_FAULT"}
    if fault:
        env["CONVEYOR_FAULT"] = fault
    return env


@dataclass
class Child:
    """One child run (started with :meth:`Chain.start`)."""

    proc: subprocess.Popen[str]
    config: dict[str, Any]
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)
    killed: str = ""
    stdout: str = ""
    stderr: str = ""
    result: dict[str, Any] | None = None

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def running(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: signal.Signals) -> bool:
        """Send ``sig`` if the child still runs; whether it was sent."""
        if self.proc.poll() is not None:
            return False
        self.proc.send_signal(sig)
        self.killed = sig.name
        return True

    def wait(self, timeout: float = CHILD_TIMEOUT) -> Child:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._read()
            pytest.fail(f"child run did not end within {timeout:.0f}s (killed): {self.describe()}")
        self._read()
        return self

    def _read(self) -> None:
        self.stdout = self.out.read_text(errors="replace")
        self.stderr = self.err.read_text(errors="replace")
        for line in self.stdout.splitlines():
            if line.startswith("RESULT "):
                self.result = json.loads(line[len("RESULT ") :])

    def describe(self) -> str:
        return (
            f"rc={self.returncode} config={self.config}\nstdout:\n{self.stdout[-2000:]}\n"
            f"stderr tail:\n{self.stderr[-3000:]}"
        )


class Chain:
    """A run and its resumes, in child processes, over one sink, one DLQ, one checkpoint.

    ``sink``: ``"sqlite"``, ``"pg"`` or ``"jsonl"``.
    """

    def __init__(
        self, tmp: Path, sink: str, n: int, *, seed: int, name: str, **defaults: Any
    ) -> None:
        self.tmp = tmp
        self.sink = sink
        self.n = n
        self.seed = seed
        self.rng = random.Random(seed)
        self.name = name
        self.uid = uuid.uuid4().hex[:10]
        self.pipeline = f"faults_{name}_{self.uid}"[:60]
        self.table = f"faults_{name}_{self.uid}"[:60]
        tmp.mkdir(parents=True, exist_ok=True)
        self.script = tmp / "child.py"
        self.script.write_text(CHILD, encoding="utf-8")
        self.dlq = tmp / "dead_letters.db"
        self.path = tmp / ("out.db" if sink == "sqlite" else "out.jsonl")
        self.marker = tmp / "started.txt"
        self.defaults = defaults
        self.children: list[Child] = []
        self.kills = 0
        self._pg: Any = None
        print(f"[faults] {name}: sink={sink} n={n} seed={seed} pipeline={self.pipeline}")

    # -- running ------------------------------------------------------------------------------

    def config(self, **changes: Any) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "n": self.n,
            "sink": self.sink,
            "pipeline": self.pipeline,
            "table": self.table,
            "dlq": str(self.dlq),
            "marker": str(self.marker),
            "path": str(self.path),
            "dsn": PG_DSN,
        }
        if self.sink == "jsonl":
            cfg["checkpoint"] = str(self.tmp / "checkpoints.db")
        cfg.update(self.defaults)
        cfg.update(changes)
        return cfg

    def start(self, *, fault: str | None = None, **changes: Any) -> Child:
        cfg = self.config(**changes)
        with contextlib.suppress(FileNotFoundError):
            self.marker.unlink()
        number = len(self.children)
        out = self.tmp / f"child{number}.out"
        err = self.tmp / f"child{number}.err"
        with out.open("w") as stdout, err.open("w") as stderr:  # files: a pipe could fill up
            proc = subprocess.Popen(
                [sys.executable, str(self.script), json.dumps(cfg)],
                cwd=self.tmp,
                env=child_env(fault),
                stdout=stdout,
                stderr=stderr,
                text=True,
            )
        child = Child(proc, cfg, out, err)
        self.children.append(child)
        return child

    def run(self, *, fault: str | None = None, **changes: Any) -> Child:
        return self.start(fault=fault, **changes).wait()

    def wait_started(self, child: Child, timeout: float = 60.0) -> bool:
        """Wait until the child reads its source; ``False`` if it ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.marker.exists():
                return True
            if not child.running():
                return self.marker.exists()
            time.sleep(0.005)
        pytest.fail(f"child did not start reading within {timeout}s: {child.config}")

    def kill_when(
        self,
        child: Child,
        ready: Callable[[], bool],
        *,
        jitter: float,
        timeout: float = CHILD_TIMEOUT,
    ) -> bool:
        """SIGKILL ``child`` once ``ready()`` holds, after a random extra ``0..jitter`` s;
        ``False`` if it ended on its own first."""
        deadline = time.monotonic() + timeout
        while child.running() and not ready():
            if time.monotonic() > deadline:
                child.proc.kill()
                child.wait()
                pytest.fail(f"progress not reached within {timeout}s: {child.describe()}")
            time.sleep(0.003)
        time.sleep(self.rng.uniform(0.0, jitter))
        sent = child.send(signal.SIGKILL)
        child.wait()
        if sent and child.returncode == -signal.SIGKILL:
            self.kills += 1
            return True
        # it ended on its own: only a completed run may (a failed one would leave a
        # "finished" checkpoint whose records are dead letters of the sink, say)
        assert child.returncode == 0, child.describe()
        assert child.result is not None, child.describe()
        assert child.result.get("status") == "completed", child.describe()
        return False

    def resume_to_end(self, limit: int = 3, **changes: Any) -> Child:
        """Resume until the run completes (at most ``limit`` runs). Nothing is run if the
        last run completed already (resume=True over a finished checkpoint is refused)."""
        last = self.children[-1] if self.children else None
        stored = self.checkpoint()
        if last is not None and stored is not None and stored["finished"]:
            # (a SIGTERM after the run's end, its handlers removed, ends the child: -15)
            assert last.returncode in (0, -signal.SIGTERM), last.describe()
            return last
        for _ in range(limit):
            child = self.run(resume=True, **changes)
            assert child.returncode == 0, child.describe()
            assert child.result is not None, child.describe()
            assert child.result["status"] == "completed", child.describe()
            if child.result["checkpoint"]["finished"]:
                return child
        pytest.fail(f"no finished run after {limit} resumes: {child.describe()}")

    # -- reading back -------------------------------------------------------------------------

    def committed(self) -> int:
        """Sink records committed so far, from the checkpoint the sink wrote with them
        (cheap: one row); 0 before the first."""
        cp = self.checkpoint()
        return 0 if cp is None else int(cp["records"].get("written", 0))

    def checkpoint(self) -> dict[str, Any] | None:
        """The stored checkpoint's body (``None`` if there is none yet)."""
        payload = self._checkpoint_payload()
        return None if payload is None else json.loads(payload)["checkpoint"]

    @property
    def _row_pattern(self) -> str:
        return self.pipeline if self.sink not in ("pg", "sqlite") else f"{self.pipeline} -> %"

    def _checkpoint_payload(self) -> str | None:
        # SQL sinks key the row by pipeline and table ("NAME -> TABLE"), the file store by name
        sql = "SELECT payload FROM conveyor_checkpoints WHERE pipeline LIKE "
        if self.sink == "pg":
            if self._pg is None:  # one connection for the many polls of a chain
                self._pg = pg_connect(autocommit=True)
            import psycopg

            try:
                row = self._pg.execute(sql + "%s", (self._row_pattern,)).fetchone()
            except psycopg.errors.UndefinedTable:
                return None
            return None if row is None else str(row[0])
        db = self.path if self.sink == "sqlite" else self.tmp / "checkpoints.db"
        if not db.exists():
            return None
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute(sql + "?", (self._row_pattern,)).fetchone()
        except sqlite3.OperationalError:  # the table is not created yet
            return None
        finally:
            conn.close()
        return None if row is None else str(row[0])

    def sink_rows(self) -> list[tuple[int, int]]:
        """Every ``(id, v)`` in the sink, duplicates included."""
        if self.sink == "pg":
            with pg_connect() as conn:
                exists = conn.execute("SELECT to_regclass(%s)", (self.table,)).fetchone()
                if exists is None or exists[0] is None:
                    return []
                return [
                    (int(a), int(b)) for a, b in conn.execute(f'SELECT id, v FROM "{self.table}"')
                ]
        if self.sink == "sqlite":
            if not self.path.exists():
                return []
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                return [
                    (int(a), int(b)) for a, b in conn.execute(f'SELECT id, v FROM "{self.table}"')
                ]
            except sqlite3.OperationalError:
                return []
            finally:
                conn.close()
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            rows.append((int(record["id"]), int(record["v"])))
        return rows

    def letter_ids(self) -> list[int]:
        """The ids of the dead letters not superseded."""
        if not self.dlq.exists():
            return []
        from conveyor.dlq import open_dead_letter_store

        store = open_dead_letter_store(self.dlq)
        try:
            return [int(letter.record["id"]) for letter in store.list()]
        finally:
            store.close()

    def drop(self) -> None:
        """Remove what the chain left in PostgreSQL (its table and checkpoint row)."""
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        if self.sink != "pg":
            return
        with contextlib.suppress(Exception), pg_connect() as conn:
            conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')
            conn.execute(
                "DELETE FROM conveyor_checkpoints WHERE pipeline LIKE %s", (self._row_pattern,)
            )
            conn.commit()

    # -- the check ----------------------------------------------------------------------------

    def verify(self, *, max_duplicates: int = 0) -> dict[str, int]:
        """Assert S | Q = I (union), S & Q = {} (disjoint), no id twice in Q, at most
        ``max_duplicates`` duplicate ids in S (0: exactly once); return the figures."""
        rows = self.sink_rows()
        letters = self.letter_ids()
        return check_exactly_once(
            self.n, rows, letters, seed=self.seed, what=self.name, max_duplicates=max_duplicates
        )

    def replayed(self) -> int:
        """Sum of the ``replayed`` figure over the chain's resumes that finished."""
        return sum(
            int(c.result.get("replayed", 0))
            for c in self.children
            if c.result is not None and c.result.get("resumed") is not None
        )


def sqlite_sink_committed(db: Path, pipeline: str) -> int:
    """Records an exactly-once SQLite sink at ``db`` has committed for ``pipeline`` (from
    the checkpoint it writes with its rows; 0 before the first one)."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(
            "SELECT payload FROM conveyor_checkpoints WHERE pipeline LIKE ?",
            (f"{pipeline} -> %",),
        ).fetchone()
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
    if row is None:
        return 0
    return int(json.loads(row[0])["checkpoint"]["records"].get("written", 0))


def check_exactly_once(
    n: int,
    rows: list[tuple[int, int]],
    letters: list[int],
    *,
    seed: int,
    what: str,
    max_duplicates: int = 0,
) -> dict[str, int]:
    sink_ids = Counter(i for i, _ in rows)
    letter_ids = Counter(letters)
    inputs = set(range(n))
    s, q = set(sink_ids), set(letter_ids)
    duplicates = sum(c - 1 for c in sink_ids.values())
    letter_duplicates = sum(c - 1 for c in letter_ids.values())
    missing = inputs - s - q
    extra = (s | q) - inputs
    both = s & q
    wrong = sum(1 for i, v in rows if v != value_of(i))
    figures = {
        "I": n,
        "S": len(s),
        "S_rows": len(rows),
        "Q": len(q),
        "duplicates": duplicates,
        "letter_duplicates": letter_duplicates,
        "missing": len(missing),
        "in_both": len(both),
        "unknown": len(extra),
        "wrong_values": wrong,
    }
    where = f"{what} (seed {seed}): {figures}"
    print(f"[faults] {where}")
    assert not missing, f"{where}: missing ids, e.g. {sorted(missing)[:10]}"
    assert not extra, f"{where}: ids that are not inputs, e.g. {sorted(extra)[:10]}"
    assert not both, f"{where}: ids in the sink AND the DLQ, e.g. {sorted(both)[:10]}"
    assert letter_duplicates == 0, f"{where}: ids twice in the DLQ"
    assert wrong == 0, f"{where}: rows with a wrong value"
    assert q == expected_letter_ids(n), f"{where}: the DLQ holds the wrong records"
    assert duplicates <= max_duplicates, (
        f"{where}: {duplicates} duplicate rows in the sink (allowed {max_duplicates}), e.g. "
        f"{sorted(i for i, c in sink_ids.items() if c > 1)[:10]}"
    )
    return figures


# -- PostgreSQL -------------------------------------------------------------------------------


def pg_connect(dsn: str = PG_DSN, **kwargs: Any) -> Any:
    import psycopg

    return psycopg.connect(dsn, connect_timeout=5, **kwargs)


def require_postgres(dsn: str = PG_DSN) -> None:
    """Skip (fail in CI) when PostgreSQL cannot be reached."""
    try:
        import psycopg  # noqa: F401

        with pg_connect(dsn) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        message = (
            f"start PostgreSQL: {dsn!r} cannot be reached ({exc}); set CONVEYOR_TEST_PG_DSN "
            "to point elsewhere"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@contextlib.contextmanager
def chain(
    tmp: Path, sink: str, n: int, *, name: str, seed: int | None = None, **kw: Any
) -> Iterator[Chain]:
    """A :class:`Chain` with a printed random seed, cleaned up afterwards."""
    if sink == "pg":
        require_postgres()
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    made = Chain(tmp, sink, n, seed=seed, name=name, **kw)
    try:
        yield made
    finally:
        for child in made.children:
            if child.running():
                child.proc.kill()
                child.wait()
        made.drop()


# -- figures ----------------------------------------------------------------------------------


def record_figures(family: str, **figures: Any) -> None:
    """Append one JSON line of figures to ``$CONVEYOR_FAULTS_REPORT`` (when it is set)."""
    print(f"[faults] figures {family}: {figures}")
    target = os.environ.get("CONVEYOR_FAULTS_REPORT")
    if not target:
        return
    line = {
        "family": family,
        "size": "full" if FULL else "default",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        **figures,
    }
    with open(target, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
