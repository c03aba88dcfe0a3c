"""End to end: a newer request on a busy thread (xiaozhi's barge-in), per busy policy; a turn
whose answer is whole and being saved, which nothing ends any more."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import json
import logging
import socket
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import dashscope
import httpx2
import openai
import psycopg
import pytest
from dashscope import Application
from langgraph.checkpoint.postgres import PostgresSaver

from lang_agent.agent.threads import ThreadLocks
from lang_agent.db import migrate
from lang_agent.errors import Preempted, ThreadBusy
from lang_agent.pool import Database
from tests.conftest import TEST_KEY
from tests.support import ask as ask_on
from tests.support import ds_thread, latency, wait_until

LEASE_SQL = "SELECT count(*) FROM thread_leases WHERE thread_id = %s"
TURNS_SQL = (
    "SELECT status, error_code FROM turns WHERE thread_id = %s ORDER BY started_at, latency_ms"
)
FALLBACKS_SQL = "SELECT count(*) FROM messages WHERE thread_id = %s AND is_fallback"
SET_VOLUME = "self.audio_speaker.set_volume"
WAITING_SQL = "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted"
SAVED_SQL = "SELECT count(*) FROM checkpoints WHERE thread_id = %s"


def speak(text: str, session_id: str) -> list:
    """Every item of a streamed call, consumed as AliBL consumes it (all of them)."""
    responses = Application.call(
        api_key=TEST_KEY,
        app_id="lang-agent",
        session_id=session_id,
        messages=[{"role": "user", "content": text}],
        stream=True,
    )
    return list(responses)


def spoken(items: list) -> str:
    """What xiaozhi says: the last cumulative text of the 200 items (others are skipped)."""
    texts = [item.output.text for item in items if item.status_code == 200]
    return texts[-1] if texts else ""


def holds_lease(pg_dsn: str, thread_id: str) -> bool:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(LEASE_SQL, (thread_id,)).fetchone()[0] == 1


def logged_turns(pg_dsn: str, thread_id: str, count: int) -> list[tuple] | None:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(TURNS_SQL, (thread_id,)).fetchall()
    return rows if len(rows) == count else None


def fallbacks_logged(pg_dsn: str, thread_id: str) -> int:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(FALLBACKS_SQL, (thread_id,)).fetchone()[0]


def remembered(pg_dsn: str, thread_id: str) -> list[str]:
    with psycopg.connect(pg_dsn) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
    return [m.content for m in state.checkpoint["channel_values"]["messages"]]


@pytest.fixture
def hanging_device(tmp_path: Path) -> Path:
    """A device whose volume call never answers: the turn sits in its silent tool stretch."""
    args = ["-m", "lang_agent.tools.device_sim", "--hang-tool", SET_VOLUME]
    device = {"transport": "stdio", "command": sys.executable, "args": args, "timeout_s": 30}
    path = tmp_path / "mcp_config.json"
    path.write_text(json.dumps({"device": device}), encoding="utf-8")
    return path


def overlapping(pg_dsn: str, session: str, first: str, second: str) -> tuple[list, list]:
    """`first` said on the session, then `second` once the first turn holds the thread: the
    items of both answers."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        earlier = pool.submit(speak, first, session)
        wait_until(lambda: holds_lease(pg_dsn, ds_thread(session)))
        later = speak(second, session)
        return earlier.result(), later


def test_a_newer_dashscope_request_ends_the_turn_in_its_tool_and_answers(
    live_server, hanging_device, pg_dsn, caplog
):
    server = live_server(mcp_config=hanging_device)
    dashscope.base_http_api_url = f"{server.url}/api/"
    session = uuid.uuid4().hex
    thread = ds_thread(session)
    # The first turn's tool never answers: only the second request can end it.
    old, second = overlapping(pg_dsn, session, "把音量调到30", "你好")
    assert all(item.status_code == 200 for item in second)
    assert second[-1].output.finish_reason == "stop" and spoken(second)
    # The interrupted turn ends with an error item AliBL skips, and no fallback is spoken.
    assert (old[-1].status_code, old[-1].code) == (409, "RequestCancelled")
    assert all(item.status_code == 200 for item in old[:-1])
    assert "抱歉" not in spoken(old)
    turns = wait_until(lambda: logged_turns(pg_dsn, thread, 2))
    assert turns == [("cancelled", "preempted"), ("ok", None)]
    assert fallbacks_logged(pg_dsn, thread) == 0  # none was said, so the log has none
    memory = remembered(pg_dsn, thread)
    assert memory == ["你好", spoken(second)]
    # The user speaking again is no fault: said at INFO, not among the warnings.
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [line for line in warned if "preempted" in line], warned


