"""The loops that move micro-batches: one per kind of stage, and the sink's.

Each stage's loop takes micro-batches from its input channel and sends what it makes on.
Consecutive stages that never await (built-in per-record stages calling sync functions on
the event loop) share one task: each micro-batch goes through all of them while it is hot
in the CPU cache, and each stage still keeps its own counters, hooks, contracts and dead
letters.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from conveyor.core._render import format_traceback
from conveyor.core.context import PipelineContext
from conveyor.core.hooks import RunEvents
from conveyor.core.kinds import StageKind
from conveyor.core.result import StageResult
from conveyor.core.stages import BatchStage, BranchStage, RecordStage
from conveyor.dlq import DeadLetter
from conveyor.errors import ConservationError
from conveyor.runtime.attempts import Settled, settle_sink, settle_stage
from conveyor.runtime.channel import Channel, ChannelClosed, EndOfStream
from conveyor.runtime.letters import LetterBox
from conveyor.runtime.lineage import OffsetTracker
from conveyor.runtime.parts import Part, SinkRuntime, StageRuntime

if TYPE_CHECKING:
    from conveyor.runtime.checkpoints import Checkpointer

__all__ = ["Chunk", "Flow", "StopRequest"]


@dataclass(slots=True)
class Chunk:
    """A micro-batch and the ids of the source batches its records came from (the
    references it holds); ``origin`` names them for a chunk that holds none (a branch arm's:
    the branch holds them), so that its dead letters still say where they came from."""

    records: list[Any]
    lineage: tuple[int, ...]
    origin: tuple[int, ...] = ()


class StopRequest:
    """The first ``KeyboardInterrupt``/``SystemExit`` raised by stage code: the run
    drains like after a signal, then raises it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.callback: Any = None

    def raise_later(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
            if self.callback is not None:
                self.callback()


class Flow:
    """The moving parts shared by every loop of one run."""

    def __init__(
        self,
        *,
        tracker: OffsetTracker,
        box: LetterBox,
        events: RunEvents,
        context: PipelineContext,
        batch_size: int,
        capacity: int,
        stop: StopRequest,
    ) -> None:
        self.tracker = tracker
        self.box = box
        self.events = events
        self.context = context
        self.batch_size = batch_size
        self.capacity = capacity
        self.stop = stop
        self.checkpointer: Checkpointer | None = None
        self.source_finished: Callable[[], bool] = lambda: True

    # -- wiring ------------------------------------------------------------------------------

    def groups(self, runtimes: Sequence[StageRuntime]) -> list[list[StageRuntime]]:
        """The stages cut into tasks: runs of fusable stages share one."""
        out: list[list[StageRuntime]] = []
        for rt in runtimes:
            if rt.fusable and out and out[-1][-1].fusable:
                out[-1].append(rt)
            else:
                out.append([rt])
        for group in out:
            if len(group) > 1:
                for rt in group:
                    rt.stats.fused = True
        return out

    async def stage_task(
        self, group: list[StageRuntime], inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        """Run one task's stages until the input ends, then close the output."""
        try:
            rt = group[0]
            if len(group) > 1:
                await self._fused_loop(group, inp, out)
            elif rt.kind is StageKind.BATCH:
                assert isinstance(rt.stage, BatchStage)
                await self._batch_loop(rt, rt.stage.size, inp, out)
            elif rt.kind is StageKind.BRANCH:
                assert isinstance(rt.stage, BranchStage)
                if rt.stage.streams:
                    await self._streaming_branch_loop(rt, rt.stage, inp, out)
                else:
                    await self._branch_loop(rt, inp, out)
            elif rt.kind is StageKind.BARRIER:
                await self._barrier_loop(rt, inp, out)
            elif rt.kind is StageKind.STATEFUL:
                from conveyor.runtime.stateful import stateful_loop  # (it imports this module)

                await stateful_loop(self, rt, inp, out)
            else:
                await self._slice_loop(rt, inp, out)
        finally:
            out.close()

    async def forward(self, chunk: Chunk | None, out: Channel[Chunk]) -> None:
        """Send ``chunk`` on, then let the receiver take it while it is hot in the cache."""
        if chunk is not None:
            await out.send(chunk)
            await asyncio.sleep(0)

    # -- record and expand stages ----------------------------------------------------------

    async def _fused_loop(
        self, group: list[StageRuntime], inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        async for chunk in inp:
            current: Chunk | None = chunk
            for rt in group:
                assert current is not None
                current = await self.handle(rt, current)
                if current is None:
                    break
            await self.forward(current, out)

    async def _slice_loop(self, rt: StageRuntime, inp: Channel[Chunk], out: Channel[Chunk]) -> None:
        concurrency = rt.options.concurrency
        if concurrency == 1:
            async for chunk in inp:
                await self.forward(await self.handle(rt, chunk), out)
            return
        in_flight: deque[asyncio.Task[Chunk | None]] = deque()
        running: set[asyncio.Task[Chunk | None]] = set()
        try:
            if rt.options.ordered:
                async for chunk in inp:
                    in_flight.append(asyncio.create_task(self.handle(rt, chunk)))
                    if len(in_flight) >= concurrency:
                        await self.forward(await in_flight.popleft(), out)
            else:
                async for chunk in inp:
                    running.add(asyncio.create_task(self.handle(rt, chunk)))
                    if len(running) >= concurrency:
                        done, running = await asyncio.wait(
                            running, return_when=asyncio.FIRST_COMPLETED
                        )
                        for task in done:
                            await self.forward(task.result(), out)
                in_flight.extend(running)
                running = set()
            while in_flight:
                await self.forward(await in_flight.popleft(), out)
        finally:
            for task in (*in_flight, *running):
                task.cancel()

    async def handle(self, rt: StageRuntime, chunk: Chunk) -> Chunk | None:
        """Process one micro-batch of a record or expand stage; return what goes on."""
        stats, records = rt.stats, chunk.records
        n = len(records)
        stats.received += n
        stats.batches += 1
        weight = rt.weigh_in(records)
        stats.records_in += weight
        t0 = time.perf_counter()
        try:
            await self._before(rt, records)
            if rt.limiter is not None:
                await rt.limiter.acquire(n)
            settled = await self._settle(rt, records)
        except (KeyboardInterrupt, SystemExit) as stop:
            self._unfinished(rt, n, weight, stop)
            return None
        outputs, filtered, dead = settled.outputs, settled.filtered, settled.dead
        if rt.kind is StageKind.RECORD and len(outputs) + filtered + len(dead) != n:
            raise ConservationError(
                rt.name,
                f"a micro-batch of {n} records gave {len(outputs)} outputs, {filtered} "
                f"filtered and {len(dead)} failed; a stage that drops records must report "
                "them (StageResult.ok(out, records_filtered=n)), and a stage that emits "
                "several records per input must set expands = True",
            )
        stats.busy_seconds += time.perf_counter() - t0
        if dead:
            await self.box.send(rt, dead, chunk.lineage or chunk.origin)
        stats.filtered += filtered
        stats.emitted += len(outputs)
        out_weight = rt.weigh_out(outputs)
        stats.records_out += out_weight
        if filtered:
            stats.records_filtered += self._filtered_weight(rt, records, outputs, dead, filtered)
        if rt.reshapes:
            stats.settle_reshaping()
        if self.events.has("after_stage"):
            await self._after(
                rt,
                outputs,
                StageResult.ok(
                    outputs, records_in=n, records_filtered=filtered, records_failed=len(dead)
                ),
            )
        if not outputs:
            self.tracker.release(chunk.lineage)
            return None
        return Chunk(outputs, chunk.lineage, chunk.origin)

    async def _settle(self, rt: StageRuntime, records: list[Any]) -> Settled:
        dead: list[DeadLetter] = []
        if rt.input_contract is not None:
            records = self._check_input(rt, records, dead)
        settled = await (
            self._direct(rt, records)
            if rt.direct
            else settle_stage(rt, records, self.box, self.context)
        )
        settled.dead[:0] = dead
        return settled

    async def _direct(self, rt: StageRuntime, records: list[Any]) -> Settled:
        """A record-wise stage with nothing to retry, time or check: call it, letter its
        failures (the retry loop takes over only if the call fails as a whole)."""
        stage = rt.stage
        assert isinstance(stage, RecordStage)
        try:
            outcome = await stage.process_records(records, self.context, stop_on_error=False)
        except Exception:  # not a record's failure: retried whole, then split, as always
            return await settle_stage(rt, records, self.box, self.context)
        letter = self.box.letter
        dead = [letter(rt, f.item, f.error, format_traceback(f.error), 1) for f in outcome.failures]
        return Settled(outcome.outputs, outcome.filtered, dead)

    def _check_input(
        self, rt: StageRuntime, records: list[Any], dead: list[DeadLetter]
    ) -> list[Any]:
        assert rt.input_contract is not None
        violations = rt.check.violations(rt.input_contract, records, edge="input", stage=rt.name)
        if not violations:
            return records
        bad = {index for index, _ in violations}
        for index, violation in violations:
            dead.append(
                self.box.letter(rt, records[index], violation, format_traceback(violation), 0)
            )
        return [r for i, r in enumerate(records) if i not in bad]

    @staticmethod
    def _filtered_weight(
        rt: StageRuntime, records: list[Any], outputs: list[Any], dead: list[DeadLetter], n: int
    ) -> int:
        """Records held by the elements a stage dropped on purpose."""
        if rt.depth_in == 0:
            return n
        kept = {id(o) for o in outputs} | {id(letter.record) for letter in dead}
        gone = [r for r in records if id(r) not in kept]
        return rt.weigh_in(gone) if len(gone) == n else n

    def _unfinished(self, part: Part, n: int, weight: int, stop: BaseException) -> None:
        """Stage code raised KeyboardInterrupt/SystemExit: leave the micro-batch in flight
        (its source offsets stay below the low watermark) and drain the rest."""
        part.stats.unfinished += n
        part.stats.records_unfinished += weight
        self.stop.raise_later(stop)

    # -- batch, barrier, branch ------------------------------------------------------------

    async def _batch_loop(
        self, rt: StageRuntime, size: int, inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        """Re-cut the stream into groups of ``size`` records across micro-batch borders."""
        stats = rt.stats
        buffer: list[Any] = []
        held: deque[list[Any]] = deque()  # [lineage, records of it still in the buffer]

        async def emit(groups: list[list[Any]]) -> None:
            taken = sum(len(g) for g in groups)
            lineage: dict[int, None] = {}
            consumed: list[tuple[int, ...]] = []
            while taken:
                entry = held[0]
                lineage.update(dict.fromkeys(entry[0]))
                use = min(taken, entry[1])
                entry[1] -= use
                taken -= use
                if entry[1] == 0:
                    consumed.append(held.popleft()[0])
            ids = tuple(lineage)
            self.tracker.acquire(ids)  # the new micro-batch holds its sources...
            for done in consumed:  # ...before the fully grouped inputs let go of theirs
                self.tracker.release(done)
            stats.emitted += len(groups)
            stats.grouped += sum(len(g) for g in groups)
            stats.records_out += rt.weigh_out(groups)
            if self.events.has("after_stage"):
                taken = sum(len(g) for g in groups)
                await self._after(rt, groups, StageResult.ok(groups, records_in=taken))
            await self.forward(Chunk(groups, ids), out)

        async for chunk in inp:
            stats.received += len(chunk.records)
            stats.records_in += rt.weigh_in(chunk.records)
            stats.batches += 1
            await self._before(rt, chunk.records)
            buffer.extend(chunk.records)
            held.append([chunk.lineage, len(chunk.records)])
            if len(buffer) >= size:
                cut = len(buffer) - len(buffer) % size
                groups = [buffer[i : i + size] for i in range(0, cut, size)]
                del buffer[:cut]
                await emit(groups)
        if buffer:
            await emit([buffer])

    async def _collect(self, rt: StageRuntime, inp: Channel[Chunk]) -> tuple[list[Any], list[Any]]:
        """Take a barrier's or branch's whole input: its records and the lineage it holds."""
        records: list[Any] = []
        held: list[tuple[int, ...]] = []  # one reference per chunk consumed
        async for chunk in inp:
            rt.stats.received += len(chunk.records)
            rt.stats.records_in += rt.weigh_in(chunk.records)
            rt.stats.batches += 1
            records.extend(chunk.records)
            held.append(chunk.lineage)
        return records, held

    async def _emit_whole(
        self, rt: StageRuntime, outputs: list[Any], held: list[Any], out: Channel[Chunk]
    ) -> None:
        """Send a barrier's outputs on in micro-batches; they hold all of its sources."""
        lineage: dict[int, None] = {}
        for ids in held:
            lineage.update(dict.fromkeys(ids))
        size = self.batch_size
        chunks = [outputs[i : i + size] for i in range(0, len(outputs), size)]
        self.tracker.acquire(tuple(lineage), len(chunks))
        for consumed in held:  # chunks after a re-cut may share a source batch
            self.tracker.release(consumed)
        for part in chunks:
            rt.stats.emitted += len(part)
            rt.stats.records_out += rt.weigh_out(part)
            await self.forward(Chunk(part, tuple(lineage)), out)

    async def _barrier_loop(
        self, rt: StageRuntime, inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        """Take the whole stream, process it once, emit the result in micro-batches."""
        records, held = await self._collect(rt, inp)
        # Even an empty stream is aggregated, as in collection mode (sum of nothing is 0).
        t0 = time.perf_counter()
        try:
            await self._before(rt, records)
            settled = await settle_stage(rt, records, self.box, self.context)
        except (KeyboardInterrupt, SystemExit) as stop:
            self._unfinished(rt, len(records), rt.stats.records_in, stop)
            return
        rt.stats.busy_seconds += time.perf_counter() - t0
        if settled.dead:  # records it reported as failed, or all of them if it failed whole
            await self.box.send(rt, settled.dead, tuple(i for ids in held for i in ids))
        if settled.failed_whole:
            self._settle_barrier(rt)
            for consumed in held:
                self.tracker.release(consumed)
            return
        rt.barrier_output = settled.raw
        rt.stats.filtered += settled.filtered
        await self._after_whole(rt, settled.outputs, len(records))
        await self._emit_whole(rt, settled.outputs, held, out)
        self._settle_barrier(rt)

    async def _after_whole(self, rt: StageRuntime, outputs: list[Any], taken: int) -> None:
        if self.events.has("after_stage"):
            result = StageResult.ok(outputs, records_in=taken, records_out=len(outputs))
            await self._after(rt, outputs, result)

    async def _before(self, rt: StageRuntime, data: list[Any]) -> None:
        """``before_stage`` hooks, with the stage's input."""
        if self.events.has("before_stage"):
            await self.events.hook(
                "before_stage", rt.name, stage_name=rt.name, data=data, context=self.context
            )

    async def _after(self, rt: StageRuntime, data: list[Any], result: StageResult[Any]) -> None:
        """``after_stage`` hooks, with the stage's output."""
        await self.events.hook(
            "after_stage",
            rt.name,
            stage_name=rt.name,
            data=data,
            context=self.context,
            result=result,
        )

    @staticmethod
    def _settle_barrier(rt: StageRuntime) -> None:
        """A barrier absorbs every record it took (but the dead-lettered) and its outputs
        are new records."""
        stats = rt.stats
        stats.absorbed = stats.records_in - stats.records_dead - stats.records_unfinished
        stats.born = stats.records_out

    async def _branch_loop(
        self, rt: StageRuntime, inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        """Broadcast the stream to every arm (each a chain of stage tasks of this run) and
        emit one record ``{arm: output}`` at the end, as collection mode does."""
        feeds = {arm: Channel[Chunk](self.capacity, name=f"{rt.name}/{arm}") for arm in rt.arms}
        arms = {arm: asyncio.create_task(self._arm(rt.arms[arm], feeds[arm])) for arm in rt.arms}
        for arm, task in arms.items():  # an arm that fails stops taking: unblock its feed
            task.add_done_callback(_closing(feeds[arm]))
        held: list[tuple[int, ...]] = []
        taken = 0
        try:
            async for chunk in inp:
                rt.stats.received += len(chunk.records)
                rt.stats.records_in += rt.weigh_in(chunk.records)
                rt.stats.batches += 1
                taken += len(chunk.records)
                held.append(chunk.lineage)
                for arm, feed in feeds.items():  # arm chunks hold no lineage: the branch does
                    try:
                        await feed.send(Chunk(chunk.records, (), chunk.lineage))
                    except ChannelClosed:
                        await arms[arm]  # raises the arm's error
                        raise
            for feed in feeds.values():
                feed.close()
            outputs = {arm: await task for arm, task in arms.items()}
        finally:
            for task in arms.values():
                task.cancel()
        if any(a.stats.unfinished for chain in rt.arms.values() for a in chain):
            # Stage code of an arm was interrupted: its value would be partial. The branch
            # emits nothing and its records stay in flight (below the low watermark).
            rt.stats.unfinished, rt.stats.records_unfinished = taken, rt.stats.records_in
            return
        await self._after_whole(rt, [outputs], taken)
        if held:
            await self._emit_whole(rt, [outputs], held, out)
        self._settle_barrier(rt)

    async def _arm(self, chain: list[StageRuntime], feed: Channel[Chunk]) -> Any:
        """Run one arm of a branch; return its value (a barrier's own output, or the
        records that came out of it)."""
        collected: list[Any] = []

        async def drain(end: Channel[Chunk]) -> None:
            async for chunk in end:
                collected.extend(chunk.records)

        await self._chain(chain, feed, drain)
        last = chain[-1]
        if last.kind is StageKind.BARRIER:
            return last.barrier_output
        return collected

    async def _chain(
        self,
        chain: list[StageRuntime],
        feed: Channel[Chunk],
        drain: Callable[[Channel[Chunk]], Awaitable[None]],
    ) -> None:
        """Run an arm's stages as tasks joined by channels from ``feed``; ``drain`` takes
        what comes out of the last."""
        channels = [feed]
        tasks = []
        for group in self.groups(chain):
            nxt = Channel[Chunk](self.capacity, name=f"{group[0].name} ->")
            tasks.append(asyncio.create_task(self.stage_task(group, channels[-1], nxt)))
            channels.append(nxt)
        try:
            await asyncio.gather(drain(channels[-1]), *tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _streaming_branch_loop(
        self, rt: StageRuntime, stage: BranchStage[Any], inp: Channel[Chunk], out: Channel[Chunk]
    ) -> None:
        """A branch with windows (ADR 0011, decision 12): broadcast each micro-batch to
        every arm, each copy holding its own reference to the source batches (so the branch
        holds nothing), and send what comes out of each arm on as it comes, each record
        tagged with its arm (:meth:`BranchStage.tagged`), in a micro-batch with the lineage
        of the arm's. A snapshot is cut at the branch's micro-batch borders: when the
        branch comes first among the run's stateful stages it stops broadcasting there
        (its gate, made by :meth:`~conveyor.runtime.stateful.Snapshots.of`), so that every
        arm's state holds the same source batches."""
        stats, tracker, tagged = rt.stats, self.tracker, stage.tagged
        feeds = {arm: Channel[Chunk](self.capacity, name=f"{rt.name}/{arm}") for arm in rt.arms}
        copies = len(feeds) - 1
        after = self.events.has("after_stage")

        async def emit(arm: str, end: Channel[Chunk]) -> None:
            async for chunk in end:
                records = [tagged(arm, r) for r in chunk.records]
                stats.emitted += len(records)
                stats.records_out += len(records)
                if after:
                    await self._after(
                        rt, records, StageResult.ok(records, records_out=len(records))
                    )
                await self.forward(Chunk(records, chunk.lineage, chunk.origin), out)

        arms = {
            arm: asyncio.create_task(self._chain(chain, feeds[arm], partial(emit, arm)))
            for arm, chain in rt.arms.items()
        }
        for arm, task in arms.items():  # an arm that fails stops taking: unblock its feed
            task.add_done_callback(_closing(feeds[arm]))
        gate = rt.gate
        try:
            async for chunk in inp:
                if gate is not None:
                    await gate.wait(tick=False)  # (a snapshot is wanted: stop at this border)
                stats.received += len(chunk.records)
                stats.records_in += rt.weigh_in(chunk.records)
                stats.batches += 1
                if copies:
                    tracker.acquire(chunk.lineage, copies)  # one reference per arm's copy
                for arm, feed in feeds.items():
                    try:
                        await feed.send(Chunk(chunk.records, chunk.lineage, chunk.origin))
                    except ChannelClosed:
                        await arms[arm]  # raises the arm's error
                        raise
            for feed in feeds.values():
                feed.close()
            await asyncio.gather(*arms.values())
        finally:
            for task in arms.values():
                task.cancel()
        # The branch absorbs what it took (into its arms) and its outputs are born; records
        # an arm's interrupted stage code left unfinished stay in flight.
        unfinished = [
            (sum(a.stats.unfinished for a in chain), sum(a.stats.records_unfinished for a in chain))
            for chain in rt.arms.values()
        ]
        stats.unfinished = max(n for n, _ in unfinished)
        stats.records_unfinished = max(n for _, n in unfinished)
        stats.absorbed = stats.records_in - stats.records_unfinished
        stats.born = stats.records_out

    # -- the sink ----------------------------------------------------------------------------

    async def sink_loop(self, sink: SinkRuntime, inp: Channel[Chunk]) -> None:
        """Write every micro-batch to the sink, one write at a time, in order; take the
        run's checkpoints between writes."""
        stats, checkpointer = sink.stats, self.checkpointer
        while True:
            try:  # (the checkpointer also checkpoints while waiting, for a broker source)
                chunk = await (inp.receive() if checkpointer is None else checkpointer.receive(inp))
            except EndOfStream:
                break
            records = chunk.records
            n, weight = len(records), sink.weigh_in(records)
            stats.received += n
            stats.records_in += weight
            stats.batches += 1
            t0 = time.perf_counter()
            try:
                if sink.limiter is not None:
                    await sink.limiter.acquire(n)
                settled = await settle_sink(sink, records, self.box)
            except (KeyboardInterrupt, SystemExit) as stop:
                self._unfinished(sink, n, weight, stop)
                continue
            stats.busy_seconds += time.perf_counter() - t0
            if settled.dead:
                await self.box.send(sink, settled.dead, chunk.lineage)
            stats.emitted += len(settled.outputs)
            stats.records_out += sink.weigh_in(settled.outputs)
            if checkpointer is not None and checkpointer.tracks_delivery:
                checkpointer.delivered(self.tracker.ranges(chunk.lineage))
            self.tracker.release(chunk.lineage)
            if checkpointer is not None:
                await checkpointer.after_write(chunk.lineage, weight)
        if checkpointer is not None:  # drained: the final checkpoint
            await checkpointer.commit(finished=self.source_finished())


def _closing(channel: Channel[Chunk]) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that closes ``channel``."""

    def close(_: asyncio.Task[Any]) -> None:
        channel.close()

    return close
