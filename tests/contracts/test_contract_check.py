"""ContractCheck: modes, sampling, arguments, edges; violations survive pickling."""

from __future__ import annotations

import math
import pickle
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.contracts import Contract, ContractCheck, ContractCheckStatistics, TypeContract
from conveyor.errors import ContractViolation


class Recording(Contract):
    """Every record is bad; remembers which records it was asked about."""

    def __init__(self) -> None:
        super().__init__("recording", "1")
        self.seen: list[object] = []

    def check(self, record: object) -> ContractViolation | None:
        self.seen.append(record)
        return self.violation("field", "always bad")

    def check_many(self, records: Sequence[object]) -> list[tuple[int, ContractViolation]]:
        return [(i, v) for i, v in enumerate(map(self.check, records)) if v is not None]


INTS = TypeContract(int)


class TestModes:
    def test_off_checks_nothing(self) -> None:
        contract = Recording()
        check = ContractCheck("off")
        assert check.violations(contract, list(range(50)), edge="input", stage="s") == []
        assert contract.seen == []
        assert check.statistics() == ContractCheckStatistics(1, 50, 0, 0)

    def test_all_checks_all(self) -> None:
        contract = Recording()
        check = ContractCheck()
        found = check.violations(contract, list(range(50)), edge="output", stage="s")
        assert contract.seen == list(range(50))
        assert [i for i, _ in found] == list(range(50))
        assert check.statistics() == ContractCheckStatistics(1, 50, 50, 50)

    def test_sample_checks_a_subset(self) -> None:
        contract = Recording()
        check = ContractCheck("sample", sample_rate=0.1, seed=1)
        records = [f"r{i}" for i in range(200)]
        found = check.violations(contract, records, edge="input", stage="s")
        assert len(contract.seen) == 20
        assert len(set(contract.seen)) == 20
        assert [records[i] for i, _ in found] == contract.seen  # indices point into the batch

    def test_sample_rate_zero_checks_nothing(self) -> None:
        contract = Recording()
        check = ContractCheck("sample", sample_rate=0.0)
        assert check.violations(contract, [1, 2, 3], edge="input", stage="s") == []
        assert contract.seen == []

    def test_sample_rate_one_checks_all(self) -> None:
        assert ContractCheck("sample", sample_rate=1.0).select(7) == range(7)

    def test_at_least_one_per_batch(self) -> None:
        check = ContractCheck("sample", sample_rate=0.001, seed=3)
        assert [len(check.select(n)) for n in (1, 10, 100)] == [1, 1, 1]
        assert check.select(0) == range(0)

    def test_empty_batch(self) -> None:
        for mode in ("all", "sample", "off"):
            check = ContractCheck(mode)  # type: ignore[arg-type]
            assert check.violations(INTS, [], edge="input", stage="s") == []

    @given(
        size=st.integers(0, 3000),
        rate=st.floats(0.0, 1.0, allow_nan=False),
        seed=st.integers(0, 2**32),
    )
    def test_sample_size(self, size: int, rate: float, seed: int) -> None:
        check = ContractCheck("sample", sample_rate=rate, seed=seed)
        chosen = list(check.select(size))
        assert chosen == sorted(set(chosen))
        assert all(0 <= i < size for i in chosen)
        expected = math.floor(size * rate + 0.5)
        if rate > 0 and size > 0:
            expected = max(1, expected)
        assert len(chosen) == min(size, expected)
        assert check.sample_size(size) == len(chosen)

    @given(seed=st.integers(0, 2**32), sizes=st.lists(st.integers(0, 500), max_size=5))
    def test_same_seed_same_sample(self, seed: int, sizes: list[int]) -> None:
        one = ContractCheck("sample", sample_rate=0.2, seed=seed)
        two = ContractCheck("sample", sample_rate=0.2, seed=seed)
        assert [list(one.select(n)) for n in sizes] == [list(two.select(n)) for n in sizes]

    def test_different_seeds_differ(self) -> None:
        picks = {tuple(ContractCheck("sample", 0.1, seed=s).select(1000)) for s in range(5)}
        assert len(picks) == 5


