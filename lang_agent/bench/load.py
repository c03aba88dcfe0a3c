"""The load generator: `concurrency` closed-loop users on one asyncio loop, each on its own
keep-alive connection (`wire.LoadClient`).

Each user sends a turn, waits for the whole answer, and sends the next at once (no think time).
By default all users start together; with a fixed model latency they then stay in step, and
every turn arrives with all the others (the hardest case for the tail). `ramp_s` starts them
evenly over that many seconds instead, so turns arrive as a steady stream.
A user keeps its thread for `turns_per_thread` turns, then starts a new one, so by default
every turn opens a fresh thread. The cell runs for `duration_s`; turns in flight at the end
are awaited and counted in the latency figures, but throughput counts only the share of
each turn that fell inside the measuring window, so ramp-up, ramp-down and window edges do
not bias it. The window opens after the ramp and a warm-up of min(2 s, duration_s / 5), and
closes `duration_s` after the ramp. The summary also gives the overhead of the turns that
started inside the window alone: in lockstep the first rounds, when every user arrives at
once, make most of a cell's tail.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lang_agent.bench.wire import Connection, LoadClient, WireError
from lang_agent.bench.workload import Front, Job, StreamReader, build_request, completion_text
from lang_agent.bench.workload import turn_text as make_text
from lang_agent.jsonwire import loads

CLIENT_TIMEOUT_S = 120.0


@dataclass
class Sample:
    """One turn as the client saw it. Times are seconds on the host's monotonic clock."""

    kind: str
    user: str  # the turn's user text (unique), to match the simulator's call log
    thread_id: str
    turn: int  # 0 = the thread's first turn
    start: float
    end: float = 0.0
    status: int = 0
    ok: bool = False
    error: str | None = None
    first_text: float | None = None  # seconds after start (streams)
    first_clause: float | None = None
    model_s: float | None = None  # the simulator's own time for this turn's calls
    server_latency: float | None = None  # the turn as the server logged it (turns.latency_ms)
    before_model_s: float | None = None  # turn start → first simulator call
    after_model_s: float | None = None  # last simulator call's end → turn end

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def overhead(self) -> float | None:
        return None if self.model_s is None else self.latency - self.model_s

    @property
    def engine_overhead(self) -> float | None:
        """Overhead inside the server's turn engine: HTTP in and out and the client left out."""
        if self.model_s is None or self.server_latency is None:
            return None
        return self.server_latency - self.model_s


@dataclass
class CellResult:
    front: Front
    stream: bool
    concurrency: int
    window_s: float
    window_start: float  # monotonic; turns that start before it are the warm-up
    samples: list[Sample] = field(default_factory=list)
    completed_in_window: float = 0.0
    calls: list[dict] = field(default_factory=list)  # the simulator's log for this cell


class Counter:
    """Unique turn numbers across a whole run (one marker each)."""

    def __init__(self, start: int = 0) -> None:
        self._numbers = itertools.count(start)

    def next(self) -> int:
        return next(self._numbers)


def make_client(base_url: str) -> LoadClient:
    return LoadClient(base_url, timeout_s=CLIENT_TIMEOUT_S)


async def send(connection: Connection, job: Job, sample: Sample, *, key: str | None) -> None:
    """Send one turn and fill in `sample` (never raises for a failed turn)."""
    path, body, headers = build_request(job, key=key)
    try:
        if job.stream:
            reader = StreamReader(job.front, started=sample.start)
            sample.status = await connection.post(path, body, headers=headers, sink=reader.feed)
            sample.first_text, sample.first_clause = reader.first_text, reader.first_clause
            sample.ok = sample.status == 200 and reader.finished and bool(reader.text)
            if not sample.ok:
                sample.error = reader.error or f"status {sample.status}, stream not finished"
        else:
            answer = bytearray()
            sample.status = await connection.post(path, body, headers=headers, sink=answer.extend)
            ok = sample.status == 200
            sample.ok = ok and bool(completion_text(job.front, loads(answer)))
            if not sample.ok:
                sample.error = f"status {sample.status}: {answer[:200].decode(errors='replace')}"
    except (WireError, TimeoutError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:300]
    sample.end = time.monotonic()


