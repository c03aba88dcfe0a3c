"""An httpcore2 network backend whose reads keep their timeout without a cancel scope each.

httpcore2's anyio backend wraps every read in `anyio.fail_after` and an exception map: a cancel
scope per streamed chunk, which was 15-20 % of a model call's CPU (docs/performance.md). Here a
connection keeps one deadline, pushed forward by each read, and one timer that only acts when
it fires on a read that is still waiting past the deadline; then that read's task is cancelled
and the cancel becomes `httpcore2.ReadTimeout`, as asyncio.timeout does it. Connecting, TLS,
writes and closing stay with httpcore2's anyio stream.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any

import anyio
import httpcore2
from httpcore2._backends.anyio import AnyIOBackend, AnyIOStream
from httpcore2._backends.base import SOCKET_OPTION, AsyncNetworkBackend, AsyncNetworkStream


class LeanStream(AsyncNetworkStream):
    """An AnyIOStream whose `read` is a plain receive under a lazily checked deadline."""

    def __init__(self, inner: AnyIOStream) -> None:
        self._inner = inner
        self._receive = inner._stream.receive  # the anyio byte stream (TCP or TLS)
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task[Any] | None = None
        self._expired = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        task = None
        if timeout is not None:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + timeout
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._expire)
            task = self._reader = asyncio.current_task()
            cancelling = task.cancelling()
        try:
            return await self._receive(max_bytes)
        except anyio.EndOfStream:
            return b""
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            raise httpcore2.ReadError(exc) from exc
        except asyncio.CancelledError:
            if task is not None and self._expired:
                self._expired = False
                # Only our own cancel becomes a timeout; one from outside goes on up.
                if task.uncancel() <= cancelling:
                    raise httpcore2.ReadTimeout("the read timed out") from None
            raise
        finally:
            self._reader = None

    def _expire(self) -> None:
        self._timer = None
        reader = self._reader
        if reader is None:
            return  # idle between reads: the next read starts a timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        self._expired = True
        reader.cancel()

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        tls = await self._inner.start_tls(ssl_context, server_hostname, timeout)
        return LeanStream(tls)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class LeanBackend(AsyncNetworkBackend):
    """httpcore2's anyio backend, handing out LeanStreams."""

    def __init__(self) -> None:
        self._backend = AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        stream = await self._backend.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return LeanStream(stream)  # type: ignore[arg-type]

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SOCKET_OPTION] | None = None,
    ) -> AsyncNetworkStream:
        stream = await self._backend.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return LeanStream(stream)  # type: ignore[arg-type]

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)
