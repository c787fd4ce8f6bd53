"""Windows, state and watermark lag in the live view, the metrics and the run report
(issue 12): a real windowed project run (an async generator source stamping events with
the wall clock, a tumbling window per user) scraped over HTTP while it runs, its live
table and log lines, its report as JSON and as a page; and a pipeline without windows
that shows none of it."""

from __future__ import annotations

import io
import itertools
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from _scrapekit import Samples, scrape
from rich.console import Console

from conveyor import StageKind
from conveyor.observe import RunRecorder, serve_metrics
from conveyor.observe.state import format_lag
from conveyor.project.scaffold import new_project

SOURCE = '''"""Clicks as they happen: an async generator stamping each with the wall clock; every
40th is a minute old (late: its window closed long ago); a pause of ``stall`` seconds
after the ``stall_at``-th."""

import asyncio
import time
from collections.abc import AsyncIterator

from pydantic import BaseModel

from conveyor.project import Source


class Clicks(Source):
    class Config(BaseModel):
        count: int = 300
        pause: float = 0.01
        stall_at: int = -1
        stall: float = 0.0

    def __init__(self, config: Config) -> None:
        self.config = config

    async def read(self) -> AsyncIterator[dict]:
        for i in range(self.config.count):
            now = time.time()
            yield {"id": i, "user": f"u{i % 4}", "ts": now - 60.0 if i % 40 == 39 else now}
            stalls = i == self.config.stall_at
            await asyncio.sleep(self.config.stall if stalls else self.config.pause)
'''

WINDOW = '''"""Clicks per user per second."""

from conveyor import window

stage = window(tumbling=1.0, key="user", time="ts", aggregate=len, max_out_of_orderness=0.5)
'''

COUNT = 300
LATE = len([i for i in range(COUNT) if i % 40 == 39])  # 7
BOUND = 0.5  # max_out_of_orderness
USERS = 4
OVERRIDES = [
    "pipeline.batch_size=10",
    "pipeline.max_dead_letters=50%",
    f"stages.source.params.count={COUNT}",
]
STALL = [*OVERRIDES, "stages.source.params.stall_at=150", "stages.source.params.stall=1.5"]


@pytest.fixture
def windowed(tmp_path: Path) -> Path:
    """The scaffold with its source replaced by clicks and its stages by one window."""
    root = tmp_path / "clicks"
    new_project(root)
    stages = root / "src" / "pipeline" / "stages"
    (stages / "10_validate.py").unlink()
    (stages / "20_enrich.py").unlink()
    (stages / "00_source.py").write_text(SOURCE)
    (stages / "20_window.py").write_text(WINDOW)
    sink = stages / "90_sink.py"
    text = sink.read_text().replace("from pipeline.contracts.models import EnrichedReading\n", "")
    sink.write_text(text.replace("list[EnrichedReading]", "list[dict]"))
    return root.resolve()


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    root = tmp_path / "plain"
    new_project(root)
    return root.resolve()


def value(samples: Samples, name: str, stage: str = "window") -> float | None:
    return next(
        (v for (n, labels), v in samples.items() if n == name and ("stage", stage) in labels),
        None,
    )


def number(samples: Samples, name: str, stage: str = "window") -> float:
    found = value(samples, name, stage)
    assert found is not None, f"no {name} for {stage}"
    return found


def table_rows(text: str) -> dict[str, list[str]]:
    """The rows of a rendered rich table: first cell (the stage) -> the cells."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("┃│").split("┃" if "┃" in line else "│")]
        if len(cells) > 1 and cells[0]:
            rows.setdefault(cells[0], cells)
    return rows


class Page(HTMLParser):
    """Cells of the page's tables by ``data-state`` row and ``data-field``, and the
    embedded document."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, dict[str, str]] = {}
        self.values: dict[str, dict[str, str | None]] = {}
        self.ids: set[str] = set()
        self.charts: list[str] = []
        self.script = ""
        self._row = ""
        self._field = ""
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self._tag = tag
        if a.get("id"):
            self.ids.add(str(a["id"]))
        if tag == "tr":
            self._row = str(a.get("data-state") or "")
        if tag == "td" and self._row and a.get("data-field"):
            self._field = str(a["data-field"])
            self.values.setdefault(self._row, {})[self._field] = a.get("data-value")
        if tag == "svg" and "chart" in str(a.get("class")):
            self.charts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = ""
        if tag == "tr":
            self._row = ""
        self._tag = ""

    def handle_data(self, data: str) -> None:
        if self._tag == "script":
            self.script += data
        elif self._field:
            row = self.cells.setdefault(self._row, {})
            row[self._field] = row.get(self._field, "") + data
        elif self._tag == "title" and self.charts:
            self.charts[-1] += data + ";"


