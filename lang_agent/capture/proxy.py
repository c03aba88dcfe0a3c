"""The standalone capture proxy: any OpenAI-compatible client changes its base_url to use it.

Every method, path and query string is forwarded to an upstream (`/v1/...` maps onto its base
URL): a route's, chosen by path prefix or model (capture/routes.py), else PROXY_UPSTREAM. It goes
through the same CapturingTransport the agent uses. Stream chunks are relayed as they arrive,
one ASGI message each, so every event is flushed. There is a connect timeout and an idle-read
timeout, never a total one. Hop-by-hop headers are dropped; `--key` (or a route's key) replaces
the client's Authorization, which is logged at start and flagged on every call. GET /metrics is
answered by the proxy itself. A client that disconnects, before the answer or during it, ends
the upstream call, which is recorded `incomplete` for that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from lang_agent import local_requests
from lang_agent.capture.metrics import CONTENT_TYPE, Metrics
from lang_agent.capture.record import CallRecord, redact_url
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.routes import Routes
from lang_agent.capture.stream import CLIENT_LEFT, DECODABLE_ENCODINGS
from lang_agent.capture.transport import FLAGS_EXTENSION, CapturingTransport
from lang_agent.db import resolve_dsn
from lang_agent.llm.http1 import Http1Transport
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.llm.proxies import ProxyRoutes
from lang_agent.loop_lag import LoopLag
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
# The upstream's content-length stays: the body goes through unchanged, and with it the client
# knows the body is whole without waiting for the end of a chunked one.
RESPONSE_HOP_BY_HOP = HOP_BY_HOP - {"content-length"}
CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
# Config-file keys that are flag names of `proxy start` rather than setting names.
CONFIG_KEYS = {
    "port": "proxy_port",
    "upstream": "proxy_upstream",
    "key": "proxy_key",
    "routes": "proxy_routes",
    "read_timeout_s": "proxy_read_timeout_s",
    "add_usage": "proxy_add_usage",
}


# Set by a relay that leaves a sized body cut because the upstream cut it. uvicorn then closes
# the connection, as it should, and logs "ASGI callable returned without completing response"
# at error level, as if the proxy had a bug; the relay's own warning says what happened.
_cut_on_purpose: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "lang_agent_proxy_cut_on_purpose", default=False
)
UNFINISHED_RESPONSE = "ASGI callable returned without completing response."


class _CutOnPurpose(logging.Filter):
    """Drops uvicorn's error line for a response the relay left cut on purpose. uvicorn logs
    it in the request's task after the app returns, so the relay's context flag is visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_cut_on_purpose.get() and record.getMessage() == UNFINISHED_RESPONSE)


_CUT_FILTER = _CutOnPurpose()


class _ClientWatch:
    """Cancels the request's task when its client disconnects, so the upstream call ends too.
    Made once the request body is read: receive() then returns only at a disconnect or once the
    response is complete, hence `stop()` before the response's last message."""

    def __init__(self, receive: Receive) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.left = False
        self._stopped = False
        self._listener = asyncio.ensure_future(receive())
        self._listener.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, _: asyncio.Future) -> None:
        if not self._stopped:
            self.left = True
            self.task.cancel(CLIENT_LEFT)

    def stop(self) -> None:
        self._stopped = True
        self._listener.cancel()

    def only_cancel(self) -> bool:
        """Whether the cancel being raised is this watch's alone; any other (shutdown) goes up."""
        return self.left and self.task.uncancel() == 0


