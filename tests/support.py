"""Test support: an asyncio loop in a thread, the app under uvicorn on a free loopback port, and
raw HTTP/1.1 servers that answer byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import httpx2
import uvicorn
from fastapi import FastAPI

from fastapi_server.wire_types import session_thread
from lang_agent.settings import ROOT

if TYPE_CHECKING:
    import openai

T = TypeVar("T")

TEST_KEY = "test-key-0123456789"


def ds_thread(session_id: str, app_id: str = "lang-agent") -> str:
    """The thread a DashScope session is kept (and logged) under."""
    return session_thread(app_id, session_id)


class BackgroundLoop:
    """An event loop in a daemon thread, so sync tests and servers never share a loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:0 in its own thread; `url` is known once started."""

    def __init__(self, app: FastAPI) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def start(self, timeout: float = 60) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def wait_until(predicate, *, within_s: float = 10.0, every_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every_s)


def set_latency(simulator, role: str, *, ttft_ms: float, tokens_per_s: float = 0) -> None:
    """Change one role's timing on a running simulator, over its HTTP knob."""
    root = simulator.base_url.removesuffix("/v1")
    timing = {"ttft_ms": ttft_ms, "tokens_per_s": tokens_per_s}
    response = httpx2.post(f"{root}/_sim/profile", json={role: timing}, timeout=5)
    response.raise_for_status()


@contextlib.contextmanager
def latency(simulator, *roles: str, ttft_ms: float, tokens_per_s: float = 0) -> Iterator[None]:
    """Within the block the simulator's `roles` have this timing; after it, none."""
    for role in roles:
        set_latency(simulator, role, ttft_ms=ttft_ms, tokens_per_s=tokens_per_s)
    try:
        yield
    finally:
        for role in roles:
            set_latency(simulator, role, ttft_ms=0)


def metric_series(text: str, family: str) -> dict[str, float]:
    """One family's series in a Prometheus text, by their labels as written ('{a="b"}')."""
    series: dict[str, float] = {}
    for line in text.splitlines():
        name, brace, rest = line.partition("{")
        if name == family and brace:
            labels, _, value = rest.rpartition(" ")
            series["{" + labels] = float(value)
    return series


def http_chunk(data: bytes) -> bytes:
    """One chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server that runs `handler` on each connection; yields its URL and a one-item list
    counting the connections it accepted."""
    accepted = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/x?q=1", accepted
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


def answering(*responses: bytes, keep: bool = True) -> Handler:
    """Each request on a connection gets the next response; without `keep` the server closes
    the connection after each (with no Connection: close header)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = [
                line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            ]
            if length:
                await reader.readexactly(int(length[0].split(b":")[1]))
            writer.write(response)
            await writer.drain()
            if not keep:
                return

    return handler


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def proxying(routes: dict[str, int], *, seen: list[bytes], require: bytes | None = None) -> Handler:
    """An HTTP proxy: CONNECT tunnels, and requests in absolute form, to the loopback port
    `routes` gives for each authority (host:port), so no name is ever resolved. `seen` gets
    each request line; with `require`, one without that Proxy-Authorization gets a 407."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line, *fields = head[:-4].split(b"\r\n")
        seen.append(line)
        given = [f.split(b":", 1)[1].strip() for f in fields if f.lower().startswith(b"proxy-auth")]
        if require is not None and given != [require]:
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return
        method, target, _ = line.split(b" ")
        if method == b"CONNECT":
            upstream = await asyncio.open_connection("127.0.0.1", routes[target.decode()])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = httpx2.URL(target.decode())
            upstream = await asyncio.open_connection("127.0.0.1", routes[url.netloc.decode()])
            kept = [f for f in fields if not f.lower().startswith(b"proxy-auth")]
            request_line = b" ".join([method, url.raw_path, b"HTTP/1.1"])
            upstream[1].write(b"\r\n".join([request_line, *kept]) + b"\r\n\r\n")
        await asyncio.gather(_pipe(reader, upstream[1]), _pipe(upstream[0], writer))

    return handler


def failed_start(env: dict[str, str], *, cwd: object) -> subprocess.CompletedProcess[str]:
    """`fastapi_server/server_openai.py` run in `cwd` with `env`, for a start that must fail:
    it ends on its own, its output captured."""
    script = ROOT / "fastapi_server" / "server_openai.py"
    return subprocess.run(
        [sys.executable, str(script)], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def bare_env() -> dict[str, str]:
    """The caller's environment without settings: PATH and the like, and a worktree's
    PYTHONPATH, which names the checkout under test."""
    kept = ("PATH", "HOME", "LANG", "XDG_RUNTIME_DIR", "PYTHONPATH")
    return {key: value for key, value in os.environ.items() if key in kept}


def script_env(
    *, pg_dsn: str, sim_url: str, mcp_config: object, data_dir: object, **extra: str
) -> dict[str, str]:
    """The environment of a script a test runs on the test stack (`bare_env`, then the test
    database, the simulator and an MCP config)."""
    env = bare_env()
    env.update(
        CONN_STR=pg_dsn,
        SIM_URL=sim_url,
        LLM_PROVIDER="sim",
        MCP_CONFIG=str(mcp_config),
        DATA_DIR=str(data_dir),
        FAST_AUTH_KEYS=TEST_KEY,
        **extra,
    )
    return env


def ask(client: openai.OpenAI, text: str, thread_id: str) -> str:
    """One non-streamed OpenAI turn on `thread_id`; its answer's text."""
    reply = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": text}],
        extra_body={"thread_id": thread_id},
    )
    return reply.choices[0].message.content
