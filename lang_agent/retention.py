"""Retention: prune old checkpoints, conversation log rows and captured calls, in small batches.

LangGraph's saver keeps every checkpoint for ever (reference/pitfalls.md §3). `prune()` keeps the
latest `keep_checkpoints` checkpoints of each thread and namespace, deletes the rest with their
pending writes, and deletes the blobs only those checkpoints used. Each thread is one short
REPEATABLE READ transaction, as the saver's own `keep_latest` prune does; so a turn that saves
meanwhile is neither seen nor harmed: its new blobs were never used by a deleted checkpoint,
and the blobs it shares with its parent belong to the latest checkpoint, which is always kept.
The conversation log (`turns` with their `messages`) and `llm_calls` lose rows older than their
retention period, a batch per statement, so locks stay short and autovacuum keeps up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection

from lang_agent.capture.query import CallFilter, count_calls, delete_calls
from lang_agent.db import command_connection, existing_tables
from lang_agent.pool import Database
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

BATCH = 5000

# Threads (and namespaces) holding more checkpoints than are kept.
OVERFULL_THREADS_SQL = """
SELECT thread_id, checkpoint_ns FROM checkpoints
GROUP BY thread_id, checkpoint_ns HAVING count(*) > %s
ORDER BY thread_id, checkpoint_ns
"""
SNAPSHOT_SQL = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"
# Checkpoint ids are uuid6: their text order is their time order (the saver sorts the same way).
KEPT_CHECKPOINTS_SQL = """
SELECT checkpoint_id FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = %s
ORDER BY checkpoint_id DESC LIMIT %s
"""
UNKEPT_CHECKPOINTS_SQL = """
SELECT checkpoint_id FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id <> ALL(%s)
"""
# The channel versions (blob keys) a set of checkpoints uses.
CHANNEL_VERSIONS_SQL = """
SELECT DISTINCT v.key AS channel, v.value AS version
FROM checkpoints c
CROSS JOIN LATERAL jsonb_each_text(c.checkpoint -> 'channel_versions') AS v
WHERE c.thread_id = %s AND c.checkpoint_ns = %s AND c.checkpoint_id = ANY(%s)
"""
# Writes go by the checkpoints deleted: a run can commit a step's writes before its checkpoint.
COUNT_WRITES_SQL = """
SELECT count(*) AS n FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
DELETE_WRITES_SQL = """
DELETE FROM checkpoint_writes
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
DELETE_CHECKPOINTS_SQL = """
DELETE FROM checkpoints
WHERE thread_id = %s AND checkpoint_ns = %s AND checkpoint_id = ANY(%s)
"""
# The oldest kept checkpoint must not name a parent that is gone.
DETACH_PARENTS_SQL = """
UPDATE checkpoints SET parent_checkpoint_id = NULL
WHERE thread_id = %s AND checkpoint_ns = %s
AND checkpoint_id = ANY(%s) AND parent_checkpoint_id <> ALL(%s)
"""
COUNT_BLOBS_SQL = """
SELECT count(*) AS n FROM checkpoint_blobs
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = ANY(%s)
"""
DELETE_BLOBS_SQL = """
DELETE FROM checkpoint_blobs
WHERE thread_id = %s AND checkpoint_ns = %s AND channel = %s AND version = ANY(%s)
"""

COUNT_LOG_SQL = """
SELECT count(*) AS turns,
       (SELECT count(*) FROM messages m
        WHERE m.turn_id IN (SELECT turn_id FROM turns WHERE started_at < %s)) AS messages
