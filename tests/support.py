"""Test support: an asyncio loop in a thread, and the app under uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx2
import uvicorn
from fastapi import FastAPI

T = TypeVar("T")


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
