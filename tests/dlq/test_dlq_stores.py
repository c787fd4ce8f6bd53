"""The dead-letter stores: one behaviour for memory, JSONL and SQLite, then each one's own.

(Named ``test_dlq_stores`` rather than ``test_stores`` so that it cannot clash with another
package's ``test_stores.py``: the test folders are not packages.)
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import decimal
import json
import logging
import math
import os
import pickle
import shutil
import sqlite3
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.dlq import (
    DeadLetter,
    DeadLetterStore,
    EncodedLetter,
    JsonlDeadLetterStore,
    LetterQuery,
    MemoryDeadLetterStore,
    SqliteDeadLetterStore,
    _codec,
    _jsonl,
    _sqlite,
    open_dead_letter_store,
)
from conveyor.errors import DeadLetterStoreError

KINDS = ("memory", "jsonl", "sqlite")
FILE_KINDS = ("jsonl", "sqlite")

Opener = Callable[[], DeadLetterStore]


@dataclasses.dataclass(frozen=True)
class Order:
    """A user's own record type, importable by pickle."""

    id: int
    placed: datetime
    lines: tuple[tuple[str, decimal.Decimal], ...]


def make_opener(kind: str, folder: Path) -> Opener:
    if kind == "memory":
        shared = MemoryDeadLetterStore()
        return lambda: shared
    path = folder / ("dlq.jsonl" if kind == "jsonl" else "dlq.db")
    return lambda: open_dead_letter_store(path)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=FILE_KINDS)
def file_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(kind: str, tmp_path: Path) -> Iterator[DeadLetterStore]:
    with make_opener(kind, tmp_path)() as opened:
        yield opened


_DEFAULT_RECORD: Any = object()


def dead(
    record: Any = _DEFAULT_RECORD, *, stage: str = "parse", run_id: str = "r1", **kw: Any
) -> DeadLetter:
    if record is _DEFAULT_RECORD:
        record = {"n": 0}
    try:
        raise ValueError(kw.pop("message", "bad record"))
    except ValueError as exc:
        return DeadLetter.from_exception(
            record,
            exc,
            stage=stage,
            attempts=kw.pop("attempts", 1),
            run_id=run_id,
            **kw,
        )


def records(letters: list[DeadLetter]) -> list[Any]:
    return [letter.record for letter in letters]


# -- behaviour shared by every store ---------------------------------------------------------


