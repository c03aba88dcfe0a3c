"""The turn's event stream: waiting answer deltas go out as one, and nothing outlives it."""

from __future__ import annotations

import asyncio
import uuid

from lang_agent.agent.events import (
    AnswerDelta,
    Filler,
    InputMessage,
    RouteChosen,
    TurnEvent,
    TurnRequest,
)
from lang_agent.agent.runner import _coalesce
from lang_agent.service import open_service
from tests.support import set_latency


def _queue(*events: TurnEvent) -> asyncio.Queue[TurnEvent]:
    queue: asyncio.Queue[TurnEvent] = asyncio.Queue()
    for event in events:
        queue.put_nowait(event)
    return queue


def test_waiting_deltas_merge_up_to_the_next_other_event():
    queue = _queue(AnswerDelta("好，"), AnswerDelta("我来"), RouteChosen("chat"), AnswerDelta("讲"))
    merged, after = _coalesce(AnswerDelta("你"), queue)
    assert merged == AnswerDelta("你好，我来")
    assert after == RouteChosen("chat")
    assert queue.get_nowait() == AnswerDelta("讲") and queue.empty()


def test_a_lone_delta_and_a_filler_stay_as_they_are():
    merged, after = _coalesce(AnswerDelta("a"), _queue())
    assert (merged, after) == (AnswerDelta("a"), None)
    merged, after = _coalesce(AnswerDelta("a"), _queue(Filler("嗯"), AnswerDelta("b")))
    assert (merged, after) == (AnswerDelta("a"), Filler("嗯"))


def test_all_waiting_deltas_merge_when_nothing_else_waits():
    queue = _queue(*(AnswerDelta(str(n)) for n in range(1, 10)))
    merged, after = _coalesce(AnswerDelta("0"), queue)
    assert (merged, after) == (AnswerDelta("0123456789"), None) and queue.empty()


async def test_a_turn_that_ends_after_the_route_leaves_no_model_call_running(
    make_settings, simulator
):
    # The filler starts when the router says "tool", before tool_model_call takes it over;
    # a client hanging up in between must not leave it (or a speculation) talking to no one.
    set_latency(simulator, "chatty", ttft_ms=2000)
    set_latency(simulator, "tool", ttft_ms=2000)
    try:
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
            left = [
                task.get_name()
                for task in asyncio.all_tasks()
                if task.get_name().startswith(("filler-", "speculative-chat-"))
            ]
            assert left == []
    finally:
        set_latency(simulator, "chatty", ttft_ms=0)
        set_latency(simulator, "tool", ttft_ms=0)
