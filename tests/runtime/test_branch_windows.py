"""Branches on a stream: a BranchStage whose branches hold windows (or keyed state) emits
each branch's results as their windows close, tagged with the branch, so several metrics
come from one unbounded stream. Against a plain group-by per branch and collection mode
(Hypothesis: random events, window kinds, micro-batch sizes, capacities), results while an
unending source flows, the report's conservation law, what a branch that streams refuses,
and its windows in the checkpoint cut: a run aborted (as a crash) or stopped, then resumed,
writes each (branch, key, window) result exactly once, equal to the uninterrupted run's."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_keyed_state import gappy_events, options, run_slowly
from test_windows_stream import BOUND, SPECS, ids, reference, stage_for, streams

from conveyor import (
    AggregateStage,
    BatchStage,
    BranchStage,
    FilterStage,
    KeyedStage,
    MapStage,
    Pipeline,
    PipelineDefinitionError,
    RunOptions,
    StageKind,
    Stats,
    Tumbling,
    window,
)
from conveyor.connectors import SqliteSink
from conveyor.core.result import RunStatus
from conveyor.testing import MemorySink, arun_pipeline_on, run_pipeline_on

Event = dict[str, Any]
Place = tuple[str, Any, Any, Any]

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def by_branch(outputs: list[Event]) -> dict[Place, Any]:
    """(branch, key, start, end) -> value, each once."""
    got: dict[Place, Any] = {}
    for r in outputs:
        place = (r["branch"], r["key"], r["start"], r["end"])
        assert place not in got, f"{place} emitted twice"
        got[place] = r["value"]
    return got


def two_windows(first: Any, second: Any, **kw: Any) -> BranchStage[Any]:
    return BranchStage({"one": stage_for(first, **kw), "two": stage_for(second, **kw)}, name="b")


# -- results equal a group-by per branch, and collection mode ----------------------------------


@SETTINGS
@given(streams(), SPECS, SPECS, st.integers(1, 40), st.integers(1, 4))
def test_each_branch_equals_a_group_by_and_collection_mode(
    stream: tuple[list[Event], set[int]], first: Any, second: Any, batch_size: int, capacity: int
) -> None:
    events, _ = stream
    branch = two_windows(first, second)
    assert branch.streams
    run = run_pipeline_on(
        Pipeline("arms").add_stage(branch), events, batch_size=batch_size, capacity=capacity
    )
    want = {("one", *p): v for p, v in reference(first, events).items()}
    want.update({("two", *p): v for p, v in reference(second, events).items()})
    assert by_branch(run.outputs) == want
    collected = Pipeline("arms").add_stage(two_windows(first, second)).execute_sync(events)
    assert collected.success
    assert by_branch(collected.data) == want
    # collection mode: branch by branch in declaration order, each branch's in its order
    assert [r["branch"] for r in collected.data] == sorted(r["branch"] for r in collected.data)
    report = run.report
    report.check_conservation()
    stats = report.stage("b")
    assert stats.kind is StageKind.BRANCH
    assert (stats.records_in, stats.absorbed) == (len(events), len(events))
    assert stats.born == stats.records_out == report.records_out == len(run.outputs)
    for arm in ("one", "two"):
        assert report.stage(f"b/{arm}/w").open_windows == 0


def test_the_result_records_name_their_branch() -> None:
    events = [{"k": "a", "ts": t, "v": t} for t in range(25)]
    branch = BranchStage(
        {
            "counts": window(tumbling=10, time="ts", key="k", aggregate=len),
            "sums": window(tumbling=10, time="ts", key="k", aggregate=Stats("v", "sum"))
            >> MapStage(lambda r: r["value"], name="value"),
            "raw": FilterStage(lambda r: r["v"] == 3, name="three"),
        },
        name="metrics",
    )
    run = run_pipeline_on(Pipeline("shape").add_stage(branch), events)
    expected = [
        {"branch": "counts", "key": "a", "start": 0, "end": 10, "value": 10},
        {"branch": "counts", "key": "a", "start": 10, "end": 20, "value": 10},
        {"branch": "counts", "key": "a", "start": 20, "end": 30, "value": 5},
        {"branch": "raw", "k": "a", "ts": 3, "v": 3},
        {"branch": "sums", "value": 45},
        {"branch": "sums", "value": 145},
        {"branch": "sums", "value": 110},
    ]
    canon = sorted(json.dumps(r, sort_keys=True) for r in expected)
    assert sorted(json.dumps(r, sort_keys=True) for r in run.outputs) == canon
    assert next(iter(run.outputs[0])) == "branch"
    collected = Pipeline("shape").add_stage(branch).execute_sync(events).data
    assert sorted(json.dumps(r, sort_keys=True) for r in collected) == canon
    assert BranchStage.tagged("x", {"branch": "own", "n": 1}) == {
        "branch": "x",
        "value": {"branch": "own", "n": 1},
    }


def test_a_branch_without_windows_still_emits_one_record_at_the_end() -> None:
    branch = BranchStage({"total": AggregateStage(sum), "evens": FilterStage(lambda x: x % 2 == 0)})
    assert not branch.streams
    run = run_pipeline_on(Pipeline("plain").add_stage(branch), range(10), batch_size=3)
    assert run.outputs == [{"total": 45, "evens": [0, 2, 4, 6, 8]}]


@pytest.mark.parametrize(
    "other",
    [
        AggregateStage(len, name="n"),
        BatchStage(3, name="groups"),
        BranchStage({"inner": AggregateStage(len)}, name="inner"),
    ],
)
def test_a_branch_that_streams_refuses_stages_that_wait_for_the_end(other: Any) -> None:
    counts = window(tumbling=10, time="ts", aggregate=len, name="w")
    with pytest.raises(PipelineDefinitionError, match=f"holds '{other.name}'.*streams"):
        BranchStage({"w": counts, "other": other})
    with pytest.raises(PipelineDefinitionError, match="waits for whole inputs"):
        BranchStage({"w": counts >> other})


# -- while the stream flows --------------------------------------------------------------------


async def test_results_of_closed_windows_arrive_while_the_source_is_still_open() -> None:
    """An async source that ends only when the test says so: each branch's closed windows
    reach the sink before that; the rest close at the end."""
    release = asyncio.Event()
    before_end: list[Event] = []
    sink = MemorySink()

    async def events() -> AsyncIterator[Event]:
        for i in range(300):
            yield {"id": i, "k": "ab"[i % 2], "ts": i / 10, "v": i % 7}
        await asyncio.wait_for(release.wait(), 10)  # open, not ended: bounded by the test
        before_end.extend(sink.records)

    def write(batch: list[Event]) -> None:
        sink(batch)
        done = {(r["branch"], r["key"], r["start"]) for r in sink.records}
        if {("per_sec", "a", 20.0), ("per_5s", "b", 20.0)} <= done:
            release.set()

    branch = BranchStage(
        {
            "per_sec": window(tumbling=1, time="ts", key="k", aggregate=len),
            "per_5s": window(tumbling=5, time="ts", key="k", aggregate=Stats("v", "sum")),
        },
        name="metrics",
    )
    t0 = time.monotonic()
    report = await asyncio.wait_for(
        Pipeline("open").add_stage(branch).arun(events(), write, dead_letters="memory"), 15
    )
    assert time.monotonic() - t0 < 10, "the results came only at the end"
    assert {r["branch"] for r in before_end} == {"per_sec", "per_5s"}
    assert len(before_end) < len(sink.records)  # the last windows closed at the end
    got = by_branch(sink.records)
    assert len(got) == 2 * 30 + 2 * 6
    assert all(got[("per_sec", k, float(s), float(s + 1))] == 5 for k in "ab" for s in range(30))
    assert report.status is RunStatus.COMPLETED
    report.check_conservation()


async def test_an_idle_source_closes_every_branch_s_last_windows() -> None:
    release = asyncio.Event()
    sink = MemorySink()

    async def events() -> AsyncIterator[Event]:
        for i in range(25):
            yield {"k": "a", "ts": i}
        await asyncio.wait_for(release.wait(), 10)

    def write(batch: list[Event]) -> None:
        sink(batch)
        if {("x", 20), ("y", 15)} <= {(r["branch"], r["start"]) for r in sink.records}:
            release.set()

    branch = BranchStage(
        {
            "x": window(tumbling=10, time="ts", idle_timeout=0.2, aggregate=len),
            "y": window(tumbling=5, time="ts", idle_timeout=0.2, aggregate=len),
        }
    )
    t0 = time.monotonic()
    await asyncio.wait_for(
        Pipeline("idle").add_stage(branch).arun(events(), write, dead_letters="memory"), 15
    )
    assert time.monotonic() - t0 < 5
    assert len(by_branch(sink.records)) == 3 + 5


# -- the report's conservation ------------------------------------------------------------------


@SETTINGS
@given(streams(late=True), st.integers(1, 30))
def test_late_and_bad_records_of_the_branches_add_up(
    stream: tuple[list[Event], set[int]], batch_size: int
) -> None:
    events, late_ids = stream
    events = [*events, {"id": -1, "ts": 5}]  # no key: a letter of the keyed branches

    def checked(r: Event) -> Event:
        if r["id"] % 11 == 4:
            raise ValueError("four")
        return r

    branch = BranchStage(
        {
            "t": MapStage(checked, name="check") >> stage_for(Tumbling(10), ids),
            "s": window(
                session=4, time="ts", key="k", max_out_of_orderness=BOUND, aggregate=ids, name="w"
            ),
            "odd": FilterStage(lambda r: r["id"] % 2 == 1, name="odd"),
        },
        name="b",
    )
    pipeline = (
        Pipeline("law")
        .add_stage(MapStage(lambda r: r, name="before"))
        .add_stage(branch)
        .add_stage(FilterStage(lambda r: r["branch"] != "odd" or r["id"] % 3, name="after"))
    )
    run = run_pipeline_on(pipeline, events, batch_size=batch_size, max_dead_letters="100%")
    report = run.report
    report.check_conservation()
    stats = report.stage("b")
    assert stats.records_in == stats.absorbed == len(events)
    assert stats.born == stats.records_out
    assert report.stage("after").received == stats.records_out
    assert report.records_out + report.stage("after").records_filtered == stats.records_out
    s = report.stage("b/s/w")
    assert s.records_in == s.absorbed + s.records_dead
    letters = [d for d in run.dead_letters if d.stage == "b/s/w"]
    assert {d.record["id"] for d in letters} == late_ids | {-1}  # the late ones, the keyless
    late = {d.record["id"] for d in letters if d.error_type.endswith("LateRecordError")}
    assert late == late_ids
    assert s.late == len(late_ids)
    for arm in ("t", "s", "odd"):  # every branch saw every record
        first = report.branches["b"][arm][0]
        assert first.received == len(events)
    assert report.late == s.late + report.stage("b/t/w").late


# -- checkpoints: the branch's windows are in the cut -----------------------------------------


def branch_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute('SELECT branch, key, start, "end", value FROM out').fetchall()


def as_places(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
    got: dict[tuple[Any, ...], Any] = {}
    for branch, key, start, _end, value in rows:
        assert (branch, key, start) not in got, f"({branch}, {key}, {start}) written twice"
        got[(branch, key, start)] = value
    return got


def metrics(layout: str) -> list[Any]:
    """The stages of a run: a streaming branch of two windows, alone, after a keyed stage
    of the main line (then the branch's border is not the first gate), or before a window
    (then it is, and the window is a later gate)."""
    common = {"time": "ts", "key": "k", "max_out_of_orderness": 6}  # (none is late)
    branch = BranchStage(
        {
            "sum": window(tumbling=20, aggregate=Stats("v", "sum"), name="w", **common),
            "session": window(session=2, aggregate=_total, name="w", **common),
        },
        name="metrics",
    )
    if layout == "alone":
        return [branch]
    if layout == "after-keyed":
        return [KeyedStage(_first_time, key="id", name="dedupe"), branch]
    threes = window(count=3, key=_branch_and_key, aggregate=_values, name="threes")
    return [branch, threes, MapStage(_flat, name="flat")]


def _first_time(seen: bool | None, record: Event) -> tuple[bool, list[Event]]:
    return True, [] if seen else [record]


def _branch_and_key(result: Event) -> tuple[str, str]:
    return result["branch"], result["key"]


def _values(results: list[Event]) -> int:
    return sum(r["value"] for r in results)


def _flat(r: Event) -> Event:
    branch, key = r["key"]
    return {"branch": branch, "key": key, "start": r["start"], "end": r["end"], "value": r["value"]}


def _total(records: list[Event]) -> int:
    return sum(r["v"] for r in records)


async def run_metrics(
    layout: str,
    events: list[Event],
    sink: Any,
    opts: RunOptions,
    *,
    abort_at: int | None = None,
    stop_at: int | None = None,
) -> Any:
    """``slow -> stages`` into ``sink``; abort (as a crash) or stop the intake (as SIGTERM)
    once ``slow`` read event ``abort_at``/``stop_at``."""
    return await run_slowly(
        "branch-cp", metrics(layout), events, sink, opts, abort_at=abort_at, stop_at=stop_at
    )


@pytest.mark.parametrize("layout", ["alone", "after-keyed", "before-window"])
async def test_an_aborted_run_resumes_each_branch_window_exactly_once(
    tmp_path: Path, layout: str
) -> None:
    events = gappy_events(2_000)
    if layout == "after-keyed":  # records twice: the keyed stage lets the first through
        events = events[:900] + events[880:900] + events[900:]
    whole = await run_metrics(
        layout, events, SqliteSink(tmp_path / "whole.db", "out"), options(tmp_path / "a")
    )
    assert whole.status is RunStatus.COMPLETED
    want = as_places(branch_rows(tmp_path / "whole.db"))
    collected = Pipeline("c")
    for stage in metrics(layout):
        collected.add_stage(stage)
    data = (await collected.execute(events)).data
    assert {(r["branch"], r["key"], r["start"]): r["value"] for r in data} == want

    first = await run_metrics(
        layout,
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        abort_at=events[1_200]["id"],
    )
    assert first.status is RunStatus.ABORTED
    cp = first.checkpoint
    assert cp is not None
    assert cp.position > 0, "no checkpoint before the abort"
    for arm in ("sum", "session"):
        assert json.loads(cp.state[f"metrics/{arm}/w"])["state"], f"{arm}: no open window"
    if layout != "alone":
        assert len(cp.state) == 3
    committed = as_places(branch_rows(tmp_path / "out.db"))
    assert 0 < len(committed) < len(want)

    second = await run_metrics(
        layout,
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True, batch_size=13),
    )
    assert second.status is RunStatus.COMPLETED
    assert second.resume is not None
    assert second.resume.position == cp.position
    assert as_places(branch_rows(tmp_path / "out.db")) == want  # each once, same values
    assert second.checkpoint is not None
    assert second.checkpoint.finished
    second.check_conservation()


async def test_a_stopped_run_keeps_the_branches_open_windows_for_the_resume(
    tmp_path: Path,
) -> None:
    events = gappy_events(1_000)
    whole = await arun_pipeline_on(Pipeline("whole").add_stage(metrics("alone")[0]), events)
    want = {(r["branch"], r["key"], r["start"]): r["value"] for r in whole.outputs}
    first = await run_metrics(
        "alone",
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        stop_at=events[500]["id"],
    )
    assert first.status is RunStatus.INTERRUPTED
    assert first.stage("metrics/sum/w").open_windows > 0  # kept for the checkpoint
    cp = first.checkpoint
    assert cp is not None
    assert not cp.finished
    assert set(cp.state) == {"metrics/sum/w", "metrics/session/w"}
    first.check_conservation()
    second = await run_metrics(
        "alone", events, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True)
    )
    assert second.status is RunStatus.COMPLETED
    assert as_places(branch_rows(tmp_path / "out.db")) == want


async def test_a_resume_with_other_windows_in_a_branch_is_refused(tmp_path: Path) -> None:
    from conveyor.errors import CheckpointError

    events = gappy_events(600)
    await run_metrics(
        "alone",
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        stop_at=events[300]["id"],
    )
    other = BranchStage(
        {
            "sum": window(tumbling=30, time="ts", key="k", aggregate=Stats("v", "sum"), name="w"),
            "session": window(session=2, time="ts", key="k", aggregate=_total, name="w"),
        },
        name="metrics",
    )
    pipeline = Pipeline("branch-cp").add_stage(MapStage(lambda r: r, name="slow")).add_stage(other)
    with pytest.raises(CheckpointError, match=r"fingerprint|changed|different"):
        await pipeline.arun(
            events, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True)
        )


# -- failures inside the branch ----------------------------------------------------------------


def _fail_in_arm(**kwargs: Any) -> None:
    if kwargs["stage_name"] == "b/w/w":
        raise RuntimeError("hook bug")


@pytest.mark.timeout(30)
async def test_a_failing_arm_fails_the_run_instead_of_hanging() -> None:
    from conveyor import HookError

    branch = BranchStage(
        {"w": window(count=2, aggregate=len, name="w"), "m": MapStage(abs, name="m")}, name="b"
    )
    pipeline = Pipeline[Any, Any]("arms").add_stage(branch).add_hook("after_stage", _fail_in_arm)
    with pytest.raises(HookError, match="hook bug"):
        await asyncio.wait_for(
            pipeline.arun(
                range(500), MemorySink(), dead_letters="memory", batch_size=2, capacity=1
            ),
            10,
        )


def _interrupt_on_7(x: int) -> int:
    if x == 7:
        raise KeyboardInterrupt
    return x


def test_an_interrupted_arm_leaves_its_records_unfinished_and_the_law_holds() -> None:
    branch = BranchStage(
        {
            "m": MapStage(_interrupt_on_7, name="m"),
            "w": window(count=3, aggregate=len, name="w"),
        },
        name="b",
    )
    sink = MemorySink()
    with pytest.raises(KeyboardInterrupt) as caught:
        Pipeline[Any, Any]("arms").add_stage(branch).run(
            range(10), sink, dead_letters="memory", batch_size=4
        )
    report = caught.value.report  # type: ignore[attr-defined]
    assert report.stage("b").unfinished == 4  # the micro-batch 4..7 of arm m
    assert report.low_watermark == 4
    assert {r["branch"] for r in sink.records} == {"m", "w"}  # the rest flowed on
    report.check_conservation()
