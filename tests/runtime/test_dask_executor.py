"""The dask executor on real clusters (worker processes on 127.0.0.1, no mocks).

The behavioural cases of the stage algebra run on it through the ``mode`` fixture
(``stream-dask``, test_modes.py); these are what is particular to it: a run's own
``LocalCluster`` (started, summarised, closed), hand-off between Dask stages, bounded
tasks in flight, what cannot be pickled, retries and dead letters from workers, hooks,
checkpoints and resume, and stateful stages (refused: they stay on the driver).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")

import _fns

from conveyor import (
    KeyedStage,
    MapStage,
    Pipeline,
    PipelineStage,
    StageOptions,
)
from conveyor.core.options import DaskOptions, RetryPolicy
from conveyor.errors import PipelineDefinitionError
from conveyor.runtime import dask_executor
from conveyor.testing import run_pipeline_on

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def dask(dask_scheduler: str) -> DaskOptions:
    """The session's shared cluster (tests/runtime/conftest.py)."""
    return DaskOptions(scheduler=dask_scheduler, upload=False)


def on_dask(settings: DaskOptions, **changes: Any) -> StageOptions:
    changes.setdefault("concurrency", 2)
    return StageOptions(executor="dask", dask=settings, **changes)


def _children() -> set[int]:
    """Pids of this process's live child processes (Linux /proc)."""
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            command = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"resource_tracker" not in command:  # multiprocessing's, kept for the process
                found.add(int(entry))
    return found


def test_a_run_starts_its_own_local_cluster_and_closes_it() -> None:
    before = _children()
    options = StageOptions(executor="dask", concurrency=2, dask=DaskOptions(workers=2))
    run = run_pipeline_on(
        Pipeline("own").add_stage(MapStage(_fns.square, name="sq"), options=options),
        range(50),
        batch_size=5,
    )
    assert sorted(run.outputs) == [i * i for i in range(50)]
    summary = run.report.summary()
    assert "executor dask: sq on LocalCluster tcp://127.0.0.1:" in summary
    assert "2 worker processes x 1 thread" in summary
    assert "dashboard" in summary
    assert dask_executor.live_sessions() == 0
    deadline = time.monotonic() + 20
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before, "worker processes outlived the run"


def test_the_workers_profiler_is_off_unless_asked_for() -> None:
    assert DaskOptions().profile is False  # its sampling thread costs a CPU-bound stage ~5 %
    options = StageOptions(
        executor="dask", concurrency=2, dask=DaskOptions(workers=1, profile=True)
    )
    run = run_pipeline_on(
        Pipeline("profiled").add_stage(
            MapStage(_fns.worker_profiling, name="profiled"), options=options
        ),
        range(6),
        batch_size=2,
    )
    assert sorted(run.outputs) == [(i, True) for i in range(6)]


def test_a_stage_the_workers_cannot_load_is_refused_and_leaves_no_plugin(
    dask: DaskOptions,
) -> None:
    from distributed import Client

    pipeline = Pipeline("unloadable").add_stage(_fns.UnloadableStage(), options=on_dask(dask))
    with pytest.raises(PipelineDefinitionError, match="cannot be loaded on the Dask workers"):
        run_pipeline_on(pipeline, range(4), batch_size=2)
    with Client(dask.scheduler, set_as_default=False) as client:
        plugins = client.run_on_scheduler(
            lambda dask_scheduler: list(dask_scheduler.worker_plugins)
        )
    assert not [p for p in plugins if p.startswith("conveyor-stage-")], plugins


