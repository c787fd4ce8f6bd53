"""The ``generate`` source: records made up from a few field specs, endless or counted,
paced or as fast as the pipeline takes them — for trying a pipeline, demos and load tests
without a broker (Flink's ``datagen``, Redpanda Connect's ``generate``).

.. code-block:: yaml

    source:
      connector: generate
      rate: 200            # records per second (null: as fast as the pipeline takes them)
      count: null          # records in all (null: endless, until Ctrl-C or SIGTERM)
      seed: 7
      fields:
        id: sequence                     # 0, 1, 2, ...
        ts: {now: 2s}                    # the wall clock, up to 2 s behind (disorder)
        sensor: {choice: [s1, s2, s3]}
        value: {uniform: [0, 100]}

Field specs: ``sequence`` (the record's position), ``now`` (the wall clock as POSIX
seconds; ``{now: D}`` up to the duration ``D`` behind it, uniformly: out-of-order event
times), ``{choice: [...]}``, ``{randint: [LOW, HIGH]}`` (both included), ``{uniform: [LOW,
HIGH]}``, ``{normal: [MEAN, STDDEV]}`` and ``{constant: VALUE}``. The random fields follow
from ``seed`` alone: the same options give the same records, and a resumed run (``offset``
is the position) continues with the records the interrupted run would have made next.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from conveyor.core.keyed import duration
from conveyor.core.source import Source
from conveyor.errors import PipelineDefinitionError

__all__ = ["GenerateSource"]

_SPECS = ("sequence", "now", "choice", "randint", "uniform", "normal", "constant")
_MAX_AHEAD = 0.2
"""Seconds a paced source may fall behind its schedule before it stops catching up (a
pipeline that was slow for a while does not get a burst afterwards)."""

Maker = Callable[[random.Random, int, float], Any]


def _pair(
    spec: str, value: Any, numbers: type | tuple[type, ...] = (int, float)
) -> tuple[Any, Any]:
    ok = (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, numbers) and not isinstance(v, bool) for v in value)
    )
    if not ok:
        what = "integers" if numbers is int else "numbers"
        raise ValueError(f"{spec} takes a list of two {what} [LOW, HIGH], got {value!r}")
    return value[0], value[1]


def _maker(name: str, spec: Any) -> Maker:
    """The function making field ``name``'s value from (rng, position, now)."""
    if isinstance(spec, str):
        spec = {spec: None} if spec in ("sequence", "now") else spec
    if not (isinstance(spec, Mapping) and len(spec) == 1):
        raise ValueError(
            f"field {name!r}: a spec is sequence, now, or a mapping of one of "
            f"{', '.join(_SPECS[1:])} (e.g. {{choice: [a, b]}}), got {spec!r}"
        )
    [(kind, value)] = spec.items()
    if kind == "sequence" and value is None:
        return lambda rng, i, now: i
    if kind == "now":
        behind = 0.0 if value is None else duration(value, f"field {name!r}: now", zero=True)
        if not behind:
            return lambda rng, i, now: now
        return lambda rng, i, now: now - rng.random() * behind
    if kind == "choice":
        if not isinstance(value, list) or not value:
            raise ValueError(f"field {name!r}: choice takes a non-empty list, got {value!r}")
        options = list(value)
        return lambda rng, i, now: options[int(rng.random() * len(options))]
    if kind == "randint":
        low, high = _pair(f"field {name!r}: randint", value, int)
        if low > high:
            raise ValueError(f"field {name!r}: randint's LOW {low} is above its HIGH {high}")
        span = high - low + 1
        return lambda rng, i, now: low + int(rng.random() * span)
    if kind == "uniform":
        lo, hi = _pair(f"field {name!r}: uniform", value)
        return lambda rng, i, now: lo + (hi - lo) * rng.random()
    if kind == "normal":
        mean, stddev = _pair(f"field {name!r}: normal", value)
        if stddev < 0:
            raise ValueError(f"field {name!r}: normal's STDDEV must be >= 0, got {stddev}")
        return lambda rng, i, now: rng.gauss(mean, stddev)
    if kind == "constant":
        return lambda rng, i, now: value
    raise ValueError(f"field {name!r}: unknown spec {kind!r}; the specs are {', '.join(_SPECS)}")


