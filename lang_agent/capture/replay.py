"""Replay a captured call offline: a tiny OpenAI-compatible server that answers with the recording.

Every request gets the recorded response. A recorded stream is re-sent event by event at its
original offsets (scaled by `speed`); a cut stream ends where the recording ends, without
`[DONE]`; a client asking for a non-stream answer of a recorded stream gets the merged
completion. A call that failed before any response answers 502 with the recorded error. This
lives beside the simulator (lang_agent/llm/sim.py) and is started the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from lang_agent.capture.merge import split_events

logger = logging.getLogger(__name__)

DROPPED_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReplayCase:
    """What to send back: status, headers, and either timed events or a body."""

    status_code: int | None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[tuple[float, bytes]] = field(default_factory=list)
    body: bytes | None = None
    merged: dict[str, Any] | None = None
    ttfb_ms: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReplayCase:
        headers = {
            k: v for k, v in (row.get("response_header") or {}).items() if k not in DROPPED_HEADERS
        }
        events: list[tuple[float, bytes]] = []
        body: bytes | None = None
        if row.get("response_sse"):
            offsets = list(row.get("event_offsets_ms") or [])
            for i, event in enumerate(split_events(row["response_sse"])):
                at = offsets[i] if i < len(offsets) else (offsets[-1] if offsets else 0.0)
                events.append((float(at), event.encode()))
        elif row.get("response_body") is not None:
            value = row["response_body"]
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            body = text.encode()
        merged = row.get("response_body") if isinstance(row.get("response_body"), dict) else None
        return cls(
            status_code=row.get("status_code"),
            headers=headers,
            events=events,
            body=body,
            merged=merged,
            ttfb_ms=float(row.get("ttfb_ms") or 0.0),
            latency_ms=float(row.get("latency_ms") or 0.0),
            error=row.get("error"),
        )


class ReplayApp:
    """ASGI app answering every request with one ReplayCase."""

    def __init__(self, case: ReplayCase, *, speed: float = 1.0) -> None:
        self.case = case
        self.speed = speed if speed > 0 else 1.0
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        response = await self._answer(Request(scope, receive))
        await response(scope, receive, send)

    async def _pause(self, ms: float) -> None:
        if ms > 0:
            await asyncio.sleep(ms / 1000 / self.speed)

    async def _answer(self, request: Request) -> Response:
        self.served += 1
        case = self.case
        # The recorded Date and Server, if any, are the only ones: uvicorn's own are off.
        headers = {"date": formatdate(usegmt=True), **case.headers}
        try:
            wants_stream = bool(json.loads(await request.body() or b"{}").get("stream"))
        except (ValueError, AttributeError):
            wants_stream = False
        if case.status_code is None:
            await self._pause(case.latency_ms)
            error = {"type": "replay", "code": "recorded_failure", "message": case.error or ""}
            return JSONResponse({"error": error}, status_code=502, headers=headers)
        if case.events and (wants_stream or case.merged is None):
            await self._pause(case.ttfb_ms)
            return StreamingResponse(self._events(), status_code=case.status_code, headers=headers)
        await self._pause(case.latency_ms)
        if case.events:
            headers["content-type"] = "application/json"
            return JSONResponse(case.merged, status_code=case.status_code, headers=headers)
        return Response(case.body or b"", status_code=case.status_code, headers=headers)

    async def _events(self) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        start = loop.time() - self.case.ttfb_ms / 1000 / self.speed
        for offset, event in self.case.events:
            delay = start + offset / 1000 / self.speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield event


class ReplayServer:
    """The replay app under uvicorn on loopback; the same start/stop shape as the Simulator."""

    def __init__(self, case: ReplayCase, *, speed: float = 1.0) -> None:
        self.app = ReplayApp(case, speed=speed)
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        config = uvicorn.Config(
            self.app,
            host=host,
            port=port,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
        )
        self._server = server = uvicorn.Server(config)
        self._task = asyncio.create_task(server.serve(), name="capture-replay")
        async with asyncio.timeout(START_TIMEOUT_S):
            while not server.started:
                if self._task.done():
                    await self._task
                    raise RuntimeError("the replay server did not start")
                await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound}/v1"
        logger.info("replaying a captured call at %s", self.base_url)
        return self.base_url

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._server = self._task = None