def test_consecutive_dask_stages_hand_batches_over_on_the_cluster(dask: DaskOptions) -> None:
    pipeline = (
        Pipeline("handoff")
        .add_stage(MapStage(_fns.square, name="sq"), options=on_dask(dask))
        .add_stage(MapStage(_fns.inc, name="inc"), options=on_dask(dask))
    )
    before = dask_executor.transfers()
    run = run_pipeline_on(pipeline, range(60), batch_size=6)
    after = dask_executor.transfers()
    assert sorted(run.outputs) == sorted(i * i + 1 for i in range(60))
    assert after["handed"] - before["handed"] == 10  # every batch of `inc`
    assert after["sent"] - before["sent"] == 10  # only `sq`'s came from the driver
    no_handoff = DaskOptions(scheduler=dask.scheduler, upload=False, handoff=False)
    pipeline = (
        Pipeline("no-handoff")
        .add_stage(MapStage(_fns.square, name="sq"), options=on_dask(no_handoff))
        .add_stage(MapStage(_fns.inc, name="inc"), options=on_dask(no_handoff))
    )
    before = dask_executor.transfers()
    run = run_pipeline_on(pipeline, range(60), batch_size=6)
    assert dask_executor.transfers()["handed"] == before["handed"]
    assert sorted(run.outputs) == sorted(i * i + 1 for i in range(60))


def mark_span(record: dict[str, Any]) -> dict[str, Any]:
    """Writes when its (one-record) batch started and ended on a worker, to a file."""
    start = time.time()
    time.sleep(0.15)
    Path(record["dir"], f"{record['id']}").write_text(f"{start} {time.time()}")
    return {"id": record["id"]}


def test_tasks_in_flight_per_stage_are_bounded(dask: DaskOptions, tmp_path: Path) -> None:
    # The shared cluster has 2 workers x 2 threads: 4 tasks could run at once.
    pipeline = Pipeline("bounded").add_stage(
        MapStage(mark_span, name="span"), options=on_dask(dask)
    )
    records = [{"id": i, "dir": str(tmp_path)} for i in range(12)]
    run = run_pipeline_on(pipeline, records, batch_size=1)
    assert len(run.outputs) == 12
    spans = [tuple(map(float, p.read_text().split())) for p in tmp_path.iterdir()]
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 2  # concurrency=2: two at once, never more


class Holder(PipelineStage[list[int], list[int]]):
    """A stage holding something that cannot be pickled."""

    name = "holder"

    def __init__(self) -> None:
        self.settings = {"lock": threading.Lock()}

    async def process(self, data: list[int], context: Any) -> Any:  # pragma: no cover
        return data


def test_a_stage_that_cannot_be_pickled_is_refused_before_the_run(dask: DaskOptions) -> None:
    pipeline = Pipeline("unpicklable").add_stage(Holder(), options=on_dask(dask))
    with pytest.raises(PipelineDefinitionError) as caught:
        run_pipeline_on(pipeline, range(3))
    message = str(caught.value)
    assert "stage 'holder' uses executor='dask' but cannot be pickled" in message
    assert "its attribute \".settings['lock']\"" in message
    assert dask_executor.live_sessions() == 0


def with_lock(x: int) -> Any:
    return {"id": x, "lock": threading.Lock()} if x == 4 else {"id": x}


def test_a_record_that_cannot_be_pickled_is_a_dead_letter(dask: DaskOptions) -> None:
    # Record 4's output holds a lock: it cannot come back from the worker.
    pipeline = (
        Pipeline("unpicklable-output")
        .add_stage(MapStage(with_lock, name="make"), options=on_dask(dask))
        .add_stage(MapStage(_fns.ident, name="after"), options=on_dask(dask))
    )
    run = run_pipeline_on(pipeline, range(8), batch_size=4)
    assert sorted(r["id"] for r in run.outputs) == [0, 1, 2, 3, 5, 6, 7]
    [letter] = run.dead_letters
    assert letter.record == 4
    assert letter.stage == "make"
    assert "stage 'make' on executor='dask' gave an output[0]['lock']" in letter.message
    run.report.check_conservation()


