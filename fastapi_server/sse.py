"""Server-sent events: one response class for every stream, and the frame builders."""

from __future__ import annotations

from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from lang_agent.jsonwire import dumps

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def data_frame(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


class EventStream(StreamingResponse):
    """A streaming response that always watches for the client hanging up, so a disconnect
    cancels the producer at once, not at its next write (starlette only races on ASGI < 2.4)."""

    media_type = "text/event-stream"

    def __init__(self, content: Any, *, headers: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(content, headers={**STREAM_HEADERS, **(headers or {})}, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:

            async def stream() -> None:
                await self.stream_response(send)
                group.cancel_scope.cancel()

            group.start_soon(stream)
            await self.listen_for_disconnect(receive)
            group.cancel_scope.cancel()