FROM turns WHERE started_at < %s
"""
# One batch of old turns and their messages, in one statement (so one transaction). `ctid =
# ANY(ARRAY(…))` plans as a TID scan, where `ctid IN (…)` may scan the whole table per batch.
DELETE_LOG_BATCH_SQL = """
WITH gone AS (
    DELETE FROM turns WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM turns WHERE started_at < %s LIMIT %s
    ))
    RETURNING turn_id
), gone_messages AS (
    DELETE FROM messages m USING gone WHERE m.turn_id = gone.turn_id RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS turns, (SELECT count(*) FROM gone_messages) AS messages
"""

# One retention run at a time across workers and hosts; the others skip their turn.
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('lang_agent_retention')) AS locked"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('lang_agent_retention'))"


@dataclass
class PruneCounts:
    """Rows deleted (or, in a dry run, that would be)."""

    checkpoints: int = 0
    checkpoint_writes: int = 0
    checkpoint_blobs: int = 0
    turns: int = 0
    messages: int = 0
    llm_calls: int = 0

    def add(self, other: PruneCounts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def total(self) -> int:
        return sum(self.as_dict().values())


def _cutoff(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


async def _rows(conn: AsyncConnection, query: str, params: tuple[Any, ...]) -> list[dict]:
    cursor = await conn.execute(query, params, prepare=False)
    return list(await cursor.fetchall())


async def _count(conn: AsyncConnection, query: str, params: tuple[Any, ...]) -> int:
    rows = await _rows(conn, query, params)
    return int(rows[0]["n"]) if rows else 0


async def prune_thread(
    conn: AsyncConnection, *, thread_id: str, namespace: str = "", keep: int, dry_run: bool = False
) -> PruneCounts:
    """Keep a thread's `keep` latest checkpoints in `namespace`; delete the rest and their data."""
    if keep < 1:
        raise ValueError("keep at least one checkpoint per thread")
    counts = PruneCounts()
    key = (thread_id, namespace)
    async with conn.transaction(force_rollback=dry_run):
        await conn.execute(SNAPSHOT_SQL)
        kept = [r["checkpoint_id"] for r in await _rows(conn, KEPT_CHECKPOINTS_SQL, (*key, keep))]
        unkept = [
            r["checkpoint_id"] for r in await _rows(conn, UNKEPT_CHECKPOINTS_SQL, (*key, kept))
        ]
        if not unkept:
            return counts
        freed = await _rows(conn, CHANNEL_VERSIONS_SQL, (*key, unkept))
        used = await _rows(conn, CHANNEL_VERSIONS_SQL, (*key, kept))
        still_used = {(r["channel"], r["version"]) for r in used}
        garbage: dict[str, list[str]] = {}
        for r in freed:
            if (r["channel"], r["version"]) not in still_used:
                garbage.setdefault(r["channel"], []).append(r["version"])
        counts.checkpoints = len(unkept)
        if dry_run:
            counts.checkpoint_writes = await _count(conn, COUNT_WRITES_SQL, (*key, unkept))
            for channel, versions in garbage.items():
                counts.checkpoint_blobs += await _count(
                    conn, COUNT_BLOBS_SQL, (*key, channel, versions)
                )
            return counts
        cursor = await conn.execute(DELETE_WRITES_SQL, (*key, unkept), prepare=False)
        counts.checkpoint_writes = cursor.rowcount
        cursor = await conn.execute(DELETE_CHECKPOINTS_SQL, (*key, unkept), prepare=False)
        counts.checkpoints = cursor.rowcount
        await conn.execute(DETACH_PARENTS_SQL, (*key, kept, kept), prepare=False)
        for channel, versions in garbage.items():
            cursor = await conn.execute(DELETE_BLOBS_SQL, (*key, channel, versions), prepare=False)
            counts.checkpoint_blobs += cursor.rowcount
    return counts


async def prune_checkpoints(
    conn: AsyncConnection, *, keep: int, dry_run: bool = False
) -> PruneCounts:
    """Every thread down to its `keep` latest checkpoints; `keep` 0 keeps everything."""
    counts = PruneCounts()
    present = "checkpoints" in await existing_tables(conn, ["checkpoints"])
    if keep <= 0 or not present:  # no checkpoint table until the server has run once
        return counts
    for row in await _rows(conn, OVERFULL_THREADS_SQL, (keep,)):
        counts.add(
            await prune_thread(
                conn,
                thread_id=row["thread_id"],
                namespace=row["checkpoint_ns"],
                keep=keep,
                dry_run=dry_run,
            )
        )
    return counts


async def prune_log(
    conn: AsyncConnection, *, before: datetime, dry_run: bool = False, batch: int = BATCH
) -> PruneCounts:
    """Turns started before `before`, with their messages."""
    if dry_run:
        row = (await _rows(conn, COUNT_LOG_SQL, (before, before)))[0]
        return PruneCounts(turns=int(row["turns"]), messages=int(row["messages"]))
    counts = PruneCounts()
    while True:
        row = (await _rows(conn, DELETE_LOG_BATCH_SQL, (before, batch)))[0]
        counts.turns += int(row["turns"])
        counts.messages += int(row["messages"])
        if row["turns"] < batch:
            return counts


async def prune_calls(
    conn: AsyncConnection, *, before: datetime, dry_run: bool = False, batch: int = BATCH
) -> PruneCounts:
    """Captured calls created before `before` (the capture layer's own batched delete)."""
    filters = CallFilter(before=before.isoformat())
    if dry_run:
        return PruneCounts(llm_calls=await count_calls(conn, filters))
    return PruneCounts(llm_calls=await delete_calls(conn, filters, batch=batch))


async def prune(
    conn: AsyncConnection,
    *,
    keep_checkpoints: int,
    log_retention_days: float = 0,
    capture_retention_days: float = 0,
    dry_run: bool = False,
) -> PruneCounts:
    """Apply every retention rule once; a rule set to 0 keeps its rows."""
    counts = await prune_checkpoints(conn, keep=keep_checkpoints, dry_run=dry_run)
    if log_retention_days > 0:
        before = _cutoff(log_retention_days)
        counts.add(await prune_log(conn, before=before, dry_run=dry_run))
    if capture_retention_days > 0:
        before = _cutoff(capture_retention_days)
        counts.add(await prune_calls(conn, before=before, dry_run=dry_run))
    return counts


async def prune_with_settings(
    conn: AsyncConnection, *, settings: Settings, dry_run: bool = False
) -> PruneCounts:
    return await prune(
        conn,
        keep_checkpoints=settings.keep_checkpoints,
        log_retention_days=settings.log_retention_days,
        capture_retention_days=settings.capture_retention_days,
        dry_run=dry_run,
    )


async def run_once(db: Database, *, settings: Settings) -> PruneCounts | None:
    """One retention run under a cluster-wide lock; None when another process holds it."""
    async with db.connection() as conn:
        row = (await _rows(conn, TRY_LOCK_SQL, ()))[0]
        if not row["locked"]:
            logger.info("retention: another process is pruning; skipped")
            return None
        try:
            counts = await prune_with_settings(conn, settings=settings)
        finally:
            await conn.execute(UNLOCK_SQL)
    logger.info("retention: deleted %s", counts.as_dict())
    return counts


async def retention_task(settings: Settings, *, db: Database) -> None:
    """Prune now and then every `retention_interval_h` hours, until cancelled."""
    interval_s = settings.retention_interval_h * 3600
    if interval_s <= 0:
        return
    while True:
        try:
            await run_once(db, settings=settings)
        except Exception:  # a background job: a bad run is logged, the next one tries again
            logger.exception("retention run failed")
        await asyncio.sleep(interval_s)


@contextlib.asynccontextmanager
async def retention_job(settings: Settings, *, db: Database) -> AsyncIterator[None]:
    """Own the periodic retention task for the lifespan (nothing runs when the interval is 0)."""
    if settings.retention_interval_h <= 0:
        yield
        return
    task = asyncio.create_task(retention_task(settings, db=db), name="retention")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def describe(counts: PruneCounts, *, settings: Settings) -> str:
    """A table of rows per table, with the rule that selects them."""
    keep = settings.keep_checkpoints
    rules = {
        "checkpoints": f"all but the latest {keep} per thread" if keep else "kept (0: keep all)",
        "turns": _days_rule(settings.log_retention_days),
        "llm_calls": _days_rule(settings.capture_retention_days),
    }
    lines = []
    for table, n in counts.as_dict().items():
        rule = rules.get(table, "")
        lines.append(f"{table:<18} {n:>9}  {rule}".rstrip())
    return "\n".join(lines)


def _days_rule(days: float) -> str:
    return f"older than {days:g} days" if days > 0 else "kept (0: keep forever)"


async def cleanup_command(
    settings: Settings, *, dry_run: bool, confirm: Callable[[str], bool]
) -> str:
    """`lang-agent cleanup`: count, ask `confirm(plan)` (which shows the plan), prune; returns
    the text to print after it."""
    async with command_connection(settings) as conn:
        planned = await prune_with_settings(conn, settings=settings, dry_run=True)
        plan = describe(planned, settings=settings)
        if dry_run:
            return f"{plan}\ndry run: nothing deleted"
        if planned.total == 0:
            return f"{plan}\nnothing to delete"
        if not confirm(plan):
            return "nothing deleted"
        deleted = await prune_with_settings(conn, settings=settings)
    return f"deleted {deleted.total} rows"
