"""Starts: work that can wait runs once no turn is on its way to its model requests, one
waiting turn per pass of the loop, and never later than the turn's router answer."""

from __future__ import annotations

import asyncio

from lang_agent.agent.starts import Starts


async def _passes(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def _answer() -> asyncio.Future[object]:
    return asyncio.get_running_loop().create_future()


async def _wait(starts: Starts, released: list[object], name: object) -> None:
    await starts.quiet(_answer())
    released.append(name)


async def test_with_no_turn_starting_quiet_returns_at_once():
    starts = Starts()
    start = starts.begin()
    start.done()
    await asyncio.wait_for(starts.quiet(_answer()), 0.5)


async def test_quiet_waits_for_the_last_start_and_counts_each_start_once():
    starts = Starts()
    first, second = starts.begin(), starts.begin()
    waiter = asyncio.create_task(starts.quiet(_answer()))
    first.done()
    first.done()  # a second call is no second start leaving
    await _passes(3)
    assert not waiter.done()
    second.done()
    await asyncio.wait_for(waiter, 0.5)


async def test_a_turn_whose_router_answered_waits_no_longer():
    starts = Starts()
    starts.begin()  # a turn that stays on its way, e.g. waiting for its busy thread
    answer = _answer()
    waiter = asyncio.create_task(starts.quiet(answer))
    await _passes(3)
    assert not waiter.done()
    answer.set_result(None)
    await asyncio.wait_for(waiter, 0.5)
    answered = _answer()
    answered.set_result(None)
    await asyncio.wait_for(starts.quiet(answered), 0.5)


async def test_waiting_turns_go_one_per_pass_and_a_new_start_stops_them():
    starts = Starts()
    start = starts.begin()
    released: list[object] = []
    waiters = [asyncio.create_task(_wait(starts, released, n)) for n in range(3)]
    await _passes(2)
    start.done()
    await asyncio.sleep(0)
    assert released == [0]
    late = starts.begin()  # a request read between two releases
    await _passes(5)
    assert len(released) < 3
    late.done()
    await asyncio.wait_for(asyncio.gather(*waiters), 0.5)
    assert released == [0, 1, 2]


async def test_a_cancelled_waiter_is_skipped():
    starts = Starts()
    start = starts.begin()
    gone = asyncio.create_task(starts.quiet(_answer()))
    kept = asyncio.create_task(starts.quiet(_answer()))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.wait([gone])
    start.done()
    await asyncio.wait_for(kept, 0.5)


async def test_a_turn_that_arrives_while_others_are_released_queues_behind_them():
    starts = Starts()
    start = starts.begin()
    released: list[object] = []
    early = [asyncio.create_task(_wait(starts, released, f"early-{n}")) for n in range(3)]
    await asyncio.sleep(0)
    start.done()
    late = asyncio.create_task(_wait(starts, released, "late"))
    await asyncio.wait_for(asyncio.gather(*early, late), 0.5)
    assert released == ["early-0", "early-1", "early-2", "late"]
