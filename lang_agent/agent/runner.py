"""run_turn: one user turn through the graph, under the thread's lock, as a stream of TurnEvents."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import asdict
from datetime import UTC, datetime

from langchain_core.messages import AnyMessage
from langgraph.checkpoint.base import CheckpointTuple
from langgraph.graph.state import CompiledStateGraph

from lang_agent.agent.events import AnswerDelta, Done, Failed, TurnEvent, TurnRequest
from lang_agent.agent.graph import build_graph
from lang_agent.agent.history import client_dialogue
from lang_agent.agent.nodes import Routing
from lang_agent.agent.starts import Start, Starts
from lang_agent.agent.state import AgentDeps, LogEntry, Profile, TurnContext
from lang_agent.agent.threads import ThreadLocks
from lang_agent.checkpointer import PooledSaver
from lang_agent.conversations import ConversationLog, TurnRecord
from lang_agent.errors import (
    LangAgentError,
    Preempted,
    ShuttingDown,
    TurnTimeout,
    store_errors,
)
from lang_agent.llm.context import calling

logger = logging.getLogger(__name__)


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


# Where a voice client may start speaking: text up to one of these is a clause it can say.
CLAUSE_MARKS = frozenset("，,。.；;！!？?：:、…\n")


async def _gather(
    first: AnswerDelta, events: asyncio.Queue[TurnEvent], *, hold_s: float
) -> tuple[AnswerDelta, TurnEvent | None]:
    """`first` and the answer deltas behind it, as one, and the event after them.

    The deltas already waiting always join. While the text holds no clause mark, so do those
    that arrive within `hold_s`: a frame per model chunk makes the front end, the socket and
    the client pay per chunk, and a voice client speaks whole clauses, so text short of a
    clause's end is worth nothing to it yet. A clause mark, any other event, or the end of
    the wait sends what there is.
    """
    texts = [first.text]
    clause = not CLAUSE_MARKS.isdisjoint(first.text)
    deadline = asyncio.get_running_loop().time() + hold_s
    while True:
        if not events.empty():
            event = events.get_nowait()
        elif clause or hold_s <= 0:
            break
        else:
            try:
                async with asyncio.timeout_at(deadline):
                    event = await events.get()
            except TimeoutError:
                break
        if not isinstance(event, AnswerDelta):
            return AnswerDelta("".join(texts)), event
        texts.append(event.text)
        clause = clause or not CLAUSE_MARKS.isdisjoint(event.text)
    return AnswerDelta("".join(texts)), None


def _unread_end(events: asyncio.Queue[TurnEvent], after: TurnEvent | None) -> Done | Failed | None:
    """The Done or Failed that ended a turn its client no longer read: held back as `after`
    by `_gather`, or still queued."""
    unread = [after] if after is not None else []
    while not events.empty():
        unread.append(events.get_nowait())
    return next((e for e in reversed(unread) if isinstance(e, Done | Failed)), None)


def _stored(latest: CheckpointTuple | None, channel: str) -> list[AnyMessage]:
    return latest.checkpoint["channel_values"].get(channel, []) if latest else []


def _entries(ctx: TurnContext, *, answered: bool, fallback: str | None) -> list[LogEntry]:
    """The turn's log entries; for a turn that ended first (a hang-up, a failure mid-answer),
    also the part of its answer that went out, which the client saw (or the speaker said),
    and the fallback said after it."""
    entries = list(ctx.log)
    last = entries[-1] if entries else None
    logged = (
        last is not None and last.role == "assistant" and not (last.tool_calls or last.is_filler)
    )
    if not answered and ctx.said and not logged:
        entries.append(LogEntry("assistant", "".join(ctx.said)))
    if fallback:
        entries.append(LogEntry("assistant", fallback, is_fallback=True))
    return entries


# Failures told in words even before the turn said anything: the model or the store let it
# down. A refused request (bad input, a busy thread) is only reported.
SPOKEN_FAILURES = frozenset({"upstream_error", "upstream_status", "upstream_timeout",
                             "turn_timeout", "store_unavailable", "shutting_down",
                             "internal_error"})  # fmt: skip


def _failed(ctx: TurnContext, code: str, message: str) -> Failed:
    """The turn's Failed event, with the request's fallback if this failure is to be said:
    once the client has started speaking, any failure ends in words, not silence; but a turn
    the user interrupted (a barge-in) ends without another word."""
    fallback = ctx.request.fallback
    said = ctx.first_text_at is not None
    if code == Preempted.code or not (code in SPOKEN_FAILURES or said):
        fallback = None
    return Failed(code, message, ctx.total_usage(), fallback)


class Agent:
    """The turn engine. Front ends call `run_turn` and translate its events."""

    def __init__(
        self,
        deps: AgentDeps,
        *,
        checkpointer: PooledSaver,
        locks: ThreadLocks,
        log: ConversationLog,
        profiles: dict[str, Profile],
    ) -> None:
        self.deps = deps
        self.checkpointer = checkpointer
        self.locks = locks
        self.log = log
        self.profiles = profiles
        self._memory_graph = build_graph(checkpointer=checkpointer)
        self._stateless_graph = build_graph()
        self._running: set[asyncio.Task[None]] = set()
        self._starts = Starts()
        self._stopping = False
        # Ended turns by (front end, outcome): "ok", or the error code the log records.
        self.finished: Counter[tuple[str, str]] = Counter()

    async def close(self, *, timeout_s: float = 5.0) -> None:
        """At shutdown: cancel the turns still running and wait for their clean-up (thread
        lease, log record), so the log and the pool close after them, not under them."""
        running = list(self._running)
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running, timeout=timeout_s)

    async def stop_turns(self, *, timeout_s: float = 5.0) -> None:
        """Near the end of the server's grace period: end each turn still running with
        Failed("shutting_down"), which its client reads (an error frame; the spoken fallback
        on DashScope), where the server's cancel would cut its stream without an end and the
        log would blame the client. Memory stays as it was, as for any failed turn."""
        self._stopping = True  # read by `_drive` as its turn is cancelled
        await self.close(timeout_s=timeout_s)

    @property
    def turns_running(self) -> int:
        return len(self._running)

    def profile(self, name: str | None) -> Profile:
        default = self.profiles.get(self.deps.settings.default_profile, Profile())
        return self.profiles.get(name or "", default)

    async def forget(self, thread_id: str) -> bool:
        """Delete a thread's memory (exact id). False if there was none."""
        config = {"configurable": {"thread_id": thread_id}}
        with store_errors():
            async with self.locks.hold(thread_id):
                if await self.checkpointer.aget_tuple(config) is None:
                    return False
                await self.checkpointer.adelete_thread(thread_id)
        return True

    async def run_turn(self, request: TurnRequest) -> AsyncIterator[TurnEvent]:
        """Yield the turn's events; the last one is always Done or Failed. Closing the
        iterator early (a client hung up) cancels the turn and leaves memory untouched, unless
        the turn has settled (its answer whole, its memory being written): that one finishes
        its write and is logged as it ends."""
        ctx = TurnContext(
            deps=self.deps,
            request=request,
            profile=self.profile(request.profile),
            turn_id=str(uuid.uuid4()),
        )
        started_at = datetime.now(UTC)
        events: asyncio.Queue[TurnEvent] = asyncio.Queue()
        ctx.emit = events.put_nowait
        with calling(thread_id=request.thread_id, turn_id=ctx.turn_id):
            task = asyncio.create_task(self._drive(ctx), name=f"turn-{ctx.turn_id}")
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        last: TurnEvent | None = None
        after: TurnEvent | None = None
        ended: float | None = None
        # Held text only saves frames; a whole answer in one body has none to save.
        held_s = self.deps.settings.stream_hold_ms / 1000 if request.stream else 0.0
        hold_s = 0.0  # the first text goes out at once: it is the time to first text
        try:
            while not isinstance(last, Done | Failed):
                last, after = (after or await events.get()), None
                if isinstance(last, AnswerDelta):
                    last, after = await _gather(last, events, hold_s=hold_s)
                    hold_s = held_s
                if isinstance(last, Done | Failed):
                    ended = time.perf_counter()
                yield last
        finally:

            def record(_: object = None) -> None:
                # A settled turn its client left ends as it would have: by its own last event.
                unread = _unread_end(events, after) if ended is None and ctx.settled else None
                turn = self._record(ctx, started_at, unread or last, ended)
                self.finished[(turn.front_end, turn.error_code or turn.status)] += 1
                self.log.record(turn)

            if task.done() or ended is not None:
                # After the last event the task at most gives the lease back: neither the log
                # nor the caller waits for that, and it is not cancelled (close() awaits it).
                record()
            else:
                # Logged when the turn task ends, not after our wait: a hang-up's cancel scope
                # (anyio, level-triggered) interrupts every await here, and the turn was lost.
                task.add_done_callback(record)
                if ctx.settled:  # its memory write lands anyway (TurnContext.settle)
                    logger.info("turn %s: the client left once the answer was whole", ctx.turn_id)
                else:
                    task.cancel()
                # asyncio.wait, not `await task`: our own cancellation (a client hang-up)
                # must not cancel the turn's clean-up a second time.
                await asyncio.wait([task])

    async def _drive(self, ctx: TurnContext) -> None:
        request = ctx.request
        start = self._starts.begin()
        try:
            if request.thread_id is None:
                await self._invoke(
                    ctx, self._stateless_graph, {}, start, memory=[], preamble=[], durability=None
                )
                self._done(ctx)
            else:
                thread_id, saver = request.thread_id, self.checkpointer
                # Memory is read in the lease's round trip: one fewer before the router.
                read = saver.latest_query(thread_id)
                with store_errors():  # the lease and the checkpoints live in Postgres
                    async with self.locks.hold(
                        thread_id, read=read, busy=request.busy, preemptible=True
                    ) as row:
                        ctx.began_at = datetime.now(UTC)
                        ctx.on_settle = functools.partial(
                            self.locks.settle, thread_id, turn=asyncio.current_task()
                        )
                        config = {"configurable": {"thread_id": thread_id}}
                        latest = await saver.load_latest(thread_id, row)
                        # Saved once at the end: a failed turn never reaches memory.
                        with saver.preloaded(thread_id, latest):
                            await self._invoke(
                                ctx,
                                self._memory_graph,
                                config,
                                start,
                                memory=_stored(latest, "messages"),
                                preamble=_stored(latest, "preamble"),
                                durability="exit",
                            )
                        # Done once memory is saved, before the lease round trip: the next
                        # turn on this thread waits for the lease, not the client for it.
                        self._done(ctx)
        except LangAgentError as exc:
            # A barge-in (Preempted) is the user speaking again, not a fault to warn of.
            level = logging.INFO if isinstance(exc, Preempted) else logging.WARNING
            logger.log(level, "turn %s failed: %s (%s)", ctx.turn_id, exc.code, exc.message)
            ctx.emit(_failed(ctx, exc.code, exc.message))
        except Exception:  # the edge of the engine: anything unexpected becomes Failed
            logger.exception("turn %s failed unexpectedly", ctx.turn_id)
            ctx.emit(_failed(ctx, "internal_error", "the turn failed unexpectedly"))
        except asyncio.CancelledError:
            if self._stopping:  # the server's, not a client's hang-up: the client is told
                logger.warning("turn %s ended: the server is shutting down", ctx.turn_id)
                ctx.emit(_failed(ctx, ShuttingDown.code, "the server is shutting down; try again"))
            raise
        finally:
            start.done()

    @staticmethod
    def _done(ctx: TurnContext) -> None:
        ctx.emit(Done(ctx.total_usage(), "length" if ctx.finish_reason == "length" else "stop"))

    async def _invoke(
        self,
        ctx: TurnContext,
        graph: CompiledStateGraph,
        config: dict,
        start: Start,
        *,
        memory: list[AnyMessage],
        preamble: list[AnyMessage],
        durability: str | None,
    ) -> None:
        turn_input = client_dialogue(ctx.request.messages)
        try:
            async with asyncio.timeout(self.deps.settings.turn_timeout_s) as ctx.budget:
                ctx.routing = Routing(ctx, memory, turn_input, preamble=preamble)
                # The model requests leave now. LangGraph starts up while the models think,
                # once no other turn here is still on its way to its own requests.
                await asyncio.sleep(0)
                start.done()
                await self._starts.quiet(ctx.routing.answered)
                await graph.ainvoke(
                    {"turn_input": turn_input}, config, context=ctx, durability=durability
                )
        except TimeoutError as exc:
            raise TurnTimeout("the turn ran out of time") from exc
        finally:
            # Left running by a turn that failed or ended in or after the router.
            if ctx.routing is not None:
                await ctx.routing.discard()
            if ctx.speculation is not None:
                await ctx.speculation.discard()
            if ctx.filler is not None:
                await ctx.filler.cancel()

    def _record(
        self, ctx: TurnContext, started_at: datetime, last: TurnEvent | None, ended: float | None
    ) -> TurnRecord:
        usage = ctx.total_usage()
        fallback = last.fallback if isinstance(last, Failed) else None
        match last:
            case Done():
                status, code, error = "ok", None, None
            case Failed(code=Preempted.code, message=error):  # the user's barge-in, no fault
                status, code = "cancelled", Preempted.code
            case Failed(code=code, message=error):
                status = "failed"
            case _:
                status, code, error = "cancelled", "client_closed", "the client went away"
        return TurnRecord(
            turn_id=ctx.turn_id,
            thread_id=ctx.request.thread_id,
            front_end=ctx.request.front_end,
            profile=ctx.profile.name,
            started_at=ctx.began_at or started_at,
            status=status,
            route=ctx.route,
            error_code=code,
            error=error,
            ttft_ms=_ms(ctx.started, ctx.first_text_at),
            latency_ms=_ms(ctx.started, ended or time.perf_counter()),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            models=[asdict(m) for m in usage.models],
            metadata=dict(ctx.request.metadata),
            entries=_entries(ctx, answered=status == "ok", fallback=fallback),
        )