def test_records_going_to_a_worker_that_cannot_be_pickled_are_dead_letters(
    dask: DaskOptions,
) -> None:
    # Made on the driver (inline), sent to a Dask stage: the record with a lock is lettered
    # by the Dask stage, naming where in the record the lock is.
    pipeline = (
        Pipeline("unpicklable-input")
        .add_stage(MapStage(with_lock, name="make"))
        .add_stage(MapStage(_fns.ident, name="remote"), options=on_dask(dask))
    )
    run = run_pipeline_on(pipeline, range(8), batch_size=4)
    assert sorted(r["id"] for r in run.outputs) == [0, 1, 2, 3, 5, 6, 7]
    [letter] = run.dead_letters
    assert letter.stage == "remote"
    assert letter.error_type.endswith("UnpicklableError")
    assert "a record[0]['lock'] cannot be pickled to the workers" in letter.message


def flaky(record: dict[str, Any]) -> int:
    """Fails with a ConnectionError (transient) the first time it sees a record, on
    whichever worker; bad for good (BadRecordError) on negative values."""
    marker = Path(record["dir"], str(record["v"]))
    if not marker.exists():
        marker.write_text("seen")
        raise ConnectionError(f"first try of {record['v']}")
    return _fns.primes_or_fail(record["v"])


def test_retries_and_dead_letters_come_from_the_workers(dask: DaskOptions, tmp_path: Path) -> None:
    records = [{"v": v, "dir": str(tmp_path)} for v in range(-3, 17)]
    run = run_pipeline_on(
        Pipeline("letters").add_stage(
            MapStage(flaky, name="flaky"),
            options=on_dask(dask, retry=RetryPolicy(attempts=2, backoff=0.0)),
        ),
        records,
        batch_size=5,
    )
    assert sorted(run.outputs) == sorted(_fns.count_primes(v) for v in range(17))
    assert sorted(d.record["v"] for d in run.dead_letters) == [-3, -2, -1]
    assert all(d.error_type.endswith("BadRecordError") for d in run.dead_letters)
    assert all("in primes_or_fail" in d.traceback for d in run.dead_letters)  # worker frames
    assert all(d.attempts == 2 for d in run.dead_letters)
    assert run.report.stage("flaky").retried == 20
    run.report.check_conservation()


def test_hooks_see_each_dask_stage_as_they_do_locally(dask: DaskOptions) -> None:
    seen: list[tuple[str, str, int]] = []

    def before(stage_name: str, data: Any, **_: Any) -> None:
        seen.append(("before", stage_name, len(data)))

    def after(stage_name: str, data: Any, **_: Any) -> None:
        seen.append(("after", stage_name, len(data)))

    pipeline = (
        Pipeline("hooks")
        .add_stage(MapStage(_fns.square, name="sq"), options=on_dask(dask))
        .add_hook("before_stage", before)
        .add_hook("after_stage", after)
    )
    run = run_pipeline_on(pipeline, range(10), batch_size=5)
    assert sorted(run.outputs) == [i * i for i in range(10)]
    assert sorted(seen) == sorted([("before", "sq", 5)] * 2 + [("after", "sq", 5)] * 2)


def failing(record: dict[str, Any]) -> dict[str, Any]:
    if record["id"] % 97 == 13:
        raise ValueError(f"bad record {record['id']}")
    return record


