"""Checkpoints and resume in one process: an aborted run (like a crash, its sink rolls back
what was not committed) resumed exactly once; refusal of a plain run over an unfinished
checkpoint, of another pipeline's checkpoint, of damage; seekable and async sources;
out-of-order completion; groups across source batches; a stop with a final checkpoint."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import BatchStage, FlattenStage, MapStage, Pipeline, RunOptions, StageOptions
from conveyor.connectors import SqliteSink
from conveyor.core.checkpoint import Checkpoint, SqliteCheckpointStore
from conveyor.core.result import RunStatus
from conveyor.dlq import open_dead_letter_store
from conveyor.errors import CheckpointError, ResumeRequired, SinkUnavailableError
from conveyor.runtime.runner import StreamRunner

N = 5_000


def failing(record: dict[str, Any]) -> dict[str, Any]:
    if record["id"] % 97 == 13:
        raise ValueError(f"bad record {record['id']}")
    return record


def ids(n: int = N) -> list[dict[str, Any]]:
    return [{"id": i, "v": i * 0.5} for i in range(n)]


def pipeline(name: str = "cp", *extra: Any) -> Pipeline[Any, Any]:
    p = Pipeline[Any, Any](name).add_stage(MapStage(failing, name="check"))
    for stage in extra:
        p.add_stage(stage)
    return p


def sink_ids(db: Path, table: str = "out") -> list[int]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(f"SELECT id FROM {table}")]


def letter_ids(path: Path) -> list[int]:
    with open_dead_letter_store(path) as store:
        return [letter.record["id"] for letter in store.list()]


def assert_exactly_once(tmp: Path, n: int = N) -> None:
    s, q = sink_ids(tmp / "out.db"), letter_ids(tmp / "dl.db")
    assert len(s) == len(set(s)), "a record twice in the sink"
    assert len(q) == len(set(q)), "a record twice in the dead-letter queue"
    assert not set(s) & set(q)
    assert set(s) | set(q) == set(range(n))


def options(tmp: Path, **changes: Any) -> RunOptions:
    base = RunOptions(
        dead_letters=tmp / "dl.db",
        checkpoint=tmp / "cp.db",
        checkpoint_every="200r",
        batch_size=100,
        max_dead_letters="100%",
    )
    return base.merged(**changes)


async def run_until(
    p: Pipeline[Any, Any], source: Any, sink: Any, opts: RunOptions, abort_at: int | None
) -> Any:
    """Run; abort (as a crash would: nothing more is committed) when record ``abort_at``
    reaches the sink's stage."""
    runner_box: list[StreamRunner] = []

    def watch(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == abort_at:
            runner_box[0].abort()
        return record

    spec = p.spec()
    spec = spec.with_stages([*spec.stages, MapStage(watch, name="watch")])
    runner = StreamRunner(spec, sink, opts)
    runner_box.append(runner)
    return await runner.run(source)


async def test_aborted_run_resumes_exactly_once(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "out.db", "out")
    first = await run_until(pipeline(), ids(), sink, options(tmp_path), abort_at=2_345)
    assert first.status is RunStatus.ABORTED
    assert first.checkpoint is not None
    assert 0 < first.checkpoint.position <= 2_345
    assert "--resume" in first.summary()
    committed = len(sink_ids(tmp_path / "out.db"))
    assert committed == first.checkpoint.records["written"]

    with pytest.raises(ResumeRequired, match="--resume") as refused:
        await run_until(
            pipeline(), ids(), SqliteSink(tmp_path / "out.db", "out"), options(tmp_path), None
        )
    assert str(tmp_path / "cp.db") not in str(refused.value)  # the sink's database keeps it
    assert "out.db" in str(refused.value)

    second = await run_until(
        pipeline(),
        ids(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True, batch_size=37, capacity=5),
        None,
    )
    assert second.status is RunStatus.COMPLETED
    assert second.resume is not None
    assert second.resume.position == first.checkpoint.position
    assert second.resume.skipped == first.checkpoint.position
    assert "resumed from the checkpoint" in second.summary()
    assert second.checkpoint is not None
    assert second.checkpoint.finished
    assert second.sink_guarantee == "exactly-once"
    assert_exactly_once(tmp_path)


async def test_three_aborts_then_complete(tmp_path: Path) -> None:
    for i, at in enumerate((900, 2_100, 3_900)):
        report = await run_until(
            pipeline(),
            ids(),
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, resume=True if i else None),
            abort_at=at,
        )
        assert report.status is RunStatus.ABORTED
    final = await run_until(
        pipeline(),
        ids(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True),
        None,
    )
    assert final.status is RunStatus.COMPLETED
    assert final.checkpoint is not None
    assert len(final.checkpoint.runs) == 4
    assert_exactly_once(tmp_path)


