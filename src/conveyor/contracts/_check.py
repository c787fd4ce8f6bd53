"""``ContractCheck``: which records of a micro-batch the runner checks at a stage edge."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from conveyor.contracts._base import Contract
from conveyor.errors import ContractViolation

__all__ = ["CheckMode", "ContractCheck", "ContractCheckStatistics", "Edge"]

CheckMode = Literal["all", "sample", "off"]
Edge = Literal["input", "output"]
_MODES: tuple[str, ...] = get_args(CheckMode)
_EDGES: tuple[str, ...] = get_args(Edge)


@dataclass(frozen=True, slots=True)
class ContractCheckStatistics:
    """A snapshot of what a :class:`ContractCheck` has done so far."""

    batches: int
    """Batches passed to :meth:`ContractCheck.violations`."""
    records: int
    """Records in those batches."""
    checked: int
    """Records actually checked (all of them in mode ``"all"``, none in ``"off"``)."""
    violations: int
    """Records that broke their contract."""


class ContractCheck:
    """How much of each micro-batch is checked against a contract: ``"all"`` records, a
    ``"sample"``, or nothing (``"off"``).

    A sample holds ``round(len(batch) * sample_rate)`` records, at least one per non-empty
    batch when ``sample_rate > 0``, picked by a random generator seeded with ``seed``: the
    same seed and the same sequence of batch sizes pick the same records.

    >>> from conveyor.contracts import TypeContract
    >>> every = ContractCheck()
    >>> found = every.violations(TypeContract(int), [1, "2"], edge="input", stage="parse")
    >>> [(i, v.stage, v.edge, v.reason) for i, v in found]
    [(1, 'parse', 'input', 'Input should be a valid integer')]
    >>> sampled = ContractCheck("sample", sample_rate=0.5, seed=7)
    >>> _ = sampled.violations(TypeContract(int), [1, "2", 3, "4"], edge="input", stage="parse")
    >>> sampled.statistics().checked
    2

    Args:
        mode: ``"all"``, ``"sample"`` or ``"off"``.
        sample_rate: the fraction of each batch checked in ``"sample"`` mode, 0 to 1.
        seed: seeds the sample; ``None`` picks differently on every run.

    Raises:
        ValueError: an unknown mode, or a rate outside 0..1.
        TypeError: a rate that is not a number, or a seed that is not an int.
    """

    def __init__(
        self, mode: CheckMode = "all", sample_rate: float = 0.01, seed: int | None = None
    ) -> None:
        if mode not in _MODES:
            raise ValueError(
                f"contract check mode must be one of {', '.join(map(repr, _MODES))}, got {mode!r}"
            )
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | float):
            raise TypeError(f"sample_rate must be a number, got {type(sample_rate).__name__}")
        if not 0.0 <= sample_rate <= 1.0:
            raise ValueError(
                f"sample_rate must be between 0 and 1 (0.01 checks 1% of records), "
                f"got {sample_rate!r}"
            )
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self.mode: CheckMode = mode
        self.sample_rate = float(sample_rate)
        self.seed = seed
        self._random = random.Random(seed)
        self._batches = self._records = self._checked = self._violations = 0

    def sample_size(self, size: int) -> int:
        """How many records of a batch of ``size`` records this check examines."""
        if self.mode == "off" or size <= 0:
            return 0
        if self.mode == "all":
            return size
        if self.sample_rate == 0.0:
            return 0
        return min(size, max(1, math.floor(size * self.sample_rate + 0.5)))

    def select(self, size: int) -> Sequence[int]:
        """The indices, ascending, of the records of a batch of ``size`` to check."""
        count = self.sample_size(size)
        if count == size:
            return range(size)
        if count == 0:
            return ()
        return sorted(self._random.sample(range(size), count))

    def violations(
        self,
        contract: Contract,
        records: Sequence[object],
        *,
        edge: Edge,
        stage: str,
    ) -> list[tuple[int, ContractViolation]]:
        """Check the selected records of a batch; return ``(index in records, violation)``
        for each bad one, with ``edge`` and ``stage`` filled in."""
        if edge not in _EDGES:
            raise ValueError(f"edge must be 'input' or 'output', got {edge!r}")
        chosen = self.select(len(records))
        if len(chosen) == len(records):
            found = contract.check_many(records)
        elif chosen:
            picked = contract.check_many([records[i] for i in chosen])
            found = [(chosen[i], violation) for i, violation in picked]
        else:
            found = []
        self._count(len(records), len(chosen), len(found))
        return [(i, _at_edge(violation, edge, stage)) for i, violation in found]

    def statistics(self) -> ContractCheckStatistics:
        """Counts so far: batches, records, records checked, violations."""
        return ContractCheckStatistics(
            self._batches, self._records, self._checked, self._violations
        )

    def _count(self, records: int, checked: int, violations: int) -> None:
        self._batches += 1
        self._records += records
        self._checked += checked
        self._violations += violations

    def __repr__(self) -> str:
        return (
            f"ContractCheck(mode={self.mode!r}, sample_rate={self.sample_rate!r}, "
            f"seed={self.seed!r})"
        )


def _at_edge(violation: ContractViolation, edge: str, stage: str) -> ContractViolation:
    return ContractViolation(
        violation.contract, violation.path, violation.reason, edge=edge, stage=stage
    )
