"""Graceful shutdown of a real server process: SIGTERM refuses new requests at once, lets
streams in flight finish within SHUTDOWN_GRACE_S, cuts the ones that run longer, and the
conversation log keeps every turn either way."""

from __future__ import annotations

import concurrent.futures
import signal
import subprocess
import sys
import time
import uuid

import httpx2
import psutil
import psycopg
import pytest

from lang_agent.settings import ROOT
from tests.conftest import TEST_KEY
from tests.support import set_latency, wait_until
from tests.test_faults_concurrency import HEADERS, WorkerProcess, free_port, worker_env

TURN_SQL = "SELECT status, error_code FROM turns WHERE thread_id = %s"
# A chat turn (no tool intent) whose echo streams for about two seconds at 25 tokens/s.
LONG_TEXT = "给我讲一个很长很长的关于小猫和小狗的故事，讲得慢一点，越详细越好，谢谢你。"


@pytest.fixture(autouse=True)
def reset_simulator(simulator):
    yield
    simulator.clear_faults()
    set_latency(simulator, "chat", ttft_ms=0)


def _stream(url: str, thread_id: str, started: concurrent.futures.Future) -> dict:
    body = {
        "messages": [{"role": "user", "content": LONG_TEXT}],
        "thread_id": thread_id,
        "stream": True,
    }
    lines: list[str] = []
    error = None
    try:
        with httpx2.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers=HEADERS, timeout=30
        ) as response:
            for line in response.iter_lines():
                if not line:
                    continue
                lines.append(line)
                if '"content":"' in line and not started.done():
                    started.set_result(time.monotonic())
    except httpx2.HTTPError as exc:
        error = exc
    if not started.done():
        started.set_result(None)
    return {"lines": lines, "error": error, "ended": time.monotonic()}


def _refused(url: str) -> bool:
    try:
        httpx2.get(f"{url}/health", timeout=2)
    except (httpx2.ConnectError, httpx2.ReadError, httpx2.RemoteProtocolError):
        # Refused, or reset: a connection that reached the backlog as the listener closed.
        return True
    return False


def _logged(pg_dsn: str, thread_id: str) -> tuple:
    def row():
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(TURN_SQL, (thread_id,)).fetchone()

    return wait_until(row)


def _exited_cleanly(worker: WorkerProcess) -> None:
    # uvicorn re-raises the signal once its shutdown is done, so the exit status is SIGTERM's.
    assert worker.process.wait(30) in (0, -signal.SIGTERM)
    log = worker.log.read_text()
    assert "Application shutdown complete" in log, log
    assert "rows dropped" not in log and " 0 dropped" in log, log  # no captured call lost
    assert "Traceback" not in log, log


