"""The LangGraph checkpointer of thread memory: AsyncPostgresSaver over our pool, lock-free,
its (de)serialisation done on the event loop instead of in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from psycopg_pool import AsyncConnectionPool

_inline = contextvars.ContextVar("lang_agent_inline_to_thread", default=False)


class LoopExecutor(ThreadPoolExecutor):
    """A loop's default executor that runs a call in the calling thread while `inline()` is on
    in the caller's context, and in a worker thread as usual otherwise."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not _inline.get():
            return super().submit(fn, *args, **kwargs)
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, as a worker would
            future.set_exception(exc)
        return future


def install_loop_executor() -> None:
    """Make the running loop's default executor a LoopExecutor (once per loop)."""
    loop = asyncio.get_running_loop()
    if not getattr(loop, "_lang_agent_executor", False):
        loop.set_default_executor(LoopExecutor(thread_name_prefix="lang-agent"))
        loop._lang_agent_executor = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def inline() -> Iterator[None]:
    token = _inline.set(True)
    try:
        yield
    finally:
        _inline.reset(token)


SETUP_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext('lang_agent_checkpoint_setup')) AS locked"
SETUP_WAIT_S = 120.0
SETUP_UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext('lang_agent_checkpoint_setup'))"


class PooledSaver(AsyncPostgresSaver):
    """AsyncPostgresSaver over our pool, without its instance-wide asyncio.Lock, and without
    a thread hop per checkpoint.

    The saver takes the lock around every cursor, even when each operation checks out its own
    pooled connection, so all threads' checkpoint reads and writes queued behind one another
    (langgraph#7259; pitfalls §3). With a pool (never a shared pipeline) nothing needs it.

    It also (de)serialises each checkpoint with `asyncio.to_thread`. A voice turn's memory is a
    few kilobytes, so the hop to a worker and back (and the wait for the GIL under load) cost
    more than the work: about a tenth of the throughput at 50 concurrent turns. Under a
    LoopExecutor (`install_loop_executor`) that work runs inline; elsewhere it hops as before.
    """

    def __init__(self, pool: AsyncConnectionPool) -> None:
        super().__init__(pool)
        self.lock = contextlib.nullcontext()  # type: ignore[assignment]

    async def setup(self) -> None:
        """LangGraph's table setup, one process at a time: workers starting together on a new
        database both created its tables and one died (UniqueViolation on
        checkpoint_migrations). It runs on one connection holding a session advisory lock; the
        others poll for it rather than wait in a statement, since a waiting statement is a
        transaction that the setup's CREATE INDEX CONCURRENTLY would wait for in turn."""
        async with self.conn.connection() as conn:  # type: ignore[union-attr]
            async with asyncio.timeout(SETUP_WAIT_S):
                while True:
                    row = await (await conn.execute(SETUP_LOCK_SQL)).fetchone()
                    if row["locked"]:
                        break
                    await asyncio.sleep(0.1)
            try:
                await AsyncPostgresSaver(conn).setup()
            finally:
                await conn.execute(SETUP_UNLOCK_SQL)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        with inline():
            return await super().aget_tuple(config)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        with inline():
            return await super().aput(config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        with inline():
            await super().aput_writes(config, writes, task_id, task_path)