def waits_for(pg_dsn: str, table: str) -> bool:
    """Some statement waits for a lock on `table`."""
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(WAITING_SQL, (table,)).fetchone()[0] > 0


def saved(pg_dsn: str, thread_id: str) -> bool:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(SAVED_SQL, (thread_id,)).fetchone()[0] > 0


def test_a_newer_request_while_the_old_answer_is_being_saved_waits_for_it(live_server, pg_dsn):
    """Memory and the old client agree: a turn whose answer is whole and being written to
    memory is no longer ended (the write would land all the same); the newer request waits."""
    server = live_server()
    dashscope.base_http_api_url = f"{server.url}/api/"
    session = uuid.uuid4().hex
    thread = ds_thread(session)

    def in_flight() -> int:
        return httpx2.get(f"{server.url}/health", timeout=5).json()["turns_in_flight"]

    # The test's own transactions hold the old turn's memory write (its checkpoint row), and
    # then the newer turn's read of memory until that write is in: as when the write is on
    # the wire as the newer request comes. (The pool outside: a failure lets the locks go
    # before it waits for the calls.)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with psycopg.connect(pg_dsn) as writes, psycopg.connect(pg_dsn) as reads:
            writes.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
            earlier = pool.submit(speak, "第一句", session)
            wait_until(lambda: waits_for(pg_dsn, "checkpoints"))  # its answer is whole
            reads.execute("LOCK TABLE checkpoint_writes IN ACCESS EXCLUSIVE MODE")
            later = pool.submit(speak, "第二句", session)
            wait_until(lambda: earlier.done() or in_flight() == 2)  # the newer one is in
            writes.commit()
            wait_until(lambda: saved(pg_dsn, thread))
            reads.commit()
        old, second = earlier.result(), later.result()
    assert all(item.status_code == 200 for item in old + second)
    assert old[-1].output.finish_reason == "stop" and spoken(old)
    assert remembered(pg_dsn, thread) == ["第一句", spoken(old), "第二句", spoken(second)]
    assert wait_until(lambda: logged_turns(pg_dsn, thread, 2)) == [("ok", None)] * 2


def _openai_request(server_url: str, thread_id: str, text: str) -> bytes:
    """A non-streamed OpenAI request as its bytes, for a client that hangs up mid-way."""
    body = json.dumps(
        {"messages": [{"role": "user", "content": text}], "thread_id": thread_id}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {urlsplit(server_url).netloc}\r\n"
        f"Authorization: Bearer {TEST_KEY}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_a_client_hanging_up_while_its_answer_is_being_saved_is_logged_answered(
    live_server, pg_dsn, thread_id, caplog
):
    """The hang-up cancelled the turn, logged `cancelled` / `client_closed`, but LangGraph's
    memory write was already on its way (in a task of its own) and landed: memory kept a turn
    the log said was not answered. A settled turn is no longer cancelled, and is logged `ok`."""
    caplog.set_level(logging.INFO, logger="lang_agent.agent.runner")
    server = live_server()
    url = urlsplit(server.url)

    def client_left() -> bool:
        return any("the client left" in r.getMessage() for r in caplog.records)

    # The test's own transaction holds the memory write, as when it is on the wire.
    with psycopg.connect(pg_dsn) as writes:
        writes.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
        with socket.create_connection((url.hostname, url.port)) as client:
            client.sendall(_openai_request(server.url, thread_id, "记住我叫小明"))
            wait_until(lambda: waits_for(pg_dsn, "checkpoints"))  # its answer is whole
        # Hung up: the server has heard it once the turn says so, or (unsettled) is logged.
        wait_until(lambda: client_left() or logged_turns(pg_dsn, thread_id, 1))
        writes.commit()
    wait_until(lambda: saved(pg_dsn, thread_id))
    assert remembered(pg_dsn, thread_id)[0] == "记住我叫小明"
    assert wait_until(lambda: logged_turns(pg_dsn, thread_id, 1)) == [("ok", None)]
    wait_until(lambda: not holds_lease(pg_dsn, thread_id))  # the thread is given back


