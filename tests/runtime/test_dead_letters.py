"""The streaming runner and the dead-letter queue: what a letter holds, where it is stored,
what happens when it cannot be stored, and replaying letters into the stage that failed."""

from __future__ import annotations

import builtins
from datetime import UTC
from pathlib import Path
from typing import Any

import _fns
import pytest

from conveyor import (
    DeadLetterStoreError,
    JsonlDeadLetterStore,
    MapStage,
    MemoryDeadLetterStore,
    Pipeline,
    PipelineDefinitionError,
    SqliteDeadLetterStore,
    replay_dead_letters,
)
from conveyor.dlq import EncodedLetter
from conveyor.runtime import DEFAULT_DEAD_LETTERS
from conveyor.testing import MemorySink


def email_domain(user: dict[str, Any]) -> str:
    return user["email"].split("@")[1]


USERS = [
    {"id": 1, "email": "ada@example.org", "tags": ("admin",)},
    {"id": 2, "name": "no e-mail"},
    {"id": 3, "email": "bob@example.com", "tags": ()},
]


def domain_pipeline() -> Pipeline[Any, Any]:
    return Pipeline[Any, Any]("domains").add_stage(MapStage(email_domain, name="domain"))


def test_a_dead_letter_holds_everything_needed_to_understand_and_replay() -> None:
    store = MemoryDeadLetterStore()
    sink = MemorySink()
    report = domain_pipeline().run(USERS, sink, dead_letters=store, handle_signals=False)
    assert sink.records == ["example.org", "example.com"]
    [letter] = store.list()
    assert letter.record == {"id": 2, "name": "no e-mail"}  # the original record
    assert letter.record_exact
    assert letter.stage == "domain"
    assert letter.attempts == 1
    assert letter.error_type == "builtins.KeyError"
    assert letter.message == "'email'"
    assert letter.traceback.startswith("Traceback (most recent call last):")
    assert 'File "' in letter.traceback
    assert "in email_domain" in letter.traceback
    assert letter.traceback.rstrip().endswith("KeyError: 'email'")
    assert letter.run_id == report.run_id
    assert letter.created_at.tzinfo is UTC
    assert not letter.replayed
    assert report.dead_lettered == 1
    assert report.dead_letter_store == "memory"


def test_the_default_store_is_a_sqlite_file_under_the_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    report = domain_pipeline().run(USERS, MemorySink())
    path = tmp_path / ".conveyor" / "dead_letters.db"
    assert Path(".conveyor") / "dead_letters.db" == DEFAULT_DEAD_LETTERS
    assert path.is_file()
    assert report.dead_letter_store.endswith(str(DEFAULT_DEAD_LETTERS))
    with SqliteDeadLetterStore(path) as store:
        [letter] = store.list()
    assert (letter.record, letter.run_id) == (USERS[1], report.run_id)
    assert letter.record["id"] == 2


