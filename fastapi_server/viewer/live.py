"""Live updates: one LISTEN connection per viewer process, fanned out to every browser stream.

The conversation log NOTIFYs `lang_agent_turns` with the thread id after each write; browsers
get that id over server-sent events and refetch only the thread they have open. After a lost
connection the listener reconnects and announces a `resync`, since notifications were missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
from psycopg import sql

from lang_agent.conversations import NOTIFY_CHANNEL
from lang_agent.db import CONNECTION_KWARGS
from lang_agent.jsonwire import dumps

logger = logging.getLogger(__name__)

LISTEN_SQL = "LISTEN {channel}"
ALIVE_SQL = "SELECT 1"
QUEUE_SIZE = 256
ALIVE_EVERY_S = 30.0
BACKOFF_MAX_S = 10.0
KEEPALIVE_S = 15.0
RESYNC = {"resync": True}
CLOSE: dict[str, Any] = {}  # the stream's end, for one subscriber


class Notifier:
    """Owns the LISTEN connection and the subscribers' queues; use as an async context."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.listening = asyncio.Event()
        self.closing = False
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Notifier:
        self._task = asyncio.create_task(self._listen(), name="viewer-listen")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)

    async def close_streams(self) -> None:
        """End every browser stream (`event_frames`), as the server stops."""
        self.closing = True
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(CLOSE)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:  # a stalled browser: it will resync when it drains
                queue.get_nowait()
                queue.put_nowait(RESYNC)

    async def _listen(self) -> None:
        delay = 0.5
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn, **CONNECTION_KWARGS
                ) as conn:
                    await conn.execute(
                        sql.SQL(LISTEN_SQL).format(channel=sql.Identifier(NOTIFY_CHANNEL))
                    )
                    self.listening.set()
                    if not first:
                        self.publish(RESYNC)
                    first, delay = False, 0.5
                    while True:
                        async for notify in conn.notifies(timeout=ALIVE_EVERY_S):
                            self.publish({"thread_id": notify.payload})
                        await conn.execute(ALIVE_SQL)  # a dead connection raises here
            except psycopg.Error as exc:
                self.listening.clear()
                logger.warning("viewer LISTEN lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)


async def event_frames(notifier: Notifier) -> AsyncIterator[str]:
    """SSE frames for one browser: `ready`, then `turn` per notification, keep-alive comments."""
    with notifier.subscribe() as queue:
        yield "retry: 3000\nevent: ready\ndata: {}\n\n"
        while not notifier.closing:
            try:
                async with asyncio.timeout(KEEPALIVE_S):
                    event = await queue.get()
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            if event is CLOSE:
                return
            yield f"event: turn\ndata: {dumps(event)}\n\n"
