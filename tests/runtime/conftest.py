"""One fixture runs a stage list in collection mode and in streaming mode on each executor.

``mode.run(stages, records)`` returns an :class:`Outcome` whose shape does not depend on the
mode: the outputs (a non-list final value of a collection run counts as one record, as the
streaming runner emits it) and the records that failed. Collection mode is fail-fast, so its
record-wise stages run with ``continue_on_error=True``: failing records are then recorded in
the context instead of failing the run, which is what the streaming runner does with its
dead-letter queue.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from conveyor import ChainedStage, Pipeline, PipelineStage, RecordStage, RunReport, StageOptions
from conveyor.dlq import DeadLetter
from conveyor.testing import run_pipeline_on

MODES = ("collection", "stream-inline", "stream-thread", "stream-process", "stream-dask")


@dataclass
class Outcome:
    """What a run produced, whatever the mode."""

    outputs: list[Any]
    failed: list[Any]
    report: RunReport | None = None
    dead_letters: tuple[DeadLetter, ...] = ()


def _leaves(stages: Iterable[PipelineStage[Any, Any]]) -> list[PipelineStage[Any, Any]]:
    out: list[PipelineStage[Any, Any]] = []
    for stage in stages:
        out.extend(stage.stages if isinstance(stage, ChainedStage) else (stage,))
    return out


def _as_records(data: Any) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, tuple):
        return list(data)
    return [data]


class ModeRunner:
    """Runs stages in one mode; see the module docstring."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.streaming = name.startswith("stream-")
        self.executor = name.removeprefix("stream-") if self.streaming else None
        self.dask: Any = None  # the DaskOptions of the session's cluster (stream-dask)

    def __repr__(self) -> str:
        return f"<mode {self.name}>"

    def pipeline(self, stages: Sequence[PipelineStage[Any, Any]]) -> Pipeline[Any, Any]:
        pipeline: Pipeline[Any, Any] = Pipeline(f"modes-{self.name}")
        for stage in stages:
            pipeline.add_stage(stage)
        return pipeline

    def stage_options(self, stages: Sequence[PipelineStage[Any, Any]]) -> dict[str, StageOptions]:
        """Every leaf stage on this mode's executor (process pools kept to one worker:
        starting a worker costs more than these tiny stages)."""
        workers = 1 if self.executor == "process" else None
        return {
            stage.name: StageOptions(
                executor=self.executor, concurrency=2, workers=workers, dask=self.dask
            )
            for stage in _leaves(stages)
        }

    def run(
        self, stages: Sequence[PipelineStage[Any, Any]], records: Iterable[Any], **options: Any
    ) -> Outcome:
        records = list(records)
        if not self.streaming:
            return self._collect(stages, records)
        options.setdefault("batch_size", 3)
        run = run_pipeline_on(
            self.pipeline(stages),
            records,
            stage_options=self.stage_options(stages),
            **options,
        )
        run.report.check_conservation()
        return Outcome(
            outputs=run.outputs,
            failed=[letter.record for letter in run.dead_letters],
            report=run.report,
            dead_letters=tuple(run.dead_letters),
        )

    def _collect(self, stages: Sequence[PipelineStage[Any, Any]], records: list[Any]) -> Outcome:
        for stage in _leaves(stages):
            if isinstance(stage, RecordStage):
                stage.continue_on_error = True
        result = self.pipeline(stages).execute_sync(records)
        if not result.success:
            assert result.error is not None
            raise result.error
        return Outcome(
            outputs=_as_records(result.data),
            failed=[error.item for error in result.context.errors if error.has_item],
        )


@pytest.fixture(scope="session")
def dask_scheduler() -> Iterator[str]:
    """A real LocalCluster (2 worker processes on 127.0.0.1) for the stream-dask mode,
    started once and closed at the end of the session."""
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=2,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> ModeRunner:
    """Collection mode, then streaming on the inline, thread, process and dask executors."""
    runner = ModeRunner(request.param)
    if runner.executor == "dask":
        from conveyor.core.options import DaskOptions

        scheduler = request.getfixturevalue("dask_scheduler")
        runner.dask = DaskOptions(scheduler=scheduler, upload=False)
    return runner
