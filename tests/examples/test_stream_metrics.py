"""End-to-end tests of examples/stream_metrics: an endless generated event stream through two
windowed branches into PostgreSQL, stopped by SIGTERM (it drains and closes its windows),
and the same project switched to the NATS source by its config. The project is copied to
a temporary folder and run with the ``conveyor`` command, writing to a table of its own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "stream_metrics"
CONVEYOR = Path(sys.executable).parent / "conveyor"
FAST = ("stages.per_sensor.window.tumbling=2s", "stages.per_site.window.tumbling=2s")
"""2-second windows instead of minutes, so that several close within a short test."""

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "stream_metrics"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns(".conveyor", "__pycache__"))
    return target


@pytest.fixture
def table(pg_dsn: str) -> Any:
    name = f"metrics_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as db:
        db.execute(f'DROP TABLE IF EXISTS "{name}"')


def rows(dsn: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as db:
        exists = db.execute("SELECT to_regclass(%s)", (table,)).fetchone()
        if exists is None or exists[0] is None:
            return []
        return db.execute(
            f'SELECT branch, key, start, "end", count, sum, mean, max FROM "{table}"'
        ).fetchall()


def start(project: Path, dsn: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PG_DSN": dsn, "NO_COLOR": "1"}
    return subprocess.Popen(
        [str(CONVEYOR), "run", str(project), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def report_of(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return report


def check_totals(report: dict[str, Any], got: list[tuple[Any, ...]]) -> None:
    """Every event that was not late is counted once in each branch's windows, and the
    figures of every window agree with each other."""
    stages = {s["stage"]: s for s in report["stages"]}
    read = stages["source"]["emitted"]
    assert read > 0
    for branch in ("per_sensor", "per_site"):
        window = stages[f"metrics/{branch}/{branch}"]
        late = window["dead_lettered"]
        counted = sum(r[4] for r in got if r[0] == branch)
        assert counted == read - late, (branch, read, late, counted)
    places = Counter((r[0], r[1], r[2]) for r in got)
    assert max(places.values()) == 1  # one row per (branch, key, window)
    assert {r[1] for r in got if r[0] == "per_site"} <= {"north", "south", "east"}
    for _, _, begin, end, count, total, mean, high in got:
        assert (end - begin).total_seconds() == 2.0
        assert count > 0
        assert 0 <= high <= 100
        assert mean == pytest.approx(total / count)


def test_the_endless_stream_writes_windows_while_it_flows_and_drains_on_sigterm(
    project: Path, pg_dsn: str, table: str
) -> None:
    proc = start(
        project, pg_dsn, *FAST, f"sink.table={table}", "--report", str(project / "run.json")
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len({r[2] for r in rows(pg_dsn, table)}) < 3:
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.3)
        flowing = rows(pg_dsn, table)
        assert len({r[2] for r in flowing}) >= 3, "no window results while the stream flowed"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, out  # stopped by a signal, drained
    assert "SIGTERM: stopping intake and draining" in out
    report = report_of(project / "run.json")
    assert report["run"]["status"] == "interrupted"
    assert report["run"]["unfinished"] == 0
    got = rows(pg_dsn, table)
    assert len(got) > len(flowing)  # the open windows were closed and written at the end
    check_totals(report, got)


def test_switched_to_nats_by_its_config_it_reads_the_stream_and_acks_it(
    project: Path, pg_dsn: str, table: str, nats_url: str
) -> None:
    stream = f"EV{uuid.uuid4().hex[:8].upper()}"
    config_file = project / "src" / "pipeline" / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    config["pipeline"]["checkpoints"] = True  # a broker source acknowledges at checkpoints
    config["source"] = {
        "connector": "nats",
        "url": nats_url,
        "stream": stream,
        "durable": "stream_metrics",
        "idle_timeout": 3,  # (for the test: the run ends once the stream is quiet)
    }
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    publish = subprocess.run(
        [
            sys.executable,
            str(project / "publish.py"),
            "--url",
            nats_url,
            "--stream",
            stream,
            "--count",
            "3000",
            "--rate",
            "1500",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert publish.returncode == 0, publish.stderr
    try:
        proc = start(
            project, pg_dsn, *FAST, f"sink.table={table}", "--report", str(project / "run.json")
        )
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        report = report_of(project / "run.json")
        assert report["run"]["status"] == "completed"
        assert {s["stage"]: s for s in report["stages"]}["source"]["emitted"] == 3000
        check_totals(report, rows(pg_dsn, table))
        assert consumer_pending(nats_url, stream) == (0, 0)  # every message acknowledged
    finally:
        delete_stream(nats_url, stream)


def consumer_pending(url: str, stream: str) -> tuple[int, int]:
    async def go() -> tuple[int, int]:
        import nats

        nc = await nats.connect(url)
        try:
            info = await nc.jetstream().consumer_info(stream, "stream_metrics")
            return info.num_ack_pending, info.num_pending
        finally:
            await nc.close()

    return asyncio.run(go())


def delete_stream(url: str, stream: str) -> None:
    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    asyncio.run(go())
