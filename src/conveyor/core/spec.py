"""The frozen definition of a pipeline that runners read.

:class:`~conveyor.Pipeline` is the builder users hold; :meth:`Pipeline.spec` snapshots it
into a :class:`PipelineSpec`. Runners (collection mode in :mod:`conveyor.core.collect`, the
streaming runner in :mod:`conveyor.runtime`), the graph and the project loader take a spec,
so none of them depends on the builder and the builder depends on all of them (ADR 0004).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from conveyor.core.events import EventBus
from conveyor.core.hooks import HOOK_NAMES, Hook
from conveyor.core.kinds import flatten_stages
from conveyor.core.options import StageOptions
from conveyor.core.stage import PipelineStage
from conveyor.errors import PipelineDefinitionError

__all__ = ["HasSpec", "PipelineSpec", "spec_of"]


@dataclass(frozen=True)
class PipelineSpec:
    """A pipeline's name, stages (as added, chains not yet flattened), per-stage options,
    hooks and event bus; immutable.

    >>> from conveyor import MapStage
    >>> spec = PipelineSpec("p", (MapStage(abs, name="a"), MapStage(abs, name="b")))
    >>> [s.name for s in spec.tail("b").stages], spec.leaf_names
    (['b'], ['a', 'b'])
    """

    name: str
    stages: tuple[PipelineStage[Any, Any], ...]
    stage_options: Mapping[str, StageOptions] = field(default_factory=dict)
    hooks: Mapping[str, tuple[Hook, ...]] = field(default_factory=dict)
    event_bus: EventBus | None = None
    identity: Any = None
    """What else tells this pipeline's results apart for checkpoints (JSON-able), beside
    its stage list: a project's stage parameters. A checkpoint of a pipeline whose stage
    list or ``identity`` differs is refused."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "stage_options", MappingProxyType(dict(self.stage_options)))
        hooks = {key: tuple(self.hooks.get(key, ())) for key in HOOK_NAMES}
        object.__setattr__(self, "hooks", MappingProxyType(hooks))

    @property
    def leaves(self) -> list[PipelineStage[Any, Any]]:
        """The stages with chains flattened: what a streaming run runs one by one."""
        return flatten_stages(self.stages)

    @property
    def leaf_names(self) -> list[str]:
        """Names of :attr:`leaves`."""
        return [stage.name for stage in self.leaves]

    def tail(self, stage: str) -> PipelineSpec:
        """The same pipeline starting at the leaf stage called ``stage`` (for replays)."""
        names = self.leaf_names
        if stage not in names:
            raise PipelineDefinitionError(
                f"pipeline {self.name!r} has no stage {stage!r}; stages: {', '.join(names)}"
            )
        return replace(self, stages=tuple(self.leaves[names.index(stage) :]))

    def with_stages(self, stages: Sequence[PipelineStage[Any, Any]]) -> PipelineSpec:
        """The same options, hooks and bus around other ``stages``."""
        return replace(self, stages=tuple(stages))


@runtime_checkable
class HasSpec(Protocol):
    """Anything that can give its :class:`PipelineSpec` (a :class:`~conveyor.Pipeline`)."""

    def spec(self) -> PipelineSpec:
        """The frozen definition."""
        ...


def spec_of(pipeline: PipelineSpec | HasSpec) -> PipelineSpec:
    """The spec of ``pipeline`` (a spec, or a pipeline builder)."""
    return pipeline if isinstance(pipeline, PipelineSpec) else pipeline.spec()
