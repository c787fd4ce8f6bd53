"""Built-in stages: Map, Filter, Validate, Batch, Flatten, Aggregate, Branch.

Map, Filter and Validate are *record-wise*: they take a list of records and treat each
record on its own, so they work on any slice of a collection. That is what lets a streaming
runner feed them micro-batches; :meth:`RecordStage.process_records` reports each failing
record with its live exception instead of failing the whole call.
"""

from __future__ import annotations

import itertools
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

from conveyor.core._callables import call_maybe_async, callable_name, is_async_callable
from conveyor.core.context import PipelineContext
from conveyor.core.keyed import StatefulStage
from conveyor.core.result import RecordFailure, StageResult, count_records
from conveyor.core.stage import ChainedStage, PipelineStage, run_stage
from conveyor.errors import BranchError, PipelineDefinitionError, RecordValidationError

__all__ = [
    "AggregateStage",
    "BatchStage",
    "BranchStage",
    "FilterStage",
    "FlattenStage",
    "FunctionStage",
    "MapStage",
    "RecordOutcome",
    "RecordStage",
    "ValidateStage",
]

T = TypeVar("T")
R = TypeVar("R")
In = TypeVar("In")


def _elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def _as_list(data: Iterable[T]) -> list[T]:
    return data if isinstance(data, list) else list(data)


@dataclass(slots=True)
class RecordOutcome(Generic[R]):
    """What a record-wise stage made of a slice: outputs in input order, records dropped on
    purpose, and records that failed (each with its exception)."""

    outputs: list[R] = field(default_factory=list)
    filtered: int = 0
    failures: list[RecordFailure] = field(default_factory=list)


class RecordStage(PipelineStage[Iterable[T], list[R]]):
    """Base of stages that treat each record of a list independently.

    Subclasses implement :meth:`process_records`. :meth:`process` turns its outcome into a
    :class:`StageResult`: with ``continue_on_error=False`` (the default) the first failing
    record fails the stage; with ``True`` failing records are recorded in the context and
    left out of the output, and the stage succeeds with the rest.
    """

    continue_on_error: bool = False

    @property
    def never_awaits(self) -> bool:
        """Whether :meth:`process_records` runs to the end without awaiting anything (a
        sync function called one record at a time): a runner may then run it in the same
        task as its neighbours, and nothing on the event loop can interrupt it."""
        return False

    @abstractmethod
    async def process_records(
        self, items: Sequence[T], context: PipelineContext, *, stop_on_error: bool = False
    ) -> RecordOutcome[R]:
        """Process ``items``; stop at the first failure when ``stop_on_error``."""

    async def process(self, data: Iterable[T], context: PipelineContext) -> StageResult[list[R]]:
        t0 = time.perf_counter()
        items = _as_list(data)
        outcome = await self.process_records(
            items, context, stop_on_error=not self.continue_on_error
        )
        for failure in outcome.failures:
            context.record_error(self.name, failure.error, failure.item)
        counts: dict[str, Any] = {
            "duration_ms": _elapsed_ms(t0),
            "records_in": len(items),
            "records_out": len(outcome.outputs),
            "records_failed": len(outcome.failures),
            "records_filtered": outcome.filtered,
            "failures": outcome.failures,
        }
        if outcome.failures and not self.continue_on_error:
            return StageResult.fail(outcome.failures[0].error, **counts)
        return StageResult.ok(outcome.outputs, **counts)


