"""HTTP/1.1 to the model upstreams: an httpx2 transport over asyncio streams, with one pool.

httpcore2 and h11 took about two fifths of a streamed model call's CPU (docs/performance.md):
per chunk an h11 event, trace contexts, five nested async generators and lock checkpoints.
A model upstream needs little of that: one request at a time per connection, a body framed by
content-length, chunks or the end of the connection, keep-alive and TLS. This is that much.
Timeouts mean what they mean in httpx2: `connect` (TCP and TLS), `write`, `read` (each wait for
bytes, so a stream that keeps coming never times out) and `pool` (waiting for a connection).
Errors are httpx2's, so callers and the capture layer see no difference. With `proxies`
(llm/proxies.py: HTTPS_PROXY and friends) a connection goes through an HTTP proxy.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import NamedTuple

import httpx2

from lang_agent.llm.proxies import Proxy, ProxyRoutes

# Every upstream connection kept alive: a turn holds two or three calls at once, so at
# concurrency 100 a keep-alive cap of 200 closed and reopened connections all the time.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)
MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
MAX_CHUNK = 64 * 1024 * 1024  # a chunk is read whole; a larger one is refused, not buffered
NO_BODY_STATUS = frozenset({204, 304})

Origin = tuple[str, str, int]


class Head(NamedTuple):
    """A response's status line and headers; `old` for HTTP/1.0."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    old: bool


class _Connection:
    """One TCP (or TLS) connection and when it went back to the pool. `forward` is the proxy
    an http request goes to in absolute form (a tunnel for https needs nothing per request)."""

    __slots__ = ("reader", "writer", "idle_since", "forward")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        forward: Proxy | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0
        self.forward = forward

    def usable(self, now: float, expiry: float | None) -> bool:
        """Still open, nothing unread from the server, not idle past the keep-alive expiry."""
        if self.writer.transport.is_closing() or self.reader.at_eof():
            return False
        return expiry is None or now - self.idle_since < expiry

    def close(self) -> None:
        self.writer.transport.abort()


class Http1Transport(httpx2.AsyncBaseTransport):
    """A keep-alive pool per origin under one limit on open connections.

    `verify` is the TLS context for https upstreams; without one, httpx2's default (certifi's
    CA bundle, or SSL_CERT_FILE), made once, on the first https connection. `proxies` says
    which upstreams are reached through an HTTP proxy (none without)."""

    def __init__(
        self,
        *,
        limits: httpx2.Limits = UPSTREAM_LIMITS,
        verify: ssl.SSLContext | None = None,
        proxies: ProxyRoutes | None = None,
    ) -> None:
        self._proxies = proxies
        self._slots = asyncio.Semaphore(limits.max_connections or 2**31)
        self._keep = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._idle_count = 0
        self._tls = verify
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx2.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        await self._acquire(timeouts.get("pool"))
        try:
            conn, head = await self._exchange(origin, request, timeouts)
        except BaseException:
            self._slots.release()
            raise
        try:
            body = _Body(self, conn, origin, request, head, timeouts.get("read"))
        except BaseException:
            self._release(conn, origin, reusable=False)
            raise
        return httpx2.Response(
            head.status,
            headers=head.headers,
            stream=body,
            extensions={
                "http_version": b"HTTP/1.0" if head.old else b"HTTP/1.1",
                "reason_phrase": head.reason,
            },
        )

    async def _exchange(
        self, origin: Origin, request: httpx2.Request, timeouts: dict
    ) -> tuple[_Connection, Head]:
        """Send the request and read the response head, on a kept-alive connection if any.

        Nothing is retried here: a call that failed is the caller's to retry (`LLM_RETRIES`)."""
        conn = self._take_idle(origin) or await self._connect(origin, timeouts)
        try:
            await _send(conn, request, timeouts.get("write"))
            return conn, await _read_head(conn, timeouts.get("read"))
        except BaseException:
            conn.close()
            raise

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        self._idle_count = 0

    async def _acquire(self, wait_s: float | None) -> None:
        if not self._slots.locked():
            await self._slots.acquire()  # free: returns without waiting
            return
        try:
            async with asyncio.timeout(wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx2.PoolTimeout("no upstream connection became free in time") from None

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recent: the least likely to have been closed
            self._idle_count -= 1
            if conn.usable(now, self._expiry):
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection, origin: Origin, *, reusable: bool) -> None:
        self._slots.release()
        if not reusable or self._closed or self._keep == 0:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(origin, deque()).append(conn)
        self._idle_count += 1
        if self._keep is not None and self._idle_count > self._keep:
            oldest = min(self._idle.values(), key=lambda d: d[0].idle_since if d else 1e300)
            oldest.popleft().close()
            self._idle_count -= 1

    async def _connect(self, origin: Origin, timeouts: dict) -> _Connection:
        scheme, host, port = origin
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = httpx2.create_ssl_context()  # loads the CA bundle: about 25 ms
            tls = self._tls
        proxy = self._proxies.proxy_for(scheme, host) if self._proxies else None
        where = f"{host}:{port}" if proxy is None else f"{host}:{port} through the proxy {proxy}"
        try:
            async with asyncio.timeout(timeouts.get("connect")):
                if proxy is None:
                    reader, writer = await asyncio.open_connection(
                        host, port, ssl=tls, server_hostname=host if tls else None, limit=MAX_HEAD
                    )
                    return _Connection(reader, writer)
                reader, writer = await asyncio.open_connection(
                    proxy.host, proxy.port, limit=MAX_HEAD
                )
                conn = _Connection(reader, writer, forward=None if tls else proxy)
                try:
                    if tls is not None:
                        await _tunnel(conn, host, port, proxy)
                        await writer.start_tls(tls, server_hostname=host)
                except BaseException:
                    conn.close()
                    raise
                return conn
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"connecting to {where} timed out") from None
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
            raise httpx2.ConnectError(f"cannot connect to {where}: {exc}") from exc


