"""Retention: checkpoints down to the latest N per thread, old log rows and captured calls pruned,
live threads' memory intact, dry runs that only count; and `lang-agent forget`, which erases a
thread everywhere."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from lang_agent.agent.events import AnswerDelta, Done, InputMessage, TurnRequest
from lang_agent.cli import main
from lang_agent.db import CONNECTION_KWARGS
from lang_agent.forget import forget_command
from lang_agent.llm.sim import Simulator
from lang_agent.retention import (
    TRY_LOCK_SQL,
    UNLOCK_SQL,
    prune,
    prune_log,
    prune_thread,
    retention_job,
    run_once,
)
from lang_agent.service import open_service
from tests.capture_fixtures import eventually
from tests.support import set_latency

CHECKPOINTS_SQL = "SELECT count(*) AS n FROM checkpoints WHERE thread_id = %s"
BLOB_KEYS_SQL = """
SELECT channel, version FROM checkpoint_blobs WHERE thread_id = %s ORDER BY 1, 2
"""
REFERENCED_KEYS_SQL = """
SELECT DISTINCT v.key AS channel, v.value AS version
FROM checkpoints c CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') v
WHERE c.thread_id = %s ORDER BY 1, 2
"""
INSERT_TURN_SQL = """
INSERT INTO turns (turn_id, thread_id, front_end, status, started_at)
VALUES (%s, %s, 'test', 'ok', %s)
"""
INSERT_MESSAGE_SQL = """
INSERT INTO messages (thread_id, turn_id, seq, role, content, turn_started_at)
VALUES (%s, %s, %s, 'user', 'hi', %s)
"""
INSERT_CALL_SQL = """
INSERT INTO llm_calls (call_id, thread_id, method, url, status, created_at)
VALUES (%s, %s, 'POST', 'http://sim/v1/chat/completions', 'ok', %s)
"""
COUNT_TURNS_SQL = "SELECT count(*) AS n FROM turns WHERE thread_id = %s"
COUNT_MESSAGES_SQL = "SELECT count(*) AS n FROM messages WHERE thread_id = %s"
COUNT_CALLS_SQL = "SELECT count(*) AS n FROM llm_calls WHERE thread_id = %s"
LEASE_SQL = "SELECT count(*) AS n FROM thread_leases WHERE thread_id = %s"


@pytest.fixture(scope="module")
def retention_dsn(pg_dsn: str) -> str:
    """A database of its own: pruning is global, and other tests' rows must not count."""
    name = f"retention_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(pg_dsn, dbname=name)


@pytest.fixture
async def service(make_settings, retention_dsn):
    async with open_service(make_settings(conn_str=retention_dsn)) as service:
        yield service


async def talk(service, thread_id: str, text: str) -> str:
    request = TurnRequest(messages=(InputMessage("user", text),), thread_id=thread_id)
    events = [event async for event in service.agent.run_turn(request)]
    assert isinstance(events[-1], Done), events[-1]
    return "".join(e.text for e in events if isinstance(e, AnswerDelta))


async def count(conn, query: str, *params) -> int:
    return (await (await conn.execute(query, params)).fetchone())["n"]


async def memory(service, thread_id: str) -> list[tuple[str, str]]:
    saved = await service.agent.checkpointer.aget_tuple({"configurable": {"thread_id": thread_id}})
    return [(m.type, m.content) for m in saved.checkpoint["channel_values"]["messages"]]


async def add_old_rows(conn, thread_id: str, *, age: timedelta, turns: int = 1) -> None:
    when = datetime.now(UTC) - age
    for _ in range(turns):
        turn_id = uuid.uuid4()
        await conn.execute(INSERT_TURN_SQL, (turn_id, thread_id, when))
        for seq in range(2):
            await conn.execute(INSERT_MESSAGE_SQL, (thread_id, turn_id, seq, when))
        await conn.execute(INSERT_CALL_SQL, (uuid.uuid4(), thread_id, when))