async def test_fresh_abandons_the_checkpoint_and_its_letters(tmp_path: Path) -> None:
    def keyed() -> SqliteSink:
        return SqliteSink(tmp_path / "out.db", "out", key=["id"])

    await run_until(pipeline(), ids(), keyed(), options(tmp_path), abort_at=3_000)
    report = await run_until(pipeline(), ids(), keyed(), options(tmp_path, resume=False), None)
    assert report.status is RunStatus.COMPLETED
    assert report.resume is None
    assert report.checkpoint is not None
    assert len(report.checkpoint.runs) == 1
    assert_exactly_once(tmp_path)  # rows upserted by key; the abandoned letters retired


async def test_changed_stage_list_is_refused(tmp_path: Path) -> None:
    await run_until(
        pipeline(), ids(), SqliteSink(tmp_path / "out.db", "out"), options(tmp_path), abort_at=2_000
    )
    changed = pipeline("cp", MapStage(lambda r: r, name="extra"))
    with pytest.raises(CheckpointError, match="different stage list") as refused:
        await run_until(
            changed,
            ids(),
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, resume=True),
            None,
        )
    assert "--fresh" in str(refused.value)
    assert "out.db" in str(refused.value)


class Lines:
    """A seekable source: records of a list, ``offset`` the index of the next one."""

    identity = "lines:test"

    def __init__(self, n: int) -> None:
        self.n = n
        self.offset = 0
        self.seeks: list[Any] = []

    def seek(self, offset: Any) -> None:
        self.seeks.append(offset)
        self.offset = int(offset)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while self.offset < self.n:
            i = self.offset
            self.offset += 1
            yield {"id": i, "v": 0.0}


async def test_seekable_source_is_sought_not_reread(tmp_path: Path) -> None:
    first = await run_until(
        pipeline(),
        Lines(N),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        abort_at=3_210,
    )
    assert first.checkpoint is not None
    source = Lines(N)
    second = await run_until(
        pipeline(),
        source,
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True),
        None,
    )
    assert source.seeks == [first.checkpoint.offset]
    assert first.checkpoint.offset > 0
    assert second.resume is not None
    assert second.resume.seeked
    assert second.records_in == N - first.checkpoint.position
    assert_exactly_once(tmp_path)


async def test_async_source_resumes(tmp_path: Path) -> None:
    async def records() -> AsyncIterator[dict[str, Any]]:
        for record in ids():
            if record["id"] % 500 == 0:
                await asyncio.sleep(0)
            yield record

    await run_until(
        pipeline(),
        records(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path),
        abort_at=2_500,
    )
    report = await run_until(
        pipeline(),
        records(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True),
        None,
    )
    assert report.status is RunStatus.COMPLETED
    assert_exactly_once(tmp_path)


async def test_out_of_order_batches_are_done_above_the_watermark(tmp_path: Path) -> None:
    rng = random.Random(7)
    delays = {i: rng.random() * 0.004 for i in range(N)}

    async def slow(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] % 100 == 0:
            await asyncio.sleep(delays[record["id"]] * (30 if record["id"] % 700 == 0 else 1))
        return record

    unordered = {"slow": StageOptions(concurrency=4, ordered=False)}
    p = pipeline("cp", MapStage(slow, name="slow"))
    first = await run_until(
        p,
        ids(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, stage_options=unordered, checkpoint_every="50r"),
        abort_at=4_000,
    )
    assert first.checkpoint is not None
    second = await run_until(
        p,
        ids(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True, stage_options=unordered),
        None,
    )
    assert second.status is RunStatus.COMPLETED
    assert_exactly_once(tmp_path)


async def test_groups_across_source_batches_resume(tmp_path: Path) -> None:
    """A BatchStage joins records of two source batches: they are done together."""
    p = pipeline(
        "cp",
        BatchStage(33, name="group"),
        FlattenStage(name="ungroup"),
    )
    await run_until(
        p,
        ids(),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, checkpoint_every="50r"),
        abort_at=2_777,
    )
    report = await run_until(
        p, ids(), SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True), None
    )
    assert report.status is RunStatus.COMPLETED
    assert_exactly_once(tmp_path)


async def test_stop_takes_a_final_checkpoint(tmp_path: Path) -> None:
    spec = pipeline().spec()
    box: list[StreamRunner] = []

    def watch(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == 1_500:
            box[0].stop_intake()
        return record

    spec = spec.with_stages([*spec.stages, MapStage(watch, name="watch")])
    runner = StreamRunner(
        spec, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, checkpoint_every=3600.0)
    )
    box.append(runner)
    report = await runner.run(ids())
    assert report.status is RunStatus.INTERRUPTED
    cp = report.checkpoint
    assert cp is not None
    assert not cp.finished
    assert cp.position == cp.read  # drained: everything read is done and committed
    assert len(sink_ids(tmp_path / "out.db")) == cp.records["written"]
    again = StreamRunner(
        spec, SqliteSink(tmp_path / "out.db", "out"), options(tmp_path, resume=True)
    )
    resumed = await again.run(ids())
    assert resumed.replayed == 0
    assert resumed.status is RunStatus.COMPLETED
    assert_exactly_once(tmp_path)


async def test_damaged_checkpoint_is_refused_even_with_a_plain_run(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "cp.db")
    await run_until(
        pipeline(), ids(), lambda batch: None, options(tmp_path, checkpoint=store), abort_at=2_000
    )
    with sqlite3.connect(tmp_path / "cp.db") as conn:
        (payload,) = conn.execute("SELECT payload FROM conveyor_checkpoints").fetchone()
        conn.execute("UPDATE conveyor_checkpoints SET payload = ?", (payload.replace("1", "2", 1),))
    for resume in (None, True):
        with pytest.raises(CheckpointError, match="checksum") as refused:
            await run_until(
                pipeline(), ids(), lambda batch: None, options(tmp_path, resume=resume), None
            )
        assert str(tmp_path / "cp.db") in str(refused.value)
    # --fresh replaces a damaged checkpoint
    report = await run_until(
        pipeline(), ids(), lambda batch: None, options(tmp_path, resume=False), None
    )
    assert report.status is RunStatus.COMPLETED


async def test_at_least_once_sink_counts_its_replays(tmp_path: Path) -> None:
    written: list[int] = []

    def sink(batch: list[dict[str, Any]]) -> None:
        written.extend(r["id"] for r in batch)

    every = options(tmp_path, checkpoint_every="1000r")
    first = await run_until(pipeline(), ids(), sink, every, abort_at=3_333)
    assert first.checkpoint is not None
    second = await run_until(pipeline(), ids(), sink, every.merged(resume=True), None)
    assert second.sink_guarantee == "at-least-once"
    duplicates = len(written) - len(set(written))
    assert duplicates <= 1_000 + 100  # at most one interval (and a micro-batch)
    assert second.replayed > 0
    assert "at-least-once" in second.summary()
    assert set(written) | set(letter_ids(tmp_path / "dl.db")) == set(range(N))


def test_checkpoint_round_trip_and_damage() -> None:
    from conveyor.core.checkpoint import PipelineIdentity

    cp = Checkpoint(PipelineIdentity("p", "f", "s"), "r", ("r",), 10, 3, ((20, 29),), 40)
    text = cp.to_json()
    assert Checkpoint.from_json(text, "x") == cp
    assert cp.covers(0, 9)
    assert cp.covers(20, 29)
    assert not cp.covers(10, 19)
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint.from_json(text[: len(text) // 2], "store.db")


async def test_a_dead_letter_store_that_fails_holds_the_checkpoint_back(tmp_path: Path) -> None:
    from conveyor import DeadLetterStoreError, SqliteDeadLetterStore

    class Failing(SqliteDeadLetterStore):
        writes = 0

        def write(self, letters: Any) -> None:
            Failing.writes += 1
            if Failing.writes == 6:  # the sixth batch with a bad record cannot be stored
                raise DeadLetterStoreError("dl.db", "disk full")
            super().write(letters)

    store = SqliteCheckpointStore(tmp_path / "cp.db")
    sink = SqliteSink(tmp_path / "out.db", "out")
    with pytest.raises(DeadLetterStoreError, match="disk full"):
        await run_until(
            pipeline(),
            ids(),
            sink,
            options(
                tmp_path,
                dead_letters=Failing(tmp_path / "failing.db"),
                checkpoint=store,
                checkpoint_every="1r",
            ),
            None,
        )
    cp = SqliteSink(tmp_path / "out.db", "out").checkpoint_store().load("cp")
    assert cp is not None
    assert not cp.finished
    # bad records 13, 110, 207, 304, 401+498 (one batch), 595: the sixth write is batch
    # 500-599's, which is not covered, and none of its rows were committed
    assert cp.position <= 500
    assert not cp.covers(500, 599)
    assert max(sink_ids(tmp_path / "out.db")) < 500


async def test_resume_after_a_finished_run_is_refused(tmp_path: Path) -> None:
    sink = SqliteSink(tmp_path / "out.db", "out")
    done = await run_until(pipeline(), ids(), sink, options(tmp_path), None)
    assert done.checkpoint is not None
    assert done.checkpoint.finished
    with pytest.raises(CheckpointError, match="nothing to resume"):
        await run_until(
            pipeline(),
            ids(),
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, resume=True),
            None,
        )
    assert_exactly_once(tmp_path)  # nothing was written again


async def test_checkpoints_refuse_a_dead_letter_store_in_memory(tmp_path: Path) -> None:
    from conveyor import PipelineDefinitionError

    with pytest.raises(PipelineDefinitionError, match="durable dead-letter store"):
        await run_until(
            pipeline(),
            ids(),
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, dead_letters="memory"),
            None,
        )