class TestWriteAndRead:
    def test_empty_store(self, store: DeadLetterStore) -> None:
        assert store.list() == []
        assert store.count() == 0

    def test_list_returns_letters_in_insertion_order(self, store: DeadLetterStore) -> None:
        first = [dead({"n": i}) for i in range(3)]
        second = [dead({"n": i}) for i in range(3, 5)]
        store.write(first)
        store.write(second)
        assert store.list() == first + second
        assert store.count() == 5

    def test_stored_letter_equals_the_original(self, store: DeadLetterStore) -> None:
        original = dead({"n": 1}, source_offset={"partition": 2, "offset": 99}, attempts=4)
        store.write([original])
        (stored,) = store.list()
        assert stored == original
        assert stored.created_at == original.created_at
        assert stored.created_at.tzinfo is not None
        assert stored.traceback == original.traceback

    def test_get(self, store: DeadLetterStore) -> None:
        letters = [dead({"n": i}) for i in range(3)]
        store.write(letters)
        assert store.get(letters[1].id) == letters[1]

    def test_get_missing_is_a_key_error_naming_the_id_and_store(
        self, store: DeadLetterStore
    ) -> None:
        store.write([dead()])
        with pytest.raises(KeyError, match="no dead letter with id 'nope'") as info:
            store.get("nope")
        assert store.description in str(info.value)
        assert isinstance(info.value, LookupError)

    def test_empty_write_is_a_no_op(self, store: DeadLetterStore) -> None:
        store.write([])
        assert store.count() == 0

    def test_write_takes_a_sequence(self, store: DeadLetterStore) -> None:
        with pytest.raises(TypeError, match=r"write\(\[letter\]\)"):
            store.write(dead())  # type: ignore[arg-type]

    def test_a_stored_id_is_not_written_twice(self, store: DeadLetterStore) -> None:
        letter = dead({"n": 1})
        store.write([letter, letter])
        store.write([dataclasses.replace(letter, stage="other"), dead({"n": 2})])
        assert store.count() == 2
        assert store.get(letter.id).stage == "parse"
        assert records(store.list()) == [{"n": 1}, {"n": 2}]

    @pytest.mark.parametrize("size", [63, 64, 65, 200])
    def test_a_big_batch_keeps_its_order_and_first_copies(
        self, store: DeadLetterStore, size: int
    ) -> None:
        letters = [dead({"n": n}) for n in range(size)]
        again = dataclasses.replace(letters[3], stage="other")
        store.write([*letters[: size // 2], again, *letters[size // 2 :], letters[-1]])
        assert store.list() == letters
        assert store.get(letters[3].id).stage == "parse"

    def test_the_record_is_copied_when_written(self, store: DeadLetterStore) -> None:
        record = {"tags": ["a"]}
        store.write([dead(record)])
        record["tags"].append("b")
        assert store.list()[0].record == {"tags": ["a"]}

    def test_repr_names_the_store(self, store: DeadLetterStore) -> None:
        assert repr(store) == f"{type(store).__name__}({store.description!r})"


class TestFilters:
    @pytest.fixture
    def letters(self, store: DeadLetterStore) -> list[DeadLetter]:
        letters = [
            dead({"n": 0}, stage="parse", run_id="r1"),
            dead({"n": 1}, stage="enrich", run_id="r1"),
            dead({"n": 2}, stage="parse", run_id="r2"),
            dead({"n": 3}, stage="parse", run_id="r1"),
        ]
        store.write(letters)
        return letters

    def test_by_stage(self, store: DeadLetterStore, letters: list[DeadLetter]) -> None:
        assert store.list(stage="parse") == [letters[0], letters[2], letters[3]]
        assert store.count(stage="parse") == 3

    def test_by_run(self, store: DeadLetterStore, letters: list[DeadLetter]) -> None:
        assert store.list(run_id="r2") == [letters[2]]
        assert store.count(run_id="r1") == 3

    def test_by_stage_and_run(self, store: DeadLetterStore, letters: list[DeadLetter]) -> None:
        assert store.list(stage="parse", run_id="r1") == [letters[0], letters[3]]
        assert store.count(stage="parse", run_id="r1") == 2
        assert store.list(stage="enrich", run_id="r2") == []

    def test_limit(self, store: DeadLetterStore, letters: list[DeadLetter]) -> None:
        assert store.list(limit=2) == letters[:2]
        assert store.list(stage="parse", limit=2) == [letters[0], letters[2]]
        assert store.list(limit=0) == []
        assert store.list(limit=99) == letters

    def test_negative_limit_is_refused(
        self, store: DeadLetterStore, letters: list[DeadLetter]
    ) -> None:
        with pytest.raises(ValueError, match="limit"):
            store.list(limit=-1)

    def test_query_take_stops_at_the_limit(self) -> None:
        assert LetterQuery(limit=0).take(iter([])) == []


class TestReplayMarks:
    def test_mark_replayed(self, store: DeadLetterStore) -> None:
        letters = [dead({"n": i}) for i in range(4)]
        store.write(letters)
        assert store.mark_replayed([letters[0].id, letters[2].id]) == 2
        assert store.list() == [letters[1], letters[3]]
        assert store.count() == 2
        assert store.count(include_replayed=True) == 4
        everything = store.list(include_replayed=True)
        assert [letter.replayed for letter in everything] == [True, False, True, False]
        assert store.get(letters[0].id).replayed is True
        assert store.get(letters[0].id) == dataclasses.replace(letters[0], replayed=True)

    def test_counts_only_letters_newly_marked(self, store: DeadLetterStore) -> None:
        letters = [dead({"n": i}) for i in range(2)]
        store.write(letters)
        assert store.mark_replayed([letters[0].id, letters[0].id, "unknown"]) == 1
        assert store.mark_replayed([letters[0].id]) == 0
        assert store.mark_replayed(letter.id for letter in letters) == 1
        assert store.mark_replayed([]) == 0

    def test_filters_combine_with_replayed(self, store: DeadLetterStore) -> None:
        letters = [dead({"n": 0}, stage="a"), dead({"n": 1}, stage="a"), dead(stage="b")]
        store.write(letters)
        store.mark_replayed([letters[0].id])
        assert store.list(stage="a") == [letters[1]]
        assert store.count(stage="a", include_replayed=True) == 2
        assert store.list(stage="a", include_replayed=True, limit=1)[0].id == letters[0].id

    def test_a_letter_written_as_replayed_stays_replayed(self, store: DeadLetterStore) -> None:
        letter = dataclasses.replace(dead(), replayed=True)
        store.write([letter])
        assert store.list() == []
        assert store.list(include_replayed=True) == [letter]
        assert store.mark_replayed([letter.id]) == 0

    def test_a_single_string_is_refused(self, store: DeadLetterStore) -> None:
        with pytest.raises(TypeError, match="iterable of ids"):
            store.mark_replayed("0123abcd")


class TestExactRoundTrip:
    @pytest.mark.parametrize(
        "record",
        [
            {"id": 1, "name": "Ada", "tags": ["x", "y"], "nested": {"a": [1, 2.5, None]}},
            ("row", 3, (4, 5)),
            datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC),
            date(2024, 2, 29),
            {1: "int key", (2, 3): "tuple key", None: "none key"},
            {"set": {1, 2}, "frozen": frozenset({"a"}), "bytes": b"\x00\xff"},
            decimal.Decimal("12.3400"),
            Order(7, datetime(2024, 1, 1, tzinfo=UTC), (("pen", decimal.Decimal("1.50")),)),
            [Order(1, datetime(2024, 1, 2, tzinfo=UTC), ())],
            None,
            "text with \u2028 line separator and 🐍 and é",
            {"inf": math.inf, "minus_inf": -math.inf},
        ],
        ids=lambda value: type(value).__name__,
    )
    def test_records_come_back_exactly(self, store: DeadLetterStore, record: Any) -> None:
        letter = dead(record)
        store.write([letter])
        (stored,) = store.list()
        assert stored.record == record
        assert type(stored.record) is type(record)
        assert stored.record_exact is True
        assert stored == letter

    def test_nan_comes_back_as_nan(self, store: DeadLetterStore) -> None:
        store.write([dead({"score": math.nan})])
        assert math.isnan(store.list()[0].record["score"])

    def test_source_offset_comes_back_exactly(self, store: DeadLetterStore) -> None:
        letter = dead(source_offset=("orders", 3, 1200))
        store.write([letter])
        assert store.get(letter.id).source_offset == ("orders", 3, 1200)

    def test_lone_surrogates_are_stored(self, store: DeadLetterStore) -> None:
        record = {"name": "bad\udcff name"}
        letter = dead(record, message="bad name 'bad\udcff name'")
        store.write([letter])
        stored = store.get(letter.id)
        assert stored.record == record
        assert stored.message.startswith("bad name 'bad")


class TestFidelityFallback:
    def test_unpicklable_record_falls_back_to_json(
        self, store: DeadLetterStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        record = {"id": 5, "lock": threading.Lock(), "when": date(2024, 1, 2)}
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            store.write([dead(record, source_offset=[1, 2])])
        assert "cannot be pickled" in caplog.text
        (stored,) = store.list()
        assert stored.record_exact is False
        assert stored.record["id"] == 5
        assert stored.record["when"] == "datetime.date(2024, 1, 2)"
        assert stored.record["lock"].startswith("<unlocked _thread.lock object")
        assert stored.source_offset == [1, 2]

    def test_what_json_cannot_express_is_rendered_part_by_part(
        self, store: DeadLetterStore
    ) -> None:
        class Local:  # a local class cannot be pickled
            def __repr__(self) -> str:
                return "Local()"

        store.write([dead({(1, 2): Local(), "n": 1, "score": math.nan})])
        (stored,) = store.list()
        assert stored.record_exact is False
        assert stored.record == {"(1, 2)": "Local()", "n": 1, "score": "nan"}

    def test_unrepresentable_record(self, store: DeadLetterStore) -> None:
        class Opaque:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        store.write([dead(Opaque())])
        assert store.list()[0].record == f"<unrepresentable {__name__}.{Opaque.__qualname__}>"

    def test_pickle_that_no_longer_loads_falls_back_to_json(
        self,
        store: DeadLetterStore,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        order = Order(1, datetime(2024, 1, 1, tzinfo=UTC), ())
        store.write([dead(order)])
        monkeypatch.delattr(sys.modules[__name__], "Order")
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            (stored,) = store.list()
        assert "cannot be loaded here" in caplog.text
        assert stored.record_exact is False
        assert stored.record == {
            "__type__": f"{__name__}.Order",
            "id": 1,
            "placed": repr(order.placed),
            "lines": [],
        }

    def test_a_json_only_letter_stays_json_only(self, store: DeadLetterStore) -> None:
        letter = dataclasses.replace(dead({"n": [1, 2]}), record_exact=False)
        store.write([letter])
        assert store.list() == [letter]


class TestLifecycle:
    def test_context_manager_closes(self, kind: str, tmp_path: Path) -> None:
        with make_opener(kind, tmp_path)() as store:
            store.write([dead()])
        with pytest.raises(DeadLetterStoreError, match="closed"):
            store.list()

    def test_every_operation_on_a_closed_store_raises(self, store: DeadLetterStore) -> None:
        letter = dead()
        store.write([letter])
        store.close()
        store.close()  # harmless
        for operation in (
            lambda: store.write([dead()]),
            store.list,
            store.count,
            lambda: store.get(letter.id),
            lambda: store.mark_replayed([letter.id]),
        ):
            with pytest.raises(DeadLetterStoreError, match=r"the store is closed") as info:
                operation()
            assert info.value.store == store.description

    async def test_usable_from_worker_threads(self, store: DeadLetterStore) -> None:
        letters = [dead({"n": i}) for i in range(6)]
        await asyncio.gather(*(asyncio.to_thread(store.write, [letter]) for letter in letters))
        listed = await asyncio.to_thread(store.list)
        assert sorted(letter.id for letter in listed) == sorted(x.id for x in letters)


# -- concurrency ------------------------------------------------------------------------------

THREADS = 8
WRITES_PER_THREAD = 15
BATCH = 3


def hammer(open_store: Callable[[int], DeadLetterStore], *, close: bool) -> set[str]:
    written: list[list[str]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def worker(index: int) -> None:
        try:
            target = open_store(index)
            barrier.wait()
            for write in range(WRITES_PER_THREAD):
                batch = [dead({"t": index, "w": write, "i": i}) for i in range(BATCH)]
                target.write(batch)
                written[index].extend(letter.id for letter in batch)
            if close:
                target.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    return {id for ids in written for id in ids}


class TestConcurrency:
    def test_threads_sharing_one_store_lose_nothing(self, store: DeadLetterStore) -> None:
        ids = hammer(lambda _: store, close=False)
        assert len(ids) == THREADS * WRITES_PER_THREAD * BATCH
        assert {letter.id for letter in store.list()} == ids
        assert store.count() == len(ids)

    def test_one_store_per_thread_on_one_file_loses_nothing(
        self, file_kind: str, tmp_path: Path
    ) -> None:
        opener = make_opener(file_kind, tmp_path)
        ids = hammer(lambda _: opener(), close=True)
        with opener() as store:
            stored = store.list()
        assert {letter.id for letter in stored} == ids
        assert len(stored) == len(ids)
        per_thread = [[r["w"] for r in records(stored) if r["t"] == t] for t in range(THREADS)]
        for writes in per_thread:  # each thread's letters keep its order
            assert writes == sorted(writes)


# -- persistence and failures of the file stores -------------------------------------------


class TestFileStores:
    def test_letters_and_marks_survive_reopening(self, file_kind: str, tmp_path: Path) -> None:
        opener = make_opener(file_kind, tmp_path)
        letters = [dead(Order(i, datetime(2024, 1, 1, tzinfo=UTC), ())) for i in range(3)]
        with opener() as store:
            store.write(letters)
            store.mark_replayed([letters[1].id])
        with opener() as store:
            assert store.list() == [letters[0], letters[2]]
            assert store.get(letters[1].id).replayed is True
            store.write([dead({"later": True})])
        with opener() as store:
            assert store.count(include_replayed=True) == 4

    def test_parent_folders_are_created(self, file_kind: str, tmp_path: Path) -> None:
        path = tmp_path / "a" / "b" / ("dlq.jsonl" if file_kind == "jsonl" else "dlq.sqlite")
        with open_dead_letter_store(path) as store:
            store.write([dead()])
        assert path.is_file()
        assert store.description == str(path)

    def test_a_location_under_a_regular_file_fails_at_once(
        self, file_kind: str, tmp_path: Path
    ) -> None:
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("I am a file")
        path = blocker / ("dlq.jsonl" if file_kind == "jsonl" else "dlq.db")
        with pytest.raises(DeadLetterStoreError) as info:
            open_dead_letter_store(path)
        assert info.value.store == str(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value.__cause__, OSError)
        assert isinstance(info.value, OSError)


class TestJsonlStore:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "state" / "dlq.jsonl"

    def test_lines_are_readable_json(self, path: Path) -> None:
        letter = dead({"id": 3, "when": date(2024, 1, 2)}, source_offset=[0, 17])
        with JsonlDeadLetterStore(path) as store:
            store.write([letter])
            assert store.path == path
        (line,) = path.read_text(encoding="utf-8").splitlines()
        obj = json.loads(line)
        assert obj["kind"] == "dead_letter"
        assert obj["v"] == 2
        assert obj["record"] == {"id": 3, "when": "datetime.date(2024, 1, 2)"}
        assert obj["source_offset"] == [0, 17]
        assert obj["error_type"] == "builtins.ValueError"
        assert obj["replayed"] is False
        assert obj["records"] == 1
        assert obj["output"] is None
        record, offset, output = pickle.loads(base64.b64decode(obj["record_pickle"]))
        assert (record, offset, output) == (letter.record, [0, 17], None)

    def test_file_is_append_only(self, path: Path) -> None:
        letters = [dead({"n": i}) for i in range(3)]
        with JsonlDeadLetterStore(path) as store:
            store.write(letters)
            before = path.read_bytes()
            store.mark_replayed([letters[0].id, "unknown"])
            store.mark_replayed([letters[0].id])  # nothing new: no line
        after = path.read_bytes()
        assert after.startswith(before)
        marker = json.loads(after[len(before) :])
        assert marker["kind"] == "replayed"
        assert marker["ids"] == [letters[0].id]
        assert datetime.fromisoformat(marker["at"]).tzinfo is not None

    def test_non_ascii_is_kept_readable(self, path: Path) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"name": "Zoë 🐍", "sep": "a\u2028b"})])
            assert store.list()[0].record == {"name": "Zoë 🐍", "sep": "a\u2028b"}
        assert "Zoë 🐍" in path.read_text(encoding="utf-8")

    def test_a_failed_write_leaves_the_file_as_it_was(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"n": 0})])
            before = path.read_bytes()

            def half_then_disk_full(file: Any, data: bytes) -> None:
                file.write(data[: len(data) // 2])
                raise OSError(28, "No space left on device")

            monkeypatch.setattr(_jsonl, "_write_all", half_then_disk_full)
            with pytest.raises(DeadLetterStoreError, match="No space left") as info:
                store.write([dead({"n": i}) for i in range(1, 4)])
            assert isinstance(info.value.__cause__, OSError)
            assert path.read_bytes() == before
            monkeypatch.undo()
            store.write([dead({"n": 9})])
            assert records(store.list()) == [{"n": 0}, {"n": 9}]

    def test_folder_replaced_by_a_file_fails_loudly(self, tmp_path: Path) -> None:
        folder = tmp_path / "state"
        with JsonlDeadLetterStore(folder / "dlq.jsonl") as store:
            store.write([dead()])
            (folder / "dlq.jsonl").unlink()
            folder.rmdir()
            folder.write_text("now a file")
            with pytest.raises(DeadLetterStoreError, match="cannot write 1 dead letter") as info:
                store.write([dead()])
            assert isinstance(info.value.__cause__, NotADirectoryError)
            with pytest.raises(DeadLetterStoreError, match="cannot list"):
                store.list()

    def test_a_deleted_file_is_an_error_on_read(self, path: Path) -> None:
        with JsonlDeadLetterStore(path) as store:
            path.unlink()
            with pytest.raises(DeadLetterStoreError) as info:
                store.count()
            assert isinstance(info.value.__cause__, FileNotFoundError)

    @pytest.mark.parametrize("tail", [b'{"kind": "dead_le', b"x" * 100_000])
    def test_a_torn_last_line_is_ignored_then_dropped(
        self, path: Path, tail: bytes, caplog: pytest.LogCaptureFixture
    ) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"n": 1})])
            with path.open("ab") as file:
                file.write(tail)
            assert records(store.list()) == [{"n": 1}]
            with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
                store.write([dead({"n": 2})])
            assert "incomplete last line" in caplog.text
            assert records(store.list()) == [{"n": 1}, {"n": 2}]
        assert [json.loads(line)["record"] for line in path.read_bytes().splitlines()] == [
            {"n": 1},
            {"n": 2},
        ]

    def test_a_file_that_is_one_torn_line(self, path: Path) -> None:
        path.parent.mkdir(parents=True)
        path.write_bytes(b'{"kind": "dead')
        with JsonlDeadLetterStore(path) as store:
            assert store.count() == 0
            store.write([dead({"n": 1})])
            assert store.count() == 1
        assert path.read_bytes().startswith(b'{"kind": "dead_letter"')

    def test_a_complete_last_line_without_newline_is_kept(self, path: Path) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"n": 1})])
            path.write_bytes(path.read_bytes().rstrip(b"\n"))  # an editor dropped it
            assert records(store.list()) == [{"n": 1}]
            store.write([dead({"n": 2})])
            assert records(store.list()) == [{"n": 1}, {"n": 2}]
        assert len(path.read_bytes().splitlines()) == 2

    def test_blank_lines_are_skipped(self, path: Path) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"n": 1})])
            with path.open("ab") as file:
                file.write(b"\n  \n")
            store.write([dead({"n": 2})])
            assert store.count() == 2

    @pytest.mark.parametrize(
        ("line", "expected"),
        [
            (b"not json", r"dlq\.jsonl:2: not a JSON object; fix or delete that line"),
            (b"[1, 2]", r"dlq\.jsonl:2: not a JSON object"),
            (b'{"kind": "dead_letter", "v": 3}', r"dlq\.jsonl:2: format version 3"),
            (b'{"kind": "dead_letter", "v": 0}', r"dlq\.jsonl:2: format version 0"),
            (b'{"kind": "dead_letter", "v": 2, "record_pickle": null}', r"without the field"),
            (b'{"kind": "dead_letter"}', r"format version None"),
            (b'{"kind": "surprise", "v": 1}', r"dlq\.jsonl:2: unknown kind 'surprise'"),
            (b'{"kind": "dead_letter", "v": 1}', r"dlq\.jsonl:2: dead letter without the field"),
        ],
    )
    def test_a_corrupt_line_is_an_error_naming_it(
        self, path: Path, line: bytes, expected: str
    ) -> None:
        with JsonlDeadLetterStore(path) as store:
            store.write([dead({"n": 1})])
            with path.open("ab") as file:
                file.write(line + b"\n")
            store.write([dead({"n": 2})])
            with pytest.raises(DeadLetterStoreError, match=expected) as info:
                store.list()
            assert isinstance(info.value.__cause__, ValueError)

    def test_write_all_refuses_a_stuck_file(self) -> None:
        class Stuck:
            name = "stuck"

            def write(self, data: object) -> int:
                return 0

        with pytest.raises(OSError, match="no progress"):
            _jsonl._write_all(Stuck(), b"data")  # type: ignore[arg-type]


