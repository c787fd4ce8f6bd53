"""Replaying dead letters into the stage where they failed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.dlq import DeadLetterStore
from conveyor.errors import PipelineDefinitionError
from conveyor.runtime.report import RunReport
from conveyor.runtime.runner import Sink, StreamRunner, flatten_stages

if TYPE_CHECKING:
    from conveyor.core.pipeline import Pipeline

__all__ = ["replay_dead_letters"]


async def replay_dead_letters(
    pipeline: Pipeline[Any, Any],
    store: DeadLetterStore,
    sink: Sink,
    *,
    stage: str | None = None,
    run_id: str | None = None,
    **options: Any,
) -> list[RunReport]:
    """Feed not-yet-replayed dead letters back into the stage where each failed.

    Letters are grouped by stage; each group runs through that stage and every stage after
    it into ``sink``, in one streaming run per stage (``options`` as for
    :meth:`Pipeline.arun`, dead letters of the replay going to ``store`` as well). The
    replayed letters are then marked replayed; a record that fails again becomes a new dead
    letter of the replay's run. Returns the reports, one per replayed stage.
    """
    stages = flatten_stages(pipeline.stages)
    names = [s.name for s in stages]
    letters = store.list(stage=stage, run_id=run_id)
    by_stage: dict[str, list[Any]] = {}
    for letter in letters:
        by_stage.setdefault(letter.stage, []).append(letter)
    reports = []
    for name, group in by_stage.items():
        if name == "sink":
            start = len(stages)
        elif name in names:
            start = names.index(name)
        else:
            raise PipelineDefinitionError(
                f"dead letters of stage {name!r} cannot be replayed into pipeline "
                f"{pipeline.name!r}: it has no such stage (stages: {', '.join(names)})"
            )
        runner = StreamRunner(
            f"{pipeline.name}/replay:{name}",
            stages[start:] or [],
            sink,
            dead_letters=store,
            stage_options={
                k: v for k, v in pipeline.stage_options.items() if k in names[start:] or k == "sink"
            },
            event_bus=pipeline.event_bus,
            **options,
        )
        report = await runner.run([letter.record for letter in group])
        store.mark_replayed(letter.id for letter in group)
        reports.append(report)
    return reports
