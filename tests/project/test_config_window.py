"""``stages.NAME.window`` in config.yaml (issue 12, ADR 0013): a stage made a window stage
by config, its results equal to a group-by, and every refusal located at file:line."""

from __future__ import annotations

import json
import math
import re
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from _cli import conveyor, flat

from conveyor import WindowStage
from conveyor.errors import ConfigError, ProjectError
from conveyor.project.config import load_config
from conveyor.project.dvc import dvc_pipeline
from conveyor.project.project import load_project
from conveyor.project.run import fingerprint, run_project

N = 1000

SOURCE = f'''
"""Readings of three sensors, one a second, a little out of order."""

from conveyor.project import Source


class Readings(Source):
    deterministic = True

    def read(self):
        for i in range({N}):
            ts = i - 3 if i % 10 == 5 else i  # within max_out_of_orderness
            yield {{"sensor": f"s{{i % 3}}", "ts": ts, "value": (i * 7) % 11}}
'''

DOCSTRING_ONLY = '"""Per sensor and minute: the window is in config.yaml."""\n'

AGGREGATE_FILE = '''
"""The spread of each window's values (the window is in config.yaml)."""

from typing import Any

from conveyor import AggregateStage


def spread(records: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["value"] for r in records]
    return {"n": len(values), "spread": max(values) - min(values)}


stage = AggregateStage(spread)
'''


def readings() -> list[dict[str, Any]]:
    """What SOURCE yields."""
    out = []
    for i in range(N):
        ts = i - 3 if i % 10 == 5 else i
        out.append({"sensor": f"s{i % 3}", "ts": ts, "value": (i * 7) % 11})
    return out


def make(tmp_path: Path, config: str, stage: str = DOCSTRING_ONLY, name: str = "agg") -> Path:
    """A project: the SOURCE, the stage file ``20_NAME.py`` and a jsonl sink."""
    root = tmp_path / "win"
    stages = root / "src" / "pipeline" / "stages"
    stages.mkdir(parents=True)
    (root / "src" / "pipeline" / "__init__.py").write_text("")
    (stages / "__init__.py").write_text("")
    (stages / "00_source.py").write_text(SOURCE)
    (stages / f"20_{name}.py").write_text(stage)
    text = textwrap.dedent(config)
    if "sink:" not in text:
        text += "sink: {connector: jsonl, path: out.jsonl}\n"
    (root / "src" / "pipeline" / "config.yaml").write_text(text)
    return root


