"""``conveyor dlq replay``: a project's dead letters back through the stage where each
failed and every stage after it, into the project's Sink (ADR 0005).

Each stage's letters are one streaming run of the project's tail with its own options,
hooks and events; the Sink is opened in replay mode (it appends), and every persisted
dataset on the way gains the replayed records in new shards with an updated manifest, so
``stage=NAME`` runs and DVC see them. A barrier (or branch) after the failing stage is
recomputed from its persisted input — the dataset of the stage before it, which the replay
has just extended — and everything from it on runs again into the Sink as a whole run; if
that input is not persisted the replay is refused before anything is touched, naming the
barrier. Letters are marked replayed once every dataset of the replay is committed; the
fingerprints of the persisted stages it touched are recorded, so the next run skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.core.events import EventBus
from conveyor.core.hooks import Hook, HookName
from conveyor.core.result import RunStatus
from conveyor.dlq import DeadLetterStore, open_dead_letter_store
from conveyor.errors import ProjectError
from conveyor.project.discovery import project_root
from conveyor.project.kinds import TaskStage
from conveyor.project.project import DiscardSink, Project, load_project, project_sink
from conveyor.project.run import (
    RunHooks,
    RunPlan,
    execute_plan,
    persist_path,
    read_input,
)
from conveyor.runtime import RunReport
from conveyor.runtime.replay import Marker, ReplayGroup, plan_replay, refuse_barriers

__all__ = ["ProjectReplay", "replay_project"]


@dataclass
class ProjectReplay:
    """Outcome of :func:`replay_project`: one report per run, the letters marked replayed."""

    project: Project
    reports: list[RunReport] = field(default_factory=list)
    replayed: int = 0
    recomputed: list[str] = field(default_factory=list)


def replay_project(
    path: Path,
    overrides: Sequence[str] = (),
    *,
    stage: str | None = None,
    run_id: str | None = None,
    hooks: Mapping[HookName, Sequence[Hook]] | None = None,
    event_bus: EventBus | None = None,
    handle_signals: bool = True,
) -> ProjectReplay:
    """Replay the not-yet-replayed dead letters of the project at ``path`` (only those of
    ``stage`` / ``run_id`` when given; ``overrides`` are ``key=value`` config changes)."""
    extra = RunHooks(hooks or {}, event_bus, handle_signals=handle_signals)
    with contextlib.chdir(project_root(path)):
        project = load_project(Path.cwd(), overrides)
        tasks = [s.name for s in project.stages if isinstance(s.stage, TaskStage)]
        if tasks:
            raise ProjectError(
                "conveyor dlq replay puts letters back into record stages; this project's "
                f"stages ({', '.join(tasks)}) are task stages, which read and write whole "
                "files: fix the stage (or its data), then run it again with "
                f"`conveyor run . stage={stage or tasks[0]}` (its letters stay listed by "
                "`conveyor dlq list`)",
                file=project.config.file,
            )
        if stage is not None:
            _check_stage(project, stage)
        settings = project.config.config.pipeline
        with open_dead_letter_store(project.path(settings.dead_letters)) as store:
            return asyncio.run(_replay(project, store, stage, run_id, extra))


async def _replay(
    project: Project,
    store: DeadLetterStore,
    stage: str | None,
    run_id: str | None,
    extra: RunHooks,
) -> ProjectReplay:
    spec = project.pipeline().spec()
    sink_name = project.sink.name if project.sink is not None else "sink"

    async def plan_now() -> list[ReplayGroup]:
        letters = await asyncio.to_thread(store.list, stage=stage, run_id=run_id)
        return plan_replay(spec, letters, sink_name)

    def recomputable(barrier: str) -> bool:
        return _barrier_input(project, barrier) is not None

    plan = await plan_now()
    refuse_barriers(spec, plan, recomputable)
    outcome = ProjectReplay(project)
    done = 0
    while plan:
        group = plan.pop(0)
        done = group.start
        recomputed = await _replay_group(project, spec.leaf_names, store, group, extra, outcome)
        if recomputed:  # a whole run from the barrier on retired the letters after it
            plan = [g for g in await plan_now() if g.start > done]
            refuse_barriers(spec, plan, recomputable)
    return outcome


def _ledger_replay(project: Project, group: ReplayGroup, run_id: str) -> None:
    """A replay's records come from the Source its letters' runs read: if they all read the
    same, so did the replay (a later run of that Source then retires the replay's letters)."""
    from conveyor.project.cache import RunLedger

    ledger = RunLedger(project.path(project.config.config.pipeline.state_dir))
    sources = {ledger.get(letter.run_id) for letter in group.letters}
    if len(sources) == 1 and (source := sources.pop()) is not None:
        ledger.record(run_id, source, ledger.inputs_of(group.letters[0].run_id))


def _check_stage(project: Project, stage: str) -> None:
    """An unknown ``--stage`` is an error naming the stages, not "nothing to replay"."""
    names = [s.name for s in project.stages]
    if stage not in names and "/" not in stage:
        project.stage(stage)  # raises, with "did you mean"


def _barrier_input(project: Project, barrier: str) -> Path | None:
    """The persisted dataset a barrier reads, if the stage before it persists one."""
    index = project.index(barrier)
    return None if index == 0 else persist_path(project, project.middle[index - 1])


async def _replay_group(
    project: Project,
    leaf_names: list[str],
    store: DeadLetterStore,
    group: ReplayGroup,
    extra: RunHooks,
    outcome: ProjectReplay,
) -> bool:
    """Replay one group; return whether a barrier after it was recomputed."""
    middle = project.middle
    start = project.index(group.stage) if group.stage in leaf_names else len(middle)
    end = len(middle) if group.barrier is None else project.index(group.barrier)
    records = [letter.record for letter in group.letters]
    marker = Marker(store, group.letters, defer=True)
    into_sink = group.barrier is None
    plan = RunPlan(
        middle[start:end],
        records,
        None,
        project_sink(project) if into_sink else DiscardSink(),
        mode="replay",
        append=True,
        depth=group.depth,
    )
    try:
        report = await execute_plan(project, plan, extra, on_done=marker.on_done)
    except (KeyboardInterrupt, SystemExit) as stop:  # stage code stopped it, drained
        stopped = getattr(stop, "report", None)
        if stopped is not None and stopped.status.drained:
            outcome.replayed += marker.commit()
        raise
    outcome.reports.append(report)
    _ledger_replay(project, group, report.run_id)
    if not report.status.drained:
        return False  # aborted: the appends were dropped, the letters stay to replay
    # Drained: every replayed record has left (the datasets are committed): marked now, so
    # that a failure of what follows cannot make a later replay append them again.
    outcome.replayed += marker.commit()
    if group.barrier is None or report.status is RunStatus.INTERRUPTED:
        return False
    barrier = middle[end]
    again, input_path = read_input(project, barrier)
    rerun = RunPlan(middle[end:], again, input_path, project_sink(project), current_input=True)
    outcome.reports.append(await execute_plan(project, rerun, extra))
    outcome.recomputed.append(group.barrier)
    return True
