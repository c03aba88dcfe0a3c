"""The viewer's pages and JSON API over a real Postgres: lists, search, threads, calls, dashboard,
export, live events, the read-only role and the auth rules."""

from __future__ import annotations

import json
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import httpx2
import psycopg
import pytest
from pydantic import ValidationError

from fastapi_server.viewer import create_viewer_app
from fastapi_server.viewer.auth import COOKIE
from fastapi_server.viewer.readonly import read_only_db, resolve_read_only, with_session_options
from lang_agent import conversation_queries as queries
from lang_agent.db import CONNECTION_KWARGS
from lang_agent.settings import Settings
from tests.support import LiveServer
from tests.viewer_seed import (
    FALLBACK_SPOKEN,
    XSS,
    Call,
    Msg,
    apply_schema,
    failed_turn,
    seed_turn,
    weather_thread,
)

VIEWER_KEY = "viewer-key-0123456789"


def viewer_settings(pg_dsn: str, tmp_path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "conn_str": pg_dsn,
        "viewer_keys": VIEWER_KEY,
        "data_dir": tmp_path / "data",
        "timezone": "Asia/Shanghai",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture(scope="module")
def db(pg_dsn: str) -> psycopg.Connection:
    apply_schema(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture(scope="module")
def viewer(pg_dsn: str, db, tmp_path_factory) -> LiveServer:
    settings = viewer_settings(pg_dsn, tmp_path_factory.mktemp("viewer"))
    with LiveServer(create_viewer_app(settings)) as server:
        yield server


@pytest.fixture
def client(viewer: LiveServer) -> httpx2.Client:
    headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
    with httpx2.Client(base_url=viewer.url, headers=headers, timeout=15) as client:
        yield client


def fresh(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ---- lists, paging, search ---------------------------------------------------------------------


def test_thread_list_pages_newest_first_without_gaps(client, db):
    token = fresh("pagetoken")
    base = datetime.now(UTC) + timedelta(days=3650)  # above what other tests write "now"
    ids = [fresh("page") for _ in range(7)]
    for i, thread_id in enumerate(ids):
        seed_turn(db, thread_id, at=base + timedelta(minutes=i), messages=[Msg("user", token)])
        seed_turn(db, thread_id, at=base - timedelta(days=1), messages=[Msg("user", "older")])

    seen: list[dict] = []
    cursor = None
    while not set(ids) <= {t["thread_id"] for t in seen}:
        page = client.get("/api/viewer/threads", params={"limit": 3, "cursor": cursor}).json()
        assert len(page["threads"]) <= 3
        seen += page["threads"]
        cursor = page["next_cursor"]
        assert cursor or set(ids) <= {t["thread_id"] for t in seen}
    names = [t["thread_id"] for t in seen]
    assert len(names) == len(set(names)), "a thread repeated across pages"
    assert [t for t in names if t in ids] == list(reversed(ids))
    times = [datetime.fromisoformat(t["last_at"]) for t in seen]
    assert times == sorted(times, reverse=True)
    newest = next(t for t in seen if t["thread_id"] == ids[-1])
    assert newest["message_count"] == 2
    assert newest["preview"] == token


def test_search_finds_message_text_case_insensitively_with_literal_wildcards(client, db):
    now = datetime.now(UTC)
    hit, miss = fresh("hit"), fresh("miss")
    needle = f"Needle_{uuid.uuid4().hex[:8]}%"
    seed_turn(db, hit, at=now, messages=[Msg("user", "hello"), Msg("assistant", f"a {needle} b")])
    seed_turn(db, miss, at=now, messages=[Msg("user", needle.replace("_", "x").rstrip("%"))])

    found = client.get("/api/viewer/threads", params={"q": needle.lower()}).json()
    assert [t["thread_id"] for t in found["threads"]] == [hit]
    assert needle in found["threads"][0]["match"]
    assert client.get("/api/viewer/threads", params={"q": "%"}).status_code == 200
    nothing = client.get("/api/viewer/threads", params={"q": fresh("absent")}).json()
    assert nothing == {"threads": [], "next_cursor": None}


def test_search_finds_a_thread_by_part_of_its_id(client, db):
    """Support is told "device X" or "thread Y", not the words said: the search box found
    only message text, so a thread id typed into it found nothing."""
    device = uuid.uuid4().hex[:10]
    thread_id = f"xiaozhi-{device}-session"
    seed_turn(db, thread_id, at=datetime.now(UTC), messages=[Msg("user", "把音量调到30")])
    found = client.get("/api/viewer/threads", params={"q": device.upper()}).json()
    assert [t["thread_id"] for t in found["threads"]] == [thread_id]
    assert found["threads"][0]["message_count"] == 1


def test_bad_cursor_and_limits_are_client_errors(client):
    assert client.get("/api/viewer/threads", params={"cursor": "not-a-cursor"}).status_code == 400
    assert client.get("/api/viewer/threads", params={"limit": 0}).status_code == 400
    assert client.get("/api/viewer/threads", params={"limit": 10_000}).status_code == 400
    response = client.get("/api/viewer/threads", params={"q": "x" * 500})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"


def test_ten_thousand_threads_page_through_indexes(client, db, pg_dsn):
    prefix = fresh("bulk")
    db.execute(
        """
        WITH t AS (
            INSERT INTO turns (turn_id, thread_id, front_end, status, started_at)
            SELECT gen_random_uuid(), %s || '-' || g, 'openai', 'ok',
                   now() - interval '400 days' + g * interval '1 second'
            FROM generate_series(1, 10000) g
            RETURNING turn_id, thread_id, started_at)
        INSERT INTO messages (thread_id, turn_id, seq, role, content, turn_started_at)
        SELECT thread_id, turn_id, s, CASE s WHEN 0 THEN 'user' ELSE 'assistant' END,
               'bulk message ' || thread_id, started_at
        FROM t, generate_series(0, 1) s
        """,
        (prefix,),
    )
    db.execute("ANALYZE turns")
    db.execute("ANALYZE messages")
    page = client.get("/api/viewer/threads", params={"limit": 50}).json()
    assert len(page["threads"]) == 50 and page["next_cursor"]
    cursor = queries.Cursor.decode(page["next_cursor"])
    for cursor_or_none in (None, cursor):
        statement, params = queries.threads_statement(cursor=cursor_or_none, limit=50)
        with psycopg.connect(pg_dsn) as conn:
            plan = "\n".join(
                row[0] for row in conn.execute(psycopg.sql.SQL("EXPLAIN ") + statement, params)
            )
        assert "Seq Scan on turns" not in plan, plan
        assert "Seq Scan on messages" not in plan, plan
    bulk = client.get("/api/viewer/threads", params={"q": f"bulk message {prefix}-9999"}).json()
    assert [t["thread_id"] for t in bulk["threads"]] == [f"{prefix}-9999"]


# ---- one thread ----------------------------------------------------------------------------------


def test_thread_view_orders_turns_and_messages_and_links_tool_args(client, db):
    thread_id = fresh()
    first, second = weather_thread(db, thread_id, at=datetime.now(UTC))
    view = client.get("/api/viewer/thread", params={"id": thread_id}).json()
    assert [t["turn_id"] for t in view["turns"]] == [str(first), str(second)]
    tool_turn = view["turns"][1]
    assert [m["role"] for m in tool_turn["messages"]] == [
        "user",
        "assistant",
        "assistant",
        "tool",
        "assistant",
    ]
    filler, call, tool = tool_turn["messages"][1:4]
    assert filler["is_filler"] is True
    assert call["tool_calls"][0]["name"] == "get_weather"
    assert tool["tool_name"] == "get_weather" and tool["tool_args"] == {"city": "北京"}
    assert tool_turn["route"] == "tool"
    assert tool_turn["calls"] == 3
    assert tool_turn["flags"] == ["truncated"]
    assert tool_turn["cost"] == pytest.approx(0.0004)
    assert tool_turn["latency_ms"] == 900.0 and tool_turn["ttft_ms"] == 250.0
    missing = client.get("/api/viewer/thread", params={"id": fresh("none")})
    assert missing.status_code == 404


def test_thread_pages_back_through_older_turns(client, db):
    thread_id = fresh()
    start = datetime.now(UTC)
    turns = [
        seed_turn(db, thread_id, at=start + timedelta(seconds=i), messages=[Msg("user", f"m{i}")])
        for i in range(5)
    ]
    latest = client.get("/api/viewer/thread", params={"id": thread_id, "limit": 2}).json()
    assert [t["turn_id"] for t in latest["turns"]] == [str(t) for t in turns[3:]]
    older = client.get(
        "/api/viewer/thread", params={"id": thread_id, "limit": 2, "before": latest["next_before"]}
    ).json()
    assert [t["turn_id"] for t in older["turns"]] == [str(t) for t in turns[1:3]]


def test_turn_calls_and_call_detail_and_bad_case_export(client, db):
    thread_id = fresh()
    _, turn = weather_thread(db, thread_id, at=datetime.now(UTC))
    calls = client.get(f"/api/viewer/turns/{turn}/calls").json()["calls"]
    assert [c["node"] for c in calls] == ["router", "tool", "chatty"]
    assert calls[1]["flags"] == {"truncated": {"suggested_max_tokens": 2048}}
    assert "request_body" not in calls[0]
    detail = client.get(f"/api/viewer/calls/{calls[1]['call_id']}").json()
    assert detail["request_body"]["model"] == "qwen-plus"
    assert detail["request_header"]["authorization"] == "[REDACTED]"
    export = client.get(f"/api/viewer/calls/{calls[1]['call_id']}/export")
    assert export.status_code == 200
    assert "attachment" in export.headers["content-disposition"]
    case = export.json()
    assert case["category"] == "badcase"
    assert case["metadata"]["flags"] == {"truncated": {"suggested_max_tokens": 2048}}
    assert case["response"]["body"]["choices"][0]["message"]["content"] == "hello"
    assert client.get(f"/api/viewer/calls/{uuid.uuid4()}").status_code == 404
    assert client.get("/api/viewer/turns/not-a-uuid/calls").status_code == 400


def test_thread_export_is_a_json_download(client, db):
    thread_id = fresh()
    now = datetime.now(UTC)
    weather_thread(db, thread_id, at=now)
    failed_turn(db, thread_id, at=now + timedelta(minutes=1))
    response = client.get("/api/viewer/thread/export", params={"id": thread_id})
    assert response.status_code == 200
    assert (
        response.headers["content-disposition"] == f'attachment; filename="thread-{thread_id}.json"'
    )
    document = response.json()
    assert document["thread_id"] == thread_id and "exported_at" in document
    assert [len(t["messages"]) for t in document["turns"]] == [2, 5, 3]
    assert [len(t["llm_calls"]) for t in document["turns"]] == [2, 3, 0]
    # What the speaker was told when the turn failed, told apart from the model's words.
    failed = document["turns"][2]
    assert failed["status"] == "failed"
    assert [(m["content"], m["is_fallback"]) for m in failed["messages"][1:]] == [
        ("从前有座山，", False),
        (FALLBACK_SPOKEN, True),
    ]


# ---- dashboard ---------------------------------------------------------------------------------


async def test_dashboard_aggregates_a_window(pg_dsn, db):
    # A random two-hour window in the 2150s that nothing else writes into.
    start = datetime(2150, 1, 1, tzinfo=UTC) + timedelta(hours=2 * random.randrange(80_000))
    thread_id = fresh()
    for i, latency in enumerate([100.0, 200.0, 300.0, 400.0]):
        seed_turn(
            db,
            thread_id,
            at=start + timedelta(minutes=20 * i),
            messages=[Msg("user", "x")],
            status="ok" if i < 3 else "failed",
            latency_ms=latency,
            ttft_ms=latency / 2,
            calls=[Call(flags={"repeat": {"ratio": 0.1}} if i == 0 else {}, cost=0.5)],
        )
    async with await psycopg.AsyncConnection.connect(pg_dsn, **CONNECTION_KWARGS) as conn:
        board = await queries.dashboard(
            conn, since=start, until=start + timedelta(hours=2), bucket="hour"
        )
    summary = board["summary"]
    assert summary["turns"] == 4 and summary["success_rate"] == 0.75
    assert summary["latency"][0] == pytest.approx(250.0)
    assert summary["calls"] == 4 and summary["cost"] == pytest.approx(2.0)
    assert [(row["turns"], row["ok"]) for row in board["turns"]] == [(3, 3), (1, 0)]
    assert board["turns"][0]["latency_p50"] == pytest.approx(200.0)
    assert board["by_model"][0]["model"] == "qwen-plus"
    assert board["by_model"][0]["prompt_tokens"] == 160
    assert [(f["flag"], f["calls"]) for f in board["flags"]] == [("repeat", 1)]
    assert board["routes"] == [{"route": "chat", "turns": 4}]
    with pytest.raises(ValueError, match="buckets"):
        await queries.dashboard(
            conn=None, since=start, until=start + timedelta(days=30), bucket="minute"
        )


def test_dashboard_api_shape(client, db):
    weather_thread(db, fresh(), at=datetime.now(UTC) - timedelta(minutes=5))
    board = client.get("/api/viewer/dashboard", params={"hours": 1}).json()
    assert board["bucket"] == "minute"
    assert board["summary"]["turns"] >= 2
    assert {"turns", "calls", "by_model", "routes", "flags"} <= board.keys()
    assert client.get("/api/viewer/dashboard", params={"hours": 0}).status_code == 400


# ---- health ----------------------------------------------------------------------------------


def test_health_answers_head_like_get(client):
    """Uptime checkers ask with HEAD; it was a 405."""
    got = client.get("/api/viewer/health")
    assert got.status_code == 200 and got.json()["database"] == {"ok": True, "error": None}
    head = client.head("/api/viewer/health")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-type"] == "application/json"
    assert client.get("/api/viewer/health").status_code == 200  # the connection goes on


# ---- escaping --------------------------------------------------------------------------------


def test_html_in_ids_and_messages_comes_back_as_data(client, db):
    thread_id = XSS + fresh("")
    seed_turn(
        db, thread_id, at=datetime.now(UTC), messages=[Msg("user", XSS), Msg("assistant", XSS)]
    )
    found = client.get("/api/viewer/threads", params={"q": XSS}).json()["threads"]
    assert thread_id in [t["thread_id"] for t in found]
    response = client.get("/api/viewer/thread", params={"id": thread_id})
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["turns"][0]["messages"][0]["content"] == XSS
    export = client.get("/api/viewer/thread/export", params={"id": thread_id})
    assert "<" not in export.headers["content-disposition"]
    page = client.get("/")
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["x-content-type-options"] == "nosniff"


# ---- live events ---------------------------------------------------------------------------------


def test_events_deliver_a_notify_for_a_thread(client, db):
    thread_id = fresh("live")
    got: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with client.stream("GET", "/api/viewer/events", timeout=10) as response:
            event = None
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                    continue
                if line.startswith("data: ") and event == "ready":
                    ready.set()
                if line.startswith("data: ") and event == "turn":
                    data = json.loads(line.removeprefix("data: "))
                    if data.get("thread_id") == thread_id:
                        got.append(data)
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10), "no ready event"
    db.execute("SELECT pg_notify('lang_agent_turns', %s)", (thread_id,))
    listener.join(10)
    assert got == [{"thread_id": thread_id}]


# ---- read-only database access -------------------------------------------------------------


async def test_viewer_pool_cannot_write(pg_dsn, db, tmp_path):
    access = await resolve_read_only(viewer_settings(pg_dsn, tmp_path))
    assert access.mode == "role"
    viewer_db = read_only_db(access, timeout_s=10)
    await viewer_db.open(apply_schema=False)
    try:
        async with viewer_db.connection() as conn:
            row = await (await conn.execute("SELECT current_user AS who")).fetchone()
            assert row["who"] == "lang_agent_viewer"
            assert await (await conn.execute("SELECT count(*) AS n FROM messages")).fetchone()
            insert = "INSERT INTO thread_leases VALUES ('x', 'viewer', now())"
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute(insert)
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                await conn.execute("CREATE TABLE viewer_was_here (x int)")
            # Read-only sessions are only the first fence: the role itself has no write grant.
            await conn.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(insert)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("DELETE FROM messages")
    finally:
        await viewer_db.close()


async def test_fallback_session_is_read_only(pg_dsn, db):
    dsn = with_session_options(pg_dsn)
    async with await psycopg.AsyncConnection.connect(dsn, **CONNECTION_KWARGS) as conn:
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            await conn.execute("INSERT INTO thread_leases VALUES ('x', 'viewer', now())")


# ---- auth ------------------------------------------------------------------------------------


def test_keys_guard_api_and_pages(viewer):
    with httpx2.Client(base_url=viewer.url, timeout=10) as anon:
        denied = anon.get("/api/viewer/threads")
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "unauthorized"
        assert anon.get("/", follow_redirects=False).headers["location"] == "/login"
        assert anon.get("/login").status_code == 200
        assert anon.get("/static/style.css").status_code == 200
        wrong = {"Authorization": "Bearer nope"}
        assert anon.get("/api/viewer/threads", headers=wrong).status_code == 401
        assert anon.get("/api/viewer/events", headers=wrong).status_code == 401


def test_login_sets_an_httponly_strict_cookie_without_the_key(viewer):
    with httpx2.Client(base_url=viewer.url, timeout=10) as browser:
        bad = browser.post("/login", data={"key": "wrong"}, follow_redirects=False)
        assert bad.status_code == 303 and bad.headers["location"] == "/login?failed=1"
        assert COOKIE not in browser.cookies
        good = browser.post("/login", data={"key": VIEWER_KEY}, follow_redirects=False)
        assert good.status_code == 303 and good.headers["location"] == "/"
        set_cookie = good.headers["set-cookie"].lower()
        assert "httponly" in set_cookie and "samesite=strict" in set_cookie
        assert VIEWER_KEY not in good.headers["set-cookie"]
        assert browser.get("/api/viewer/threads").status_code == 200
        assert browser.get("/").status_code == 200
        browser.cookies.set(COOKIE, "4102444800.forged", domain="127.0.0.1")
        assert browser.get("/api/viewer/threads").status_code == 401


def test_without_keys_the_viewer_is_loopback_only(pg_dsn, db, tmp_path):
    with pytest.raises(ValidationError, match="VIEWER_KEYS"):
        viewer_settings(pg_dsn, tmp_path, viewer_keys="", viewer_host="0.0.0.0")
    open_settings = viewer_settings(pg_dsn, tmp_path, viewer_keys="", fast_auth_keys="")
    assert open_settings.viewer_auth_keys == []
    assert viewer_settings(pg_dsn, tmp_path, viewer_keys="").viewer_auth_keys == []
    agent_keys = viewer_settings(pg_dsn, tmp_path, viewer_keys="", fast_auth_keys="a,b")
    assert agent_keys.viewer_auth_keys == ["a", "b"]
    with LiveServer(create_viewer_app(open_settings)) as server:
        with httpx2.Client(base_url=server.url, timeout=10) as local:
            assert local.get("/api/viewer/threads").status_code == 200
            rebound = local.get("/api/viewer/threads", headers={"Host": "evil.example:8590"})
            assert rebound.status_code == 403
            other_site = local.get("/api/viewer/threads", headers={"Origin": "https://x.example"})
            assert other_site.status_code == 403
            # From this host, but for a web page: "loopback only" did not say why.
            assert "answers only programs on this host" in other_site.text


def test_an_unexpected_error_is_a_500_that_closes_its_connection(pg_dsn, db, tmp_path) -> None:
    """Uvicorn drops the connection after an unhandled error; without `Connection: close` the
    client's next request on it failed with a reset."""
    app = create_viewer_app(viewer_settings(pg_dsn, tmp_path))

    @app.get("/api/viewer/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
    with (
        LiveServer(app) as server,
        httpx2.Client(base_url=server.url, headers=headers, timeout=15) as client,
    ):
        answer = client.get("/api/viewer/broken")
        assert answer.status_code == 500
        assert answer.headers["connection"] == "close"
        error = answer.json()["error"]
        assert error["code"] == "internal_error" and "a bug" not in error["message"]
        assert client.get("/api/viewer/health").status_code == 200  # on a new connection