def results(root: Path) -> list[dict[str, Any]]:
    lines = (root / "out.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def by_window(rows: list[dict[str, Any]]) -> dict[tuple[Any, Any, Any], Any]:
    found = {(r["key"], r["start"], r["end"]): r["value"] for r in rows}
    assert len(found) == len(rows)  # one result per (key, window)
    return found


def close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return math.isclose(a, b)


# -- results equal a group-by --------------------------------------------------------------


def test_tumbling_mean_by_key_equals_a_group_by(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        """\
        pipeline: {batch_size: 64, concurrency: 4}  # (a default a window stage ignores)
        stages:
          agg:
            window: {tumbling: 60s, time: ts, key: sensor, max_out_of_orderness: 5s,
                     aggregate: mean, field: value}
        """,
    )
    run = run_project(root, handle_signals=False)
    assert run.report is not None
    assert run.report.dead_lettered == 0
    groups: dict[tuple[Any, Any, Any], list[float]] = defaultdict(list)
    for r in readings():
        start = r["ts"] - r["ts"] % 60
        groups[(r["sensor"], start, start + 60)].append(r["value"])
    expected = {k: sum(v) / len(v) for k, v in groups.items()}
    got = by_window(results(root))
    assert got.keys() == expected.keys()
    assert all(close(got[k], expected[k]) for k in expected)
    stage = load_project(root).stage("agg").stage
    assert isinstance(stage, WindowStage)
    assert stage.state_identity[:2] == ["window", "tumbling 60s"]


def test_sliding_list_of_aggregates_equals_a_group_by(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        """\
        pipeline: {batch_size: 100}
        stages:
          agg:
            window:
              sliding: 1m
              slide: 20s
              time: ts
              key: sensor
              max_out_of_orderness: 5
              aggregate: [count, sum, mean, min, max]
              field: value
        """,
    )
    run_project(root, handle_signals=False)
    groups: dict[tuple[Any, Any, Any], list[float]] = defaultdict(list)
    for r in readings():
        last = r["ts"] - r["ts"] % 20
        for start in range(last, r["ts"] - 60, -20):
            groups[(r["sensor"], start, start + 60)].append(r["value"])
    expected = {
        k: {"count": len(v), "sum": sum(v), "mean": sum(v) / len(v), "min": min(v), "max": max(v)}
        for k, v in groups.items()
    }
    got = by_window(results(root))
    assert got.keys() == expected.keys()
    assert all(close(got[k], expected[k]) for k in expected)


def test_count_windows_without_key_or_field_count_records(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        """\
        stages:
          agg:
            window: {count: 300, aggregate: count}
        """,
    )
    run_project(root, handle_signals=False)
    got = by_window(results(root))
    assert got == {(None, 0, 300): 300, (None, 300, 600): 300, (None, 600, 900): 300,
                   (None, 900, 1000): 100}  # fmt: skip


def test_session_windows_with_the_stage_files_aggregate(tmp_path: Path) -> None:
    """No `aggregate:` in config.yaml: the window aggregates with the file's AggregateStage."""
    gap = 2.5  # s0's records are 3 s apart (one session each), s1 and s2 likewise
    root = make(
        tmp_path,
        f"""\
        stages:
          agg:
            window: {{session: {gap}, time: ts, key: sensor, max_out_of_orderness: 10s}}
        """,
        AGGREGATE_FILE,
    )
    run_project(root, handle_signals=False)
    per_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(readings(), key=lambda r: r["ts"]):
        per_key[r["sensor"]].append(r)
    expected = {}
    for key, rows in per_key.items():  # sessions: a new one when the gap is reached
        session = [rows[0]]
        for r in rows[1:]:
            if r["ts"] - session[-1]["ts"] >= gap:
                values = [s["value"] for s in session]
                expected[(key, session[0]["ts"], session[-1]["ts"] + gap)] = {
                    "n": len(values),
                    "spread": max(values) - min(values),
                }
                session = []
            session.append(r)
        values = [s["value"] for s in session]
        expected[(key, session[0]["ts"], session[-1]["ts"] + gap)] = {
            "n": len(values),
            "spread": max(values) - min(values),
        }
    assert by_window(results(root)) == expected


# -- fingerprint, check, graph -------------------------------------------------------------


def test_the_window_is_part_of_the_stage_fingerprint(tmp_path: Path) -> None:
    config = """\
        stages:
          agg:
            persist: {path: data/agg}
            window: {tumbling: 60s, time: ts, key: sensor, aggregate: max, field: value}
        """
    root = make(tmp_path, config)
    first = run_project(root, handle_signals=False)
    assert first.skipped == []
    again = run_project(root, handle_signals=False)
    assert again.skipped == ["agg"]  # unchanged: fresh
    project = load_project(root)
    before = fingerprint(project, project.stage("agg"), None)
    changed = load_project(root, ["stages.agg.window.tumbling=2m"])
    after = fingerprint(changed, changed.stage("agg"), None)
    assert before.config_hash != after.config_hash
    rerun = run_project(root, ["stages.agg.window.tumbling=2m"], handle_signals=False)
    assert rerun.skipped == []
    assert {r["end"] - r["start"] for r in results(root)} == {120}
    stages = {s.name: s for s in dvc_pipeline(project).stages}
    assert "stages.agg.window" in stages["agg"].params  # dvc repro sees a window change


def test_check_and_graph_of_a_config_window_stage(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        """\
        stages:
          agg:
            window: {tumbling: 60s, time: ts, key: sensor, aggregate: mean, field: value}
        """,
    )
    checked = conveyor("check", ".", cwd=root)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "no violations" in checked.stdout
    graph = conveyor("graph", ".", cwd=root)
    assert graph.returncode == 0, graph.stderr
    assert "agg<br/>window tumbling 60s" in graph.stdout
    ran = conveyor("run", ".", cwd=root)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "agg: 1,000 in, 51 out" in flat(ran.stdout)


def test_a_docstring_file_without_window_aggregate_is_still_a_check_violation(
    tmp_path: Path,
) -> None:
    root = make(
        tmp_path,
        """\
        stages:
          agg:
            window: {tumbling: 60s, time: ts}
        """,
    )
    checked = conveyor("check", ".", cwd=root)
    assert checked.returncode != 0
    assert "20_agg.py:1: stages-per-file: defines no stage" in flat(checked.stdout)


# -- refusals, each at file:line -----------------------------------------------------------

REFUSALS = [
    pytest.param(
        "window: {tumbling: 6x0s, time: ts, aggregate: count}",
        "stages.agg.window.tumbling: tumbling must be a duration > 0",
        id="bad-duration",
    ),
    pytest.param(
        "window: {tumbling: 60s, time: ts, aggregate: count, allowed_lateness: soon}",
        "allowed_lateness must be a duration >= 0",
        id="bad-lateness",
    ),
    pytest.param(
        "window: {tumbling: 60s, session: 5m, time: ts, aggregate: count}",
        "stages.agg.window.session: two window kinds, tumbling and session",
        id="two-kinds",
    ),
    pytest.param(
        "window: {tumbling: 60s, slide: 10s, time: ts, aggregate: count}",
        "stages.agg.window.slide: slide goes with sliding",
        id="slide-without-sliding",
    ),
    pytest.param(
        "window: {sliding: 60s, time: ts, aggregate: count}",
        "sliding windows need slide:",
        id="sliding-without-slide",
    ),
    pytest.param(
        "window: {sliding: 60s, slide: 90s, time: ts, aggregate: count}",
        "slide (90s) must not exceed the window's size",
        id="slide-over-size",
    ),
    pytest.param(
        "window: {tumbling: 60s, time: ts, aggregate: median, field: value}",
        "unknown aggregate 'median'; did you mean 'mean'? (built-in: count, sum, mean, min, max",
        id="unknown-aggregate",
    ),
    pytest.param(
        "window: {tumbling: 60s, key: sensor, aggregate: count}",
        "stages.agg.window.time: tumbling windows need time:",
        id="missing-time",
    ),
    pytest.param(
        "window: {count: 10, time: ts, aggregate: count}",
        "count windows close by count, not by event time: drop time",
        id="count-with-time",
    ),
    pytest.param(
        "window: {tumbling: 60s, time: ts, aggregate: mean}",
        "aggregate mean needs field:",
        id="mean-without-field",
    ),
    pytest.param(
        "window: {time: ts, aggregate: count}",
        "stages.agg.window: a window needs one of tumbling, sliding (with slide), session or count",
        id="no-kind",
    ),
    pytest.param(
        "window: {tumbling: 60s, time: ts, aggregate: count, keys: sensor}",
        "unknown key 'keys' in stages.agg.window; did you mean 'key'? (valid keys: tumbling,",
        id="unknown-key",
    ),
]


@pytest.mark.parametrize(("window", "message"), REFUSALS)
def test_each_bad_window_value_is_refused_at_its_line(
    tmp_path: Path, window: str, message: str
) -> None:
    root = make(tmp_path, f"stages:\n  agg:\n    {window}\n")
    file = root / "src" / "pipeline" / "config.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    text = str(caught.value)
    assert message in text
    assert re.match(rf"{re.escape(str(file))}:3:\d+: ", text), text
    ran = conveyor("run", ".", cwd=root)  # and the CLI says the same
    assert ran.returncode != 0
    assert "config.yaml:3:" in flat(ran.stdout + ran.stderr)
    assert message in flat(ran.stdout + ran.stderr)


def test_field_without_a_built_in_aggregate_is_refused(tmp_path: Path) -> None:
    root = make(tmp_path, "stages:\n  agg:\n    window: {tumbling: 60s, time: ts, field: value}\n")
    with pytest.raises(ConfigError, match=r"config\.yaml:3:\d+: .*field goes with a built-in"):
        load_project(root)


def test_an_aggregate_in_both_places_is_refused_naming_both(tmp_path: Path) -> None:
    root = make(
        tmp_path,
        """\
        stages:
          agg:
            window:
              tumbling: 60s
              time: ts
              aggregate: mean
              field: value
        """,
        AGGREGATE_FILE,
    )
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    text = str(caught.value)
    assert re.search(r"config\.yaml:6:\d+: stage 'agg' has two aggregates", text), text
    assert "stages.agg.window.aggregate (mean)" in text
    assert "the AggregateStage of src/pipeline/stages/20_agg.py:14" in text


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        pytest.param(
            "from conveyor import MapStage\n\nstage = MapStage(dict)\n",
            "stages.agg.window makes stage 'agg' a window stage, but "
            "src/pipeline/stages/20_agg.py:3 defines a MapStage",
            id="map-stage",
        ),
        pytest.param(
            "from conveyor import window\n\n"
            "stage = window(tumbling=60, time='ts', aggregate=len)\n",
            "stage 'agg' is windowed twice: stages.agg.window and the WindowStage of "
            "src/pipeline/stages/20_agg.py:3",
            id="window-stage",
        ),
        pytest.param(
            DOCSTRING_ONLY,
            "stages.agg.window names no aggregate, and src/pipeline/stages/20_agg.py defines none",
            id="no-aggregate",
        ),
    ],
)
def test_a_stage_file_that_contradicts_the_window_is_refused(
    tmp_path: Path, stage: str, message: str
) -> None:
    root = make(tmp_path, "stages:\n  agg:\n    window: {tumbling: 60s, time: ts}\n", stage)
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    text = str(caught.value)
    assert re.search(r"config\.yaml:3:\d+: ", text), text
    assert message in text


