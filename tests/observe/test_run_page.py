"""The run report's pieces: the recorder's bounded samples, the document, the page."""

from __future__ import annotations

import itertools
import json
from html.parser import HTMLParser
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import MapStage, Pipeline
from conveyor.observe.run_page import RunRecorder, render_html, report_document
from conveyor.testing import MemorySink


def fake_runner(t: float, out: int, buffered: int) -> Any:
    stage = SimpleNamespace(records_out=out)
    channel = SimpleNamespace(name="a -> b", buffered=buffered, capacity=4)
    return SimpleNamespace(elapsed_seconds=t, progress=lambda: ([stage], [channel]))


def test_the_recorder_keeps_an_even_bounded_series_from_the_first_sample() -> None:
    recorder = RunRecorder(max_samples=16)
    for tick in range(1000):
        recorder(fake_runner(tick * 0.25, tick * 10, tick % 5))
    samples = recorder.as_dict()
    times = samples["t"]
    assert 8 <= len(times) < 16
    assert times[0] == 0.0
    gaps = {round(b - a, 3) for a, b in itertools.pairwise(times)}
    assert len(gaps) == 1  # evenly spaced
    assert len(samples["fill"]["a -> b"]) == len(times) == len(samples["records_out"])
    assert all(0.0 <= f <= 1.0 for f in samples["fill"]["a -> b"])
    assert samples["records_out"] == [round(t / 0.25) * 10 for t in times]


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script += data


HOSTILE = '</script><script>alert(1)</script><img src="http://198.51.100.7/x">&amp;'


@pytest.fixture
def hostile_doc() -> dict[str, Any]:
    def refuse(record: dict[str, Any]) -> dict[str, Any]:
        raise ValueError(f"bad {record['name']}")

    pipeline = Pipeline[Any, Any]("hostile").add_stage(MapStage(refuse, name="check"))
    report = pipeline.run([{"name": HOSTILE}] * 3, MemorySink(), dead_letters="memory")
    groups = [
        {
            "stage": "check",
            "error_type": "builtins.ValueError",
            "letters": 3,
            "records": 1,
            "examples": [{"id": "x" * 32, "message": f"bad {HOSTILE}", "record": HOSTILE}],
        }
    ]
    return report_document(report, dead_letters=groups, graph_svg="<svg><text>s</text></svg>")


def test_record_text_cannot_break_out_of_the_page(hostile_doc: dict[str, Any]) -> None:
    parsed = Elements()
    parsed.feed(render_html(hostile_doc))
    tags = [tag for tag, _ in parsed.tags]
    assert tags.count("script") == 1
    assert "img" not in tags
    [(_, attrs)] = [(t, a) for t, a in parsed.tags if t == "script"]
    assert attrs == {"type": "application/json", "id": "conveyor-report"}
    embedded = json.loads(parsed.script)
    assert embedded["dead_letters"][0]["examples"][0]["record"] == HOSTILE
    assert embedded["run"] == hostile_doc["run"]
    assert "_svg" not in embedded


def test_the_document_counts_are_the_reports(hostile_doc: dict[str, Any]) -> None:
    run = hostile_doc["run"]
    assert (run["records_in"], run["records_out"], run["dead_lettered"]) == (3, 0, 3)
    assert [s["stage"] for s in hostile_doc["stages"]] == ["check", "sink"]
    assert hostile_doc["stages"][0]["records_dead"] == 3
    assert run["sink"] == "MemorySink"
    assert hostile_doc["samples"] is None
    page = render_html(hostile_doc)
    assert "No samples were taken" in page


def test_the_summary_names_the_sink_by_where_it_writes(tmp_path: Any) -> None:
    from conveyor.connectors import CsvSink

    path = tmp_path / "out.csv"
    pipeline = Pipeline[Any, Any]("p").add_stage(MapStage(lambda r: r, name="same"))
    report = pipeline.run([{"a": 1}], CsvSink(path), dead_letters="memory")
    assert report.sink_description == f"csv {path}"
    assert report.summary().splitlines()[1] == f"sink: csv {path}"
