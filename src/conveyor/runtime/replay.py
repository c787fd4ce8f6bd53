"""Replaying dead letters: back into the stage where each failed, on through every stage
after it, into the real sink.

A replay is an ordinary streaming run (:func:`~conveyor.runtime.run_stream`) of the
pipeline's tail, with the pipeline's own options, hooks and events, whose source is the
letters' records and whose sink is opened in ``replay`` mode. A letter is marked replayed
only once its record has left that run through the sink, a filter or the dead-letter queue
(a record that fails again becomes a new letter of the replay's run), so a second replay
delivers nothing twice. A barrier (or branch) after the failing stage would compute its
result a second time from the replayed records alone: a replay that reaches one is refused
before anything is touched, naming it (a project recomputes it from its persisted input
instead, see :mod:`conveyor.project.replay`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Unpack

from conveyor.core.kinds import StageKind, group_depth, stage_kind
from conveyor.core.options import RunChanges, RunOptions
from conveyor.core.sink import as_sink
from conveyor.core.spec import HasSpec, PipelineSpec, spec_of
from conveyor.dlq import DeadLetter, DeadLetterStore
from conveyor.errors import PipelineDefinitionError
from conveyor.runtime.report import RunReport
from conveyor.runtime.runner import run_stream

__all__ = ["ReplayGroup", "ReplayRefused", "plan_replay", "replay_dead_letters"]


class ReplayRefused(PipelineDefinitionError):
    """Dead letters cannot be replayed into this pipeline as it is; nothing was touched.

    Attributes:
        stage: the stage whose letters were to be replayed.
        blocker: the stage that stands in the way (a barrier, or the unknown stage itself).
    """

    def __init__(self, stage: str, blocker: str, message: str) -> None:
        self.stage = stage
        self.blocker = blocker
        super().__init__(message)


@dataclass(frozen=True)
class ReplayGroup:
    """The letters of one stage, and where in the pipeline they go back in."""

    stage: str
    letters: tuple[DeadLetter, ...]
    start: int
    """Index of the stage among the pipeline's leaf stages (``len(leaves)``: the sink)."""
    depth: int
    """How deep the records entering that stage are nested in groups."""
    barrier: str | None
    """The first barrier or branch after the stage, or stateful stage from it on, if any."""


def plan_replay(
    spec: PipelineSpec, letters: Sequence[DeadLetter], sink_name: str = "sink"
) -> list[ReplayGroup]:
    """Group ``letters`` by the stage they failed in, in pipeline order.

    Raises :class:`ReplayRefused` for a letter of a stage the pipeline does not have.
    """
    leaves = spec.leaves
    names = [s.name for s in leaves]
    depths, kinds, depth = [], [], 0
    for stage in leaves:
        kind = stage_kind(stage)
        depths.append(depth)
        kinds.append(kind)
        depth = group_depth(kind, depth, stage)
    by_stage: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_stage.setdefault(letter.stage, []).append(letter)
    groups = []
    for name, group in by_stage.items():
        if name in (sink_name, "sink") and name not in names:
            start, entry_depth = len(leaves), depth
        elif name in names:
            start = names.index(name)
            entry_depth = depths[start]
        else:
            raise ReplayRefused(
                name,
                name,
                f"dead letters of stage {name!r} cannot be replayed into pipeline "
                f"{spec.name!r}: it has no such stage (stages: {', '.join(names)}); letters "
                "of a stage inside a branch cannot be replayed yet",
            )
        barrier = next(
            (
                names[i]
                for i in range(start, len(leaves))
                if (i > start and kinds[i] in (StageKind.BARRIER, StageKind.BRANCH))
                or kinds[i] is StageKind.STATEFUL  # its windows closed: results again
            ),
            None,
        )
        groups.append(ReplayGroup(name, tuple(group), start, entry_depth, barrier))
    groups.sort(key=lambda g: g.start)
    return groups