@pytest.mark.parametrize(
    ("option", "line"),
    [
        ("concurrency: 4", 4),
        ("executor: thread", 4),
        ("retry: {attempts: 3}", 4),
        ("timeout: 2", 4),
        ("params: {size: 3}", 4),
    ],
)
def test_options_a_window_stage_cannot_take_are_refused_at_their_key(
    tmp_path: Path, option: str, line: int
) -> None:
    key = option.split(":")[0]
    root = make(
        tmp_path,
        f"stages:\n  agg:\n    window: {{tumbling: 60s, time: ts, aggregate: count}}\n"
        f"    {option}\n",
    )
    with pytest.raises(ConfigError) as caught:
        load_project(root)
    text = str(caught.value)
    assert re.search(rf"config\.yaml:{line}:\d+: stages\.agg\.{key}: stage 'agg' is a window", text)


def test_two_stages_in_a_window_stage_file_are_refused(tmp_path: Path) -> None:
    two = (
        "from conveyor import AggregateStage\n\na = AggregateStage(len)\nb = AggregateStage(sum)\n"
    )
    root = make(tmp_path, "stages:\n  agg:\n    window: {tumbling: 60s, time: ts}\n", two)
    with pytest.raises(ProjectError, match=r"20_agg\.py: a stage file defines at most one stage"):
        load_project(root)
