"""A damaged checkpoint is refused, never silently replaced by a start from zero.

A real checkpoint is made by a run that fails midway (its source raises after a few
checkpoints), in the default SQLite store and in a SQLite sink's own database. Then, 100
times, a copy of it is damaged at random and a run with ``resume=True`` must raise a
:class:`~conveyor.errors.CheckpointError` naming the store and the cause, before it writes
anything: the payload truncated, a byte of it flipped, the pipeline name replaced (with or
without a matching checksum), the stage-list fingerprint replaced or the stage list changed,
the source changed, a future ``format`` with a valid checksum, a field missing or of the
wrong type with a valid checksum. Truncating the database file itself is a separate test
(``test_truncated_store_file_is_refused``).

In process and fast: no child runs here.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _faultkit import record_figures

from conveyor import MapStage, Pipeline
from conveyor.connectors.sql import SqliteSink
from conveyor.core.checkpoint import CHECKPOINT_FORMAT, SqliteCheckpointStore
from conveyor.errors import CheckpointError

N = 3_000
FAIL_AT = 2_000
TRIALS = 100
NAME = "damage"


def work(r: dict[str, Any]) -> dict[str, Any]:
    if r["id"] % 100 == 13:
        raise ValueError("1% fail")
    return {"id": r["id"], "v": r["v"] + 1}


def other_work(r: dict[str, Any]) -> dict[str, Any]:
    return work(r)


def source(fail_at: int | None = None) -> Iterator[dict[str, Any]]:
    for i in range(N):
        if i == fail_at:
            raise RuntimeError("the source fails midway (as a crash would stop the run)")
        yield {"id": i, "v": i}


def pipeline(stages: str = "same", name: str = NAME) -> Pipeline[Any, Any]:
    if stages == "renamed":
        return Pipeline[Any, Any](name).add_stage(MapStage(work, name="work2"))
    if stages == "other_fn":
        return Pipeline[Any, Any](name).add_stage(MapStage(other_work, name="work"))
    p = Pipeline[Any, Any](name).add_stage(MapStage(work, name="work"))
    if stages == "added":
        p.add_stage(MapStage(other_work, name="extra"))
    return p


class Store:
    """Where the checkpoint lives: the default file store, or a SQLite sink's database."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.db = root / ("checkpoints.db" if kind == "file" else "out.db")
        self.written: list[Any] = []

    @property
    def description(self) -> str:
        """What the error must name."""
        return str(self.db) if self.kind == "file" else f"{self.db} table conveyor_checkpoints"

    def sink(self) -> Any:
        if self.kind == "file":
            return self.written.extend
        return SqliteSink(self.db, "out")

    def run(self, *, stages: str = "same", src: Any = None, fail_at: int | None = None) -> Any:
        return pipeline(stages).run(
            source(fail_at) if src is None else src,
            self.sink(),
            dead_letters=self.root / "dead_letters.db",
            checkpoint=self.root / "checkpoints.db",
            checkpoint_every="500r",
            batch_size=100,
            resume=None if fail_at is not None else True,  # the base run starts afresh
        )

    def payload(self) -> str:
        with sqlite3.connect(self.db) as conn:
            (text,) = conn.execute(
                "SELECT payload FROM conveyor_checkpoints WHERE pipeline LIKE ?", (f"{NAME}%",)
            ).fetchone()
        conn.close()
        return str(text)

    def set_payload(self, value: str | bytes) -> None:
        conn = sqlite3.connect(self.db)
        with conn:
            conn.execute(
                "UPDATE conveyor_checkpoints SET payload = ? WHERE pipeline LIKE ?",
                (value, f"{NAME}%"),
            )
        conn.close()

    def sink_rows(self) -> int:
        if self.kind == "file":
            return len(self.written)
        with sqlite3.connect(self.db) as conn:
            (count,) = conn.execute("SELECT count(*) FROM out").fetchone()
        conn.close()
        return int(count)


