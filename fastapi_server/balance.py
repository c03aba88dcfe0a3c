"""Even keep-alive connections over a worker group: a worker holding more than its share
answers with `Connection: close`, and the client's next connection is placed afresh.

SO_REUSEPORT gives each new connection to a worker by a hash of its addresses, once. A client
that keeps its connections (the openai SDK's pool, the load generator) stays where the
hash put them: 100 connections split 57 / 43 or worse about one time in five, and the
connections opened before a worker listens (a group starting, a worker restarted) all stay on
the others. The busier worker's core then runs out while the other has time to spare
(docs/performance.md).

Each worker publishes its open connections in a slot of an array the group shares. A worker
above the even share (plus `SLACK`) marks responses `Connection: close` until it is not, and
the kernel hashes each reconnection anew, so the group evens out within a round of requests.
A worker counts the connections it has told to close as gone from its own share (they are
open until their responses end), or a burst of responses that end together would shed them
all and tip the balance the other way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, MutableSequence

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SLACK = 1  # connections above the even share a worker keeps before it sheds one
NOT_SERVING = -1  # a worker still starting, or draining: left out of the share
PUBLISH_S = 0.25


class ConnectionShare:
    """One worker's view of the group's open connections, `counts[index]` being its own."""

    def __init__(self, counts: MutableSequence[int], index: int) -> None:
        self._counts = counts
        self._index = index
        self._open: Callable[[], int] | None = None
        self._closing = 0
        counts[index] = NOT_SERVING

    async def follow(self, server: uvicorn.Server) -> None:
        """Take part while `server` serves, from its start until it drains, keeping the slot
        fresh when no requests come (an idle worker's connections close too)."""

        def counted() -> int:
            return len(server.server_state.connections)  # uvicorn's own, kept by its protocols

        try:
            while not server.should_exit:
                self._open = counted if server.started else None
                self.publish()
                await asyncio.sleep(PUBLISH_S)
        finally:
            self._open = None
            self.publish()

    def publish(self) -> int:
        """Write this worker's open connections to its slot."""
        mine = NOT_SERVING if self._open is None else self._open()
        self._counts[self._index] = mine
        return mine

    def shed(self) -> bool:
        """True when this worker holds more than its share: the caller closes one connection
        and calls `shed_done()` once it is closed."""
        mine = self.publish()
        if mine == NOT_SERVING:
            return False
        serving = [count for count in self._counts if count != NOT_SERVING]
        # The total keeps the connections told to close: their clients come back, somewhere.
        share = -(-sum(serving) // len(serving))  # rounded up: an odd total splits unevenly
        if mine - self._closing <= share + SLACK:
            return False
        self._closing += 1
        return True

    def shed_done(self) -> None:
        self._closing -= 1


class ConnectionBalancer:
    """ASGI middleware: a response of a worker above its share closes its connection."""

    def __init__(self, app: ASGIApp, share: ConnectionShare) -> None:
        self.app = app
        self.share = share

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.share.shed():
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", ()), (b"connection", b"close")]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_closing)
        finally:
            # The server closes the transport as the response ends, and the connection leaves
            # its count in a callback after that: done then, not counted twice meanwhile.
            asyncio.get_running_loop().call_soon(self.share.shed_done)
