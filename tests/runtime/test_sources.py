"""The runner and :class:`conveyor.Source`: a source's own row, its rejects as dead letters,
and the acknowledgement protocol of broker sources (checked here with an in-process source
that keeps its messages in a list; the real brokers are tested in tests/connectors)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import (
    MapStage,
    Pipeline,
    PipelineDefinitionError,
    Rejected,
    Source,
    SourceRecordError,
)
from conveyor.dlq import SqliteDeadLetterStore


class Lines(Source):
    """Numbers 0..n-1; every multiple of ``bad`` is rejected."""

    name = "lines"
    rejects = True

    def __init__(self, n: int, bad: int) -> None:
        self.n, self.bad = n, bad
        self.closed = 0

    def read(self) -> Lines:
        return self

    def __iter__(self) -> Iterator[Any]:
        for i in range(self.n):
            if i % self.bad == 0:
                yield Rejected(
                    {"file": "in.txt", "line": i + 1, "raw": f"x{i}"},
                    SourceRecordError(f"in.txt:{i + 1}", "not a number"),
                )
            else:
                yield {"id": i}

    def close(self) -> None:
        self.closed += 1


def _pipeline(fail: set[int] | None = None) -> Pipeline:
    def check(record: dict[str, Any]) -> dict[str, Any]:
        if fail and record["id"] in fail:
            raise ValueError(f"bad {record['id']}")
        return record

    return Pipeline("p").add_stage(MapStage(check, name="check"))


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_rejects_are_dead_letters_of_the_sources_row(tmp_path: Path, batch_size: int) -> None:
    out: list[dict[str, Any]] = []
    source = Lines(20, bad=4)
    report = _pipeline({5}).run(
        source,
        out.extend,
        dead_letters=tmp_path / "dl.db",
        batch_size=batch_size,
        max_dead_letters="100%",
    )
    letters = SqliteDeadLetterStore(tmp_path / "dl.db").list()
    rejected = {letter.record["line"] - 1 for letter in letters if letter.stage == "lines"}
    assert rejected == {0, 4, 8, 12, 16}
    assert {letter.record["id"] for letter in letters if letter.stage == "check"} == {5}
    assert {r["id"] for r in out} | rejected | {5} == set(range(20))
    assert len(out) == 14
    messages = {letter.message for letter in letters if letter.stage == "lines"}
    assert messages == {f"in.txt:{i + 1}: not a number" for i in (0, 4, 8, 12, 16)}
    assert report.stage_names()[0] == "lines"
    assert report.stage("lines").dead_lettered == 5
    assert report.stage("lines").emitted == 15
    assert report.records_in == 20
    assert report.dead_lettered == 6
    assert source.closed == 1


def test_a_batch_of_rejects_only_is_done_once_its_letters_are(tmp_path: Path) -> None:
    out: list[Any] = []
    report = _pipeline().run(
        Lines(6, bad=1),
        out.extend,
        dead_letters=tmp_path / "dl.db",
        checkpoint=tmp_path / "cp.db",
        max_dead_letters="100%",
    )
    assert out == []
    assert report.dead_lettered == 6
    assert report.checkpoint is not None
    assert report.checkpoint.position == 6
    assert report.checkpoint.finished


def test_a_stage_named_like_the_source_is_refused(tmp_path: Path) -> None:
    pipeline = Pipeline("p").add_stage(MapStage(abs, name="lines"))
    with pytest.raises(PipelineDefinitionError, match="the name of the run's source"):
        pipeline.run(Lines(3, bad=10), [].extend, dead_letters=tmp_path / "dl.db")


class Queue(Source):
    """An in-process 'broker': a list of (id, body) messages, redelivering whatever was not
    acknowledged to the next consumer. It implements the AcknowledgingSource protocol."""

    name = "queue"

    def __init__(self, broker: dict[str, Any]) -> None:
        self.broker = broker
        self.count = 0
        self.delivered: dict[int, str] = {}
        self.done_ids: set[str] = set()
        self.restored: Any = None

    def read(self) -> Queue:
        return self

    @property
    def offset(self) -> int:
        return self.count

    def seek(self, offset: Any) -> None:
        self.count = int(offset)

    def pending(self, position: int, done: Sequence[tuple[int, int]]) -> Any:
        return sorted(
            mid
            for p, mid in self.delivered.items()
            if p < position or any(a <= p <= b for a, b in done)
        )

    def restore(self, state: Any) -> None:
        self.restored = state
        self.done_ids = set(state or ())

    async def acknowledge(self, position: int, done: Sequence[tuple[int, int]]) -> None:
        for p in list(self.delivered):
            if p < position or any(a <= p <= b for a, b in done):
                self.broker["acked"].add(self.delivered.pop(p))

    async def __aiter__(self) -> AsyncIterator[Any]:
        for mid, body in self.broker["messages"]:
            if mid in self.broker["acked"]:
                continue
            if mid in self.done_ids:  # done before a crash, its ack lost: ack, skip
                self.broker["acked"].add(mid)
                continue
            self.delivered[self.count] = mid
            self.count += 1
            yield body


def test_an_acknowledging_source_needs_checkpoints(tmp_path: Path) -> None:
    broker = {"messages": [("m0", {"id": 0})], "acked": set()}
    with pytest.raises(PipelineDefinitionError, match="run it with checkpoints"):
        _pipeline().run(Queue(broker), [].extend, dead_letters=tmp_path / "dl.db")


def test_messages_are_acknowledged_after_they_left(tmp_path: Path) -> None:
    broker: dict[str, Any] = {
        "messages": [(f"m{i}", {"id": i}) for i in range(50)],
        "acked": set(),
    }
    out: list[dict[str, Any]] = []
    report = _pipeline({7}).run(
        Queue(broker),
        out.extend,
        dead_letters=tmp_path / "dl.db",
        checkpoint=tmp_path / "cp.db",
        batch_size=8,
        max_dead_letters="100%",
    )
    assert broker["acked"] == {f"m{i}" for i in range(50)}  # the failed one too: lettered
    assert {r["id"] for r in out} == set(range(50)) - {7}
    assert report.checkpoint is not None
    assert set(report.checkpoint.source_state) == {f"m{i}" for i in range(50)}


def test_a_resume_skips_the_messages_its_checkpoint_covers(tmp_path: Path) -> None:
    """Acknowledgements lost after the checkpoint (as in a crash before them): the next
    run gets the checkpoint's state and skips the messages it names."""
    broker: dict[str, Any] = {
        "messages": [(f"m{i}", {"id": i}) for i in range(10)],
        "acked": set(),
    }
    lost: list[Any] = []

    class LosesAcks(Queue):
        async def acknowledge(self, position: int, done: Sequence[tuple[int, int]]) -> None:
            raise ConnectionError("the broker went away")

    first = _pipeline().run(
        LosesAcks(broker),
        lost.extend,
        dead_letters=tmp_path / "dl.db",
        checkpoint=tmp_path / "cp.db",
    )
    assert broker["acked"] == set()
    assert len(lost) == 10
    assert first.checkpoint is not None
    again: list[Any] = []
    source = Queue(broker)
    second = _pipeline().run(
        source, again.extend, dead_letters=tmp_path / "dl.db", checkpoint=tmp_path / "cp.db"
    )
    assert again == []  # all ten were done: acknowledged, not processed again
    assert set(source.restored) == {f"m{i}" for i in range(10)}
    assert broker["acked"] == {f"m{i}" for i in range(10)}
    assert second.records_in == 0


def test_an_unfinished_checkpoint_is_resumed_by_a_plain_run(tmp_path: Path) -> None:
    """A broker consumer stopped by a signal leaves an unfinished checkpoint: the next
    plain run goes on from it (no --resume needed), positions continuing."""
    broker: dict[str, Any] = {
        "messages": [(f"m{i}", {"id": i}) for i in range(30)],
        "acked": set(),
    }
    out: list[dict[str, Any]] = []
    stop = {"at": 12}

    def check(record: dict[str, Any]) -> dict[str, Any]:
        if record["id"] == stop["at"]:
            raise KeyboardInterrupt
        return record

    pipeline = Pipeline("p").add_stage(MapStage(check, name="check"))
    with pytest.raises(KeyboardInterrupt) as stopped:
        pipeline.run(
            Queue(broker),
            out.extend,
            dead_letters=tmp_path / "dl.db",
            checkpoint=tmp_path / "cp.db",
            batch_size=4,
        )
    first = stopped.value.report  # type: ignore[attr-defined]
    assert first.checkpoint is not None
    assert not first.checkpoint.finished
    acked_first = set(broker["acked"])
    assert acked_first
    assert acked_first < {f"m{i}" for i in range(30)}
    stop["at"] = -1
    second = pipeline.run(
        Queue(broker),
        out.extend,
        dead_letters=tmp_path / "dl.db",
        checkpoint=tmp_path / "cp.db",
        batch_size=4,
    )
    assert second.resume is not None
    assert second.resume.position == first.checkpoint.position
    assert broker["acked"] == {f"m{i}" for i in range(30)}
    ids = [r["id"] for r in out]
    assert set(ids) == set(range(30))