class GenerateSource(Source):
    """Make records from field specs (see the module docstring): ``count`` of them
    (``None``: endless), ``rate`` a second (``None``: as fast as the pipeline takes them),
    the random ones from ``seed``.

    >>> source = GenerateSource(
    ...     {"id": "sequence", "colour": {"choice": ["red", "blue"]}}, count=3, seed=1
    ... )
    >>> [r["id"] for r in source.records_from(0)], source.offset
    ([0, 1, 2], 0)
    """

    kind: ClassVar[str] = "generate"

    class Config(BaseModel):
        """The options of a ``generate`` source (``source: {connector: generate, ...}``)."""

        model_config = ConfigDict(extra="forbid", frozen=True)

        fields: dict[str, Any] = Field(
            description="Field name -> spec: sequence, now, {now: 2s} (up to 2 s behind the "
            "wall clock), {choice: [a, b]}, {randint: [1, 6]}, {uniform: [0, 1]}, "
            "{normal: [0, 1]}, {constant: x}.",
            min_length=1,
        )
        count: int | None = Field(
            None, ge=0, description="Records in all; null: endless (until Ctrl-C or SIGTERM)."
        )
        rate: float | None = Field(
            None,
            gt=0,
            description="Records per second; null: as fast as the pipeline takes them.",
        )
        seed: int = Field(0, description="The seed of the random fields.")

        @field_validator("fields")
        @classmethod
        def _specs(cls, fields: dict[str, Any]) -> dict[str, Any]:
            for name, spec in fields.items():
                try:
                    _maker(name, spec)
                except PipelineDefinitionError as exc:
                    raise ValueError(str(exc)) from None
            return fields

    def __init__(
        self,
        fields: Mapping[str, Any],
        *,
        count: int | None = None,
        rate: float | None = None,
        seed: int = 0,
        name: str = "source",
    ) -> None:
        if not isinstance(fields, Mapping) or not fields:
            raise PipelineDefinitionError(
                f"GenerateSource: fields must be a non-empty mapping, got {fields!r}"
            )
        try:
            self._makers = [(str(k), _maker(str(k), spec)) for k, spec in fields.items()]
        except ValueError as exc:
            raise PipelineDefinitionError(f"GenerateSource: {exc}") from None
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0
        ):
            raise PipelineDefinitionError(
                f"GenerateSource: count must be an int >= 0 or None, got {count!r}"
            )
        if rate is not None and not (
            isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0
        ):
            raise PipelineDefinitionError(
                f"GenerateSource: rate must be records per second > 0 or None, got {rate!r}"
            )
        self.fields = dict(fields)
        self.count = count
        self.rate = None if rate is None else float(rate)
        self.seed = int(seed)
        self.name = name
        self.identity = f"generate seed {self.seed} fields {', '.join(self.fields)}"
        self._start = 0
        self._position = 0

    @classmethod
    def from_config(cls, config: GenerateSource.Config, root: Path) -> Self:
        """The source a ``source:`` section describes (``root`` is not used: it reads
        nothing)."""
        return cls(config.fields, count=config.count, rate=config.rate, seed=config.seed)

    @property
    def where(self) -> str:
        total = "endless" if self.count is None else f"{self.count:,} records"
        pace = "" if self.rate is None else f", {self.rate:g}/s"
        return f"generate ({total}{pace}, seed {self.seed})"

    # -- positions -----------------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """The position of the next record."""
        return self._position

    def seek(self, offset: Any) -> None:
        """Start at position ``offset``: the records the run before would have made next."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"{self.where}: offset must be a position >= 0, got {offset!r}")
        self._start = self._position = offset

    # -- records -------------------------------------------------------------------------------

    def _rng_at(self, position: int) -> random.Random:
        """The random generator as it is before the record at ``position`` (the records
        before it are made again and dropped: their draws are what put it there)."""
        rng = random.Random(self.seed)
        makers = self._makers
        for i in range(position):
            for _, make in makers:
                make(rng, i, 0.0)
        return rng

    def records_from(self, position: int) -> list[dict[str, Any]]:
        """The records from ``position`` to ``count`` at once (for a counted source; the
        wall-clock fields read now)."""
        if self.count is None:
            raise ValueError(f"{self.where}: an endless source has no list of records")
        rng, makers, now = self._rng_at(position), self._makers, time.time()
        return [{k: make(rng, i, now) for k, make in makers} for i in range(position, self.count)]

    def read(self) -> Self:
        return self

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._records()

    async def _records(self) -> AsyncIterator[dict[str, Any]]:
        rng, makers = self._rng_at(self._start), self._makers
        i, end, rate = self._start, self.count, self.rate
        clock = time.monotonic
        began = clock()
        made = 0
        while end is None or i < end:
            if rate is not None:
                due = began + made / rate
                late = due - clock()
                if late > 0:
                    await asyncio.sleep(late)
                elif late < -_MAX_AHEAD:  # behind schedule: go on from now, no burst
                    began, made = clock(), 0
            elif made % 1024 == 1023:
                await asyncio.sleep(0)  # let the run's other tasks (signals, checkpoints) in
            now = time.time()
            record = {k: make(rng, i, now) for k, make in makers}
            i += 1
            made += 1
            self._position = i
            yield record
