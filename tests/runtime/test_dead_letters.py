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
