"""The load generator's HTTP/1.1 client against a server that answers scripted bytes: framing by
length, chunks and end of connection, keep-alive, and every way an answer can go wrong."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from lang_agent import loop
from lang_agent.bench.wire import LoadClient, WireError

CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"d\r\ndata: first\n\n\r\n"
    b"E;ext=1\r\ndata: second\n\n\r\n"
    b"0\r\nx-trailer: yes\r\n\r\n"
)
SIZED = b'HTTP/1.1 201 Created\r\nContent-Length: 11\r\n\r\n{"ok":true}'


@dataclass
class Scripted:
    """A TCP server: reads one request at a time and answers it with `answer(request)`, written
    `step` bytes at a time; `close` ends the connection after the answer."""

    answer: Callable[[bytes], bytes]
    step: int = 1 << 20
    close: bool = False
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                data = self.answer(request)
                for start in range(0, len(data), self.step):
                    writer.write(data[start : start + self.step])
                    await writer.drain()
                    await asyncio.sleep(0)
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Scripted]]:
    servers: list[asyncio.Server] = []

    async def start(answer: bytes | Callable[[bytes], bytes], **options) -> Scripted:
        script = Scripted(answer if callable(answer) else lambda _: answer, **options)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        script.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        return script

    yield start
    for server in servers:
        server.close()


async def post(url: str, *, timeout_s: float = 5.0, times: int = 1) -> list[tuple[int, bytes]]:
    """`times` requests on one connection: each answer's status and body."""
    answers = []
    async with LoadClient(url, timeout_s=timeout_s) as client:
        connection = client.connection()
        for i in range(times):
            body = bytearray()
            status = await connection.post(
                "/chat", {"n": i, "text": "你好"}, headers={"x-k": "v"}, sink=body.extend
            )
            answers.append((status, bytes(body)))
    return answers


@pytest.mark.parametrize("step", [1, 2, 5, 13, 1 << 20])
async def test_chunks_split_anywhere_are_reassembled_on_one_kept_alive_connection(scripted, step):
    server = await scripted(CHUNKED, step=step)
    answers = await post(server.url, times=3)
    assert answers == [(200, b"data: first\n\ndata: second\n\n")] * 3
    assert server.connections == 1


async def test_the_request_is_a_plain_json_post_under_the_base_path(scripted):
    server = await scripted(SIZED)
    assert await post(server.url) == [(201, b'{"ok":true}')]
    head, _, body = server.requests[0].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat HTTP/1.1"
    assert f"host: {server.url.split('/')[2]}" in lines and "x-k: v" in lines
    assert "content-type: application/json" in lines
    assert json.loads(body) == {"n": 0, "text": "你好"}


async def test_a_closed_connection_is_replaced_for_the_next_request(scripted):
    server = await scripted(SIZED.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert await post(server.url, times=2) == [(201, b'{"ok":true}')] * 2
    assert server.connections == 2


async def test_a_body_without_framing_ends_with_the_connection(scripted):
    server = await scripted(b"HTTP/1.0 500 Oops\r\n\r\nno length", step=4, close=True)
    assert await post(server.url, times=2) == [(500, b"no length")] * 2


async def test_a_body_without_content_is_done_at_its_head(scripted):
    server = await scripted(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert await post(server.url, times=2) == [(204, b"")] * 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (CHUNKED[:-20], "connection lost in the answer"),
        (SIZED[:-3], "connection lost in the answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed"),
        (b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nabc", "negative"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "negative"),
        (b"garbage", "connection lost in the answer"),
    ],
)
async def test_a_broken_answer_is_a_wire_error(scripted, answer, reason):
    server = await scripted(answer, close=True)
    with pytest.raises(WireError, match=reason):
        await post(server.url)


async def test_a_silent_server_times_out_and_the_connection_is_dropped(scripted):
    server = await scripted(b"")  # reads the request, never answers
    with pytest.raises(TimeoutError):
        await post(server.url, timeout_s=0.2)
    assert server.requests


async def test_no_server_is_a_wire_error():
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(WireError, match="cannot connect"):
        await post(f"http://127.0.0.1:{port}")


def test_only_plain_http_is_spoken():
    with pytest.raises(ValueError, match="plain http"):
        LoadClient("https://example.com/v1", timeout_s=1)


def test_it_speaks_on_the_event_loop_the_tool_runs_on():
    """The stress tool runs on uvloop, whose transports are not asyncio.Transport subclasses."""

    async def exchange() -> list[tuple[int, bytes]]:
        script = Scripted(lambda _: CHUNKED)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        try:
            return await post(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", times=2)
        finally:
            server.close()

    assert loop.run(exchange()) == [(200, b"data: first\n\ndata: second\n\n")] * 2