def test_a_jsonl_store(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dlq.jsonl"
    report = domain_pipeline().run(USERS, MemorySink(), dead_letters=path)
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert '"dead_letter"' in lines[0]
    with JsonlDeadLetterStore(path) as store:
        [letter] = store.list(run_id=report.run_id)
    assert letter.record == USERS[1]


def test_a_store_that_cannot_be_created_stops_the_run_before_it_reads(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file")
    read: list[Any] = []

    def source() -> Any:
        read.append(True)
        yield from USERS

    with pytest.raises(DeadLetterStoreError):
        domain_pipeline().run(source(), MemorySink(), dead_letters=blocker / "dlq.jsonl")
    assert read == []


class FullDisk(MemoryDeadLetterStore):
    """A store whose writes fail."""

    def _append(self, rows: builtins.list[EncodedLetter]) -> None:
        raise OSError(28, "No space left on device")


def test_a_store_that_cannot_be_written_stops_the_run_loudly() -> None:
    store = FullDisk()
    with pytest.raises(DeadLetterStoreError, match="No space left") as caught:
        domain_pipeline().run(USERS * 20, MemorySink(), dead_letters=store, batch_size=3)
    assert isinstance(caught.value.__cause__, OSError)
    assert store.count() == 0  # a store the run did not open is left open for its owner


def test_an_unknown_store_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown dead-letter store"):
        domain_pipeline().run(USERS, MemorySink(), dead_letters="dlq.parquet")


# --- replay ---------------------------------------------------------------------------------


def fragile_pipeline() -> Pipeline[Any, Any]:
    # inc is not idempotent in value: replaying from the start would show as +2.
    return (
        Pipeline[Any, Any]("replay")
        .add_stage(MapStage(_fns.inc, name="inc"))
        .add_stage(MapStage(_fns.fragile, name="fragile"))
    )


async def test_replay_feeds_letters_back_into_the_stage_that_failed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(_fns.BROKEN, "on", True)
    store = MemoryDeadLetterStore()
    pipeline = fragile_pipeline()
    first = MemorySink()
    report = await pipeline.arun(range(10), first, dead_letters=store)
    assert first.records == [100 * x for x in range(1, 11) if x % 4]
    assert [(d.record, d.stage) for d in store.list()] == [(4, "fragile"), (8, "fragile")]

    monkeypatch.setitem(_fns.BROKEN, "on", False)  # the fix is deployed
    again = MemorySink()
    [replay] = await replay_dead_letters(pipeline, store, again, batch_size=5)
    assert again.records == [400, 800]  # fragile only: inc did not run twice
    assert replay.records_in == replay.records_out == 2
    assert replay.run_id != report.run_id
    assert [s.name for s in replay.stages] == ["fragile", "sink"]
    assert store.list() == []
    replayed = store.list(include_replayed=True)
    assert [(d.record, d.replayed) for d in replayed] == [(4, True), (8, True)]


async def test_a_replayed_letter_that_fails_again_becomes_a_new_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(_fns.BROKEN, "on", True)
    store = MemoryDeadLetterStore()
    pipeline = fragile_pipeline()
    await pipeline.arun(range(4), MemorySink(), dead_letters=store)
    [old] = store.list()
    sink = MemorySink()
    [replay] = await replay_dead_letters(pipeline, store, sink, stage="fragile")
    assert sink.records == []
    [new] = store.list()
    assert new.id != old.id
    assert (new.record, new.stage, new.run_id) == (4, "fragile", replay.run_id)
    assert store.get(old.id).replayed
    assert replay.dead_lettered == 1


async def test_replay_of_letters_from_the_sink() -> None:
    store = MemoryDeadLetterStore()
    down = {"on": True}
    written: list[Any] = []

    def flaky_sink(batch: list[Any]) -> None:
        if down["on"] and 3 in batch:
            raise ConnectionRefusedError("warehouse down")
        written.extend(batch)

    pipeline = Pipeline[Any, Any]("to-sink").add_stage(MapStage(_fns.ident, name="ident"))
    await pipeline.arun(range(6), flaky_sink, dead_letters=store, batch_size=3)
    # A plain function sink is not idempotent: its failing micro-batch is dead-lettered
    # whole, never split and re-sent (it may have written part of it).
    assert [(d.record, d.stage) for d in store.list()] == [(3, "sink"), (4, "sink"), (5, "sink")]
    assert sorted(written) == [0, 1, 2]
    down["on"] = False
    [replay] = await replay_dead_letters(pipeline, store, flaky_sink)
    assert [s.name for s in replay.stages] == ["sink"]
    assert sorted(written) == list(range(6))
    assert store.count() == 0  # every letter marked replayed once its record was written


async def test_replay_into_a_pipeline_without_that_stage_is_refused() -> None:
    store = MemoryDeadLetterStore()
    await domain_pipeline().arun(USERS, MemorySink(), dead_letters=store)
    with pytest.raises(PipelineDefinitionError, match="no such stage"):
        await replay_dead_letters(fragile_pipeline(), store, MemorySink())


# --- replay: the whole tail, contracts, barriers, groups -----------------------------------


class Gate:
    """A map function that refuses ids in ``bad`` until opened (a stage that gets fixed)."""

    def __init__(self, bad: set[int]) -> None:
        self.bad = bad
        self.open = False

    def __call__(self, x: int) -> int:
        if x in self.bad and not self.open:
            raise ValueError(f"{x} is refused")
        return x


async def test_replay_runs_the_letters_through_every_later_stage_into_the_real_sink() -> None:
    gate = Gate({2, 5})
    seen_after: list[str] = []
    pipeline = (
        Pipeline[Any, Any]("tail")
        .add_stage(MapStage(gate, name="gate"))
        .add_stage(MapStage(_fns.inc, name="inc"))
        .add_hook("after_stage", lambda *, stage_name, **_: seen_after.append(stage_name))
    )
    store, sink = MemoryDeadLetterStore(), MemorySink()
    await pipeline.arun(range(8), sink, dead_letters=store, max_dead_letters="50%")
    assert sorted(sink.records) == [1, 2, 4, 5, 7, 8]
    gate.open = True
    seen_after.clear()
    [report] = await replay_dead_letters(pipeline, store, sink)
    assert sorted(sink.records) == list(range(1, 9))  # each record exactly once
    assert report.status.value == "completed"
    assert set(seen_after) == {"gate", "inc"}  # the pipeline's own hooks ran
    assert store.count() == 0
    assert await replay_dead_letters(pipeline, store, sink) == []  # nothing twice
    assert sorted(sink.records) == list(range(1, 9))


def halve_even(x: int) -> int:
    return x // 2 if x % 2 == 0 else -x


async def test_output_contract_letters_hold_the_input_and_can_be_replayed() -> None:
    import pydantic

    from conveyor import StageOptions

    store, sink = MemoryDeadLetterStore(), MemorySink()
    pipeline = Pipeline[Any, Any]("out").add_stage(
        MapStage(halve_even, name="halve"),
        options=StageOptions(output_contract=pydantic.NonNegativeInt),
    )
    await pipeline.arun(range(6), sink, dead_letters=store, max_dead_letters="100%")
    letters = store.list()
    assert [(d.record, d.output) for d in letters] == [(1, -1), (3, -3), (5, -5)]
    fixed = Pipeline[Any, Any]("out").add_stage(
        MapStage(abs, name="halve"),
        options=StageOptions(output_contract=pydantic.NonNegativeInt),
    )
    [report] = await replay_dead_letters(fixed, store, sink)
    assert (report.records_out, report.dead_lettered) == (3, 0)
    assert sorted(sink.records) == [0, 1, 1, 2, 3, 5]


async def test_replay_refuses_before_a_barrier_and_touches_nothing() -> None:
    from conveyor import AggregateStage, ReplayRefused

    gate = Gate({3})
    pipeline = (
        Pipeline[Any, Any]("agg")
        .add_stage(MapStage(gate, name="gate"))
        .add_stage(AggregateStage(sum, name="total"))
    )
    store, sink = MemoryDeadLetterStore(), MemorySink()
    await pipeline.arun(range(10), sink, dead_letters=store, max_dead_letters="50%")
    assert sink.records == [42]
    gate.open = True
    with pytest.raises(ReplayRefused, match="stage 'total' after it is a barrier"):
        await replay_dead_letters(pipeline, store, sink)
    assert sink.records == [42]
    assert store.count() == 1


def fail_groups_with_4(group: list[int]) -> list[int]:
    if 4 in group:
        raise ValueError(f"group {group} holds 4")
    return group


def test_a_dead_lettered_group_counts_its_records() -> None:
    from conveyor import BatchStage, FlattenStage

    pipeline = (
        Pipeline[Any, Any]("groups")
        .add_stage(BatchStage(3, name="batch"))
        .add_stage(MapStage(fail_groups_with_4, name="fail"))
        .add_stage(FlattenStage(name="flat"))
    )
    store, sink = MemoryDeadLetterStore(), MemorySink()
    report = pipeline.run(range(10), sink, dead_letters=store, max_dead_letters="50%")
    assert report.summary().startswith(
        "groups completed: 10 in, 7 out, 0 filtered, 3 dead-lettered"
    )
    [letter] = store.list()
    assert (letter.record, letter.records) == ([3, 4, 5], 3)
    assert (report.letters, report.stage("fail").dead_lettered) == (1, 1)
    report.check_conservation()


async def test_a_group_letter_replays_into_its_stage_as_a_group() -> None:
    from conveyor import BatchStage, FlattenStage

    gate = {"open": False}

    def fragile_group(group: list[int]) -> list[int]:
        if 4 in group and not gate["open"]:
            raise ValueError("not yet")
        return group

    pipeline = (
        Pipeline[Any, Any]("groups")
        .add_stage(BatchStage(3, name="batch"))
        .add_stage(MapStage(fragile_group, name="fail"))
        .add_stage(FlattenStage(name="flat"))
    )
    store, sink = MemoryDeadLetterStore(), MemorySink()
    await pipeline.arun(range(10), sink, dead_letters=store, max_dead_letters="50%")
    gate["open"] = True
    [report] = await replay_dead_letters(pipeline, store, sink)
    assert (report.records_in, report.records_out) == (3, 3)
    assert sorted(sink.records) == list(range(10))
