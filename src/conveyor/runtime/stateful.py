"""Running a stateful stage (``StageKind.STATEFUL``: a ``KeyedStage`` or a window stage)
and snapshotting its state consistently with the checkpoints.

The loop. The stage's operator (:mod:`conveyor.core.keyed`) takes each micro-batch; what it
emits goes on in a micro-batch holding the input's lineage (so the source positions that
made a window close are done only once its result is written), and an input that emits
nothing is released at once: its records are absorbed into the state. A record it cannot
take (late, or its key or time unreadable) is a dead letter, written before its positions
count as done. When nothing arrives the operator is woken every ``tick_seconds`` (an
``asyncio.timeout`` on the receive, nothing through the channels) so that an idle stream
closes its last windows; what it emits then holds a *hold* of the offset tracker (no source
position). At the end of the input everything still open is emitted, unless the run keeps
checkpoints and was stopped before the end of its source: then the open windows stay in the
final checkpoint and a resume completes them.

Consistent snapshots (ADR 0011). A checkpoint must hold each stateful stage's state as it
was after exactly the records the checkpoint covers, with every output made from them
written. The checkpointer asks (:meth:`Snapshots.request`); the *first* stateful stage of
the main line then stops taking input at its next micro-batch border (upstream stages go on
filling the channels); later stateful stages go on with what is already downstream of it,
but fire no timer. Once no stateful stage is busy and every source batch they took or
emitted since the last snapshot has left the pipeline, the checkpoint is a cut: the state
of each stage is snapshotted, in the same step as the tracker's coverage, and the stages
go on at once (what they make meanwhile waits in the channels: the sink loop writes nothing
until the checkpoint is stored). A branch with windows (a streaming ``BranchStage``) takes
part: its arms' stateful stages are snapshotted with the others, and the branch has a gate
without an operator (a *border*): when it comes first, it is the branch that stops, before
broadcasting its next micro-batch, so that every arm's state holds the same source batches
(pausing each arm's first stage on its own could stop them at different batches, each
waiting for the other's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.core._render import format_traceback
from conveyor.core.keyed import Fed, Operator
from conveyor.core.result import StageResult
from conveyor.dlq import DeadLetter
from conveyor.runtime.channel import Channel, EndOfStream

if TYPE_CHECKING:
    from conveyor.runtime.flow import Chunk, Flow
    from conveyor.runtime.lineage import OffsetTracker
    from conveyor.runtime.parts import StageRuntime

__all__ = ["PAUSE_LIMIT", "Gate", "Snapshots", "stateful_loop"]

logger = logging.getLogger("conveyor.runtime")

PAUSE_LIMIT = 10.0
"""Seconds a checkpoint may hold the first stateful stage back waiting for a cut; past
that the stage goes on and the checkpoint is tried again at the next interval (a cut can
be out of reach when a ``BatchStage`` before the stage joins source batches)."""


class Gate:
    """One stateful stage's side of the snapshot protocol (see the module docstring); a
    gate without ``operator`` is a streaming branch's border, where it only stops."""

    __slots__ = ("busy", "first", "name", "operator", "since", "snapshots", "tainted")

    def __init__(self, name: str, operator: Operator | None) -> None:
        self.name = name
        self.operator = operator
        self.busy = False
        self.first = False
        self.since: set[int] = set()
        """Lineage ids the stage took or emitted since the last snapshot."""
        self.snapshots: Snapshots | None = None
        self.tainted = False
        """Stage code was interrupted mid-batch: its state is partial, never snapshotted."""

    async def wait(self, *, tick: bool) -> None:
        """Before a micro-batch (or a timer, ``tick``): wait while a snapshot is wanted."""
        snapshots = self.snapshots
        if snapshots is None or not snapshots.requested or not (tick or self.first):
            return
        snapshots.wake()
        await snapshots.released()


