"""What kind of stage a stage is, decided once: the runner, the graph and the project
loader read :func:`stage_kind` and :func:`flatten_stages` instead of deciding for themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

from conveyor.core.keyed import StatefulStage
from conveyor.core.stage import ChainedStage, PipelineStage
from conveyor.core.stages import BatchStage, BranchStage, FlattenStage

__all__ = ["StageKind", "flatten_stages", "stage_kind"]


class StageKind(StrEnum):
    """How a runner treats a stage.

    ``record``: works on any slice of the input (Map, Filter, Validate, most user stages);
    per micro-batch, records in = out + filtered + dead-lettered. ``expand``: one record
    may become several (``expands = True``, ``FlattenStage``). ``batch``: re-cuts the
    stream into groups (``BatchStage``). ``barrier``: needs its whole input before it
    emits (``barrier = True``, ``AggregateStage``). ``branch``: broadcasts to named
    sub-pipelines (``BranchStage``). ``stateful``: keeps keyed state across micro-batches
    and emits as it goes (``KeyedStage``, ``WindowStage``): records in = absorbed into its
    state + dead-lettered (late ones too), and its outputs are born; its state is part of
    every checkpoint. ``sink``: where the records leave (not a stage).
    ``source``: where they come from (a :class:`conveyor.Source`'s row; not a stage).
    """

    RECORD = "record"
    EXPAND = "expand"
    BATCH = "batch"
    BARRIER = "barrier"
    BRANCH = "branch"
    STATEFUL = "stateful"
    SINK = "sink"
    SOURCE = "source"


def stage_kind(stage: PipelineStage[Any, Any]) -> StageKind:
    """The kind of ``stage``.

    >>> from conveyor import AggregateStage, MapStage
    >>> stage_kind(MapStage(abs)), stage_kind(AggregateStage(sum)), stage_kind(BatchStage(2))
    (<StageKind.RECORD: 'record'>, <StageKind.BARRIER: 'barrier'>, <StageKind.BATCH: 'batch'>)
    """
    if isinstance(stage, BranchStage):
        return StageKind.BRANCH
    if isinstance(stage, BatchStage):
        return StageKind.BATCH
    if isinstance(stage, StatefulStage):
        return StageKind.STATEFUL
    if stage.barrier:
        return StageKind.BARRIER
    if isinstance(stage, FlattenStage) or stage.expands:
        return StageKind.EXPAND
    return StageKind.RECORD


def flatten_stages(stages: Iterable[PipelineStage[Any, Any]]) -> list[PipelineStage[Any, Any]]:
    """``stages`` with every :class:`ChainedStage` replaced by its leaves, in order.

    >>> from conveyor import MapStage
    >>> [s.name for s in flatten_stages([MapStage(abs, name="a") >> MapStage(abs, name="b")])]
    ['a', 'b']
    """
    out: list[PipelineStage[Any, Any]] = []
    for stage in stages:
        out.extend(stage.stages if isinstance(stage, ChainedStage) else (stage,))
    return out


def group_depth(kind: StageKind, depth: int, stage: PipelineStage[Any, Any]) -> int:
    """How deep the records leaving a stage are nested in groups, given the depth of the
    records entering it: a ``BatchStage`` adds a level, a ``FlattenStage`` removes one, a
    barrier, branch or stateful stage emits plain values again; other stages keep it.

    >>> group_depth(StageKind.BATCH, 0, BatchStage(3)), group_depth(
    ...     StageKind.EXPAND, 1, FlattenStage())
    (1, 0)
    """
    if kind is StageKind.BATCH:
        return depth + 1
    if isinstance(stage, FlattenStage):
        return max(depth - 1, 0)
    if kind in (StageKind.BARRIER, StageKind.BRANCH, StageKind.STATEFUL):
        return 0
    return depth