def load_config_file(path: Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file; keys are flag names (`upstream`) or setting names.
    ValueError, naming the file, when it cannot be read as one."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, not JSON, not TOML
        raise ValueError(f"{path}: {exc}") from exc
    if isinstance(raw, dict) and isinstance(raw.get("proxy"), dict):
        raw = raw["proxy"]
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: settings must be a table (TOML) or an object (JSON)")
    values = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        values[CONFIG_KEYS.get(name, name)] = value
    return values


def upstream_url(upstream: str, *, path: str, query: str = "") -> str:
    """`/v1/x` → `<upstream base>/x`; any other path is appended to the base as it is."""
    relative = path[3:] if path == "/v1" or path.startswith("/v1/") else path
    url = upstream.rstrip("/") + relative
    return f"{url}?{query}" if query else url


def _accept_encoding(value: str | None) -> str:
    """Only encodings the capture can read; the client still decodes what it asked for."""
    wanted = [part.split(";")[0].strip().lower() for part in (value or "").split(",")]
    kept = [enc for enc in DECODABLE_ENCODINGS if enc in wanted]
    return ", ".join(kept) or "identity"


def _date() -> str:
    """A Date header's value: uvicorn's own is off, as it would duplicate the upstream's."""
    return formatdate(usegmt=True)


def _error_response(status: int, code: str, message: str) -> JSONResponse:
    body = {"error": {"type": "proxy_error", "code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers={"date": _date()})


def log_call(record: CallRecord) -> None:
    """One line per call: method, path, status, ids, tokens, latency."""
    logger.info(
        "%s %s -> %s %s request_id=%s chatcmpl=%s tokens=%s/%s latency=%sms",
        record.method,
        urlsplit(record.url).path,
        record.status_code if record.status_code is not None else "-",
        record.status,
        record.upstream_request_id or "-",
        record.chatcmpl_id or "-",
        record.prompt_tokens if record.prompt_tokens is not None else "-",
        record.completion_tokens if record.completion_tokens is not None else "-",
        round(record.latency_ms) if record.latency_ms is not None else "-",
    )


class CaptureProxy:
    """The proxy as a plain ASGI app over a capturing transport.

    Requests go to the transport as they are, not through an httpx2 client: a client adds its
    own default headers (user-agent, accept) and its auth, redirect and cookie steps, none of
    which a pass-through wants, and they cost time on every call."""

    def __init__(
        self,
        *,
        routes: Routes,
        transport: httpx2.AsyncBaseTransport,
        timeout: httpx2.Timeout,
        metrics: Metrics,
        loop_lag: LoopLag | None = None,
    ) -> None:
        self.routes = routes
        self.transport = transport
        self.metrics = metrics
        self.loop_lag = loop_lag
        self._timeout = timeout.as_dict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        why = local_requests.refusal(scope)
        if why is not None:
            # It holds the upstream's key (--key, a route's) for whoever asks: not a web page.
            message = f"the proxy answers only programs on this host; this request came {why}"
            await _error_response(403, "forbidden", message)(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            extra = self.loop_lag.lines() if self.loop_lag is not None else ()
            response = PlainTextResponse(
                self.metrics.render(extra), media_type=CONTENT_TYPE, headers={"date": _date()}
            )
            await response(scope, receive, send)
            return
        content = await Request(scope, receive).body()
        watch = _ClientWatch(receive)
        try:
            upstream = await self._forward(scope, content)
            if isinstance(upstream, Response):
                watch.stop()
                await upstream(scope, receive, send)
                return
            await _relay(upstream, send, watch)
        except asyncio.CancelledError:
            if not watch.only_cancel():
                raise
        finally:
            watch.stop()

    async def _forward(self, scope: Scope, content: bytes) -> httpx2.Response | Response:
        """The upstream's streamed response, or an error response when it cannot be reached."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        upstream, path = self.routes.pick(raw_path, content)
        query = scope.get("query_string", b"").decode("latin-1")
        extensions: dict[str, Any] = {"timeout": self._timeout}
        if upstream.key is not None:
            extensions[FLAGS_EXTENSION] = {"key_override": True}
        outgoing = httpx2.Request(
            scope["method"],
            upstream_url(upstream.base_url, path=path, query=query),
            headers=_headers(scope, upstream.key),
            content=content,
            extensions=extensions,
        )
        try:
            return await self.transport.handle_async_request(outgoing)
        except httpx2.TimeoutException as exc:
            return _error_response(504, "upstream_timeout", f"the upstream timed out: {exc!r}")
        except httpx2.ConnectError as exc:
            return _error_response(502, "upstream_unreachable", f"the upstream failed: {exc!r}")
        except httpx2.HTTPError as exc:  # reached, then it broke (a --force-stream stream cut)
            return _error_response(502, "upstream_error", f"the upstream failed: {exc!r}")


def _headers(scope: Scope, key: str | None) -> list[tuple[bytes, bytes]]:
    """The client's headers (ASGI gives the names in lower case) less the hop-by-hop ones, with
    the upstream's own key, if it has one, in place of the client's."""
    wanted = b""
    headers = []
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            wanted = value
        elif name.decode("latin-1") in HOP_BY_HOP:
            continue
        elif name != b"authorization" or key is None:
            headers.append((name, value))
    headers.append((b"accept-encoding", _accept_encoding(wanted.decode("latin-1")).encode()))
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return headers


async def _relay(upstream: httpx2.Response, send: Send, watch: _ClientWatch) -> None:
    """Upstream bytes to the client as they come; a failure mid-stream ends with an error frame.

    The end of the body goes out before the upstream response is closed: closing it finishes
    the call's record, and the client need not wait for that. A client that goes away cancels
    the relay (see _ClientWatch), which closes the upstream call too.
    """
    headers = [
        (k.encode("latin-1"), v.encode("latin-1"))
        for k, v in upstream.headers.multi_items()
        if k.lower() not in RESPONSE_HOP_BY_HOP
    ]
    if "date" not in upstream.headers:
        headers.append((b"date", _date().encode()))
    start = {"type": "http.response.start", "status": upstream.status_code, "headers": headers}
    try:
        await send(start)
        failure = None
        try:
            # Not aiter_raw(): it closes the response before its loop ends.
            async with contextlib.aclosing(upstream.stream.__aiter__()) as chunks:
                async for chunk in chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx2.HTTPError as exc:
            logger.warning("upstream stream failed mid-way: %r", exc)
            failure = exc
        watch.stop()
        if failure is not None and "content-length" in upstream.headers:
            # The client was promised a length it will not get: ending the body here would be
            # a lie (and an error in uvicorn). Returning leaves uvicorn to close the connection,
            # so the client sees the body cut short, as it was.
            _cut_on_purpose.set(True)
            return
        await send({"type": "http.response.body", "body": _tail(upstream, failure)})
    finally:
        watch.stop()
        await upstream.aclose()


def _tail(upstream: httpx2.Response, failure: httpx2.HTTPError | None) -> bytes:
    """The body's last bytes: an SSE error frame after a failure mid-stream, if the client can
    read one (an event stream that is not compressed)."""
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    if failure is None or not sse or "content-encoding" in upstream.headers:
        return b""
    error = {"type": "proxy_error", "code": "upstream_stream_error"}
    error["message"] = f"the upstream stream failed: {type(failure).__name__}"
    return f"data: {json.dumps({'error': error})}\n\n".encode()


@dataclass
class RunningProxy:
    base_url: str
    server: uvicorn.Server
    task: asyncio.Task[None]
    recorder: Recorder
    routes: Routes

    async def wait(self) -> None:
        await self.task


@contextlib.asynccontextmanager
async def running_proxy(
    settings: Settings, *, dsn: str | None, port: int | None = None
) -> AsyncIterator[RunningProxy]:
    """The proxy listening on 127.0.0.1 (port 0 = a free one) until the block ends."""
    routes = Routes.from_settings(settings)
    if routes.default.key is not None:
        logger.warning(
            "--key is set: every call goes upstream with the configured key instead of the "
            "client's Authorization header"
        )
    catalog = ModelCatalog.load(settings.models_file)
    async with Recorder.open(settings, dsn=dsn) as recorder, LoopLag().running() as loop_lag:
        transport = CapturingTransport(
            Http1Transport(proxies=ProxyRoutes.from_environment()),
            recorder=recorder,
            catalog=catalog,
            source="proxy",
            add_usage=settings.proxy_add_usage,
            on_finish=log_call,
        )
        timeout = httpx2.Timeout(
            connect=CONNECT_TIMEOUT_S, read=settings.proxy_read_timeout_s, write=30.0, pool=30.0
        )
        async with transport:
            app = CaptureProxy(
                routes=routes,
                transport=transport,
                timeout=timeout,
                metrics=recorder.metrics,
                loop_lag=loop_lag,
            )
            config = uvicorn.Config(
                app,
                host="127.0.0.1",
                port=settings.proxy_port if port is None else port,
                lifespan="off",
                log_config=None,
                access_log=False,
                # The upstream's own Date and Server go through; uvicorn's would be second ones.
                server_header=False,
                date_header=False,
            )
            server = uvicorn.Server(config)
            logging.getLogger("uvicorn.error").addFilter(_CUT_FILTER)  # once: a filter is a set
            task = asyncio.create_task(server.serve(), name="capture-proxy")
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    while not server.started:
                        if task.done():
                            await task
                            raise RuntimeError("the proxy did not start")
                        await asyncio.sleep(0.01)
                bound = server.servers[0].sockets[0].getsockname()[1]
                yield RunningProxy(f"http://127.0.0.1:{bound}/v1", server, task, recorder, routes)
            finally:
                server.should_exit = True
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def run_proxy(settings: Settings, *, on_ready: Callable[[str], None]) -> None:
    """Serve until interrupted; `on_ready` gets the base_url clients should use."""
    dsn, _embedded = await resolve_dsn(settings) if settings.capture else (None, None)
    async with running_proxy(settings, dsn=dsn) as proxy:
        upstream = redact_url(settings.proxy_upstream)  # it may hold user:password@
        logger.info("capture proxy for %s at %s", upstream, proxy.base_url)
        for route in proxy.routes.routes:
            logger.info("route %s: %s", route.name, route.describe())
        on_ready(proxy.base_url)
        await proxy.wait()