class Snapshots:
    """The checkpointer's handle on the run's stateful stages (the main line's)."""

    def __init__(self, gates: Sequence[Gate]) -> None:
        self.gates = list(gates)
        self.broadcasts = any(gate.operator is None for gate in self.gates)
        """Whether a streaming branch is among them (its border gate has no operator)."""
        if self.gates:
            self.gates[0].first = True
        for gate in self.gates:
            gate.snapshots = self
        self.requested = False
        self._since = 0.0
        self._released = asyncio.Event()
        self._released.set()
        self.wake: Callable[[], None] = lambda: None
        """Set by the checkpointer: wakes its wait for the sink's next batch."""

    @classmethod
    def of(cls, runtimes: Sequence[StageRuntime]) -> Snapshots | None:
        """The snapshots of the stateful stages among ``runtimes`` (``None``: none), in
        their order: a streaming branch's arms after the branch's border gate (made here)."""
        from conveyor.core.stages import BranchStage

        gates: list[Gate] = []
        for rt in runtimes:
            if rt.gate is not None:
                gates.append(rt.gate)
            elif isinstance(rt.stage, BranchStage) and rt.stage.streams:
                rt.gate = Gate(rt.name, None)
                gates.append(rt.gate)
                gates.extend(a.gate for c in rt.arms.values() for a in c if a.gate is not None)
        return cls(gates) if gates else None

    def request(self) -> None:
        """Ask for a cut: the first stateful stage stops at its next border."""
        if not self.requested:
            self.requested = True
            self._since = time.monotonic()
            self._released.clear()

    def stale(self) -> bool:
        """Whether a cut was asked for longer than :data:`PAUSE_LIMIT` ago."""
        return self.requested and time.monotonic() - self._since > PAUSE_LIMIT

    def ready(self, tracker: OffsetTracker) -> bool:
        """Whether the stages' states now make a cut with the tracker's coverage."""
        for gate in self.gates:
            if gate.busy or gate.tainted or tracker.pending(gate.since):
                return False
        return True

    def take(self) -> dict[str, str]:
        """Every stage's state as JSON text (call only when :meth:`ready`)."""
        state = {}
        for gate in self.gates:
            if gate.operator is not None:
                state[gate.name] = gate.operator.snapshot()
            gate.since.clear()
        return state

    def release(self) -> None:
        """The checkpoint is stored (or given up): the stages go on."""
        self.requested = False
        self._released.set()

    async def released(self) -> None:
        await self._released.wait()

    def restore(self, state: Mapping[str, str], where: str) -> None:
        """Continue each stage from the state a checkpoint holds (a resumed run)."""
        from conveyor.errors import CheckpointError

        for gate in self.gates:
            text = state.get(gate.name)
            if text is None or gate.operator is None:
                continue
            try:
                gate.operator.restore(text)
            except (ValueError, TypeError, KeyError, AttributeError, ImportError) as exc:
                raise CheckpointError(
                    where,
                    f"the state of stage {gate.name!r} in the checkpoint cannot be restored "
                    f"({type(exc).__name__}: {exc}); run with --fresh (resume=False in code) "
                    "to start from the beginning",
                ) from exc


async def stateful_loop(
    flow: Flow, rt: StageRuntime, inp: Channel[Chunk], out: Channel[Chunk]
) -> None:
    """Run a stateful stage until its input ends; see the module docstring."""
    from conveyor.runtime.flow import Chunk

    gate = rt.gate
    assert gate is not None
    operator = gate.operator
    assert operator is not None
    every = operator.tick_seconds
    while True:
        gate.busy = False
        try:
            if every is None:
                chunk: Chunk | None = await inp.receive()
            else:
                chunk = await _receive(inp, every)
        except EndOfStream:
            break
        await gate.wait(tick=chunk is None)
        gate.busy = True
        if chunk is None:
            await _tick(flow, rt, out)
            continue
        records, n = chunk.records, len(chunk.records)
        stats = rt.stats
        stats.received += n
        stats.records_in += n
        stats.batches += 1
        if gate.snapshots is not None:
            gate.since.update(chunk.lineage)
        t0 = time.perf_counter()
        dead: list[DeadLetter] = []
        try:
            await flow._before(rt, records)
            if rt.limiter is not None:
                await rt.limiter.acquire(n)
            taken = flow._check_input(rt, records, dead) if rt.input_contract else records
            fed = await operator.feed(taken)
        except (KeyboardInterrupt, SystemExit) as stop:
            gate.tainted = True
            flow._unfinished(rt, n, n, stop)
            continue
        stats.busy_seconds += time.perf_counter() - t0
        lineage = chunk.lineage or chunk.origin
        outputs = await _settle(flow, rt, fed, dead, lineage, n)
        if outputs:
            await flow.forward(Chunk(outputs, chunk.lineage, chunk.origin), out)
        else:
            flow.tracker.release(chunk.lineage)
    gate.busy = True
    await _finish(flow, rt, out)
    gate.busy = False


async def _receive(inp: Channel[Chunk], every: float) -> Chunk | None:
    """The next micro-batch, or ``None`` after ``every`` seconds without one."""
    try:
        async with asyncio.timeout(every):
            return await inp.receive()
    except TimeoutError:
        return None


