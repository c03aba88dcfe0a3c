"""The built-in model simulator: a deterministic OpenAI-compatible upstream for keyless runs.

A small asyncio HTTP/1.1 server (keep-alive, chunked streams flushed per event) that answers
`POST /v1/chat/completions` in Qwen's compatible-mode wire format, with replies from
`sim_replies` (role detection, tool calls, answers) and `sim_intents` (what a request asks for).
Faults queued with `Simulator.inject` or `POST /_sim/faults` produce real errors, resets, cut
and endless streams. Latency comes from a `SimProfile` (`sim_profile`), which has the numbers.
A `sim_script.Script` (`script=` or `POST /_sim/script`) scripts chosen replies, e.g. mistakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from lang_agent import loop
from lang_agent.llm import sim_replies
from lang_agent.llm.sim_profile import ROLES, Latency, SimProfile
from lang_agent.llm.sim_script import Script
from lang_agent.llm.sim_wire import (
    ChatPlan,
    HttpError,
    Peer,
    Request,
    ResponseHead,
    auth_error,
    error_body,
    fault_error,
    json_object,
    parse_chat,
    read_request,
    reset,
)

logger = logging.getLogger(__name__)

MODELS = tuple(f"sim-{role}" for role in ROLES)
FAULTS = ("429", "500", "timeout", "reset", "cut", "loop", "length", "slow")
TIMEOUT_FAULT_S = 120.0  # a `timeout` fault holds the request this long at most
SLOW_TTFT_MS = 2000.0  # time to first byte of a `slow` fault
CUT_AFTER = 3  # content chunks a `cut` stream sends before it drops the connection
YIELD_EVERY = 64  # unpaced streams yield and look for a departed client this often
HIGH_WATER = 64 * 1024  # buffered bytes at which a stream waits for its client to read
BACKPRESSURE_POLL_S = 0.005
CALL_LOG_SIZE = 200_000  # completed calls kept for GET /_sim/calls (benchmarks read and clear it)


class Simulator:
    """The simulator server. Start it in a running loop; `inject` may be called from any thread."""

    def __init__(
        self,
        *,
        profile: SimProfile | None = None,
        api_key: str | None = None,
        script: Script | None = None,
    ) -> None:
        self.profile = profile or SimProfile()
        self.script = script or Script()  # scripted replies; see sim_script
        self.api_key = api_key
        self.base_url = ""
        self.stats: dict[str, Any] = {
            "requests": 0,
            "calls": dict.fromkeys(ROLES, 0),
            "faults": {},
            "cancelled": 0,
            "in_flight": 0,
            "connections": 0,  # accepted: a client that reuses its connections keeps this low
        }
        self._faults: list[list[Any]] = []  # [fault, role or None, remaining]
        # Each answered chat call's own time, so a benchmark can subtract it from a turn's:
        # role, the latest user text, start and end on the host's monotonic clock (seconds).
        self.calls: deque[dict[str, Any]] = deque(maxlen=CALL_LOG_SIZE)
        self._lock = threading.Lock()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._routes: dict[tuple[str, str], Callable[[Request], dict[str, Any]]] = {
            ("GET", "/v1/models"): self._models,
            ("GET", "/_sim/stats"): lambda _: self.snapshot(),
            ("GET", "/_sim/calls"): lambda _: {"calls": self._drain_calls()},
            ("POST", "/_sim/faults"): self._post_faults,
            ("DELETE", "/_sim/faults"): lambda _: {"queued": self.clear_faults()},
            ("GET", "/_sim/profile"): lambda _: self.profile.as_dict(),
            ("POST", "/_sim/profile"): self._post_profile,
            ("GET", "/_sim/script"): lambda _: self.script.as_dict(),
            ("POST", "/_sim/script"): self._post_script,
            ("DELETE", "/_sim/script"): lambda _: self._post_script(None),
        }

    async def start(self, *, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 = a free port) and return the base URL, ending in /v1."""
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()[1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        shown = f"[{shown}]" if ":" in shown else shown
        self.base_url = f"http://{shown}:{bound}/v1"
        logger.info("model simulator listening on %s", self.base_url)
        if self.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("the simulator on %s has no API key: anyone can reach it", host)
        return self.base_url

    async def stop(self) -> None:
        """Stop listening and end open connections, streams in progress included."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        logger.info("model simulator at %s stopped", self.base_url)

    def inject(self, fault: str, *, count: int = 1, role: str | None = None) -> None:
        """Queue `count` faults for the next requests of `role` (any role if None)."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("count must be a positive integer")
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        with self._lock:
            self._faults.append([fault, role, count])

    def clear_faults(self) -> int:
        """Drop every queued fault; returns how many are left (0)."""
        with self._lock:
            self._faults.clear()
        return 0

    def snapshot(self) -> dict[str, Any]:
        """The stats counters plus the number of faults still queued."""
        with self._lock:
            queued = sum(entry[2] for entry in self._faults)
        stats = self.stats
        return {
            **stats,
            "calls": dict(stats["calls"]),
            "faults": dict(stats["faults"]),
            "queued_faults": queued,
        }

    def _drain_calls(self) -> list[dict[str, Any]]:
        """The call log since the last drain, emptied."""
        drained = list(self.calls)
        self.calls.clear()
        return drained

    def _take_fault(self, role: str) -> str | None:
        with self._lock:
            for entry in self._faults:
                if entry[1] in (None, role):
                    entry[2] -= 1
                    if entry[2] == 0:
                        self._faults.remove(entry)
                    faults = self.stats["faults"]
                    faults[entry[0]] = faults.get(entry[0], 0) + 1
                    return str(entry[0])
        return None

    # -- HTTP ------------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)  # type: ignore[arg-type]
        self.stats["connections"] += 1
        buf = bytearray()
        try:
            while True:
                try:
                    request = await read_request(reader, buf, writer=writer)
                except HttpError as exc:
                    head = ResponseHead(exc.status, str(uuid.uuid4()), time.monotonic())
                    writer.write(head.json(error_body(exc, rid=head.rid), keep=False))
                    await writer.drain()
                    break
                if request is None or not await self._respond(request, reader, writer, buf):
                    break
        except (ConnectionError, TimeoutError):
            pass  # the client went away or idled out; nothing to answer
        except asyncio.CancelledError:
            pass  # stop() ends connections; Python 3.11's stream callback would log a cancel
        except Exception:  # a simulator bug must not take the server down: log, drop this one
            logger.exception("simulator connection failed")
        finally:
            if task is not None:
                self._tasks.discard(task)  # type: ignore[arg-type]
            writer.close()

    def _authorised(self, header: str) -> bool:
        expected = f"Bearer {self.api_key}".encode()
        return hmac.compare_digest(header.encode("utf-8", "replace"), expected)

    async def _respond(
        self,
        request: Request,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buf: bytearray,
    ) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        self.stats["requests"] += 1
        head = ResponseHead(200, str(uuid.uuid4()), request.started)
        keep = request.keep_alive
        try:
            if self.api_key is not None and not self._authorised(
                request.headers.get("authorization", "")
            ):
                raise auth_error()
            if (request.method, request.path) == ("POST", "/v1/chat/completions"):
                return await self._completion(request, head, reader, writer, buf)
            handler = self._routes.get((request.method, request.path))
            if handler is None:
                paths = {path for _, path in self._routes} | {"/v1/chat/completions"}
                known = request.path in paths
                status, what = (405, "Method not allowed") if known else (404, "Not found")
                raise HttpError(status, f"{what}: {request.method} {request.path}")
            payload = handler(request)
        except HttpError as exc:
            writer.write(
                replace(head, status=exc.status).json(error_body(exc, rid=head.rid), keep=keep)
            )
        else:
            writer.write(head.json(payload, keep=keep))
        await writer.drain()
        return keep

    def _models(self, _: Request) -> dict[str, Any]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "lang-agent"} for m in MODELS
        ]
        return {"object": "list", "data": data}

    def _post_faults(self, request: Request) -> dict[str, Any]:
        body = json_object(request.body)
        try:
            self.inject(str(body.get("fault")), count=body.get("count", 1), role=body.get("role"))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        return {"queued": self.snapshot()["queued_faults"]}

    def _post_profile(self, request: Request) -> dict[str, Any]:
        try:
            self.profile = self.profile.updated(json_object(request.body))
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        return self.profile.as_dict()

    def _post_script(self, request: Request | None) -> dict[str, Any]:
        try:
            self.script = Script.parse(json_object(request.body) if request else [])
        except ValueError as exc:
            raise HttpError(400, str(exc)) from exc
        return self.script.as_dict()

    async def _completion(
        self,
        request: Request,
        head: ResponseHead,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        buf: bytearray,
    ) -> bool:
        body = parse_chat(request.body)
        role = sim_replies.detect_role(body)
        self.stats["calls"][role] += 1
        fault = self._take_fault(role)
        if fault in ("429", "500"):
            raise fault_error(fault)
        if fault == "reset":
            reset(writer)
            return False
        latency: Latency = getattr(self.profile, role)
        if fault == "slow":
            latency = replace(latency, ttft_ms=SLOW_TTFT_MS)
        self.stats["in_flight"] += 1
        peer = Peer(reader, buf)
        try:
            if fault == "timeout":
                if await peer.wait(TIMEOUT_FAULT_S):
                    self.stats["cancelled"] += 1
                return False
            plan = ChatPlan.build(
                body,
                self.script.reply(body, role=role) or sim_replies.reply_for(body, role),
                rid=head.rid,
                fault=fault,
                role=role,
            )
            done = await self._deliver(
                plan, head=head, latency=latency, peer=peer, writer=writer, keep=request.keep_alive
            )
            return done and request.keep_alive
        except ConnectionError:
            self.stats["cancelled"] += 1
            return False
        finally:
            self.stats["in_flight"] -= 1
            await peer.close()
            user = sim_replies.read_conversation(body["messages"]).user_text[:200]
            end = time.monotonic()
            self.calls.append({"role": role, "user": user, "start": request.started, "end": end})

    async def _deliver(
        self,
        plan: ChatPlan,
        *,
        head: ResponseHead,
        latency: Latency,
        peer: Peer,
        writer: asyncio.StreamWriter,
        keep: bool,
    ) -> bool:
        """Send the planned answer at the profile's pace; False if the connection must close.
        Raises ConnectionError when the client leaves."""
        interval = 1.0 / latency.tokens_per_s if latency.tokens_per_s > 0 else 0.0
        if not plan.stream:
            pause = latency.ttft_ms / 1000 + interval * plan.token_count()
            if pause and await peer.wait(pause):
                raise ConnectionResetError("client left")
            data = plan.completion_json()
            if plan.fault == "cut":
                writer.write(head.raw(len(data), keep=False) + data[: len(data) // 2])
                await writer.drain()
                return False
            writer.write(head.json_bytes(data, keep=keep))
            await writer.drain()
            return True
        if latency.ttft_ms and await peer.wait(latency.ttft_ms / 1000):
            raise ConnectionResetError("client left")
        writer.write(head.stream_start(keep=keep) + plan.role_event())
        cut = plan.fault == "cut"
        pacer = Pacer(writer.transport, peer, interval=interval, limit=CUT_AFTER if cut else None)
        await pacer.send(plan.token_events())
        if cut:  # no finish chunk, no [DONE], no terminating chunk
            await writer.drain()
            return False
        writer.write(plan.tail_events())
        await writer.drain()
        return True


class Pacer:
    """Writes a stream's events from event-loop callbacks, one per `interval` seconds (or
    YIELD_EVERY at a time when unpaced), and stops after `limit` events if one is given.

    Callbacks rather than a task that sleeps between events: a paced event then costs one
    timer instead of a timer, a future and a task wake-up. The simulator shares the machine
    with the server a benchmark measures, and a 40-token answer is 40 events.
    """

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        peer: Peer,
        *,
        interval: float,
        limit: int | None = None,
    ) -> None:
        self._transport, self._peer = transport, peer
        self._interval, self._limit = interval, limit
        self._loop = asyncio.get_running_loop()
        self._done: asyncio.Future[None] = self._loop.create_future()
        self._handle: asyncio.Handle | None = None
        self._events: Iterator[bytes] = iter(())
        self._start = 0.0
        self._sent = 0

    async def send(self, events: Iterator[bytes]) -> None:
        """Raises ConnectionResetError when the client leaves."""
        self._events, self._start = events, self._loop.time()
        self._step()
        try:
            await self._done
        finally:
            if self._handle is not None:
                self._handle.cancel()

    def _step(self) -> None:
        self._handle = None
        if self._transport.is_closing() or self._peer.left():
            self._done.set_exception(ConnectionResetError("client left"))
            return
        if self._transport.get_write_buffer_size() > HIGH_WATER:
            # The client is not reading: wait for it instead of buffering without bound.
            self._handle = self._loop.call_later(BACKPRESSURE_POLL_S, self._step)
            return
        for _ in range(1 if self._interval else YIELD_EVERY):
            event = next(self._events, None)
            if event is None:
                self._done.set_result(None)
                return
            self._transport.write(event)
            self._sent += 1
            if self._sent == self._limit:
                self._done.set_result(None)
                return
        if self._interval:
            when = self._start + self._sent * self._interval
            self._handle = self._loop.call_at(when, self._step)
        else:
            self._handle = self._loop.call_soon(self._step)


def run(
    *,
    host: str = "127.0.0.1",
    port: int = 8599,
    profile: str = "fast",
    api_key: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator until interrupted; `on_ready` gets the base URL once it listens."""

    async def serve() -> None:
        simulator = Simulator(profile=SimProfile.named(profile), api_key=api_key)
        url = await simulator.start(host=host, port=port)
        loop.freeze_start_up()  # a full collection would hold every stream's next chunk
        if on_ready is not None:
            on_ready(url)
        try:
            await asyncio.Event().wait()
        finally:
            await simulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        loop.run(serve())