class _CallsFunction(RecordStage[T, R]):
    """Shared machinery: call a sync or async per-record function, optionally concurrently."""

    def __init__(self, fn: Callable[[T], Any], concurrency: int, continue_on_error: bool) -> None:
        if not callable(fn):
            raise PipelineDefinitionError(
                f"{type(self).__name__} needs a callable, got {type(fn).__name__}"
            )
        if concurrency < 1:
            raise PipelineDefinitionError(
                f"{type(self).__name__}: concurrency must be >= 1, got {concurrency}"
            )
        self.fn = fn
        self.concurrency = concurrency
        self.continue_on_error = continue_on_error
        self.is_async = is_async_callable(fn)

    @property
    def never_awaits(self) -> bool:
        return not self.is_async and self.concurrency == 1

    @abstractmethod
    def _accept(self, item: T, value: Any, outcome: RecordOutcome[R]) -> BaseException | None:
        """Fold one function result into ``outcome``; return an exception to fail the item."""

    async def process_records(
        self, items: Sequence[T], context: PipelineContext, *, stop_on_error: bool = False
    ) -> RecordOutcome[R]:
        if self.concurrency > 1:
            return await self._concurrent(items, stop_on_error)
        if self.is_async:
            return await self._sequential_async(items, stop_on_error)
        return await self._sequential_sync(items, stop_on_error)

    async def _sequential_sync(self, items: Sequence[T], stop: bool) -> RecordOutcome[R]:
        """Call the first record on its own (a sync-looking callable may return coroutines:
        then take the async path), the rest in :meth:`_fast_loop`."""
        outcome: RecordOutcome[R] = RecordOutcome()
        if not items:
            return outcome
        first = items[0]
        try:
            value = self.fn(first)
            if hasattr(value, "__await__"):
                self.is_async = True
                error = self._accept(first, await value, outcome)
            else:
                error = self._accept(first, value, outcome)
        except Exception as exc:
            error = exc
        if error is not None:
            outcome.failures.append(RecordFailure(first, error))
            if stop:
                return outcome
        rest = itertools.islice(items, 1, None)
        if self.is_async:
            more = await self._sequential_async(list(rest), stop)
            outcome.outputs.extend(more.outputs)
            outcome.filtered += more.filtered
            outcome.failures.extend(more.failures)
            return outcome
        self._fast_loop(rest, outcome, stop)
        return outcome

    def _fast_loop(self, iterator: Iterator[T], outcome: RecordOutcome[R], stop: bool) -> None:
        """The per-record loop for sync callables; subclasses inline :meth:`_accept`."""
        fn, accept, failures = self.fn, self._accept, outcome.failures
        for item in iterator:
            try:
                error = accept(item, fn(item), outcome)
            except Exception as exc:
                error = exc
            if error is not None:
                failures.append(RecordFailure(item, error))
                if stop:
                    return

    async def _sequential_async(self, items: Sequence[T], stop: bool) -> RecordOutcome[R]:
        outcome: RecordOutcome[R] = RecordOutcome()
        for item in items:
            try:
                error = self._accept(item, await call_maybe_async(self.fn, item), outcome)
            except Exception as exc:
                error = exc
            if error is not None:
                outcome.failures.append(RecordFailure(item, error))
                if stop:
                    break
        return outcome

    async def _concurrent(self, items: Sequence[T], stop: bool) -> RecordOutcome[R]:
        # A pool of `concurrency` workers taking the next index: one task per worker, not
        # per record, and no semaphore.
        import asyncio  # here: importing conveyor does not need the event loop machinery

        fn, is_async = self.fn, self.is_async
        results: list[tuple[bool, Any]] = [(False, None)] * len(items)
        indices = iter(range(len(items)))

        async def worker() -> None:
            for index in indices:
                try:
                    if is_async:
                        value = await call_maybe_async(fn, items[index])
                    else:
                        value = await asyncio.to_thread(fn, items[index])
                        if hasattr(value, "__await__"):  # a sync callable returned a coroutine
                            value = await value
                    results[index] = (True, value)
                except Exception as exc:
                    results[index] = (False, exc)

        workers = min(self.concurrency, len(items))
        await asyncio.gather(*(worker() for _ in range(workers)))
        outcome: RecordOutcome[R] = RecordOutcome()
        for item, (ok, value) in zip(items, results, strict=True):
            error = self._accept(item, value, outcome) if ok else value
            if error is not None:
                outcome.failures.append(RecordFailure(item, error))
                if stop:
                    break
        return outcome


