"""A token bucket: at most ``rate`` records per second, on average."""

from __future__ import annotations

import asyncio
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """Token bucket holding up to ``burst`` tokens (default: one second's worth).

    The bucket starts empty, so even the first second stays under ``rate``. ``await
    acquire(n)`` takes ``n`` tokens, waiting as long as the bucket needs to refill; ``n``
    may exceed the burst (it then waits ``n / rate`` seconds in total).
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self, n: int = 1) -> None:
        """Wait until ``n`` tokens are available and take them."""
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)
