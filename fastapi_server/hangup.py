"""A client hanging up before the answer starts: the work for it is cancelled, not finished
(but for a turn whose answer is whole, which finishes its memory write: TurnContext.settle)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import anyio
from fastapi import Request
from fastapi.responses import Response

# nginx's "client closed request": the status of an answer nobody is left to read.
CLIENT_CLOSED = 499


async def gone_while_sending(_request: Request, _exc: Exception) -> Response:
    """Exception handler: the client left (or was cut off, fastapi_server/read_deadline.py)
    before its body was whole. Nobody reads the answer; it is no server error to log."""
    return Response(status_code=CLIENT_CLOSED)


async def _cancel_on_hang_up(request: Request, scope: anyio.CancelScope) -> None:
    # The body is read by now, so the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


async def unless_hung_up(request: Request, answer: Awaitable[Response]) -> Response:
    """`answer`, awaited while watching the connection (call it once the body is read). A
    client that hangs up first (an SDK's timeout, which it then retries) cancels it, so a turn
    nobody waits for ends as `cancelled` instead of running on into the thread's memory (one
    already writing its whole answer there finishes and is logged `ok`); a stream's own
    hang-up watch (`EventStream`) takes over once it is returned."""
    with anyio.CancelScope() as scope:
        watcher = asyncio.create_task(_cancel_on_hang_up(request, scope))
        try:
            return await answer
        finally:
            watcher.cancel()
    return Response(status_code=CLIENT_CLOSED)
