"""Turns on their way to their model requests, and work that can wait until none is."""

from __future__ import annotations

import asyncio
from collections import deque


class Start:
    """One turn's start: `done()` once its model requests are on their way (or it failed)."""

    __slots__ = ("_starts", "_open")

    def __init__(self, starts: Starts) -> None:
        self._starts = starts
        self._open = True

    def done(self) -> None:
        if self._open:
            self._open = False
            self._starts._left()


class Starts:
    """This process's turns that have not sent their model requests yet, and the turns whose
    LangGraph start-up waits for none to be left (`quiet`).

    That start-up (about 2 ms of CPU a turn) runs while the models think, so it is off the
    turn's path until the router answers. When a burst of turns arrives together, running it
    at once delays every other turn's lease and requests behind it; waiting for a quiet moment
    puts each turn's requests out first. A turn whose router has answered waits no longer.
    Released turns go one per pass of the event loop, so a request arriving meanwhile is read
    between them and stops the release until it, too, has started."""

    def __init__(self) -> None:
        self._starting = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._releasing = False

    def begin(self) -> Start:
        self._starting += 1
        return Start(self)

    async def quiet(self, answered: asyncio.Future[object]) -> None:
        """Return when no turn is starting, or once `answered` is done."""
        if self._starting == 0 and not self._waiting or answered.done():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        answered.add_done_callback(lambda _: waiter.done() or waiter.set_result(None))
        self._release()
        await waiter

    def _left(self) -> None:
        self._starting -= 1
        self._release()

    def _release(self) -> None:
        if self._releasing or self._starting:
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if self._waiting:
                    self._releasing = True
                    asyncio.get_running_loop().call_soon(self._next)
                return

    def _next(self) -> None:
        self._releasing = False
        self._release()
