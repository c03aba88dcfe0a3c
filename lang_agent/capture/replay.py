"""Replay a captured call offline: a small OpenAI-compatible server that answers with the recording.

Every request gets the recorded response. A recorded stream is re-sent event by event at its
original offsets (scaled by `speed`); a stream that ended without `[DONE]` ends where the
recording ends, without it; a client asking for a non-stream answer of a recorded stream gets
the merged completion. A body the upstream broke off mid-way (the connection dropped) breaks off
where the recording does, the connection dropped, so the client meets the failure its original
met. A call that failed before any response answers 502 with the recorded error. A
`Fault` changes the answer for the first requests (or all): a cut connection, no `[DONE]`, a
stall, or the provider's own 429 or 500. This lives beside the simulator
(lang_agent/llm/sim.py), on asyncio streams as it is, so a cut really drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from lang_agent.capture.faults import Fault, provider_error
from lang_agent.capture.merge import event_data, parse_chunk, split_events, usage_only
from lang_agent.capture.stream import broken_off
from lang_agent.llm.sim_wire import HttpError, Peer, Request, dumps, error_body, frame, read_request

logger = logging.getLogger(__name__)

DROPPED_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


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
    url: str | None = None  # where the call went: a fault's error takes that provider's shape
    broken: bool = False  # the upstream broke the body off: so does the replay, where it did

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> ReplayCase:
        """The recording of a captured call; ValueError, saying why, for one that cannot be
        served as it was (still in flight, or its response stored cut)."""
        name = f"call {row.get('id')}"
        if row.get("status") == "pending":
            raise ValueError(f"{name} is still in flight: there is nothing to replay yet")
        if (row.get("flags") or {}).get("response_truncated"):
            raise ValueError(
                f"{name}'s response was stored cut at CAPTURE_MAX_BODY_BYTES: "
                "it cannot be replayed whole"
            )
        headers = {
            k: v for k, v in (row.get("response_header") or {}).items() if k not in DROPPED_HEADERS
        }
        events: list[tuple[float, bytes]] = []
        body: bytes | None = None
        if row.get("response_sse"):
            offsets = list(row.get("event_offsets_ms") or [])
            # The usage chunk the proxy asked for on the client's behalf never reached it.
            added = bool((row.get("flags") or {}).get("usage_added"))
            for i, event in enumerate(split_events(row["response_sse"])):
                if added and usage_only(parse_chunk(event_data(event) or "")):
                    continue
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
            url=row.get("url"),
            broken=broken_off(row.get("status"), row.get("error")),
        )


def _head(status: int, headers: dict[str, str], *, length: int | None, keep: bool) -> bytes:
    """A response head: the given headers, then the framing and connection lines of ours."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"]
    # A stored header is data: one with a line break in it would write headers of its own.
    lines += [
        f"{k}: {v}" for k, v in headers.items() if "\n" not in f"{k}{v}" and "\r" not in f"{k}{v}"
    ]
    lines.append(
        f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    )
    lines.append(f"connection: {'keep-alive' if keep else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def _as_stream(case: ReplayCase) -> list[tuple[float, bytes]]:
    """A whole chat completion as the events of a stream: each choice's message as one delta
    (tool calls numbered, as streams number them), then [DONE], all at the answer's end."""
    completion = case.merged
    if not (case.status_code == 200 and completion and isinstance(completion.get("choices"), list)):
        return []
    choices = []
    for position, choice in enumerate(completion["choices"]):
        if not isinstance(choice, dict):
            continue
        delta = dict(choice.get("message") or {})
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [
                {**call, "index": i} if isinstance(call, dict) else call
                for i, call in enumerate(delta["tool_calls"])
            ]
        index = choice.get("index", position)
        choices.append(
            {"index": index, "delta": delta, "finish_reason": choice.get("finish_reason")}
        )
    chunk = {
        **{k: completion[k] for k in ("id", "created", "model") if k in completion},
        "object": "chat.completion.chunk",
        "choices": choices,
    }
    at = case.latency_ms
    return [(at, b"data: " + dumps(chunk) + b"\n\n"), (at, b"data: [DONE]\n\n")]


def _wants_stream(body: bytes) -> bool:
    try:
        return bool(json.loads(body or b"{}").get("stream"))
    except (ValueError, AttributeError):
        return False


class ReplayServer:
    """Answers every request on a loopback port with one ReplayCase. `fault` applies to the
    first `fault_count` requests (all of them if None), so a client's retry can be seen to
    get the recording."""

    def __init__(
        self,
        case: ReplayCase,
        *,
        speed: float = 1.0,
        fault: Fault | None = None,
        fault_count: int | None = None,
    ) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a finite number above 0, not {speed}")
        self.case = case
        self.speed = speed
        self.fault = fault
        self.served = 0
        self.base_url = ""
        self._faults_left = fault_count
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopped = asyncio.Event()

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        self.base_url = f"http://{host}:{bound}/v1"
        logger.info("replaying a captured call at %s", self.base_url)
        return self.base_url

    async def wait(self) -> None:
        """Until stop()."""
        await self._stopped.wait()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await server.wait_closed()
        self._stopped.set()

    def _take_fault(self, request: Request) -> Fault | None:
        """The fault for this request, if it gets one: a POST (a probe, GET /models say, takes
        none); of a call that failed before any answer only a 429 or 500, which replace the
        recorded failure's 502."""
        if self.fault is None or self._faults_left == 0 or request.method != "POST":
            return None
        if self.case.status_code is None and self.fault.kind not in ("429", "500"):
            return None
        if self._faults_left is not None:
            self._faults_left -= 1
        return self.fault

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        buf = bytearray()
        try:
            while (request := await read_request(reader, buf, writer=writer)) is not None:
                peer = Peer(reader, buf)
                try:
                    if not await self._answer(request, peer, writer):
                        break
                finally:
                    await peer.close()
        except HttpError as exc:
            body = dumps(error_body(exc, rid="replay"))
            headers = {"content-type": "application/json"}
            writer.write(_head(exc.status, headers, length=len(body), keep=False) + body)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            pass  # the client left, idled out, or stop() ended the connection
        except Exception:  # a replay bug must not end the server: log it, drop this connection
            logger.exception("replay connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _pause(self, peer: Peer, ms: float) -> bool:
        """Wait `ms` of the recording's time; True if the client left meanwhile."""
        return ms > 0 and await peer.wait(ms / 1000 / self.speed)

    async def _answer(self, request: Request, peer: Peer, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        self.served += 1
        case, fault, keep = self.case, self._take_fault(request), request.keep_alive
        # The recorded Date and Server, if any, are the only ones.
        headers = {"date": formatdate(usegmt=True), **case.headers}
        if request.method == "HEAD":  # the recorded head, and no body: the client reads none
            writer.write(_head(case.status_code or 502, headers, length=0, keep=keep))
            await writer.drain()
            return keep
        wants_stream = _wants_stream(request.body)
        if wants_stream and not case.events and (events := _as_stream(case)):
            # A whole answer asked for as a stream: its message as one chunk, at its end.
            if await self._pause(peer, case.ttfb_ms):
                return False
            headers["content-type"] = "text/event-stream"
            return await self._stream(writer, peer, headers, fault, events, keep=keep)
        if fault is not None and fault.kind in ("429", "500"):
            if await self._pause(peer, case.ttfb_ms):
                return False
            status = int(fault.kind)
            body = dumps(provider_error(case.url, status))
            return await self._send_json(writer, status, body, keep=keep)
        if case.status_code is None:
            if await self._pause(peer, case.latency_ms):
                return False
            error = {"type": "replay", "code": "recorded_failure", "message": case.error or ""}
            return await self._send_json(writer, 502, dumps({"error": error}), keep=keep)
        if case.events and (wants_stream or case.merged is None):
            if await self._pause(peer, case.ttfb_ms):
                return False
            return await self._stream(writer, peer, headers, fault, case.events, keep=keep)
        if await self._pause(peer, case.latency_ms):
            return False
        body = case.body or b""
        if case.events:
            body = dumps(case.merged)
            headers["content-type"] = "application/json"
        if fault is not None and fault.kind == "stall" and await peer.wait(fault.amount):
            return False
        if case.broken:  # the recorded body broke off: the client sees it end too soon
            head = _head(case.status_code, headers, length=None, keep=False)
            writer.write(head + (frame(body) if body else b""))  # an empty chunk would end it
            await writer.drain()
            return False
        head = _head(case.status_code, headers, length=len(body), keep=keep)
        if fault is not None and fault.kind == "cut":
            writer.write(head + body[: int(fault.amount)])
            await writer.drain()
            return False
        writer.write(head + body)
        await writer.drain()
        return keep

    async def _send_json(
        self, writer: asyncio.StreamWriter, status: int, body: bytes, *, keep: bool
    ) -> bool:
        headers = {"date": formatdate(usegmt=True), "content-type": "application/json"}
        writer.write(_head(status, headers, length=len(body), keep=keep) + body)
        await writer.drain()
        return keep

    async def _stream(
        self,
        writer: asyncio.StreamWriter,
        peer: Peer,
        headers: dict[str, str],
        fault: Fault | None,
        events: list[tuple[float, bytes]],
        *,
        keep: bool,
    ) -> bool:
        """Events at their offsets (after the first byte's wait, already spent)."""
        kind = fault.kind if fault is not None else None
        amount = fault.amount if fault is not None else 0.0
        writer.write(_head(self.case.status_code or 200, headers, length=None, keep=keep))
        loop = asyncio.get_running_loop()
        start = loop.time() - self.case.ttfb_ms / 1000 / self.speed
        sent = 0
        for offset, event in events:
            if kind == "no-done" and event_data(event) == "[DONE]":
                continue
            if kind == "cut" and sent == amount:
                break
            delay = start + offset / 1000 / self.speed - loop.time()
            if delay > 0 and await peer.wait(delay):
                return False
            writer.write(frame(event))
            await writer.drain()
            sent += 1
            if kind == "stall" and sent == 1:
                if await peer.wait(amount):
                    return False
                start += amount  # the rest keeps its pace after the stall
        if kind == "cut" or self.case.broken:  # no terminating chunk: the body ends too soon
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep
