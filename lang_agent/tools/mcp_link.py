"""One persistent MCP session per server: connect, list tools, call, ping, reconnect with backoff.

A `ServerLink` owns a background task that opens the session with langchain-mcp-adapters'
`create_session` (stdio spawns the process once; HTTP keeps one MCP session), lists the tools
and then watches the session with pings. Every tool call reuses that session. When a call or a
ping finds the session broken, the task closes it (ending a stdio process) and reconnects with
exponential backoff; a server that is down at start-up is retried the same way. The task
enters and leaves the session's context itself, as anyio requires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import anyio
import httpx
from langchain_mcp_adapters.sessions import create_session
from mcp import ClientSession, types
from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT
from mcp.shared.exceptions import McpError

from lang_agent.llm.proxies import is_loopback
from lang_agent.tools.mcp_config import HTTP_TRANSPORTS, ServerConfig

logger = logging.getLogger(__name__)

State = Literal["connecting", "up", "down", "closed"]
_BROKEN = (
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    OSError,
    httpx.HTTPError,
)
_MAX_PAGES = 100
CALL_PING_S = 1.0  # while a call waits, the server is pinged this often to notice its death
# What the mcp library answers a request when an HTTP server replies 404 to it: the server
# no longer knows our session (it restarted), so it never ran the request.
SESSION_TERMINATED = (32600, "Session terminated")


class CallFailed(Exception):
    """A tool call that produced no result; the message is meant for the model."""


class _SessionForgotten(Exception):
    """The server answered a call with 404: it restarted and forgot the session, unrun."""

    def __init__(self, session: ClientSession) -> None:
        super().__init__("session forgotten")
        self.session = session


def describe(exc: BaseException) -> str:
    """A short, single-line account of an error, looking inside exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, McpError):
        return exc.error.message
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def direct_client(
    headers: dict[str, str] | None = None,
    timeout: httpx.Timeout | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.AsyncClient:
    """The mcp library's HTTP client, for a server on this host, without the environment's
    proxies: httpx would send a loopback URL to HTTPS_PROXY unless NO_PROXY names it."""
    return httpx.AsyncClient(
        headers=headers,
        timeout=timeout or httpx.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
        auth=auth,
        trust_env=False,
    )


class ServerLink:
    """The live connection to one MCP server, and what we last learned from it."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        ping_s: float = 15.0,
        on_tools: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.connect_timeout_s = connect_timeout_s
        self.ping_s = ping_s
        self.on_tools = on_tools  # called with no arguments when the tool list changes
        self.state: State = "connecting"
        self.tools: list[types.Tool] = []
        self.last_error: str | None = None
        self.since = time.time()
        self.failures = 0  # consecutive failed or lost sessions
        self._session: ClientSession | None = None
        self._lost = asyncio.Event()  # the current session is broken
        self._up = asyncio.Event()  # state is "up": a session is open and its tools listed
        self._wake = asyncio.Event()  # wakes the watcher: close, loss, probe or list change
        self._relist = False
        self._closing = False
        self._settled = asyncio.Event()  # the first connection attempt has finished
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp-link-{self.name}")

    async def wait_settled(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._settled.wait(), timeout_s)

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """End the session (and a stdio process); cancel the task if it does not finish."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and self.state == "connecting":
            task.cancel()  # nothing to end gracefully yet; a connect may take its full timeout
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=timeout_s)
            if not done:
                logger.warning("MCP server %s did not close within %s s", self.name, timeout_s)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._set_state("closed")

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "transport": self.config.transport,
            "state": self.state,
            "tools": len(self.tools),
            "last_error": self.last_error,
            "failures": self.failures,
            "since": self.since,
        }

    # --- calls

    async def call(self, name: str, arguments: dict[str, Any], *, timeout_s: float) -> Any:
        """`tools/call` on the live session; CallFailed (for the model) on any failure.

        A server that restarted since the last call (an HTTP bridge redeployed) forgot our
        session and refuses the call unrun: the call waits for a new session and is sent once
        more, within the same timeout, where it failed though the device was there."""
        deadline = time.monotonic() + timeout_s
        try:
            return await self._call_once(name, arguments, timeout_s=timeout_s)
        except _SessionForgotten as forgotten:
            self._forgotten(forgotten.session)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self._up.wait()
        try:
            return await self._call_once(
                name, arguments, timeout_s=max(0.0, deadline - time.monotonic())
            )
        except _SessionForgotten as forgotten:
            self._forgotten(forgotten.session)
            raise CallFailed(f"the connection to {self.name} was lost") from None

    def _forgotten(self, session: ClientSession) -> None:
        if session is self._session:  # not a newer session the watcher has opened since
            self._broken("the server restarted and forgot the session")

    async def _call_once(self, name: str, arguments: dict[str, Any], *, timeout_s: float) -> Any:
        session, lost = self._session, self._lost
        if session is None or self.state != "up":
            reason = f": {self.last_error}" if self.last_error else ""
            raise CallFailed(f"the device server {self.name} is not connected{reason}")
        call = asyncio.ensure_future(session.call_tool(name, arguments))
        watch = asyncio.ensure_future(lost.wait())
        pulse = asyncio.ensure_future(self._pulse(session))
        try:
            done, _ = await asyncio.wait(
                {call, watch}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (call, watch, pulse):
                task.cancel()
            await asyncio.gather(call, watch, pulse, return_exceptions=True)
        if call in done and not call.cancelled():
            exc = call.exception()
            if exc is None:
                return call.result()
            if isinstance(exc, McpError) and (exc.error.code, exc.error.message) == (
                SESSION_TERMINATED
            ):
                raise _SessionForgotten(session) from exc
            if isinstance(exc, McpError) and exc.error.code != types.CONNECTION_CLOSED:
                raise CallFailed(exc.error.message or "the device refused the call")
            if isinstance(exc, (McpError, *_BROKEN)):
                self._broken(describe(exc))
                raise CallFailed(f"the connection to {self.name} was lost") from exc
            logger.warning("MCP call %s on %s failed: %s", name, self.name, describe(exc))
            raise CallFailed(f"the call failed ({describe(exc)})") from exc
        if watch in done:
            raise CallFailed(f"the connection to {self.name} was lost during the call")
        self._wake.set()  # a silent server may be dead: ping it now
        raise CallFailed(f"the device did not answer within {timeout_s:g} s")

    async def _pulse(self, session: ClientSession) -> None:
        """Ping while a call waits. A server killed mid-call leaves the call's own request
        unanswered (the HTTP transport only logs the lost stream), so without this the call
        waited for the periodic ping or its whole timeout."""
        while True:
            await asyncio.sleep(CALL_PING_S)
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await session.send_ping()
            except Exception as exc:  # noqa: BLE001 - a failed ping means the session is gone
                self._broken(f"ping failed during a call: {describe(exc)}")
                return

    def _broken(self, reason: str) -> None:
        if not self._lost.is_set():
            logger.warning("MCP server %s: session lost (%s)", self.name, reason)
            self.last_error = reason
            self._lost.set()
            self._wake.set()
            self._set_state("down")

    # --- the background task

    async def _run(self) -> None:
        while not self._closing:
            self._set_state("connecting")
            try:
                reason = await self._session_once()
            except Exception as exc:  # noqa: BLE001 - any failure of a server means: retry
                reason = describe(exc)
            finally:
                self._session = None
                self._set_state("down")
                self._lost.set()  # wakes calls still waiting on the old session
                self._settled.set()
            if self._closing:
                break
            self.last_error = reason
            self.failures += 1
            delay = min(self.retry_max_s, self.retry_s * 2 ** (self.failures - 1))
            log = logger.warning if self.failures == 1 else logger.info  # no retry spam
            self._set_state("down")
            log("MCP server %s is down (%s); retry in %.1f s", self.name, reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_wake(), delay)

    async def _session_once(self) -> str:
        """Open one session, publish its tools, watch it; returns why it ended."""
        connection = dict(self.config.connection)
        kwargs = dict(connection.get("session_kwargs") or {})
        kwargs["message_handler"] = self._on_message
        connection["session_kwargs"] = kwargs
        if self.config.transport in ("sse", *HTTP_TRANSPORTS) and is_loopback(
            httpx.URL(connection["url"]).host
        ):
            connection["httpx_client_factory"] = direct_client
        async with contextlib.AsyncExitStack() as stack:
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    session = await stack.enter_async_context(create_session(connection))
                    await session.initialize()
                    tools = await self._list(session)
            except TimeoutError:
                return f"no answer within {self.connect_timeout_s:g} s while connecting"
            self._lost = asyncio.Event()
            self._session = session
            self._publish(tools)
            self.failures = 0
            self.last_error = None
            self._set_state("up")
            self._settled.set()
            logger.info("MCP server %s is up with %d tools", self.name, len(tools))
            return await self._watch(session)

    async def _watch(self, session: ClientSession) -> str:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait_wake(), self.ping_s)
            if self._closing:
                return "closed"
            if self._lost.is_set():
                return self.last_error or "session lost"
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    await session.send_ping()
                    if self._relist:
                        self._relist = False
                        self._publish(await self._list(session))
            except Exception as exc:  # noqa: BLE001 - a failed ping means the session is gone
                return f"ping failed: {describe(exc)}"

    async def _wait_wake(self) -> None:
        await self._wake.wait()
        self._wake.clear()

    async def _list(self, session: ClientSession) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):
            page = await session.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.nextCursor
            if not cursor:
                return tools
        raise RuntimeError(f"tools/list did not end after {_MAX_PAGES} pages")

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ToolListChangedNotification
        ):
            self._relist = True
            self._wake.set()

    def _publish(self, tools: list[types.Tool]) -> None:
        self.tools = tools
        if self.on_tools is not None:
            self.on_tools()

    def _set_state(self, state: State) -> None:
        if state != self.state:
            self.state = state
            self.since = time.time()
        if state == "up":
            self._up.set()
        else:
            self._up.clear()
