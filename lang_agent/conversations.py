"""The conversation log: every turn and its messages, written behind the request."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lang_agent.agent.state import LogEntry
from lang_agent.db import OUTAGE_WAIT_S, gather_batch, insert_rows_sql
from lang_agent.jsonwire import jsonb_dumps
from lang_agent.pool import Database

logger = logging.getLogger(__name__)

TURN_COLUMNS = (
    "turn_id thread_id front_end profile route status error_code error started_at ttft_ms "
    "latency_ms prompt_tokens completion_tokens models metadata"
).split()
MESSAGE_COLUMNS = (
    "thread_id turn_id seq role content tool_calls tool_call_id tool_name is_filler model "
    "turn_started_at is_fallback"
).split()
INSERT_TURNS_SQL = insert_rows_sql("turns", TURN_COLUMNS, then="ON CONFLICT (turn_id) DO NOTHING")
INSERT_MESSAGES_SQL = insert_rows_sql(
    "messages", MESSAGE_COLUMNS, then="ON CONFLICT (turn_id, seq) DO NOTHING"
)
# Viewers LISTEN on this channel; the payload is the thread id ('' for stateless turns).
NOTIFY_CHANNEL = "lang_agent_turns"
NOTIFY_SQL = (
    "SELECT pg_notify('lang_agent_turns', thread) FROM jsonb_array_elements_text(%s) AS thread"
)
SELECT_THREAD_SQL = """
SELECT m.turn_id, m.seq, m.role, m.content, m.tool_calls, m.tool_call_id, m.tool_name,
       m.is_filler, m.is_fallback, m.model, m.turn_started_at, t.route, t.status
FROM messages m JOIN turns t USING (turn_id)
WHERE m.thread_id = %s
ORDER BY m.turn_started_at, m.turn_id, m.seq
"""

WRITE_ATTEMPTS = 3


def _jsonb(value: Any) -> Jsonb:
    """A jsonb parameter; NUL, which Postgres text cannot hold, and lone surrogates become
    U+FFFD (a client may still send either)."""
    return Jsonb(value, dumps=jsonb_dumps)


@dataclass
class TurnRecord:
    turn_id: str
    thread_id: str | None
    front_end: str
    profile: str
    started_at: datetime
    status: str
    route: str | None = None
    error_code: str | None = None
    error: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    entries: list[LogEntry] = field(default_factory=list)

    def turn_row(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TURN_COLUMNS}

    def message_rows(self) -> list[dict[str, Any]]:
        return [
            {
                "thread_id": self.thread_id,
                "turn_id": self.turn_id,
                "seq": seq,
                "role": entry.role,
                "content": entry.content,
                "tool_calls": entry.tool_calls or None,
                "tool_call_id": entry.tool_call_id,
                "tool_name": entry.tool_name,
                "is_filler": entry.is_filler,
                "model": entry.model,
                "turn_started_at": self.started_at,
                "is_fallback": entry.is_fallback,
            }
            for seq, entry in enumerate(self.entries)
        ]


class ConversationLog:
    """Write-behind: `record()` never waits; a writer task inserts whole turns in batches, each
    batch in one transaction. When the queue is full or the database stays down, turns are
    dropped and counted, never allowed to fail a conversation."""

    def __init__(self, db: Database, *, queue_size: int = 10_000, batch_size: int = 200) -> None:
        self.db = db
        self.batch_size = batch_size
        self.queue: asyncio.Queue[TurnRecord] = asyncio.Queue(queue_size)
        self.written = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConversationLog:
        self._task = asyncio.create_task(self._writer(), name="conversation-log")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.flush(within_s=5.0)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def record(self, turn: TurnRecord) -> None:
        try:
            self.queue.put_nowait(turn)
        except asyncio.QueueFull:
            self.dropped += 1
            logger.warning("conversation log queue full: turn %s dropped", turn.turn_id)

    async def flush(self, *, within_s: float) -> None:
        """Wait until everything recorded so far is written (or dropped)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self.queue.join()

    async def _writer(self) -> None:
        while True:
            batch = [await self.queue.get()]
            try:
                await gather_batch(self.queue, batch, self.batch_size)
                await self._write(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    async def _write(self, batch: list[TurnRecord]) -> None:
        give_up_at = time.monotonic() + OUTAGE_WAIT_S
        attempt = 0
        waiting = False
        while attempt < WRITE_ATTEMPTS:
            attempt += 1
            try:
                async with self.db.connection() as conn, conn.pipeline(), conn.transaction():
                    await conn.execute(INSERT_TURNS_SQL, (_jsonb([t.turn_row() for t in batch]),))
                    rows = [row for t in batch for row in t.message_rows()]
                    if rows:
                        await conn.execute(INSERT_MESSAGES_SQL, (_jsonb(rows),))
                    threads = sorted({t.thread_id or "" for t in batch})
                    await conn.execute(NOTIFY_SQL, (_jsonb(threads),))
                self.written += len(batch)
                return
            except psycopg.DataError:  # a row the database refuses: retrying cannot help
                if len(batch) == 1:
                    logger.exception("conversation log refused turn %s", batch[0].turn_id)
                    self.dropped += 1
                    return
                for turn in batch:  # one refused turn must not sink the others
                    await self._write([turn])
                return
            except psycopg.OperationalError as exc:  # down or restarting: wait, do not drop
                if time.monotonic() < give_up_at:
                    attempt -= 1
                    if not waiting:  # once, not at each try: the pool says when it is back
                        waiting = True
                        logger.warning("conversation log waits for the database (%s)", exc)
                    await asyncio.sleep(1.0)
                    continue
                logger.exception("conversation log write failed: the database stayed away")
                break
            except Exception:  # the log is best-effort; the writer must outlive any DB trouble
                logger.exception("conversation log write failed (attempt %s)", attempt)
                await asyncio.sleep(0.2 * attempt)
        self.dropped += len(batch)


async def read_thread(db: Database, thread_id: str) -> list[dict[str, Any]]:
    """A thread's logged messages in conversation order."""
    async with db.connection() as conn:
        cursor = await conn.execute(SELECT_THREAD_SQL, (thread_id,))
        return await cursor.fetchall()