class TestSqliteStore:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "dlq.db"

    def test_schema_wal_and_index(self, path: Path) -> None:
        with SqliteDeadLetterStore(path) as store:
            store.write([dead({"id": 3})])
            assert store.path == path
            with sqlite3.connect(path) as conn:
                assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
                indexes = conn.execute("PRAGMA index_list(dead_letters)").fetchall()
                names = [row[1] for row in indexes]
                assert "dead_letters_stage_run" in names
                columns = conn.execute("PRAGMA index_info(dead_letters_stage_run)").fetchall()
                assert [row[2] for row in columns] == ["stage", "run_id"]
                (record_json, blob) = conn.execute(
                    "SELECT record_json, record_pickle FROM dead_letters"
                ).fetchone()
            conn.close()
        assert json.loads(record_json) == {"id": 3}
        assert isinstance(blob, bytes)

    def test_write_is_all_or_nothing(self, path: Path) -> None:
        with SqliteDeadLetterStore(path) as store:
            store.write([dead({"n": 0})])
            conn = sqlite3.connect(path)
            conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON dead_letters WHEN NEW.stage = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'boom refused'); END"
            )
            conn.commit()
            conn.close()
            batch = [dead({"n": 1}), dead({"n": 2}, stage="boom"), dead({"n": 3})]
            with pytest.raises(DeadLetterStoreError, match="boom refused") as info:
                store.write(batch)
            big = [dead({"n": n}) for n in range(5, 205)]
            big[150] = dead({"n": 155}, stage="boom")  # in the third statement of 64 rows
            with pytest.raises(DeadLetterStoreError, match="boom refused"):
                store.write(big)
            assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
            assert records(store.list()) == [{"n": 0}]
            store.write([dead({"n": 4})])
            assert records(store.list()) == [{"n": 0}, {"n": 4}]

    def test_a_locked_database_fails_loudly_after_the_timeout(self, path: Path) -> None:
        with SqliteDeadLetterStore(path, timeout=0.05) as store:
            blocker = sqlite3.connect(path, isolation_level=None)
            blocker.execute("BEGIN EXCLUSIVE")
            try:
                with pytest.raises(DeadLetterStoreError, match="locked") as info:
                    store.write([dead()])
                assert isinstance(info.value.__cause__, sqlite3.OperationalError)
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            store.write([dead()])
            assert store.count() == 1

    def test_not_a_database(self, path: Path) -> None:
        path.write_bytes(b"this is not SQLite" * 100)
        with pytest.raises(DeadLetterStoreError, match="cannot open the database") as info:
            SqliteDeadLetterStore(path)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)

    def test_a_newer_schema_is_refused(self, path: Path) -> None:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(DeadLetterStoreError, match="schema version 99 is newer"):
            SqliteDeadLetterStore(path)

    def test_many_stores_opening_a_new_file_at_once(self, path: Path) -> None:
        barrier = threading.Barrier(THREADS)
        errors: list[BaseException] = []

        def open_and_write() -> None:
            try:
                barrier.wait()
                with SqliteDeadLetterStore(path) as store:
                    store.write([dead()])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with SqliteDeadLetterStore(path) as store:
            assert store.count() == THREADS

    def test_busy_is_retried_until_the_timeout(self) -> None:
        busy = sqlite3.OperationalError("database is locked")
        busy.sqlite_errorcode = sqlite3.SQLITE_BUSY
        outcomes: list[Any] = [busy, busy, "opened"]

        def flaky() -> str:
            outcome = outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return str(outcome)

        assert _sqlite.retry_while_busy(flaky, timeout=5.0) == "opened"
        outcomes[:] = [busy] * 1000
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            _sqlite.retry_while_busy(flaky, timeout=0.02)

    def test_other_errors_are_not_retried(self) -> None:
        calls = []

        def broken() -> None:
            calls.append(1)
            raise sqlite3.OperationalError("no such table: x")

        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            _sqlite.retry_while_busy(broken, timeout=5.0)
        assert calls == [1]

    def test_the_row_hook_writes_the_same_rows(self, path: Path) -> None:
        class ViaRows(SqliteDeadLetterStore):
            _write = DeadLetterStore._write  # encode to EncodedLetter rows, then _append

        letters = [dead({"n": n}, records=n + 1, output=[n]) for n in range(70)]
        letters.append(dataclasses.replace(dead(), message="bad \udcff"))
        with ViaRows(path) as store:
            store.write(letters)
        with SqliteDeadLetterStore(path) as store:
            assert store.list()[:70] == letters[:70]
            assert store.get(letters[70].id).message == "bad \\udcff"

    def test_lone_surrogates_in_text_columns_are_escaped(self, path: Path) -> None:
        letter = dataclasses.replace(dead(), message="file \udcff.csv")
        with SqliteDeadLetterStore(path) as store:
            store.write([letter])
            assert store.get(letter.id).message == "file \\udcff.csv"


