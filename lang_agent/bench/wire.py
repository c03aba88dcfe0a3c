"""The load generator's HTTP/1.1 client: a keep-alive connection per simulated user, and each
response parsed in its protocol's `data_received`, so a streamed chunk costs no task wake-up.

The load generator shares the machine with the server it measures. Through an httpx2 client
(with `Http1Transport`) it spent 4.3 ms of CPU on a streamed turn and 1.3 ms on a plain one at
c=50; this client spends 2.7 and 0.7 ms (docs/performance.md). It speaks only what the
benchmark needs: POST with a JSON body, answers framed by content-length, chunks or the end of
the connection, and keep-alive. Errors are `WireError` (or TimeoutError).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

from lang_agent.jsonwire import dumpb

MAX_HEAD = 64 * 1024
MAX_SIZE_LINE = 1024
# After a refused connection the next try waits, twice as long each time up to a bound: a user
# of a server that is down (or never came up) otherwise retries at once and spins the CPU.
FIRST_RETRY_S = 0.05
MAX_RETRY_S = 1.0

BodySink = Callable[[bytes], None]


class WireError(Exception):
    """The exchange failed: no connection, a connection lost mid-answer, a malformed answer."""


class _Exchange(asyncio.Protocol):
    """One connection. `start` sends a request; its future ends with the status code once the
    whole body has gone to `sink`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.open = False
        self._buf = bytearray()
        self._state = "idle"  # head, length, size, chunk, chunk-end, trailer, eof
        self._done: asyncio.Future[int] | None = None
        self._sink: BodySink = _discard
        self._status = 0
        self._left = 0
        self._keep = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, though they are the same.
        self.transport, self.open = cast(asyncio.Transport, transport), True

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        if self._state == "eof":  # a body framed by the end of the connection
            self._finish()
        elif self._state != "idle":
            self._fail(f"connection lost in the answer ({self._state})")

    def data_received(self, data: bytes) -> None:
        if self._state == "idle":  # nothing was asked: a server that talks out of turn
            self._close()
            return
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(f"malformed answer: {exc}")

    def start(self, request: bytes, sink: BodySink) -> asyncio.Future[int]:
        assert self.transport is not None and self._state == "idle"
        self._done = asyncio.get_running_loop().create_future()
        self._sink, self._state, self._keep = sink, "head", True
        self.transport.write(request)
        return self._done

    def abort(self) -> None:
        self._state = "idle"
        self._close()

    def _parse(self) -> None:
        buf = self._buf
        while buf:
            state = self._state
            if state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        raise ValueError("head too large")
                    return
                self._head(bytes(buf[:end]))
                del buf[: end + 4]
            elif state in ("length", "chunk"):
                piece = bytes(buf[: self._left])
                del buf[: len(piece)]
                self._left -= len(piece)
                self._sink(piece)
                if not self._left:
                    if state == "length":
                        self._finish()
                    else:
                        self._state = "chunk-end"
            elif state == "chunk-end":
                if len(buf) < 2:
                    return
                if buf[:2] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                del buf[:2]
                self._state = "size"
            elif state in ("size", "trailer"):
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_SIZE_LINE:
                        raise ValueError("chunk size line too long")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if state == "trailer":
                    if not line:
                        self._finish()
                elif (size := _size(int(line.split(b";", 1)[0], 16))) == 0:
                    self._state = "trailer"
                else:
                    self._left, self._state = size, "chunk"
            elif state == "eof":
                self._sink(bytes(buf))
                buf.clear()
            else:  # idle: bytes after the end of the answer
                self._close()
                buf.clear()

    def _head(self, head: bytes) -> None:
        status_line, *lines = head.split(b"\r\n")
        version, status = status_line.split(b" ", 2)[:2]
        self._status = int(status)
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        self._keep = version == b"HTTP/1.1" and headers.get(b"connection") != b"close"
        if self._status in (204, 304):
            self._state, self._left = "length", 0
        elif headers.get(b"transfer-encoding", b"").endswith(b"chunked"):
            self._state = "size"
        elif b"content-length" in headers:
            self._state, self._left = "length", _size(int(headers[b"content-length"]))
        else:
            self._state, self._keep = "eof", False
        if self._state == "length" and not self._left:
            self._finish()

    def _finish(self) -> None:
        self._state = "idle"
        if not self._keep:
            self._close()
        if self._done is not None and not self._done.done():
            self._done.set_result(self._status)

    def _fail(self, reason: str) -> None:
        self._state = "idle"
        self._close()
        if self._done is not None and not self._done.done():
            self._done.set_exception(WireError(reason))

    def _close(self) -> None:
        self.open = False
        if self.transport is not None:
            self.transport.close()


def _discard(_: bytes) -> None:
    pass


def _size(value: int) -> int:
    if value < 0:
        raise ValueError(f"negative length {value}")
    return value


class Connection:
    """A simulated user's connection: one request at a time, reconnected when the server
    closed it, and after a failed connect only once a pause has passed."""

    def __init__(self, client: LoadClient) -> None:
        self._client = client
        self._exchange: _Exchange | None = None
        self._retry_s = 0.0  # the pause before the next connect; 0 after one that worked

    async def post(
        self, path: str, body: Any, *, headers: dict[str, str], sink: BodySink = _discard
    ) -> int:
        """POST `body` as JSON to `path`; the answer's body goes to `sink` as it arrives.
        Returns the status code once the answer has ended."""
        client = self._client
        content = dumpb(body)
        head = [f"POST {client.prefix}{path} HTTP/1.1", f"host: {client.host_header}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        head += ["content-type: application/json", f"content-length: {len(content)}", "", ""]
        request = "\r\n".join(head).encode("latin-1") + content
        try:
            async with asyncio.timeout(client.timeout_s):
                exchange = await self._connect()
                return await exchange.start(request, sink)
        except BaseException:
            self.close()  # an answer left half-read cannot carry the next request
            raise

    def close(self) -> None:
        if self._exchange is not None:
            self._exchange.abort()
            self._exchange = None

    async def _connect(self) -> _Exchange:
        if self._exchange is not None and self._exchange.open:
            return self._exchange
        if self._retry_s:
            await asyncio.sleep(self._retry_s)
        loop = asyncio.get_running_loop()
        try:
            _, exchange = await loop.create_connection(
                _Exchange, self._client.host, self._client.port
            )
        except OSError as exc:
            self._retry_s = min(max(2 * self._retry_s, FIRST_RETRY_S), MAX_RETRY_S)
            raise WireError(f"cannot connect: {exc}") from exc
        self._exchange, self._retry_s = exchange, 0.0
        return exchange


class LoadClient:
    """Connections to one `http://` base URL; `connection()` gives each user its own."""

    def __init__(self, base_url: str, *, timeout_s: float) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"the load generator speaks plain http: {base_url}")
        self.host, self.port = url.hostname, url.port or 80
        self.host_header = url.netloc
        self.prefix = url.path.rstrip("/")
        self.timeout_s = timeout_s
        self._connections: list[Connection] = []

    def connection(self) -> Connection:
        connection = Connection(self)
        self._connections.append(connection)
        return connection

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for connection in self._connections:
            connection.close()
        self._connections.clear()
