"""Live metrics: a real project run scraped over HTTP while it runs (``conveyor.observe``)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _scrapekit import Samples, scrape
from typer.testing import CliRunner

from conveyor.observe import MetricsServer, serve_metrics
from conveyor.project.scaffold import new_project

SLOW_ENRICH = '''"""Adds the Fahrenheit value, slowly (so that the run lasts a few seconds)."""

import time

from conveyor import MapStage


def enrich(reading):
    time.sleep(0.0025)
    return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32}


stage = MapStage(enrich)
'''

# 1000 readings, 18% of them rejected by validate (celsius 31..39), in batches of 50.
OVERRIDES = ["pipeline.batch_size=50", "pipeline.max_dead_letters=50%"]


@pytest.fixture
def slow_project(tmp_path: Path) -> Path:
    root = tmp_path / "demo"
    new_project(root)
    stages = root / "src" / "pipeline" / "stages"
    (stages / "20_enrich.py").write_text(SLOW_ENRICH)
    validate = stages / "10_validate.py"
    validate.write_text(validate.read_text().replace("<= 60.0", "<= 30.0"))
    return root.resolve()


def stage_value(samples: Samples, name: str, stage: str) -> float:
    return next(v for (n, labels), v in samples.items() if n == name and ("stage", stage) in labels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except (urllib.error.URLError, ConnectionError):
        return True
    return False


def test_a_run_is_scraped_while_it_runs_and_matches_its_report(slow_project: Path) -> None:
    from conveyor.project.run import run_project

    live: dict[str, Any] = {}
    outcome: dict[str, Any] = {}

    def progress(runner: Any) -> None:
        live["runner"] = runner

    server = serve_metrics(lambda: live.get("runner"), port=0)
    assert server.host == "127.0.0.1"
    assert scrape(server.url) == {}  # no run yet: nothing to say

    def go() -> None:
        outcome["run"] = run_project(
            slow_project, OVERRIDES, progress=progress, progress_interval=0.05, handle_signals=False
        )

    thread = threading.Thread(target=go)
    with server:
        thread.start()
        during: list[Samples] = []
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline:
            samples = scrape(server.url)
            if samples:
                during.append(samples)
            time.sleep(0.2)
        thread.join(timeout=60)
        assert not thread.is_alive()
        final = scrape(server.url)
    assert refused(server.url)  # the server is gone with the run
    server.close()  # a second close does nothing

    report = outcome["run"].report
    assert report is not None
    assert report.records_in == 1000
    assert len(during) >= 3, "the run should last long enough to be scraped several times"
    names = {name for name, _ in final}
    assert {
        "conveyor_run_info",
        "conveyor_run_elapsed_seconds",
        "conveyor_stage_records_in_total",
        "conveyor_stage_records_out_total",
        "conveyor_stage_records_filtered_total",
        "conveyor_stage_records_dead_lettered_total",
        "conveyor_stage_retries_total",
        "conveyor_stage_busy_seconds_total",
        "conveyor_channel_queue_depth",
        "conveyor_channel_capacity",
        "conveyor_dead_letters_total",
        "conveyor_checkpoints_written_total",
        "conveyor_checkpoint_lag_seconds",
    } <= names
    assert all(name.startswith("conveyor_") for name in names)
    info = next(labels for name, labels in final if name == "conveyor_run_info")
    assert dict(info) == {"pipeline": "demo", "run_id": report.run_id}

    # the counters grow during the run, and end where the report does
    seen = [stage_value(s, "conveyor_stage_records_in_total", "enrich") for s in during]
    assert seen == sorted(seen)
    assert seen[0] < 820
    assert len(set(seen)) >= 2
    for stats in report.stages:
        assert stage_value(final, "conveyor_stage_records_in_total", stats.name) == (
            stats.records_in
        )
        assert stage_value(final, "conveyor_stage_records_out_total", stats.name) == (
            stats.records_out
        )
        assert stage_value(final, "conveyor_stage_records_dead_lettered_total", stats.name) == (
            stats.records_dead
        )
        assert stage_value(final, "conveyor_stage_busy_seconds_total", stats.name) == (
            pytest.approx(stats.busy_seconds)
        )
    assert report.dead_lettered == 180
    assert final[("conveyor_dead_letters_total", ())] == report.letters == 180
    assert final[("conveyor_checkpoints_written_total", ())] == report.checkpoints_written >= 1
    assert 0 <= final[("conveyor_checkpoint_lag_seconds", ())] < 30
    depth = [v for (n, _), v in final.items() if n == "conveyor_channel_queue_depth"]
    assert depth
    assert all(v == 0 for v in depth)
    assert any(
        s.get(("conveyor_channel_capacity", (("channel", ch.name), ("pipeline", "demo"))))
        == (ch.capacity)
        for s in during
        for ch in report.channels
    )


def test_conveyor_run_metrics_port_serves_during_the_run(slow_project: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    args = [sys.executable, "-m", "conveyor", "run", str(slow_project), *OVERRIDES]
    proc = subprocess.Popen(
        [*args, "--metrics-port", str(port), "--metrics-host", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                samples = scrape(url)
            except (urllib.error.URLError, ConnectionError):
                samples = {}  # not listening yet, or already gone
            if samples:
                seen.append(stage_value(samples, "conveyor_stage_records_in_total", "enrich"))
                info = next(labels for name, labels in samples if name == "conveyor_run_info")
                assert ("pipeline", "demo") in info
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"live metrics at {url}" in err
    assert "1000 in" in out
    assert seen
    assert seen == sorted(seen)
    assert refused(url)


def test_missing_prometheus_client_names_the_extra(
    slow_project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.cli import app

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ImportError, match=r"pip install 'conveyor\[metrics\]'"):
        serve_metrics(lambda: None)
    result = CliRunner().invoke(app, ["run", str(slow_project), "--metrics-port", "0"])
    assert result.exit_code == 1
    assert "pip install 'conveyor[metrics]'" in " ".join(result.output.split())
    assert not (slow_project / "data" / "readings.jsonl").exists()  # nothing ran


def test_a_busy_port_is_an_error_and_the_run_does_not_start(slow_project: Path) -> None:
    from conveyor.cli import app

    with serve_metrics(lambda: None) as taken:
        result = CliRunner().invoke(
            app, ["run", str(slow_project), "--metrics-port", str(taken.port)]
        )
    assert result.exit_code == 1
    assert "pick another --metrics-port" in result.output
    assert not (slow_project / "data" / "readings.jsonl").exists()


def test_a_run_without_checkpoints_has_no_checkpoint_metrics() -> None:
    stats = SimpleNamespace(
        name="parse",
        records_in=3,
        records_out=2,
        records_filtered=0,
        records_dead=1,
        dead_lettered=1,
        retried=4,
        busy_seconds=0.5,
    )
    channel = SimpleNamespace(name="source -> parse", buffered=1, capacity=2)

    class Run:
        name = "p"
        run_id = "r1"
        elapsed_seconds = 1.5

        def progress(self) -> tuple[list[Any], list[Any]]:
            return [stats], [channel]

    with serve_metrics(Run(), port=0) as server:
        assert isinstance(server, MetricsServer)
        samples = scrape(server.url)
    assert stage_value(samples, "conveyor_stage_retries_total", "parse") == 4
    assert (
        samples[
            ("conveyor_channel_queue_depth", (("channel", "source -> parse"), ("pipeline", "p")))
        ]
        == 1
    )
    assert samples[("conveyor_dead_letters_total", ())] == 1
    assert samples[("conveyor_run_elapsed_seconds", ())] == 1.5
    assert not any(name.startswith("conveyor_checkpoint") for name, _ in samples)


def test_run_help_names_the_options_and_the_extra() -> None:
    from conveyor.cli import app

    result = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--metrics-port" in text
    assert "--metrics-host" in text
    assert "pip install 'conveyor[metrics]'" in text
