"""The conversation log's writer: turns that end together share a transaction, and a refused
turn costs only itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from lang_agent.agent.state import LogEntry
from lang_agent.conversations import ConversationLog, TurnRecord, read_thread
from lang_agent.pool import Database


def _turn(thread_id: str, text: str, **fields) -> TurnRecord:
    turn = TurnRecord(
        turn_id=str(uuid.uuid4()),
        thread_id=thread_id,
        front_end="openai",
        profile="default",
        started_at=datetime.now(UTC),
        status="ok",
        **fields,
    )
    turn.entries = [LogEntry(role="user", content=text), LogEntry(role="assistant", content="好")]
    return turn


@pytest.fixture
async def db(pg_dsn) -> AsyncIterator[Database]:
    database = Database(pg_dsn, max_size=2)
    await database.open()
    try:
        yield database
    finally:
        await database.close()


def new_threads(count: int) -> list[str]:
    return [f"log-{uuid.uuid4().hex[:10]}" for _ in range(count)]


async def test_a_refused_turn_costs_only_itself_and_text_postgres_cannot_hold_is_kept(db):
    threads = new_threads(3)
    async with ConversationLog(db) as log:
        log.record(_turn(threads[0], "半个\ud83d表情和\x00"))
        log.record(_turn(threads[1], "太多", prompt_tokens=2**40))  # over integer: refused
        log.record(_turn(threads[2], "正常"))
        await log.flush(within_s=10)
    assert (log.written, log.dropped) == (2, 1)
    first, refused, last = [await read_thread(db, thread) for thread in threads]
    assert [m["content"] for m in first] == ["半个\ufffd表情和\ufffd", "好"]
    assert refused == [] and [m["content"] for m in last] == ["正常", "好"]


async def test_turns_that_end_close_together_share_one_transaction(db):
    """The writer lets a batch gather (LINGER_S) after its first turn instead of writing each
    turn alone as it wakes: at 50 turns a second that was a transaction per turn."""
    threads = new_threads(3)
    async with ConversationLog(db) as log:
        log.record(_turn(threads[0], "第一"))
        for _ in range(3):  # the writer wakes and takes the first turn
            await asyncio.sleep(0)
        assert log.queue.empty()
        log.record(_turn(threads[1], "第二"))
        log.record(_turn(threads[2], "第三"))
        await log.flush(within_s=10)
    async with db.connection() as conn:
        cursor = await conn.execute(
            "SELECT count(DISTINCT xmin::text) FROM turns WHERE thread_id = ANY(%s)", (threads,)
        )
        assert (await cursor.fetchone())["count"] == 1
    assert log.written == 3
