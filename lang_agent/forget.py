"""`lang-agent forget`: erase threads everywhere, for a user who asks to be forgotten.

`DELETE /v1/threads/{id}` forgets a thread's memory only: its conversation log and its
captured model calls stay, as the operator's record, until their retention period. This erases
all three: the checkpoints (with their writes and blobs), the turns with their messages, and
the `llm_calls` rows of the thread. One transaction does it all, holding each thread's lease,
so a turn cannot start on a thread half erased; a thread with a turn running is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from psycopg import AsyncConnection, sql

from lang_agent.db import CommandError, command_connection, existing_tables
from lang_agent.settings import Settings

# Children before parents; the checkpoint tables exist only once a server has run.
TABLES = (
    "checkpoint_writes",
    "checkpoint_blobs",
    "checkpoints",
    "messages",
    "turns",
    "llm_calls",
)
# Taken as a turn takes it, unless a live turn holds it; gone again when the transaction ends.
LEASE_SQL = """
INSERT INTO thread_leases (thread_id, owner, expires_at)
SELECT t, 'lang-agent forget', now() + interval '5 minutes' FROM unnest(%s::text[]) AS t
ON CONFLICT (thread_id) DO UPDATE
    SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE thread_leases.expires_at < now()
RETURNING thread_id
"""
RELEASE_SQL = "DELETE FROM thread_leases WHERE thread_id = ANY(%s)"


def _statement(verb: str, table: str) -> sql.Composed:
    where = sql.SQL("{} FROM {} WHERE thread_id = ANY(%s)")
    return where.format(sql.SQL(verb), sql.Identifier(table))


async def erase(
    conn: AsyncConnection, thread_ids: Sequence[str], *, dry_run: bool = False
) -> dict[str, int]:
    """Rows per table deleted (or, in a dry run, that would be) for these exact thread ids."""
    ids = list(thread_ids)
    counts: dict[str, int] = {}
    async with conn.transaction(force_rollback=dry_run):
        present = await existing_tables(conn, TABLES)
        cursor = await conn.execute(LEASE_SQL, (ids,))
        leased = {row["thread_id"] for row in await cursor.fetchall()}
        busy = [t for t in ids if t not in leased]
        if busy:
            raise CommandError(
                f"a turn is running on {', '.join(map(repr, busy))}: forget it once it has ended"
            )
        for table in (t for t in TABLES if t in present):
            if dry_run:
                cursor = await conn.execute(_statement("SELECT count(*) AS n", table), (ids,))
                counts[table] = int((await cursor.fetchone())["n"])
            else:
                counts[table] = (await conn.execute(_statement("DELETE", table), (ids,))).rowcount
        await conn.execute(RELEASE_SQL, (ids,))
    return counts


def describe(counts: dict[str, int]) -> str:
    return "\n".join(f"{table:<18} {n:>9}" for table, n in counts.items())


async def forget_command(
    settings: Settings, thread_ids: Sequence[str], *, dry_run: bool, confirm: Callable[[str], bool]
) -> str:
    """Count, ask `confirm(plan)` (which shows the plan), erase; returns the text to print
    after it."""
    async with command_connection(settings) as conn:
        planned = await erase(conn, thread_ids, dry_run=True)
        plan = describe(planned)
        if dry_run:
            return f"{plan}\ndry run: nothing deleted"
        if not any(planned.values()):
            return f"{plan}\nnothing to forget"
        if not confirm(plan):
            return "nothing deleted"
        deleted = await erase(conn, thread_ids)
    return f"forgot {len(thread_ids)} thread(s): {sum(deleted.values())} rows"