# -- a store of your own, and errors of its hooks ----------------------------------------------


class BrokenStore(DeadLetterStore):
    """Every hook fails the way a remote database might."""

    @property
    def description(self) -> str:
        return "broken://db"

    def _append(self, rows: list[EncodedLetter]) -> None:
        raise ConnectionError("server went away")

    def _select(self, query: LetterQuery) -> list[EncodedLetter]:
        raise ConnectionError("server went away")

    def _find(self, id: str) -> EncodedLetter | None:
        raise ConnectionError("server went away")

    def _count(self, query: LetterQuery) -> int:
        raise ConnectionError("server went away")

    def _mark_replayed(self, ids: list[str]) -> int:
        raise ConnectionError("server went away")

    def _close(self) -> None:
        raise ConnectionError("server went away")


class TestErrorWrapping:
    @pytest.mark.parametrize(
        ("call", "action"),
        [
            (lambda s: s.write([dead()]), "cannot write 1 dead letter(s)"),
            (lambda s: s.list(), "cannot list dead letters"),
            (lambda s: s.get("x"), "cannot read dead letter 'x'"),
            (lambda s: s.count(), "cannot count dead letters"),
            (lambda s: s.mark_replayed(["x"]), "cannot mark 1 dead letter(s) replayed"),
            (lambda s: s.close(), "cannot close"),
        ],
    )
    def test_any_failure_becomes_a_store_error_with_its_cause(
        self, call: Callable[[DeadLetterStore], object], action: str
    ) -> None:
        with pytest.raises(DeadLetterStoreError) as info:
            call(BrokenStore())
        assert str(info.value) == (
            f"dead-letter store broken://db: {action}: ConnectionError: server went away"
        )
        assert info.value.store == "broken://db"
        assert isinstance(info.value.__cause__, ConnectionError)

    def test_store_errors_pass_through_unwrapped(self) -> None:
        error = DeadLetterStoreError("inner", "already explained")

        class Explaining(MemoryDeadLetterStore):
            def _count(self, query: LetterQuery) -> int:
                raise error

        with pytest.raises(DeadLetterStoreError) as info:
            Explaining().count()
        assert info.value is error

    def test_encoded_letter_is_plain_data(self) -> None:
        fields = {f.name for f in dataclasses.fields(EncodedLetter)}
        assert "record_pickle" in fields
        assert "record_json" in fields


