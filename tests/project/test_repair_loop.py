"""The repair loop of a project, as a user meets it: a run with bad records, the exit code,
a fix, ``conveyor dlq replay`` into the real sink and the persisted datasets, the second run
that skips what is unchanged, signals, and the project's own hooks and events."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from _cli import ENV, conveyor, flat

from conveyor import EventBus, EventType
from conveyor.dlq import open_dead_letter_store
from conveyor.project.datasets import load_manifest, read_dataset
from conveyor.project.replay import replay_project
from conveyor.project.run import run_project
from conveyor.project.scaffold import new_project
from conveyor.runtime import ReplayRefused

STRICT, LENIENT = "<= 25.0", "<= 60.0"  # 10_validate's bound: celsius runs -10 .. 39


def bad(count: int) -> int:
    """How many of the scaffold's ``count`` readings the STRICT bound rejects."""
    return sum(1 for i in range(count) if (i % 50) - 10.0 > 25.0)


def make(tmp_path: Path, *, count: int = 100, persist: bool = True, extra: str = "") -> Path:
    root = (tmp_path / "demo").resolve()
    new_project(root)
    config = root / "src" / "pipeline" / "config.yaml"
    text = config.read_text().replace("count: 1000", f"count: {count}")
    text = text.replace("batch_size: 500", "batch_size: 7\n  max_dead_letters: 50%")
    if persist:
        text += (
            "  validate:\n    persist: {path: data/validated}\n"
            "  enrich:\n    persist: {path: data/enriched, format: jsonl}\n"
        )
    config.write_text(text + extra)
    return root


def set_bound(project: Path, bound: str) -> None:
    validate = project / "src" / "pipeline" / "stages" / "10_validate.py"
    text = validate.read_text()
    validate.write_text(text.replace(STRICT, bound).replace(LENIENT, bound))


