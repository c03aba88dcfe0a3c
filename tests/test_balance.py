"""A worker holding more than its share of the group's keep-alive connections closes them as
their responses end (fastapi_server/balance.py): the share's arithmetic over the group's
slots, and uvicorn really closing the connection. The group itself is in test_workers.py."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

import httpx2
from fastapi import FastAPI

from fastapi_server.balance import NOT_SERVING, PUBLISH_S, ConnectionBalancer, ConnectionShare
from tests.support import LiveServer, wait_until


def _server(connections: int, *, started: bool = True) -> SimpleNamespace:
    """What `follow` reads of a uvicorn.Server."""
    state = SimpleNamespace(connections=set(range(connections)))
    return SimpleNamespace(started=started, should_exit=False, server_state=state)


@contextlib.asynccontextmanager
async def _following(share: ConnectionShare, server: SimpleNamespace):
    async with asyncio.TaskGroup() as group:
        task = group.create_task(share.follow(server))
        await asyncio.sleep(0)  # its first publish
        yield
        task.cancel()


async def test_a_worker_above_its_share_sheds_until_it_is_not():
    counts = [0, 4]  # the other worker holds 4
    share = ConnectionShare(counts, 0)
    server = _server(10)
    async with _following(share, server):
        assert counts[0] == 10
        # 14 in all: a share of 7, and one more kept. Those told to close count as gone.
        assert [share.shed() for _ in range(3)] == [True, True, False]
        assert counts[0] == 10  # the two still open until their responses end
        # Closed, and their clients came back through the kernel's hash: to the other worker.
        server.server_state.connections = set(range(8))
        share.shed_done()
        share.shed_done()
        counts[1] = 6
        assert not share.shed()
        assert counts[0] == 8


async def test_an_even_group_keeps_its_connections():
    counts = [0, 6]
    share = ConnectionShare(counts, 0)
    async with _following(share, _server(7)):  # a share of 7 (13 rounded up), and one more
        assert not share.shed()


async def test_workers_not_serving_are_left_out_of_the_share():
    counts = [0, NOT_SERVING]  # the other is still starting, or draining
    share = ConnectionShare(counts, 0)
    async with _following(share, _server(50)):
        assert not share.shed()
        counts[1] = 0  # it listens now: half of the 50 should go to it
        assert share.shed()


async def test_a_worker_publishes_only_while_it_serves():
    counts = [0, 0]
    share = ConnectionShare(counts, 0)
    assert counts[0] == NOT_SERVING
    server = _server(5, started=False)
    async with _following(share, server):
        assert counts[0] == NOT_SERVING
        assert not share.shed()
        server.started = True
        await asyncio.sleep(PUBLISH_S * 2)
        assert counts[0] == 5
        server.should_exit = True  # draining: the others stop counting it
        await asyncio.sleep(PUBLISH_S * 2)
        assert counts[0] == NOT_SERVING


def _balanced_server(counts: list[int]) -> LiveServer:
    """uvicorn serving a tiny app through the balancer, as worker 0 of `counts`."""
    share = ConnectionShare(counts, 0)
    holder: dict[str, LiveServer] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(share.follow(holder["live"].server))
        yield
        task.cancel()

    app = FastAPI(lifespan=lifespan)

    @app.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    holder["live"] = LiveServer(ConnectionBalancer(app, share))
    return holder["live"]


def test_a_response_above_the_share_closes_its_connection():
    counts = [0, 0]  # the other worker serves and holds none
    with _balanced_server(counts) as live:
        wait_until(lambda: counts[0] != NOT_SERVING)  # it takes part once uvicorn has started
        clients = [httpx2.Client(base_url=live.url, timeout=10) for _ in range(4)]
        try:
            answers = [client.get("/ping") for client in clients]
            assert all(answer.status_code == 200 for answer in answers)
            # The fourth makes 4 against a share of 2: over it by more than one.
            closing = [answer.headers.get("connection") == "close" for answer in answers]
            assert closing == [False, False, False, True]
            wait_until(lambda: len(live.server.server_state.connections) == 3)

            counts[1] = 4  # now even: the reconnection is kept
            again = clients[3].get("/ping")
            assert again.status_code == 200 and "connection" not in again.headers
            assert len(live.server.server_state.connections) == 4
        finally:
            for client in clients:
                client.close()
