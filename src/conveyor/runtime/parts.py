"""The parts of a run: one :class:`StageRuntime` per stage (options, executor, counters,
contracts, group depth) and the :class:`SinkRuntime` of its sink."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from conveyor.contracts._base import Contract
from conveyor.contracts._check import ContractCheck
from conveyor.core.keyed import StatefulStage
from conveyor.core.kinds import StageKind, group_depth, stage_kind
from conveyor.core.options import Executor, StageOptions
from conveyor.core.sink import Sink
from conveyor.core.stage import PipelineStage
from conveyor.core.stages import MapStage, RecordStage
from conveyor.errors import PipelineDefinitionError
from conveyor.runtime.executors import StageExecutor, make_executor
from conveyor.runtime.limiter import RateLimiter
from conveyor.runtime.report import StageStats
from conveyor.runtime.stateful import Gate

__all__ = ["Part", "SinkRuntime", "StageRuntime", "weigher"]

Weigh = Callable[[Sequence[Any]], int]


def weigher(depth: int) -> Weigh:
    """How many records a list of elements nested ``depth`` levels deep in groups holds
    (``len`` for plain records)."""
    if depth == 0:
        return len

    def weigh(elements: Sequence[Any]) -> int:
        return sum(_leaves(element, depth) for element in elements)

    return weigh


def _leaves(element: Any, depth: int) -> int:
    if depth == 0 or not isinstance(element, list | tuple):
        return 1
    return sum(_leaves(item, depth - 1) for item in element)


class Part:
    """What every part of a run has: a name, a kind, options and counters."""

    def __init__(self, name: str, kind: StageKind, options: StageOptions, depth: int) -> None:
        self.name = name
        self.kind = kind
        self.options = options
        self.retry = options.retry
        self.depth_in = depth
        self.weigh_in = weigher(depth)
        self.stats = StageStats(name, kind, options.executor.value)
        self.executor: StageExecutor = make_executor(options, name)
        self.executor.bind(self.stats)
        self.limiter = RateLimiter(options.rate_limit) if options.rate_limit else None

    @property
    def timeout(self) -> float | None:
        """Seconds allowed per call, or ``None``."""
        return self.options.timeout


class StageRuntime(Part):
    """One stage during a run."""

    def __init__(
        self,
        stage: PipelineStage[Any, Any],
        name: str,
        options: StageOptions,
        check: ContractCheck,
        depth: int,
    ) -> None:
        kind = stage_kind(stage)
        super().__init__(name, kind, options, depth)
        self.stage = stage
        self.executor.check(stage)
        self.check = check
        self.input_contract = _contract(options.input_contract, stage, "input_contract")
        self.output_contract = _contract(options.output_contract, stage, "output_contract")
        self.depth_out = group_depth(kind, depth, stage)
        self.weigh_out = weigher(self.depth_out)
        self.barrier_output: Any = None
        self.arms: dict[str, list[StageRuntime]] = {}
        # A per-record stage with a timeout is called record by record, each call timed.
        self.per_record = isinstance(stage, RecordStage) and options.timeout is not None
        self.reshapes = kind in (StageKind.EXPAND, StageKind.BARRIER, StageKind.BRANCH) or (
            depth > 0 and kind is StageKind.RECORD
        )
        self.fusable = _fusable(stage, kind, options)
        # Record-wise, on the loop, nothing to retry, time or check on the way out: its
        # failures are dead letters as they come, so the retry loop has nothing to add.
        self.direct = (
            isinstance(stage, RecordStage)
            and kind is StageKind.RECORD
            and options.executor is Executor.INLINE
            and options.timeout is None
            and options.retry.attempts == 1
            and (
                self.output_contract is None
                or (check.mode == "off" and not self.output_contract.always)
            )
        )
        if options.timeout is not None and options.executor is Executor.INLINE:
            _check_inline_timeout(stage, name)
        self.gate: Gate | None = None  # a stateful stage's state and snapshots
        if kind is StageKind.STATEFUL:
            assert isinstance(stage, StatefulStage)
            _check_stateful(name, options, depth)
            self.gate = Gate(name, stage.operator())


class SinkRuntime(Part):
    """The sink during a run."""

    def __init__(self, sink: Sink, options: StageOptions, depth: int) -> None:
        if options.executor is Executor.PROCESS:
            raise PipelineDefinitionError(
                f"sink {sink.name!r} cannot run on the process executor (it holds the "
                "connections and files of this process); use executor='thread' for a sink "
                "that blocks"
            )
        if options.timeout is not None:
            _check_sink_timeout(sink, options)
        super().__init__(sink.name, StageKind.SINK, options, depth)
        self.sink = sink


def _fusable(stage: PipelineStage[Any, Any], kind: StageKind, options: StageOptions) -> bool:
    """Whether the stage may share a task with its neighbours: a built-in per-record stage
    calling a sync function, one call at a time, on the event loop (it never awaits, so
    running it in its own task buys no overlap)."""
    return (
        kind is StageKind.RECORD
        and isinstance(stage, RecordStage)
        and stage.never_awaits
        and options.executor is Executor.INLINE
        and options.concurrency == 1
        and options.timeout is None
        and options.rate_limit is None
        and options.retry.attempts == 1
    )


def _check_stateful(name: str, options: StageOptions, depth: int) -> None:
    """A stateful stage keeps its state in the run's event loop and takes its micro-batches
    in order, one at a time; its functions are called there (an async one may await I/O)."""
    wrong = []
    if options.executor is not Executor.INLINE:
        wrong.append(f"executor={options.executor.value!r} (it runs inline)")
    if options.concurrency != 1:
        wrong.append(f"concurrency={options.concurrency} (it takes one micro-batch at a time)")
    if options.timeout is not None:
        wrong.append("a timeout")
    if options.retry.attempts != 1:
        wrong.append("retries (a failing record is a dead letter at once)")
    if wrong:
        raise PipelineDefinitionError(
            f"stage {name!r} keeps keyed state, which its options do not allow: "
            f"{'; '.join(wrong)}; drop them from its StageOptions"
        )
    if depth:
        raise PipelineDefinitionError(
            f"stage {name!r} keeps keyed state over records, but gets groups of records from "
            "a BatchStage before it; put it before the BatchStage, or a FlattenStage between"
        )


def _check_sink_timeout(sink: Sink, options: StageOptions) -> None:
    """A write that outlives its timeout may still finish: only an idempotent sink may
    then see its records again (as letters are replayed, or the write is retried)."""
    from conveyor.core._callables import is_async_callable

    if not sink.idempotent:
        raise PipelineDefinitionError(
            f"sink {sink.name!r} has a timeout but is not idempotent: a write that times out "
            "may still finish, and its records would be both written and dead-lettered; "
            "drop the timeout, or make the sink idempotent (an upsert by key) and set "
            "idempotent = True"
        )
    if options.executor is Executor.INLINE and not is_async_callable(sink.write):
        raise PipelineDefinitionError(
            f"sink {sink.name!r} has a timeout but its write is sync code on the event loop "
            "(executor 'inline'), where nothing can interrupt it; use executor='thread' or "
            "an async write"
        )


def _check_inline_timeout(stage: PipelineStage[Any, Any], name: str) -> None:
    if isinstance(stage, RecordStage) and stage.never_awaits:
        kind = "map" if isinstance(stage, MapStage) else "per-record"
        raise PipelineDefinitionError(
            f"stage {name!r} has a timeout but calls a sync {kind} function on the event loop "
            "(executor 'inline'), where nothing can interrupt it; run it with "
            "executor='thread' (blocking I/O) or executor='process' (CPU work), or make the "
            "function async"
        )


def _contract(spec: Any, stage: PipelineStage[Any, Any], attr: str) -> Contract | None:
    spec = spec if spec is not None else getattr(stage, attr, None)
    if spec is None:
        return None
    from conveyor.contracts._spec import contract_for  # pydantic and friends, when needed

    try:
        return contract_for(spec)
    except (TypeError, ValueError, OSError) as exc:
        raise PipelineDefinitionError(
            f"stage {stage.name!r}: its {attr} {spec!r} is not usable: {exc}"
        ) from exc