async def _tick(flow: Flow, rt: StageRuntime, out: Channel[Chunk]) -> None:
    """Nothing came for a while: wake the operator; what it emits holds a hold."""
    from conveyor.runtime.flow import Chunk

    gate = rt.gate
    assert gate is not None
    assert gate.operator is not None
    t0 = time.perf_counter()
    fed = await gate.operator.tick()
    rt.stats.busy_seconds += time.perf_counter() - t0
    if not fed.outputs and not fed.lost:
        _live(rt)
        return
    lineage: tuple[int, ...] = ()
    if gate.snapshots is not None:
        lineage = (flow.tracker.hold(),)
        gate.since.update(lineage)
    outputs = await _settle(flow, rt, fed, [], lineage, 0)
    if outputs:
        await flow.forward(Chunk(outputs, lineage), out)
    else:
        flow.tracker.release(lineage)


async def _finish(flow: Flow, rt: StageRuntime, out: Channel[Chunk]) -> None:
    """The input ended: emit every open window and expire every key — unless the stage's
    state goes into the final checkpoint of a run stopped before the end of its source
    (then a resume completes them)."""
    from conveyor.runtime.flow import Chunk

    gate = rt.gate
    assert gate is not None
    if gate.tainted or (gate.snapshots is not None and not flow.source_finished()):
        _live(rt)
        return
    assert gate.operator is not None
    fed = await gate.operator.finish()
    lineage: tuple[int, ...] = ()
    if gate.snapshots is not None:  # a checkpoint before they are written must wait
        lineage = (flow.tracker.hold(),)
        gate.since.update(lineage)
    outputs = await _settle(flow, rt, fed, [], lineage, 0)
    size = flow.batch_size
    parts = [outputs[i : i + size] for i in range(0, len(outputs), size)]
    if len(parts) > 1:
        flow.tracker.acquire(lineage, len(parts) - 1)
    elif not parts:
        flow.tracker.release(lineage)
    for part in parts:
        await flow.forward(Chunk(part, lineage), out)


async def _settle(
    flow: Flow,
    rt: StageRuntime,
    fed: Fed,
    dead: list[DeadLetter],
    lineage: tuple[int, ...],
    taken: int,
) -> list[Any]:
    """Book what the operator made: letters (durable before anything counts), counters,
    output contract, hooks; returns the outputs that go on."""
    stats, box = rt.stats, flow.box
    letter = box.letter
    for failure in fed.rejected:
        dead.append(letter(rt, failure.item, failure.error, format_traceback(failure.error), 1))
    born = len(fed.outputs) + len(fed.lost)
    for failure in fed.lost:  # outputs that could not be made: born, and dead
        dead.append(letter(rt, failure.item, failure.error, format_traceback(failure.error), 1))
    outputs = fed.outputs
    if outputs and rt.output_contract is not None:
        outputs = _check_output(flow, rt, outputs, dead)
    if dead:
        await box.send(rt, dead, lineage)
    stats.late += fed.late
    stats.absorbed += fed.absorbed
    stats.born += born
    stats.emitted += len(outputs)
    stats.records_out += len(outputs)
    _live(rt)
    if flow.events.has("after_stage"):
        result = StageResult.ok(
            outputs, records_in=taken, records_out=len(outputs), records_failed=len(dead)
        )
        await flow._after(rt, outputs, result)
    return outputs


def _check_output(
    flow: Flow, rt: StageRuntime, outputs: list[Any], dead: list[DeadLetter]
) -> list[Any]:
    """Results that break the stage's output contract are dead letters (born, and dead)."""
    assert rt.output_contract is not None
    violations = rt.check.violations(rt.output_contract, outputs, edge="output", stage=rt.name)
    if not violations:
        return outputs
    bad = {index for index, _ in violations}
    for index, violation in violations:
        made = outputs[index]
        dead.append(
            flow.box.letter(rt, made, violation, format_traceback(violation), 1, output=made)
        )
    return [o for i, o in enumerate(outputs) if i not in bad]


def _live(rt: StageRuntime) -> None:
    """The stage's state, for live views and metrics (read as they are)."""
    gate = rt.gate
    assert gate is not None
    operator, stats = gate.operator, rt.stats
    assert operator is not None
    stats.open_windows = operator.open_windows
    stats.state_keys = operator.keys
    stats.state_records = operator.held
    watermark = operator.watermark
    stats.watermark = watermark
    stats.watermark_lag = None if watermark is None else time.time() - watermark