async def test_prune_keeps_the_latest_checkpoints_and_the_memory(service, thread_id):
    for text in ("我叫小明", "你好", "3加5等于多少", "今天天气怎么样", "再见"):
        await talk(service, thread_id, text)
    before = await memory(service, thread_id)
    async with service.db.connection() as conn:
        total = await count(conn, CHECKPOINTS_SQL, thread_id)
        assert total >= 5
        blobs_before = await (await conn.execute(BLOB_KEYS_SQL, (thread_id,))).fetchall()
        planned = await prune_thread(conn, thread_id=thread_id, keep=2, dry_run=True)
        assert planned.checkpoints == total - 2
        assert await count(conn, CHECKPOINTS_SQL, thread_id) == total  # a dry run deletes nothing
        done = await prune_thread(conn, thread_id=thread_id, keep=2)
        assert done == planned
        assert done.checkpoint_blobs > 0
        assert await count(conn, CHECKPOINTS_SQL, thread_id) == 2
        # Exactly the blobs the kept checkpoints use are left (small values live inline).
        blobs = await (await conn.execute(BLOB_KEYS_SQL, (thread_id,))).fetchall()
        used = await (await conn.execute(REFERENCED_KEYS_SQL, (thread_id,))).fetchall()
        assert blobs == [b for b in blobs_before if b in used]
        assert len(blobs_before) - len(blobs) == done.checkpoint_blobs
    assert await memory(service, thread_id) == before
    assert "小明" in await talk(service, thread_id, "我叫什么名字")  # the first turn is remembered
    after = await memory(service, thread_id)
    assert after[: len(before)] == before and len(after) > len(before)


async def test_prune_leaves_short_threads_alone(service, thread_id):
    other = f"{thread_id}-short"
    for text in ("一", "二", "三"):
        await talk(service, thread_id, text)
    await talk(service, other, "你好")
    async with service.db.connection() as conn:
        short_before = await count(conn, CHECKPOINTS_SQL, other)
        counts = await prune(conn, keep_checkpoints=1)
        assert counts.checkpoints >= 2
        assert await count(conn, CHECKPOINTS_SQL, thread_id) == 1
        assert await count(conn, CHECKPOINTS_SQL, other) == min(short_before, 1)
    assert len(await memory(service, other)) >= 2


async def test_keep_zero_keeps_every_checkpoint(service, thread_id):
    await talk(service, thread_id, "你好")
    await talk(service, thread_id, "再见")
    async with service.db.connection() as conn:
        total = await count(conn, CHECKPOINTS_SQL, thread_id)
        counts = await prune(conn, keep_checkpoints=0)
        assert counts.checkpoints == 0
        assert await count(conn, CHECKPOINTS_SQL, thread_id) == total


async def test_old_log_rows_and_calls_go_recent_ones_stay(service, thread_id):
    old, recent = f"{thread_id}-old", f"{thread_id}-new"
    async with service.db.connection() as conn:
        await add_old_rows(conn, old, age=timedelta(days=40), turns=3)
        await add_old_rows(conn, recent, age=timedelta(days=2))
        planned = await prune(
            conn, keep_checkpoints=0, log_retention_days=30, capture_retention_days=30, dry_run=True
        )
        assert (planned.turns, planned.messages, planned.llm_calls) == (3, 6, 3)
        assert await count(conn, COUNT_TURNS_SQL, old) == 3
        done = await prune(
            conn, keep_checkpoints=0, log_retention_days=30, capture_retention_days=30
        )
        assert done == planned
        for query in (COUNT_TURNS_SQL, COUNT_MESSAGES_SQL, COUNT_CALLS_SQL):
            assert await count(conn, query, old) == 0
            assert await count(conn, query, recent) >= 1


async def test_zero_days_keeps_the_log_forever(service, thread_id):
    async with service.db.connection() as conn:
        await add_old_rows(conn, thread_id, age=timedelta(days=4000))
        counts = await prune(conn, keep_checkpoints=0)
        assert counts.total == 0
        assert await count(conn, COUNT_TURNS_SQL, thread_id) == 1


