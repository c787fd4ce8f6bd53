"""Hooks and run events: one definition used by collection and streaming mode alike.

Both modes call the same four hooks with the same keyword arguments and publish the same
three events with the same payload keys, so a hook or a subscriber written against one mode
works unchanged in the other (and in project runs, single-stage runs and replays, which are
streaming runs).

Hooks (keyword arguments only; accept ``**kwargs`` so that new arguments never break you):

- ``before_stage(*, stage_name, data, context)``: before a stage processes ``data`` (the
  whole input in collection mode; each micro-batch, or a barrier's whole input, when
  streaming);
- ``after_stage(*, stage_name, data, context, result)``: after it succeeded, with its output
  and a :class:`~conveyor.StageResult`;
- ``on_error(*, stage_name, error, context, result)``: when a stage fails (collection mode)
  or a record is dead-lettered (streaming; ``dead_letter=`` is passed too);
- ``on_complete(*, data, context, result)``: at the end of a successful run (streaming
  passes ``report=`` as well; ``result`` is the run's report there).

Events (:class:`~conveyor.EventType`): ``ITEM_CREATED`` when a run starts,
``STAGE_COMPLETED`` per stage, ``ITEM_UPDATED`` when it ends; their payload keys are
:data:`CREATED_KEYS`, :data:`STAGE_KEYS` and :data:`UPDATED_KEYS`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from conveyor.core._callables import call_maybe_async, callable_name
from conveyor.core.events import Event, EventBus, EventType
from conveyor.errors import HookError, PipelineDefinitionError

__all__ = [
    "CREATED_KEYS",
    "HOOK_NAMES",
    "STAGE_KEYS",
    "UPDATED_KEYS",
    "Hook",
    "HookName",
    "RunEvents",
    "StageEvent",
    "call_hooks",
    "check_hook",
]

HookName = Literal["before_stage", "after_stage", "on_error", "on_complete"]
"""The four hook points of a pipeline."""

Hook = Callable[..., None] | Callable[..., Awaitable[None]]
"""A hook: a sync or async callable taking keyword arguments."""

HOOK_NAMES: Final[tuple[str, ...]] = get_args(HookName)

Mode = Literal["collection", "streaming"]

CREATED_KEYS: Final = ("pipeline_id", "pipeline_name", "stage_count", "mode")
"""Payload keys of ``ITEM_CREATED``."""

STAGE_KEYS: Final = (
    "pipeline_id",
    "pipeline_name",
    "mode",
    "stage",
    "kind",
    "executor",
    "success",
    "duration_ms",
    "records_in",
    "records_out",
    "records_filtered",
    "records_failed",
    "retried",
    "batches",
)
"""Payload keys of ``STAGE_COMPLETED``."""

UPDATED_KEYS: Final = (
    "pipeline_id",
    "pipeline_name",
    "mode",
    "status",
    "duration_ms",
    "completed_stages",
    "records_in",
    "records_out",
    "records_filtered",
    "records_failed",
    "error",
)
"""Payload keys of ``ITEM_UPDATED``."""


def check_hook(hook: str, fn: object) -> None:
    """Raise :class:`PipelineDefinitionError` unless ``hook`` is a hook point and ``fn`` a
    callable."""
    if hook not in HOOK_NAMES:
        raise PipelineDefinitionError(
            f"unknown hook {hook!r}; valid hooks: {', '.join(HOOK_NAMES)}"
        )
    if not callable(fn):
        raise PipelineDefinitionError(f"{hook} hook must be callable, got {fn!r}")


async def call_hooks(hooks: Iterable[Hook], hook: str, stage: str | None, **kwargs: Any) -> None:
    """Call each of ``hooks`` with ``kwargs``; a hook that raises becomes a HookError."""
    for fn in hooks:
        try:
            await call_maybe_async(fn, **kwargs)
        except Exception as exc:  # (cancellation is a BaseException: it passes through)
            raise HookError(hook, stage, callable_name(fn), exc) from exc


@dataclass(frozen=True, slots=True)
class StageEvent:
    """What ``STAGE_COMPLETED`` says about one stage, in either mode (counts are records)."""

    stage: str
    kind: str
    executor: str
    success: bool
    duration_ms: float
    records_in: int
    records_out: int
    records_filtered: int
    records_failed: int
    retried: int = 0
    batches: int = 1


class RunEvents:
    """Calls a run's hooks and publishes its events, the same way in both modes.

    >>> import asyncio
    >>> bus, seen = EventBus(), []
    >>> bus.subscribe(EventType.ITEM_CREATED, lambda e: seen.append(sorted(e.payload)))
    >>> events = RunEvents("p", "id-1", "collection", {}, bus)
    >>> asyncio.run(events.created(stage_count=2))
    >>> seen == [sorted(CREATED_KEYS)]
    True
    """

    def __init__(
        self,
        pipeline_name: str,
        pipeline_id: str,
        mode: Mode,
        hooks: Mapping[str, Sequence[Hook]],
        event_bus: EventBus | None,
    ) -> None:
        self.pipeline_name = pipeline_name
        self.pipeline_id = pipeline_id
        self.mode: Mode = mode
        self.hooks = {key: tuple(value) for key, value in hooks.items() if value}
        self.event_bus = event_bus

    def has(self, hook: HookName) -> bool:
        """Whether any function is registered at ``hook`` (to skip building arguments)."""
        return hook in self.hooks

    async def hook(self, hook: HookName, stage: str | None, **kwargs: Any) -> None:
        """Call the functions registered at ``hook`` with ``kwargs``."""
        fns = self.hooks.get(hook)
        if fns:
            await call_hooks(fns, hook, stage, **kwargs)

    async def created(self, *, stage_count: int) -> None:
        """Publish ``ITEM_CREATED``."""
        await self._publish(EventType.ITEM_CREATED, stage_count=stage_count)

    async def stage_completed(self, event: StageEvent) -> None:
        """Publish ``STAGE_COMPLETED`` for one stage."""
        if self.event_bus is None:
            return
        await self._publish(
            EventType.STAGE_COMPLETED,
            stage=event.stage,
            kind=event.kind,
            executor=event.executor,
            success=event.success,
            duration_ms=event.duration_ms,
            records_in=event.records_in,
            records_out=event.records_out,
            records_filtered=event.records_filtered,
            records_failed=event.records_failed,
            retried=event.retried,
            batches=event.batches,
        )

    async def updated(
        self,
        *,
        status: str,
        duration_ms: float,
        completed_stages: Sequence[str],
        records_in: int = 0,
        records_out: int = 0,
        records_filtered: int = 0,
        records_failed: int = 0,
        error: BaseException | None = None,
    ) -> None:
        """Publish ``ITEM_UPDATED``: the run ended with ``status``."""
        await self._publish(
            EventType.ITEM_UPDATED,
            status=status,
            duration_ms=duration_ms,
            completed_stages=list(completed_stages),
            records_in=records_in,
            records_out=records_out,
            records_filtered=records_filtered,
            records_failed=records_failed,
            error=None if error is None else _describe(error),
        )

    async def _publish(self, event_type: EventType, **payload: Any) -> None:
        if self.event_bus is not None:
            body = {
                "pipeline_id": self.pipeline_id,
                "pipeline_name": self.pipeline_name,
                "mode": self.mode,
                **payload,
            }
            await self.event_bus.publish(Event(event_type, body, source=self.pipeline_name))


def _describe(error: BaseException) -> str:
    try:
        return repr(error)
    except Exception:
        return f"<{type(error).__qualname__}>"
