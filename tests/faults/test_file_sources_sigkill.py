"""SIGKILL in the middle of a run reading a CSV source, then resume to the end: every id
ends exactly once in the sink (SQLite, exactly once) or the dead-letter queue.

The child (below, run by the :mod:`_faultkit` chain) reads ``N`` rows ``id,v,note`` from a
glob of CSV files with :class:`~conveyor.connectors.CsvSource` typed by a model; some rows
are malformed (a ``v`` that is not a number, a missing field: rejected by the source, dead
letters of its row ``FILE:LINE: reason``), some have a quoted note spanning two lines, and
the map stage ``work`` refuses ``id % 100 == 13``. The first run is killed with SIGKILL once
the sink has committed a random number of rows; resumes run to the end (they seek the
source to the checkpoint's offset: the files are not read again). Then the oracle: the
sink's ids, the stage's letters and the source's letters are disjoint, without duplicates,
together every id; each letter set is exactly the records it should hold.

Sizes: 3 trials over 20,000 rows; ``CONVEYOR_FAULTS=full``: 10 trials over 200,000. The
seed is printed; ``CONVEYOR_FAULTS_SEED=<seed>`` repeats it.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import pytest
from _faultkit import CHILD_RESUMED, FULL, chain, record_figures, value_of

from conveyor.dlq import open_dead_letter_store

N = 200_000 if FULL else 20_000
TRIALS = 10 if FULL else 3
SEED = int(os.environ.get("CONVEYOR_FAULTS_SEED") or random.SystemRandom().randrange(2**32))

pytestmark = pytest.mark.timeout(3600 if FULL else 600)

CHILD = (
    r"""
import json, sys, time

cfg = json.loads(sys.argv[1])

from pydantic import BaseModel

from conveyor import MapStage, Pipeline
from conveyor.connectors import CsvSource
from conveyor.connectors.sql import SqliteSink
from conveyor.errors import CheckpointError, ResumeRequired

PAUSE = cfg.get("pause")


class Row(BaseModel):
    id: int
    v: int
    note: str | None


def work(row):
    if row.id % 100 == 13:
        raise ValueError(f"record {row.id} is bad (1% fail, deterministic)")
    if PAUSE and row.id % PAUSE[0] == 0:
        time.sleep(PAUSE[1])
    return {"id": row.id, "v": row.v + 1}


def go(resume):
    return Pipeline(cfg["pipeline"]).add_stage(MapStage(work, name="work")).run(
        CsvSource(cfg["csv"], model=Row),
        SqliteSink(cfg["path"], cfg["table"]),
        dead_letters=cfg["dlq"],
        checkpoint=True,
        checkpoint_every=cfg["every"],
        resume=resume,
        batch_size=cfg["batch_size"],
        max_dead_letters="100%",
    )


"""
    + CHILD_RESUMED
    + r"""

try:
    report = resumed(go)
except (ResumeRequired, CheckpointError) as exc:
    print("RESULT " + json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(5)
cp, resume = report.checkpoint, report.resume
print("RESULT " + json.dumps({
    "status": report.status.value,
    "records_in": report.records_in,
    "replayed": report.replayed,
    "resumed": None if resume is None else {
        "position": resume.position, "skipped": resume.skipped, "seeked": resume.seeked,
        "offset": resume.offset,
    },
    "checkpoint": {"finished": cp.finished, "position": cp.position,
                   "records": dict(cp.records)},
}), flush=True)
"""
)


def bad_value(i: int) -> bool:
    return i % 97 == 5


def bad_fields(i: int) -> bool:
    return i % 89 == 7 and not bad_value(i)


def write_inputs(folder: Path, n: int, files: int) -> None:
    folder.mkdir(parents=True)
    per = -(-n // files)
    for f in range(files):
        lines = ["id,v,note"]
        for i in range(f * per, min(n, (f + 1) * per)):
            v = i * 7 % 1000
            if bad_value(i):
                lines.append(f"{i},not-a-number,")
            elif bad_fields(i):
                lines.append(f"{i}")
            elif i % 50 == 3:
                lines.append(f'{i},{v},"a note\non two lines, quoted"')
            else:
                lines.append(f"{i},{v},NA")
        (folder / f"part-{f:03d}.csv").write_text("\n".join(lines) + "\n")


def letters(dlq: Path) -> tuple[list[int], list[int]]:
    """The ids of the source's letters (from their raw line) and of the stage's."""
    if not dlq.exists():
        return [], []
    with open_dead_letter_store(dlq) as store:
        every = store.list(limit=None)
    source = [int(d.record["raw"].split(",")[0]) for d in every if d.stage == "source"]
    stage = [int(d.record["id"]) for d in every if d.stage == "work"]
    for d in every:
        if d.stage == "source":
            assert d.message.startswith(f"{d.record['file']}:{d.record['line']}: "), d.message
    return source, stage


@pytest.mark.parametrize("trial", range(TRIALS))
def test_a_killed_csv_run_resumes_exactly_once(tmp_path: Path, trial: int) -> None:
    rng = random.Random(f"{SEED}:{trial}")
    files = rng.choice([1, 3, 7])
    write_inputs(tmp_path / "in", N, files)
    options = {
        "csv": str(tmp_path / "in" / "*.csv"),
        "every": rng.choice(["500r", "2000r", "0.05s"]),
        "batch_size": rng.choice([64, 500, 1000]),
        "pause": [100, 0.004 if FULL else 0.008],
    }
    with chain(tmp_path, "sqlite", N, name=f"csvsrc{trial}", seed=SEED, **options) as run:
        run.script.write_text(CHILD, encoding="utf-8")
        target = rng.randint(N // 20, N // 2)
        print(
            f"[faults] csv source trial={trial} seed={SEED} files={files} {options} kill>={target}"
        )
        first = run.start()
        killed = run.kill_when(first, lambda: run.committed() >= target, jitter=0.2)
        last = run.resume_to_end()
        assert last.result is not None, last.describe()
        if killed:
            resumed = last.result["resumed"]
            assert resumed is not None, last.describe()
            assert resumed["seeked"], "the resumed run re-read the files instead of seeking"
            assert resumed["offset"][0].endswith(".csv"), resumed

        rows = run.sink_rows()
        source_ids, stage_ids = letters(run.dlq)
        sink_ids = Counter(i for i, _ in rows)
        assert all(v == value_of(i) for i, v in rows), "a row with a wrong value"
        assert max(sink_ids.values(), default=1) == 1, "an id twice in the sink"
        assert len(source_ids) == len(set(source_ids)), "a source letter twice"
        assert len(stage_ids) == len(set(stage_ids)), "a stage letter twice"
        s, qs, qw = set(sink_ids), set(source_ids), set(stage_ids)
        assert not s & qs, "an id in the sink and a source letter"
        assert not s & qw, "an id in the sink and a stage letter"
        assert not qs & qw, "an id in two letters"
        assert s | qs | qw == set(range(N)), f"lost: {sorted(set(range(N)) - s - qs - qw)[:10]}"
        assert qs == {i for i in range(N) if bad_value(i) or bad_fields(i)}
        assert qw == {i for i in range(N) if i % 100 == 13} - qs
        record_figures(
            "file_sources_sigkill",
            trial=trial,
            seed=SEED,
            n=N,
            files=files,
            killed=killed,
            sink=len(s),
            source_letters=len(qs),
            stage_letters=len(qw),
            replayed=run.replayed(),
        )
