"""The event-loop lag sampler behind lang_agent_event_loop_lag_seconds."""

from __future__ import annotations

import asyncio
import time

from lang_agent.loop_lag import LAG_BUCKETS_S, LoopLag


async def test_a_blocked_loop_shows_as_lag() -> None:
    lag = LoopLag(interval_s=0.01)
    async with lag.running():
        await asyncio.sleep(0.03)
        time.sleep(0.06)  # noqa: ASYNC251 - the point: the sampler's timer fires 50+ ms late
        await asyncio.sleep(0.03)
    counts = lag.histogram.counts[()]
    within_25ms = counts[LAG_BUCKETS_S.index(0.025)]
    assert counts[-1] >= 3  # samples before, during and after
    assert within_25ms < counts[-1]  # the blocked one is over 25 ms
    lines = lag.lines()
    assert lines[1] == "# TYPE lang_agent_event_loop_lag_seconds histogram"
    assert f"lang_agent_event_loop_lag_seconds_count {counts[-1]}" in lines


async def test_the_sampler_stops_with_its_block() -> None:
    lag = LoopLag(interval_s=0.01)
    async with lag.running():
        await asyncio.sleep(0.025)
    taken = lag.histogram.counts[()][-1]
    await asyncio.sleep(0.05)
    assert lag.histogram.counts[()][-1] == taken
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "loop-lag"]
