"""The checkpointer: memory round trips, its (de)serialisation stays on the event loop, and
a turn's first read can ride on the thread's lease."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

import psycopg
import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import START, MessagesState, StateGraph
from psycopg.conninfo import make_conninfo
from pydantic import BaseModel

from lang_agent.agent.threads import ThreadLocks
from lang_agent.checkpointer import (
    LoopExecutor,
    MemorySerializer,
    PooledSaver,
    WrittenMemory,
    inline,
    install_loop_executor,
)
from lang_agent.pool import Database


def test_the_executor_runs_inline_only_when_asked():
    executor = LoopExecutor(max_workers=1)
    try:
        assert executor.submit(threading.get_ident).result() != threading.get_ident()
        with inline():
            assert executor.submit(threading.get_ident).result() == threading.get_ident()
            with pytest.raises(ZeroDivisionError):
                executor.submit(lambda: 1 / 0).result()
    finally:
        executor.shutdown()


class ThreadRecordingSaver(PooledSaver):
    """PooledSaver that notes the thread each (de)serialisation step ran on."""

    def __init__(self, pool) -> None:
        super().__init__(pool)
        self.threads: set[int] = set()

    def _dump_blobs(self, *args):
        self.threads.add(threading.get_ident())
        return super()._dump_blobs(*args)

    def _dump_writes(self, *args):
        self.threads.add(threading.get_ident())
        return super()._dump_writes(*args)

    def _load_writes(self, *args):
        self.threads.add(threading.get_ident())
        return super()._load_writes(*args)


def _answer(state: MessagesState) -> dict:
    return {"messages": [AIMessage(f"第{len(state['messages'])}条")]}


def _memory_graph(saver: PooledSaver):
    builder = StateGraph(MessagesState)
    builder.add_node("answer", _answer)
    builder.add_edge(START, "answer")
    return builder.compile(checkpointer=saver)


@pytest.fixture
async def database(pg_dsn) -> AsyncIterator[Database]:
    """An open pool on the test database, under the loop executor the server installs."""
    install_loop_executor()
    db = Database(pg_dsn, max_size=4)
    await db.open()
    yield db
    await db.close()


@pytest.fixture
async def saver(database) -> PooledSaver:
    saver = PooledSaver(database.pool)
    await saver.setup()
    return saver


async def test_memory_round_trips_without_a_thread_hop(database):
    saver = ThreadRecordingSaver(database.pool)
    await saver.setup()
    graph = _memory_graph(saver)
    config = {"configurable": {"thread_id": f"cp-{uuid.uuid4().hex[:8]}"}}
    for text in ("你好", "再见"):
        await graph.ainvoke({"messages": [HumanMessage(text)]}, config)
    state = await saver.aget_tuple(config)
    contents = [m.content for m in state.checkpoint["channel_values"]["messages"]]
    assert contents == ["你好", "第1条", "再见", "第3条"]
    assert saver.threads == {threading.get_ident()}
    # Anything else the loop hands its default executor still runs on a worker.
    assert await asyncio.to_thread(threading.get_ident) != threading.get_ident()


async def test_servers_starting_together_on_a_new_database_set_it_up_once(pg_dsn):
    # Two workers (`--workers 2`) start at the same moment against an empty database: both
    # ran LangGraph's CREATE TABLE IF NOT EXISTS and one died of a UniqueViolation.
    name = f"cp_race_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as admin:
        await admin.execute(f'CREATE DATABASE "{name}"')
    databases = [Database(make_conninfo(pg_dsn, dbname=name), max_size=2) for _ in range(4)]
    try:
        for db in databases:
            await db.open()
        await asyncio.gather(*(PooledSaver(db.pool).setup() for db in databases))
        async with databases[0].pool.connection() as conn:
            rows = await (await conn.execute("SELECT v FROM checkpoint_migrations")).fetchall()
        assert sorted(row["v"] for row in rows) == list(range(len(PooledSaver.MIGRATIONS)))
    finally:
        for db in databases:
            await db.close()


async def _latest_row(database: Database, saver: PooledSaver, thread: str):
    """The thread's latest checkpoint row, as the lease's round trip reads it."""
    async with database.connection() as conn, conn.cursor(binary=True) as cur:
        await cur.execute(*saver.latest_query(thread))
        return await cur.fetchone()


async def test_a_preloaded_checkpoint_answers_the_first_read_only(database, saver):
    graph = _memory_graph(saver)
    thread = f"pre-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread}}
    await graph.ainvoke({"messages": [HumanMessage("一")]}, config)
    row = await _latest_row(database, saver, thread)
    stored = await saver.aget_tuple(config)
    latest = await saver.load_latest(thread, row)
    assert latest == stored  # the same tuple aget_tuple builds from the database
    await graph.ainvoke({"messages": [HumanMessage("二")]}, config)  # now the row is stale
    with saver.preloaded(thread, latest):
        other = {"configurable": {"thread_id": "someone-else"}}
        assert await saver.aget_tuple(other) is None  # another thread reads the database
        first = await saver.aget_tuple(config)
        second = await saver.aget_tuple(config)
    assert first is latest
    contents = [m.content for m in second.checkpoint["channel_values"]["messages"]]
    assert contents == ["一", "第1条", "二", "第3条"]  # used once: then the database
    with saver.preloaded(thread, None):
        assert await saver.aget_tuple(config) is None  # the thread had no memory then
        assert await saver.aget_tuple(config) is not None


async def test_the_read_beside_a_lease_sees_what_the_previous_holder_saved(database, saver):
    # Two processes' lock tables on one database. The second waits for the lease while the
    # first turn saves its memory; the read riding on the lease must see that memory.
    graph = _memory_graph(saver)
    ours, theirs = (ThreadLocks(database, mode="wait", wait_s=10, lease_ttl_s=60) for _ in range(2))
    thread = f"lease-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread}}
    held = asyncio.Event()

    async def first_turn() -> None:
        async with theirs.hold(thread):
            held.set()
            await asyncio.sleep(0.1)  # the other process polls meanwhile
            await graph.ainvoke({"messages": [HumanMessage("先")]}, config)

    async def second_turn() -> list[str]:
        await held.wait()
        async with ours.hold(thread, read=saver.latest_query(thread)) as row:
            with saver.preloaded(thread, await saver.load_latest(thread, row)):
                await graph.ainvoke({"messages": [HumanMessage("后")]}, config)
        state = await saver.aget_tuple(config)
        return [m.content for m in state.checkpoint["channel_values"]["messages"]]

    _, contents = await asyncio.gather(first_turn(), second_turn())
    assert contents == ["先", "第1条", "后", "第3条"]


class Verdict(BaseModel):
    """Not a chat message: loads through LangGraph's own hook."""

    route: str
    when: datetime