def test_a_windowed_run_shows_windows_state_and_lag_live_in_metrics_and_in_its_report(
    windowed: Path, tmp_path: Path
) -> None:
    from conveyor import cli
    from conveyor.project.run import run_project

    live: dict[str, Any] = {}
    tables: list[str] = []
    outcome: dict[str, Any] = {}
    page = tmp_path / "out" / "run.html"

    def progress(runner: Any) -> None:
        live["runner"] = runner
        screen = Console(file=io.StringIO(), width=200, color_system=None)
        screen.print(cli._stats_table(runner))
        tables.append(screen.file.getvalue())  # type: ignore[attr-defined]

    def go() -> None:
        outcome["run"] = run_project(
            windowed,
            STALL,
            progress=progress,
            progress_interval=0.05,
            handle_signals=False,
            report=page,
        )

    started = time.time()
    server = serve_metrics(lambda: live.get("runner"), port=0)
    assert server.host == "127.0.0.1"
    thread = threading.Thread(target=go)
    during: list[tuple[float, Samples]] = []
    with server:
        thread.start()
        deadline = time.monotonic() + 60
        while thread.is_alive() and time.monotonic() < deadline:
            samples = scrape(server.url)
            if value(samples, "conveyor_stage_records_in_total") is not None:
                during.append((time.time(), samples))
            time.sleep(0.1)
        thread.join(timeout=60)
        assert not thread.is_alive()
        final = scrape(server.url)
    ended = time.time()

    report = outcome["run"].report
    assert report is not None
    stats = report.stage("window")
    assert report.records_in == COUNT
    assert stats.late == report.late == LATE
    assert len(during) >= 10, "the run should last long enough to be scraped many times"

    # -- metrics, scraped while the run goes ---------------------------------------------
    opened = [number(s, "conveyor_window_open") for _, s in during]
    keys = [number(s, "conveyor_state_keys") for _, s in during]
    held = [number(s, "conveyor_state_records") for _, s in during]
    late = [number(s, "conveyor_late_records_total") for _, s in during]
    # one or two windows open per user (the current second and, within the bound, the last)
    assert max(opened) >= USERS
    assert all(0 <= n <= 2 * USERS for n in opened)
    assert USERS in keys
    assert max(held) > 0
    assert late == sorted(late)
    assert 0 < max(late) <= LATE
    lags = [
        (number(s, "conveyor_watermark_lag_seconds"), s)
        for _, s in during
        if value(s, "conveyor_watermark_seconds") is not None
    ]
    assert len(lags) >= 10
    for lag, samples in lags:
        assert BOUND <= lag < BOUND + 5  # events are stamped now: the lag is about the bound
        assert started - BOUND <= number(samples, "conveyor_watermark_seconds") <= ended
    # the lag is read at the scrape: while the source stalls (1.5 s) it grows
    same = ("conveyor_stage_records_in_total", "conveyor_watermark_seconds")
    stalled = [
        b[0] - a[0]
        for a, b in itertools.pairwise(lags)
        if all(number(a[1], name) == number(b[1], name) for name in same)
    ]
    assert stalled
    assert sum(stalled) >= 0.8
    assert max(lag for lag, _ in lags) >= BOUND + 0.8
    # the end: every window closed, the counters are the report's
    assert value(final, "conveyor_window_open") == 0 == stats.open_windows
    assert value(final, "conveyor_state_records") == 0
    assert value(final, "conveyor_late_records_total") == LATE
    assert number(final, "conveyor_watermark_seconds") == pytest.approx(stats.watermark)
    assert value(final, "conveyor_window_open", "sink") is None  # stateful stages only
    assert value(final, "conveyor_late_records_total", "sink") is None

    # -- the live table ----------------------------------------------------------------------
    shown = [table_rows(t) for t in tables]
    head = shown[0]["stage"]
    assert head[-5:] == ["windows", "keys", "held", "late", "wm lag"]
    busy = [rows["window"] for rows in shown if rows.get("window", ["0"])[1] not in ("", "0")]
    assert busy
    windows_col, keys_col, lag_col = head.index("windows"), head.index("keys"), head.index("wm lag")
    assert any(int(row[windows_col]) >= USERS for row in busy)
    assert any(int(row[keys_col]) == USERS for row in busy)
    seconds = [float(row[lag_col].rstrip("s")) for row in busy if row[lag_col] != "-"]
    assert seconds
    assert all(BOUND <= s < BOUND + 5 for s in seconds)
    sink_rows = [rows[k] for rows in shown for k in rows if k.startswith("sink")]
    assert sink_rows
    assert all(row[windows_col:] == ["", "", "", "", ""] for row in sink_rows)

    # -- the report: its JSON, and the page showing the same figures ----------------------
    parsed = Page()
    parsed.feed(page.read_text())
    doc = json.loads(parsed.script)
    [entry] = doc["stateful"]
    assert entry["stage"] == "window"
    assert entry["late"] == LATE == doc["run"]["late"]
    assert entry["open_windows"] == 0  # a completed run closed them all
    assert entry["watermark"] == pytest.approx(stats.watermark)
    series = doc["samples"]["state"]["window"]
    assert len(series["open_windows"]) == len(doc["samples"]["t"]) == entry["samples"] > 10
    assert entry["peak_open_windows"] == max(series["open_windows"])
    assert USERS <= entry["peak_open_windows"] <= 2 * USERS
    assert entry["peak_state_keys"] == USERS
    assert entry["peak_state_records"] == max(series["state_records"]) > 0
    assert series["late"] == sorted(series["late"])
    assert series["late"][-1] == LATE
    sampled = [lag for lag in series["watermark_lag"] if lag is not None]
    assert entry["max_watermark_lag"] == max(sampled)
    assert BOUND + 0.8 <= max(sampled) < BOUND + 6  # the stall shows in the samples too
    assert all(lag >= BOUND for lag in sampled)
    row = doc["stages"][0]
    assert (row["stage"], row["kind"], row["late"]) == ("window", "stateful", LATE)

    assert "state" in parsed.ids
    cells = parsed.cells["window"]
    for figure in ("open_windows", "peak_open_windows", "peak_state_keys", "late"):
        assert cells[figure] == f"{entry[figure]:,}", figure
    assert cells["peak_state_records"] == f"{entry['peak_state_records']:,}"
    assert cells["max_watermark_lag"] == format_lag(entry["max_watermark_lag"])
    assert float(parsed.values["window"]["watermark"] or "nan") == pytest.approx(stats.watermark)
    assert cells["watermark"].startswith(time.strftime("%Y-%m-%dT", time.gmtime(stats.watermark)))
    charts = ";".join(parsed.charts)
    for title in ("Open windows over the run", "Records held", "Watermark lag over the run"):
        assert title in charts