def sink_rows(project: Path) -> list[dict[str, Any]]:
    lines = (project / "data" / "readings.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def key(row: dict[str, Any]) -> tuple[str, float]:
    return row["sensor"], row["celsius"]


# --- replay completes the pipeline ---------------------------------------------------------


def test_replay_of_a_fixed_stage_reaches_the_sink_and_the_datasets_exactly_once(
    tmp_path: Path,
) -> None:
    project = make(tmp_path)
    set_bound(project, STRICT)
    first = run_project(project, handle_signals=False)
    assert first.report is not None
    assert first.report.dead_lettered == bad(100) == 28
    assert len(sink_rows(project)) == 72
    assert load_manifest(project / "data" / "enriched").total_records == 72

    set_bound(project, LENIENT)  # the fix
    replay = replay_project(project, handle_signals=False)
    assert [r.status.value for r in replay.reports] == ["completed"]
    assert replay.replayed == 28
    rows = sink_rows(project)
    # Every reading exactly once in the sink: the replay appended, it did not truncate.
    expected = sorted((f"s{i % 3}", (i % 50) - 10.0) for i in range(100))
    assert len(set(expected)) == 100
    assert sorted(map(key, rows)) == expected
    for dataset in ("validated", "enriched"):
        records = list(read_dataset(project / "data" / dataset))
        assert sorted(map(key, records)) == expected
        assert load_manifest(project / "data" / dataset).total_records == 100

    # A second replay delivers nothing twice.
    again = replay_project(project, handle_signals=False)
    assert again.reports == []
    assert again.replayed == 0
    assert len(sink_rows(project)) == 100
    # The replay recorded the datasets it extended: enrich is unchanged now and is skipped.
    skipped = run_project(project, ["stage=enrich"], handle_signals=False)
    assert skipped.skipped == ["enrich"]


def test_the_cli_replay_says_what_it_did(tmp_path: Path) -> None:
    project = make(tmp_path, count=60)
    set_bound(project, STRICT)
    run = conveyor("run", str(project), "pipeline.max_dead_letters=0", cwd=tmp_path)
    assert run.returncode == 3, run.stdout + run.stderr  # any dead letter is over budget 0
    out = flat(run.stdout)
    assert bad(60) == 14
    assert "demo failed: 60 in, 46 out, 0 filtered, 14 dead-lettered" in out
    assert "14 dead letters (23.3% of 60 records read) exceed max_dead_letters=0" in out
    assert "validate 14" in out
    within = conveyor("run", str(project), "pipeline.max_dead_letters=25%", "--force", cwd=tmp_path)
    assert within.returncode == 0, within.stdout
    set_bound(project, LENIENT)
    replayed = conveyor("dlq", "replay", str(project), cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    out = flat(replayed.stdout)
    # The second run retired the first run's letters of the same records: 14, not 28.
    assert "demo completed: 14 in, 14 out" in out
    assert "14 dead letter(s) marked replayed" in out
    assert len(sink_rows(project)) == 60
    again = conveyor("dlq", "replay", str(project), cwd=tmp_path)
    assert "no dead letters to replay" in again.stdout


BARRIER = '''"""Counts the readings (a barrier)."""

from conveyor import AggregateStage


def count(readings: list) -> list:
    return [{"readings": len(readings)}]


stage = AggregateStage(count)
'''


def with_barrier(tmp_path: Path, *, persist: bool) -> Path:
    project = make(tmp_path, count=60, persist=persist)
    (project / "src" / "pipeline" / "stages" / "30_count.py").write_text(BARRIER)
    set_bound(project, STRICT)
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)
    return project


def test_replay_refuses_before_a_barrier_whose_input_is_not_persisted(tmp_path: Path) -> None:
    project = with_barrier(tmp_path, persist=False)
    before = sink_rows(project)
    with pytest.raises(ReplayRefused, match="stage 'count' after it is a barrier") as caught:
        replay_project(project, handle_signals=False)
    assert caught.value.blocker == "count"
    assert sink_rows(project) == before  # nothing was touched
    with open_dead_letter_store(project / ".conveyor" / "dead_letters.db") as store:
        assert store.count() == 14  # still waiting to be replayed
    cli = conveyor("dlq", "replay", str(project), cwd=tmp_path)
    assert cli.returncode == 1
    assert "persist the output of the stage before 'count'" in flat(cli.stderr).lower() or (
        "Persist the output of the stage before 'count'" in flat(cli.stderr)
    )


def test_replay_recomputes_a_barrier_from_its_persisted_input(tmp_path: Path) -> None:
    project = with_barrier(tmp_path, persist=True)
    assert sink_rows(project) == [{"readings": 46}]
    replay = replay_project(project, handle_signals=False)
    assert replay.recomputed == ["count"]
    assert replay.replayed == 14
    assert sink_rows(project) == [{"readings": 60}]  # recomputed, not a second aggregate
    assert load_manifest(project / "data" / "enriched").total_records == 60


# --- whole runs record and skip --------------------------------------------------------------


def test_a_second_whole_run_skips_unchanged_stages_and_force_runs_them(tmp_path: Path) -> None:
    project = make(tmp_path, count=20)
    first = conveyor("run", str(project), cwd=tmp_path)
    assert first.returncode == 0, first.stdout
    second = conveyor("run", str(project), cwd=tmp_path)
    assert second.returncode == 0, second.stdout
    out = flat(second.stdout)
    assert "stage validate is unchanged (code, config and input): skipped" in out
    assert "stage enrich is unchanged (code, config and input): skipped" in out
    assert "demo completed: 20 in, 20 out" in out  # the Sink read enrich's dataset
    assert len(sink_rows(project)) == 20
    forced = conveyor("run", str(project), "--force", cwd=tmp_path)
    assert "skipped" not in flat(forced.stdout)
    # A changed stage runs again, and so does what reads it.
    set_bound(project, "<= 61.0")
    third = run_project(project, handle_signals=False)
    assert third.skipped == []
    assert third.report is not None
    assert third.report.stage("enrich").records_in == 20


def test_a_whole_run_records_fingerprints_a_stage_run_then_skips(tmp_path: Path) -> None:
    project = make(tmp_path, count=20)
    run_project(project, handle_signals=False)
    assert run_project(project, ["stage=validate"], handle_signals=False).skipped == ["validate"]
    assert run_project(project, ["stage=enrich"], handle_signals=False).skipped == ["enrich"]


# --- hooks and events of a project -----------------------------------------------------------

HOOKS = '''"""Hooks of the demo pipeline: one line per call into hooks.log."""

from pathlib import Path


def log(*, stage_name=None, **kwargs):
    with Path("hooks.log").open("a") as out:
        out.write(f"{stage_name}\\n")


def on_event(event):
    with Path("events.log").open("a") as out:
        out.write(f"{event.type.value} {event.payload['mode']}\\n")
'''


def test_project_runs_stage_runs_and_replays_call_the_projects_hooks(tmp_path: Path) -> None:
    hooks = (
        "pipeline:\n  hooks:\n    after_stage: [pipeline.shared.hooks:log]\n"
        "  events:\n    item_updated: [pipeline.shared.hooks:on_event]\n"
    )
    project = make(tmp_path, count=60)
    config = project / "src" / "pipeline" / "config.yaml"
    config.write_text(config.read_text().replace("pipeline:\n", hooks, 1))
    (project / "src" / "pipeline" / "shared" / "hooks.py").write_text(HOOKS)
    set_bound(project, STRICT)
    run_project(project, handle_signals=False)
    logged = (project / "hooks.log").read_text().split()
    assert {"validate", "enrich"} <= set(logged)
    (project / "hooks.log").unlink()
    run_project(project, ["stage=enrich"], handle_signals=False, force=True)
    assert set((project / "hooks.log").read_text().split()) == {"enrich", "enrich.persist"}
    (project / "hooks.log").unlink()
    set_bound(project, LENIENT)
    replay_project(project, handle_signals=False)
    assert "validate" in (project / "hooks.log").read_text().split()
    events = (project / "events.log").read_text().splitlines()
    assert events == ["item_updated streaming"] * 3


def test_run_project_passes_callers_hooks_and_bus(tmp_path: Path) -> None:
    project = make(tmp_path, count=10, persist=False)
    seen: list[str] = []
    bus = EventBus()
    bus.subscribe(EventType.STAGE_COMPLETED, lambda e: seen.append(e.payload["stage"]))
    stages: list[str] = []
    run_project(
        project,
        handle_signals=False,
        hooks={"before_stage": [lambda *, stage_name, **_: stages.append(stage_name)]},
        event_bus=bus,
    )
    assert seen == ["validate", "enrich", "sink"]
    assert set(stages) == {"validate", "enrich"}


# --- signals -----------------------------------------------------------------------------------

SLOW = '''"""A slow enrich stage, so that a run can be interrupted."""

import time

from conveyor import MapStage


def enrich(reading):
    time.sleep(0.004)
    return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32}


stage = MapStage(enrich)
'''


def start_slow_run(tmp_path: Path) -> tuple[Path, subprocess.Popen[str]]:
    project = make(tmp_path, count=100_000, persist=False)
    (project / "src" / "pipeline" / "stages" / "20_enrich.py").write_text(SLOW)
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "run", str(project), "pipeline.batch_size=100"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while (
        not (project / "data" / "readings.jsonl").exists()
        or not (project / "data" / "readings.jsonl").stat().st_size
    ):
        assert time.monotonic() < deadline, "the run never started writing"
        time.sleep(0.05)
    return project, process


@pytest.mark.timeout(90)
def test_one_signal_drains_and_exits_130(tmp_path: Path) -> None:
    project, process = start_slow_run(tmp_path)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    text = flat(out)
    assert "demo interrupted:" in text
    assert "still in flight" not in text  # drained: nothing was left half-way
    read = int(text.split("demo interrupted: ")[1].split(" in,")[0])
    assert len(sink_rows(project)) == read < 100_000


@pytest.mark.timeout(90)
def test_a_second_signal_aborts_and_says_what_was_in_flight_and_where_to_restart(
    tmp_path: Path,
) -> None:
    project, process = start_slow_run(tmp_path)
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 130, out
    text = flat(out)
    assert "demo aborted:" in text
    assert "records were still in flight and did not finish" in text
    # the whole run keeps checkpoints: the summary says where --resume goes on from
    position = int(text.split("is at source position ")[1].split(":")[0])
    written = sink_rows(project)
    assert position <= len(written)  # everything before the checkpoint was written
    assert "conveyor run --resume" in text


def test_a_run_after_the_fix_retires_the_old_letters_so_replay_adds_nothing_twice(
    tmp_path: Path,
) -> None:
    project = make(tmp_path, count=60)
    set_bound(project, STRICT)
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)
    again = run_project(project, handle_signals=False)  # fix, then run (not replay)
    assert again.report is not None
    assert again.report.records_out == 60
    replay = replay_project(project, handle_signals=False)
    assert replay.reports == []  # the run delivered them already: nothing to replay
    assert sorted(map(key, sink_rows(project))) == sorted(
        (f"s{i % 3}", (i % 50) - 10.0) for i in range(60)
    )


