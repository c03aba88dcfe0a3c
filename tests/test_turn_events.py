"""The turn's event stream: waiting answer deltas go out as one, after the first text the rest
go out a clause at a time, the model requests leave before the graph starts (in a burst, every
turn's before any graph), and nothing outlives the turn."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx2
from langgraph.pregel._loop import AsyncPregelLoop

from lang_agent.agent.events import (
    AnswerDelta,
    Done,
    Failed,
    Filler,
    InputMessage,
    RouteChosen,
    TurnEvent,
    TurnRequest,
    Usage,
)
from lang_agent.agent.runner import CLAUSE_MARKS, _gather
from lang_agent.service import open_service
from tests.support import latency


def _running(*prefixes: str) -> list[str]:
    """The tasks still running whose names start with one of `prefixes`."""
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(prefixes)]


def _queue(*events: TurnEvent) -> asyncio.Queue[TurnEvent]:
    queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)
    return queue


async def test_waiting_deltas_merge_up_to_the_next_other_event():
    queue = _queue(AnswerDelta("好"), AnswerDelta("我来"), RouteChosen("chat"), AnswerDelta("讲"))
    merged, after = await _gather(AnswerDelta("你"), queue, hold_s=0)
    assert merged == AnswerDelta("你好我来")
    assert after == RouteChosen("chat")
    assert queue.get_nowait() == AnswerDelta("讲") and queue.empty()


async def test_a_lone_delta_and_a_filler_stay_as_they_are():
    merged, after = await _gather(AnswerDelta("a"), _queue(), hold_s=0)
    assert (merged, after) == (AnswerDelta("a"), None)
    merged, after = await _gather(
        AnswerDelta("a"), _queue(Filler("嗯"), AnswerDelta("b")), hold_s=0
    )
    assert (merged, after) == (AnswerDelta("a"), Filler("嗯"))


async def test_all_waiting_deltas_merge_when_nothing_else_waits():
    queue = _queue(*(AnswerDelta(str(n)) for n in range(1, 10)))
    merged, after = await _gather(AnswerDelta("0"), queue, hold_s=0)
    assert (merged, after) == (AnswerDelta("0123456789"), None) and queue.empty()


async def _later(queue: asyncio.Queue[TurnEvent], *events: TurnEvent, after_s: float) -> None:
    await asyncio.sleep(after_s)
    for event in events:
        queue.put_nowait(event)


async def test_text_short_of_a_clause_waits_for_the_rest_of_it():
    queue = _queue()
    arriving = asyncio.create_task(
        _later(queue, AnswerDelta("天气"), AnswerDelta("不错，"), AnswerDelta("适合"), after_s=0.01)
    )
    merged, after = await _gather(AnswerDelta("今天"), queue, hold_s=60)
    # The clause mark sends it: a voice client can say "今天天气不错，" now.
    assert (merged, after) == (AnswerDelta("今天天气不错，适合"), None)
    await arriving


async def test_the_wait_ends_at_the_hold_or_at_any_other_event():
    queue = _queue()
    late = asyncio.create_task(_later(queue, AnswerDelta("晚到"), after_s=0.5))
    merged, after = await _gather(AnswerDelta("一半"), queue, hold_s=0.02)
    assert (merged, after) == (AnswerDelta("一半"), None)  # not held for the late one
    await late
    assert queue.get_nowait() == AnswerDelta("晚到")
    done = Done(Usage())
    arriving = asyncio.create_task(_later(queue, done, after_s=0.01))
    assert await _gather(AnswerDelta("最后"), queue, hold_s=60) == (AnswerDelta("最后"), done)
    await arriving


async def test_an_answer_goes_out_in_clauses_after_its_first_text(make_settings, simulator):
    async def deltas(hold_ms: int) -> list[str]:
        async with open_service(make_settings(stream_hold_ms=hold_ms)) as service:
            request = TurnRequest(
                messages=(InputMessage("user", "给我讲讲今天的天气吧"),),
                thread_id=None,
                stream=True,
            )
            events = [event async for event in service.agent.run_turn(request)]
        return [event.text for event in events if isinstance(event, AnswerDelta)]

    with latency(simulator, "chat", ttft_ms=0, tokens_per_s=100):
        chunked, held = await deltas(0), await deltas(1000)
    assert "".join(held) == "".join(chunked)
    assert held[0] == chunked[0]  # the first text is not held back
    assert len(held) < len(chunked)
    # Every frame but the last ends a clause: with a hold longer than the answer, text waits
    # for its clause mark and nothing else.
    assert all(not CLAUSE_MARKS.isdisjoint(text) for text in held[1:-1])


async def test_a_turn_that_ends_after_the_route_leaves_no_model_call_running(
    make_settings, simulator
):
    # The filler starts when the router says "tool", before tool_model_call takes it over;
    # a client hanging up in between must not leave it (or a speculation) talking to no one.
    with latency(simulator, "chatty", "tool", ttft_ms=2000):
        async with open_service(make_settings()) as service:
            request = TurnRequest(
                messages=(InputMessage("user", "现在几点了？"),),
                thread_id=f"wind-down-{uuid.uuid4().hex}",
                stream=True,
            )
            turn = service.agent.run_turn(request)
            async for event in turn:
                if isinstance(event, RouteChosen):
                    assert event.route == "tool"
                    break
            await turn.aclose()
            assert _running("filler-", "speculative-chat-") == []


def _watch_order(monkeypatch, service, name: Callable[[httpx2.Request], str]) -> list[str]:
    """The list that the service's model requests (each as `name` calls it) and LangGraph's
    graph starts ("graph") are appended to, in the order they happen."""
    order: list[str] = []
    enter_loop = AsyncPregelLoop.__aenter__

    async def entering(loop: AsyncPregelLoop) -> AsyncPregelLoop:
        order.append("graph")
        return await enter_loop(loop)

    transport = service.agent.deps.models.transport
    send = transport.handle_async_request

    async def sending(request: httpx2.Request) -> httpx2.Response:
        order.append(name(request))
        return await send(request)

    monkeypatch.setattr(AsyncPregelLoop, "__aenter__", entering)
    monkeypatch.setattr(transport, "handle_async_request", sending)
    return order


async def _turn(service, thread_id: str, text: str = "你好") -> list[TurnEvent]:
    """The events of one turn of `text` on the thread, to its end."""
    request = TurnRequest(messages=(InputMessage("user", text),), thread_id=thread_id)
    return [event async for event in service.agent.run_turn(request)]


async def test_the_model_requests_leave_before_langgraph_starts_the_graph(
    make_settings, simulator, monkeypatch
):
    # LangGraph's start-up costs about 2 ms of CPU a turn: it runs while the models think.
    async with open_service(make_settings()) as service:
        order = _watch_order(
            monkeypatch,
            service,
            lambda request: "router" if b'"tool_choice"' in request.content else "chat",
        )
        thread = f"early-{uuid.uuid4().hex}"
        for text in ("你好", "再讲一个"):  # a new thread, then one with memory
            order.clear()
            events = await _turn(service, thread, text)
            assert isinstance(events[-1], Done)
            assert order == ["router", "chat", "graph"]


async def test_in_a_burst_every_turns_requests_leave_before_any_graph_starts(
    make_settings, simulator, monkeypatch
):
    # LangGraph's start-up is off a turn's path until its router answers; run at once, it
    # would hold up the leases and requests of the turns that arrived with it.
    with latency(simulator, "router", ttft_ms=500):
        async with open_service(make_settings()) as service:
            order = _watch_order(monkeypatch, service, lambda request: "request")
            turns = (_turn(service, f"burst-{n}-{uuid.uuid4()}") for n in range(6))
            ends = [events[-1] for events in await asyncio.gather(*turns)]
    assert all(isinstance(end, Done) for end in ends)
    assert order[:12] == ["request"] * 12  # each turn's router and chat
    assert order[12:] == ["graph"] * 6


async def test_a_turn_waiting_for_its_busy_thread_holds_up_no_other_turn(make_settings, simulator):
    thread = f"busy-{uuid.uuid4().hex}"
    with latency(simulator, "chat", ttft_ms=1500):
        async with open_service(make_settings()) as service:
            first = asyncio.create_task(_turn(service, thread))
            await asyncio.sleep(0.3)  # it holds the thread
            queued = asyncio.create_task(_turn(service, thread))
            await asyncio.sleep(0.1)  # it waits for the thread, not yet on its way
            with latency(simulator, "chat", ttft_ms=0):
                other = await _turn(service, f"other-{uuid.uuid4().hex}")
            assert isinstance(other[-1], Done)
            assert not first.done() and not queued.done()
            ends = [events[-1] for events in await asyncio.gather(first, queued)]
            assert all(isinstance(end, Done) for end in ends)


async def test_a_turn_cancelled_while_its_graph_waits_to_start_leaves_nothing_running(
    make_settings, simulator, monkeypatch
):
    prefixes = ("router-", "speculative-chat-", "turn-")
    thread = f"held-{uuid.uuid4().hex}"
    with latency(simulator, "router", ttft_ms=2000):
        async with open_service(make_settings()) as service:
            order = _watch_order(monkeypatch, service, lambda request: "request")
            holder = asyncio.create_task(_turn(service, thread))
            await asyncio.sleep(0.3)  # it holds the thread while its router thinks
            queued = asyncio.create_task(_turn(service, thread))  # on its way while it waits
            await asyncio.sleep(0.1)
            before = sorted(_running(*prefixes))
            waiting = asyncio.create_task(_turn(service, f"waiting-{uuid.uuid4().hex}"))
            await asyncio.sleep(0.3)
            assert order.count("request") == 4  # the holder's two and the waiting turn's
            assert order.count("graph") == 1  # the holder's: the waiting turn's graph waits
            waiting.cancel()  # the client hangs up
            await asyncio.wait([waiting])
            assert sorted(_running(*prefixes)) == before
            for task in (holder, queued):
                task.cancel()
            await asyncio.wait([holder, queued])


async def test_a_turn_cancelled_while_the_router_thinks_leaves_no_model_call_running(
    make_settings, simulator
):
    with latency(simulator, "router", ttft_ms=2000):
        async with open_service(make_settings()) as service:
            request = TurnRequest(
                messages=(InputMessage("user", "你好"),),
                thread_id=f"hang-up-{uuid.uuid4().hex}",
            )

            async def listen() -> None:
                async for _event in service.agent.run_turn(request):
                    pass

            listener = asyncio.create_task(listen())
            await asyncio.sleep(0.3)  # both requests are out; the router has not answered
            listener.cancel()  # the client hangs up
            await asyncio.wait([listener])
            assert _running("router-", "speculative-chat-", "turn-") == []


async def test_a_graph_that_fails_to_start_leaves_no_model_call_running(
    make_settings, simulator, monkeypatch
):
    async def broken(loop: AsyncPregelLoop) -> AsyncPregelLoop:
        raise RuntimeError("LangGraph could not start")

    monkeypatch.setattr(AsyncPregelLoop, "__aenter__", broken)
    with latency(simulator, "router", ttft_ms=2000):
        async with open_service(make_settings()) as service:
            events = await _turn(service, f"broken-{uuid.uuid4().hex}")
            # Its usage is whatever the speculative chat call had used when it was stopped.
            assert [(e.code, e.message) for e in events if isinstance(e, Failed)] == [
                ("internal_error", "the turn failed unexpectedly")
            ]
            assert len(events) == 1
            assert _running("router-", "speculative-chat-") == []
