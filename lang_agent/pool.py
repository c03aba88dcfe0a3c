"""Postgres pools that ride out outages: connections checked without a round trip on the hot
path, steady reconnection, one log line per outage, and `Database`, the pool with the schema."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import select
import time
import weakref
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.base import AttemptWithBackoff

from lang_agent.db import CONNECTION_KWARGS, first_line, mask_dsn, migrate

logger = logging.getLogger(__name__)

# A connection back in the pool this recently, whose socket has nothing to read, is taken as
# alive without a round trip; an older one is pinged as the pool does by default.
TRUSTED_IDLE_S = 10.0


class CheckoutCheck:
    """The pool's `check` on checkout, without a round trip on the hot path.

    The pool's default pings every connection it hands out: one more round trip before each
    query of a turn (lease, checkpoint read and write, release). A server that ends a session
    (restart, shutdown, `pg_terminate_backend`) sends a FATAL message and closes the socket, so
    an idle connection with something to read is the one to ping; one that came back a moment
    ago with a quiet socket is alive. A connection idle for longer than `TRUSTED_IDLE_S` is
    pinged anyway, for a peer that vanished without a word.
    """

    def __init__(self, *, trusted_idle_s: float = TRUSTED_IDLE_S) -> None:
        self.trusted_idle_s = trusted_idle_s
        self._returned: weakref.WeakKeyDictionary[AsyncConnection, float] = (
            weakref.WeakKeyDictionary()
        )

    async def check(self, conn: AsyncConnection) -> None:
        returned = self._returned.pop(conn, None)
        if returned is None or time.monotonic() - returned > self.trusted_idle_s or _has_news(conn):
            await self.ping(conn)

    async def ping(self, conn: AsyncConnection) -> None:
        """The round trip: raises when the connection is dead, so the pool replaces it."""
        await AsyncConnectionPool.check_connection(conn)

    async def returned(self, conn: AsyncConnection) -> None:
        """The pool's `reset` callback: the connection is back, idle and healthy."""
        self._returned[conn] = time.monotonic()


def _has_news(conn: AsyncConnection) -> bool:
    """True when the idle connection's socket is readable (a message or EOF) or gone."""
    try:
        fd = conn.fileno()
        if not hasattr(select, "poll"):  # Windows
            return bool(select.select([fd], [], [], 0)[0])
        # poll, not select: a busy server's descriptors pass select's limit of 1024.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):
        return True


# psycopg_pool tries to replace a lost connection 1, 3, 7, 15, 31… s after losing it. After an
# outage of a minute its next try could come half a minute after the database was back, and
# every turn on a thread failed until then. Past this delay it tries at a steady pace.
RECONNECT_MAX_DELAY_S = 2.0


class _SteadyBackoff(AttemptWithBackoff):
    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, RECONNECT_MAX_DELAY_S)


# psycopg_pool warns at each reconnection attempt ("error connecting in 'pool-1': …", libpq's
# hint on a second line), each pool up to every RECONNECT_MAX_DELAY_S: an outage buried the
# server's own lines. Pool reports an outage itself, once as it starts and once as it ends.
_CONNECT_ERROR = "error connecting in %r: %s"


class _ConnectErrorsReportedByPool(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _CONNECT_ERROR


class Pool(AsyncConnectionPool):
    """AsyncConnectionPool whose reconnection attempts come at most RECONNECT_MAX_DELAY_S
    apart (it still gives up after `reconnect_timeout`), and that logs an outage in two lines.
    (`_add_connection` and `_connect` are the pool's own hooks for each attempt; if a release
    renames them, the outage test in test_faults_postgres.py fails.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._down_since: float | None = None
        pool_logger = logging.getLogger("psycopg.pool")
        if not any(isinstance(f, _ConnectErrorsReportedByPool) for f in pool_logger.filters):
            pool_logger.addFilter(_ConnectErrorsReportedByPool())

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        attempt = attempt or _SteadyBackoff(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing)

    async def _connect(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109 (the pool's own signature)
        try:
            conn = await super()._connect(timeout)
        except psycopg.Error as exc:
            if self._down_since is None:
                self._down_since = time.monotonic()
                logger.warning(
                    "pool %r cannot reach the database (%s); it keeps trying",
                    self.name,
                    mask_dsn(first_line(exc)),
                )
            raise
        if self._down_since is not None:
            down_s, self._down_since = time.monotonic() - self._down_since, None
            logger.warning("pool %r reaches the database again, after %.0f s", self.name, down_s)
        return conn


# /health's look at the database: how long it waits for an answer, and how often it asks.
PROBE_TIMEOUT_S = 2.0
PROBE_EVERY_S = 1.0


class Database:
    """A pool over one Postgres, with the schema applied."""

    def __init__(
        self,
        dsn: str,
        *,
        max_size: int = 20,
        min_size: int = 1,
        timeout: float = 10.0,
        checkout: CheckoutCheck | None = None,
    ) -> None:
        self.dsn = dsn
        self._probe: asyncio.Future[str | None] | None = None
        self._probed_at = 0.0
        checkout = checkout or CheckoutCheck()
        self.pool = Pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            open=False,
            kwargs=CONNECTION_KWARGS,
            check=checkout.check,
            reset=checkout.returned,
            max_idle=300,
            max_lifetime=1800,
            timeout=timeout,
        )

    def __repr__(self) -> str:
        return f"Database({mask_dsn(self.dsn)!r})"

    async def open(self, *, apply_schema: bool = True) -> None:
        await self.pool.open(wait=True, timeout=30)
        if apply_schema:
            async with self.pool.connection() as conn:
                version = await migrate(conn)
            logger.info("database %s at schema version %s", mask_dsn(self.dsn), version)

    async def close(self) -> None:
        await self.pool.close()

    async def health(self) -> dict[str, Any]:
        """The part of a /health answer that is the database's: `status` is `degraded` while
        it does not answer (`problem`), with why."""
        problem = await self.problem()
        status = "ok" if problem is None else "degraded"
        return {"status": status, "database": {"ok": problem is None, "error": problem}}

    async def problem(self) -> str | None:
        """None when a pooled connection answers within PROBE_TIMEOUT_S, else why not (one
        line, masked). One probe a second at most, whoever asks: /health asks unauthenticated."""
        now = time.monotonic()
        if self._probe is None or now - self._probed_at >= PROBE_EVERY_S:
            self._probe, self._probed_at = asyncio.ensure_future(self._ping()), now
        return await asyncio.shield(self._probe)

    async def _ping(self) -> str | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), self.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except TimeoutError:
            return f"no answer within {PROBE_TIMEOUT_S:g} s"
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            return mask_dsn(first_line(exc))
        return None

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection]:
        async with self.pool.connection() as conn:
            yield conn
