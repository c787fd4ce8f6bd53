"""``rate_limit``: a token bucket bounds the records per second a stage processes.

Only lower bounds on elapsed time are asserted (a loaded machine may always be slower).
The bucket starts full with one second's worth of tokens (its burst), so a run of ``n``
records at ``rate`` per second takes at least ``(n - rate) / rate`` seconds.
"""

from __future__ import annotations

import time
from typing import Any

import _fns
import pytest

from conveyor import MapStage, Pipeline, PipelineDefinitionError, StageOptions
from conveyor.runtime.limiter import RateLimiter
from conveyor.testing import run_pipeline_on


def test_rate_limit_bounds_records_per_second() -> None:
    rate, records = 200.0, 300
    pipeline = Pipeline[Any, Any]("limited").add_stage(
        MapStage(_fns.ident, name="api"), options=StageOptions(rate_limit=rate)
    )
    t0 = time.monotonic()
    run = run_pipeline_on(pipeline, range(records), batch_size=10)
    elapsed = time.monotonic() - t0
    assert len(run.outputs) == records
    # 200 records of burst, then 100 more at 200/s: at least 0.5 s (a little slack for
    # clock granularity).
    assert elapsed >= (records - rate) / rate * 0.9


async def test_limiter_without_burst_spaces_acquisitions() -> None:
    limiter = RateLimiter(rate=200, burst=1)
    t0 = time.monotonic()
    for _ in range(51):
        await limiter.acquire()
    assert time.monotonic() - t0 >= 50 / 200 * 0.9


async def test_limiter_takes_more_than_its_burst_at_once() -> None:
    limiter = RateLimiter(rate=100)
    assert limiter.burst == 100
    t0 = time.monotonic()
    await limiter.acquire(130)  # 30 beyond the burst: about 0.3 s
    assert time.monotonic() - t0 >= 0.3 * 0.9


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        RateLimiter(0)
    with pytest.raises(PipelineDefinitionError, match="rate_limit must be > 0"):
        StageOptions(rate_limit=0)