async def test_log_is_deleted_in_batches(service, thread_id):
    async with service.db.connection() as conn:
        await add_old_rows(conn, thread_id, age=timedelta(days=400), turns=5)
        before = datetime.now(UTC) - timedelta(days=399)
        counts = await prune_log(conn, before=before, batch=2)
        assert counts.turns >= 5 and counts.messages >= 10  # other tests' old rows go too
        assert await count(conn, COUNT_TURNS_SQL, thread_id) == 0
        assert await count(conn, COUNT_MESSAGES_SQL, thread_id) == 0


async def test_one_retention_run_at_a_time(service, make_settings, retention_dsn):
    settings = make_settings(conn_str=retention_dsn)
    async with await psycopg.AsyncConnection.connect(retention_dsn, **CONNECTION_KWARGS) as other:
        assert (await (await other.execute(TRY_LOCK_SQL)).fetchone())["locked"]
        assert await run_once(service.db, settings=settings) is None
        await other.execute(UNLOCK_SQL)
    assert await run_once(service.db, settings=settings) is not None


async def test_periodic_job_prunes(service, make_settings, retention_dsn, thread_id):
    async with service.db.connection() as conn:
        await add_old_rows(conn, thread_id, age=timedelta(days=40))
    settings = make_settings(conn_str=retention_dsn, retention_interval_h=24, log_retention_days=30)
    async with retention_job(settings, db=service.db), service.db.connection() as conn:
        for _ in range(600):  # polled with a bound; the job runs first at start
            if await count(conn, COUNT_TURNS_SQL, thread_id) == 0:
                break
            await asyncio.sleep(0.05)
        assert await count(conn, COUNT_TURNS_SQL, thread_id) == 0


def test_cleanup_cli_dry_run_then_yes(retention_dsn, thread_id):
    with psycopg.connect(retention_dsn, row_factory=dict_row, autocommit=True) as conn:
        when = datetime.now(UTC) - timedelta(days=90)
        conn.execute(INSERT_CALL_SQL, (uuid.uuid4(), thread_id, when))
    flags = [
        "--conn-str",
        retention_dsn,
        "--keep-checkpoints",
        "0",
        "--log-retention-days",
        "0",
        "--capture-retention-days",
        "60",
    ]
    runner = CliRunner()
    dry = runner.invoke(main, ["cleanup", "--dry-run", *flags])
    assert dry.exit_code == 0, dry.output
    assert "llm_calls" in dry.output and "dry run: nothing deleted" in dry.output
    refused = runner.invoke(main, ["cleanup", *flags], input="n\n")
    assert "nothing deleted" in refused.output
    # No terminal and no answer piped in (cron): click said only "Aborted!".
    unasked = runner.invoke(main, ["cleanup", *flags])
    assert unasked.exit_code == 1
    assert unasked.stderr == "Error: no terminal to confirm on: pass --yes\n"
    done = runner.invoke(main, ["cleanup", "--yes", *flags])
    assert done.exit_code == 0, done.output
    # The table once: the plan, then what was deleted in one line (it was printed again).
    assert done.output.count("llm_calls") == 1, done.output
    assert re.search(r"\ndeleted [1-9]\d* rows\n$", done.output), done.output
    with psycopg.connect(retention_dsn, row_factory=dict_row) as conn:
        assert conn.execute(COUNT_CALLS_SQL, (thread_id,)).fetchone()["n"] == 0


async def test_prune_during_a_turn_keeps_that_turn(
    make_settings, retention_dsn, background_loop, thread_id
):
    simulator = Simulator()  # its own: a slow chat model holds the turn open
    url = background_loop.run(simulator.start(host="127.0.0.1", port=0))
    try:
        set_latency(simulator, "chat", ttft_ms=500)
        settings = make_settings(conn_str=retention_dsn, sim_url=url)
        async with open_service(settings) as service:
            for text in ("我叫小明", "你好", "再见"):
                await talk(service, thread_id, text)
            turn = asyncio.create_task(talk(service, thread_id, "谢谢"))
            async with service.db.connection() as conn:
                for _ in range(200):  # until the turn holds the thread
                    if await count(conn, LEASE_SQL, thread_id):
                        break
                    await asyncio.sleep(0.02)
                pruned = await prune_thread(conn, thread_id=thread_id, keep=1)
                assert pruned.checkpoints >= 2
            await turn
            messages = await memory(service, thread_id)
            assert messages[0] == ("human", "我叫小明") and messages[-2] == ("human", "谢谢")
            assert "小明" in await talk(service, thread_id, "我叫什么名字")
    finally:
        background_loop.run(simulator.stop())