def test_conveyor_run_logs_the_state_and_writes_it_to_run_json(
    windowed: Path, tmp_path: Path
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    url = f"http://127.0.0.1:{port}/metrics"
    target = tmp_path / "run.json"
    args = [sys.executable, "-m", "conveyor", "run", str(windowed), *OVERRIDES]
    proc = subprocess.Popen(
        [*args, "--metrics-port", str(port), "--report", str(target)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    opened: list[float] = []
    try:
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                samples = scrape(url)
            except (urllib.error.URLError, ConnectionError):
                samples = {}
            found = value(samples, "conveyor_window_open")
            if found is not None:
                opened.append(found)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert opened
    assert max(opened) >= USERS
    # stdout is not a terminal: log lines, the window's with its state, the sink's without
    line = re.compile(
        r"window: [\d,]+ in, [\d,]+ out \((\d+) open windows, (\d+) keys, (\d+) held, "
        r"(\d+) late, watermark lag (-|[\d.]+s)\) \| sink: [\d,]+ in, [\d,]+ out$"
    )
    logged = [m for m in map(line.match, out.splitlines()) if m]
    assert len(logged) >= 2, out
    assert any(int(m[1]) >= USERS and int(m[2]) == USERS for m in logged)
    assert all(m[5] == "-" or BOUND <= float(m[5][:-1]) < BOUND + 5 for m in logged)
    assert f"({LATE} late)" in out
    doc = json.loads(target.read_text())
    [entry] = doc["stateful"]
    assert entry["late"] == LATE
    assert entry["peak_state_keys"] == USERS
    assert USERS <= entry["peak_open_windows"] <= 2 * USERS
    assert BOUND <= entry["max_watermark_lag"] < BOUND + 5


def test_a_pipeline_without_windows_shows_none_of_it(plain: Path, tmp_path: Path) -> None:
    from conveyor import cli
    from conveyor.project.run import run_project

    seen: dict[str, Any] = {}

    def progress(runner: Any) -> None:
        seen["runner"] = runner

    target = tmp_path / "run.html"
    outcome = run_project(plain, [], progress=progress, handle_signals=False, report=target)
    assert outcome.report is not None
    runner = seen["runner"]
    screen = Console(file=io.StringIO(), width=200, color_system=None)
    screen.print(cli._stats_table(runner))
    head = table_rows(screen.file.getvalue())["stage"]  # type: ignore[attr-defined]
    assert head == ["stage", "in", "out", "filtered", "dead", "rate/s", "queue"]
    with serve_metrics(runner, port=0) as server:
        names = {name for name, _ in scrape(server.url)}
    assert "conveyor_stage_records_in_total" in names
    assert not {n for n in names if re.match(r"conveyor_(window|state|watermark|late)", n)}
    parsed = Page()
    parsed.feed(target.read_text())
    doc = json.loads(parsed.script)
    assert doc["stateful"] == []
    assert doc["samples"]["state"] == {}
    assert "state" not in parsed.ids
    assert "Windows and state" not in target.read_text()


def stateful(**figures: Any) -> Any:
    base = {
        "name": "w",
        "kind": StageKind.STATEFUL,
        "records_in": 5,
        "records_out": 1,
        "records_filtered": 0,
        "records_dead": 1,
        "dead_lettered": 1,
        "retried": 0,
        "busy_seconds": 0.1,
        "late": 1,
        "open_windows": 2,
        "state_keys": 2,
        "state_records": 3,
        "watermark": None,
    }
    return SimpleNamespace(**{**base, **figures})


def test_count_windows_have_state_but_no_watermark_metrics() -> None:
    stats = stateful()  # count windows: no event time, no watermark

    class Run:
        name = "p"
        run_id = "r1"
        elapsed_seconds = 1.0

        def progress(self) -> tuple[list[Any], list[Any]]:
            return [stats], []

    with serve_metrics(Run(), port=0) as server:
        samples = scrape(server.url)
        assert value(samples, "conveyor_window_open", "w") == 2
        assert value(samples, "conveyor_state_records", "w") == 3
        assert value(samples, "conveyor_late_records_total", "w") == 1
        assert value(samples, "conveyor_watermark_lag_seconds", "w") is None
        stats.watermark = time.time() - 100.0  # a watermark 100 s behind: read at the scrape
        first = value(scrape(server.url), "conveyor_watermark_lag_seconds", "w")
        time.sleep(0.3)
        second = value(scrape(server.url), "conveyor_watermark_lag_seconds", "w")
    assert first is not None
    assert second is not None
    assert 100 <= first < 101
    assert second - first >= 0.25


def test_the_recorder_thins_the_state_series_with_the_rest() -> None:
    stats = stateful(watermark=None)
    channel = SimpleNamespace(name="a -> w", buffered=1, capacity=2)
    runner = SimpleNamespace(elapsed_seconds=0.0, progress=lambda: ([stats], [channel]))
    recorder = RunRecorder(max_samples=16)
    for tick in range(200):
        runner.elapsed_seconds = tick * 0.25
        stats.open_windows = tick
        stats.watermark = None if tick < 3 else time.time() - 10
        recorder(runner)
    samples = recorder.as_dict()
    state = samples["state"]["w"]
    assert len(state["open_windows"]) == len(samples["t"]) == len(state["watermark_lag"]) < 16
    assert state["open_windows"] == [round(t / 0.25) for t in samples["t"]]
    assert state["watermark_lag"][0] is None
    assert all(10 <= lag < 11 for lag in state["watermark_lag"][1:])


def test_synthetic_event_times_show_the_watermark_not_a_lag_of_decades() -> None:
    from types import SimpleNamespace

    from conveyor.core.kinds import StageKind
    from conveyor.observe.state import state_cells, state_line

    def stats(watermark: float | None) -> Any:
        return SimpleNamespace(
            kind=StageKind.STATEFUL,
            watermark=watermark,
            open_windows=2,
            state_keys=1,
            state_records=5,
            late=0,
        )

    now = 1_800_000_000.0
    assert state_line(stats(125.0), now).endswith("0 late, watermark 125)")
    assert state_cells(stats(125.0), now)[-1] == "wm 125"
    assert state_line(stats(now - 2.5), now).endswith("0 late, watermark lag 2.5s)")
    assert state_cells(stats(now - 2.5), now)[-1] == "2.5s"
    assert state_cells(stats(None), now)[-1] == "-"