async def run_cell(
    client: LoadClient,
    *,
    front: Front,
    stream: bool,
    concurrency: int,
    duration_s: float,
    counter: Counter,
    run_id: str,
    key: str | None = None,
    turns_per_thread: int = 1,
    tool_every: int = 0,
    ramp_s: float = 0.0,
    max_turns: int | None = None,
    on_done: Callable[[Sample], None] | None = None,
) -> CellResult:
    """Run one (front end, stream, concurrency) cell; `tool_every` = n makes every n-th turn a
    tool turn (0: chat turns only); `ramp_s` spreads the users' starts over that long, before
    the warm-up and the cell's duration; `max_turns` caps the turns per user (for tests)."""
    warmup = min(2.0, duration_s / 5)
    t0 = time.monotonic()
    window_start, deadline = t0 + ramp_s + warmup, t0 + ramp_s + duration_s
    samples: list[Sample] = []
    tag = f"{run_id}-{'s' if stream else 'n'}{front[0]}{concurrency}"

    async def user(index: int) -> None:
        if ramp_s:
            await asyncio.sleep(ramp_s * index / concurrency)
        connection = client.connection()
        for count in itertools.count():
            if time.monotonic() >= deadline or (max_turns is not None and count >= max_turns):
                return
            number = counter.next()
            kind = "tool" if tool_every and number % tool_every == 0 else "chat"
            thread = f"{tag}-u{index}-t{count // turns_per_thread}"
            job = Job(front, stream, thread, make_text(number, kind=kind), kind)
            sample = Sample(
                kind, job.text, job.server_thread, count % turns_per_thread, time.monotonic()
            )
            await send(connection, job, sample, key=key)
            samples.append(sample)
            if on_done is not None:
                on_done(sample)

    await asyncio.gather(*(user(i) for i in range(concurrency)))
    if max_turns is not None:  # a capped cell may end early: measure all of what it ran
        window_start, deadline = t0, max((s.end for s in samples), default=t0)
    return CellResult(
        front,
        stream,
        concurrency,
        max(deadline - window_start, 1e-6),
        window_start,
        samples,
        completed_within(samples, window_start, deadline),
    )


def completed_within(samples: list[Sample], start: float, end: float) -> float:
    """Successful turns done inside [start, end], each counted by the share of its own time
    that fell inside: a smooth count, free of the ±1 turn a window edge otherwise adds."""
    done = 0.0
    for sample in samples:
        if sample.ok and sample.end > sample.start:
            inside = min(sample.end, end) - max(sample.start, start)
            done += max(inside, 0.0) / (sample.end - sample.start)
    return done


def attach_model_time(samples: list[Sample], calls: list[dict]) -> int:
    """Set each sample's `model_s`: the length of the union of its simulator calls' intervals,
    clipped to the turn. Overlapping calls (router and speculative chat, filler and tool)
    count once. Returns how many samples were matched."""
    by_user: dict[str, list[tuple[float, float]]] = {}
    for call in calls:
        by_user.setdefault(call["user"], []).append((call["start"], call["end"]))
    matched = 0
    for sample in samples:
        spans = by_user.get(sample.user[:200])
        if not spans:
            continue
        clipped = sorted(
            (max(a, sample.start), min(b, sample.end)) for a, b in spans if b > sample.start
        )
        busy, cursor = 0.0, sample.start
        for a, b in clipped:
            a = max(a, cursor)
            if b > a:
                busy += b - a
                cursor = b
        sample.model_s = busy
        sample.before_model_s = max(clipped[0][0] - sample.start, 0.0) if clipped else None
        sample.after_model_s = max(sample.end - cursor, 0.0)
        matched += 1
    return matched