class TestViolations:
    def test_edge_and_stage_are_filled_in(self) -> None:
        found = ContractCheck().violations(INTS, [1, "2", 3], edge="input", stage="parse")
        assert len(found) == 1
        index, violation = found[0]
        assert index == 1
        assert (violation.contract, violation.path, violation.edge, violation.stage) == (
            "int",
            "",
            "input",
            "parse",
        )
        assert str(violation) == (
            "parse input: record violates contract int: Input should be a valid integer"
        )

    def test_sampled_violations_point_into_the_batch(self) -> None:
        records: list[object] = ["bad"] * 100
        found = ContractCheck("sample", 0.05, seed=2).violations(
            INTS, records, edge="output", stage="s"
        )
        assert len(found) == 5
        assert all(v.edge == "output" for _, v in found)

    def test_statistics_accumulate(self) -> None:
        check = ContractCheck()
        check.violations(INTS, [1, "2"], edge="input", stage="s")
        check.violations(INTS, ["3"], edge="input", stage="s")
        assert check.statistics() == ContractCheckStatistics(
            batches=2, records=3, checked=3, violations=2
        )

    def test_unknown_edge(self) -> None:
        with pytest.raises(ValueError, match="edge must be 'input' or 'output', got 'middle'"):
            ContractCheck().violations(INTS, [1], edge="middle", stage="s")  # type: ignore[arg-type]


class TestArguments:
    def test_defaults_and_repr(self) -> None:
        check = ContractCheck()
        assert (check.mode, check.sample_rate, check.seed) == ("all", 0.01, None)
        assert repr(check) == "ContractCheck(mode='all', sample_rate=0.01, seed=None)"

    @pytest.mark.parametrize("mode", ["ALL", "some", "", None])
    def test_unknown_mode(self, mode: object) -> None:
        with pytest.raises(ValueError, match="one of 'all', 'sample', 'off'"):
            ContractCheck(mode)  # type: ignore[arg-type]

    @pytest.mark.parametrize("rate", [-0.1, 1.5, math.nan, math.inf])
    def test_rate_out_of_range(self, rate: float) -> None:
        with pytest.raises(ValueError, match="sample_rate must be between 0 and 1"):
            ContractCheck("sample", sample_rate=rate)

    @pytest.mark.parametrize("rate", ["0.1", True, None])
    def test_rate_not_a_number(self, rate: object) -> None:
        with pytest.raises(TypeError, match="sample_rate must be a number"):
            ContractCheck("sample", sample_rate=rate)  # type: ignore[arg-type]

    @pytest.mark.parametrize("seed", ["1", 1.0, True])
    def test_seed_not_an_int(self, seed: object) -> None:
        with pytest.raises(TypeError, match="seed must be an int or None"):
            ContractCheck("sample", seed=seed)  # type: ignore[arg-type]

    def test_integer_rate(self) -> None:
        assert ContractCheck("sample", sample_rate=1).sample_rate == 1.0


class TestPickling:
    def test_violation_round_trip_keeps_every_field(self) -> None:
        (_, violation), *_ = ContractCheck().violations(
            TypeContract(dict[str, list[int]]), [{"a": [1, "x"]}], edge="output", stage="enrich"
        )
        copied = pickle.loads(pickle.dumps(violation))
        assert type(copied) is ContractViolation
        assert (copied.contract, copied.path, copied.reason, copied.edge, copied.stage) == (
            violation.contract,
            "a.1",
            "Input should be a valid integer",
            "output",
            "enrich",
        )
        assert str(copied) == str(violation)
        assert isinstance(copied, ValueError)

    def test_violation_without_edge(self) -> None:
        violation = INTS.check("1")
        assert violation is not None
        copied = pickle.loads(pickle.dumps(violation))
        assert (copied.edge, copied.stage, str(copied)) == ("", "", str(violation))
