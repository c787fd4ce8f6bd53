"""The report of a streaming run: counts per stage, channels, and the conservation law."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from conveyor.errors import ConservationError
from conveyor.runtime.channel import ChannelStats

__all__ = ["RunReport", "RunStatus", "StageKind", "StageStats"]


class RunStatus(StrEnum):
    """How a streaming run ended."""

    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    ABORTED = "aborted"


class StageKind(StrEnum):
    """How the runner treats a stage: ``record`` (any slice; in = out + filtered + dead),
    ``expand`` (one record may become several), ``batch`` (re-cuts into groups),
    ``barrier`` (consumes the whole stream, then emits), ``sink``."""

    RECORD = "record"
    EXPAND = "expand"
    BATCH = "batch"
    BARRIER = "barrier"
    SINK = "sink"


@dataclass(slots=True)
class StageStats:
    """Counters of one stage in a streaming run (records are stream elements)."""

    name: str
    kind: StageKind
    executor: str = "inline"
    received: int = 0
    emitted: int = 0
    filtered: int = 0
    dead_lettered: int = 0
    retried: int = 0
    batches: int = 0
    busy_seconds: float = 0.0
    grouped: int = 0

    def check(self) -> None:
        """Raise :class:`ConservationError` if this stage's own counts do not add up."""
        if self.kind in (StageKind.RECORD, StageKind.SINK):
            out = self.emitted + self.filtered + self.dead_lettered
            if out != self.received:
                raise ConservationError(
                    self.name,
                    f"received {self.received} but emitted {self.emitted} + filtered "
                    f"{self.filtered} + dead-lettered {self.dead_lettered} = {out}",
                )
        elif self.kind is StageKind.BATCH and self.grouped + self.dead_lettered != self.received:
            raise ConservationError(
                self.name,
                f"received {self.received} records but grouped {self.grouped} "
                f"and dead-lettered {self.dead_lettered}",
            )

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (for events and JSON)."""
        return {
            "stage": self.name,
            "kind": self.kind.value,
            "executor": self.executor,
            "received": self.received,
            "emitted": self.emitted,
            "filtered": self.filtered,
            "dead_lettered": self.dead_lettered,
            "retried": self.retried,
            "batches": self.batches,
            "busy_seconds": round(self.busy_seconds, 6),
        }


@dataclass(slots=True)
class RunReport:
    """What a streaming run did.

    ``records_in`` came from the source; every one of them left through the sink
    (``records_out`` counts what the sink received), a filter (``filtered``) or the
    dead-letter queue (``dead_lettered``); :meth:`check_conservation` proves it per stage and
    per edge. An interrupted run drained what it had read; an aborted one did not, and
    ``low_watermark`` says from which source offset to read again.
    """

    run_id: str
    pipeline_name: str
    started_at: datetime
    status: RunStatus = RunStatus.COMPLETED
    duration_seconds: float = 0.0
    records_in: int = 0
    stages: list[StageStats] = field(default_factory=list)
    channels: list[ChannelStats] = field(default_factory=list)
    low_watermark: Any = None
    in_flight_records: int = 0
    dead_letter_store: str = ""

    @property
    def sink(self) -> StageStats:
        """The sink's counters."""
        return self.stages[-1]

    @property
    def records_out(self) -> int:
        """Records the sink took (written successfully)."""
        return self.sink.emitted

    @property
    def filtered(self) -> int:
        """Records dropped on purpose by filters, over all stages."""
        return sum(s.filtered for s in self.stages)

    @property
    def dead_lettered(self) -> int:
        """Records sent to the dead-letter queue, over all stages."""
        return sum(s.dead_lettered for s in self.stages)

    @property
    def retried(self) -> int:
        """Record retries, over all stages."""
        return sum(s.retried for s in self.stages)

    @property
    def interrupted(self) -> bool:
        """Whether a signal (or an abort) ended the run early."""
        return self.status is not RunStatus.COMPLETED

    def stage(self, name: str) -> StageStats:
        """The counters of the stage called ``name``."""
        for stats in self.stages:
            if stats.name == name:
                return stats
        raise KeyError(f"no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}")

    def check_conservation(self) -> None:
        """Raise :class:`ConservationError` unless every record is accounted for."""
        if self.status is RunStatus.ABORTED:
            return
        previous, upstream = self.records_in, "source"
        for stats in self.stages:
            if stats.received != previous:
                raise ConservationError(
                    stats.name,
                    f"{upstream} emitted {previous} but {stats.name} received {stats.received}",
                )
            stats.check()
            previous, upstream = stats.emitted, stats.name
        if self.in_flight_records:
            raise ConservationError("", f"{self.in_flight_records} records still in flight")

    def summary(self) -> str:
        """One line: status, counts and time."""
        return (
            f"{self.pipeline_name} {self.status.value}: {self.records_in} in, "
            f"{self.records_out} out, {self.filtered} filtered, {self.dead_lettered} "
            f"dead-lettered, {self.retried} retried in {self.duration_seconds:.2f}s"
        )