MEMORY = [
    SystemMessage("你是小智", id="s1"),
    HumanMessage("放首歌", id="h1"),
    AIMessage(
        "",
        id="a1",
        tool_calls=[{"name": "play", "args": {"song": "晴天"}, "id": "c1"}],
        usage_metadata={"input_tokens": 12, "output_tokens": 3, "total_tokens": 15},
        response_metadata={"model_name": "qwen-plus", "finish_reason": "tool_calls"},
    ),
    ToolMessage("正在播放", tool_call_id="c1", id="t1", artifact={"ok": True}, status="success"),
    AIMessageChunk("好的", id="a2"),
    AIMessage([{"type": "text", "text": "好的"}], id="a3", name="xiaozhi"),
]


def test_stored_messages_load_as_langgraph_loads_them_without_validating_again(monkeypatch):
    stock, ours = JsonPlusSerializer(), MemorySerializer()
    state = {"messages": MEMORY, "verdict": Verdict(route="tool", when=datetime(2026, 12, 3))}
    blob = stock.dumps_typed(state)
    assert ours.dumps_typed(state) == blob  # the stored form is LangGraph's
    expected = stock.loads_typed(blob)
    for cls in {type(m) for m in MEMORY}:  # rebuilt without their validating constructors
        monkeypatch.setattr(cls, "__init__", _refuse)
    loaded = ours.loads_typed(blob)
    assert loaded["verdict"] == expected["verdict"] == state["verdict"]
    assert [type(m) for m in loaded["messages"]] == [type(m) for m in MEMORY]
    assert [m.model_dump() for m in loaded["messages"]] == [m.model_dump() for m in MEMORY]
    assert [m.model_fields_set for m in loaded["messages"]] == [
        m.model_fields_set for m in expected["messages"]
    ]