async def test_an_aborted_dask_run_resumes_exactly_once(dask: DaskOptions, tmp_path: Path) -> None:
    import sqlite3

    from conveyor import RunOptions
    from conveyor.connectors import SqliteSink
    from conveyor.core.result import RunStatus
    from conveyor.dlq import open_dead_letter_store
    from conveyor.runtime.runner import StreamRunner

    n = 1_000
    opts = RunOptions(
        dead_letters=tmp_path / "dl.db",
        checkpoint=tmp_path / "cp.db",
        checkpoint_every="100r",
        batch_size=50,
        max_dead_letters="100%",
        stage_options={"check": on_dask(dask, concurrency=3)},
    )

    async def run(abort_at: int | None, resume: bool | None) -> Any:
        box: list[StreamRunner] = []

        def watch(record: dict[str, Any]) -> dict[str, Any]:  # inline, on the driver
            if record["id"] == abort_at:
                box[0].abort()
            return record

        p = Pipeline[Any, Any]("cp").add_stage(MapStage(failing, name="check"))
        p.add_stage(MapStage(watch, name="watch"))
        runner = StreamRunner(
            p.spec(), SqliteSink(tmp_path / "out.db", "out"), opts.merged(resume=resume)
        )
        box.append(runner)
        return await runner.run({"id": i} for i in range(n))

    first = await run(abort_at=523, resume=None)
    assert first.status is RunStatus.ABORTED
    assert first.checkpoint is not None
    assert 0 < first.checkpoint.position <= 523
    second = await run(abort_at=None, resume=True)
    assert second.status is RunStatus.COMPLETED
    with sqlite3.connect(tmp_path / "out.db") as conn:
        sink = [row[0] for row in conn.execute("SELECT id FROM out")]
    with open_dead_letter_store(tmp_path / "dl.db") as store:
        letters = [letter.record["id"] for letter in store.list()]
    assert len(sink) == len(set(sink))
    assert len(letters) == len(set(letters))
    assert not set(sink) & set(letters)
    assert set(sink) | set(letters) == set(range(n))
    assert dask_executor.live_sessions() == 0


def totals(state: Any, record: dict[str, Any]) -> Any:  # pragma: no cover - never runs
    return state, record


def test_a_stateful_stage_stays_on_the_driver(dask: DaskOptions) -> None:
    stage = KeyedStage(totals, key="k", name="totals")
    pipeline = Pipeline("stateful").add_stage(stage, options=on_dask(dask, concurrency=1))
    with pytest.raises(PipelineDefinitionError, match=r"'totals' keeps keyed state.*'dask'"):
        run_pipeline_on(pipeline, [{"k": 1}])


def test_a_sink_on_dask_writes_on_the_driver(dask: DaskOptions) -> None:
    pipeline = Pipeline("sink").add_stage(MapStage(_fns.inc, name="inc"), options=on_dask(dask))
    run = run_pipeline_on(pipeline, range(6), stage_options={"sink": on_dask(dask)})
    assert sorted(run.outputs) == list(range(1, 7))
    assert "on the driver (a sink writes from this process)" in run.report.summary()


def test_the_cluster_description_names_the_scheduler(dask: DaskOptions) -> None:
    run = run_pipeline_on(
        Pipeline("named").add_stage(MapStage(_fns.inc, name="inc"), options=on_dask(dask)),
        range(3),
    )
    assert f"executor dask: inc on scheduler {dask.scheduler}" in run.report.summary()


def test_dask_options_are_validated() -> None:
    with pytest.raises(PipelineDefinitionError, match="unknown dask option"):
        StageOptions(executor="dask", dask={"workerz": 2})
    with pytest.raises(PipelineDefinitionError, match="scheduler must be an address"):
        DaskOptions(scheduler="localhost")
    assert StageOptions(dask={"workers": 3}).dask == DaskOptions(workers=3)


async def test_an_async_run_on_dask(dask: DaskOptions) -> None:
    from conveyor.testing import arun_pipeline_on

    pipeline = Pipeline("async").add_stage(MapStage(_fns.inc, name="inc"), options=on_dask(dask))
    run = await arun_pipeline_on(pipeline, range(20), batch_size=4)
    assert sorted(run.outputs) == list(range(1, 21))
    await asyncio.sleep(0)


def test_a_script_that_starts_a_local_cluster_unguarded_is_told_to_guard_it(
    tmp_path: Path,
) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from conveyor import DaskOptions, MapStage, Pipeline, StageOptions\n"
        "pipeline = Pipeline('p').add_stage(MapStage(abs, name='abs'), options=StageOptions(\n"
        "    executor='dask', dask=DaskOptions(workers=1, dashboard=False)))\n"
        "pipeline.run(range(10), [].extend)\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "PipelineDefinitionError: the LocalCluster's worker processes could not start" in last
    assert f"imports the script that started it, {script}" in last
    assert 'must be under `if __name__ == "__main__":`' in last
