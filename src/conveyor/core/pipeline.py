"""``Pipeline``: a named sequence of stages with hooks, events and per-stage results."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, get_args

from conveyor.core._callables import call_maybe_async, callable_name
from conveyor.core.context import PipelineContext
from conveyor.core.events import Event, EventBus, EventType
from conveyor.core.options import StageOptions
from conveyor.core.result import PipelineResult, PipelineStatus, StageResult
from conveyor.core.stage import ChainedStage, PipelineStage, run_stage
from conveyor.errors import HookError, PipelineDefinitionError, UsageError

if TYPE_CHECKING:
    from conveyor.dlq import DeadLetterStore
    from conveyor.runtime import RunReport, Sink, StreamRun

__all__ = ["Hook", "HookName", "Pipeline", "call_hooks"]

In = TypeVar("In")
Out = TypeVar("Out")

HookName = Literal["before_stage", "after_stage", "on_error", "on_complete"]
"""The four hook points of a pipeline."""

Hook = Callable[..., None] | Callable[..., Awaitable[None]]
"""A hook: a sync or async callable taking keyword arguments (see :meth:`Pipeline.add_hook`)."""

_HOOK_NAMES: tuple[str, ...] = get_args(HookName)


async def call_hooks(hooks: Iterable[Hook], hook: str, stage: str | None, **kwargs: Any) -> None:
    """Call each of ``hooks`` with ``kwargs``; a hook that raises becomes a HookError."""
    for fn in hooks:
        try:
            await call_maybe_async(fn, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise HookError(hook, stage, callable_name(fn), exc) from exc


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
        self._options: dict[str, StageOptions] = {}
        self._hooks: dict[str, list[Hook]] = {hook: [] for hook in _HOOK_NAMES}

    @property
    def stages(self) -> tuple[PipelineStage[Any, Any], ...]:
        """The stages in order, as added."""
        return tuple(self._stages)

    def add_stage(
        self, stage: PipelineStage[Any, Any], *, options: StageOptions | None = None
    ) -> Self:
        """Append ``stage`` and return the pipeline, for fluent chaining.

        Stage names must be unique within a pipeline (they key the per-stage results).
        ``options`` set how the streaming runner runs it (see :meth:`configure`).
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
        if options is not None:
            self._options[stage.name] = options
        return self

    def configure(self, stage: str, **options: Any) -> Self:
        """Set streaming options of the stage called ``stage`` (see :class:`StageOptions`):
        ``concurrency``, ``executor``, ``workers``, ``ordered``, ``retry``, ``timeout``,
        ``rate_limit``, ``input_contract``, ``output_contract``. ``"sink"`` names the sink.

        >>> from conveyor import MapStage
        >>> p = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs, name="abs"))
        >>> p.configure("abs", concurrency=4, executor="thread").stage_options["abs"].executor
        <Executor.THREAD: 'thread'>
        """
        names = [s.name for s in self._stages]
        if stage not in names and stage != "sink":
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r} has no stage {stage!r}; stages: {', '.join(names)}"
            )
        current = self._options.get(stage, StageOptions())
        self._options[stage] = current.merged(**options)
        return self

    @property
    def stage_options(self) -> dict[str, StageOptions]:
        """Streaming options set per stage name (stages not listed use the defaults)."""
        return dict(self._options)

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

    # -- streaming mode ----------------------------------------------------------------------

    def run(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        sink: Sink,
        *,
        batch_size: int = 1000,
        linger: float = 0.05,
        capacity: int = 2,
        dead_letters: DeadLetterStore | str | Path | None = None,
        contracts: Literal["all", "sample", "off"] = "all",
        sample_rate: float = 0.01,
        grace_period: float = 30.0,
        handle_signals: bool = True,
        stage_options: Mapping[str, StageOptions] | None = None,
        context: PipelineContext | None = None,
    ) -> RunReport:
        """Stream ``source`` through the stages into ``sink`` and return the run's report.

        Stages run concurrently, connected by channels holding at most ``capacity``
        micro-batches of at most ``batch_size`` records (an async source's batch is also cut
        after ``linger`` seconds). ``sink`` is a sync or async callable receiving lists of
        records, or a stage. A record that fails for good goes to the dead-letter store
        ``dead_letters`` (a :class:`~conveyor.dlq.DeadLetterStore`, ``"memory"``, a
        ``.jsonl`` or ``.db`` path; default ``.conveyor/dead_letters.db``) and the flow
        goes on. Contracts declared by stages are checked at their edges for ``"all"``
        records, a ``"sample"`` (``sample_rate``) or ``"off"``. On SIGINT/SIGTERM the run
        stops reading, drains for up to ``grace_period`` seconds and returns an
        interrupted report; a second signal aborts at once.

        >>> from conveyor import MapStage
        >>> out = []
        >>> report = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs)).run(
        ...     [-1, 2, -3], out.extend, dead_letters="memory")
        >>> out, report.records_in, report.records_out
        ([1, 2, 3], 3, 3)
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(
                self.arun(
                    source,
                    sink,
                    batch_size=batch_size,
                    linger=linger,
                    capacity=capacity,
                    dead_letters=dead_letters,
                    contracts=contracts,
                    sample_rate=sample_rate,
                    grace_period=grace_period,
                    handle_signals=handle_signals,
                    stage_options=stage_options,
                    context=context,
                )
            )
        raise UsageError(
            f"Pipeline {self.name!r}: run() was called inside a running event loop; "
            "use 'await pipeline.arun(source, sink)' there"
        )

    async def arun(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        sink: Sink,
        *,
        batch_size: int = 1000,
        linger: float = 0.05,
        capacity: int = 2,
        dead_letters: DeadLetterStore | str | Path | None = None,
        contracts: Literal["all", "sample", "off"] = "all",
        sample_rate: float = 0.01,
        grace_period: float = 30.0,
        handle_signals: bool = False,
        stage_options: Mapping[str, StageOptions] | None = None,
        context: PipelineContext | None = None,
    ) -> RunReport:
        """The async form of :meth:`run` (signals are handled only if asked)."""
        from conveyor.runtime import StreamRunner

        if not self._stages:
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r} has no stages; add_stage() first"
            )
        runner = StreamRunner(
            self.name,
            self._stages,
            sink,
            batch_size=batch_size,
            linger=linger,
            capacity=capacity,
            stage_options={**self._options, **(stage_options or {})},
            dead_letters=dead_letters,
            contracts=contracts,
            sample_rate=sample_rate,
            grace_period=grace_period,
            handle_signals=handle_signals,
            event_bus=self.event_bus,
            hooks=self._hooks,
            context=context,
        )
        return await runner.run(source)

    def stream(self, source: Iterable[Any] | AsyncIterable[Any], **options: Any) -> StreamRun:
        """Stream ``source`` through the stages and iterate over the outputs as they come.

        Takes the options of :meth:`arun`; the report is on the iterator's ``report``
        attribute once it is exhausted.

        >>> from conveyor import MapStage
        >>> async def main():
        ...     run = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs)).stream(
        ...         [-1, 2], dead_letters="memory")
        ...     return [x async for x in run], run.report.records_out
        >>> asyncio.run(main())
        ([1, 2], 2)
        """
        from conveyor.runtime import StreamRun

        return StreamRun(self, source, options)

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
        await call_hooks(self._hooks[hook], hook, stage, **kwargs)

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