class Constructed(BaseException):
    """Not an Exception: LangGraph's hook falls back to model_construct on those."""


def _refuse(*args, **kwargs):
    raise Constructed("a stored message went through its constructor")


def _long_memory(turns: int) -> list:
    memory = []
    for i in range(turns):
        memory += [
            HumanMessage(f"第{i}个问题：明天天气怎么样", id=f"h{i}"),
            AIMessage(f"第{i}个回答：晴", id=f"a{i}"),
        ]
    return memory


def test_a_long_memory_written_is_handed_to_its_next_reader_without_decoding():
    ours = MemorySerializer()
    memory = _long_memory(100)
    blob = ours.dumps_typed(memory)
    assert len(blob[1]) >= ours.written.min_bytes
    memory.append(HumanMessage("写完以后才加的"))  # the writer's list is the writer's
    first = ours.loads_typed(blob)
    assert first == memory[:-1]
    assert all(a is b for a, b in zip(first, memory, strict=False))  # the messages it wrote
    # Read once: a second reader (a failed turn's retry, the viewer) decodes the bytes.
    second = ours.loads_typed(blob)
    assert second == first and not any(a is b for a, b in zip(second, first, strict=True))
    assert len(ours.written) == 0


def test_short_memories_other_values_and_reads_are_not_kept():
    ours = MemorySerializer()
    ours.dumps_typed(_long_memory(2))
    ours.dumps_typed({"route": "chat" * 2000})
    theirs = JsonPlusSerializer().dumps_typed(_long_memory(90))  # another process wrote it
    ours.loads_typed(theirs)
    assert len(ours.written) == 0


def test_written_memories_are_bounded_by_their_bytes_oldest_write_out_first():
    written = WrittenMemory(min_bytes=10, max_bytes=100)
    a, b, c = (bytes([n]) * 40 for n in range(3))
    written.put(a, ["a"])
    written.put(b, ["b"])
    written.put(a, ["a"])  # written again: now b is the oldest
    written.put(c, ["c"])
    assert written.take(b) is None
    assert written.take(a) == ["a"] and written.take(c) == ["c"]
    written.put(bytes(101), ["too big"])
    written.put(bytes(9), ["too small"])
    assert len(written) == 0


async def test_a_long_memory_loads_from_the_written_copy_as_from_the_database(database, saver):
    graph = _memory_graph(saver)
    thread = f"long-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread}}
    await graph.ainvoke({"messages": _long_memory(60)}, config, durability="exit")
    for text in ("三", "四"):
        row = await _latest_row(database, saver, thread)
        assert len(saver.serde.written) == 1
        latest = await saver.load_latest(thread, row)
        assert len(saver.serde.written) == 0  # taken, not decoded
        messages = latest.checkpoint["channel_values"]["messages"]
        fresh = PooledSaver(database.pool)  # decodes what the database holds
        stored = (await fresh.aget_tuple(config)).checkpoint["channel_values"]["messages"]
        assert [m.model_dump() for m in messages] == [m.model_dump() for m in stored]
        with saver.preloaded(thread, latest):
            await graph.ainvoke({"messages": [HumanMessage(text)]}, config, durability="exit")
    state = await PooledSaver(database.pool).aget_tuple(config)
    contents = [m.content for m in state.checkpoint["channel_values"]["messages"]]
    assert contents[-4:] == ["三", "第122条", "四", "第124条"] and len(contents) == 125
