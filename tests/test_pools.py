"""The upstream transport survives calls cancelled at any moment (encode/httpcore#1093)."""

from __future__ import annotations

import asyncio
import random

import httpx2

from lang_agent.llm.pools import ShardedTransport
from lang_agent.llm.sim import Latency, SimProfile, Simulator

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "讲个笑话"}], "stream": True}


async def test_cancelled_calls_leave_no_stranded_connection_slots():
    # Hang-ups, turn timeouts, the filler and a discarded speculation all cancel model calls
    # mid-flight. httpcore 1 kept a pool slot for a call cancelled while its connection was
    # being set up; enough of them and every later call waited out its pool timeout.
    sim = Simulator(profile=SimProfile(chat=Latency(ttft_ms=10, tokens_per_s=400)))
    url = await sim.start() + "/chat/completions"
    limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
    client = httpx2.AsyncClient(
        transport=ShardedTransport(limits=limits, shards=2),
        timeout=httpx2.Timeout(10.0, pool=5.0),
    )

    async def call() -> str:
        async with client.stream("POST", url, json=BODY) as response:
            return (await response.aread()).decode()

    rng = random.Random(7)
    try:
        for _ in range(60):
            calls = [asyncio.create_task(call()) for _ in range(12)]
            await asyncio.sleep(rng.uniform(0.0, 0.03))
            for task in calls:
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        answers = await asyncio.gather(*(call() for _ in range(8)))
    finally:
        await client.aclose()
        await sim.stop()
    assert all(answer.rstrip().endswith("data: [DONE]") for answer in answers)
