"""The report of a streaming run: counts per stage, channels, and the conservation law.

Stages count *elements* (what passes through their channels: records, or groups of
records after a ``BatchStage``) and *records* (the records those elements hold). The run's
totals are in records, so a dead-lettered group of three counts three.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.core.kinds import StageKind
from conveyor.core.result import RunStatus
from conveyor.errors import ConservationError
from conveyor.runtime.channel import ChannelStats

if TYPE_CHECKING:
    from conveyor.core.checkpoint import Checkpoint
    from conveyor.runtime.checkpoints import ResumeInfo

__all__ = ["RunReport", "RunStatus", "StageKind", "StageStats"]

_ELEMENT_CHECKED = (StageKind.RECORD, StageKind.SINK, StageKind.SOURCE)
_RESHAPING = (StageKind.EXPAND, StageKind.BARRIER, StageKind.BRANCH)


@dataclass(slots=True)
class StageStats:
    """Counters of one stage in a streaming run.

    Element counters: ``received``, ``emitted``, ``filtered``, ``dead_lettered`` (letters
    written), ``unfinished`` (left unprocessed when the run was stopped), ``batches``.
    Record counters (the records those elements hold): ``records_in``, ``records_out``,
    ``records_filtered``, ``records_dead``, ``records_unfinished``, and for stages that may
    change the number of records (expand, barrier, branch, or a stage working on groups)
    ``absorbed`` (records that went into the stage's outputs without being one of them,
    e.g. aggregated) and ``born`` (records its outputs hold that it did not receive).

    A stateful stage (windows, keyed state) books every record it took into its state as
    ``absorbed`` and every result as ``born``; ``late`` counts its dead letters of records
    that came after their window closed. Live, it also shows its state: ``open_windows``,
    ``state_keys`` (keys with state), ``state_records`` (records held in open windows),
    ``watermark`` (event time, POSIX seconds) and ``watermark_lag`` (seconds the watermark
    is behind the wall clock: meaningful for event times that are real times).
    """

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
    unfinished: int = 0
    records_in: int = 0
    records_out: int = 0
    records_filtered: int = 0
    records_dead: int = 0
    records_unfinished: int = 0
    absorbed: int = 0
    born: int = 0
    fused: bool = False
    late: int = 0
    open_windows: int = 0
    state_keys: int = 0
    state_records: int = 0
    watermark: float | None = None
    watermark_lag: float | None = None
    cluster: str = ""
    """Where a stage on a cluster executor (``dask``) ran: the cluster, or the driver."""

    def check(self) -> None:
        """Raise :class:`ConservationError` if this stage's own counts do not add up."""
        if self.kind in _ELEMENT_CHECKED:
            out = self.emitted + self.filtered + self.dead_lettered + self.unfinished
            if out != self.received:
                raise ConservationError(
                    self.name,
                    f"received {self.received} but emitted {self.emitted} + filtered "
                    f"{self.filtered} + dead-lettered {self.dead_lettered} + unfinished "
                    f"{self.unfinished} = {out}",
                )
        elif self.kind is StageKind.BATCH and (
            self.grouped + self.dead_lettered + self.unfinished != self.received
        ):
            raise ConservationError(
                self.name,
                f"received {self.received} records but grouped {self.grouped} "
                f"and dead-lettered {self.dead_lettered}",
            )
        left = (
            self.records_out
            + self.records_filtered
            + self.records_dead
            + self.records_unfinished
            + self.absorbed
            - self.born
        )
        if left != self.records_in:
            raise ConservationError(
                self.name,
                f"took {self.records_in} records but gave {self.records_out} out + "
                f"{self.records_filtered} filtered + {self.records_dead} dead-lettered + "
                f"{self.records_unfinished} unfinished + {self.absorbed} absorbed - "
                f"{self.born} born = {left}",
            )

    def settle_reshaping(self) -> None:
        """For a stage that may change the number of records, book the difference between
        what it took and what it gave as ``absorbed`` or ``born``."""
        gone = (
            self.records_in
            - self.records_out
            - self.records_filtered
            - self.records_dead
            - self.records_unfinished
        )
        self.absorbed, self.born = max(gone, 0), max(-gone, 0)

    def as_dict(self) -> dict[str, Any]:
        """The counters as a plain dict (for JSON and progress views)."""
        counters: dict[str, Any] = {
            "stage": self.name,
            "kind": self.kind.value,
            "executor": self.executor,
            "received": self.received,
            "emitted": self.emitted,
            "filtered": self.filtered,
            "dead_lettered": self.dead_lettered,
            "unfinished": self.unfinished,
            "retried": self.retried,
            "batches": self.batches,
            "busy_seconds": round(self.busy_seconds, 6),
            "records_in": self.records_in,
            "records_out": self.records_out,
            "records_filtered": self.records_filtered,
            "records_dead": self.records_dead,
            "absorbed": self.absorbed,
            "born": self.born,
        }
        if self.kind is StageKind.STATEFUL:
            counters.update(
                late=self.late,
                open_windows=self.open_windows,
                state_keys=self.state_keys,
                state_records=self.state_records,
                watermark=self.watermark,
                watermark_lag=self.watermark_lag,
            )
        return counters