def test_a_turn_out_of_time_while_its_answer_is_being_saved_is_answered(
    live_server, pg_dsn, thread_id
):
    """TURN_TIMEOUT_S ran out during the memory write: the client got 504 `turn_timeout` and
    the log said so, while the write landed. A settled turn's budget no longer runs out."""
    budget_s = 3.0
    server = live_server(turn_timeout_s=budget_s)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)

    def ask() -> str:
        reply = client.chat.completions.create(
            model="lang-agent",
            messages=[{"role": "user", "content": "记住我叫小红"}],
            extra_body={"thread_id": thread_id},
        )
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with psycopg.connect(pg_dsn) as writes:
            writes.execute("LOCK TABLE checkpoints IN EXCLUSIVE MODE")
            answer = pool.submit(ask)
            wait_until(lambda: waits_for(pg_dsn, "checkpoints"))  # its answer is whole
            time.sleep(budget_s)  # the turn's budget, counted from before this, runs out
            writes.commit()
        said = answer.result()
    assert remembered(pg_dsn, thread_id) == ["记住我叫小红", said]
    assert wait_until(lambda: logged_turns(pg_dsn, thread_id, 1)) == [("ok", None)]


def test_the_openai_front_end_still_waits_by_default(live_server, simulator, pg_dsn, thread_id):
    """DASHSCOPE_BUSY_SESSION=preempt is the DashScope front end's; BUSY_THREAD stays `wait`."""
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    ask = functools.partial(ask_on, client, thread_id=thread_id)

    with latency(simulator, "chat", ttft_ms=800):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(ask, "慢一点")
            wait_until(lambda: holds_lease(pg_dsn, thread_id))
            second = ask("插一句")
            assert first.result() and second
    assert wait_until(lambda: logged_turns(pg_dsn, thread_id, 2)) == [("ok", None)] * 2


def test_an_openai_turn_preempted_is_not_retried_by_the_sdk(
    live_server, simulator, pg_dsn, thread_id
):
    """BUSY_THREAD=preempt on the OpenAI side: the SDK retries a 409 unless told not to, and
    its retry of the ended request ended the newer one in turn (the user's latest words)."""
    server = live_server(busy_thread="preempt")
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY)  # 2 retries
    ask = functools.partial(ask_on, client, thread_id=thread_id)

    with latency(simulator, "chat", ttft_ms=1500):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(ask, "慢一点")
            wait_until(lambda: holds_lease(pg_dsn, thread_id))
            assert ask("插一句")
            with pytest.raises(openai.ConflictError) as ended:
                first.result()
    assert ended.value.response.headers["x-should-retry"] == "false"
    turns = wait_until(lambda: logged_turns(pg_dsn, thread_id, 2))
    assert sorted(turns, key=str) == sorted([("cancelled", "preempted"), ("ok", None)], key=str)


@pytest.mark.parametrize(("policy", "refused"), [("wait", []), ("reject", [(429, "Throttling")])])
def test_dashscope_busy_session_wait_and_reject(live_server, simulator, pg_dsn, policy, refused):
    server = live_server(dashscope_busy_session=policy)
    dashscope.base_http_api_url = f"{server.url}/api/"
    session = uuid.uuid4().hex
    thread = ds_thread(session)
    with latency(simulator, "chat", ttft_ms=800):
        old, second = overlapping(pg_dsn, session, "慢一点", "插一句")
    assert all(item.status_code == 200 for item in old)
    assert [(i.status_code, i.code) for i in second if i.status_code != 200] == refused
    assert wait_until(lambda: logged_turns(pg_dsn, thread, 2)) == [("ok", None)] * (
        2 - len(refused)
    ) + [("failed", "thread_busy")] * len(refused)
    assert fallbacks_logged(pg_dsn, thread) == 0  # a refusal is reported, not said


