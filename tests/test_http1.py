"""The lean network backend keeps httpx2's read timeout: per read, from outside or inside."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2
import pytest

from lang_agent.llm.pools import ShardedTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@contextlib.asynccontextmanager
async def upstream(
    events: int, gap_s: float, *, stall_after: int | None = None
) -> AsyncIterator[str]:
    """An HTTP/1.1 server that answers every request with `events` chunks `gap_s` apart;
    with `stall_after`, it goes silent after that many chunks and keeps the socket open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(HEAD)
                for number in range(events):
                    if number == stall_after:
                        await asyncio.sleep(3600)
                    writer.write(_chunk(b"data: %d\n\n" % number))
                    await writer.drain()
                    await asyncio.sleep(gap_s)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def _client(read_timeout_s: float) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        transport=ShardedTransport(shards=1), timeout=httpx2.Timeout(read_timeout_s, connect=5.0)
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
    async with upstream(5, 0.0, stall_after=2) as url, _client(0.3) as client:
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
    async with upstream(8, 0.15) as url, _client(0.4) as client:
        await _read(client, url, got)
        # The connection idled past the old deadline in the pool; it is reused without harm.
        await asyncio.sleep(0.5)
        await _read(client, url, got)
    assert b"".join(got).count(b"data: ") == 16


async def test_a_cancel_from_outside_stays_a_cancel():
    async with upstream(5, 0.0, stall_after=1) as url, _client(30) as client:
        first = asyncio.Event()
        task = asyncio.create_task(_read(client, url, [], first))
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_an_outer_timeout_shorter_than_the_read_timeout_wins():
    async with upstream(5, 0.0, stall_after=1) as url, _client(30) as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await _read(client, url, [])
