"""Answer deltas that wait together in a turn's event queue go to the front end as one."""

from __future__ import annotations

import asyncio

from lang_agent.agent.events import AnswerDelta, Filler, RouteChosen, TurnEvent
from lang_agent.agent.runner import _coalesce


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
