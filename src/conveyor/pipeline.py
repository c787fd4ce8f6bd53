"""``Pipeline``: the builder users hold, and its doors onto the runners.

A pipeline is a name, an ordered list of stages, per-stage options, hooks and an event bus.
:meth:`Pipeline.spec` freezes that into a :class:`~conveyor.core.spec.PipelineSpec`, which is
what runners read: :meth:`Pipeline.execute` is a thin door onto collection mode
(:mod:`conveyor.core.collect`), :meth:`Pipeline.run`, :meth:`~Pipeline.arun` and
:meth:`~Pipeline.stream` onto the streaming runner (:mod:`conveyor.runtime`). The builder
sits above both, so neither imports it (ADR 0004).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar, Unpack

from conveyor.core import collect
from conveyor.core._callables import call_maybe_async
from conveyor.core.context import PipelineContext
from conveyor.core.events import EventBus
from conveyor.core.hooks import HOOK_NAMES, Hook, HookName, check_hook
from conveyor.core.options import RunChanges, RunOptions, StageOptions
from conveyor.core.result import PipelineResult
from conveyor.core.spec import PipelineSpec
from conveyor.core.stage import ChainedStage, PipelineStage
from conveyor.core.stages import FunctionStage, MapStage
from conveyor.errors import PipelineDefinitionError, UsageError

if TYPE_CHECKING:
    from conveyor.runtime import RunReport, StreamRun

__all__ = ["Pipeline", "create_etl_pipeline"]

In = TypeVar("In")
Out = TypeVar("Out")
Src = TypeVar("Src")
T = TypeVar("T")
R = TypeVar("R")
L = TypeVar("L")


class Pipeline(Generic[In, Out]):
    """A named, ordered sequence of stages, run one after another over the whole input
    (:meth:`execute`) or concurrently over a stream (:meth:`run`).

    ``execute`` is fail-fast: the first failing stage stops the run and its error is the
    result's error. An exception raised by stage code never escapes; it becomes a failed
    result. Hooks and :class:`~conveyor.EventBus` events surround every stage, in both modes.

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
        self._hooks: dict[str, list[Hook]] = {hook: [] for hook in HOOK_NAMES}

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

        The same hooks run in streaming mode (see :mod:`conveyor.core.hooks`). A hook that
        raises fails the run with a :class:`~conveyor.errors.HookError`.

        >>> seen = []
        >>> p = Pipeline[int, int]("p").add_hook(
        ...     "before_stage", lambda *, stage_name, **_: seen.append(stage_name))
        """
        check_hook(hook, fn)
        self._hooks[hook].append(fn)
        return self

    def hooks(self, hook: HookName) -> tuple[Hook, ...]:
        """The functions registered at ``hook``."""
        return tuple(self._hooks[hook])

    def spec(self) -> PipelineSpec:
        """The pipeline as it is now, frozen: what runners read."""
        return PipelineSpec(
            self.name,
            tuple(self._stages),
            dict(self._options),
            {key: tuple(fns) for key, fns in self._hooks.items()},
            self.event_bus,
        )

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
        sink: object,
        options: RunOptions | None = None,
        *,
        context: PipelineContext | None = None,
        **changes: Unpack[RunChanges],
    ) -> RunReport:
        """Stream ``source`` through the stages into ``sink`` and return the run's report.

        Stages run concurrently, connected by channels holding at most ``capacity``
        micro-batches of at most ``batch_size`` records (an async source's batch is also cut
        after ``linger`` seconds). ``sink`` is a :class:`~conveyor.Sink`, a sync or async
        callable receiving lists of records, or a stage. A record that fails for good goes
        to the dead-letter store ``dead_letters`` and the flow goes on. ``options`` is a
        :class:`~conveyor.RunOptions`; keyword arguments change single options of it (the
        defaults are those of :class:`~conveyor.RunOptions`; ``run`` handles SIGINT/SIGTERM
        unless ``handle_signals=False``): on the first signal the run stops reading,
        drains for up to ``grace_period`` seconds and returns an interrupted report; a
        second signal aborts at once.

        >>> from conveyor import MapStage
        >>> out = []
        >>> report = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs)).run(
        ...     [-1, 2, -3], out.extend, dead_letters="memory")
        >>> out, report.records_in, report.records_out
        ([1, 2, 3], 3, 3)
        """
        import asyncio  # the runners and the event loop load when a pipeline first runs

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            if options is None and "handle_signals" not in changes:
                changes["handle_signals"] = True
            return asyncio.run(self.arun(source, sink, options, context=context, **changes))
        raise UsageError(
            f"Pipeline {self.name!r}: run() was called inside a running event loop; "
            "use 'await pipeline.arun(source, sink)' there"
        )

    async def arun(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        sink: object,
        options: RunOptions | None = None,
        *,
        context: PipelineContext | None = None,
        **changes: Unpack[RunChanges],
    ) -> RunReport:
        """The async form of :meth:`run` (signals are handled only if asked)."""
        from conveyor.runtime import run_stream

        self._check_not_empty()
        return await run_stream(
            self.spec(), source, sink, (options or RunOptions()).merged(**changes), context=context
        )

    def stream(
        self,
        source: Iterable[Any] | AsyncIterable[Any],
        options: RunOptions | None = None,
        *,
        context: PipelineContext | None = None,
        **changes: Unpack[RunChanges],
    ) -> StreamRun:
        """Stream ``source`` through the stages and iterate over the outputs as they come.

        Takes the options of :meth:`arun`; the report is on the iterator's ``report``
        attribute once it is exhausted.

        >>> from conveyor import MapStage
        >>> async def main():
        ...     run = Pipeline[list[int], list[int]]("p").add_stage(MapStage(abs)).stream(
        ...         [-1, 2], dead_letters="memory")
        ...     return [x async for x in run], run.report.records_out
        >>> import asyncio
        >>> asyncio.run(main())
        ([1, 2], 2)
        """
        from conveyor.runtime import StreamRun

        self._check_not_empty()
        return StreamRun(
            self.spec(), source, (options or RunOptions()).merged(**changes), context=context
        )

    def _check_not_empty(self) -> None:
        if not self._stages:
            raise PipelineDefinitionError(
                f"Pipeline {self.name!r} has no stages; add_stage() first"
            )

    # -- collection mode ---------------------------------------------------------------------

    def execute_sync(
        self, data: In, *, context: PipelineContext | None = None
    ) -> PipelineResult[Out]:
        """Run :meth:`execute` to completion from synchronous code (scripts, notebooks cells
        without a running loop). Inside ``async`` code, ``await pipeline.execute(...)``."""
        import asyncio

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
        return await collect.execute(self.spec(), data, context)

    def __repr__(self) -> str:
        return f"<Pipeline {self.name!r}: {' >> '.join(s.name for s in self._stages)}>"


def create_etl_pipeline(
    extract: Callable[[Src], Iterable[T]] | Callable[[Src], Awaitable[Iterable[T]]],
    transform: Callable[[T], R] | Callable[[T], Awaitable[R]],
    load: Callable[[list[R]], L] | Callable[[list[R]], Awaitable[L]],
    *,
    name: str = "etl",
    continue_on_error: bool = False,
    concurrency: int = 1,
    event_bus: EventBus | None = None,
) -> Pipeline[Src, L]:
    """Build an ``extract -> transform -> load`` pipeline.

    ``extract(source)`` receives the pipeline's input (a path, a query, ``None`` …) and
    returns the records; ``transform`` runs per record in a :class:`MapStage` (with
    ``continue_on_error`` and ``concurrency`` passed through); ``load`` receives the whole
    list of transformed records and its return value is the pipeline's output.
    All three may be sync or async.

    >>> loaded = []
    >>> etl = create_etl_pipeline(
    ...     extract=lambda n: range(n),
    ...     transform=lambda x: {"id": x},
    ...     load=lambda rows: loaded.extend(rows) or len(rows),
    ... )
    >>> etl.execute_sync(3).data, loaded[-1]
    (3, {'id': 2})
    """
    stages: list[Any] = [
        FunctionStage(_listing(extract), name="extract"),
        MapStage(
            transform,
            continue_on_error=continue_on_error,
            concurrency=concurrency,
            name="transform",
        ),
        FunctionStage(load, name="load"),
    ]
    pipeline: Pipeline[Src, L] = Pipeline(name, event_bus=event_bus)
    for stage in stages:
        pipeline.add_stage(stage)
    return pipeline


def _listing(extract: Callable[[Src], Any]) -> Callable[[Src], Awaitable[list[Any]]]:
    """Wrap ``extract`` so that whatever iterable it returns becomes a list."""

    async def run(source: Src) -> list[Any]:
        return list(await call_maybe_async(extract, source))

    return run
