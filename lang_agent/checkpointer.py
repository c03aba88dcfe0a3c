"""The LangGraph checkpointer of thread memory: AsyncPostgresSaver over our pool, lock-free,
its (de)serialisation done on the event loop instead of in a worker thread, chat messages
loaded without validating them again, and its first read of a turn answerable from a row
fetched beside the thread's lease. A long memory one turn writes is handed to the next as it
is, not decoded again."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import ormsgpack
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.jsonplus import EXT_PYDANTIC_V2, JsonPlusSerializer
from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from lang_agent.db import (
    APPLY_AS_OWNER,
    DDL_REFUSED,
    SchemaNotWritable,
    command_connection,
    first_line,
    reach,
    schema_version,
)
from lang_agent.settings import Settings

_inline = contextvars.ContextVar("lang_agent_inline_to_thread", default=False)

# AsyncPostgresSaver.aget_tuple's query for a thread's latest checkpoint (no checkpoint_id).
LATEST_WHERE = "WHERE thread_id = %s AND checkpoint_ns = %s ORDER BY checkpoint_id DESC LIMIT 1"


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


async def setup_checkpoints(conn: AsyncConnection) -> None:
    """LangGraph's tables, made or brought up to date; current ones are only read, so a role
    without DDL rights runs on tables its owner made (`lang-agent schema --apply`).

    One process at a time: workers starting together on a new database both created the
    tables and one died (UniqueViolation on checkpoint_migrations). The setup holds a session
    advisory lock; the others poll for it rather than wait in a statement, since a waiting
    statement is a transaction that the setup's CREATE INDEX CONCURRENTLY would wait for."""
    latest = len(AsyncPostgresSaver.MIGRATIONS) - 1
    if await schema_version(conn, "checkpoint_migrations") >= latest:
        return
    async with asyncio.timeout(SETUP_WAIT_S):
        while True:
            if (await (await conn.execute(SETUP_LOCK_SQL)).fetchone())["locked"]:
                break
            await asyncio.sleep(0.1)
    try:
        await AsyncPostgresSaver(conn).setup()
    except DDL_REFUSED as exc:
        raise SchemaNotWritable(
            "LangGraph's checkpoint tables are missing or out of date, and this role may not "
            f"change them ({first_line(exc)}): {APPLY_AS_OWNER}"
        ) from None
    finally:
        await conn.execute(SETUP_UNLOCK_SQL)


async def prepare_database(settings: Settings, *, wait_s: float = 0.0) -> None:
    """Reach the database (waiting up to `wait_s` for one still starting) and bring our
    schema and LangGraph's up to date. CommandError, one line, for what the user must fix."""
    await reach(settings, wait_s=wait_s)
    async with command_connection(settings, create=True) as conn:
        await setup_checkpoints(conn)


_MESSAGES = {
    (cls.__module__, cls.__name__): cls
    for cls in (HumanMessage, AIMessage, AIMessageChunk, SystemMessage, ToolMessage)
}


# A thread's memory is written at the end of one turn and read at the start of the next, and
# unpacking it cost 2-5 ms before the router's request at the 200-message cap. A memory's blob
# is never changed once written (a new version is a new blob), so the list that was written,
# found again by the blob's bytes, is what decoding them would give. Blobs under MIN are a new
# thread's few messages: they decode in microseconds and would only churn the cache.
WRITTEN_MIN_BYTES = 4096
WRITTEN_MAX_BYTES = 4 * 1024 * 1024  # of blobs; the messages take several times that


class WrittenMemory:
    """The long lists this process wrote, by their blob's bytes, each until it is read back
    once (the next turn replaces it) or, least recently written first, pushed out.

    LangGraph's reducer builds a new list rather than changing the one it was given, and
    nothing changes a stored message, so the list can be handed to the reader as it is."""

    def __init__(self, *, min_bytes: int, max_bytes: int) -> None:
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._lists: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # alist and friends decode on a worker thread

    def put(self, blob: bytes, value: object) -> None:
        if not isinstance(value, list) or not self.min_bytes <= len(blob) <= self.max_bytes:
            return
        with self._lock:
            if blob not in self._lists:
                self._bytes += len(blob)
            self._lists[blob] = list(value)
            self._lists.move_to_end(blob)
            while self._bytes > self.max_bytes:
                oldest, _ = self._lists.popitem(last=False)
                self._bytes -= len(oldest)

    def take(self, blob: bytes) -> list[Any] | None:
        if len(blob) < self.min_bytes:
            return None
        with self._lock:
            value = self._lists.pop(blob, None)
            if value is not None:
                self._bytes -= len(blob)
        return value

    def __len__(self) -> int:
        return len(self._lists)


