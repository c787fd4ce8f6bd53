"""The http source against an endless body on 127.0.0.1, run by `conveyor run` in a child
process: a SIGTERM stops the download within a few seconds (the stream is closed, the
partial file stays bounded and is resumed with Range by `conveyor run --resume`), and
max_bytes stops an endless body by itself with a clear error and no partial file left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _httpkit import Server, State, serve

RATE = 8_000_000  # bytes per second the server streams at most
ENV = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}

pytestmark = pytest.mark.timeout(120)


def project(tmp_path: Path, server: Server, extra: str) -> Path:
    root = tmp_path / "dl"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "10_size.py").write_text(
        "from conveyor import MapStage\n\nstage = MapStage(lambda r: {'bytes': r['bytes']})\n"
    )
    (root / "src" / "pipeline" / "config.yaml").write_text(
        textwrap.dedent(
            f"""\
            pipeline: {{name: dl, grace_period: 10}}
            source:
              connector: http
              url: {server.url()}
              path: data/big.bin
              retries: 0
            {extra}
            sink: {{connector: jsonl, path: data/out.jsonl}}
            """
        )
    )
    return root


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", str(root), *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_stops_an_endless_download_promptly_and_a_resume_continues_it(
    tmp_path: Path,
) -> None:
    with serve(State(endless=True, rate=RATE)) as server:
        root = project(tmp_path, server, "  max_bytes: null")
        part = root / "data" / "big.bin.part"
        child = start(root)
        try:
            deadline = time.monotonic() + 60
            while not part.exists() or part.stat().st_size < 1_000_000:
                assert child.poll() is None, child.communicate()
                assert time.monotonic() < deadline, "the download never started"
                time.sleep(0.02)
            sent_at = time.monotonic()
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=15)
            took = time.monotonic() - sent_at
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert took < 5.0, f"exit {took:.1f}s after SIGTERM"
        assert child.returncode == 130, out + err  # interrupted
        assert server.state.disconnected.wait(5), "the stream was not closed"
        kept = part.stat().st_size
        time.sleep(0.3)
        assert part.stat().st_size == kept  # nothing writes to it any more
        # bounded: what the server sent until the child hung up (≈ RATE x seconds run)
        assert 1_000_000 <= kept <= server.state.streamed
        assert kept < 200_000_000
        assert not (root / "data" / "big.bin").exists()

        # The server now has the whole file (the bytes sent so far, then more): a resumed
        # run asks for the rest only and completes it.
        server.state.body = b"x" * (kept + 123_456)
        server.state.endless = False
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "run", str(root), "--resume"],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert server.state.requests[-1]["headers"]["Range"] == f"bytes={kept}-"
        assert (root / "data" / "big.bin").stat().st_size == kept + 123_456
        assert not part.exists()
        assert (root / "data" / "out.jsonl").read_text() == f'{{"bytes": {kept + 123_456}}}\n'


def test_an_endless_body_stops_at_max_bytes_with_no_partial_file(tmp_path: Path) -> None:
    with serve(State(endless=True, rate=RATE * 4)) as server:
        root = project(tmp_path, server, "  max_bytes: 3000000")
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "run", str(root)],
            env=ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        took = time.monotonic() - started
        assert server.state.disconnected.wait(5)
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0, output
    assert "went past 3000000 bytes, over max_bytes=3000000" in output
    assert "null to lift the cap" in output
    assert not (root / "data" / "big.bin.part").exists()
    assert not (root / "data" / "big.bin").exists()
    assert took < 30
