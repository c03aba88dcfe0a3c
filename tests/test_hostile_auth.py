"""Nobody gets in without a key, keys are compared in constant time, the viewer only reads, and
no key (a client's or a provider's) ends up in logs, captures, exports or answers."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from collections.abc import Iterator

import dashscope
import httpx2
import psycopg
import pytest
from dashscope import Application

from fastapi_server import auth
from fastapi_server.viewer import auth as viewer_auth
from fastapi_server.viewer import create_viewer_app
from lang_agent import local_requests
from lang_agent.capture.commands import export_command, inspect_command
from lang_agent.capture.export import SECTIONS
from lang_agent.capture.query import CallFilter
from lang_agent.llm.sim import Simulator
from tests.support import LiveServer, ds_thread, wait_until

OPENAI = "/v1/chat/completions"
DASHSCOPE = "/api/v1/apps/lang-agent/completion"
BODY = {"messages": [{"role": "user", "content": "你好"}]}
DASH_BODY = {"input": {"prompt": "你好"}}
CLIENT_KEY = "client-SECRET-key-456"
OTHER_KEY = "second-SECRET-key-789"
PROVIDER_KEY = "sk-test-SECRET-123"
VIEWER_KEY = "viewer-SECRET-key-321"
WRONG_KEY = "wrong-SECRET-guess-000"
SECRETS = (CLIENT_KEY, OTHER_KEY, PROVIDER_KEY, VIEWER_KEY, WRONG_KEY)


# ---- the agent APIs refuse every request without a right key ------------------------------------


@pytest.fixture(scope="module")
def keyed(module_server) -> LiveServer:
    # Spaces and an empty entry, as a hand-written config has them.
    return module_server(fast_auth_keys=f" {CLIENT_KEY} , {OTHER_KEY},")


REFUSED = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": f"Bearer {WRONG_KEY}"},
    {"Authorization": f"Bearer {CLIENT_KEY[:-1]}"},
    {"Authorization": f"Bearer {CLIENT_KEY}x"},
    {"Authorization": f"Bearer {CLIENT_KEY.upper()}"},
    {"Authorization": f"Bearer {CLIENT_KEY[:5]} {CLIENT_KEY[5:]}"},
    {"Authorization": f"Bearer {CLIENT_KEY},{OTHER_KEY}"},
    {"Authorization": f"Basic {CLIENT_KEY}"},
    {"Authorization": CLIENT_KEY},
    {"Authorization": f"Token {CLIENT_KEY}"},
    {"Authorization": f"Bearer\t{CLIENT_KEY}"},
    {"Authorization": "Bearer " + "A" * 20_000},
    {"Authorization": "Bearer \u00e9\u00e8".encode()},  # raw UTF-8 bytes in a header
    {"X-Api-Key": CLIENT_KEY},
    {"Cookie": f"lang_agent_viewer={CLIENT_KEY}"},
]
ACCEPTED = [
    {"Authorization": f"Bearer {CLIENT_KEY}"},
    {"Authorization": f"Bearer {OTHER_KEY}"},
    {"Authorization": f"bearer {CLIENT_KEY}"},
    {"Authorization": f"Bearer   {CLIENT_KEY}"},  # the spaces between are not the key
]
GUARDED = [
    ("POST", OPENAI, BODY),
    ("GET", "/v1/models", None),
    ("DELETE", "/v1/threads/some-thread", None),
    ("POST", DASHSCOPE, DASH_BODY),
    ("POST", "/api/apps/any/completion", DASH_BODY),
]


@pytest.mark.parametrize("headers", REFUSED, ids=range(len(REFUSED)))
@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_requests_without_the_right_key_are_401(keyed, method, path, body, headers):
    response = httpx2.request(method, keyed.url + path, json=body, headers=headers, timeout=10)
    assert response.status_code in (400, 401, 431), response.text  # oversized header: 400/431
    if response.status_code == 401:
        body = response.json()
        code = body["error"]["code"] if "error" in body else body["code"]
        assert code in ("invalid_api_key", "InvalidApiKey")
        assert CLIENT_KEY not in response.text and OTHER_KEY not in response.text


@pytest.mark.parametrize("headers", ACCEPTED, ids=range(len(ACCEPTED)))
def test_the_right_keys_get_in(keyed, headers):
    response = httpx2.post(keyed.url + OPENAI, json=BODY, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_a_bad_key_is_refused_before_the_body_is_read(keyed):
    """An unauthenticated client cannot make the server parse (or buffer) a big body."""
    big = b'{"messages": [' + b'{"role":"user","content":"x"},' * 200_000 + b"{}]}"
    response = httpx2.post(
        keyed.url + OPENAI, content=big, headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    ("header", "presented"),
    [
        (f"Bearer {CLIENT_KEY}", CLIENT_KEY),
        (f"  Bearer   {CLIENT_KEY}  ", CLIENT_KEY),  # whitespace around is not part of a key
        (f"bearer {CLIENT_KEY}", CLIENT_KEY),
        ("Bearer ", ""),
        ("Bearer", ""),
        (f"Bearer\t{CLIENT_KEY}", ""),
        (f"Basic {CLIENT_KEY}", ""),
        (f"Bearer {CLIENT_KEY} extra", f"{CLIENT_KEY} extra"),
        ("", ""),
    ],
)
def test_the_presented_key_is_read_strictly(header, presented):
    from starlette.requests import Request

    scope = {"type": "http", "headers": [(b"authorization", header.encode("latin-1"))]}
    assert auth.presented_key(Request(scope)) == presented
    assert auth.key_matches(presented, [CLIENT_KEY]) == (presented == CLIENT_KEY)


# ---- constant-time comparison ------------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch) -> list[tuple[bytes, bytes]]:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


@pytest.mark.parametrize("presented", [CLIENT_KEY, OTHER_KEY, WRONG_KEY, "", "x" * 500])
def test_every_key_is_compared_in_constant_time(compare_calls, presented):
    keys = [CLIENT_KEY, OTHER_KEY, "third-key"]
    assert auth.key_matches(presented, keys) == (presented in keys)
    # No early exit: every configured key is compared, each by hmac.compare_digest.
    assert [b for _, b in compare_calls] == [k.encode() for k in keys]


def test_viewer_cookies_are_checked_against_every_key_in_constant_time(compare_calls):
    keys = [VIEWER_KEY, OTHER_KEY]
    cookie = viewer_auth.session_cookie(VIEWER_KEY)
    assert viewer_auth.cookie_valid(cookie, keys)
    assert len(compare_calls) == len(keys)
    compare_calls.clear()
    forged = cookie[:-1] + ("0" if cookie[-1] != "0" else "1")  # the MAC's last digit
    assert not viewer_auth.cookie_valid(forged, keys)
    assert len(compare_calls) == len(keys)
    assert not viewer_auth.cookie_valid("99999999999.forged", keys)


def test_key_comparison_uses_no_plain_equality():
    """The auth modules compare secrets only through hmac.compare_digest."""
    import ast
    import inspect

    for module in (auth, viewer_auth):
        tree = ast.parse(inspect.getsource(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
                assert not names & {"key", "keys", "presented", "candidate", "mac"}, ast.unparse(
                    node
                )


# ---- the viewer only reads ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def viewer(pg_dsn, tmp_path_factory) -> Iterator[LiveServer]:
    from lang_agent.settings import Settings

    settings = Settings(
        _env_file=None,
        conn_str=pg_dsn,
        viewer_keys=VIEWER_KEY,
        data_dir=tmp_path_factory.mktemp("viewer") / "data",
    )
    with LiveServer(create_viewer_app(settings)) as live:
        yield live


VIEWER_PATHS = [
    "/api/viewer/threads",
    "/api/viewer/thread?id=x",
    "/api/viewer/thread/export?id=x",
    f"/api/viewer/turns/{uuid.uuid4()}/calls",
    f"/api/viewer/calls/{uuid.uuid4()}",
    f"/api/viewer/calls/{uuid.uuid4()}/export",
    "/api/viewer/dashboard",
    "/api/viewer/events",
    "/",
]


def _table_sizes(pg_dsn: str) -> tuple:
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM turns), (SELECT count(*) FROM messages),"
            " (SELECT count(*) FROM llm_calls)"
        ).fetchone()


@pytest.mark.parametrize("path", VIEWER_PATHS)
def test_the_viewer_has_no_way_to_write(viewer, pg_dsn, path):
    headers = {"Authorization": f"Bearer {VIEWER_KEY}"}
    before = _table_sizes(pg_dsn)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = httpx2.request(
            method, viewer.url + path, headers=headers, json={"sql": "DELETE FROM turns"}
        )
        assert response.status_code in (404, 405), (method, path, response.status_code)
    assert _table_sizes(pg_dsn) == before


@pytest.mark.parametrize("path", VIEWER_PATHS[:-1])
def test_the_viewer_refuses_the_agent_key_and_no_key(viewer, path):
    for headers in (
        {},
        {"Authorization": f"Bearer {WRONG_KEY}"},
        {"Cookie": "lang_agent_viewer=1.x"},
    ):
        response = httpx2.get(viewer.url + path, headers=headers, timeout=5)
        assert response.status_code == 401


@pytest.fixture(scope="module")
def keyless(module_server) -> LiveServer:
    return module_server(fast_auth_keys="")


WEB_PAGES = [
    {"Origin": "https://evil.example", "Content-Type": "text/plain"},  # no preflight needed
    {"Origin": "null", "Content-Type": "text/plain"},  # a sandboxed frame, a file:// page
    {"Host": "rebound.evil.example:8588"},  # DNS rebinding: the page's own name, now 127.0.0.1
]


@pytest.mark.parametrize("headers", WEB_PAGES, ids=["origin", "null-origin", "host"])
@pytest.mark.parametrize(("method", "path", "body"), GUARDED)
def test_without_keys_a_web_page_is_refused(keyless, method, path, body, headers):
    """Without FAST_AUTH_KEYS the API answers this host's programs. Any web page the browser
    on this host showed could drive it (a text/plain POST needs no CORS preflight: the test
    turn set a device's volume), and a DNS-rebinding page read the answers and memory too."""
    content = None if body is None else json.dumps(body)
    response = httpx2.request(
        method, keyless.url + path, content=content, headers=headers, timeout=10
    )
    assert response.status_code == 403, response.text
    answer = response.json()
    code = answer["error"]["code"] if "error" in answer else answer["code"]
    assert code in ("forbidden", "AccessDenied")
    assert "FAST_AUTH_KEYS" in response.text


def test_without_keys_this_host_s_programs_get_in(keyless, keyed):
    local_page = {"Origin": "http://127.0.0.1:8590"}
    for headers in ({}, {"Host": "localhost"}, local_page):
        response = httpx2.post(keyless.url + OPENAI, json=BODY, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
    # With keys, the key is the guard: a page cannot send it without a preflight.
    with_key = {"Authorization": f"Bearer {CLIENT_KEY}", "Origin": "https://app.example"}
    assert httpx2.post(keyed.url + OPENAI, json=BODY, headers=with_key, timeout=30).is_success


@pytest.mark.parametrize(
    ("client", "headers", "refused"),
    [
        (("127.0.0.1", 5), [(b"host", b"127.0.0.1:8588")], False),
        (("::1", 5), [(b"host", b"[::1]:8588")], False),
        (None, [], False),  # a Unix socket
        (("192.168.1.20", 5), [(b"host", b"127.0.0.1:8588")], True),  # uvicorn --host 0.0.0.0
        (("127.0.0.1", 5), [(b"host", b"lan-box:8588")], True),
        (("127.0.0.1", 5), [(b"origin", b"http://[::1]:3000")], False),
        (("127.0.0.1", 5), [(b"origin", b"http://[bad")], True),
    ],
)
def test_who_counts_as_a_program_on_this_host(client, headers, refused):
    scope = {"type": "http", "client": client, "headers": headers}
    assert (local_requests.refusal(scope) is not None) is refused


# ---- no key in logs, captures, exports or answers ----------------------------------------------


@pytest.fixture
def keyed_sim(background_loop) -> Iterator[Simulator]:
    """A simulator that, like a real provider, insists on the provider key."""
    sim = Simulator(api_key=PROVIDER_KEY)
    background_loop.run(sim.start(host="127.0.0.1", port=0))
    yield sim
    background_loop.run(sim.stop())


def _scan(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret} leaked into {where}"
    assert "SECRET" not in text, f"a key leaked into {where}"


def test_no_key_in_logs_captures_exports_or_answers(
    live_server, make_settings, keyed_sim, pg_dsn, caplog, tmp_path
):
    caplog.set_level(logging.DEBUG)
    overrides = {
        "llm_provider": "ali",
        "ali_api_key": PROVIDER_KEY,
        "ali_base_url": keyed_sim.base_url,
        "fast_auth_keys": CLIENT_KEY,
        "viewer_keys": VIEWER_KEY,
    }
    server = live_server(**overrides)
    settings = make_settings(**overrides)
    headers = {"Authorization": f"Bearer {CLIENT_KEY}"}
    session = f"secret-{uuid.uuid4().hex[:8]}"  # the last thread is a DashScope session's
    threads = [*(f"secret-{uuid.uuid4().hex[:8]}" for _ in range(3)), ds_thread(session)]
    answers: list[str] = []
    with httpx2.Client(base_url=server.url, headers=headers, timeout=30) as client:
        for thread_id, text, stream in (
            (threads[0], "你好", False),
            (threads[1], "3加5乘2等于多少", True),
        ):
            body = {"messages": [{"role": "user", "content": text}], "thread_id": thread_id}
            response = client.post(OPENAI, json={**body, "stream": stream})
            assert response.status_code == 200, response.text
            answers.append(response.text)
        keyed_sim.inject("500", role="chat")  # an upstream failure, logged with its context
        failed = client.post(
            OPENAI,
            json={"messages": [{"role": "user", "content": "你好"}], "thread_id": threads[2]},
        )
        assert failed.status_code == 502
        answers.append(failed.text)
        refused = client.post(OPENAI, json=BODY, headers={"Authorization": f"Bearer {WRONG_KEY}"})
        assert refused.status_code == 401
        answers.append(refused.text)
        answers += [client.get("/health").text, client.get("/metrics").text]
    dashscope.base_http_api_url = f"{server.url}/api/"
    items = list(
        Application.call(
            api_key=CLIENT_KEY,
            app_id="lang-agent",
            session_id=session,
            messages=[{"role": "user", "content": "你好"}],
            stream=True,
        )
    )
    assert items[-1].status_code == 200
    answers += [str(item) for item in items]

    def captured() -> list[tuple]:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT id, call_id, status, t::text FROM llm_calls t WHERE thread_id = ANY(%s)",
                (threads,),
            ).fetchall()
        return rows if len(rows) >= 6 and all(r[2] != "pending" for r in rows) else []

    calls = wait_until(captured)
    for _, _, _, row in calls:
        _scan("llm_calls", row)
    with psycopg.connect(pg_dsn) as conn:
        for table in ("turns", "messages"):
            rows = conn.execute(
                f"SELECT t::text FROM {table} t WHERE thread_id = ANY(%s)", (threads,)
            ).fetchall()
            _scan(table, "\n".join(r[0] for r in rows))

    # What `lang-agent calls export / inspect` print and write.
    exported = asyncio.run(
        export_command(settings, filters=CallFilter(thread_id=threads[1]), directory=tmp_path)
    )
    _scan("export file names", exported)
    for path in tmp_path.glob("*.json"):
        _scan(f"export {path.name}", path.read_text(encoding="utf-8"))
    curl = asyncio.run(
        export_command(settings, filters=CallFilter(thread_id=threads[1]), curl=True)
    )
    assert "curl" in curl
    _scan("curl export", curl)
    for call_id, *_ in calls:
        shown = asyncio.run(
            inspect_command(settings, filters=CallFilter(id=call_id), sections=SECTIONS)
        )
        _scan("calls inspect", shown)

    # What the viewer serves.
    with LiveServer(create_viewer_app(settings)) as viewer:
        view = httpx2.Client(base_url=viewer.url, headers={"Authorization": f"Bearer {VIEWER_KEY}"})
        for thread_id in threads:
            _scan("viewer thread", view.get("/api/viewer/thread", params={"id": thread_id}).text)
            exported = view.get("/api/viewer/thread/export", params={"id": thread_id})
            _scan("viewer thread export", exported.text)
        for _, call_uuid, _, _ in calls:
            _scan("viewer call", view.get(f"/api/viewer/calls/{call_uuid}").text)
            _scan("viewer call export", view.get(f"/api/viewer/calls/{call_uuid}/export").text)
        view.close()

    for number, answer in enumerate(answers):
        _scan(f"answer {number}", answer)
    log_text = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    assert "answered HTTP 500" in log_text  # the failure was logged, just not the key
    _scan("the log", log_text + caplog.text)


def test_a_base_url_s_credentials_stay_out_of_health_and_the_log(live_server, caplog):
    """A gateway's credentials in a provider's base URL (user:password@, a token as the user
    name, ?key=) were shown by /health, which answers without a key, and in the start-up log."""
    caplog.set_level(logging.DEBUG)
    secrets = ("URL-SECRET-pw", "URL-SECRET-token", "URL-SECRET-query")
    for base_url, provider in (
        ("http://gw-user:URL-SECRET-pw@127.0.0.1:9/v1?api-key=URL-SECRET-query", "openai"),
        ("https://URL-SECRET-token@127.0.0.1:9/compatible-mode/v1", "ali"),
    ):
        server = live_server(
            llm_provider=provider,
            **{f"{provider}_base_url": base_url, f"{provider}_api_key": PROVIDER_KEY},
        )
        health = httpx2.get(server.url + "/health", timeout=10)
        assert health.status_code == 200
        models = health.json()["models"]
        assert all("@ http" in shown and "127.0.0.1:9" in shown for shown in models.values())
        for secret in (*secrets, PROVIDER_KEY):
            assert secret not in health.text
            assert secret not in caplog.text