class MemorySerializer(JsonPlusSerializer):
    """LangGraph's serializer, except that a stored chat message is rebuilt with
    `model_construct` instead of its validating constructor.

    A thread's whole memory is loaded on every turn: at the 200-message cap the validation
    took about two fifths of the load (docs/performance.md). The fields were dumped from a
    valid message (`model_dump`), so they need no second check. What is written is unchanged,
    so older and newer code read each other's checkpoints. Everything else goes through
    LangGraph's own hook. (Under LANGGRAPH_STRICT_MSGPACK a graph's allowlist clone gets a
    fresh hook: messages then load the slower way, and still correctly.)

    A long memory it wrote is kept (`WrittenMemory`) until the thread's next turn in this
    process reads it back, which then does not unpack it."""

    def __init__(self) -> None:
        super().__init__()
        general = self._unpack_ext_hook

        def hook(code: int, data: bytes) -> Any:
            if code == EXT_PYDANTIC_V2:
                module, name, fields, *_ = ormsgpack.unpackb(
                    data, ext_hook=hook, option=ormsgpack.OPT_NON_STR_KEYS
                )
                message = _MESSAGES.get((module, name))
                if message is not None and isinstance(fields, dict):
                    return message.model_construct(**fields)
            return general(code, data)

        self._unpack_ext_hook = hook
        self.written = WrittenMemory(min_bytes=WRITTEN_MIN_BYTES, max_bytes=WRITTEN_MAX_BYTES)

    def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
        kind, blob = super().dumps_typed(obj)
        if kind == "msgpack" and isinstance(blob, bytes):
            self.written.put(blob, obj)
        return kind, blob

    def loads_typed(self, data: tuple[str, bytes]) -> Any:
        kind, blob = data
        if kind == "msgpack" and isinstance(blob, bytes):
            value = self.written.take(blob)
            if value is not None:
                return value
        return super().loads_typed(data)


class _Preload:
    """A thread's latest checkpoint, loaded already; answers one aget_tuple."""

    __slots__ = ("thread_id", "latest", "used")

    def __init__(self, thread_id: str, latest: CheckpointTuple | None) -> None:
        self.thread_id = thread_id
        self.latest = latest
        self.used = False

    def answers(self, config: RunnableConfig) -> bool:
        configurable = config["configurable"]
        return (
            not self.used
            and configurable["thread_id"] == self.thread_id
            and not configurable.get("checkpoint_ns")
            and not configurable.get("checkpoint_id")
        )


_preload: contextvars.ContextVar[_Preload | None] = contextvars.ContextVar(
    "lang_agent_preloaded_checkpoint", default=None
)


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
        super().__init__(pool, serde=MemorySerializer())
        self.lock = contextlib.nullcontext()  # type: ignore[assignment]

    async def setup(self) -> None:
        async with self.conn.connection() as conn:  # type: ignore[union-attr]
            await setup_checkpoints(conn)

    def latest_query(self, thread_id: str) -> tuple[str, tuple[str, str]]:
        """The SQL and parameters aget_tuple would run for the thread's latest checkpoint, for
        a caller that can run them in a round trip it makes anyway (the thread's lease)."""
        return self.SELECT_SQL + LATEST_WHERE, (thread_id, "")

    async def load_latest(self, thread_id: str, row: DictRow | None) -> CheckpointTuple | None:
        """The thread's latest checkpoint from a `latest_query` row (None: it has none)."""
        if row is None:
            return None
        with inline():
            if row["checkpoint"]["v"] >= 4 or not row["parent_checkpoint_id"]:
                return await self._load_checkpoint_tuple(row)
            # A checkpoint from before format 4 needs its pending sends migrated, by a second
            # query: aget_tuple does that.
            config = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
            return await super().aget_tuple(config)

    @contextlib.contextmanager
    def preloaded(self, thread_id: str, latest: CheckpointTuple | None) -> Iterator[None]:
        """Within the block, the first aget_tuple of the thread's latest checkpoint in this
        context answers with `latest` (from `load_latest`) instead of reading again. Later
        reads go to the database."""
        token = _preload.set(_Preload(thread_id, latest))
        try:
            yield
        finally:
            _preload.reset(token)

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        preload = _preload.get()
        if preload is not None and preload.answers(config):
            preload.used = True
            return preload.latest
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