async def test_forget_erases_a_thread_everywhere_and_nothing_else(
    service, make_settings, retention_dsn
):
    gone, kept = f"forget-{uuid.uuid4().hex[:8]}", f"kept-{uuid.uuid4().hex[:8]}"
    for thread in (gone, kept):
        await talk(service, thread, "我叫小明")

    async def rows(thread: str) -> dict[str, int]:
        async with service.db.connection() as conn:
            found = {
                "checkpoints": await count(conn, CHECKPOINTS_SQL, thread),
                "turns": await count(conn, COUNT_TURNS_SQL, thread),
                "messages": await count(conn, COUNT_MESSAGES_SQL, thread),
                "llm_calls": await count(conn, COUNT_CALLS_SQL, thread),
            }
        return found

    async def logged() -> bool:  # the log and the capture are written behind the turn
        return all((await rows(gone)).values()) and all((await rows(kept)).values())

    await eventually(logged)
    before = await rows(kept)
    settings = make_settings(conn_str=retention_dsn)
    plans: list[str] = []

    def confirm(plan: str) -> bool:
        plans.append(plan)
        return True

    report = await forget_command(settings, [gone], dry_run=False, confirm=confirm)
    assert plans[0].startswith("checkpoint_writes") and report.startswith("forgot 1 thread(s)")
    assert set((await rows(gone)).values()) == {0}
    assert await rows(kept) == before
    config = {"configurable": {"thread_id": gone}}
    assert await service.agent.checkpointer.aget_tuple(config) is None
    assert await talk(service, gone, "你好")  # the id starts afresh


def test_forget_cli_counts_asks_refuses_a_busy_thread_and_erases(retention_dsn, thread_id):
    busy = f"{thread_id}-busy"
    with psycopg.connect(retention_dsn, row_factory=dict_row, autocommit=True) as conn:
        when = datetime.now(UTC)
        turn_id = uuid.uuid4()
        conn.execute(INSERT_TURN_SQL, (turn_id, thread_id, when))
        conn.execute(INSERT_MESSAGE_SQL, (thread_id, turn_id, 0, when))
        conn.execute(INSERT_CALL_SQL, (uuid.uuid4(), thread_id, when))
        conn.execute(
            "INSERT INTO thread_leases VALUES (%s, 'a worker', now() + interval '1 minute')",
            (busy,),
        )
    runner = CliRunner()

    def forget(*args: str, answer: str | None = None):
        return runner.invoke(main, ["forget", "--conn-str", retention_dsn, *args], input=answer)

    dry = forget(thread_id, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert [
        line.split() for line in dry.output.splitlines() if line.startswith(("t", "m", "l"))
    ] == [
        ["messages", "1"],
        ["turns", "1"],
        ["llm_calls", "1"],
    ]
    assert forget(thread_id, answer="n\n").output.endswith("nothing deleted\n")
    for blank in ("", "  "):  # was taken, and matched no thread
        refused = forget(blank, "--yes")
        assert refused.exit_code == 2
        assert "Invalid value for 'THREAD_ID...': must be 1 to 200 characters" in refused.output
    refused = forget(thread_id, busy, "--yes")
    assert refused.exit_code == 1
    assert refused.output == f"Error: a turn is running on '{busy}': forget it once it has ended\n"
    done = forget(thread_id, "--yes")  # the refusal above deleted nothing: all or none
    assert done.exit_code == 0 and done.output.endswith("\nforgot 1 thread(s): 3 rows\n")
    assert done.output.count("llm_calls") == 1, done.output  # the table once, not twice
    assert forget(thread_id, "--yes").output.endswith("nothing to forget\n")
    with psycopg.connect(retention_dsn, row_factory=dict_row) as conn:
        assert conn.execute(LEASE_SQL, (thread_id,)).fetchone()["n"] == 0
        assert conn.execute(LEASE_SQL, (busy,)).fetchone()["n"] == 1