def _term_during_a_stream(worker: WorkerProcess, thread_id: str) -> tuple[dict, float, bool]:
    """Open a stream, SIGTERM the server once text flows; the stream's outcome, when the
    signal went, and whether a new request was refused meanwhile."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started: concurrent.futures.Future = concurrent.futures.Future()
        outcome = pool.submit(_stream, worker.url, thread_id, started)
        assert started.result(timeout=30) is not None, outcome.result()
        worker.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        refused = wait_until(lambda: _refused(worker.url), within_s=5, every_s=0.05)
        result = outcome.result(timeout=60)
    return result, signalled, refused


def test_sigterm_lets_a_stream_finish_and_refuses_new_requests(
    pg_dsn, simulator, tmp_path, thread_id
):
    worker = WorkerProcess(
        worker_env(pg_dsn, simulator.base_url, tmp_path, SHUTDOWN_GRACE_S="20"), cwd=tmp_path
    ).wait_ready()
    try:
        set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=25)
        result, signalled, refused = _term_during_a_stream(worker, thread_id)
        assert refused
        assert result["error"] is None
        assert result["lines"][-1] == "data: [DONE]"
        assert any('"finish_reason":"stop"' in line for line in result["lines"])
        assert result["ended"] - signalled > 0.3  # it really was in flight at the signal
        _exited_cleanly(worker)
    finally:
        worker.stop()
    assert _logged(pg_dsn, thread_id) == ("ok", None)  # flushed before the process ended


def test_a_stream_longer_than_the_grace_period_ends_saying_so_and_is_logged(
    pg_dsn, simulator, tmp_path, thread_id
):
    grace_s = 1.5
    worker = WorkerProcess(
        worker_env(
            pg_dsn, simulator.base_url, tmp_path, SHUTDOWN_GRACE_S=str(grace_s), MAX_TOKENS="4000"
        ),
        cwd=tmp_path,
    ).wait_ready()
    try:
        set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=25)
        simulator.inject("loop", role="chat")
        result, signalled, refused = _term_during_a_stream(worker, thread_id)
        assert refused
        # Ended a moment before the grace period is over, in words the client can read,
        # where uvicorn's cancel cut the stream without an end.
        assert result["error"] is None and result["lines"][-1] == "data: [DONE]"
        assert '"code":"shutting_down"' in result["lines"][-2]
        assert result["ended"] - signalled < grace_s
        _exited_cleanly(worker)
    finally:
        worker.stop()
    # The server's doing, not the client's.
    assert _logged(pg_dsn, thread_id) == ("failed", "shutting_down")


def test_new_requests_are_refused_while_draining(pg_dsn, simulator, tmp_path):
    worker = WorkerProcess(
        worker_env(pg_dsn, simulator.base_url, tmp_path, SHUTDOWN_GRACE_S="20"), cwd=tmp_path
    ).wait_ready()
    thread_id = f"drain-{uuid.uuid4().hex[:8]}"
    try:
        set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=25)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started: concurrent.futures.Future = concurrent.futures.Future()
            outcome = pool.submit(_stream, worker.url, thread_id, started)
            started.result(timeout=30)
            worker.process.send_signal(signal.SIGTERM)
            wait_until(lambda: _refused(worker.url), within_s=5, every_s=0.05)
            body = {"messages": [{"role": "user", "content": "你好"}]}
            with pytest.raises(httpx2.ConnectError):
                httpx2.post(f"{worker.url}/v1/chat/completions", json=body, headers=HEADERS)
            assert outcome.result(timeout=60)["lines"][-1] == "data: [DONE]"
    finally:
        worker.stop()


def test_sigterm_stops_the_embedded_postgres_the_server_started(simulator, tmp_path):
    env = worker_env("", simulator.base_url, tmp_path)
    del env["CONN_STR"]
    worker = WorkerProcess(env, cwd=tmp_path).wait_ready()
    postmaster = tmp_path / "data" / "pg" / "postmaster.pid"
    server = psutil.Process(int(postmaster.read_text().split()[0]))
    try:
        worker.process.send_signal(signal.SIGTERM)
        assert worker.process.wait(30) == 0
        assert "Application shutdown complete" in worker.log.read_text()
        wait_until(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE)
    finally:
        worker.stop()
        if server.is_running():
            server.send_signal(signal.SIGINT)  # Postgres's fast shutdown


def test_an_open_viewer_stream_does_not_hold_the_shutdown(pg_dsn, simulator, tmp_path):
    # A browser's event stream never ends on its own: the viewer waited out its whole grace
    # period for it, past Docker's 10 s before SIGKILL, and then logged a traceback.
    port = free_port()
    env = worker_env(pg_dsn, simulator.base_url, tmp_path, VIEWER_PORT=str(port),
                     SHUTDOWN_GRACE_S="30")  # fmt: skip
    log = tmp_path / "viewer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "fastapi_server" / "server_viewer.py")],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            try:
                health = httpx2.get(f"{url}/api/viewer/health", headers=headers, timeout=2)
                return health.status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(up, within_s=60, every_s=0.1)
        with httpx2.stream(
            "GET", f"{url}/api/viewer/events", headers=headers, timeout=30
        ) as events:
            lines = events.iter_lines()
            assert next(lines) == "retry: 3000"
            process.send_signal(signal.SIGTERM)
            rest = list(lines)  # the stream ends, cleanly
        assert "event: ready" in rest
        assert process.wait(20) in (0, -signal.SIGTERM)  # well inside the 30 s grace
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def serve_until(stop: signal.Signals, env: dict[str, str], tmp_path, *ports: int) -> str:
    """Run `lang-agent serve` until its apps answer on `ports`, send it `stop`, and return its
    log once it has exited 0."""
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lang_agent.cli", "serve"],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def up() -> bool:
            assert process.poll() is None, log.read_text()
            return not any(_refused(f"http://127.0.0.1:{port}") for port in ports)

        wait_until(up, within_s=60, every_s=0.1)
        process.send_signal(stop)
        assert process.wait(30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    return log.read_text()


def test_ctrl_c_stops_lang_agent_serve_cleanly(pg_dsn, simulator, tmp_path):
    # The README's first command runs until Ctrl-C. Its two servers (agent API and viewer)
    # each hand the signal back once shut down, and the second one reached click as a
    # KeyboardInterrupt: "Aborted!" and exit status 1 after a clean stop.
    port, viewer_port = free_port(), free_port()
    env = worker_env(pg_dsn, simulator.base_url, tmp_path, PORT=str(port),
                     VIEWER_PORT=str(viewer_port))  # fmt: skip
    text = serve_until(signal.SIGINT, env, tmp_path, port, viewer_port)
    assert text.count("Application shutdown complete") == 2, text
    assert "Aborted" not in text and "Traceback" not in text, text
