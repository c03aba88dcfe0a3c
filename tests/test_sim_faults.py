"""Simulator faults, produced for real on the socket and seen through the openai SDK."""

from __future__ import annotations

import asyncio

import httpx2
import openai
import pytest

from lang_agent.llm.sim import HIGH_WATER, Pacer, Simulator

MESSAGES = [{"role": "user", "content": "你好"}]


@pytest.fixture
async def sim():
    simulator = Simulator()
    await simulator.start(host="127.0.0.1", port=0)
    yield simulator
    await simulator.stop()


@pytest.fixture
def client(sim) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)


async def call(client, *, stream: bool, **kwargs):
    """One chat call, read to the end."""
    reply = await client.chat.completions.create(
        model="sim-chat", messages=MESSAGES, stream=stream, **kwargs
    )
    if stream:
        return [chunk async for chunk in reply]
    return reply


async def until(predicate, *, within_s: float = 5.0) -> None:
    """Poll until predicate() holds; fail after within_s."""
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("stream", [False, True])
async def test_429_is_a_rate_limit_error(sim, client, stream):
    sim.inject("429")
    with pytest.raises(openai.RateLimitError) as failure:
        await call(client, stream=stream)
    assert failure.value.body["code"] == "Throttling.RateQuota"
    assert (await call(client, stream=False)).choices[0].message.content  # one fault, one request
    assert sim.stats["faults"] == {"429": 1}


@pytest.mark.parametrize("stream", [False, True])
async def test_500_is_an_internal_server_error(sim, client, stream):
    sim.inject("500")
    with pytest.raises(openai.InternalServerError) as failure:
        await call(client, stream=stream)
    assert failure.value.body["type"] == "server_error"


@pytest.mark.parametrize("stream", [False, True])
async def test_reset_is_a_connection_error(sim, client, stream):
    sim.inject("reset")
    with pytest.raises(openai.APIConnectionError):
        await call(client, stream=stream)


async def test_cut_stream_breaks_after_a_few_chunks(sim, client):
    sim.inject("cut")
    reply = await client.chat.completions.create(model="sim-chat", messages=MESSAGES, stream=True)
    received = []
    with pytest.raises((openai.APIConnectionError, httpx2.TransportError)):
        async for chunk in reply:
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].finish_reason is None for c in received)


async def test_cut_body_is_a_connection_error(sim, client):
    sim.inject("cut")
    with pytest.raises(openai.APIConnectionError):
        await call(client, stream=False)


@pytest.mark.parametrize("fault", ["timeout", "slow"])
async def test_silence_is_a_timeout_and_counts_the_departure(sim, client, fault):
    sim.inject(fault)
    with pytest.raises(openai.APITimeoutError):
        await call(client, stream=True, timeout=0.3)
    await until(lambda: sim.stats["cancelled"] == 1 and sim.stats["in_flight"] == 0)


async def test_loop_streams_until_the_client_leaves(sim, client):
    sim.inject("loop")
    reply = await client.chat.completions.create(model="sim-chat", messages=MESSAGES, stream=True)
    seen = []
    async for chunk in reply:
        seen.append(chunk.choices[0].delta.content)
        if len(seen) == 200:
            break
    await reply.close()
    assert len(set(seen[1:])) <= 4  # the same sentence over and over
    await until(lambda: sim.stats["cancelled"] == 1 and sim.stats["in_flight"] == 0)


async def test_loop_is_capped_by_max_tokens(sim, client):
    sim.inject("loop")
    chunks = await call(client, stream=True, max_tokens=50)
    assert sum(1 for c in chunks if c.choices[0].delta.content) == 50
    assert chunks[-1].choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [False, True])
async def test_length_fault_truncates(sim, client, stream):
    sim.inject("length")
    reply = await call(client, stream=stream)
    if stream:
        assert reply[-1].choices[0].finish_reason == "length"
        assert sum(1 for c in reply if c.choices[0].delta.content) == 3
    else:
        assert reply.choices[0].finish_reason == "length"
        assert reply.choices[0].message.content == "好的，你说的是「"


async def test_faults_target_a_role_and_count(sim, client):
    sim.inject("500", role="tool", count=2)
    assert (await call(client, stream=False)).choices[0].message.content  # chat is untouched
    tools = [{"type": "function", "function": {"name": "calculator", "parameters": {}}}]
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="sim-tool", messages=MESSAGES, tools=tools)
    await client.chat.completions.create(model="sim-tool", messages=MESSAGES, tools=tools)
    assert sim.stats["faults"] == {"500": 2}
    assert sim.stats["calls"] == {"router": 0, "chat": 1, "tool": 3, "chatty": 0}


async def test_faults_over_http(sim, client):
    root = sim.base_url.removesuffix("/v1")
    async with httpx2.AsyncClient() as http:
        queued = await http.post(f"{root}/_sim/faults", json={"fault": "429", "role": "chat"})
        assert queued.json()["queued"] == 1
        unknown = await http.post(f"{root}/_sim/faults", json={"fault": "meltdown"})
        assert unknown.status_code == 400
        with pytest.raises(openai.RateLimitError):
            await call(client, stream=False)
        stats = (await http.get(f"{root}/_sim/stats")).json()
        assert stats["faults"] == {"429": 1} and stats["queued_faults"] == 0
        await http.post(f"{root}/_sim/faults", json={"fault": "500", "count": 3})
        cleared = await http.delete(f"{root}/_sim/faults")
        assert cleared.json()["queued"] == 0
    assert (await call(client, stream=False)).choices[0].message.content


def test_inject_rejects_unknown_values():
    simulator = Simulator()
    for bad in ({"fault": "boom"}, {"fault": "429", "count": 0}, {"fault": "429", "role": "x"}):
        with pytest.raises(ValueError):
            simulator.inject(bad.pop("fault"), **bad)


async def test_stop_ends_streams_in_progress(client):
    simulator = Simulator()
    url = await simulator.start()
    simulator.inject("timeout")
    slow_client = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    pending = asyncio.create_task(
        slow_client.chat.completions.create(model="sim-chat", messages=MESSAGES, timeout=30)
    )
    await until(lambda: simulator.stats["in_flight"] == 1)
    await simulator.stop()
    with pytest.raises(openai.APIConnectionError):
        await pending


class SlowReader:
    """A transport whose client reads only when told to, and a peer that may leave."""

    def __init__(self, buffered: int = 0) -> None:
        self.buffered, self.written, self.gone = buffered, [], False

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def left(self) -> bool:
        return self.gone


async def test_a_stream_waits_for_a_client_that_does_not_read():
    slow = SlowReader(buffered=HIGH_WATER + 1)
    events = (b"e%d" % i for i in range(500))
    sending = asyncio.create_task(Pacer(slow, slow, interval=0).send(events))
    await asyncio.sleep(0.05)
    assert slow.written == []  # nothing more piles up in memory
    slow.buffered = 0
    await asyncio.wait_for(sending, 5)
    assert len(slow.written) == 500


async def test_a_paced_stream_stops_at_its_limit_or_when_the_client_leaves():
    slow = SlowReader()
    await Pacer(slow, slow, interval=0.001, limit=3).send(iter([b"a", b"b", b"c", b"d"]))
    assert slow.written == [b"a", b"b", b"c"]
    slow.gone = True
    with pytest.raises(ConnectionResetError):
        await Pacer(slow, slow, interval=0.001).send(iter([b"e"]))
    assert slow.written == [b"a", b"b", b"c"]


async def test_a_cancelled_stream_writes_nothing_more():
    slow = SlowReader()
    sending = asyncio.create_task(Pacer(slow, slow, interval=0.01).send(iter([b"x"] * 100)))
    await until(lambda: len(slow.written) >= 2)
    sending.cancel()
    await asyncio.wait([sending])
    count = len(slow.written)
    await asyncio.sleep(0.05)
    assert len(slow.written) == count < 100