def test_a_replay_after_a_code_change_does_not_let_the_old_dataset_pass_as_fresh(
    tmp_path: Path,
) -> None:
    project = make(tmp_path, count=60)
    set_bound(project, STRICT)
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)  # validate's code changed: its dataset came from the old code
    replay_project(project, handle_signals=False)
    rerun = run_project(project, handle_signals=False)
    assert "validate" not in rerun.skipped  # made again with the current code
    assert rerun.report is not None
    assert rerun.report.stage("validate").records_in == 60


READS_A_FILE = '''"""Readings from a CSV file the Source declares as its input."""

import csv
from pathlib import Path

from conveyor.project import Source


class Readings(Source):
    def inputs(self) -> list[str]:
        return ["input/readings.csv"]

    def read(self):
        with Path("input/readings.csv").open() as f:
            for row in csv.DictReader(f):
                yield {"sensor": row["sensor"], "celsius": float(row["celsius"])}
'''


def test_a_source_that_reads_a_file_is_read_again_when_the_file_changes(tmp_path: Path) -> None:
    project = make(tmp_path)
    config = project / "src" / "pipeline" / "config.yaml"
    config.write_text(config.read_text().replace("  source:\n    params:\n      count: 100\n", ""))
    (project / "src" / "pipeline" / "stages" / "00_source.py").write_text(READS_A_FILE)
    data = project / "input" / "readings.csv"
    data.parent.mkdir()
    data.write_text("sensor,celsius\na,1\nb,2\n")
    run_project(project, handle_signals=False)
    assert run_project(project, handle_signals=False).skipped == ["validate", "enrich"]
    data.write_text("sensor,celsius\na,1\nb,2\nc,3\n")
    changed = run_project(project, handle_signals=False)
    assert changed.skipped == []
    assert len(sink_rows(project)) == 3