# -- regressions from a review: offsets after a stop or a skip, async offsets, a failing
# source, letters of branch arms ------------------------------------------------------------


class AsyncLines(Lines):
    """The async form of :class:`Lines` (it reads ahead of the run: the pump)."""

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._records()

    async def _records(self) -> AsyncIterator[dict[str, Any]]:
        while self.offset < self.n:
            i = self.offset
            self.offset += 1
            if i % 50 == 0:
                await asyncio.sleep(0)
            yield {"id": i, "v": 0.0}


Lines.__aiter__ = None  # type: ignore[attr-defined]


@pytest.mark.parametrize("make", [Lines, AsyncLines], ids=["sync", "async"])
async def test_stops_with_a_full_channel_resume_a_seekable_source_exactly_once(
    tmp_path: Path, make: Any
) -> None:
    """A stop while the reader waits to send: the batch it held is not read; a resume
    seeks to the offset that goes with the checkpoint's position."""

    async def slow(record: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.0005)
        return record

    p = pipeline("cp", MapStage(slow, name="slow"))
    box: list[StreamRunner] = []

    def watch(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] in (1_234, 3_456):
            box[-1].stop_intake()
        return record

    spec = p.spec()
    spec = spec.with_stages([*spec.stages, MapStage(watch, name="watch")])
    for resume in (None, True, True):
        runner = StreamRunner(
            spec,
            SqliteSink(tmp_path / "out.db", "out"),
            options(tmp_path, resume=resume, batch_size=50, capacity=1, checkpoint_every=0.001),
        )
        box.append(runner)
        report = await runner.run(make(N))
    assert report.status is RunStatus.COMPLETED
    assert report.resume is not None
    assert report.resume.seeked
    assert_exactly_once(tmp_path)


async def test_a_seekable_resume_that_skips_done_ranges_keeps_its_offsets(tmp_path: Path) -> None:
    """Batches done out of order are skipped on resume; the offsets after a skip are the
    source's, so a later checkpoint seeks to the right record."""
    slow_id = {"id": 0}

    async def work(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == slow_id["id"]:
            await asyncio.sleep(0.3)
        return record

    unordered = {"work": StageOptions(concurrency=2, ordered=False)}
    p = pipeline("cp", MapStage(work, name="work"))
    for slow, abort_at, resume in ((0, 60, None), (120, 180, True), (None, None, True)):
        slow_id["id"] = slow
        await run_until(
            p,
            Lines(300),
            SqliteSink(tmp_path / "out.db", "out"),
            options(
                tmp_path,
                resume=resume,
                batch_size=10,
                capacity=4,
                checkpoint_every=0.001,
                stage_options=unordered,
            ),
            abort_at,
        )
    assert_exactly_once(tmp_path, 300)


async def test_a_failing_source_leaves_an_unfinished_checkpoint(tmp_path: Path) -> None:
    def broken() -> Iterator[dict[str, Any]]:
        for record in ids():
            if record["id"] == 2_500:
                raise OSError("the file went away")
            yield record

    with pytest.raises(OSError, match="went away"):
        await run_until(
            pipeline(), broken(), SqliteSink(tmp_path / "out.db", "out"), options(tmp_path), None
        )
    cp = SqliteSink(tmp_path / "out.db", "out").checkpoint_store().load("cp")
    assert cp is not None
    assert not cp.finished
    report = await run_until(
        pipeline(),
        (r for r in ids()),
        SqliteSink(tmp_path / "out.db", "out"),
        options(tmp_path, resume=True),
        None,
    )
    assert report.status is RunStatus.COMPLETED
    assert_exactly_once(tmp_path)


async def test_letters_of_a_branch_arm_are_retired_on_resume(tmp_path: Path) -> None:
    from conveyor import AggregateStage, BranchStage

    def check(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] % 10 == 3:
            raise ValueError("bad")
        return record

    arm = MapStage(check, name="check") >> AggregateStage(len, name="count")
    p = Pipeline[Any, Any]("cp").add_stage(BranchStage({"a": arm}, name="branch"))
    outage = {"on": True}

    def sink(batch: list[Any]) -> None:
        if outage["on"]:
            raise SinkUnavailableError("sink", "outage", retryable=False)

    with pytest.raises(SinkUnavailableError):
        await p.arun(ids(1_000), sink, options(tmp_path))
    outage["on"] = False
    report = await p.arun(ids(1_000), sink, options(tmp_path, resume=True))
    assert report.resume is not None
    assert report.resume.superseded_letters == 100
    letters = letter_ids(tmp_path / "dl.db")
    assert len(letters) == len(set(letters)) == 100
