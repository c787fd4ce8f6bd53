"""Windows on a stream: tumbling, sliding, session and count windows against a plain
group-by of the same events (Hypothesis: random keys, times, bounded disorder, micro-batch
sizes, capacities), late records in the dead-letter queue with their reason (id sets), the
conservation law of a stateful stage, an idle source closing its last windows, and the
edges (datetimes, bad records, failing aggregates, options a window refuses)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import (
    BatchStage,
    Count,
    KeyedStage,
    LateRecordError,
    MapStage,
    Pipeline,
    PipelineDefinitionError,
    Session,
    Sliding,
    StageKind,
    StageOptions,
    Stats,
    Tumbling,
    WindowStage,
    window,
)
from conveyor.core.kinds import stage_kind
from conveyor.runtime import ReplayRefused, replay_dead_letters
from conveyor.testing import MemorySink, arun_pipeline_on, run_pipeline_on

Event = dict[str, Any]
BOUND = 3  # max_out_of_orderness of the generated streams (event-time seconds)


def ids(records: list[Event]) -> list[int]:
    """The aggregate the equivalence tests use: which events a window holds."""
    return sorted(r["id"] for r in records)


def total(records: list[Event]) -> int:
    return sum(r["v"] for r in records)


def plus(a: int, b: int) -> int:
    return a + b


# -- the events ------------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn, late: bool = False) -> tuple[list[Event], set[int]]:
    """Events ``{"id", "k", "ts", "v"}`` in arrival order, each less than BOUND seconds
    older than the newest before it (times drawn, then shuffled within the bound); with
    ``late``, some events far behind the watermark are inserted (their ids returned)."""
    n = draw(st.integers(0, 120))
    keys = draw(st.sampled_from([["a"], ["a", "b"], ["a", "b", "c", "d"]]))
    times = sorted(draw(st.lists(st.integers(0, 200), min_size=n, max_size=n)))
    jitter = draw(st.lists(st.integers(0, BOUND - 1), min_size=n, max_size=n))
    order = sorted(range(n), key=lambda i: (times[i] + jitter[i], i))  # shuffled within BOUND
    events = [
        {"id": i, "k": draw(st.sampled_from(keys)), "ts": times[i], "v": draw(st.integers(-5, 9))}
        for i in order
    ]
    late_ids: set[int] = set()
    if late and events:
        for at in sorted(draw(st.lists(st.integers(1, len(events)), max_size=6))):
            newest = max(e["ts"] for e in events[:at])
            ts = newest - BOUND - 40  # behind every window an on-time event may still join
            late_ids.add(len(events) + len(late_ids) + 1000)
            events.insert(at, {"id": max(late_ids), "k": keys[0], "ts": ts, "v": 1})
    return events, late_ids


def reference(spec: Any, events: list[Event]) -> dict[tuple[Any, Any, Any], list[int]]:
    """A plain group-by: (key, start, end) -> sorted ids, per window kind."""
    out: dict[tuple[Any, Any, Any], list[int]] = {}
    if isinstance(spec, Tumbling | Sliding):
        slide = spec.slide if isinstance(spec, Sliding) else spec.size
        for e in events:
            start = e["ts"] - e["ts"] % slide
            while start > e["ts"] - spec.size:
                out.setdefault((e["k"], start, start + spec.size), []).append(e["id"])
                start -= slide
    elif isinstance(spec, Session):
        by_key: dict[str, list[Event]] = {}
        for e in events:
            by_key.setdefault(e["k"], []).append(e)
        for key, group in by_key.items():
            group.sort(key=lambda e: e["ts"])
            session = [group[0]]
            for e in group[1:]:
                if e["ts"] - session[-1]["ts"] >= spec.gap:
                    out[(key, session[0]["ts"], session[-1]["ts"] + spec.gap)] = [
                        x["id"] for x in session
                    ]
                    session = []
                session.append(e)
            out[(key, session[0]["ts"], session[-1]["ts"] + spec.gap)] = [x["id"] for x in session]
    else:
        counted: dict[str, list[int]] = {}
        for e in events:
            counted.setdefault(e["k"], []).append(e["id"])
        for key, seq in counted.items():
            for at in range(0, len(seq), spec.size):
                part = seq[at : at + spec.size]
                out[(key, at, at + len(part))] = part
    return {k: sorted(v) for k, v in out.items()}


def results(outputs: list[Event]) -> dict[tuple[Any, Any, Any], Any]:
    got: dict[tuple[Any, Any, Any], Any] = {}
    for r in outputs:
        place = (r["key"], r["start"], r["end"])
        assert place not in got, f"window {place} emitted twice"
        got[place] = r["value"]
    return got


SPECS = st.sampled_from(
    [Tumbling(10), Tumbling(7), Sliding(10, 5), Sliding(9, 3), Session(4), Session(11), Count(3)]
)


def stage_for(spec: Any, aggregate: Callable[..., Any] = ids, **kw: Any) -> WindowStage[Any]:
    if isinstance(spec, Count):
        return WindowStage(spec, aggregate, key="k", name="w", **kw)
    return WindowStage(
        spec, aggregate, time="ts", key="k", max_out_of_orderness=BOUND, name="w", **kw
    )


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(streams(), SPECS, st.integers(1, 40), st.integers(1, 4))
def test_windowed_results_equal_a_group_by(
    stream: tuple[list[Event], set[int]], spec: Any, batch_size: int, capacity: int
) -> None:
    events, _ = stream
    run = run_pipeline_on(
        Pipeline("windows").add_stage(stage_for(spec)),
        events,
        batch_size=batch_size,
        capacity=capacity,
    )
    assert results(run.outputs) == reference(spec, events)
    stats = run.report.stage("w")
    assert stats.kind is StageKind.STATEFUL
    assert (stats.absorbed, stats.late, stats.records_dead) == (len(events), 0, 0)
    assert stats.born == stats.records_out == len(run.outputs)
    assert (stats.open_windows, stats.state_records) == (0, 0)
    run.report.check_conservation()
    collected = Pipeline("windows").add_stage(stage_for(spec)).execute_sync(events)
    assert collected.success
    assert results(collected.data) == reference(spec, events)


@SETTINGS
@given(streams(), SPECS, st.integers(1, 40), st.sampled_from(["combine", "stats", "async"]))
def test_partial_aggregates_equal_the_records_sums(
    stream: tuple[list[Event], set[int]], spec: Any, batch_size: int, how: str
) -> None:
    events, _ = stream
    if how == "combine":
        stage = stage_for(spec, total, combine=plus)
    elif how == "stats":
        stage = stage_for(spec, Stats("v", "count", "sum", "min", "max"))
    else:

        async def slow_total(records: list[Event]) -> int:
            await asyncio.sleep(0)
            return total(records)

        stage = stage_for(spec, slow_total)
    run = run_pipeline_on(Pipeline("partial").add_stage(stage), events, batch_size=batch_size)
    by_id = {e["id"]: e for e in events}
    want = {}
    for place, members in reference(spec, events).items():
        values = [by_id[i]["v"] for i in members]
        if how == "stats":
            want[place] = {
                "count": len(values),
                "sum": sum(values),
                "min": min(values),
                "max": max(values),
            }
        else:
            want[place] = sum(values)
    assert results(run.outputs) == want
    assert run.report.stage(stage.name).state_records == 0


@SETTINGS
@given(
    streams(late=True),
    st.sampled_from([Tumbling(10), Sliding(10, 5), Session(4)]),
    st.integers(1, 30),
)
def test_late_events_all_go_to_the_dead_letter_queue_with_their_reason(
    stream: tuple[list[Event], set[int]], spec: Any, batch_size: int
) -> None:
    events, late_ids = stream
    run = run_pipeline_on(
        Pipeline("late").add_stage(stage_for(spec)),
        events,
        batch_size=batch_size,
        max_dead_letters="100%",
    )
    letters = run.dead_letters
    assert {d.record["id"] for d in letters} == late_ids
    for d in letters:
        assert d.stage == "w"
        assert d.error_type == "conveyor.errors.LateRecordError"
        assert "late record" in d.message
        assert f"event time {d.record['ts']}" in d.message
        assert "watermark" in d.message
    on_time = [e for e in events if e["id"] not in late_ids]
    assert results(run.outputs) == reference(spec, on_time)
    stats = run.report.stage("w")
    assert stats.late == run.report.late == len(late_ids)
    assert stats.records_in == stats.absorbed + stats.late  # in = absorbed + late letters
    assert stats.absorbed == len(on_time)


def test_a_late_record_names_its_window_watermark_and_event_time() -> None:
    events = [{"id": 0, "k": "a", "ts": 30, "v": 1}, {"id": 1, "k": "a", "ts": 5, "v": 1}]
    stage = window(tumbling=10, time="ts", key="k", allowed_lateness=2, aggregate=len)
    run = run_pipeline_on(Pipeline("one").add_stage(stage), events, max_dead_letters="100%")
    (letter,) = run.dead_letters
    error = letter.message
    assert "window [0, 10)" in error
    assert "watermark 30" in error
    assert "event time 5" in error
    assert "allowed lateness 2" in error
    assert run.outputs == [{"key": "a", "start": 30, "end": 40, "value": 1}]


def test_allowed_lateness_keeps_a_window_open_longer() -> None:
    events = [{"k": "a", "ts": 1}, {"k": "a", "ts": 11}, {"k": "a", "ts": 2}, {"k": "a", "ts": 13}]
    strict = window(tumbling=10, time="ts", key="k", aggregate=len, name="strict")
    lenient = window(tumbling=10, time="ts", key="k", aggregate=len, allowed_lateness=2)
    run = run_pipeline_on(Pipeline("s").add_stage(strict), events, max_dead_letters="100%")
    assert [d.record["ts"] for d in run.dead_letters] == [2]
    run = run_pipeline_on(Pipeline("l").add_stage(lenient), events)
    assert results(run.outputs) == {("a", 0, 10): 2, ("a", 10, 20): 2}


def test_results_at_a_watermark_come_while_the_stream_flows() -> None:
    """Windows are emitted as the watermark passes them, not at the end."""
    seen: list[tuple[int, Any]] = []
    reading = [0]

    def source() -> Any:
        for i in range(100):
            reading[0] = i
            yield {"k": "a", "ts": i}

    def note(result: Event) -> Event:
        seen.append((reading[0], result["start"]))
        return result

    stage = window(tumbling=10, time="ts", key="k", aggregate=len)
    pipeline = Pipeline("flowing").add_stage(stage).add_stage(MapStage(note, name="note"))
    run_pipeline_on(pipeline, source(), batch_size=5)
    assert len(seen) == 10
    assert seen[0][0] < 30, seen  # the first window left long before the end of the input


# -- an idle source ---------------------------------------------------------------------------


async def test_an_idle_source_closes_its_last_windows_within_the_idle_timeout() -> None:
    done = asyncio.Event()
    arrived: dict[Any, float] = {}

    async def events() -> AsyncIterator[Event]:
        for i in range(25):
            yield {"k": "ab"[i % 2], "ts": i}
        await asyncio.wait_for(done.wait(), 10)  # idle, not ended: bounded by the test

    sink = MemorySink()

    def write(batch: list[Event]) -> None:
        for r in batch:
            arrived[(r["key"], r["start"])] = time.monotonic()
        sink.records.extend(batch)
        if ("a", 20) in arrived and ("b", 20) in arrived:
            done.set()

    stage = window(tumbling=10, time="ts", key="k", idle_timeout=0.3, aggregate=len)
    t0 = time.monotonic()
    report = await asyncio.wait_for(
        Pipeline("idle").add_stage(stage).arun(events(), write, dead_letters="memory"), 15
    )
    assert results(sink.records) == {
        ("a", 0, 10): 5,
        ("b", 0, 10): 5,
        ("a", 10, 20): 5,
        ("b", 10, 20): 5,
        ("a", 20, 30): 3,
        ("b", 20, 30): 2,
    }
    last = max(arrived.values()) - t0
    assert last < 0.3 + 2.0, f"the last windows closed {last:.2f}s after the start"
    assert report.status.value == "completed"


async def test_without_idle_timeout_an_idle_source_keeps_its_windows_open() -> None:
    """Only the end of the input closes them (here: the source failing after 0.4 s)."""

    async def events() -> AsyncIterator[Event]:
        yield {"k": "a", "ts": 1}
        await asyncio.sleep(0.4)
        raise OSError("the feed went away")

    arrived: list[float] = []
    stage = window(tumbling=10, time="ts", key="k", aggregate=len)
    t0 = time.monotonic()
    with pytest.raises(OSError, match="went away"):
        await (
            Pipeline("quiet")
            .add_stage(stage)
            .arun(
                events(), lambda batch: arrived.append(time.monotonic() - t0), dead_letters="memory"
            )
        )
    assert len(arrived) == 1
    assert arrived[0] >= 0.4


# -- the edges ----------------------------------------------------------------------------------


def test_datetime_event_times_give_datetime_windows() -> None:
    t0 = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    events = [{"k": "s", "at": t0 + timedelta(seconds=s)} for s in (0, 20, 40, 70)]
    stage = window(tumbling="1m", time="at", key="k", aggregate=len)
    run = run_pipeline_on(Pipeline("dt").add_stage(stage), events)
    minute = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    assert run.outputs == [
        {"key": "s", "start": minute, "end": minute + timedelta(minutes=1), "value": 2},
        {
            "key": "s",
            "start": minute + timedelta(minutes=1),
            "end": minute + timedelta(minutes=2),
            "value": 2,
        },
    ]
    iso = [{"k": "s", "at": e["at"].isoformat()} for e in events]
    assert run_pipeline_on(Pipeline("iso").add_stage(stage), iso).outputs == run.outputs


def test_records_without_key_or_time_are_dead_letters_not_absorbed() -> None:
    events: list[Any] = [
        {"k": "a", "ts": 1},
        {"ts": 2},
        {"k": "a", "ts": "yesterday"},
        {"k": ["unhashable"], "ts": 3},
        {"k": "a", "ts": float("nan")},
        {"k": "a", "ts": float("inf")},
        {"k": "a", "ts": 4},
    ]
    stage = window(tumbling=10, time="ts", key="k", aggregate=len, name="w")
    run = run_pipeline_on(Pipeline("bad").add_stage(stage), events, max_dead_letters="100%")
    assert run.outputs == [{"key": "a", "start": 0, "end": 10, "value": 2}]
    assert len(run.dead_letters) == 5
    assert "no key field 'k'" in run.dead_letters[0].message
    stats = run.report.stage("w")
    assert (stats.absorbed, stats.records_dead, stats.late) == (2, 5, 0)


def test_objects_are_read_by_attribute() -> None:
    class Reading:
        def __init__(self, sensor: str, ts: int) -> None:
            self.sensor, self.ts = sensor, ts

    stage = window(tumbling=5, time="ts", key="sensor", aggregate=len)
    run = run_pipeline_on(Pipeline("obj").add_stage(stage), [Reading("x", 1), Reading("x", 7)])
    assert results(run.outputs) == {("x", 0, 5): 1, ("x", 5, 10): 1}


def test_no_key_is_one_window_sequence_and_functions_read_key_and_time() -> None:
    events = [{"t": i, "v": i} for i in range(10)]
    glob = window(tumbling=5, time="t", aggregate=len, name="g")
    run = run_pipeline_on(Pipeline("g").add_stage(glob), events)
    assert results(run.outputs) == {(None, 0, 5): 5, (None, 5, 10): 5}
    fn = window(
        tumbling=5, time=lambda r: r["t"] * 2, key=lambda r: r["v"] % 2, aggregate=len, name="f"
    )
    run = run_pipeline_on(Pipeline("f").add_stage(fn), events)
    assert sum(r["value"] for r in run.outputs) == 10
    assert {r["key"] for r in run.outputs} == {0, 1}


def test_a_failing_aggregate_is_a_dead_letter_of_its_window() -> None:
    def picky(records: list[Event]) -> int:
        if any(r["v"] < 0 for r in records):
            raise ValueError("negative value")
        return len(records)

    events = [
        {"k": "a", "ts": 1, "v": 1},
        {"k": "a", "ts": 12, "v": -1},
        {"k": "a", "ts": 25, "v": 2},
    ]
    stage = window(tumbling=10, time="ts", key="k", aggregate=picky, name="w")
    run = run_pipeline_on(Pipeline("fail").add_stage(stage), events, max_dead_letters="100%")
    assert results(run.outputs) == {("a", 0, 10): 1, ("a", 20, 30): 1}
    (letter,) = run.dead_letters
    assert letter.record == {"key": "a", "start": 10, "end": 20, "records": [events[1]]}
    assert "negative value" in letter.message
    stats = run.report.stage("w")
    assert (stats.absorbed, stats.born, stats.records_out, stats.records_dead) == (3, 3, 2, 1)
    run.report.check_conservation()
    # collection mode is fail-fast, unless continue_on_error
    assert not Pipeline("c").add_stage(stage).execute_sync(events).success
    lenient = window(tumbling=10, time="ts", key="k", aggregate=picky, continue_on_error=True)
    outcome = Pipeline("c").add_stage(lenient).execute_sync(events)
    assert outcome.success
    assert len(outcome.data) == 2
    assert len(outcome.context.errors) == 1


def test_stats_of_a_value_that_is_no_number_is_a_dead_letter() -> None:
    events = [
        {"k": "a", "ts": 1, "v": 1},
        {"k": "a", "ts": 2, "v": "x"},
        {"k": "a", "ts": 3, "v": 5},
    ]
    stage = window(tumbling=10, time="ts", key="k", aggregate=Stats("v", "sum", "max"), name="w")
    run = run_pipeline_on(Pipeline("st").add_stage(stage), events, max_dead_letters="100%")
    assert run.outputs == [{"key": "a", "start": 0, "end": 10, "value": {"sum": 6, "max": 5}}]
    (letter,) = run.dead_letters
    assert letter.record["records"] == [events[1]]


def test_a_window_is_a_stateful_stage_and_refuses_options_it_cannot_honour() -> None:
    stage = window(tumbling=10, time="ts", key="k", aggregate=len, name="w")
    assert stage_kind(stage) is StageKind.STATEFUL
    assert stage_kind(KeyedStage(lambda s, r: (s, [r]), key="k")) is StageKind.STATEFUL
    for options in (
        StageOptions(concurrency=2),
        StageOptions(executor="thread"),
        StageOptions(timeout=1.0, executor="thread"),
    ):
        pipeline = Pipeline("opts").add_stage(stage, options=options)
        with pytest.raises(PipelineDefinitionError, match="keeps keyed state"):
            run_pipeline_on(pipeline, [])
    grouped = Pipeline("grouped").add_stage(BatchStage(2)).add_stage(stage)
    with pytest.raises(PipelineDefinitionError, match="BatchStage"):
        run_pipeline_on(grouped, [])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aggregate": len, "time": "ts"}, "exactly one of"),
        ({"aggregate": len, "tumbling": 1, "session": 2, "time": "ts"}, "exactly one of"),
        ({"aggregate": len, "tumbling": 10}, "need time="),
        ({"aggregate": len, "sliding": 5, "time": "ts"}, "needs slide="),
        ({"aggregate": len, "sliding": 5, "slide": 10, "time": "ts"}, "must not exceed"),
        ({"aggregate": len, "count": 3, "time": "ts"}, "count windows close by count"),
        ({"aggregate": len, "count": 0}, "size >= 1"),
        ({"aggregate": len, "tumbling": "ten", "time": "ts"}, "must be a duration"),
        ({"aggregate": len, "tumbling": -1, "time": "ts"}, "must be a duration"),
        ({"aggregate": 3, "tumbling": 1, "time": "ts"}, "callable aggregate"),
        ({"aggregate": Stats("v"), "combine": plus, "tumbling": 1, "time": "ts"}, "combines"),
    ],
)
def test_window_definitions_are_checked_when_built(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(PipelineDefinitionError, match=message):
        window(**kwargs)


def test_durations_and_names() -> None:
    stage = window(sliding="1m", slide=timedelta(seconds=15), time="ts", aggregate=len)
    assert stage.windowing == Sliding(60, 15)
    assert stage.name == "window(sliding 60s every 15s, len)"
    assert window(session="250ms", time="ts", aggregate=len).windowing == Session(0.25)
    assert Stats("v", "mean")([{"v": 1}, {"v": 2}]) == 1.5


async def test_dead_letters_before_a_window_cannot_be_replayed_into_it() -> None:
    from conveyor import MemoryDeadLetterStore

    def check(r: Event) -> Event:
        if r["ts"] == 3:
            raise ValueError("three")
        return r

    pipeline = (
        Pipeline("replay")
        .add_stage(MapStage(check, name="check"))
        .add_stage(window(tumbling=10, time="ts", key="k", aggregate=len, name="w"))
    )
    store = MemoryDeadLetterStore()
    await arun_pipeline_on(pipeline, [{"k": "a", "ts": t} for t in range(5)], dead_letters=store)
    with pytest.raises(ReplayRefused, match="'w' after it is a stateful stage"):
        await replay_dead_letters(pipeline, store, [].extend)


def test_live_stats_show_open_windows_state_and_watermark() -> None:
    snapshots: list[tuple[int, int, Any]] = []
    stage = window(tumbling=100, time="ts", key="k", aggregate=len, name="w")

    async def go() -> None:
        from conveyor.runtime.runner import StreamRunner

        runner: StreamRunner

        def watch(record: Event) -> Event:
            stats = next(s for s in runner.live_stats() if s.name == "w")
            snapshots.append((stats.open_windows, stats.state_records, stats.watermark))
            return record

        spec = Pipeline("live").add_stage(MapStage(watch, name="watch")).add_stage(stage).spec()
        from conveyor import RunOptions

        runner = StreamRunner(spec, MemorySink(), RunOptions(dead_letters="memory", batch_size=10))
        await runner.run([{"k": str(i % 3), "ts": i} for i in range(50)])

    asyncio.run(go())
    assert snapshots[-1][0] == 3  # three keys, one open window each
    assert snapshots[-1][1] == 40  # the last micro-batch is not taken yet
    assert snapshots[-1][2] == 39.0
    with pytest.raises(LateRecordError.__mro__[1]):  # (a ConveyorError: the tree holds)
        raise LateRecordError("w", "a", (0, 1), 5, 0, 0.0)


@st.composite
def float_streams(draw: st.DrawFn) -> list[Event]:
    """Float event times with bounded disorder, some far behind (late), some unreadable
    (missing, a Decimal). (Values that are no numbers are left out: the fast path makes a
    dead letter of that record alone, the general path of its window's micro-batch.)"""
    from decimal import Decimal

    n = draw(st.integers(0, 120))
    clock, events = 0.0, []
    for i in range(n):
        clock += draw(st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.7]))
        ts: Any = clock - draw(st.sampled_from([0.0, 0.0, 0.4, 1.9, 9.0]))  # 9.0: late
        odd = draw(st.integers(0, 40))
        if odd == 0:
            ts = None
        elif odd == 1:
            ts = Decimal("1.5")
        value = draw(st.sampled_from([1, 2.5, -3]))  # (a value that is no number: see below)
        event = {"id": i, "k": draw(st.sampled_from(["a", "b", "c"])), "ts": ts, "v": value}
        if ts is None:
            del event["ts"]
        events.append(event)
    return events


@SETTINGS
@given(float_streams(), st.sampled_from([10, 3, 1, 0.5, 0.1, 2.5]), st.integers(1, 30))
def test_a_tumbling_stats_window_by_field_equals_the_general_path(
    events: list[Event], size: float, batch_size: int
) -> None:
    """A key field takes the fast path of tumbling Stats windows (the window of the newest
    event time kept at hand); a key function the general one: results, dead letters and
    their reasons are the same."""

    def run(key: Any) -> tuple[dict[Any, Any], list[tuple[Any, str, str]]]:
        stage = window(
            tumbling=size,
            time="ts",
            key=key,
            max_out_of_orderness=2,
            aggregate=Stats("v", "count", "sum", "min", "max"),
            name="w",
        )
        done = run_pipeline_on(
            Pipeline("fast").add_stage(stage),
            events,
            batch_size=batch_size,
            max_dead_letters="100%",
        )
        letters = sorted(
            (str(d.record.get("id")), d.error_type, d.message) for d in done.dead_letters
        )
        return results(done.outputs), letters

    assert run("k") == run(lambda r: r["k"])
