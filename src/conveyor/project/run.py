"""Running a project: the whole pipeline, or one stage (``stage=NAME``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conveyor.errors import ProjectError
from conveyor.project.discovery import project_root
from conveyor.project.kinds import TaskStage
from conveyor.project.project import (
    DiscardSink,
    LoadedStage,
    Project,
    load_project,
    sink_function,
    source_records,
)
from conveyor.runtime import RunReport, StreamRunner

__all__ = ["ProjectRun", "run_project"]

Progress = Callable[[StreamRunner], Any]
"""Called with the live runner about every ``progress_interval`` seconds."""


@dataclass
class ProjectRun:
    """Outcome of :func:`run_project`."""

    project: Project
    report: RunReport | None = None
    stage: str | None = None
    tasks_run: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_project(
    path: Path,
    overrides: Sequence[str] = (),
    *,
    progress: Progress | None = None,
    progress_interval: float = 0.25,
    handle_signals: bool = True,
) -> ProjectRun:
    """Load the project at ``path`` and run it; ``stage=NAME`` among ``overrides`` runs one
    stage only."""
    stage_name, rest = _split_stage(overrides)
    # Stages see paths relative to the project folder, as `dvc repro` runs them.
    with contextlib.chdir(project_root(path)):
        project = load_project(Path.cwd(), rest)
        if all(isinstance(s.stage, TaskStage) for s in project.stages):
            return _run_tasks(project, stage_name)
        return asyncio.run(
            _stream(project, stage_name, progress, progress_interval, handle_signals)
        )


def _split_stage(overrides: Sequence[str]) -> tuple[str | None, list[str]]:
    stage: str | None = None
    rest: list[str] = []
    for item in overrides:
        if item.startswith("stage="):
            stage = item.partition("=")[2]
        else:
            rest.append(item)
    return stage, rest


def _run_tasks(project: Project, only: str | None) -> ProjectRun:
    run = ProjectRun(project, stage=only)
    chosen = [project.stage(only)] if only else project.stages
    for loaded in chosen:
        stage: TaskStage = loaded.stage
        if not stage.validate():
            raise ProjectError(
                f"stage {loaded.name!r}: validate() returned False; fix its inputs or config, "
                f"then re-run it with: conveyor run {project.root} stage={loaded.name}",
                file=loaded.file.path,
            )
        stage.run(getattr(stage, "config", None))
        run.tasks_run.append(loaded.name)
    return run


def _persist_path(project: Project, loaded: LoadedStage) -> Path | None:
    persist = loaded.section.persist
    return None if persist is None else project.path(persist.path)


def _fingerprint(project: Project, loaded: LoadedStage, input_path: Path | None) -> Any:
    from conveyor.project.cache import StageFingerprint

    # What changes the output: parameters and persistence, not runner options.
    section = {"params": loaded.section.params, "persist": loaded.section.persist}
    fingerprint = StageFingerprint.compute(
        loaded.file.path, section, input_path, pipeline_dir=project.pipeline_dir
    )
    if input_path is None and project.source is not None:
        # Fed by the Source itself: its input is what the Source's code and params make.
        source = project.stages[0]
        made_by = StageFingerprint.compute(
            source.file.path,
            {"params": source.section.params},
            None,
            pipeline_dir=project.pipeline_dir,
        )
        digest = hashlib.sha256(f"{made_by.code_hash}:{made_by.config_hash}".encode())
        fingerprint = dataclasses.replace(fingerprint, input_hash=f"source:{digest.hexdigest()}")
    return fingerprint


def _single_stage_input(
    project: Project, loaded: LoadedStage
) -> tuple[Iterable[Any] | AsyncIterable[Any], Path | None]:
    """The records a single-stage run reads: the previous stage's persisted output."""
    from conveyor.project.datasets import read_dataset

    index = project.stages.index(loaded)
    if index == 0:
        raise ProjectError(
            f"stage {loaded.name!r} is the first stage; run the whole pipeline instead",
            file=loaded.file.path,
        )
    previous = project.stages[index - 1]
    if index == 1 and project.source is not None and previous.section.persist is None:
        return source_records(project.source), None
    path = _persist_path(project, previous)
    if path is None:
        raise ProjectError(
            f"stage {loaded.name!r} reads the output of {previous.name!r}, which is not "
            f"persisted; add `persist: {{path: data/{previous.name}}}` to "
            f"stages.{previous.name} in config.yaml",
            file=project.config.file,
        )
    try:
        return read_dataset(path), path
    except FileNotFoundError as exc:
        raise ProjectError(
            f"stage {loaded.name!r} reads {path}, which does not exist yet; run "
            f"'conveyor run {project.root} stage={previous.name}' (or the whole pipeline) first",
        ) from exc


async def _stream(
    project: Project,
    only: str | None,
    progress: Progress | None,
    interval: float,
    handle_signals: bool,
) -> ProjectRun:
    from conveyor.project.cache import RunCache
    from conveyor.project.datasets import DatasetWriter

    settings = project.config.config.pipeline
    run = ProjectRun(project, stage=only)
    records: Iterable[Any] | AsyncIterable[Any]
    input_path: Path | None = None
    if only is None:
        source = project.source
        if source is None:
            raise ProjectError(
                "the first stage must be a Source (a class with read()) that emits the records",
                file=project.stages[0].file.path,
            )
        records = source_records(source)
        stages = project.middle
        sink = sink_function(project)
    else:
        loaded = project.stage(only)
        records, input_path = _single_stage_input(project, loaded)
        output = _persist_path(project, loaded)
        cache = RunCache(project.path(settings.state_dir))
        fingerprint = _fingerprint(project, loaded, input_path)
        if output is not None and cache.is_fresh(loaded.name, fingerprint, output):
            run.skipped.append(loaded.name)
            return run
        if loaded is project.stages[-1] and project.sink is not None:
            stages, sink = [], sink_function(project)
        else:
            stages, sink = [loaded], DiscardSink()
    writers = {
        s.name: DatasetWriter(path, s.section.persist.format)  # type: ignore[union-attr]
        for s in stages
        if (path := _persist_path(project, s)) is not None
    }
    pipeline = project.pipeline(stages, persist=writers)
    runner = StreamRunner(
        project.name,
        pipeline.stages,
        sink,
        batch_size=settings.batch_size,
        linger=settings.linger,
        capacity=settings.capacity,
        stage_options=pipeline.stage_options,
        dead_letters=project.path(settings.dead_letters),
        contracts=settings.contracts,
        sample_rate=settings.sample_rate,
        grace_period=settings.grace_period,
        handle_signals=handle_signals,
    )
    ticker = asyncio.create_task(_tick(runner, progress, interval)) if progress else None
    try:
        report = await runner.run(records)
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    if report.interrupted:
        for writer in writers.values():
            writer.abort()  # a partial dataset must not look complete
    else:
        for writer in writers.values():
            writer.commit()
        if project.sink is not None and (only is None or only == project.stages[-1].name):
            project.sink.close()  # the Sink's end-of-run hook
        if only is not None:
            loaded = project.stage(only)
            output = _persist_path(project, loaded)
            if output is not None:
                RunCache(project.path(settings.state_dir)).record(
                    loaded.name, _fingerprint(project, loaded, input_path), output
                )
    if progress is not None:
        progress(runner)
    run.report = report
    return run


async def _tick(runner: StreamRunner, progress: Progress, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        progress(runner)
