"""A worker of a real LocalCluster killed mid-run loses no record.

The cluster (2 worker processes behind nannies, on 127.0.0.1) is started by the test, so
the test knows the workers' pids; the run connects to it (``DaskOptions(scheduler=...)``).
While micro-batches are tasks on both workers, one worker process gets SIGKILL: the
scheduler re-runs its tasks on the other (and on the worker its nanny restarts), or, past
``allowed_failures``, the batch fails with ``WorkerLostError`` and is retried and bisected
by the runner. Either way the sink's ids and the dead-letter queue's ids must be the input
ids, each once, and the run's conservation check must hold.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("distributed")

from distributed import Client, LocalCluster

from conveyor import MapStage, Pipeline, StageOptions
from conveyor.core.options import DaskOptions, RetryPolicy
from conveyor.runtime.dask_executor import live_sessions
from conveyor.testing import TestRun, run_pipeline_on

pytestmark = pytest.mark.timeout(240)

N = 400


def slow(record: dict[str, Any]) -> dict[str, Any]:
    """20 ms per record: a batch of 5 is a task of 0.1 s, long enough to be killed in."""
    time.sleep(0.02)
    return {"id": record["id"], "pid": os.getpid()}


def tag(record: dict[str, Any]) -> dict[str, Any]:
    """The second Dask stage: takes the first one's outputs on the cluster (hand-off)."""
    return {**record, "tagged": True}


def poison(record: dict[str, Any]) -> dict[str, Any]:
    """Kills the worker running it for record 7, every time (a segfaulting extension)."""
    if record["id"] == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.005)
    return {"id": record["id"]}


@pytest.fixture
def cluster() -> Iterator[tuple[LocalCluster, Client]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,
        )
        client = Client(cluster, set_as_default=False)
    try:
        yield cluster, client
    finally:
        client.close()
        cluster.close()
    assert live_sessions() == 0


def _run_in_thread(pipeline: Pipeline[Any, Any], options: dict[str, Any]) -> tuple[Any, Any]:
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["run"] = run_pipeline_on(
                pipeline, ({"id": i} for i in range(N)), batch_size=5, **options
            )
        except BaseException as exc:  # pragma: no cover - reported by the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _ids_once(run: TestRun) -> None:
    out = Counter(r["id"] for r in run.outputs)
    dead = Counter(letter.record["id"] for letter in run.dead_letters)
    assert max(out.values(), default=1) == 1, "an id reached the sink twice"
    assert max(dead.values(), default=1) == 1, "an id was dead-lettered twice"
    assert not set(out) & set(dead)
    assert set(out) | set(dead) == set(range(N))
    run.report.check_conservation()


def test_a_killed_worker_loses_no_record(cluster: tuple[LocalCluster, Client]) -> None:
    _, client = cluster
    pids: dict[str, int] = client.run(os.getpid)
    settings = DaskOptions(scheduler=client.scheduler.address, upload=False)
    pipeline: Pipeline[Any, Any] = Pipeline("dask-kill")
    pipeline.add_stage(
        MapStage(slow, name="slow"),
        options=StageOptions(executor="dask", concurrency=4, dask=settings),
    )
    pipeline.add_stage(
        MapStage(tag, name="tag"),
        options=StageOptions(executor="dask", concurrency=4, dask=settings),
    )
    thread, box = _run_in_thread(pipeline, {})
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and thread.is_alive():
        busy = {
            worker: keys
            for worker, keys in client.processing().items()
            if any(str(k).startswith("conveyor-slow-") for k in keys)
        }
        if len(busy) == 2:  # both workers are running batches: kill one of them
            victim = sorted(busy)[0]
            os.kill(pids[victim], signal.SIGKILL)
        time.sleep(0.05)
    assert victim is not None, "the run never had tasks on both workers"
    thread.join(120)
    assert not thread.is_alive(), "the run did not finish after the kill"
    assert "error" not in box, box.get("error")
    run: TestRun = box["run"]
    _ids_once(run)
    assert not run.dead_letters  # re-run elsewhere: nothing needed the dead-letter queue
    assert all(r["tagged"] for r in run.outputs)
    survivors = {r["pid"] for r in run.outputs}
    assert pids[victim] not in survivors or len(survivors) > 1
    assert "executor dask: slow, tag on scheduler" in run.report.summary()


def test_a_record_that_kills_every_worker_ends_in_the_dead_letter_queue(
    cluster: tuple[LocalCluster, Client],
) -> None:
    # The scheduler gives up on a task after allowed_failures deaths (KilledWorker); the
    # runner retries the batch, then bisects it: the other records run on live workers
    # (the nannies restart the killed ones) and record 7 alone is a dead letter.
    _, client = cluster
    settings = DaskOptions(scheduler=client.scheduler.address, upload=False)
    pipeline: Pipeline[Any, Any] = Pipeline("dask-poison")
    pipeline.add_stage(
        MapStage(poison, name="poison"),
        options=StageOptions(
            executor="dask", concurrency=2, dask=settings, retry=RetryPolicy(attempts=2)
        ),
    )
    with _allowed_failures(client, 0):
        run = run_pipeline_on(pipeline, ({"id": i} for i in range(40)), batch_size=8)
    out = sorted(r["id"] for r in run.outputs)
    assert out == [i for i in range(40) if i != 7]
    [letter] = run.dead_letters
    assert letter.record == {"id": 7}
    assert letter.error_type.endswith("WorkerLostError")
    assert "KilledWorker" in letter.message
    run.report.check_conservation()


class _allowed_failures:
    """Set the scheduler's allowed-failures for the block (the test's own cluster)."""

    def __init__(self, client: Client, value: int) -> None:
        self.client = client
        self.value = value

    def __enter__(self) -> None:
        self.old = self.client.run_on_scheduler(_set_allowed_failures, self.value)

    def __exit__(self, *_: object) -> None:
        self.client.run_on_scheduler(_set_allowed_failures, self.old)


def _set_allowed_failures(value: int, dask_scheduler: Any = None) -> int:
    old: int = dask_scheduler.allowed_failures
    dask_scheduler.allowed_failures = value
    return old
