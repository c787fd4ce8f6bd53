"""Collection mode: every stage in order over the whole input, fail-fast (seed 001).

:meth:`Pipeline.execute <conveyor.Pipeline.execute>` is a thin door onto :func:`execute`.
Hooks and events are those of :mod:`conveyor.core.hooks`, the same as in streaming mode.
"""

from __future__ import annotations

import time
from typing import Any

from conveyor.core.context import PipelineContext
from conveyor.core.hooks import RunEvents, StageEvent
from conveyor.core.kinds import stage_kind
from conveyor.core.result import PipelineResult, PipelineStatus, StageResult
from conveyor.core.spec import PipelineSpec
from conveyor.core.stage import PipelineStage, run_stage
from conveyor.errors import HookError, PipelineDefinitionError

__all__ = ["execute"]


async def execute(
    spec: PipelineSpec, data: Any, context: PipelineContext | None = None
) -> PipelineResult[Any]:
    """Run every stage of ``spec`` in order on ``data`` and return a :class:`PipelineResult`."""
    if not spec.stages:
        raise PipelineDefinitionError(f"Pipeline {spec.name!r} has no stages; add_stage() first")
    ctx = context if context is not None else PipelineContext()
    if not ctx.pipeline_name:
        ctx.pipeline_name = spec.name
    events = RunEvents(spec.name, ctx.pipeline_id, "collection", spec.hooks, spec.event_bus)
    run = _Run(spec, ctx, events)
    await events.created(stage_count=len(spec.stages))
    outcome = await run.stages(data)
    if outcome.success:
        try:
            await events.hook("on_complete", None, data=outcome.data, context=ctx, result=outcome)
        except HookError as hook_error:
            ctx.record_error(spec.name, hook_error)
            outcome = run.result(None, hook_error, None)
    await events.updated(
        status=outcome.status.value,
        duration_ms=outcome.duration_ms,
        completed_stages=ctx.completed_stages,
        records_in=_first(outcome, "records_in"),
        records_out=_last(outcome),
        records_filtered=sum(r.records_filtered for r in outcome.stage_results.values()),
        records_failed=sum(r.records_failed for r in outcome.stage_results.values()),
        error=outcome.error,
    )
    return outcome


class _Run:
    """One collection run's state."""

    def __init__(self, spec: PipelineSpec, ctx: PipelineContext, events: RunEvents) -> None:
        self.spec = spec
        self.ctx = ctx
        self.events = events
        self.results: dict[str, StageResult[Any]] = {}
        self.t0 = time.perf_counter()

    async def stages(self, data: Any) -> PipelineResult[Any]:
        current = data
        stage: PipelineStage[Any, Any] | None = None
        try:
            for stage in self.spec.stages:
                result = await self.stage(stage, current)
                if not result.success:
                    assert result.error is not None
                    return self.result(None, result.error, stage.name)
                current = result.data
        except HookError as hook_error:
            self.ctx.record_error(hook_error.stage or self.spec.name, hook_error)
            return self.result(None, hook_error, stage.name if stage is not None else None)
        return self.result(current, None, None)

    async def stage(self, stage: PipelineStage[Any, Any], data: Any) -> StageResult[Any]:
        name, ctx, events = stage.name, self.ctx, self.events
        await events.hook("before_stage", name, stage_name=name, data=data, context=ctx)
        result = await run_stage(stage, data, ctx)
        self.results[name] = result
        await events.stage_completed(
            StageEvent(
                stage=name,
                kind=stage_kind(stage).value,
                executor="inline",
                success=result.success,
                duration_ms=result.duration_ms,
                records_in=result.records_in,
                records_out=result.records_out,
                records_filtered=result.records_filtered,
                records_failed=result.records_failed,
            )
        )
        if not result.success:
            error = result.error
            assert error is not None
            if not ctx.has_error(error):
                ctx.record_error(name, error)
            await events.hook(
                "on_error", name, stage_name=name, error=error, context=ctx, result=result
            )
            return result
        ctx.mark_completed(name)
        await events.hook(
            "after_stage", name, stage_name=name, data=result.data, context=ctx, result=result
        )
        return result

    def result(
        self, data: Any, error: BaseException | None, failed_stage: str | None
    ) -> PipelineResult[Any]:
        return PipelineResult(
            pipeline_id=self.ctx.pipeline_id,
            pipeline_name=self.spec.name,
            status=PipelineStatus.FAILED if error is not None else PipelineStatus.COMPLETED,
            data=None if error is not None else data,
            error=error,
            failed_stage=failed_stage if error is not None else None,
            stage_results=dict(self.results),
            duration_ms=(time.perf_counter() - self.t0) * 1000.0,
            context=self.ctx,
        )


def _first(outcome: PipelineResult[Any], key: str) -> int:
    for result in outcome.stage_results.values():
        return int(getattr(result, key))
    return 0


def _last(outcome: PipelineResult[Any]) -> int:
    results = list(outcome.stage_results.values())
    return results[-1].records_out if results and outcome.success else 0