# -- open_dead_letter_store -------------------------------------------------------------------


class TestOpen:
    @pytest.mark.parametrize("spec", ["memory", "memory:", " MEMORY "])
    def test_memory(self, spec: str) -> None:
        with open_dead_letter_store(spec) as store:
            assert isinstance(store, MemoryDeadLetterStore)
            assert store.description == "memory"

    @pytest.mark.parametrize(
        ("name", "expected"),
        [
            ("dlq.jsonl", JsonlDeadLetterStore),
            ("DLQ.JSONL", JsonlDeadLetterStore),
            ("dlq.db", SqliteDeadLetterStore),
            ("dlq.sqlite", SqliteDeadLetterStore),
            ("dlq.sqlite3", SqliteDeadLetterStore),
            ("dead.letters.Sqlite3", SqliteDeadLetterStore),
        ],
    )
    def test_files_by_suffix(self, tmp_path: Path, name: str, expected: type) -> None:
        for spec in (str(tmp_path / name), tmp_path / "p" / name):
            with open_dead_letter_store(spec) as store:
                assert type(store) is expected
                assert store.description == str(spec)

    def test_home_is_expanded(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOME", str(tmp_path))
        with open_dead_letter_store("~/state/dlq.db") as store:
            assert store.description == str(tmp_path / "state" / "dlq.db")

    @pytest.mark.parametrize("spec", ["", "dlq", "dlq.json", "state/dlq.parquet", "memory.db/x"])
    def test_anything_else_is_refused_naming_the_forms(self, spec: str) -> None:
        with pytest.raises(ValueError, match="unknown dead-letter store") as info:
            open_dead_letter_store(spec)
        message = str(info.value)
        assert repr(spec) in message
        for form in ("'memory'", ".jsonl", ".db", ".sqlite", ".sqlite3"):
            assert form in message


# -- property: whatever JSON-like records go in come out, in order ------------------------------

json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@pytest.mark.parametrize("store_kind", KINDS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(json_like, max_size=5), max_size=4))
def test_write_then_list_returns_the_records_in_order(
    store_kind: str, batches: list[list[Any]]
) -> None:
    with tempfile.TemporaryDirectory() as folder, make_opener(store_kind, Path(folder))() as store:
        letters = [[dead(record) for record in batch] for batch in batches]
        for batch in letters:
            store.write(batch)
        flat = [letter for batch in letters for letter in batch]
        listed = store.list()
        assert records(listed) == [letter.record for letter in flat]
        assert listed == flat
        assert store.count() == len(flat)