async def _tunnel(conn: _Connection, host: str, port: int, proxy: Proxy) -> None:
    """CONNECT host:port through the proxy; a refusal is a ProxyError with its status."""
    authority = (f"[{host}]" if ":" in host else host).encode("idna") + b":%d" % port
    lines = [b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n" % (authority, authority)]
    if proxy.authorization:
        lines.append(b"Proxy-Authorization: %s\r\n" % proxy.authorization)
    conn.writer.write(b"".join(lines) + b"\r\n")
    await conn.writer.drain()
    try:
        head = _parse_head(await conn.reader.readuntil(b"\r\n\r\n"))
    except (httpx2.RemoteProtocolError, asyncio.LimitOverrunError) as exc:
        raise httpx2.ProxyError(f"the proxy {proxy} answered CONNECT with garbage") from exc
    if not 200 <= head.status < 300:
        reason = head.reason.decode("latin-1")
        raise httpx2.ProxyError(
            f"the proxy {proxy} refused the tunnel to {host}:{port}: {head.status} {reason}"
        )


async def _send(conn: _Connection, request: httpx2.Request, write_s: float | None) -> None:
    url = request.url
    # Through a forwarding proxy the request line names the whole URL (absolute form).
    target = url.raw_path
    if conn.forward is not None:
        target = b"%s://%s%s" % (url.raw_scheme, url.netloc, url.raw_path)
    lines = [b"%s %s HTTP/1.1\r\n" % (request.method.encode("ascii"), target)]
    lines += [b"%s: %s\r\n" % pair for pair in request.headers.raw]
    if conn.forward is not None and conn.forward.authorization:
        lines.append(b"Proxy-Authorization: %s\r\n" % conn.forward.authorization)
    lines.append(b"\r\n")
    writer = conn.writer
    try:
        if writer.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        try:
            writer.write(b"".join(lines) + request.content)
        except httpx2.RequestNotRead:  # a streamed body
            writer.write(b"".join(lines))
            chunked = request.headers.get("transfer-encoding", "").lower() == "chunked"
            async for part in request.stream:  # type: ignore[union-attr]
                writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            if chunked:
                writer.write(b"0\r\n\r\n")
        async with asyncio.timeout(write_s):
            await writer.drain()
    except TimeoutError:
        raise httpx2.WriteTimeout("writing the request timed out") from None
    except OSError as exc:
        raise httpx2.WriteError(f"writing the request failed: {exc}") from exc


async def _read_head(conn: _Connection, read_s: float | None) -> Head:
    """The head of the final response (1xx interim ones are skipped)."""
    while True:
        try:
            async with asyncio.timeout(read_s):
                raw = await conn.reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise httpx2.ReadTimeout("waiting for the response timed out") from None
        except asyncio.IncompleteReadError as exc:
            raise httpx2.RemoteProtocolError(
                "the server closed the connection without a response"
            ) from exc
        except asyncio.LimitOverrunError as exc:
            raise httpx2.RemoteProtocolError("the response head is too large") from exc
        except OSError as exc:
            raise httpx2.ReadError(f"reading the response failed: {exc}") from exc
        head = _parse_head(raw)
        if not 100 <= head.status < 200:
            return head


def _parse_head(raw: bytes) -> Head:
    status_line, *lines = raw[:-4].split(b"\r\n")
    version, _, rest = status_line.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise httpx2.RemoteProtocolError(f"malformed status line {status_line[:100]!r}")
    headers = []
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise httpx2.RemoteProtocolError(f"malformed header line {line[:100]!r}")
        headers.append((name, value.strip()))
    return Head(int(code), reason, headers, old=version == b"HTTP/1.0")


class _Body(httpx2.AsyncByteStream):
    """The response body as it arrives; closing it gives the connection back (or closes it)."""

    def __init__(
        self,
        transport: Http1Transport,
        conn: _Connection,
        origin: Origin,
        request: httpx2.Request,
        head: Head,
        read_s: float | None,
    ) -> None:
        self._transport = transport
        self._conn = conn
        self._origin = origin
        self._read_s = read_s
        fields = {name.lower(): value for name, value in head.headers}
        self._chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
        self._length: int | None = None
        if request.method == "HEAD" or head.status in NO_BODY_STATUS:
            self._length = 0
        elif not self._chunked and b"content-length" in fields:
            length = fields[b"content-length"].strip()
            if not length.isdigit():
                raise httpx2.RemoteProtocolError(f"malformed content-length {length[:40]!r}")
            self._length = int(length)
        connection = fields.get(b"connection", b"").lower()
        # HTTP/1.0 closes unless it says keep-alive; HTTP/1.1 keeps alive unless it says close.
        closes = b"close" in connection or (head.old and b"keep-alive" not in connection)
        closes = closes or request.headers.get("connection", "").lower() == "close"
        # Without a length or chunks the body ends where the connection does.
        self._keep_alive = not closes and (self._chunked or self._length is not None)
        self._complete = False
        self._released = False
        # The read timeout: one deadline, pushed on by each read, and at most one timer.
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reader: asyncio.Task | None = None
        self._expired = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while (data := await self._next()) is not None:
            yield data

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            reusable = self._complete and self._keep_alive
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._transport._release(self._conn, self._origin, reusable=reusable)

    async def _next(self) -> bytes | None:
        """The next piece of the body, None at its end."""
        if self._complete:
            return None
        task = None
        if self._read_s is not None:
            task = asyncio.current_task()
            assert task is not None
            cancelling = task.cancelling()
            self._arm(task)
        try:
            data = await self._read_piece(self._conn.reader)
        except asyncio.CancelledError:
            if task is not None and self._expired:
                self._expired = False
                # Only the deadline's own cancel becomes a timeout; one from outside goes on up.
                if task.uncancel() <= cancelling:
                    raise httpx2.ReadTimeout("the response paused past the read timeout") from None
            raise
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise httpx2.RemoteProtocolError(
                "the server closed the connection before the end of the body"
            ) from exc
        except OSError as exc:
            raise httpx2.ReadError(f"reading the response failed: {exc}") from exc
        finally:
            self._reader = None
        if data is None or self._length == 0:
            self._complete = True
        return data

    def _arm(self, task: asyncio.Task) -> None:
        """Push the deadline on; a timer is only set when none is pending."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + self._read_s
        self._reader = task
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        if self._reader is None:
            return  # no read waiting: the next one sets a timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        self._expired = True
        self._reader.cancel()

    async def _read_piece(self, reader: asyncio.StreamReader) -> bytes | None:
        if self._chunked:
            line = await reader.readuntil(b"\r\n")
            try:
                size = int(line.split(b";", 1)[0], 16)
            except ValueError:
                raise httpx2.RemoteProtocolError(f"malformed chunk size {line[:40]!r}") from None
            if size > MAX_CHUNK:
                raise httpx2.RemoteProtocolError(f"a chunk of {size} bytes is too large")
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers: not used
                return None
            data = await reader.readexactly(size + 2)
            if data[-2:] != b"\r\n":
                raise httpx2.RemoteProtocolError("a chunk does not end with CRLF")
            return data[:-2]
        if self._length is None:
            return await reader.read(READ_SIZE) or None
        if self._length == 0:
            return None
        data = await reader.read(min(self._length, READ_SIZE))
        if not data:
            raise asyncio.IncompleteReadError(b"", self._length)
        self._length -= len(data)
        return data
