"""Slow clients (slowloris) against a real server process: a request must be read whole within
REQUEST_READ_TIMEOUT_S, or it is answered 408 and its connection closed; answers that take
longer, and kept-alive connections between requests, are not cut."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.conftest import TEST_KEY
from tests.support import set_latency
from tests.test_faults_concurrency import HEADERS, WorkerProcess, worker_env

READ_TIMEOUT_S = 1.0
BOUND_S = 30.0  # a connection still open this long after its deadline was never cut
HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
KEYED_HEAD = HEAD + f"Authorization: Bearer {TEST_KEY}\r\n".encode()
BODY = {"messages": [{"role": "user", "content": "你好"}]}


@pytest.fixture(scope="module")
def server(pg_dsn, simulator, tmp_path_factory) -> Iterator[WorkerProcess]:
    cwd = tmp_path_factory.mktemp("slow")
    env = worker_env(pg_dsn, simulator.base_url, cwd, REQUEST_READ_TIMEOUT_S=str(READ_TIMEOUT_S))
    worker = WorkerProcess(env, cwd=cwd).wait_ready()
    yield worker
    worker.stop()


def _connect(server: WorkerProcess, sent: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=BOUND_S)
    sock.sendall(sent)
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (or BOUND_S passes)."""
    received = b""
    with sock:
        while chunk := sock.recv(4096):
            received += chunk
    return received


@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        HEAD,  # half a head: no key has been read yet
        KEYED_HEAD + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    ],
    ids=["silent", "half-head", "slow-body"],
)
def test_a_request_not_sent_in_time_is_408_and_closed(server, sent):
    """They were held open for as long as the client liked: a few hundred half heads, sent
    without a key, used up the process's file descriptors and every speaker was refused."""
    answer = _until_closed(_connect(server, sent))
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    log = server.log.read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in log and "unhandled error" not in log


def test_many_slow_clients_are_all_cut_off_and_the_server_answers(server):
    held = [_connect(server, HEAD + b"X-Slow: 1\r\n") for _ in range(50)]
    assert all(_until_closed(sock).startswith(b"HTTP/1.1 408 ") for sock in held)
    url = server.url + "/v1/chat/completions"
    answer = httpx2.post(url, json=BODY, headers=HEADERS, timeout=30)
    assert answer.status_code == 200


def test_answers_and_kept_alive_connections_outlast_the_deadline(server, simulator):
    """The deadline is on reading the request: an answer slower than it, and a pause between
    two requests on one connection (uvicorn's keep-alive allows 5 s), are not cut."""
    set_latency(simulator, "chat", ttft_ms=READ_TIMEOUT_S * 1500)
    try:
        with httpx2.Client(base_url=server.url, headers=HEADERS, timeout=30) as client:
            slow = client.post("/v1/chat/completions", json={**BODY, "stream": True})
            assert slow.status_code == 200 and "[DONE]" in slow.text
            time.sleep(READ_TIMEOUT_S * 1.5)
            again = client.post("/v1/chat/completions", json=BODY)
            assert again.status_code == 200
            assert client.get("/health").status_code == 200
    finally:
        set_latency(simulator, "chat", ttft_ms=0)