# -- records and output ------------------------------------------------------------------------


class Unrepresentable:
    """Cannot be pickled (holds a lock) nor repr()'d, but has fields."""

    def __init__(self, id: int) -> None:
        self.id = id
        self.email = "ada@example.com"
        self.lock = threading.Lock()

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class TestRecordsAndOutput:
    def test_they_come_back_exactly(self, store: DeadLetterStore) -> None:
        group = [Order(i, datetime(2024, 1, 1, tzinfo=UTC), ()) for i in range(3)]
        output = {"total": decimal.Decimal("-1.50"), "lines": (1, 2)}
        letter = dead(group, records=3, output=output)
        plain = dead({"n": 1})
        store.write([letter, plain])
        stored = store.get(letter.id)
        assert (stored.record, stored.records, stored.output) == (group, 3, output)
        assert type(stored.output["lines"]) is tuple
        assert stored == letter
        assert (store.get(plain.id).records, store.get(plain.id).output) == (1, None)

    def test_an_unpicklable_output_falls_back_to_json_with_the_record(
        self, store: DeadLetterStore, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            store.write([dead({"id": 1}, output={"lock": threading.Lock(), "n": 2}, records=2)])
        assert "or its output (builtins.dict) cannot be pickled" in caplog.text
        (stored,) = store.list()
        assert stored.record_exact is False
        assert stored.record == {"id": 1}
        assert stored.records == 2
        assert stored.output["n"] == 2
        assert stored.output["lock"].startswith("<unlocked _thread.lock object")

    def test_a_record_neither_picklable_nor_representable_keeps_its_fields(
        self, store: DeadLetterStore
    ) -> None:
        store.write([dead(Unrepresentable(5), output=[Unrepresentable(6)])])
        (stored,) = store.list()
        assert stored.record_exact is False
        assert stored.record["__type__"] == f"{__name__}.Unrepresentable"
        assert (stored.record["id"], stored.record["email"]) == (5, "ada@example.com")
        assert stored.record["lock"].startswith("<unlocked _thread.lock object")
        assert stored.output[0]["id"] == 6


class TestCodec:
    def test_a_pickle_of_the_earlier_two_fields_still_decodes(self) -> None:
        letter = dead({"n": 1}, source_offset=4)
        row = dataclasses.replace(
            _codec.encode(letter), record_pickle=pickle.dumps(({"n": 1}, 4)), output_json="null"
        )
        decoded = _codec.decode(row)
        assert (decoded.record, decoded.source_offset, decoded.output) == ({"n": 1}, 4, None)
        assert decoded.record_exact is True

    def test_a_pickle_of_something_else_falls_back_to_json(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        row = dataclasses.replace(_codec.encode(dead({"n": 1})), record_pickle=pickle.dumps(7))
        with caplog.at_level(logging.WARNING, logger="conveyor.dlq"):
            decoded = _codec.decode(row)
        assert "expected (record, source_offset, output), got builtins.int" in caplog.text
        assert (decoded.record, decoded.record_exact) == ({"n": 1}, False)

    def test_encode_values_follow_the_field_order(self) -> None:
        letter = dead({"n": 1}, records=2, output=[1])
        assert _codec.EncodedLetter(*_codec.encode_values(letter)) == _codec.encode(letter)
        assert _codec.decode(_codec.encode(letter)) == letter

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            (None, "null"),
            (7, "7"),
            (True, "true"),
            ("é", '"é"'),
            ({"a": (1, 2.5)}, '{"a": [1, 2.5]}'),
            ({"n": math.nan}, '{"n": "nan"}'),
        ],
    )
    def test_json_text(self, value: Any, text: str) -> None:
        assert _codec.json_text(value) == text

    def test_json_text_of_a_cycle(self) -> None:
        looping: list[Any] = []
        looping.append(looping)
        assert json.loads(_codec.json_text(looping)) == ["<cycle: builtins.list>"]


