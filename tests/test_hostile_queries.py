"""SQL and HTML injection against the two places users type query text: the capture predicate
language (`lang-agent calls --predicate`) and the viewer's search and parameters."""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx2
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql

from fastapi_server.viewer import create_viewer_app
from lang_agent.capture.predicate import ALIASES, FIELDS, OPERATORS, PredicateError
from lang_agent.capture.query import CallFilter
from lang_agent.settings import Settings
from tests.support import LiveServer
from tests.viewer_seed import XSS, Msg, apply_schema, seed_turn

VIEWER_KEY = "viewer-key-hostile-0123"
FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
INJECTIONS = [
    "' OR 1=1 --",
    "'; DROP TABLE messages; --",
    '"; DROP TABLE llm_calls; --',
    "%' OR '%'='",
    "\\'; SELECT pg_sleep(10); --",
    "1) OR (1=1",
    "$$; DROP TABLE turns; $$",
    "E'\\x27'",
    "%",
    "_",
    "*",
    "\\",
    XSS,
    "<script>alert(1)</script>",
    '"><svg onload=alert(1)>',
    "{{7*7}}",
    "\x00",
    "🙂" * 50,
]


# ---- the predicate language --------------------------------------------------------------------

NAMES = sorted(FIELDS) + sorted(ALIASES) + ["password", "pg_sleep", "OR", "select"]
VALUES = st.one_of(
    st.sampled_from(INJECTIONS).map(
        lambda v: "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    ),
    st.sampled_from(["1", "-2.5", "true", "false", "null", "'ok'", "'2026-01-01'", "'x*'"]),
    st.text(max_size=12).map(lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
TOKEN = st.one_of(
    st.sampled_from(NAMES),
    st.sampled_from(OPERATORS),
    st.sampled_from(["&&", "||", "(", ")", "[", "]", ",", ".", "-1", "0", "'k'", ";", "--", "/*"]),
    VALUES,
)
COMPARISON = st.builds(
    lambda name, path, op, value: f"{name}{path} {op} {value}",
    st.sampled_from(NAMES),
    st.sampled_from(["", ".choices.0.finish_reason", ".'a b'", ".usage.prompt_tokens"]),
    st.sampled_from(OPERATORS),
    st.one_of(VALUES, st.lists(VALUES, min_size=1, max_size=3).map(lambda v: f"[{', '.join(v)}]")),
)
PREDICATE = st.one_of(
    st.lists(TOKEN, max_size=12).map(" ".join),
    st.lists(COMPARISON, min_size=1, max_size=3).map(" && ".join),
    st.lists(COMPARISON, min_size=1, max_size=3).map(lambda c: "(" + " || ".join(c) + ")"),
    st.text(max_size=60),
)


@pytest.fixture(scope="module")
def conn(pg_dsn) -> Iterator[psycopg.Connection]:
    apply_schema(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as connection:
        yield connection


def _tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {row[0] for row in rows}


@FUZZ
@given(predicate=PREDICATE)
def test_any_predicate_is_refused_or_runs_as_a_filter(conn, predicate):
    try:
        where, params = CallFilter(predicates=(predicate,)).where()
    except PredicateError as exc:
        assert str(exc)
        return
    query = sql.SQL("SELECT count(*) FROM llm_calls WHERE {}").format(where)
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute("SET LOCAL statement_timeout = 5000")
            conn.execute(query, params).fetchone()
    except psycopg.errors.DataError:
        pass  # a value that does not fit its field (a bad regex, date or number): a user error
    # Never a syntax error, an unknown column or function, or a write: the SQL is fixed.


def test_injection_values_stay_values_and_the_tables_stay(conn):
    before = _tables(conn)
    for value in INJECTIONS:
        if "\x00" in value:
            continue  # Postgres text holds no NUL: the viewer test below covers it
        quoted = "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        for predicate in (
            f"thread_id == {quoted}",
            f"model ~ {quoted}",
            f"request_body.messages.0.content == {quoted}",
            f"tags @ [{quoted}, 'x']",
        ):
            where, params = CallFilter(predicates=(predicate,)).where()
            assert value not in where.as_string(conn) or value in "%_*\\"
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                rows = conn.execute(
                    sql.SQL("SELECT count(*) FROM llm_calls WHERE {}").format(where), params
                ).fetchone()
            assert rows[0] == 0 or value in "%_*\\"
    assert _tables(conn) == before


# ---- the viewer's search and parameters ---------------------------------------------------------


@pytest.fixture(scope="module")
def seeded(conn) -> dict[str, str]:
    """One thread per hostile string, each holding it verbatim in a message."""
    at = datetime.now(UTC) + timedelta(days=7000)  # after anything else in the shared DB
    threads = {}
    for number, value in enumerate(INJECTIONS):
        if "\x00" in value:
            continue
        thread_id = f"inj-{number}-{uuid.uuid4().hex[:8]}"
        seed_turn(conn, thread_id, at=at, messages=[Msg("user", f"before {value} after")])
        threads[value] = thread_id
    return threads


@pytest.fixture(scope="module")
def viewer(pg_dsn, conn, tmp_path_factory) -> Iterator[httpx2.Client]:
    settings_ = Settings(
        _env_file=None,
        conn_str=pg_dsn,
        viewer_keys=VIEWER_KEY,
        data_dir=tmp_path_factory.mktemp("viewer-hostile") / "data",
    )
    with LiveServer(create_viewer_app(settings_)) as live:
        headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
        with httpx2.Client(base_url=live.url, headers=headers, timeout=20) as client:
            yield client


def test_search_finds_hostile_text_literally_and_only_there(viewer, seeded, conn):
    before = _tables(conn)
    for value, thread_id in seeded.items():
        if value in ("%", "_", "*", "\\"):
            continue  # common characters: other threads contain them too
        response = viewer.get("/api/viewer/threads", params={"q": value})
        assert response.status_code == 200, (value, response.text)
        found = [t["thread_id"] for t in response.json()["threads"]]
        assert thread_id in found, value
        # Only threads that hold the text literally (other tests' threads may hold it too).
        holding = {
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT thread_id FROM messages WHERE strpos(content, %s) > 0", (value,)
            ).fetchall()
        }
        assert set(found) <= holding, (value, found)
        # The text comes back as JSON data, never as markup.
        assert response.headers["content-type"].startswith("application/json")
        assert "nosniff" in response.headers["x-content-type-options"]
    assert _tables(conn) == before


@FUZZ
@given(q=st.text(max_size=200), cursor=st.one_of(st.none(), st.text(max_size=80)))
def test_fuzzed_search_and_cursors_never_fail(viewer, q, cursor):
    params = {"q": q} if cursor is None else {"q": q, "cursor": cursor}
    response = viewer.get("/api/viewer/threads", params=params)
    assert response.status_code in (200, 400), response.text
    body = response.json()
    assert "threads" in body if response.status_code == 200 else body["error"]["code"]


@FUZZ
@given(
    thread_id=st.one_of(st.text(min_size=1, max_size=600), st.sampled_from(INJECTIONS)),
    turn=st.text(max_size=40),
    hours=st.one_of(st.text(max_size=10), st.floats(allow_nan=False)),
)
@example(thread_id="0", turn="0/", hours="")  # found by hypothesis: once a 307 to ".../0"
def test_fuzzed_ids_and_numbers_are_4xx_never_5xx(viewer, thread_id, turn, hours):
    turn = urllib.parse.quote(turn, safe="")
    for path, params in (
        ("/api/viewer/thread", {"id": thread_id}),
        ("/api/viewer/thread/export", {"id": thread_id}),
        ("/api/viewer/dashboard", {"hours": hours}),
        (f"/api/viewer/turns/{turn}/calls", {}),
        (f"/api/viewer/calls/{turn}", {}),
    ):
        response = viewer.get(path, params=params)
        assert response.status_code in (200, 400, 404, 405), (path, response.text)


def test_a_search_longer_than_the_limit_is_a_clean_400(viewer):
    response = viewer.get("/api/viewer/threads", params={"q": "x" * 201})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_request"
    for params in ({"q": "a\x00b"}, {"id": "t\x00"}):
        path = "/api/viewer/threads" if "q" in params else "/api/viewer/thread"
        refused = viewer.get(path, params=params)
        assert refused.status_code == 400, refused.text  # a NUL: no message can hold one
