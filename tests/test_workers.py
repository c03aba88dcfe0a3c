"""WORKERS=2: a group of server processes on one port, each with its own SO_REUSEPORT socket.
Connections spread over every worker, a thread's turns stay in order across them, SIGTERM
drains them all, a worker that dies takes the group down for a supervisor to restart, and
/metrics answers for the whole group, whichever worker a scrape reaches."""

from __future__ import annotations

import contextlib
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import psutil
import psycopg
import pytest

from fastapi_server.balance import SLACK
from lang_agent.bench.stack import wait_listening
from tests.conftest import TEST_KEY
from tests.support import metric_series, wait_until
from tests.test_faults_concurrency import (
    WorkerProcess,
    _assert_recorded_in_order,
    _hit,
    worker_env,
)

CONNECTIONS = 16
HELLO = [{"role": "user", "content": "你好"}]
CAPTURED_SQL = "SELECT count(*) FROM llm_calls WHERE thread_id = %s"


@pytest.fixture
def group(pg_dsn, simulator, tmp_path) -> Iterator[WorkerProcess]:
    env = worker_env(pg_dsn, simulator.base_url, tmp_path, WORKERS="2")
    group = WorkerProcess(env, cwd=tmp_path).wait_ready()
    yield group
    group.stop()


def _workers(group: WorkerProcess) -> list[psutil.Process]:
    """The group's two workers, once each listens."""
    return wait_listening(group.process.pid, group.port, count=2, timeout=60)


def _gone(worker: psutil.Process) -> bool:
    """Exited: orphans are reaped by whoever adopts them, so a zombie counts as gone."""
    try:
        return worker.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _held(worker: psutil.Process, port: int) -> int:
    return len(_client_ports(worker, port))


def _client_ports(worker: psutil.Process, port: int) -> set[int]:
    """The client ends (ports) of the connections the worker holds on `port`."""
    return {
        conn.raddr.port
        for conn in worker.net_connections("tcp")
        if conn.status == psutil.CONN_ESTABLISHED and conn.laddr.port == port
    }