class MapStage(_CallsFunction[T, R]):
    """Apply ``fn`` to every record. ``fn`` may be sync or async (coroutines are awaited).

    ``continue_on_error=True`` records failing items in the context and keeps going;
    ``concurrency > 1`` runs up to that many calls at once (async functions on the event
    loop, sync functions in worker threads), keeping the output in input order.

    >>> from conveyor import Pipeline
    >>> Pipeline[list[int], list[int]]("p").add_stage(MapStage(lambda x: x * 10)).execute_sync(
    ...     [1, 2]).data
    [10, 20]
    """

    @overload
    def __init__(
        self,
        fn: Callable[[T], Awaitable[R]],
        *,
        continue_on_error: bool = False,
        concurrency: int = 1,
        name: str | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self,
        fn: Callable[[T], R],
        *,
        continue_on_error: bool = False,
        concurrency: int = 1,
        name: str | None = None,
    ) -> None: ...
    def __init__(
        self,
        fn: Callable[[T], Any],
        *,
        continue_on_error: bool = False,
        concurrency: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(fn, concurrency, continue_on_error)
        self.name = name or f"map({callable_name(fn)})"

    def _accept(self, item: T, value: Any, outcome: RecordOutcome[R]) -> BaseException | None:
        outcome.outputs.append(value)
        return None

    async def _sequential_sync(self, items: Sequence[T], stop: bool) -> RecordOutcome[R]:
        # Hot path: a plain loop with one try per run of good records, not per record.
        outcome: RecordOutcome[R] = RecordOutcome()
        outputs, fn = outcome.outputs, self.fn
        append = outputs.append
        iterator = iter(items)
        item: Any = None
        failed_at: list[int] = []  # len(outputs) when each failure happened
        while True:
            try:
                for item in iterator:
                    append(fn(item))
                break
            except Exception as exc:
                failed_at.append(len(outputs))
                outcome.failures.append(RecordFailure(item, exc))
                if stop:
                    break
        if outputs and hasattr(outputs[0], "__await__"):  # e.g. a lambda returning a coroutine
            self.is_async = True
            return await self._await_pending(items, outcome, failed_at, stop)
        return outcome

    async def _await_pending(
        self, items: Sequence[T], pending: RecordOutcome[R], failed_at: list[int], stop: bool
    ) -> RecordOutcome[R]:
        """Await the awaitables the hot path collected, each failing only its own record,
        and merge them with the records that already failed, in input order."""
        outcome: RecordOutcome[R] = RecordOutcome()
        awaitables: list[Any] = pending.outputs
        position = done = 0
        stopped = False
        boundaries = [*zip(failed_at, pending.failures, strict=True), (len(awaitables), None)]
        for boundary, failure in boundaries:
            while done < boundary:
                value, item = awaitables[done], items[position]
                done += 1
                position += 1
                if stopped:
                    getattr(value, "close", lambda: None)()  # never started: no warning
                    continue
                try:
                    outcome.outputs.append(await value if hasattr(value, "__await__") else value)
                except Exception as exc:
                    outcome.failures.append(RecordFailure(item, exc))
                    stopped = stop
            if failure is not None:
                position += 1
                if not stopped:
                    outcome.failures.append(failure)
                    stopped = stop
        return outcome


class FilterStage(_CallsFunction[T, T]):
    """Keep the records for which ``predicate`` is true (sync or async predicate).

    Dropped records are counted in ``records_filtered``. A predicate that raises fails the
    stage, or only that record with ``continue_on_error=True``.

    >>> from conveyor import Pipeline
    >>> Pipeline[list[int], list[int]]("p").add_stage(FilterStage(lambda x: x % 2 == 0)
    ...     ).execute_sync([1, 2, 3, 4]).data
    [2, 4]
    """

    def __init__(
        self,
        predicate: Callable[[T], bool] | Callable[[T], Awaitable[bool]],
        *,
        continue_on_error: bool = False,
        concurrency: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(predicate, concurrency, continue_on_error)
        self.name = name or f"filter({callable_name(predicate)})"

    def _accept(self, item: T, value: Any, outcome: RecordOutcome[T]) -> BaseException | None:
        if value:
            outcome.outputs.append(item)
        else:
            outcome.filtered += 1
        return None

    def _fast_loop(self, iterator: Iterator[T], outcome: RecordOutcome[T], stop: bool) -> None:
        # Hot path: one try per run of good records. Without stop every record is seen, so
        # filtered = seen - kept - failed comes from lengths; with stop, count them.
        if stop:
            self._counting_loop(iterator, outcome)
            return
        items = list(iterator)
        keep, predicate, failures = outcome.outputs.append, self.fn, outcome.failures
        kept_before, failed_before = len(outcome.outputs), len(failures)
        rest = iter(items)
        item: Any = None
        while True:
            try:
                for item in rest:
                    if predicate(item):
                        keep(item)
                break
            except Exception as exc:
                failures.append(RecordFailure(item, exc))
        kept = len(outcome.outputs) - kept_before
        outcome.filtered += len(items) - kept - (len(failures) - failed_before)

    def _counting_loop(self, iterator: Iterator[T], outcome: RecordOutcome[T]) -> None:
        keep, predicate, failures = outcome.outputs.append, self.fn, outcome.failures
        kept_before = len(outcome.outputs)
        seen = 0
        item: Any = None
        try:
            for item in iterator:
                seen += 1
                if predicate(item):
                    keep(item)
        except Exception as exc:
            failures.append(RecordFailure(item, exc))
            outcome.filtered += seen - 1 - (len(outcome.outputs) - kept_before)
            return
        outcome.filtered += seen - (len(outcome.outputs) - kept_before)


class ValidateStage(_CallsFunction[T, T]):
    """Check every record with ``validator``, which returns ``True`` (valid), ``False``
    (invalid) or a string (invalid, with that message); it may also raise.

    An invalid record becomes a :class:`~conveyor.errors.RecordValidationError` carrying the
    message. By default the first invalid record fails the stage (fail-fast); with
    ``continue_on_error=True`` invalid records are recorded in ``context.errors`` with their
    reasons and the valid ones pass on.

    >>> from conveyor import Pipeline
    >>> check = ValidateStage(lambda u: "@" in u["email"] or f"bad e-mail {u['email']!r}",
    ...                       continue_on_error=True, name="check")
    >>> r = Pipeline[list[dict[str, str]], list[dict[str, str]]]("p").add_stage(check
    ...     ).execute_sync([{"email": "a@x.org"}, {"email": "nope"}])
    >>> r.data, [str(e.exception) for e in r.context.errors]
    ([{'email': 'a@x.org'}], ["check: bad e-mail 'nope'"])
    """

    def __init__(
        self,
        validator: Callable[[T], bool | str] | Callable[[T], Awaitable[bool | str]],
        *,
        continue_on_error: bool = False,
        concurrency: int = 1,
        name: str | None = None,
    ) -> None:
        super().__init__(validator, concurrency, continue_on_error)
        self.name = name or f"validate({callable_name(validator)})"

    def _accept(self, item: T, value: Any, outcome: RecordOutcome[T]) -> BaseException | None:
        if value is True:
            outcome.outputs.append(item)
            return None
        if isinstance(value, str):
            return RecordValidationError(self.name, value)
        if value is False or value is None:
            return RecordValidationError(self.name, "validation failed")
        return TypeError(
            f"validator of {self.name!r} returned {type(value).__name__}; "
            "return True, False or an error message string"
        )

    def _fast_loop(self, iterator: Iterator[T], outcome: RecordOutcome[T], stop: bool) -> None:
        # Hot path: valid records cost one call and one identity test.
        keep, validator, failures = outcome.outputs.append, self.fn, outcome.failures
        item: Any = None
        while True:
            try:
                for item in iterator:
                    value = validator(item)
                    if value is True:
                        keep(item)
                        continue
                    error = self._accept(item, value, outcome)
                    assert error is not None
                    failures.append(RecordFailure(item, error))
                    if stop:
                        return
                return
            except Exception as exc:
                failures.append(RecordFailure(item, exc))
                if stop:
                    return


class BatchStage(PipelineStage[Iterable[T], list[list[T]]]):
    """Split a collection into lists of at most ``size`` records (the last may be shorter).

    >>> import asyncio
    >>> asyncio.run(BatchStage[int](2).process([1, 2, 3], PipelineContext())).data
    [[1, 2], [3]]
    """

    def __init__(self, size: int, *, name: str | None = None) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise PipelineDefinitionError(f"BatchStage: size must be an int >= 1, got {size!r}")
        self.size = size
        self.name = name or f"batch({size})"

    async def process(
        self, data: Iterable[T], context: PipelineContext
    ) -> StageResult[list[list[T]]]:
        items = _as_list(data)
        size = self.size
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        return StageResult.ok(batches, records_in=len(items))


class FlattenStage(PipelineStage[Iterable[Iterable[T]], list[T]]):
    """Join nested lists into one flat list (the inverse of :class:`BatchStage`).

    >>> import asyncio
    >>> asyncio.run(FlattenStage[int]().process([[1, 2], [3]], PipelineContext())).data
    [1, 2, 3]
    """

    expands = True

    def __init__(self, *, name: str | None = None) -> None:
        self.name = name or "flatten"

    async def process(
        self, data: Iterable[Iterable[T]], context: PipelineContext
    ) -> StageResult[list[T]]:
        groups = _as_list(data)
        flat = [item for group in groups for item in group]
        return StageResult.ok(flat, records_in=len(groups))


class AggregateStage(PipelineStage[Iterable[T], R]):
    """Reduce the whole collection to one value with ``aggregator(list_of_records)``.

    The aggregator may be sync or async. A streaming runner treats this stage as a barrier.

    >>> import asyncio
    >>> asyncio.run(AggregateStage(sum).process([1, 2, 3], PipelineContext())).data
    6
    """

    barrier = True

    @overload
    def __init__(
        self, aggregator: Callable[[list[T]], Awaitable[R]], *, name: str | None = None
    ) -> None: ...
    @overload
    def __init__(self, aggregator: Callable[[list[T]], R], *, name: str | None = None) -> None: ...
    def __init__(self, aggregator: Callable[[list[T]], Any], *, name: str | None = None) -> None:
        if not callable(aggregator):
            raise PipelineDefinitionError("AggregateStage needs a callable aggregator")
        self.aggregator = aggregator
        self.name = name or f"aggregate({callable_name(aggregator)})"

    async def process(self, data: Iterable[T], context: PipelineContext) -> StageResult[R]:
        items = _as_list(data)
        value: R = await call_maybe_async(self.aggregator, items)
        return StageResult.ok(value, records_in=len(items), records_out=1)


class BranchStage(PipelineStage[In, Any]):
    """Run every branch concurrently on the same input.

    A branch of plain stages (no window or keyed state in any branch) outputs one record
    ``{branch_name: output}`` at the end; a streaming runner treats it as a barrier: every
    branch sees the whole stream.

    >>> import asyncio
    >>> stage = BranchStage({"total": AggregateStage(sum), "count": AggregateStage(len)})
    >>> asyncio.run(stage.process([1, 2, 3], PipelineContext())).data
    {'total': 6, 'count': 3}

    A branch with windows (some branch holds a :class:`~conveyor.WindowStage` or a
    :class:`~conveyor.KeyedStage`) *streams*: several metrics computed in parallel from
    one unbounded stream. Each branch's results flow on as they are made (a window's when
    it closes) instead of at the end, each as one record tagged with its branch by
    :meth:`tagged`: a dict result gets ``"branch"`` as its first field (a window's
    ``{"branch", "key", "start", "end", "value"}``), any other result (or a dict with a
    ``branch`` field of its own) becomes ``{"branch": name, "value": result}``. Its
    branches may hold per-record, expanding and stateful stages, but no barrier, batch or
    branch (they would hold the stream until its end). Collection mode gives the same
    records, branch by branch in declaration order (a stream interleaves them as they
    come); the windows' state is in every checkpoint of a streaming run (ADR 0011).

    >>> from conveyor import window
    >>> two = BranchStage({"n": window(count=2, aggregate=len), "sum": window(count=3,
    ...     aggregate=sum)})
    >>> for result in asyncio.run(two.process([1, 2, 3], PipelineContext())).data:
    ...     print(result)
    {'branch': 'n', 'key': None, 'start': 0, 'end': 2, 'value': 2}
    {'branch': 'n', 'key': None, 'start': 2, 'end': 3, 'value': 1}
    {'branch': 'sum', 'key': None, 'start': 0, 'end': 3, 'value': 6}

    If a branch fails, the stage fails with a :class:`~conveyor.errors.BranchError` naming it
    (the first failing branch in declaration order), with the branch's error as the cause.
    """

    barrier = True

    def __init__(
        self, branches: Mapping[str, PipelineStage[In, Any]], *, name: str | None = None
    ) -> None:
        if not branches:
            raise PipelineDefinitionError("BranchStage needs at least one branch")
        for key, stage in branches.items():
            if not isinstance(stage, PipelineStage):
                raise PipelineDefinitionError(
                    f"BranchStage: branch {key!r} is {type(stage).__name__}, not a PipelineStage"
                )
        self.branches = dict(branches)
        self.name = name or "branch(" + ", ".join(self.branches) + ")"
        self.streams = _streams(self.name, self.branches)
        """Whether the branches' results flow on as they are made (a branch with windows or
        keyed state) instead of as one ``{branch: output}`` record at the end."""

    @staticmethod
    def tagged(branch: str, result: Any) -> dict[str, Any]:
        """A streaming branch's output record for ``result`` of ``branch``.

        >>> BranchStage.tagged("per_minute", {"key": "a", "value": 3})
        {'branch': 'per_minute', 'key': 'a', 'value': 3}
        >>> BranchStage.tagged("raw", 7), BranchStage.tagged("x", {"branch": 1})
        ({'branch': 'raw', 'value': 7}, {'branch': 'x', 'value': {'branch': 1}})
        """
        if type(result) is dict and "branch" not in result:
            return {"branch": branch, **result}
        return {"branch": branch, "value": result}

    async def process(self, data: In, context: PipelineContext) -> StageResult[Any]:
        import asyncio

        names = list(self.branches)
        results = await asyncio.gather(
            *(run_stage(self.branches[key], data, context) for key in names)
        )
        for key, result in zip(names, results, strict=True):
            if not result.success:
                assert result.error is not None
                return StageResult.fail(
                    BranchError(self.name, key, result.error), records_in=count_records(data)
                )
        if self.streams:
            tagged = self.tagged
            records = [
                tagged(key, item)
                for key, result in zip(names, results, strict=True)
                for item in (result.data if isinstance(result.data, list) else [result.data])
            ]
            return StageResult.ok(records, records_in=count_records(data), records_out=len(records))
        outputs = {key: result.data for key, result in zip(names, results, strict=True)}
        return StageResult.ok(outputs, records_in=count_records(data), records_out=len(outputs))


def _streams(name: str, branches: Mapping[str, PipelineStage[Any, Any]]) -> bool:
    """Whether a branch streams (some branch keeps keyed state); checks that none of its
    branches then holds a stage that would wait for the end of the stream."""
    leaves = {
        key: list(stage.stages) if isinstance(stage, ChainedStage) else [stage]
        for key, stage in branches.items()
    }
    if not any(isinstance(s, StatefulStage) for chain in leaves.values() for s in chain):
        return False
    for key, chain in leaves.items():
        for stage in chain:
            if isinstance(stage, BranchStage | BatchStage) or (
                stage.barrier and not isinstance(stage, StatefulStage)
            ):
                raise PipelineDefinitionError(
                    f"{name}: branch {key!r} holds {stage.name!r}, which waits for whole "
                    "inputs, but the branch streams (a branch of it keeps windows or keyed "
                    "state, whose results flow on as they are made): put "
                    f"{stage.name!r} in a BranchStage of its own, or after this one, or "
                    "make it a window (window(count=N, aggregate=...))"
                )
    return True


class FunctionStage(PipelineStage[In, R]):
    """A stage from a plain function of the whole input (sync or async): ``fn(data) -> out``.

    >>> import asyncio
    >>> asyncio.run(FunctionStage(len, name="count").process("abc", PipelineContext())).data
    3
    """

    @overload
    def __init__(self, fn: Callable[[In], Awaitable[R]], *, name: str | None = None) -> None: ...
    @overload
    def __init__(self, fn: Callable[[In], R], *, name: str | None = None) -> None: ...
    def __init__(self, fn: Callable[[In], Any], *, name: str | None = None) -> None:
        if not callable(fn):
            raise PipelineDefinitionError("FunctionStage needs a callable")
        self.fn = fn
        self.name = name or callable_name(fn)

    async def process(self, data: In, context: PipelineContext) -> StageResult[R]:
        value: R = await call_maybe_async(self.fn, data)
        return StageResult.ok(value, records_in=count_records(data))
