"""Event-loop lag: how late a timer fires on the server's loop, the first sign of a full core.

Every await of a turn waits for the loop to come round, so when a worker's core is full the lag
is added to every turn many times over (docs/performance.md). A timer every INTERVAL_S notes how
late it fired, into a histogram on /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from lang_agent.capture.metrics import PREFIX, Histogram, histogram_lines

INTERVAL_S = 0.25
LAG_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class LoopLag:
    """Samples the running loop's lag while `running()` is open."""

    def __init__(self, *, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.histogram = Histogram(LAG_BUCKETS_S)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[LoopLag]:
        task = asyncio.create_task(self._sample(), name="loop-lag")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sample(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.histogram.observe((), value=max(loop.time() - due, 0.0))

    def lines(self) -> list[str]:
        return histogram_lines(
            f"{PREFIX}_event_loop_lag_seconds",
            f"How late a {self.interval_s:g} s timer fired on the server's event loop.",
            self.histogram,
        )