def _ask_health(sock: socket.socket) -> bool:
    """GET /health on a kept connection; False when the answer closes it."""
    sock.sendall(b"GET /health HTTP/1.1\r\nhost: test\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().lower().split("\r\n")
    assert lines[0].startswith("http/1.1 200"), lines
    fields = dict(line.split(": ", 1) for line in lines[1:])
    while len(body) < int(fields["content-length"]):
        body += sock.recv(4096)
    return fields.get("connection") != "close"


def test_connections_spread_over_every_worker(group):
    workers = _workers(group)
    assert len(workers) == 2
    clients = [httpx2.Client(base_url=group.url, timeout=10) for _ in range(CONNECTIONS)]
    try:
        for client in clients:
            # Each keeps its connection open afterwards, once an answer has not closed it (a
            # worker above its share closes some; the next request connects afresh).
            for _ in range(10):
                answer = client.get("/health")
                assert answer.status_code == 200
                if answer.headers.get("connection") != "close":
                    break
        held = [_held(worker, group.port) for worker in workers]
    finally:
        for client in clients:
            client.close()
    assert sum(held) == CONNECTIONS and min(held) > 0, held


@contextlib.contextmanager
def _uneven(group: WorkerProcess, workers: list[psutil.Process]) -> Iterator[list[socket.socket]]:
    """Idle connections to the group, all but one of the second worker's taken away: an
    imbalance the kernel's hash would keep."""
    socks = [socket.create_connection(("127.0.0.1", group.port), timeout=10) for _ in range(40)]
    try:
        wait_until(lambda: sum(_held(worker, group.port) for worker in workers) == 40)
        second = sorted(_client_ports(workers[1], group.port))[1:]
        for sock in [sock for sock in socks if sock.getsockname()[1] in second]:
            socks.remove(sock)
            sock.close()
        wait_until(lambda: _held(workers[1], group.port) == 1)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_a_worker_above_its_share_hands_connections_back_until_the_group_is_even(group):
    workers = _workers(group)
    with _uneven(group, workers) as socks:
        uneven = [_held(worker, group.port) for worker in workers]

        def even() -> bool:
            kept = True
            for index, sock in enumerate(socks):
                if not _ask_health(sock):  # closed by its worker: the client connects again
                    sock.close()
                    socks[index] = socket.create_connection(("127.0.0.1", group.port), timeout=10)
                    kept = False
            held = [_held(worker, group.port) for worker in workers]
            return kept and sum(held) == len(socks) and max(held) <= -(-len(socks) // 2) + SLACK

        wait_until(even, within_s=60, every_s=0.3)
        assert _held(workers[1], group.port) > 1, uneven


def test_the_openai_sdk_goes_on_when_a_worker_closes_its_connection(group):
    # The SDK keeps its connection; answered with Connection: close it opens a new one for
    # the next request, without an error and without a retry (max_retries=0).
    with _uneven(group, _workers(group)):
        for _ in range(30):  # a new client's connection lands on the busy worker half the time
            with openai.OpenAI(base_url=f"{group.url}/v1", api_key=TEST_KEY, max_retries=0) as sdk:
                first = sdk.chat.completions.with_raw_response.create(model="m", messages=HELLO)
                assert first.parse().choices[0].message.content
                if first.headers.get("connection") == "close":
                    second = sdk.chat.completions.create(model="m", messages=HELLO)
                    assert second.choices[0].message.content
                    return
        pytest.fail("no answer closed its connection")


def test_a_threads_turns_stay_in_order_across_the_workers(group, pg_dsn, thread_id):
    texts = _hit([group.url], thread_id)
    _assert_recorded_in_order(pg_dsn, thread_id, texts)


def _calls_total(metrics: str) -> float:
    return sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("lang_agent_llm_calls_total{")
    )


def test_every_scrape_counts_the_calls_of_the_whole_group(group, pg_dsn, thread_id):
    _hit([group.url], thread_id)  # a connection per turn: both workers serve some

    def agreed() -> bool:
        with psycopg.connect(pg_dsn) as conn:
            captured = conn.execute(CAPTURED_SQL, (thread_id,)).fetchone()[0]
        # A connection per scrape, so the kernel hands them to both workers.
        scrapes = [httpx2.get(f"{group.url}/metrics", timeout=10) for _ in range(CONNECTIONS)]
        assert all(scrape.status_code == 200 for scrape in scrapes)
        return captured >= 10 and {_calls_total(s.text) for s in scrapes} == {captured}

    wait_until(agreed, within_s=30)


def test_every_scrape_counts_the_turns_of_the_whole_group(group, simulator):
    def ask(thread_id: str) -> None:
        # A client per turn, so a connection per turn: both workers serve some.
        with openai.OpenAI(base_url=f"{group.url}/v1", api_key=TEST_KEY, max_retries=0) as client:
            client.chat.completions.create(
                model="lang-agent", messages=HELLO, extra_body={"thread_id": thread_id}
            )

    for number in range(6):
        ask(f"group-count-{number}")
    simulator.inject("500", role="router")
    try:
        with pytest.raises(openai.APIStatusError):
            ask("group-count-failed")
    finally:
        simulator.clear_faults()
    expected = {
        '{front_end="openai",status="ok"}': 6,
        '{front_end="openai",status="upstream_status"}': 1,
    }

    def agreed() -> bool:
        scrapes = [httpx2.get(f"{group.url}/metrics", timeout=10) for _ in range(CONNECTIONS)]
        return all(
            metric_series(scrape.text, "lang_agent_turns_total") == expected for scrape in scrapes
        )

    wait_until(agreed, within_s=30)


def test_sigterm_drains_every_worker_and_exits_cleanly(group):
    workers = _workers(group)
    group.process.send_signal(signal.SIGTERM)
    assert group.process.wait(30) == 0
    assert not any(worker.is_running() for worker in workers)
    assert group.log.read_text().count("Application shutdown complete") == 2


def test_a_worker_that_dies_takes_the_group_down(group):
    first, second = _workers(group)
    first.kill()
    assert group.process.wait(30) == 1
    wait_until(lambda: not second.is_running())
    log = group.log.read_text()
    assert "exited (-9); stopping the others" in log, log


def test_without_so_reuseport_workers_are_refused_with_a_clear_error(monkeypatch, caplog):
    from fastapi_server.serve import AGENT_APP, STARTUP_FAILURE, run
    from lang_agent.settings import Settings

    monkeypatch.delattr(socket, "SO_REUSEPORT")
    settings = Settings(_env_file=None, workers=2, fast_auth_keys="k")
    assert run(AGENT_APP, settings=settings, host="127.0.0.1", port=0) == STARTUP_FAILURE
    assert "needs SO_REUSEPORT" in caplog.text


def test_workers_stop_when_the_parent_is_killed_outright(group):
    # SIGKILL forwards nothing: the workers must notice on their own, not hold the port.
    workers = _workers(group)
    # The group's metrics files, which its parent can no longer remove: the workers do.
    ours = [
        d
        for d in Path(tempfile.gettempdir()).glob("lang-agent-metrics-*")
        if (d / "worker-0.prom").exists()
        and time.time() - (d / "worker-0.prom").stat().st_mtime < 60
    ]
    assert ours
    group.process.kill()
    group.process.wait(10)
    wait_until(lambda: all(_gone(worker) for worker in workers), within_s=30)
    assert not any(d.exists() for d in ours)
    log = group.log.read_text()
    assert log.count("the parent process is gone") == 2, log
    assert log.count("Application shutdown complete") == 2, log
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", group.port)) != 0  # nobody listens any more


def test_the_embedded_postgres_of_a_killed_parent_is_stopped_by_the_next_run(simulator, tmp_path):
    # Without CONN_STR the parent starts an embedded Postgres for its workers. Killed outright,
    # it cannot stop it; the next run must adopt that server and stop it when it exits.
    env = worker_env("", simulator.base_url, tmp_path, WORKERS="2")
    del env["CONN_STR"]
    postmaster = tmp_path / "data" / "pg" / "postmaster.pid"
    first = WorkerProcess(env, cwd=tmp_path).wait_ready()
    server = psutil.Process(int(postmaster.read_text().split()[0]))
    second = None
    try:
        first.process.kill()
        first.process.wait(10)
        second = WorkerProcess(env, cwd=tmp_path).wait_ready()
        assert int(postmaster.read_text().split()[0]) == server.pid  # the same server, adopted
        assert "this run adopts it" in second.log.read_text()
        second.stop()
        assert second.process.returncode == 0
        wait_until(lambda: _gone(server), within_s=30)
    finally:
        if second is not None:
            second.stop()
        if not _gone(server):
            server.send_signal(signal.SIGINT)  # Postgres's fast shutdown
