"""One thread hit by 10 concurrent requests, in one process and across two worker processes:
every turn is answered and logged, none lost, none interleaved, and the log's order is the
order the turns ran in (the order memory holds them)."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from lang_agent.settings import ROOT
from tests.conftest import TEST_KEY
from tests.support import wait_until

REQUESTS = 10
HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}
THREAD_LOG_SQL = """
SELECT role, content, turn_id FROM messages
WHERE thread_id = %s AND NOT is_filler ORDER BY turn_started_at, turn_id, seq
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class WorkerProcess:
    """`python fastapi_server/server_openai.py --port P` as its own process, as deployed."""

    def __init__(self, env: dict[str, str], *, cwd: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = ROOT / "fastapi_server" / "server_openai.py"
        self.log = cwd / f"worker-{self.port}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(script), "--port", str(self.port)],
                env=env,
                cwd=cwd,  # away from any .env in the repository
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> WorkerProcess:
        def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx2.get(f"{self.url}/health", timeout=2).status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(up, within_s=60, every_s=0.1)
        return self

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def worker_env(pg_dsn: str, sim_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    mcp = tmp_path / "mcp_config.json"
    mcp.write_text("{}", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "SIM_", "CONN_"))}
    env.update(
        CONN_STR=pg_dsn,
        SIM_URL=sim_url,
        LLM_PROVIDER="sim",
        LLM_RETRIES="0",
        FAST_AUTH_KEYS=TEST_KEY,
        MCP_CONFIG=str(mcp),
        DATA_DIR=str(tmp_path / "data"),
        **extra,
    )
    return env


@pytest.fixture
def two_workers(pg_dsn, simulator, tmp_path) -> Iterator[list[WorkerProcess]]:
    env = worker_env(pg_dsn, simulator.base_url, tmp_path)
    workers = [WorkerProcess(env, cwd=tmp_path) for _ in range(2)]
    try:
        yield [worker.wait_ready() for worker in workers]
    finally:
        for worker in workers:
            worker.stop()


def _turn(url: str, thread_id: str, text: str, *, stream: bool) -> str:
    body = {
        "messages": [{"role": "user", "content": text}],
        "thread_id": thread_id,
        "stream": stream,
    }
    response = httpx2.post(f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=60)
    assert response.status_code == 200, response.text
    if stream:
        assert response.text.endswith("data: [DONE]\n\n")
        assert '"finish_reason":"stop"' in response.text
        return response.text
    return response.json()["choices"][0]["message"]["content"]


def _hit(urls: list[str], thread_id: str) -> list[str]:
    texts = [f"并发第{i}句" for i in range(REQUESTS)]
    with concurrent.futures.ThreadPoolExecutor(REQUESTS) as pool:
        futures = [
            pool.submit(_turn, urls[i % len(urls)], thread_id, text, stream=i % 2 == 0)
            for i, text in enumerate(texts)
        ]
        for future in futures:
            future.result()
    return texts


def _assert_recorded_in_order(pg_dsn: str, thread_id: str, texts: list[str]) -> None:
    def logged():
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(THREAD_LOG_SQL, (thread_id,)).fetchall()
        return rows if len(rows) >= 2 * len(texts) else None

    rows = wait_until(logged)
    assert len(rows) == 2 * len(texts)  # none lost, none doubled
    # Each turn is its question followed by its own answer: nothing interleaved.
    for question, answer in zip(rows[::2], rows[1::2], strict=True):
        assert (question[0], answer[0]) == ("user", "assistant")
        assert question[2] == answer[2] and question[1] in answer[1]
    logged_order = [row[1] for row in rows[::2]]
    assert sorted(logged_order) == sorted(texts)
    # The log tells the turns in the order they ran: the order memory holds them in.
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
    remembered = [m.content for m in state.checkpoint["channel_values"]["messages"]]
    assert remembered[::2] == logged_order
    for question, answer in zip(remembered[::2], remembered[1::2], strict=True):
        assert question in answer


def test_ten_concurrent_requests_on_one_thread(live_server, pg_dsn, thread_id):
    server = live_server()
    texts = _hit([server.url], thread_id)
    _assert_recorded_in_order(pg_dsn, thread_id, texts)


def test_ten_concurrent_requests_on_one_thread_across_two_processes(two_workers, pg_dsn, thread_id):
    texts = _hit([worker.url for worker in two_workers], thread_id)
    _assert_recorded_in_order(pg_dsn, thread_id, texts)
