"""The pool's checkout check: no round trip for a connection just used, a new one for a dead one."""

from __future__ import annotations

import asyncio

import psycopg

from lang_agent.pool import CheckoutCheck, Database


class CountingCheck(CheckoutCheck):
    """CheckoutCheck that counts the pings it sends."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.pings = 0

    async def ping(self, conn: psycopg.AsyncConnection) -> None:
        self.pings += 1
        await super().ping(conn)


async def _backend(db: Database) -> int:
    async with db.connection() as conn:
        return (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"]


async def _open(dsn: str, check: CheckoutCheck) -> Database:
    db = Database(dsn, max_size=1, checkout=check)
    await db.open(apply_schema=False)
    return db


async def test_a_connection_just_returned_is_handed_out_without_a_ping(pg_dsn):
    check = CountingCheck()
    db = await _open(pg_dsn, check)
    try:
        first = await _backend(db)  # never returned before: pinged
        pings = check.pings
        assert [await _backend(db) for _ in range(5)] == [first] * 5
        assert check.pings == pings
    finally:
        await db.close()


async def test_an_idle_connection_past_the_trusted_time_is_pinged(pg_dsn):
    check = CountingCheck(trusted_idle_s=0.05)
    db = await _open(pg_dsn, check)
    try:
        await _backend(db)
        pings = check.pings
        await asyncio.sleep(0.2)
        await _backend(db)
        assert check.pings == pings + 1
    finally:
        await db.close()


async def test_a_terminated_backend_is_replaced_not_handed_out(pg_dsn):
    # Postgres restarting or an admin ending sessions: the server says FATAL and closes the
    # socket, so the next checkout pings, finds it dead and connects afresh.
    check = CountingCheck()
    db = await _open(pg_dsn, check)
    try:
        old = await _backend(db)
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (old,))
        await asyncio.sleep(0.1)  # the FATAL message reaches the idle socket
        pings = check.pings
        assert await _backend(db) != old
        assert check.pings > pings
    finally:
        await db.close()
