"""``create_etl_pipeline``: the Extract-Transform-Load pattern in one call."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from conveyor.core._callables import call_maybe_async
from conveyor.core.events import EventBus
from conveyor.core.pipeline import Pipeline
from conveyor.core.stages import FunctionStage, MapStage

__all__ = ["create_etl_pipeline"]

Src = TypeVar("Src")
T = TypeVar("T")
R = TypeVar("R")
L = TypeVar("L")


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
