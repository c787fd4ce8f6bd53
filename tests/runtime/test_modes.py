"""The stage algebra behaves the same in collection mode and in streaming mode on every
executor (inline, thread, process): one parametrized fixture, ``mode``, runs each case four
times (see conftest.py)."""

from __future__ import annotations

from typing import Any

import _fns

from conveyor import (
    AggregateStage,
    BatchStage,
    BranchStage,
    FilterStage,
    FlattenStage,
    MapStage,
    ValidateStage,
)

RECORDS = range(10)


def test_map(mode: Any) -> None:
    outcome = mode.run([MapStage(_fns.square, name="square")], RECORDS)
    assert outcome.outputs == [x * x for x in RECORDS]
    assert outcome.failed == []


def test_async_map(mode: Any) -> None:
    outcome = mode.run([MapStage(_fns.async_inc, name="inc")], RECORDS)
    assert outcome.outputs == [x + 1 for x in RECORDS]


def test_map_failures_leave_the_rest_flowing(mode: Any) -> None:
    stage = MapStage(_fns.tenfold_unless_multiple_of_5, name="tenfold")
    outcome = mode.run([stage], range(1, 12))
    assert outcome.outputs == [10 * x for x in range(1, 12) if x % 5]
    assert sorted(outcome.failed) == [5, 10]


def test_filter(mode: Any) -> None:
    outcome = mode.run([FilterStage(_fns.is_even, name="even")], RECORDS)
    assert outcome.outputs == [0, 2, 4, 6, 8]
    assert outcome.failed == []
    if outcome.report is not None:
        assert outcome.report.filtered == 5


def test_validate(mode: Any) -> None:
    outcome = mode.run([ValidateStage(_fns.not_multiple_of_3, name="check")], range(1, 10))
    assert outcome.outputs == [1, 2, 4, 5, 7, 8]
    assert sorted(outcome.failed) == [3, 6, 9]
    for letter in outcome.dead_letters:
        assert letter.error_type == "conveyor.errors.RecordValidationError"
        assert "is a multiple of 3" in letter.message


def test_batch_groups_across_micro_batches(mode: Any) -> None:
    # Micro-batches of 3 are re-cut into groups of 4, as the collection would be.
    outcome = mode.run([BatchStage(4, name="batch")], RECORDS)
    assert outcome.outputs == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_batch_then_flatten_is_identity(mode: Any) -> None:
    outcome = mode.run([BatchStage(4, name="batch"), FlattenStage(name="flat")], RECORDS)
    assert outcome.outputs == list(RECORDS)


def test_aggregate(mode: Any) -> None:
    stages = [MapStage(_fns.square, name="square"), AggregateStage(sum, name="total")]
    outcome = mode.run(stages, RECORDS)
    assert outcome.outputs == [sum(x * x for x in RECORDS)]


def test_aggregate_after_a_batch(mode: Any) -> None:
    # Groups cut across micro-batches share source batches: the barrier must still let
    # every one of them go (the run's conservation check proves it).
    outcome = mode.run([BatchStage(4, name="batch"), AggregateStage(len, name="groups")], RECORDS)
    assert outcome.outputs == [3]


def test_branch(mode: Any) -> None:
    branch = BranchStage(
        {
            "total": AggregateStage(sum, name="total"),
            "count": AggregateStage(len, name="count"),
            "evens": FilterStage(_fns.is_even, name="evens"),
        },
        name="branch",
    )
    outcome = mode.run([MapStage(_fns.inc, name="inc"), branch], RECORDS)
    assert outcome.outputs == [{"total": 55, "count": 10, "evens": [2, 4, 6, 8, 10]}]


def test_custom_record_stage(mode: Any) -> None:
    outcome = mode.run([_fns.Doubler()], RECORDS)
    assert outcome.outputs == [2 * x for x in RECORDS]


def test_custom_stage_that_reports_what_it_drops(mode: Any) -> None:
    outcome = mode.run([_fns.OddDropper()], RECORDS)
    assert outcome.outputs == [0, 2, 4, 6, 8]
    if outcome.report is not None:
        assert outcome.report.stage("odd_dropper").filtered == 5


def test_custom_barrier(mode: Any) -> None:
    outcome = mode.run([MapStage(_fns.negate, name="neg"), _fns.SortStage()], RECORDS)
    assert outcome.outputs == sorted(-x for x in RECORDS)


def test_chain_inside_a_pipeline(mode: Any) -> None:
    chain = (
        MapStage(_fns.inc, name="inc")
        >> FilterStage(_fns.is_even, name="even")
        >> MapStage(_fns.square, name="square")
    )
    outcome = mode.run([chain], RECORDS)
    assert outcome.outputs == [x * x for x in (2, 4, 6, 8, 10)]


def test_nested_chains_with_failures(mode: Any) -> None:
    left = MapStage(_fns.inc, name="inc") >> ValidateStage(_fns.not_multiple_of_3, name="check")
    right = MapStage(_fns.tenfold_unless_multiple_of_5, name="tenfold") >> _fns.Doubler()
    outcome = mode.run([left >> right, MapStage(_fns.negate, name="neg")], RECORDS)
    survivors = [x + 1 for x in RECORDS if (x + 1) % 3 and (x + 1) % 5]
    assert outcome.outputs == [-20 * x for x in survivors]
    assert sorted(outcome.failed) == [3, 5, 6, 9, 10]
