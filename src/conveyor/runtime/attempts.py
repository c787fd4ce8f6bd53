"""The one retry loop: calls, timeouts, retries with back-off, isolation by bisection.

Every part of a run (a record stage, a barrier, the sink) settles its micro-batches here:

- a call that fails record by record (a record-wise stage) retries the records that failed
  with a transient error (``RetryPolicy.retry_on``) while attempts remain, and dead-letters
  the others;
- a call that fails as a whole is retried whole while the error is transient and attempts
  remain; then, if the part may be split (a stage, or an idempotent sink), the batch is
  halved until the bad records are alone; otherwise every record of it is dead-lettered;
- an output that breaks the stage's output contract fails its call like an error of the
  stage: isolation finds the input record that produced it, and the letter holds that input
  (replayable) with the violating output beside it;
- a call that outlives its part's ``timeout`` fails with
  :class:`~conveyor.errors.StageTimeoutError` (the executor gives later calls fresh
  workers). A per-record stage with a timeout is called one record at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.contracts._base import Contract
from conveyor.core._faults import fault_point
from conveyor.core._render import format_traceback
from conveyor.core.context import PipelineContext
from conveyor.core.kinds import StageKind
from conveyor.dlq import DeadLetter
from conveyor.errors import ContractViolation, SinkUnavailableError, StageTimeoutError
from conveyor.runtime.executors import ChunkOutcome, FailedRecord
from conveyor.runtime.letters import LetterBox
from conveyor.runtime.parts import Part, SinkRuntime, StageRuntime

__all__ = ["Settled", "settle_sink", "settle_stage"]

Call = Callable[[list[Any]], Awaitable[ChunkOutcome]]


@dataclass(slots=True)
class Settled:
    """What became of a micro-batch: outputs (in order, retried records last), how many
    were dropped on purpose, and the dead letters (not yet written)."""

    outputs: list[Any] = field(default_factory=list)
    filtered: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    raw: Any = None
    failed_whole: bool = False
    """A whole-input part (a barrier) failed as a whole: every record it took is a letter."""


class _Settler:
    """Settles one micro-batch of one part; see the module docstring."""

    def __init__(
        self,
        part: Part,
        call: Call,
        box: LetterBox,
        *,
        split: bool,
        whole: bool = False,
        contract: Contract | None = None,
        sampled: Callable[[list[Any]], list[tuple[int, ContractViolation]]] | None = None,
    ) -> None:
        self.part = part
        self.call = call
        self.box = box
        self.split = split
        self.whole = whole
        self.contract = contract
        self.sampled = sampled
        self.result = Settled()

    async def settle(self, records: list[Any]) -> Settled:
        await self._settle(records, 1, top=True)
        return self.result

    async def _settle(self, records: list[Any], attempt: int, *, top: bool = False) -> None:
        if not records and not self.whole:  # a barrier aggregates even an empty stream
            return
        outcome = await self.call(records)
        if outcome.error is None and self.contract is not None and outcome.outputs:
            outcome = self._check_outputs(records, outcome, top)
        if outcome.error is not None:
            await self._whole_failure(records, outcome, attempt)
            return
        self.result.outputs.extend(outcome.outputs)
        self.result.filtered += outcome.filtered
        if top or self.whole:  # (a whole-input part is only ever called on all of it)
            self.result.raw = outcome.raw
        await self._item_failures(outcome.failures, attempt)

    def _check_outputs(self, records: list[Any], outcome: ChunkOutcome, top: bool) -> ChunkOutcome:
        """Turn a contract violation among the outputs into a failure of the call."""
        assert self.contract is not None
        if top and self.sampled is not None:
            found = self.sampled(outcome.outputs)
        else:
            found = self.contract.check_many(outcome.outputs)
        if not found:
            return outcome
        violation = found[0][1]
        violation = ContractViolation(
            violation.contract,
            violation.path,
            violation.reason,
            edge="output",
            stage=self.part.name,
        )
        if len(records) == 1:
            bad = [outcome.outputs[i] for i, _ in found]
            letter = self.box.letter(
                self.part,
                records[0],
                violation,
                format_traceback(violation),
                0,
                output=bad[0] if len(bad) == 1 else bad,
            )
            self.result.dead.append(letter)
            return ChunkOutcome()  # the record is settled: nothing goes on
        return ChunkOutcome(error=violation, error_traceback=format_traceback(violation))

    async def _item_failures(self, failures: Sequence[FailedRecord], attempt: int) -> None:
        retry = self.part.retry
        # A whole-input part is never called again on a subset: that would be another
        # aggregate. Its failed records are letters, its outputs stand.
        again = attempt < retry.attempts and not self.whole
        transient = [f.item for f in failures if again and retry.is_transient(f.error)]
        for failure in failures:
            if not (again and retry.is_transient(failure.error)):
                self._dead(failure.item, failure.error, failure.traceback, attempt)
        if transient:
            await asyncio.sleep(retry.delay(attempt))
            self.part.stats.retried += len(transient)
            await self._settle(transient, attempt + 1)

    async def _whole_failure(self, records: list[Any], outcome: ChunkOutcome, attempt: int) -> None:
        error = outcome.error
        assert error is not None
        retry = self.part.retry
        if retry.is_transient(error) and attempt < retry.attempts:
            await asyncio.sleep(retry.delay(attempt))
            self.part.stats.retried += len(records)
            await self._settle(records, attempt + 1)
            return
        if isinstance(error, SinkUnavailableError):
            raise error  # the records are fine, the sink is not: the run fails, resumable
        if self.split and len(records) > 1:
            mid = len(records) // 2  # parts are idempotent, so re-running the halves is safe
            await self._settle(records[:mid], attempt)
            await self._settle(records[mid:], attempt)
            return
        if self.whole:
            if not records:  # nothing to dead-letter: the failure must not vanish
                raise error
            self.result.failed_whole = True
        for record in records:
            self._dead(record, error, outcome.error_traceback, attempt)

    def _dead(self, record: Any, error: BaseException, tb: str, attempts: int) -> None:
        self.result.dead.append(self.box.letter(self.part, record, error, tb, attempts))


async def settle_stage(
    rt: StageRuntime, records: list[Any], box: LetterBox, context: PipelineContext
) -> Settled:
    """Process one micro-batch of a stage; a barrier is never split (it fails as a whole)."""

    contract = rt.output_contract

    def sampled(outputs: list[Any]) -> list[tuple[int, ContractViolation]]:
        assert contract is not None
        return rt.check.violations(contract, outputs, edge="output", stage=rt.name)

    whole = rt.kind in (StageKind.BARRIER, StageKind.BRANCH)
    checked = contract is not None and (rt.check.mode != "off" or contract.always)
    return await _Settler(
        rt,
        _stage_call(rt, context),
        box,
        split=not whole,
        whole=whole,
        contract=contract if checked else None,
        sampled=None if contract is None or contract.always else sampled,
    ).settle(records)


async def settle_sink(sink: SinkRuntime, records: list[Any], box: LetterBox) -> Settled:
    """Write one micro-batch to the sink: retried whole; split only if it is idempotent."""

    async def write(batch: list[Any]) -> ChunkOutcome:
        async def attempt() -> ChunkOutcome:
            fault_point("before_sink_write")  # test hook: a crash before the write
            try:
                await sink.executor.call(sink.sink.write, batch)
            except Exception as exc:
                return ChunkOutcome(error=exc, error_traceback=format_traceback(exc))
            return ChunkOutcome(outputs=batch)

        return await _timed(sink, attempt())

    return await _Settler(sink, write, box, split=sink.sink.idempotent).settle(records)


def _stage_call(rt: StageRuntime, context: PipelineContext) -> Call:
    stage, executor = rt.stage, rt.executor

    async def whole(records: list[Any]) -> ChunkOutcome:
        return await _timed(rt, executor.run(stage, records, context))

    if not rt.per_record:
        return whole

    async def one_by_one(records: list[Any]) -> ChunkOutcome:
        merged = ChunkOutcome()
        for record in records:
            outcome = await whole([record])
            if outcome.error is not None:
                merged.failures.append(FailedRecord(record, outcome.error, outcome.error_traceback))
                continue
            merged.outputs.extend(outcome.outputs)
            merged.filtered += outcome.filtered
            merged.failures.extend(outcome.failures)
        return merged

    return one_by_one


async def _timed(part: Part, call: Awaitable[ChunkOutcome]) -> ChunkOutcome:
    timeout = part.timeout
    if timeout is None:
        return await call
    await part.executor.ready()  # a worker's start-up is not the record's time
    try:  # asyncio.timeout: on 3.11 wait_for can swallow an abort's cancellation
        async with asyncio.timeout(timeout):
            return await call
    except TimeoutError:
        part.executor.abandon()  # a worker may still be stuck on it: do not queue behind it
        per = "record" if isinstance(part, StageRuntime) and part.per_record else "call"
        error = StageTimeoutError(part.name, timeout, per)
        return ChunkOutcome(error=error, error_traceback=format_traceback(error))