def test_a_source_that_declares_nothing_is_always_read_again(tmp_path: Path) -> None:
    project = make(tmp_path)
    source = project / "src" / "pipeline" / "stages" / "00_source.py"
    source.write_text(source.read_text().replace("    deterministic = True\n", ""))
    run_project(project, handle_signals=False)
    assert run_project(project, handle_signals=False).skipped == []


# --- found in review ---------------------------------------------------------------------------


def stage_file(project: Path, name: str, text: str) -> None:
    (project / "src" / "pipeline" / "stages" / name).write_text(text)


PER_SENSOR = """
from conveyor import AggregateStage


def per_sensor(rows):
    out = {}
    for r in rows:
        out[r["sensor"]] = out.get(r["sensor"], 0) + 1
    return [{"sensor": s, "n": n} for s, n in sorted(out.items())]


stage = AggregateStage(per_sensor)
"""

POST = """
from pathlib import Path
from conveyor import MapStage


def post(row):
    if row["sensor"] == "s1" and Path("FAIL").exists():
        raise ValueError("s1 down")
    return row


stage = MapStage(post)
"""


def test_a_replay_that_recomputes_a_barrier_does_not_replay_what_the_recompute_delivered(
    tmp_path: Path,
) -> None:
    project = make(tmp_path, count=60)
    set_bound(project, STRICT)
    stage_file(project, "30_count.py", PER_SENSOR)
    stage_file(project, "40_post.py", POST)
    (project / "FAIL").write_text("")
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)
    (project / "FAIL").unlink()
    replay = replay_project(project, handle_signals=False)
    assert replay.recomputed == ["count"]
    # Recomputing count re-ran post on every sensor: post's old letter is not replayed too.
    assert sink_rows(project) == [{"sensor": f"s{i}", "n": 20} for i in range(3)]


def test_a_replay_whose_recompute_fails_does_not_append_twice_later(tmp_path: Path) -> None:
    project = make(tmp_path, count=60)
    set_bound(project, STRICT)
    stage_file(project, "30_count.py", BARRIER)
    sink = project / "src" / "pipeline" / "stages" / "90_sink.py"
    sink.write_text(
        sink.read_text().replace(
            "    def open(self, run: RunInfo) -> None:\n",
            "    def open(self, run: RunInfo) -> None:\n"
            "        if Path('FAIL_OPEN').exists():\n"
            "            raise ConnectionError('db down')\n",
        )
    )
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)
    (project / "FAIL_OPEN").write_text("")
    with pytest.raises(ConnectionError):
        replay_project(project, handle_signals=False)
    (project / "FAIL_OPEN").unlink()
    assert replay_project(project, handle_signals=False).reports == []  # all marked
    assert load_manifest(project / "data" / "enriched").total_records == 60  # not 74
    rerun = run_project(project, handle_signals=False)  # the recompute, by the next run
    assert rerun.report is not None
    assert sink_rows(project) == [{"readings": 60}]


