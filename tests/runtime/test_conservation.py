"""Conservation: every record that enters a streaming run leaves it exactly once, through
the sink, a filter or the dead-letter queue.

The property test builds random chains of built-in and failing stages with random
micro-batch sizes, channel capacities, concurrency, ordering and executors, and compares the
*sets* of ids (not just counters): inputs = sink + filtered + dead letters, with no id in
two places and none twice in one.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import _fns
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import (
    BatchStage,
    ConservationError,
    FilterStage,
    FlattenStage,
    MapStage,
    Pipeline,
    PipelineStage,
    RetryPolicy,
    StageOptions,
    ValidateStage,
)
from conveyor.testing import MemorySink, run_pipeline_on, run_stage_on

RETRY = RetryPolicy(attempts=2, backoff=0.0, jitter=0.0)

# --- planted failures (inline and thread executors share memory with the test) ------------


class FailOn:
    """A map function failing for planted ids; over groups, for a group holding one."""

    def __init__(self, bad: frozenset[int]) -> None:
        self.bad = bad

    def __call__(self, record: Any) -> Any:
        ids = record if isinstance(record, list) else [record]
        if self.bad.intersection(ids):
            raise _fns.BadRecordError(f"planted failure in {record!r}")
        return record


class Flaky:
    """Fails transiently (``ConnectionError``) once for ``once`` ids, always for ``always``."""

    def __init__(self, once: frozenset[int], always: frozenset[int]) -> None:
        self.once = once
        self.always = always
        self.seen: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, record: int) -> int:
        if record in self.always:
            raise ConnectionError(f"{record} never gets through")
        with self.lock:
            first = record in self.once and record not in self.seen
            self.seen.add(record)
        if first:
            raise ConnectionError(f"{record} hiccups once")
        return record


class DropIf:
    """A filter predicate dropping ``x % modulus == remainder``; logs what it drops."""

    def __init__(self, modulus: int, remainder: int, log: list[int]) -> None:
        self.modulus = modulus
        self.remainder = remainder
        self.log = log

    def __call__(self, record: int) -> bool:
        if record % self.modulus == self.remainder:
            self.log.append(record)
            return False
        return True


class Invalid:
    """A validator rejecting planted ids."""

    def __init__(self, bad: frozenset[int]) -> None:
        self.bad = bad

    def __call__(self, record: int) -> bool | str:
        return record not in self.bad or f"{record} is planted invalid"


# --- scenarios ---------------------------------------------------------------------------

RECORD_KINDS = ("map", "flaky", "filter", "validate", "whole", "batch")
GROUP_KINDS = ("group_map", "group_whole", "flatten")


@dataclass(frozen=True)
class Step:
    kind: str
    bad: frozenset[int] = frozenset()
    always: frozenset[int] = frozenset()
    modulus: int = 2
    remainder: int = 0
    size: int = 2
    concurrency: int = 1
    ordered: bool = True
    executor: str = "inline"


@dataclass(frozen=True)
class Scenario:
    n: int
    steps: tuple[Step, ...]
    batch_size: int
    capacity: int


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(0, 40))
    planted = st.frozensets(st.integers(0, max(n - 1, 0)), max_size=4)
    steps: list[Step] = []
    grouped = False
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(GROUP_KINDS if grouped else RECORD_KINDS))
        grouped = (grouped or kind == "batch") and kind != "flatten"
        steps.append(
            Step(
                kind=kind,
                bad=draw(planted),
                always=draw(planted) if kind == "flaky" else frozenset(),
                modulus=draw(st.integers(2, 5)),
                remainder=draw(st.integers(0, 1)),
                size=draw(st.integers(1, 5)),
                concurrency=draw(st.integers(1, 3)),
                ordered=draw(st.booleans()),
                executor=draw(st.sampled_from(["inline", "inline", "thread"])),
            )
        )
    return Scenario(
        n=n,
        steps=tuple(steps),
        batch_size=draw(st.integers(1, 8)),
        capacity=draw(st.integers(1, 4)),
    )


def build(step: Step, name: str, filtered: list[int]) -> PipelineStage[Any, Any]:
    if step.kind in ("map", "group_map"):
        return MapStage(FailOn(step.bad), name=name)
    if step.kind == "flaky":
        return MapStage(Flaky(step.bad, step.always), name=name)
    if step.kind == "filter":
        return FilterStage(DropIf(step.modulus, step.remainder, filtered), name=name)
    if step.kind == "validate":
        return ValidateStage(Invalid(step.bad), name=name)
    if step.kind in ("whole", "group_whole"):
        return _fns.RaiseOnBad(step.bad, name=name)
    if step.kind == "batch":
        return BatchStage(step.size, name=name)
    assert step.kind == "flatten"
    return FlattenStage(name=name)


def flat(records: Iterable[Any]) -> list[int]:
    out: list[int] = []
    for record in records:
        out.extend(record if isinstance(record, list) else [record])
    return out


@dataclass
class Expected:
    """Where each id ends up when the chain has no groups: a model of the stage semantics."""

    sink: list[int] = field(default_factory=list)
    filtered: set[int] = field(default_factory=set)
    dead: dict[int, str] = field(default_factory=dict)
    retried: int = 0


def model(scenario: Scenario, names: list[str]) -> Expected:
    expected = Expected()
    for record in range(scenario.n):
        for step, name in zip(scenario.steps, names, strict=True):
            if step.kind == "flaky":
                expected.retried += record in step.bad | step.always
                if record in step.always:
                    expected.dead[record] = name
                    break
            elif step.kind == "filter":
                if record % step.modulus == step.remainder:
                    expected.filtered.add(record)
                    break
            elif record in step.bad:
                expected.dead[record] = name
                break
        else:
            expected.sink.append(record)
    return expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios())
def test_every_record_leaves_exactly_once(scenario: Scenario) -> None:
    filtered: list[int] = []
    names = [f"{i}_{step.kind}" for i, step in enumerate(scenario.steps)]
    pipeline: Pipeline[Any, Any] = Pipeline("conservation")
    options = {}
    for step, name in zip(scenario.steps, names, strict=True):
        pipeline.add_stage(build(step, name, filtered))
        options[name] = StageOptions(
            concurrency=step.concurrency,
            ordered=step.ordered,
            executor=step.executor,
            retry=RETRY,
        )

    run = run_pipeline_on(
        pipeline,
        range(scenario.n),
        batch_size=scenario.batch_size,
        capacity=scenario.capacity,
        stage_options=options,
    )

    sink_ids = flat(run.outputs)
    dead_ids = flat(letter.record for letter in run.dead_letters)
    # The same id never twice, nowhere lost: a multiset equality, not only counts.
    assert Counter(sink_ids + filtered + dead_ids) == Counter(range(scenario.n))
    assert set(sink_ids).isdisjoint(filtered)
    assert set(sink_ids).isdisjoint(dead_ids)
    assert set(filtered).isdisjoint(dead_ids)

    report = run.report
    report.check_conservation()
    # Totals count records, not groups: a dead-lettered group of n counts n.
    assert report.records_in == scenario.n
    assert report.records_out == len(sink_ids)
    assert report.filtered == len(filtered)
    assert report.dead_lettered == len(dead_ids)
    assert report.letters == len(run.dead_letters)
    assert sum(letter.records for letter in run.dead_letters) == len(dead_ids)
    assert report.in_flight_records == 0
    assert report.low_watermark is None
    assert all(channel.peak <= scenario.capacity for channel in report.channels)

    in_order = all(step.ordered or step.concurrency == 1 for step in scenario.steps)
    if in_order and not any(step.kind == "flaky" for step in scenario.steps):
        assert sink_ids == sorted(sink_ids)

    if any(step.kind == "batch" for step in scenario.steps):
        return  # which ids share a group depends on timing: the sets above are the law
    expected = model(scenario, names)
    assert sorted(sink_ids) == expected.sink
    assert set(filtered) == expected.filtered
    assert {letter.record: letter.stage for letter in run.dead_letters} == expected.dead
    assert report.retried == expected.retried
    for letter in run.dead_letters:
        kind = scenario.steps[names.index(letter.stage)].kind
        if kind == "flaky":
            assert (letter.error_type, letter.attempts) == ("builtins.ConnectionError", 2)
        elif kind == "validate":
            assert letter.error_type == "conveyor.errors.RecordValidationError"
        else:
            assert (letter.error_type, letter.attempts) == ("_fns.BadRecordError", 1)


def test_whole_batch_failure_is_isolated_by_splitting() -> None:
    run = run_stage_on(_fns.RaiseOnBad({3, 12}), range(16), batch_size=8)
    assert run.outputs == [x for x in range(16) if x not in (3, 12)]
    assert sorted(letter.record for letter in run.dead_letters) == [3, 12]
    assert all("bad ids [" in letter.message for letter in run.dead_letters)


# --- conservation errors -------------------------------------------------------------------


def test_a_stage_that_silently_drops_records_is_named() -> None:
    pipeline = Pipeline[Any, Any]("leaky").add_stage(_fns.SilentDropper())
    with pytest.raises(ConservationError, match="silent_dropper") as caught:
        run_pipeline_on(pipeline, range(10), batch_size=5)
    assert caught.value.stage == "silent_dropper"
    assert "records_filtered" in str(caught.value)
    assert "expands = True" in str(caught.value)


def test_a_stage_that_emits_more_without_declaring_it_is_named() -> None:
    pipeline = Pipeline[Any, Any]("dup").add_stage(_fns.TwiceUndeclared())
    with pytest.raises(ConservationError) as caught:
        run_pipeline_on(pipeline, range(4))
    assert caught.value.stage == "twice_undeclared"


def test_a_stage_declaring_expands_may_emit_more() -> None:
    pipeline = (
        Pipeline[Any, Any]("dup").add_stage(_fns.Twice()).add_stage(MapStage(_fns.inc, name="inc"))
    )
    sink = MemorySink()
    report = pipeline.run(range(4), sink, batch_size=3, dead_letters="memory")
    assert sink.records == [1, 1, 2, 2, 3, 3, 4, 4]
    assert (report.records_in, report.records_out) == (4, 8)
    assert report.stage("twice").kind == "expand"
    report.check_conservation()