@pytest.fixture
async def locks(pg_dsn) -> AsyncIterator[ThreadLocks]:
    db = Database(pg_dsn, max_size=4)
    await db.open()
    async with db.connection() as conn:
        await migrate(conn)
    yield ThreadLocks(db, mode="wait", wait_s=10, lease_ttl_s=60)
    await db.close()


class Order:
    """What the turns did, in order; `reached` waits for an entry."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self._seen: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def add(self, entry: str) -> None:
        self.entries.append(entry)
        self._seen[entry].set()

    async def reached(self, entry: str) -> None:
        await self._seen[entry].wait()


async def _turn(locks: ThreadLocks, thread: str, order: Order, name: str, **policy) -> None:
    """A turn that runs until it is ended; `order` records when it ran and how it ended."""
    try:
        async with locks.hold(thread, preemptible=True, **policy):
            order.add(f"{name} runs")
            await asyncio.Event().wait()
    except Preempted:
        order.add(f"{name} preempted")
    except asyncio.CancelledError:
        order.add(f"{name} cancelled")
        raise


async def test_preempt_ends_the_holder_and_then_takes_the_thread(locks, thread_id):
    order = Order()
    first = asyncio.create_task(_turn(locks, thread_id, order, "first"))
    await order.reached("first runs")
    second = asyncio.create_task(_turn(locks, thread_id, order, "second", busy="preempt"))
    await order.reached("second runs")
    assert order.entries == ["first runs", "first preempted", "second runs"]
    assert first.done() and not first.cancelled()
    second.cancel()  # a hang-up is still a cancel, not Preempted
    await asyncio.wait([second])
    assert second.cancelled() and order.entries[-1] == "second cancelled"


async def test_preempt_ends_a_turn_waiting_in_line_and_waits_for_a_forget(locks, thread_id):
    order = Order()
    release = asyncio.Event()

    async def forget() -> None:  # not preemptible: it deletes a thread
        async with locks.hold(thread_id):
            order.add("forget runs")
            await release.wait()
        order.add("forget done")

    held = asyncio.create_task(forget())
    await order.reached("forget runs")
    queued = asyncio.create_task(_turn(locks, thread_id, order, "queued"))
    await asyncio.sleep(0.05)  # it waits in line
    newest = asyncio.create_task(_turn(locks, thread_id, order, "newest", busy="preempt"))
    await order.reached("queued preempted")
    assert not held.done()
    release.set()
    await order.reached("newest runs")
    assert order.entries == ["forget runs", "queued preempted", "forget done", "newest runs"]
    newest.cancel()
    await asyncio.wait([held, queued, newest])


async def test_reject_still_refuses_a_busy_thread(locks, thread_id):
    order = Order()
    first = asyncio.create_task(_turn(locks, thread_id, order, "first"))
    await order.reached("first runs")
    with pytest.raises(ThreadBusy):
        async with locks.hold(thread_id, busy="reject"):
            pass
    first.cancel()
    await asyncio.wait([first])
    assert order.entries == ["first runs", "first cancelled"]


async def test_preempt_waits_for_a_turn_another_process_holds(locks, thread_id):
    """No signal crosses processes: the lease is waited for, as with `wait`."""
    theirs = ThreadLocks(locks.db, mode="wait", wait_s=10, lease_ttl_s=60)
    order = Order()
    release = asyncio.Event()

    async def their_turn() -> None:
        async with theirs.hold(thread_id, preemptible=True):
            order.add("theirs runs")
            await release.wait()
        order.add("theirs done")

    held = asyncio.create_task(their_turn())
    await order.reached("theirs runs")
    ours = asyncio.create_task(_turn(locks, thread_id, order, "ours", busy="preempt"))
    await asyncio.sleep(0.3)  # it polls the lease meanwhile
    release.set()
    await order.reached("ours runs")
    assert order.entries == ["theirs runs", "theirs done", "ours runs"]
    ours.cancel()
    await asyncio.wait([held, ours])
