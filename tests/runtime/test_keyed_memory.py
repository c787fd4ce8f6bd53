"""Memory of a long unbounded run with expiring keys stays flat: the state holds only the
keys and windows of the recent past (ttl, closed windows), so the process's RSS, sampled
while the stream flows, stops growing once the run is warm, and the stage's live state
stays small; the same stream without expiry grows (the check can fail)."""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from conveyor import KeyedStage, Pipeline, PipelineStage, RunOptions, Stats, window
from conveyor.runtime.runner import StreamRunner

EVENTS = 400_000
"""Events of the run (bounded in count); at 1,000 a second of event time: 400 s."""
TIME_LIMIT = 120.0
"""Seconds the run may take (bounded in time)."""
SAMPLES = 12
PER_USER = 4
"""Events per user: a new user every 4 events (4 ms of event time); 100,000 in all."""
TTL = 5.0
"""Seconds of event time a user stays in the state after its last event: ~1,250 users."""

_PAGE = resource.getpagesize()


def rss_mb() -> float:
    """The process's resident set size now (Linux: /proc/self/statm), in MB."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * _PAGE / 1e6


class Sampled:
    """The figures sampled while the stream flows: RSS and the live state of stage ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rss: list[float] = []
        self.state_keys: list[int] = []
        self.runner: StreamRunner | None = None

    def take(self) -> None:
        gc.collect()
        self.rss.append(rss_mb())
        assert self.runner is not None
        stats = next(s for s in self.runner.live_stats() if s.name == self.name)
        self.state_keys.append(stats.state_keys)


async def churning_events(sampled: Sampled, started: float) -> AsyncIterator[dict[str, Any]]:
    """An endless-looking stream (ended after EVENTS): a new user every PER_USER events,
    never seen again after them, so only expiry keeps the state small."""
    every = EVENTS // SAMPLES
    for i in range(EVENTS):
        if i % every == every - 1:
            sampled.take()
            assert time.monotonic() - started < TIME_LIMIT, "the run took too long"
            await asyncio.sleep(0)
        yield {"user": f"u{i // PER_USER}", "ts": i / 1000, "v": i % 7, "pad": "x" * 64}


def run_sampled(stage: PipelineStage[Any, Any]) -> tuple[Sampled, int]:
    sampled = Sampled(stage.name)
    emitted = 0

    def sink(batch: list[Any]) -> None:
        nonlocal emitted
        emitted += len(batch)

    async def go() -> None:
        spec = Pipeline("memory").add_stage(stage).spec()
        from conveyor.core.sink import as_sink

        runner = StreamRunner(spec, as_sink(sink), RunOptions(dead_letters="memory"))
        sampled.runner = runner
        report = await runner.run(churning_events(sampled, time.monotonic()))
        assert report.dead_lettered == 0
        assert report.records_in == EVENTS

    asyncio.run(asyncio.wait_for(go(), TIME_LIMIT + 30))
    return sampled, emitted


def count_step(n: int | None, record: dict[str, Any]) -> tuple[int, list[Any]]:
    return (n or 0) + 1, []


def keyed(ttl: float | None) -> KeyedStage[Any, Any, Any]:
    expire: Callable[[Any, int], list[Any]] = lambda key, n: [{"user": key, "n": n}]  # noqa: E731
    return KeyedStage(count_step, key="user", time="ts", ttl=ttl, on_expire=expire, name="per_user")


def growth(values: list[float]) -> float:
    """How much the second half's peak exceeds the figure once warm (a quarter in)."""
    warm = values[len(values) // 4]
    return max(values[len(values) // 2 :]) - warm


SCENARIOS: dict[str, Callable[[], PipelineStage[Any, Any]]] = {
    "keyed-ttl": lambda: keyed(ttl=TTL),
    "session-window": lambda: window(
        session=TTL, time="ts", key="user", aggregate=Stats("v", "count", "sum"), name="per_user"
    ),
    "keyed-no-ttl": lambda: keyed(ttl=None),
}


def measured(scenario: str) -> dict[str, Any]:
    """Run ``scenario`` in a fresh interpreter (RSS of a process that ran other tests says
    little: memory they freed would absorb the growth looked for) and return its samples."""
    done = subprocess.run(
        [sys.executable, __file__, scenario],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT + 60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("scenario", ["keyed-ttl", "session-window"])
def test_rss_stays_flat_with_expiring_keys(scenario: str) -> None:
    got = measured(scenario)
    assert got["emitted"] == EVENTS // PER_USER  # every user's state left once, as one result
    # live: only the users of the last TTL seconds of event time (~1,250, plus what the
    # micro-batch in flight holds), never the 100,000 of the run
    assert max(got["state_keys"]) < 1.5 * TTL * 1000 / PER_USER, got["state_keys"]
    assert growth(got["rss"]) < 2.0, got["rss"]  # MB (without expiry: > 4, below)


def test_without_expiry_the_state_grows() -> None:
    """The oracle of the test above can fail: without ttl every user stays in the state."""
    got = measured("keyed-no-ttl")
    assert got["state_keys"][-1] > 0.9 * EVENTS // PER_USER * (SAMPLES - 1) / SAMPLES
    assert got["state_keys"] == sorted(got["state_keys"])
    assert growth(got["rss"]) > 4.0, got["rss"]  # MB: what the flat runs above avoid


if __name__ == "__main__":  # one scenario, measured in this fresh process
    sampled, emitted = run_sampled(SCENARIOS[sys.argv[1]]())
    print(json.dumps({"rss": sampled.rss, "state_keys": sampled.state_keys, "emitted": emitted}))