INTERRUPTING_ENRICH = """
from pathlib import Path
from conveyor import MapStage


def enrich(r):
    if Path("STOP").exists() and r["celsius"] == 39.0:
        raise KeyboardInterrupt
    return r


stage = MapStage(enrich)
"""


def test_an_interrupted_replay_then_a_second_replay_deliver_each_record_once(
    tmp_path: Path,
) -> None:
    project = make(tmp_path, count=60, persist=False)
    set_bound(project, STRICT)
    stage_file(project, "20_enrich.py", INTERRUPTING_ENRICH)
    run_project(project, handle_signals=False)
    set_bound(project, LENIENT)
    (project / "STOP").write_text("")
    with pytest.raises(KeyboardInterrupt):
        replay_project(project, handle_signals=False)
    (project / "STOP").unlink()
    replay_project(project, handle_signals=False)
    rows = sink_rows(project)
    assert sorted(map(key, rows)) == sorted((f"s{i % 3}", (i % 50) - 10.0) for i in range(60))


TODAYS_FEED = """
import json
from pathlib import Path

from conveyor.project import Source


class Feed(Source):
    def read(self):  # today's export of an API: neither deterministic nor inputs()
        return json.loads(Path("today.json").read_text())
"""


def test_a_run_of_other_records_does_not_retire_earlier_letters(tmp_path: Path) -> None:
    project = make(tmp_path, persist=False)
    config = project / "src" / "pipeline" / "config.yaml"
    config.write_text(config.read_text().replace("  source:\n    params:\n      count: 100\n", ""))
    stage_file(project, "00_source.py", TODAYS_FEED)
    feed = project / "today.json"
    feed.write_text('[{"sensor": "a", "celsius": 1.0}, {"sensor": "a", "celsius": 99.0}]')
    run_project(project, handle_signals=False)
    feed.write_text('[{"sensor": "b", "celsius": 2.0}]')  # day 2: other records
    run_project(project, handle_signals=False)
    set_bound(project, "<= 100.0")
    replay = replay_project(project, handle_signals=False)
    assert replay.replayed == 1  # day 1's bad reading is still there to replay
    assert {"sensor": "a", "celsius": 99.0, "fahrenheit": 210.2} in sink_rows(project)


NOT_JSON = """
from conveyor import MapStage


def enrich(reading):
    if reading["celsius"] == 5.0:
        return {**reading, "tags": {"a", "b"}}  # a set: JSON cannot hold it
    return {**reading, "fahrenheit": reading["celsius"] * 9 / 5 + 32}


stage = MapStage(enrich)
"""


def test_what_a_dataset_cannot_store_is_a_letter_of_the_stage_never_a_duplicate_row(
    tmp_path: Path,
) -> None:
    project = make(tmp_path, count=20)
    stage_file(project, "20_enrich.py", NOT_JSON)
    report = run_project(project, handle_signals=False).report
    assert report is not None
    assert report.dead_letters_by_stage() == {"enrich": 1}
    records = list(read_dataset(project / "data" / "enriched"))
    assert len(records) == len({json.dumps(r, sort_keys=True) for r in records}) == 19
    with open_dead_letter_store(project / ".conveyor" / "dead_letters.db") as store:
        [letter] = store.list()
    assert letter.record["celsius"] == 5.0  # as it entered enrich: replayable after a fix
    assert "cannot be written as JSON" in letter.message


GROUPS = """
from conveyor import BatchStage

stage = BatchStage(4)
"""

FLATTEN = """
from pathlib import Path
from conveyor import FlattenStage, MapStage


stage = FlattenStage()
"""


def test_a_project_replay_after_a_batch_stage_counts_records(tmp_path: Path) -> None:
    project = make(tmp_path, count=20, persist=False)
    stage_file(project, "15_groups.py", GROUPS)
    stage_file(
        project,
        "17_gate.py",
        "from pathlib import Path\nfrom conveyor import MapStage\n\n\n"
        "def gate(group):\n"
        "    if Path('FAIL').exists() and any(r['celsius'] == 5.0 for r in group):\n"
        "        raise ValueError('not yet')\n"
        "    return group\n\n\nstage = MapStage(gate)\n",
    )
    stage_file(project, "18_flat.py", FLATTEN)
    (project / "FAIL").write_text("")
    first = run_project(project, handle_signals=False).report
    assert first is not None
    assert (first.dead_lettered, first.letters) == (4, 1)
    (project / "FAIL").unlink()
    replay = replay_project(project, handle_signals=False)
    [report] = replay.reports
    assert (report.records_in, report.records_out) == (4, 4)
    assert len(sink_rows(project)) == 20
