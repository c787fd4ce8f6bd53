"""Module-level functions and stages for the runtime tests.

Everything here may be pickled to a worker process (``executor="process"``), so it must
live at module level: no lambdas, no closures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from conveyor import Pipeline, PipelineContext, PipelineStage, StageOptions, StageResult
from conveyor.testing import TestRun, run_pipeline_on

# --- per-record functions ------------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def inc(x: int) -> int:
    return x + 1


def negate(x: int) -> int:
    return -x


async def async_inc(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def is_even(x: int) -> bool:
    return x % 2 == 0


def tenfold_unless_multiple_of_5(x: int) -> int:
    if x % 5 == 0:
        raise ValueError(f"{x} is a multiple of 5")
    return 10 * x


def not_multiple_of_3(x: int) -> bool | str:
    return x % 3 != 0 or f"{x} is a multiple of 3"


class BadRecordError(Exception):
    """A record-level error with a qualified name of our own."""


class UnpicklableError(Exception):
    """Cannot be rebuilt from its args (``code`` is missing), so it cannot cross processes."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def count_primes(n: int) -> int:
    """CPU-bound: how many primes are below ``n`` (trial division, on purpose)."""
    return sum(1 for k in range(2, n) if all(k % d for d in range(2, int(k**0.5) + 1)))


def primes_or_fail(n: int) -> int:
    if n < 0:
        raise BadRecordError(f"negative input {n}")
    return count_primes(n)


def raise_unpicklable(x: int) -> int:
    if x == 3:
        raise UnpicklableError("three is cursed", code=3)
    return x


def ident(x: Any) -> Any:
    return x


def worker_profiling(x: Any) -> tuple[Any, bool]:
    """The record and whether the Dask worker running it has its profiler on."""
    import dask

    return x, bool(dask.config.get("distributed.worker.profile.enabled"))


# --- replay: a stage that is broken until the module-level flag is cleared -----------------

BROKEN = {"on": True}


def fragile(x: int) -> int:
    if BROKEN["on"] and x % 4 == 0:
        raise BadRecordError(f"cannot handle {x} yet")
    return x * 100


# --- custom stages -------------------------------------------------------------------------


class Doubler(PipelineStage[list[int], list[int]]):
    """A user stage working on any slice: doubles each record."""

    name = "doubler"

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        return StageResult.ok([2 * x for x in data])


class OddDropper(PipelineStage[list[int], list[int]]):
    """A user stage that drops odd records and says so (``records_filtered``)."""

    name = "odd_dropper"

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        kept = [x for x in data if x % 2 == 0]
        return StageResult.ok(kept, records_in=len(data), records_filtered=len(data) - len(kept))


class SilentDropper(PipelineStage[list[int], list[int]]):
    """A buggy user stage: drops odd records without reporting them."""

    name = "silent_dropper"

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        return StageResult.ok([x for x in data if x % 2 == 0])


class Twice(PipelineStage[list[int], list[int]]):
    """Emits every record twice; declares ``expands``."""

    name = "twice"
    expands = True

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        return StageResult.ok([y for x in data for y in (x, x)], records_in=len(data))


class TwiceUndeclared(Twice):
    """Emits every record twice but does not declare ``expands``: a conservation bug."""

    name = "twice_undeclared"
    expands = False


class SortStage(PipelineStage[list[int], list[int]]):
    """A user barrier: sorts the whole stream."""

    name = "sort"
    barrier = True

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        return StageResult.ok(sorted(data))


def _ids(records: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for record in records:
        out.extend(record if isinstance(record, list) else [record])
    return out


class RaiseOnBad(PipelineStage[list[Any], list[Any]]):
    """A whole-batch stage: fails the entire call when a planted bad id is in its input
    (records may be ids or groups of ids), so the runner must split to isolate it."""

    def __init__(self, bad: Iterable[int], *, name: str = "raise_on_bad") -> None:
        self.bad = frozenset(bad)
        self.name = name

    async def process(self, data: list[Any], context: PipelineContext) -> StageResult[list[Any]]:
        found = sorted(self.bad.intersection(_ids(data)))
        if found:
            raise BadRecordError(f"bad ids {found} in this batch")
        return StageResult.ok(list(data))


# --- running one stage -----------------------------------------------------------------------


def run_one(
    stage: PipelineStage[Any, Any],
    records: Any,
    options: StageOptions | None = None,
    **run_options: Any,
) -> TestRun:
    """Stream ``records`` through ``stage`` alone with these stage options.

    (``conveyor.testing.run_stage_on(stage, records, stage=StageOptions(...))``, as its
    docstring suggests, cannot work: ``stage`` is already its first parameter.)
    """
    pipeline: Pipeline[Any, Any] = Pipeline(f"one:{stage.name}")
    pipeline.add_stage(stage, options=options)
    return run_pipeline_on(pipeline, records, **run_options)


def hang_on_one(x: int) -> int:
    """Blocks for a minute on record 1 (a hung worker); other records pass at once."""
    if x == 1:
        time.sleep(60)
    return x


# --- dask: a stage that pickles on the driver but cannot be loaded on a worker ---------------


def _refuse_to_load() -> Any:
    raise ImportError("this stage's code is not installed on the workers (a test)")


class UnloadableStage(PipelineStage[list[int], list[int]]):
    """Pickles to a call that fails when it is unpickled (on the workers)."""

    name = "unloadable"

    async def process(self, data: list[int], context: PipelineContext) -> StageResult[list[int]]:
        return StageResult(data=data)

    def __reduce__(self) -> Any:
        return (_refuse_to_load, ())
