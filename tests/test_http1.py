"""Http1Transport against raw HTTP/1.1 servers: framing, keep-alive, errors and timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl

import httpx2
import pytest
import trustme

from lang_agent.llm.http1 import Http1Transport
from lang_agent.llm.sim import Simulator
from lang_agent.llm.sim_profile import Latency, SimProfile
from tests.support import Handler, answering, http_chunk, raw_server

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "讲个笑话"}], "stream": True}
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def streaming(events: int, gap_s: float, *, stall_after: int | None = None) -> Handler:
    """Every request gets `events` chunks `gap_s` apart; with `stall_after`, the server goes
    silent after that many chunks and keeps the socket open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(HEAD)
            for number in range(events):
                if number == stall_after:
                    await asyncio.sleep(3600)
                writer.write(http_chunk(b"data: %d\n\n" % number))
                await writer.drain()
                await asyncio.sleep(gap_s)
            writer.write(b"0\r\n\r\n")
            await writer.drain()

    return handler


def _client(read_timeout_s: float, **limits: int) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=Http1Transport(limits=httpx2.Limits(**limits)) if limits else Http1Transport(),
        timeout=httpx2.Timeout(read_timeout_s, connect=5.0, pool=0.3),
    )


async def _read(
    client: httpx2.AsyncClient, url: str, got: list[bytes], first: asyncio.Event | None = None
) -> None:
    async with client.stream("GET", url) as response:
        async for chunk in response.aiter_raw():
            got.append(chunk)
            if first is not None:
                first.set()


async def test_a_stream_that_goes_silent_times_out_after_the_read_timeout():
    got: list[bytes] = []
    async with raw_server(streaming(5, 0.0, stall_after=2)) as (url, _), _client(0.3) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(httpx2.ReadTimeout):
            await _read(client, url, got)
        waited = loop.time() - started
    assert b"".join(got) == b"data: 0\n\ndata: 1\n\n"
    assert 0.25 < waited < 5


async def test_reads_that_keep_coming_never_time_out_though_the_stream_outlasts_the_timeout():
    # 8 chunks 0.15 s apart (1.2 s in all) under a 0.4 s read timeout: each read starts over.
    got: list[bytes] = []
    async with raw_server(streaming(8, 0.15)) as (url, _), _client(0.4) as client:
        await _read(client, url, got)
        # The connection idled past the old deadline in the pool; it is reused without harm.
        await asyncio.sleep(0.5)
        await _read(client, url, got)
    assert b"".join(got).count(b"data: ") == 16


async def test_a_cancel_from_outside_stays_a_cancel():
    async with raw_server(streaming(5, 0.0, stall_after=1)) as (url, _), _client(30) as client:
        first = asyncio.Event()
        task = asyncio.create_task(_read(client, url, [], first))
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_outer_timeout_shorter_than_the_read_timeout_wins():
    async with raw_server(streaming(5, 0.0, stall_after=1)) as (url, _), _client(30) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await _read(client, url, [])


def sized(body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 200 OK", b"content-length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def test_length_chunked_and_close_delimited_bodies_and_keep_alive():
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"5;ext=1\r\nhello\r\n"
        + http_chunk(b" world")
        + b"0\r\ntrailer: x\r\n\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + sized(b"after 100")
    handler = answering(sized(b'{"a": 1}'), chunked, interim, b"HTTP/1.1 200 OK\r\n\r\nto the end")
    async with raw_server(handler) as (url, accepted), _client(5) as client:
        assert (await client.post(url, json={"q": 1})).json() == {"a": 1}
        assert (await client.get(url)).text == "hello world"
        assert (await client.get(url)).text == "after 100"
        assert (await client.get(url)).text == "to the end"
        assert accepted[0] == 1  # one connection carried all four


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error():
    async with raw_server(answering(sized(b"one"), keep=False)) as (url, accepted):
        async with _client(5) as client:
            assert (await client.get(url)).text == "one"
            await asyncio.sleep(0.05)  # the server's close has arrived: the idle one is dropped
            assert (await client.get(url)).text == "one"
    assert accepted[0] == 2


@pytest.mark.parametrize(
    "closing",
    [sized(b"bye", b"connection: close"), sized(b"bye").replace(b"HTTP/1.1", b"HTTP/1.0")],
)
async def test_connection_close_and_http_1_0_are_honoured(closing):
    async with raw_server(answering(closing, closing)) as (url, accepted), _client(5) as client:
        assert (await client.get(url)).text == "bye"
        assert (await client.get(url)).text == "bye"
    assert accepted[0] == 2


@pytest.mark.parametrize(
    "response",
    [
        b"HTCPCP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffff\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello",
        b"HTTP/1.1 200 OK\r\ncontent-",
    ],
)
async def test_a_broken_response_is_a_protocol_error(response):
    async with raw_server(answering(response, keep=False)) as (url, _), _client(5) as client:
        with pytest.raises(httpx2.RemoteProtocolError):
            await client.get(url)


async def test_refused_connection_and_full_pool_are_httpx2_errors():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    async with _client(5) as client:
        with pytest.raises(httpx2.ConnectError):
            await client.get(f"http://127.0.0.1:{closed}/")
    async with (
        raw_server(streaming(5, 0.0, stall_after=1)) as (url, _),
        _client(30, max_connections=1) as client,
    ):
        first = asyncio.Event()
        holder = asyncio.create_task(_read(client, url, [], first))
        await asyncio.wait_for(first.wait(), 5)
        with pytest.raises(httpx2.PoolTimeout):
            await client.get(url)
        holder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holder
        # The cancelled stream gave its slot back.
        async with raw_server(streaming(2, 0.0)) as (other, _):
            assert (await client.get(other)).status_code == 200


async def test_cancelled_calls_leave_no_stranded_connection_slots():
    # Hang-ups, turn timeouts, the filler and a discarded speculation all cancel model calls
    # mid-flight. httpcore 1 kept a pool slot for a call cancelled while its connection was
    # being set up (encode/httpcore#1093); enough of them and every later call waited out its
    # pool timeout. No cancel may strand a slot or a half-read connection here either.
    sim = Simulator(profile=SimProfile(chat=Latency(ttft_ms=10, tokens_per_s=400)))
    url = await sim.start() + "/chat/completions"
    limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
    client = httpx2.AsyncClient(
        transport=Http1Transport(limits=limits),
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


async def test_https_verifies_the_server_certificate():
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    trusting = ssl.create_default_context()
    authority.configure_trust(trusting)
    server = await asyncio.start_server(answering(sized(b"secret")), "127.0.0.1", 0, ssl=server_tls)
    url = f"https://localhost:{server.sockets[0].getsockname()[1]}/v1/models"
    try:
        async with httpx2.AsyncClient(transport=Http1Transport(verify=trusting)) as client:
            assert (await client.get(url)).text == "secret"
        async with httpx2.AsyncClient(transport=Http1Transport()) as client:
            with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await client.get(url)
    finally:
        server.close()
