"""Keyed state: KeyedStage (running totals, deduplication within a horizon, sessions with
on_expire, expiry by event and processing time), and the state of stateful stages in
checkpoints: a run aborted mid-way (as a crash: its SQLite sink rolls back what was not
committed) or stopped, then resumed, gives the uninterrupted run's results, each window's
result exactly once (sets of (key, window) compared); a changed window or a damaged state
is refused; the JSON form of the state."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from pydantic import BaseModel

from conveyor import (
    KeyedStage,
    MapStage,
    Pipeline,
    PipelineDefinitionError,
    RunOptions,
    Stats,
    window,
)
from conveyor.connectors import SqliteSink
from conveyor.core import _statecodec
from conveyor.core.checkpoint import SqliteCheckpointStore
from conveyor.core.result import RunStatus
from conveyor.errors import CheckpointError
from conveyor.runtime.runner import StreamRunner
from conveyor.testing import arun_pipeline_on, run_pipeline_on

Event = dict[str, Any]


# -- KeyedStage ---------------------------------------------------------------------------------


def running_total(total: int | None, r: Event) -> tuple[int, list[Event]]:
    total = (total or 0) + r["v"]
    return total, [{"id": r["id"], "k": r["k"], "total": total}]


def expected_totals(events: list[Event]) -> dict[int, int]:
    sums: dict[str, int] = {}
    out = {}
    for e in events:
        sums[e["k"]] = sums.get(e["k"], 0) + e["v"]
        out[e["id"]] = sums[e["k"]]
    return out


def events_of(n: int, keys: int = 5, seed: int = 1) -> list[Event]:
    rng = random.Random(seed)
    order = sorted(range(n), key=lambda i: (i + rng.randrange(3), i))  # disorder < 3 s
    return [{"id": i, "k": f"k{i % keys}", "ts": i, "v": rng.randrange(1, 10)} for i in order]


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_running_totals_per_key(batch_size: int) -> None:
    events = events_of(300)
    stage = KeyedStage(running_total, key="k", name="totals")
    run = run_pipeline_on(Pipeline("totals").add_stage(stage), events, batch_size=batch_size)
    assert {r["id"]: r["total"] for r in run.outputs} == expected_totals(events)
    stats = run.report.stage("totals")
    assert (stats.absorbed, stats.born, stats.state_keys) == (300, 300, 0)  # all expired
    collected = Pipeline("totals").add_stage(stage).execute_sync(events)
    assert {r["id"]: r["total"] for r in collected.data} == expected_totals(events)


def test_an_async_step_and_a_step_that_raises() -> None:
    async def step(seen: int | None, r: Event) -> tuple[int, list[Event]]:
        await asyncio.sleep(0)
        if r["v"] < 0:
            raise ValueError("negative")
        return (seen or 0) + 1, [r] if not seen else []

    events = [{"k": "a", "v": 1}, {"k": "a", "v": -1}, {"k": "a", "v": 2}, {"k": "b", "v": 3}]
    stage = KeyedStage(step, key="k", name="firsts")
    run = run_pipeline_on(Pipeline("f").add_stage(stage), events, max_dead_letters="100%")
    assert run.outputs == [events[0], events[3]]
    assert [d.record for d in run.dead_letters] == [events[1]]
    stats = run.report.stage("firsts")
    assert (stats.absorbed, stats.records_dead, stats.born) == (3, 1, 2)


def test_dedupe_by_key_within_an_event_time_horizon() -> None:
    def first(seen: bool | None, r: Event) -> tuple[bool, list[Event]]:
        return True, [] if seen else [r]

    events = [{"id": i, "ts": t} for i, t in [(1, 0), (1, 5), (2, 6), (1, 9), (1, 25), (2, 30)]]
    for batch_size in (1, 2, 100):  # the horizon does not depend on the micro-batches
        stage = KeyedStage(first, key="id", time="ts", ttl=10, name="dedupe")
        run = run_pipeline_on(Pipeline("d").add_stage(stage), events, batch_size=batch_size)
        assert [(r["id"], r["ts"]) for r in run.outputs] == [(1, 0), (2, 6), (1, 25), (2, 30)]


def test_sessions_of_a_key_with_on_expire() -> None:
    def add(session: list[int] | None, r: Event) -> tuple[list[int], list[Event]]:
        return [*(session or []), r["ts"]], []

    def close(user: str, session: list[int]) -> list[Event]:
        return [{"user": user, "first": session[0], "clicks": len(session)}]

    events = [{"u": "x", "ts": t} for t in (0, 3, 5, 20, 22)] + [{"u": "y", "ts": 23}]
    stage = KeyedStage(add, key="u", time="ts", ttl=10, on_expire=close, name="sessions")
    run = run_pipeline_on(Pipeline("s").add_stage(stage), events, batch_size=2)
    assert sorted(run.outputs, key=lambda r: (r["user"], r["first"])) == [
        {"user": "x", "first": 0, "clicks": 3},
        {"user": "x", "first": 20, "clicks": 2},
        {"user": "y", "first": 23, "clicks": 1},
    ]
    assert run.report.stage("sessions").state_keys == 0  # every key expired at the end


async def test_processing_time_ttl_expires_keys_while_the_stream_is_quiet() -> None:
    emitted: list[tuple[float, Event]] = []
    done = asyncio.Event()

    async def events() -> AsyncIterator[Event]:
        yield {"k": "a"}
        yield {"k": "b"}
        await asyncio.wait_for(done.wait(), 10)

    def count(n: int | None, r: Event) -> tuple[int, list[Event]]:
        return (n or 0) + 1, []

    def sink(batch: list[Event]) -> None:
        emitted.extend((time.monotonic(), r) for r in batch)
        if len(emitted) == 2:
            done.set()

    stage = KeyedStage(
        count, key="k", ttl=0.2, on_expire=lambda k, n: [{"k": k, "n": n}], name="idle"
    )
    t0 = time.monotonic()
    await asyncio.wait_for(
        Pipeline("p").add_stage(stage).arun(events(), sink, dead_letters="memory"), 15
    )
    assert sorted(r["k"] for _, r in emitted) == ["a", "b"]
    assert max(t for t, _ in emitted) - t0 < 0.2 + 2.0


def test_keyed_stage_definitions_are_checked() -> None:
    with pytest.raises(PipelineDefinitionError, match="callable step"):
        KeyedStage("nope", key="k")  # type: ignore[call-overload]
    with pytest.raises(PipelineDefinitionError, match="needs time="):
        KeyedStage(running_total, key="k", idle_timeout=1)
    with pytest.raises(PipelineDefinitionError, match="ttl must be a duration"):
        KeyedStage(running_total, key="k", ttl="soon")
    bad = KeyedStage(lambda s, r: r, key="k", name="bad")
    run = run_pipeline_on(Pipeline("b").add_stage(bad), [{"k": 1}], max_dead_letters="100%")
    assert "return a pair (new_state, outputs)" in run.dead_letters[0].message


# -- checkpoints and resume ---------------------------------------------------------------------


def out_rows(db: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute('SELECT key, start, "end", value FROM out').fetchall()


def as_windows(rows: list[tuple[Any, ...]]) -> dict[tuple[Any, Any], Any]:
    got: dict[tuple[Any, Any], Any] = {}
    for key, start, _end, value in rows:
        assert (key, start) not in got, f"window ({key}, {start}) written twice"
        got[(key, start)] = value
    return got


def stages_for(kind: str) -> Any:
    common = {"time": "ts", "key": "k", "max_out_of_orderness": 3, "name": "w"}
    if kind == "records":
        return window(tumbling=20, aggregate=lambda rs: sum(r["v"] for r in rs), **common)
    if kind == "combine":
        return window(tumbling=20, aggregate=_total, combine=_plus, **common)
    if kind == "stats":
        return window(tumbling=20, aggregate=Stats("v", "sum"), **common)
    if kind == "sliding":
        return window(sliding=30, slide=10, aggregate=_total, **common)
    if kind == "session":
        return window(session=2, aggregate=_total, **common)
    return window(count=25, key="k", aggregate=_total, name="w")


def _total(records: list[Event]) -> int:
    return sum(r["v"] for r in records)


def _plus(a: int, b: int) -> int:
    return a + b


def gappy_events(n: int) -> list[Event]:
    """Like :func:`events_of`, with gaps so that session windows close now and then."""
    events = events_of(n, keys=4, seed=7)
    for e in events:
        e["ts"] += 3 * (e["id"] // 40)
    return events


def options(tmp: Path, **changes: Any) -> RunOptions:
    base = RunOptions(
        dead_letters=tmp / "dl.db",
        checkpoint=tmp / "cp.db",
        checkpoint_every=0.002,
        batch_size=20,
        max_dead_letters="100%",
    )
    return base.merged(**changes)


async def run_windows(
    stage: Any,
    events: list[Event],
    sink: Any,
    opts: RunOptions,
    *,
    abort_at: int | None = None,
    stop_at: int | None = None,
) -> Any:
    """A run of ``slow -> stage`` into ``sink``; abort (as a crash would) or stop the
    intake (as SIGTERM does) once event ``abort_at``/``stop_at`` was read by ``slow``."""
    return await run_slowly(
        "keyed-cp", [stage], events, sink, opts, abort_at=abort_at, stop_at=stop_at
    )


async def run_slowly(
    name: str,
    stages: list[Any],
    events: list[Event],
    sink: Any,
    opts: RunOptions,
    *,
    abort_at: int | None = None,
    stop_at: int | None = None,
) -> Any:
    """A run of pipeline ``name``, ``slow -> stages``, into ``sink``; abort or stop the
    intake once event ``abort_at``/``stop_at`` was read by ``slow``."""
    box: list[StreamRunner] = []

    def slow(record: Event) -> Event:
        if record["id"] % 10 == 0:
            time.sleep(0.0005)  # so that checkpoints come between micro-batches
        if record["id"] == abort_at:
            box[0].abort()
        if record["id"] == stop_at:
            box[0].stop_intake()
        return record

    pipeline = Pipeline(name).add_stage(MapStage(slow, name="slow"))
    for stage in stages:
        pipeline.add_stage(stage)
    runner = StreamRunner(pipeline.spec(), sink, opts)
    box.append(runner)
    return await runner.run(events)


@pytest.mark.parametrize("kind", ["records", "combine", "stats", "sliding", "session", "count"])
async def test_an_aborted_run_resumes_with_its_windows_exactly_once(
    tmp_path: Path, kind: str
) -> None:
    events = gappy_events(2_000)
    whole = await run_windows(
        stages_for(kind),
        events,
        SqliteSink(tmp_path / "whole.db", "out"),
        options(tmp_path / "a", checkpoint=None),
    )
    assert whole.status is RunStatus.COMPLETED
    want = as_windows(out_rows(tmp_path / "whole.db"))

    first = await run_windows(
        stages_for(kind),
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        abort_at=events[1_200]["id"],
    )
    assert first.status is RunStatus.ABORTED
    cp = first.checkpoint
    assert cp is not None, "no checkpoint before the abort"
    assert cp.position > 0, "no checkpoint before the abort"
    state = json.loads(cp.state["w"])
    assert state["kind"] in ("time", "session", "count")
    assert state["state"], "the checkpoint holds no open window"
    committed = as_windows(out_rows(tmp_path / "out.db"))
    assert len(committed) < len(want)

    second = await run_windows(
        stages_for(kind),
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True, batch_size=13),
    )
    assert second.status is RunStatus.COMPLETED
    assert second.resume is not None
    assert second.resume.position == cp.position
    assert as_windows(out_rows(tmp_path / "out.db")) == want  # every window once, same values
    assert second.checkpoint is not None
    assert second.checkpoint.finished


async def test_a_stopped_run_keeps_its_open_windows_for_the_resume(tmp_path: Path) -> None:
    events = gappy_events(1_000)
    whole = await arun_pipeline_on(Pipeline("whole").add_stage(stages_for("stats")), events)
    want = {(r["key"], r["start"]): r["value"] for r in whole.outputs}

    first = await run_windows(
        stages_for("stats"),
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        stop_at=events[500]["id"],
    )
    assert first.status is RunStatus.INTERRUPTED
    assert first.stage("w").open_windows > 0  # not closed early: they go into the checkpoint
    cp = first.checkpoint
    assert cp is not None
    assert not cp.finished
    assert json.loads(cp.state["w"])["state"]
    second = await run_windows(
        stages_for("stats"),
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True),
    )
    assert second.status is RunStatus.COMPLETED
    assert as_windows(out_rows(tmp_path / "out.db")) == want


async def test_three_aborts_of_running_totals_count_nothing_twice(tmp_path: Path) -> None:
    events = events_of(1_500, keys=7)
    stage = KeyedStage(running_total, key="k", name="totals")
    for at in (300, 700, 1_100):
        report = await run_windows(
            stage,
            events,
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, resume=True) if at != 300 else options(tmp_path),
            abort_at=events[at]["id"],
        )
        assert report.status is RunStatus.ABORTED
    last = await run_windows(
        stage, events, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True)
    )
    assert last.status is RunStatus.COMPLETED
    with sqlite3.connect(tmp_path / "out.db") as conn:
        rows = conn.execute("SELECT id, total FROM out").fetchall()
    assert len(rows) == len({i for i, _ in rows}) == 1_500
    assert dict(rows) == expected_totals(events)


async def test_a_resume_with_other_windows_is_refused(tmp_path: Path) -> None:
    events = gappy_events(600)
    await run_windows(
        stages_for("stats"),
        events,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        abort_at=events[400]["id"],
    )
    other = window(tumbling=30, time="ts", key="k", aggregate=Stats("v", "sum"), name="w")
    with pytest.raises(CheckpointError, match="different stage list"):
        await run_windows(
            other, events, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True)
        )


async def test_a_damaged_state_is_refused(tmp_path: Path) -> None:
    events = gappy_events(600)
    stage = stages_for("records")
    opts = options(tmp_path, checkpoint=tmp_path / "cp.db")
    await run_windows(stage, events, lambda batch: None, opts, abort_at=events[400]["id"])
    store = SqliteCheckpointStore(tmp_path / "cp.db")
    cp = store.load("keyed-cp")
    assert cp is not None
    assert "w" in cp.state
    store.save(dataclasses.replace(cp, state={"w": '{"kind": "session"}'}))
    store.close()
    with pytest.raises(CheckpointError, match=r"state of stage 'w'.*cannot be restored"):
        await run_windows(stage, events, lambda batch: None, opts.merged(resume=True))


# -- the JSON form of the state -------------------------------------------------------------


class Colour(Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: float


class Reading(BaseModel):
    sensor: str
    at: datetime


def test_state_values_round_trip_as_json() -> None:
    value = {
        "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        "day": date(2026, 1, 2),
        "span": timedelta(seconds=90),
        "money": Decimal("1.10"),
        "id": UUID(int=7),
        "raw": b"\x00\xff",
        "seen": {("a", 1), ("b", 2)},
        "frozen": frozenset({1}),
        "colour": Colour.RED,
        "point": Point(1, 2.5),
        "reading": Reading(sensor="s", at=datetime(2026, 1, 1, tzinfo=UTC)),
        "pair": (1, 2),
    }
    text = _statecodec.dumps(value)
    back = _statecodec.loads(text)
    assert back == {**value, "pair": [1, 2]}  # (a tuple comes back as a list)
    assert _statecodec.hashable(json.loads(json.dumps(("k", 1)))) == ("k", 1)
    with pytest.raises(TypeError, match="cannot be kept in a checkpoint"):
        _statecodec.dumps({"lock": object()})


def test_a_state_naming_a_class_of_another_kind_is_not_loaded() -> None:
    text = json.dumps({"$conveyor": "dataclass", "class": "os:system", "v": {}})
    with pytest.raises(ValueError, match="not a dataclass class"):
        _statecodec.loads(text)


def test_state_with_objects_resumes(tmp_path: Path) -> None:
    """A window holding Pydantic records snapshots and restores them exactly."""
    stage = window(tumbling=10, time="at", key="sensor", aggregate=len, name="w")
    operator = stage.operator()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    records = [Reading(sensor="s", at=t0 + timedelta(seconds=s)) for s in (1, 2)]
    asyncio.run(operator.feed(records))
    again = stage.operator()
    again.restore(operator.snapshot())
    assert again.store == operator.store
    assert again.open_windows == 1
    assert again.held == 2
    fed = asyncio.run(again.finish())
    assert fed.outputs == [{"key": "s", "start": t0, "end": t0 + timedelta(seconds=10), "value": 2}]