class Marker:
    """Marks letters replayed as their records leave the replay run (``on_done``), or all
    at once later (``defer``: when the run's outputs are committed only at its end)."""

    def __init__(self, store: DeadLetterStore, letters: Sequence[DeadLetter], *, defer: bool):
        self.store = store
        self.letters = letters
        self.defer = defer
        self.settled: list[str] = []

    def on_done(self, first: int, last: int) -> None:
        """Source records ``first..last`` (positions in :attr:`letters`) have left the run."""
        ids = [letter.id for letter in self.letters[first : last + 1]]
        if self.defer:
            self.settled.extend(ids)
        else:
            self.store.mark_replayed(ids)

    def commit(self) -> int:
        """Mark what was deferred; returns how many letters were marked."""
        marked = self.store.mark_replayed(self.settled) if self.settled else 0
        self.settled = []
        return marked


async def replay_group(
    spec: PipelineSpec,
    group: ReplayGroup,
    store: DeadLetterStore,
    sink: object,
    options: RunOptions,
) -> RunReport:
    """Replay one group's letters through ``spec``'s stages from the group's stage on,
    marking them replayed as their records leave."""
    tail = spec.with_stages(spec.leaves[group.start :])
    marker = Marker(store, group.letters, defer=False)
    return await run_stream(
        tail,
        [letter.record for letter in group.letters],
        sink,
        options.merged(dead_letters=store),
        mode="replay",
        on_done=marker.on_done,
        depth=group.depth,
    )


async def replay_dead_letters(
    pipeline: PipelineSpec | HasSpec,
    store: DeadLetterStore,
    sink: object,
    options: RunOptions | None = None,
    *,
    stage: str | None = None,
    run_id: str | None = None,
    **changes: Unpack[RunChanges],
) -> list[RunReport]:
    """Feed not-yet-replayed dead letters back into the stage where each failed, and on
    through every later stage into ``sink``; one run per stage, in pipeline order.

    ``options`` and keyword arguments are those of :meth:`Pipeline.arun` (dead letters of
    the replay go to ``store`` as well). Raises :class:`ReplayRefused` before anything runs
    when a letter's stage is unknown or a barrier follows it. Returns the reports.
    """
    spec = spec_of(pipeline)
    letters = await asyncio.to_thread(store.list, stage=stage, run_id=run_id)
    plan = plan_replay(spec, letters, as_sink(sink).name)
    refuse_barriers(spec, plan)
    run_options = (options or RunOptions()).merged(**changes)
    reports = []
    for group in plan:
        reports.append(await replay_group(spec, group, store, sink, run_options))
    return reports


def _why(spec: PipelineSpec, group: ReplayGroup) -> str:
    stage = next((s for s in spec.leaves if s.name == group.barrier), None)
    if stage is not None and stage_kind(stage) is StageKind.STATEFUL:
        where = "is" if group.barrier == group.stage else "after it is"
        return f"{where} a stateful stage (its windows and keyed state closed long ago)"
    return "after it is a barrier (it needs the whole stream)"


def refuse_barriers(
    spec: PipelineSpec,
    plan: Sequence[ReplayGroup],
    recomputable: Callable[[str], bool] = lambda _: False,
) -> None:
    """Raise :class:`ReplayRefused` for a group whose records would reach a barrier that
    cannot be recomputed from its persisted input (``recomputable(name)``)."""
    for group in plan:
        if group.barrier is not None and not recomputable(group.barrier):
            raise ReplayRefused(
                group.stage,
                group.barrier,
                f"dead letters of stage {group.stage!r} cannot be replayed: stage "
                f"{group.barrier!r} {_why(spec, group)} and would compute its results again "
                "from the replayed records alone. Persist "
                f"the output of the stage before {group.barrier!r} (in a project: "
                f"persist: in config.yaml, then run the pipeline again), so that the replay "
                f"can recompute {group.barrier!r} from its whole input; nothing was replayed",
            )