def make_base(kind: str, root: Path) -> Store:
    """A real, unfinished checkpoint: the run's source raised at FAIL_AT."""
    store = Store(kind, root)
    with pytest.raises(RuntimeError, match="fails midway"):
        store.run(fail_at=FAIL_AT)
    body = json.loads(store.payload())["checkpoint"]
    assert not body["finished"], body
    assert 0 < body["position"] <= FAIL_AT, body
    assert not list(root.glob("*-wal")), "the base store was not closed cleanly"
    return store


def copy_of(base: Store, root: Path) -> Store:
    root.mkdir(parents=True)
    for path in base.root.iterdir():
        if path.is_file():
            shutil.copy(path, root / path.name)
    return Store(base.kind, root)


def signed(body: dict[str, Any]) -> str:
    """A payload for ``body`` with a checksum that matches (a forgery, or a future
    Conveyor's checkpoint)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return json.dumps(
        {"checkpoint": json.loads(text), "sha256": hashlib.sha256(text.encode()).hexdigest()},
        sort_keys=True,
    )


# -- the corruptions: each damages the copy and returns (what it did, causes accepted) -------

Damage = Callable[[Store, random.Random], tuple[str, tuple[str, ...], dict[str, Any]]]
DAMAGED = "the checkpoint is damaged"


def truncate_payload(
    store: Store, rng: random.Random
) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    text = store.payload()
    cut = rng.randrange(0, len(text))
    store.set_payload(text[:cut])
    return f"payload cut to {cut} of {len(text)} chars", ("truncated or corrupted",), {}


def flip_byte(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    raw = bytearray(store.payload().encode())
    original = json.loads(raw)
    while True:  # a flip that leaves the same JSON (a space made a tab) damages nothing
        at, mask = rng.randrange(len(raw)), rng.randrange(1, 256)
        flipped = bytearray(raw)
        flipped[at] ^= mask
        try:
            same = json.loads(flipped.decode()) == original
        except (ValueError, UnicodeDecodeError):
            same = False
        if not same:
            break
    try:
        value: str | bytes = flipped.decode()
    except UnicodeDecodeError:
        value = bytes(flipped)  # not UTF-8 any more: stored as the raw bytes
    store.set_payload(value)
    return f"byte {at} of {len(raw)} ^ {mask:#04x}", (DAMAGED, "cannot be read"), {}


def body_of(store: Store) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(store.payload())["checkpoint"]
    return body


def wrong_pipeline(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    body = body_of(store)
    body["pipeline"] = rng.choice(["other", "damage2", "Damage", "damage "])
    if rng.random() < 0.5:
        store.set_payload(signed(body))
        return f"pipeline name {body['pipeline']!r}, signed", ("of another pipeline",), {}
    outer = json.loads(store.payload())
    outer["checkpoint"] = body
    store.set_payload(json.dumps(outer, sort_keys=True))
    return f"pipeline name {body['pipeline']!r}, old checksum", ("checksum does not match",), {}


def wrong_fingerprint(
    store: Store, rng: random.Random
) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    body = body_of(store)
    body["fingerprint"] = f"{rng.getrandbits(64):016x}"
    store.set_payload(signed(body))
    return f"fingerprint {body['fingerprint']}, signed", ("different stage list",), {}


def changed_stages(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    stages = rng.choice(["renamed", "added", "other_fn"])
    return f"the stage list {stages}", ("different stage list",), {"stages": stages}


def other_source(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    return (
        "a list as source, not a generator",
        ("of another source",),
        {"src": [{"id": i, "v": i} for i in range(N)]},
    )


def future_format(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    body = body_of(store)
    body["format"] = CHECKPOINT_FORMAT + rng.randint(1, 1000)
    store.set_payload(signed(body))
    return f"format {body['format']}, signed", ("newer than this Conveyor",), {}


def bad_field(store: Store, rng: random.Random) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    body = body_of(store)
    wrong = {"position": -1, "done": "all", "read": "x", "records": [1], "runs": 3}
    if rng.random() < 0.5:
        key = rng.choice(sorted(body))
        how = "missing"
        del body[key]
    else:
        # (only fields that are checked: run_id, pipeline, ... are taken through str())
        key = rng.choice(sorted(wrong))
        how = f"= {wrong[key]!r}"
        body[key] = wrong[key]
    store.set_payload(signed(body))
    return f"{key} {how}, signed", ("a field is missing or of the wrong type",), {}


DAMAGES: list[Damage] = [
    truncate_payload,
    flip_byte,
    wrong_pipeline,
    wrong_fingerprint,
    changed_stages,
    other_source,
    future_format,
    bad_field,
]


def test_a_clean_copy_resumes(tmp_path: Path) -> None:
    """The control: the base checkpoint, undamaged, is resumed (so refusals are the damage's)."""
    for kind in ("file", "sqlite"):
        base = make_base(kind, tmp_path / kind / "base")
        copy = copy_of(base, tmp_path / kind / "copy")
        report = copy.run()
        assert report.resume is not None
        assert report.resume.position > 0
        assert report.checkpoint is not None
        assert report.checkpoint.finished


def test_the_store_is_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = SqliteCheckpointStore(tmp_path / "checkpoints.db")
    try:
        assert store.pragmas() == {"journal_mode": "wal", "synchronous": 2}
    finally:
        store.close()


def test_100_random_damages_are_all_refused(tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    print(f"[faults] damage: seed {seed}")
    bases = {kind: make_base(kind, tmp_path / f"base_{kind}") for kind in ("file", "sqlite")}
    plan = [DAMAGES[i % len(DAMAGES)] for i in range(TRIALS)]
    rng.shuffle(plan)
    refused, kinds, problems = 0, {}, []
    for trial, damage in enumerate(plan):
        kind = rng.choice(["file", "sqlite"])
        store = copy_of(bases[kind], tmp_path / f"trial{trial:03d}")
        what, causes, run_args = damage(store, rng)
        label = f"trial {trial} ({kind} store, {damage.__name__}: {what}; seed {seed})"
        kinds[damage.__name__] = kinds.get(damage.__name__, 0) + 1
        rows_before = store.sink_rows()
        try:
            store.run(**run_args)
        except CheckpointError as exc:
            message = str(exc)
            if store.description not in message:
                problems.append(f"{label}: the message does not name the store: {message}")
            elif not any(cause in message for cause in causes):
                problems.append(f"{label}: the message does not name the cause {causes}: {message}")
            elif store.sink_rows() != rows_before:
                problems.append(f"{label}: refused, but only after writing rows")
            else:
                refused += 1
            continue
        problems.append(f"{label}: NOT refused, the run went ahead")
    print(f"[faults] damage kinds: {kinds}")
    record_figures(
        "checkpoint-damage/payload",
        trials=TRIALS,
        refused=refused,
        kinds=kinds,
        problems=len(problems),
        seed=seed,
    )
    assert not problems, "\n".join(problems)
    assert refused == TRIALS


TRUNCATIONS = 20


def test_truncated_store_file_is_refused(tmp_path: Path) -> None:
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    base = make_base("file", tmp_path / "base")
    size = base.db.stat().st_size
    # 0 bytes and one byte short always; the rest anywhere in the file
    lengths = [0, size - 1, *(rng.randrange(0, size) for _ in range(TRUNCATIONS - 2))]
    print(f"[faults] truncation: seed {seed}, file of {size} bytes, lengths {lengths}")
    refused, accepted = 0, []
    for trial, length in enumerate(lengths):
        store = copy_of(base, tmp_path / f"trial{trial:02d}")
        with store.db.open("r+b") as f:
            f.truncate(length)
        try:
            report = store.run()
        except CheckpointError as exc:
            if store.description not in str(exc):
                accepted.append((length, f"refused without naming the store: {exc}"))
            else:
                refused += 1
            continue
        resumed = report.resume is not None
        accepted.append((length, "resumed" if resumed else "started from zero"))
    record_figures(
        "checkpoint-damage/file-truncation",
        trials=len(lengths),
        refused=refused,
        accepted=len(accepted),
        file_bytes=size,
        seed=seed,
    )
    assert not accepted, (
        f"truncated checkpoint files (seed {seed}, {size} bytes) not refused: {accepted}"
    )