@dataclass(slots=True)
class RunReport:
    """What a streaming run did.

    ``records_in`` came from the source; every one of them left through the sink
    (``records_out`` counts the records the sink took), a filter (``filtered``) or the
    dead-letter queue (``dead_lettered``), or went into a barrier's or branch's output
    (``absorbed``; ``born`` counts records such stages and expanding stages made).
    :meth:`check_conservation` proves it per stage, per edge and on these totals. An
    ``interrupted`` run drained what it had read; an ``aborted`` one did not, and
    ``low_watermark`` says from which source offset to read again. A ``failed`` run
    drained but made more dead letters than ``max_dead_letters`` allows (``failure`` says
    how many, and where).
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
    branches: dict[str, dict[str, list[StageStats]]] = field(default_factory=dict)
    failure: str = ""
    max_dead_letters: str = ""
    source_elements: int | None = None
    """Elements read from the source, when they are groups of records (a replay into a
    stage after a ``BatchStage``); ``None``: the same as ``records_in``."""
    checkpoint: Checkpoint | None = None
    """The last checkpoint the run wrote (runs with checkpoints)."""
    checkpoint_store: str = ""
    checkpoints_written: int = 0
    resume: ResumeInfo | None = None
    """Where a resumed run started (``None``: it started at the beginning)."""
    replayed: int = 0
    """Records a resumed run processed again that the crashed run had already read: an
    at-least-once sink may hold up to this many twice (an exactly-once sink never does)."""
    sink_guarantee: str = ""
    """``exactly-once`` or ``at-least-once`` across a crash (runs with checkpoints)."""
    sink_description: str = ""
    """Where the sink writes, for people (its :attr:`~conveyor.Sink.description`: a file's
    name, a table); empty for a sink that keeps nothing."""

    @property
    def sink(self) -> StageStats:
        """The sink's counters."""
        return self.stages[-1]

    @property
    def records_out(self) -> int:
        """Records the sink took (written successfully)."""
        return self.sink.records_out

    @property
    def filtered(self) -> int:
        """Records dropped on purpose by filters, over all stages (branch arms included)."""
        return sum(s.records_filtered for s in self._all_stages())

    @property
    def dead_lettered(self) -> int:
        """Records sent to the dead-letter queue, over all stages (branch arms included)."""
        return sum(s.records_dead for s in self._all_stages())

    @property
    def dead_for_budget(self) -> int:
        """Dead-lettered records as the budget counts them: those of the main line, and per
        branch those of its arm with the most (a record failing in two arms is one)."""
        arms = sum(
            max((sum(s.records_dead for s in chain) for chain in branch.values()), default=0)
            for branch in self.branches.values()
        )
        return self.dead_top + arms

    @property
    def letters(self) -> int:
        """Dead letters written (a letter may hold a group of several records)."""
        return sum(s.dead_lettered for s in self._all_stages())

    @property
    def late(self) -> int:
        """Records dead-lettered because they came after their window closed."""
        return sum(s.late for s in self._all_stages())

    @property
    def retried(self) -> int:
        """Record retries, over all stages."""
        return sum(s.retried for s in self._all_stages())

    @property
    def absorbed(self) -> int:
        """Records that went into the outputs of barriers, branches and reshaping stages."""
        return sum(s.absorbed for s in self.stages)

    @property
    def born(self) -> int:
        """Records made by barriers, branches and expanding stages."""
        return sum(s.born for s in self.stages)

    @property
    def unfinished(self) -> int:
        """Records left unprocessed because the run was stopped mid-way."""
        return sum(s.records_unfinished for s in self.stages)

    @property
    def interrupted(self) -> bool:
        """Whether a signal (or an abort) ended the run early."""
        return self.status in (RunStatus.INTERRUPTED, RunStatus.ABORTED)

    @property
    def failed(self) -> bool:
        """Whether the run ended over its dead-letter budget."""
        return self.status is RunStatus.FAILED

    def dead_letters_by_stage(self) -> dict[str, int]:
        """Dead-lettered records per stage, for stages that have any."""
        return {s.name: s.records_dead for s in self._all_stages() if s.records_dead}

    def stage(self, name: str) -> StageStats:
        """The counters of the stage called ``name`` (``branch/arm/stage`` inside a branch)."""
        for stats in self._all_stages():
            if stats.name == name:
                return stats
        names = ", ".join(s.name for s in self._all_stages())
        raise KeyError(f"no stage {name!r}; stages: {names}")

    def stage_names(self) -> list[str]:
        """Every stage of the run (branch arms as ``branch/arm/stage``) and the sink."""
        return [s.name for s in self._all_stages()]

    def _all_stages(self) -> list[StageStats]:
        out = list(self.stages)
        for arms in self.branches.values():
            for chain in arms.values():
                out.extend(chain)
        return out

    def check_conservation(self) -> None:
        """Raise :class:`ConservationError` unless every record is accounted for."""
        if self.status is RunStatus.ABORTED:
            return
        read = self.records_in if self.source_elements is None else self.source_elements
        _check_chain(self.stages, read, "source")
        for branch, arms in self.branches.items():
            entered = self.stage(branch).received
            for arm, chain in arms.items():
                _check_chain(chain, entered, f"{branch}/{arm} (broadcast)")
        total = self.records_out + self.filtered_top + self.dead_top + self.absorbed - self.born
        total += self.unfinished
        if total != self.records_in:
            raise ConservationError(
                "",
                f"{self.records_in} records read but {self.records_out} out + "
                f"{self.filtered_top} filtered + {self.dead_top} dead-lettered + "
                f"{self.absorbed} absorbed - {self.born} born + {self.unfinished} unfinished "
                f"= {total}",
            )
        if self.in_flight_records and not self.unfinished:
            raise ConservationError("", f"{self.in_flight_records} records still in flight")

    @property
    def filtered_top(self) -> int:
        """Filtered records of the main line (branch arms are inside ``absorbed``)."""
        return sum(s.records_filtered for s in self.stages)

    @property
    def dead_top(self) -> int:
        """Dead-lettered records of the main line (branch arms are inside ``absorbed``)."""
        return sum(s.records_dead for s in self.stages)

    def _cluster_lines(self) -> str:
        """Which stages ran on a cluster executor, and where (none: no line)."""
        return _places(self._all_stages())

    def _resume_lines(self) -> str:
        resume = self.resume
        if resume is None:
            return ""
        how = (
            f"seeked to offset {resume.offset!r}"
            if resume.seeked
            else "the source cannot seek: read again from its start"
            if resume.position
            else "read the source from its start"
        )
        line = (
            f"\nresumed from the checkpoint of run {resume.checkpoint_run} at source position "
            f"{resume.position} ({how}): {resume.skipped} records already done were skipped, "
            f"{self.replayed} records replayed"
        )
        if self.replayed and self.sink_guarantee == "at-least-once":
            line += (
                f" (the sink is at-least-once: up to {self.replayed} of them may now be in it "
                "twice; an upsert key makes that harmless)"
            )
        if resume.superseded_letters:
            line += (
                f"; {resume.superseded_letters} dead letters of the crashed run were retired "
                "(their records were read again)"
            )
        return line

    def summary(self) -> str:
        """Status, counts and time; for a failed, interrupted or aborted run also why and
        where to restart."""
        line = (
            f"{self.pipeline_name} {self.status.value}: {self.records_in} in, "
            f"{self.records_out} out, {self.filtered} filtered, {self.dead_lettered} "
            f"dead-lettered{f' ({self.late} late)' if self.late else ''}, {self.retried} "
            f"retried in {self.duration_seconds:.2f}s"
        )
        if self.sink_description:
            line += f"\nsink: {self.sink_description}"
        line += self._cluster_lines()
        if self.failure:
            line += f"\n{self.failure}"
        line += self._resume_lines()
        cp = self.checkpoint
        resume = (
            f"the last checkpoint ({self.checkpoint_store}) is at source position "
            f"{cp.position}: continue with `conveyor run --resume` (resume=True in code)"
            if cp is not None and not cp.finished
            else ""
        )
        if self.status is RunStatus.ABORTED or self.unfinished:
            line += (
                f"\n{self.in_flight_records} records were still in flight and did not finish; "
                + (
                    resume
                    or (
                        f"read the source again from offset {self.low_watermark!r} (the low "
                        "watermark: every record before it has left the pipeline)"
                        if self.low_watermark is not None
                        else "no source offset is known to read it again from"
                    )
                )
            )
        elif resume:
            line += f"\n{resume}"
        return line


def _places(stages: list[StageStats]) -> str:
    """Where the stages on a cluster executor ran, one line per place."""
    places: dict[str, list[str]] = {}
    for stats in stages:
        if stats.cluster:
            places.setdefault(stats.cluster, []).append(stats.name)
    return "".join(
        f"\nexecutor dask: {', '.join(names)} on {place}" for place, names in places.items()
    )


def _check_chain(stages: list[StageStats], entered: int, upstream: str) -> None:
    previous = entered
    for stats in stages:
        if stats.received != previous:
            raise ConservationError(
                stats.name,
                f"{upstream} emitted {previous} but {stats.name} received {stats.received}",
            )
        stats.check()
        previous, upstream = stats.emitted, stats.name