# -- schema and format versions ----------------------------------------------------------------

V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    stage         TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    attempts      INTEGER NOT NULL,
    error_type    TEXT    NOT NULL,
    message       TEXT    NOT NULL,
    traceback     TEXT    NOT NULL,
    created_at    TEXT    NOT NULL,
    source_offset TEXT    NOT NULL,
    record_json   TEXT    NOT NULL,
    record_pickle BLOB,
    replayed      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dead_letters_stage_run ON dead_letters (stage, run_id);
"""

V1_COLUMNS = (
    "id, stage, run_id, attempts, error_type, message, traceback, created_at, "
    "source_offset, record_json, record_pickle, replayed"
)


def make_v1_file(path: Path) -> None:
    """A dead-letter file as Conveyor wrote it before version 2: two letters."""
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.execute(
        f"INSERT INTO dead_letters ({V1_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            "a" * 32,
            "parse",
            "r0",
            2,
            "builtins.ValueError",
            "bad",
            "Traceback ...",
            "2024-05-01T12:00:00+00:00",
            "[0, 1]",
            '{"n": 1}',
            pickle.dumps(((1, "exact"), [0, 1])),
            0,
        ),
    )
    conn.execute(
        f"INSERT INTO dead_letters ({V1_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            "b" * 32,
            "load",
            "r0",
            1,
            "builtins.KeyError",
            "'x'",
            "Traceback ...",
            "2024-05-01T12:00:01+00:00",
            "null",
            '{"json": "only"}',
            None,
            1,
        ),
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def columns(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [row[1] for row in conn.execute("PRAGMA table_info(dead_letters)")]
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


class TestSqliteSchemaVersions:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "dlq.db"

    def test_a_new_file_is_version_2(self, path: Path) -> None:
        with SqliteDeadLetterStore(path) as store:
            store.write([dead(records=2, output={"o": 1})])
        assert user_version(path) == 2
        assert columns(path)[-2:] == ["records", "output_json"]
        conn = sqlite3.connect(path)
        assert conn.execute("SELECT records, output_json FROM dead_letters").fetchall() == [
            (2, '{"o": 1}')
        ]
        conn.close()

    def test_a_version_1_file_is_upgraded_in_place(self, path: Path) -> None:
        make_v1_file(path)
        assert "records" not in columns(path)
        with SqliteDeadLetterStore(path) as store:
            exact, json_only = store.list(include_replayed=True)
            new = dead({"n": 9}, records=3, output=[1, 2])
            store.write([new])
            assert store.get(new.id) == new
        assert user_version(path) == 2
        assert columns(path)[-2:] == ["records", "output_json"]
        assert (exact.id, exact.record, exact.source_offset) == ("a" * 32, (1, "exact"), [0, 1])
        assert (exact.records, exact.output, exact.record_exact) == (1, None, True)
        assert (exact.stage, exact.attempts, exact.message) == ("parse", 2, "bad")
        assert exact.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        assert (json_only.record, json_only.records, json_only.output) == (
            {"json": "only"},
            1,
            None,
        )
        assert (json_only.record_exact, json_only.replayed) == (False, True)
        with SqliteDeadLetterStore(path) as reopened:
            assert reopened.count(include_replayed=True) == 3
            assert reopened.list(stage="load", include_replayed=True) == [json_only]

    def test_many_stores_upgrading_one_version_1_file_at_once(self, path: Path) -> None:
        make_v1_file(path)
        barrier = threading.Barrier(THREADS)
        errors: list[BaseException] = []

        def open_and_write() -> None:
            try:
                barrier.wait()
                with SqliteDeadLetterStore(path) as store:
                    store.write([dead(records=2)])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_and_write) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert columns(path).count("records") == 1
        with SqliteDeadLetterStore(path) as store:
            assert store.count(include_replayed=True) == THREADS + 2

    def test_the_next_version_is_refused_untouched(self, path: Path) -> None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE dead_letters (seq INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
        conn.close()
        with pytest.raises(DeadLetterStoreError, match="schema version 3 is newer than") as info:
            SqliteDeadLetterStore(path)
        assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
        assert user_version(path) == 3
        assert columns(path) == ["seq"]


class TestJsonlFormatVersions:
    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "dlq.jsonl"

    def test_version_2_lines_carry_records_and_output(self, path: Path) -> None:
        letter = dead({"n": 1}, records=4, output={"total": math.inf})
        with JsonlDeadLetterStore(path) as store:
            store.write([letter])
            assert store.get(letter.id) == letter
        obj = json.loads(path.read_text(encoding="utf-8"))
        assert (obj["v"], obj["records"], obj["output"]) == (2, 4, {"total": "inf"})

    def test_version_1_lines_are_still_read(self, path: Path) -> None:
        v1 = {
            "kind": "dead_letter",
            "v": 1,
            "id": "c" * 32,
            "created_at": "2024-05-01T12:00:00+00:00",
            "run_id": "r0",
            "stage": "parse",
            "attempts": 1,
            "error_type": "builtins.ValueError",
            "message": "bad",
            "source_offset": 3,
            "record": {"n": 1},
            "traceback": "Traceback ...",
            "record_pickle": base64.b64encode(pickle.dumps(({"n": 1}, 3))).decode("ascii"),
            "replayed": False,
        }
        marker = {"kind": "replayed", "v": 1, "ids": ["d" * 32], "at": "2024-05-01T13:00:00Z"}
        json_only = {**v1, "id": "d" * 32, "record_pickle": None, "record": ["j"]}
        lines = [json.dumps(obj) for obj in (v1, json_only, marker)]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        with JsonlDeadLetterStore(path) as store:
            old, old_json = store.list(include_replayed=True)
            store.write([dead({"n": 2}, records=2)])
            assert store.count(include_replayed=True) == 3
        assert (old.record, old.source_offset, old.records, old.output) == ({"n": 1}, 3, 1, None)
        assert old.record_exact is True
        assert (old_json.record, old_json.records, old_json.output) == (["j"], 1, None)
        assert (old_json.record_exact, old_json.replayed) == (False, True)


# -- the file deleted or replaced during the run ----------------------------------------------


def file_store(kind: str, path: Path) -> DeadLetterStore:
    return JsonlDeadLetterStore(path) if kind == "jsonl" else SqliteDeadLetterStore(path)


class TestDeletedOrReplacedFile:
    @pytest.fixture
    def path(self, file_kind: str, tmp_path: Path) -> Path:
        return tmp_path / "state" / ("dlq.jsonl" if file_kind == "jsonl" else "dlq.db")

    def assert_lost(self, info: pytest.ExceptionInfo[DeadLetterStoreError], path: Path) -> None:
        message = str(info.value)
        assert info.value.store == str(path)
        assert f"the file {path} was deleted or replaced during the run" in message
        assert "the letters of this batch were not stored, so the run must stop" in message

    def test_repeated_writes_work(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            for n in range(20):
                store.write([dead({"n": n}), dead({"n": -n})])
            store.mark_replayed([store.list()[0].id])
            assert store.count(include_replayed=True) == 40

    def test_file_deleted_between_two_writes(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            store.write([dead({"n": 1})])
            path.unlink()
            with pytest.raises(DeadLetterStoreError, match="cannot write 2 dead letter") as info:
                store.write([dead({"n": 2}), dead({"n": 3})])
            self.assert_lost(info, path)
            assert "(it is gone)" in str(info.value)
            assert not path.exists()  # not created again
            with pytest.raises(DeadLetterStoreError, match="deleted or replaced"):
                store.write([dead({"n": 4})])  # and still refused
            assert not path.exists()

    def test_folder_deleted(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            store.write([dead({"n": 1})])
            shutil.rmtree(path.parent)
            with pytest.raises(DeadLetterStoreError) as info:
                store.write([dead({"n": 2})])
            self.assert_lost(info, path)
            assert not path.parent.exists()

    def test_file_replaced_by_another(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            store.write([dead({"n": 1})])
            other = path.with_name("other")
            other.write_bytes(b"someone else's file\n")
            os.replace(other, path)
            with pytest.raises(DeadLetterStoreError) as info:
                store.write([dead({"n": 2})])
            self.assert_lost(info, path)
            assert "(another file is at its path now)" in str(info.value)
            assert path.read_bytes() == b"someone else's file\n"

    def test_mark_replayed_after_the_file_was_deleted(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            letter = dead()
            store.write([letter])
            path.unlink()
            with pytest.raises(DeadLetterStoreError) as info:
                store.mark_replayed([letter.id])
            assert "cannot mark 1 dead letter(s) replayed: the file" in str(info.value)
            assert "the replay marks were not stored, so the run must stop" in str(info.value)

    def test_a_store_opened_again_starts_a_fresh_file(self, file_kind: str, path: Path) -> None:
        with file_store(file_kind, path) as store:
            store.write([dead({"n": 1})])
            shutil.rmtree(path.parent)
            with pytest.raises(DeadLetterStoreError):
                store.write([dead({"n": 2})])
        with file_store(file_kind, path) as fresh:
            assert fresh.count() == 0
            fresh.write([dead({"n": 3})])
            fresh.write([dead({"n": 4})])
            assert records(fresh.list()) == [{"n": 3}, {"n": 4}]
        with file_store(file_kind, path) as reopened:
            assert records(reopened.list()) == [{"n": 3}, {"n": 4}]

    def test_a_file_deleted_while_a_write_is_in_progress(
        self, file_kind: str, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Deleted after the check before writing: the check after writing catches it."""
        with file_store(file_kind, path) as store:
            store.write([dead({"n": 1})])
            module: Any = _jsonl if file_kind == "jsonl" else _sqlite
            real = module.check_same_file
            calls = []

            def delete_after_the_first_check(*args: Any) -> None:
                real(*args)
                calls.append(1)
                if len(calls) == 1 and file_kind == "sqlite":
                    path.unlink()

            monkeypatch.setattr(module, "check_same_file", delete_after_the_first_check)
            if file_kind == "jsonl":  # its first check is on the open file itself
                real_write = _jsonl._write_all

                def write_then_delete(file: Any, data: bytes) -> None:
                    real_write(file, data)
                    path.unlink()

                monkeypatch.setattr(_jsonl, "_write_all", write_then_delete)
            with pytest.raises(DeadLetterStoreError) as info:
                store.write([dead({"n": 2})])
            self.assert_lost(info, path)
