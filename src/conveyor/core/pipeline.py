"""``Pipeline``: a named sequence of stages with hooks, events and per-stage results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Literal, Self, TypeVar, get_args

from conveyor.core._callables import call_maybe_async, callable_name
from conveyor.core.context import PipelineContext
from conveyor.core.events import Event, EventBus, EventType
from conveyor.core.result import PipelineResult, PipelineStatus, StageResult
from conveyor.core.stage import ChainedStage, PipelineStage, run_stage
from conveyor.errors import HookError, PipelineDefinitionError, UsageError

__all__ = ["Hook", "HookName", "Pipeline"]

In = TypeVar("In")
Out = TypeVar("Out")

HookName = Literal["before_stage", "after_stage", "on_error", "on_complete"]
"""The four hook points of a pipeline."""

Hook = Callable[..., None] | Callable[..., Awaitable[None]]
"""A hook: a sync or async callable taking keyword arguments (see :meth:`Pipeline.add_hook`)."""

_HOOK_NAMES: tuple[str, ...] = get_args(HookName)


class Pipeline(Generic[In, Out]):
    """A named, ordered sequence of stages run one after another over the whole input.

    ``execute`` is fail-fast: the first failing stage stops the run and its error is the
    result's error. An exception raised by stage code never escapes; it becomes a failed
    result. Hooks and :class:`EventBus` events surround every stage.

    >>> from conveyor import MapStage, FilterStage
    >>> p = (
    ...     Pipeline[list[int], list[int]]("evens_squared")
    ...     .add_stage(FilterStage(lambda x: x % 2 == 0))
    ...     .add_stage(MapStage(lambda x: x * x))
    ... )
    >>> result = p.execute_sync([1, 2, 3, 4])
    >>> result.success, result.data, list(result.stage_results)
    (True, [4, 16], ['filter(<lambda>)', 'map(<lambda>)'])
    """

    def __init__(self, name: str, *, event_bus: EventBus | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise PipelineDefinitionError("Pipeline needs a non-empty name")
        self.name = name
        self.event_bus = event_bus
        self._stages: list[PipelineStage[Any, Any]] = []
        self._hooks: dict[str, list[Hook]] = {hook: [] for hook in _HOOK_NAMES}

    @property
    def stages(self) -> tuple[PipelineStage[Any, Any], ...]:
        """The stages in order, as added."""
        return tuple(self._stages)

    def add_stage(self, stage: PipelineStage[Any, Any]) -> Self:
        """Append ``stage`` and return the pipeline, for fluent chaining.

        Stage names must be unique within a pipeline (they key the per-stage results).
        """
        if not isinstance(stage, PipelineStage):
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r}: add_stage() takes a PipelineStage, "
                f"got {type(stage).__name__}; wrap a function in MapStage or FunctionStage"
            )
        if any(existing.name == stage.name for existing in self._stages):
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r} already has a stage named {stage.name!r}; "
                "give one of them another name, e.g. MapStage(fn, name='...')"
            )
        self._stages.append(stage)
        return self

    def add_hook(self, hook: HookName, fn: Hook) -> Self:
        """Register ``fn`` at a hook point; return the pipeline.

        Hooks may be sync or async and are called with keyword arguments only, so accept
        ``**kwargs`` to stay compatible when more arguments are passed in future versions:

        - ``before_stage(*, stage_name, data, context)``: before each stage, with its input;
        - ``after_stage(*, stage_name, data, context, result)``: after each successful stage,
          with its output and :class:`StageResult`;
        - ``on_error(*, stage_name, error, context, result)``: when a stage fails;
        - ``on_complete(*, data, context, result)``: after the whole pipeline succeeded, with
          the final output and the :class:`PipelineResult`.

        A hook that raises fails the run with a :class:`~conveyor.errors.HookError`.

        >>> seen = []
        >>> p = Pipeline[int, int]("p").add_hook(
        ...     "before_stage", lambda *, stage_name, **_: seen.append(stage_name))
        """
        if hook not in _HOOK_NAMES:
            raise PipelineDefinitionError(
                f"unknown hook {hook!r}; valid hooks: {', '.join(_HOOK_NAMES)}"
            )
        if not callable(fn):
            raise PipelineDefinitionError(f"{hook} hook must be callable, got {fn!r}")
        self._hooks[hook].append(fn)
        return self

    def hooks(self, hook: HookName) -> tuple[Hook, ...]:
        """The functions registered at ``hook``."""
        return tuple(self._hooks[hook])

    def as_stage(self) -> PipelineStage[In, Out]:
        """The pipeline's stages chained with ``>>`` into one stage (no hooks or events)."""
        if not self._stages:
            raise PipelineDefinitionError(f"Pipeline {self.name!r} has no stages")
        chained = self._stages[0]
        for stage in self._stages[1:]:
            chained = ChainedStage(chained, stage)
        return chained

    def execute_sync(
        self, data: In, *, context: PipelineContext | None = None
    ) -> PipelineResult[Out]:
        """Run :meth:`execute` to completion from synchronous code (scripts, notebooks cells
        without a running loop). Inside ``async`` code, ``await pipeline.execute(...)``."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.execute(data, context=context))
        raise UsageError(
            f"Pipeline {self.name!r}: execute_sync() was called inside a running event loop; "
            "use 'await pipeline.execute(data)' there"
        )

    async def execute(
        self, data: In, *, context: PipelineContext | None = None
    ) -> PipelineResult[Out]:
        """Run every stage in order on ``data`` and return a :class:`PipelineResult`."""
        if not self._stages:
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r} has no stages; add_stage() first"
            )
        stages = tuple(self._stages)
        ctx = context if context is not None else PipelineContext()
        if not ctx.pipeline_name:
            ctx.pipeline_name = self.name
        t0 = time.perf_counter()
        await self._publish(
            EventType.ITEM_CREATED,
            pipeline_id=ctx.pipeline_id,
            pipeline_name=self.name,
            stage_count=len(stages),
        )
        results: dict[str, StageResult[Any]] = {}
        current: Any = data
        error: BaseException | None = None
        failed_stage: str | None = None
        try:
            for stage in stages:
                failed_stage = stage.name
                await self._call_hooks(
                    "before_stage", stage.name, stage_name=stage.name, data=current, context=ctx
                )
                result = await run_stage(stage, current, ctx)
                results[stage.name] = result
                await self._publish_stage(ctx, stage.name, result)
                if not result.success:
                    error = result.error
                    assert error is not None
                    if not ctx.has_error(error):
                        ctx.record_error(stage.name, error)
                    await self._call_hooks(
                        "on_error",
                        stage.name,
                        stage_name=stage.name,
                        error=error,
                        context=ctx,
                        result=result,
                    )
                    break
                ctx.mark_completed(stage.name)
                current = result.data
                await self._call_hooks(
                    "after_stage",
                    stage.name,
                    stage_name=stage.name,
                    data=current,
                    context=ctx,
                    result=result,
                )
            else:
                failed_stage = None
        except HookError as hook_error:
            error = hook_error
            ctx.record_error(hook_error.stage or self.name, hook_error)
        outcome = self._result(ctx, current, error, failed_stage, results, t0)
        if outcome.success:
            try:
                await self._call_hooks(
                    "on_complete", None, data=outcome.data, context=ctx, result=outcome
                )
            except HookError as hook_error:
                ctx.record_error(self.name, hook_error)
                outcome = self._result(ctx, None, hook_error, None, results, t0)
        await self._publish(
            EventType.ITEM_UPDATED,
            pipeline_id=ctx.pipeline_id,
            pipeline_name=self.name,
            status=outcome.status.value,
            duration_ms=outcome.duration_ms,
            completed_stages=list(ctx.completed_stages),
            error=None if outcome.error is None else repr(outcome.error),
        )
        return outcome

    def _result(
        self,
        ctx: PipelineContext,
        data: Any,
        error: BaseException | None,
        failed_stage: str | None,
        results: dict[str, StageResult[Any]],
        t0: float,
    ) -> PipelineResult[Out]:
        return PipelineResult(
            pipeline_id=ctx.pipeline_id,
            pipeline_name=self.name,
            status=PipelineStatus.FAILED if error is not None else PipelineStatus.COMPLETED,
            data=None if error is not None else data,
            error=error,
            failed_stage=failed_stage if error is not None else None,
            stage_results=dict(results),
            duration_ms=(time.perf_counter() - t0) * 1000.0,
            context=ctx,
        )

    async def _call_hooks(self, hook: HookName, stage: str | None, **kwargs: Any) -> None:
        for fn in self._hooks[hook]:
            try:
                await call_maybe_async(fn, **kwargs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                raise HookError(hook, stage, callable_name(fn), exc) from exc

    async def _publish(self, event_type: EventType, **payload: Any) -> None:
        if self.event_bus is not None:
            await self.event_bus.publish(Event(event_type, payload, source=self.name))

    async def _publish_stage(
        self, ctx: PipelineContext, stage: str, result: StageResult[Any]
    ) -> None:
        await self._publish(
            EventType.STAGE_COMPLETED,
            pipeline_id=ctx.pipeline_id,
            stage=stage,
            success=result.success,
            duration_ms=result.duration_ms,
            records_in=result.records_in,
            records_out=result.records_out,
            records_failed=result.records_failed,
            records_filtered=result.records_filtered,
        )

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {' >> '.join(s.name for s in self._stages)}>"
