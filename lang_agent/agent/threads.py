"""One turn per thread at a time: an in-process FIFO lock, then a Postgres lease for processes.

What a request finds on a busy thread is its policy: "wait" (in line, up to BUSY_WAIT_S),
"reject" (ThreadBusy at once), or "preempt" (barge-in: the turns holding or awaiting the
thread in this process end with Preempted, then it waits in line for the thread as "wait"
does, so the newest request runs next and never beside another). A turn held by another
process cannot be reached from here, nor one whose answer is whole (`settle`): "preempt"
waits for those as "wait" does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from lang_agent.agent.events import BusyPolicy
from lang_agent.errors import Preempted, ThreadBusy
from lang_agent.pool import Database

logger = logging.getLogger(__name__)

# A lease whose holder died expires, so a crashed worker cannot wedge a thread for ever. One
# this process holds is stale too: it is only sought under the thread's in-process lock, so
# such a lease is one whose release was lost (the database was down at the time).
ACQUIRE_LEASE_SQL = """
INSERT INTO thread_leases (thread_id, owner, expires_at)
VALUES (%(thread_id)s, %(owner)s, now() + make_interval(secs => %(ttl)s))
ON CONFLICT (thread_id) DO UPDATE
    SET owner = excluded.owner, expires_at = excluded.expires_at
    WHERE thread_leases.expires_at < now() OR starts_with(thread_leases.owner, %(process)s)
RETURNING owner
"""
RELEASE_LEASE_SQL = "DELETE FROM thread_leases WHERE thread_id = %s AND owner = %s"

Query = tuple[str, Sequence[Any]]

POLL_START_S = 0.02
POLL_MAX_S = 0.25


@dataclass
class _Thread:
    """One thread's in-process state, while requests hold it or wait for it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    # Preemptible: holding or waiting, until the answer is whole (`settle`).
    turns: set[asyncio.Task[Any]] = field(default_factory=set)
    preempted: set[asyncio.Task[Any]] = field(default_factory=set)  # cancelled by a newer one


class ThreadLocks:
    """`async with locks.hold(thread_id):` runs the block as the thread's only turn."""

    def __init__(
        self, db: Database, *, mode: BusyPolicy, wait_s: float, lease_ttl_s: float
    ) -> None:
        self.db = db
        self.mode = mode
        self.wait_s = wait_s
        self.lease_ttl_s = lease_ttl_s
        self._local: dict[str, _Thread] = {}
        self._process = f"{uuid.uuid4().hex}:"  # prefixes the owner of every lease we take

    @contextlib.asynccontextmanager
    async def hold(
        self,
        thread_id: str,
        *,
        read: Query | None = None,
        busy: BusyPolicy | None = None,
        preemptible: bool = False,
    ) -> AsyncIterator[DictRow | None]:
        """Yields the first row of `read` (None without one), a query run in the lease's own
        round trip, after the lease is taken: it sees whatever the previous holder saved
        before giving the thread back. `busy` overrides BUSY_THREAD for this request; a
        `preemptible` holder (a turn, not a forget) is one a "preempt" request may end: its
        task is cancelled, and the block raises Preempted instead of CancelledError."""
        mode = busy or self.mode
        thread = self._local.setdefault(thread_id, _Thread())
        thread.users += 1
        task = asyncio.current_task()
        try:
            if mode == "reject" and thread.lock.locked():
                raise ThreadBusy("another turn is running on this thread")
            if mode == "preempt":
                for turn in thread.turns - thread.preempted:
                    thread.preempted.add(turn)
                    turn.cancel()
            if preemptible and task is not None:
                thread.turns.add(task)
            deadline = time.monotonic() + self.wait_s
            try:
                async with asyncio.timeout(self.wait_s):
                    await thread.lock.acquire()
            except TimeoutError as exc:
                raise ThreadBusy("the thread stayed busy for too long") from exc
            try:
                owner, row = await self._acquire_lease(thread_id, deadline, read, mode=mode)
                try:
                    yield row
                finally:
                    thread.turns.discard(task)  # its work is over: only the lease goes back
                    # Shielded: a cancelled turn must still give the thread back.
                    await asyncio.shield(self._release_lease(thread_id, owner))
            finally:
                thread.lock.release()
        except asyncio.CancelledError as exc:
            # Our cancel, and no one else's (a hang-up, the shutdown) besides: the turn was
            # ended by a newer request, and its caller hears that, not a bare cancel.
            if task is not None and task in thread.preempted and task.uncancel() == 0:
                raise Preempted("a newer request on this thread ended this turn") from exc
            raise
        finally:
            thread.turns.discard(task)
            thread.preempted.discard(task)
            thread.users -= 1
            if thread.users == 0:
                del self._local[thread_id]

    def settle(self, thread_id: str, *, turn: asyncio.Task[Any] | None) -> None:
        """`turn`, holding the thread, has its whole answer and writes its memory next: from
        here on a newer request waits for it, as for a turn that is done, and does not end it.
        A cancel cannot take back a write on its way to Postgres, so a turn ended then would
        be told it was preempted while its memory kept it."""
        thread = self._local.get(thread_id)
        if thread is not None:
            thread.turns.discard(turn)

    async def _acquire_lease(
        self, thread_id: str, deadline: float, read: Query | None, *, mode: BusyPolicy
    ) -> tuple[str, DictRow | None]:
        owner = self._process + uuid.uuid4().hex
        params = {
            "thread_id": thread_id,
            "owner": owner,
            "ttl": self.lease_ttl_s,
            "process": self._process,
        }
        pause = POLL_START_S
        while True:
            async with self.db.connection() as conn:
                granted, row = await _lease_and_read(conn, params, read)
            if granted is not None:
                return owner, row
            if mode == "reject" or time.monotonic() + pause > deadline:
                raise ThreadBusy("another turn is running on this thread")
            await asyncio.sleep(pause)
            pause = min(pause * 2, POLL_MAX_S)

    async def _release_lease(self, thread_id: str, owner: str) -> None:
        try:
            async with self.db.connection() as conn:
                await conn.execute(RELEASE_LEASE_SQL, (thread_id, owner))
        except Exception:  # the lease expires by itself; a failed release must not fail the turn
            logger.exception("could not release the lease on thread %s", thread_id)


async def _lease_and_read(
    conn: AsyncConnection, params: dict[str, Any], read: Query | None
) -> tuple[DictRow | None, DictRow | None]:
    """The lease's row (None: not granted) and `read`'s first row, in one round trip."""
    if read is None:
        return await (await conn.execute(ACQUIRE_LEASE_SQL, params)).fetchone(), None
    # Binary, as AsyncPostgresSaver reads: its loaders expect that form.
    async with conn.cursor(binary=True) as after:
        async with conn.pipeline():
            lease = await conn.execute(ACQUIRE_LEASE_SQL, params)
            await after.execute(*read)
        return await lease.fetchone(), await after.fetchone()
