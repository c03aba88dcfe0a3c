"""`lang-agent doctor`: a healthy setup passes; each broken part fails on its line, with a fix."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from psycopg.conninfo import make_conninfo

from lang_agent.cli import main
from lang_agent.db import MIGRATIONS
from lang_agent.doctor import (
    Check,
    check_auth,
    check_database,
    check_files,
    check_mcp,
    check_models,
    check_ports,
    check_tracing,
    diagnose,
    report,
)
from lang_agent.llm.sim import Simulator
from lang_agent.pool import Database
from lang_agent.settings import ROLES
from tests.conftest import TEST_KEY
from tests.support import LiveServer

LANGSMITH_VARS = (
    "LANGSMITH_TRACING",
    "LANGSMITH_TRACING_V2",
    "LANGCHAIN_TRACING",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if not c.ok]


def answering_404(body: dict | str) -> FastAPI:
    """An API that answers every POST with 404 and `body` (JSON, or a text page)."""
    app = FastAPI()

    @app.post("/{path:path}")
    def not_found(path: str) -> Response:
        if isinstance(body, dict):
            return JSONResponse(body, status_code=404)
        return PlainTextResponse(body, status_code=404)

    return app


@pytest.fixture
def no_tracing(monkeypatch):
    from langsmith import utils

    for name in LANGSMITH_VARS:
        monkeypatch.delenv(name, raising=False)
    utils.get_env_var.cache_clear()
    yield
    utils.get_env_var.cache_clear()


@pytest.fixture
def device_mcp_config(tmp_path: Path) -> Path:
    path = tmp_path / "mcp_config.json"
    server = {
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "lang_agent.tools.device_sim"],
    }
    path.write_text(json.dumps({"speaker": server}), encoding="utf-8")
    return path


@pytest.fixture
def healthy(make_settings, device_mcp_config):
    def make(**overrides):
        values = {
            "mcp_config": device_mcp_config,
            "port": closed_port(),
            "viewer_port": closed_port(),
        }
        return make_settings(**{**values, **overrides})

    return make


@pytest.fixture
async def migrated(pg_dsn: str) -> str:
    """The test database at the current schema, as a server's start leaves it."""
    db = Database(pg_dsn, max_size=1)
    await db.open()
    await db.close()
    return pg_dsn


async def test_healthy_setup_passes(healthy, migrated, no_tracing):
    checks = await diagnose(healthy(), timeout_s=20)
    assert failed(checks) == []
    names = [c.name for c in checks]
    for expected in ("model router", "model chat", "model tool", "model chatty", "database"):
        assert expected in names
    speaker = next(c for c in checks if c.name == "mcp speaker")
    assert "up" in speaker.detail and " 0 tools" not in speaker.detail
    database = next(c for c in checks if c.name == "database")
    assert f"schema version {len(MIGRATIONS) - 1} (current)" in database.detail
    assert report(checks).endswith("everything works")


async def test_bad_key_fails_each_role(make_settings):
    simulator = Simulator(api_key="right")
    url = await simulator.start(host="127.0.0.1", port=0)
    try:
        settings = make_settings(
            llm_provider="openai", openai_base_url=url, openai_api_key="wrong", sim_url=None
        )
        checks = await check_models(settings, timeout_s=10)
        good = make_settings(
            llm_provider="openai", openai_base_url=url, openai_api_key="right", sim_url=None
        )
        assert failed(await check_models(good, timeout_s=10)) == []
    finally:
        await simulator.stop()
    assert len(failed(checks)) == 4
    for check in checks:
        assert "key was refused (401)" in check.detail
        assert check.fix == "set a valid OPENAI_API_KEY"
        assert "wrong" not in check.detail


async def test_missing_key_and_unreachable_endpoint(make_settings):
    no_key = await check_models(make_settings(llm_provider="ali", sim_url=None), timeout_s=5)
    assert all("no ALI_API_KEY" in c.detail and c.fix == "set ALI_API_KEY" for c in no_key)
    dead = make_settings(
        llm_provider="openai",
        openai_base_url=f"http://127.0.0.1:{closed_port()}/v1",
        openai_api_key="k",
        sim_url=None,
    )
    checks = await check_models(dead, timeout_s=5)
    assert all(not c.ok and "cannot connect" in c.detail for c in checks)
    assert "OPENAI_BASE_URL" in checks[0].fix


async def test_model_timeout_names_the_url_setting_of_the_provider(make_settings):
    simulator = Simulator()
    url = await simulator.start(host="127.0.0.1", port=0)
    simulator.inject("timeout", count=len(ROLES))
    try:
        settings = make_settings(llm_provider="sim", sim_url=url)
        checks = await check_models(settings, timeout_s=0.5)
    finally:
        await simulator.stop()
    assert len(failed(checks)) == len(ROLES)
    assert {c.fix for c in checks} == {"check SIM_URL and the network"}


def openai_settings(make_settings, base_url: str, **overrides):
    return make_settings(
        llm_provider="openai",
        openai_base_url=base_url,
        openai_api_key="sk-fake",
        sim_url=None,
        **overrides,
    )


async def test_404_from_a_wrong_path_blames_the_base_url(make_settings, simulator):
    wrong = simulator.base_url.removesuffix("/v1") + "/wrong"
    checks = await check_models(openai_settings(make_settings, wrong), timeout_s=10)
    chat = next(c for c in checks if c.name == "model chat")
    assert "no API at /wrong/chat/completions (404)" in chat.detail
    assert "OPENAI_BASE_URL" in chat.fix and "CHAT_MODEL" not in chat.fix


MODEL_GONE = "The model `fake-chat` does not exist or you do not have access to it."


@pytest.mark.parametrize(
    ("body", "blamed"),
    [
        ({"error": {"code": "model_not_found", "message": MODEL_GONE}}, {"CHAT_MODEL"}),
        (
            {"error": {"message": "Not found the model fake-chat or Permission denied"}},
            {"CHAT_MODEL"},
        ),
        ({"detail": "Not Found"}, {"OPENAI_BASE_URL"}),
        ("<html><body>404 Not Found</body></html>", {"OPENAI_BASE_URL"}),
        (
            {"error": {"code": "NotFound", "message": "Resource not found"}},
            {"CHAT_MODEL", "OPENAI_BASE_URL"},
        ),
    ],
)
def test_404_blames_what_the_error_body_names(make_settings, body, blamed):
    with LiveServer(answering_404(body)) as api:
        settings = openai_settings(make_settings, f"{api.url}/v1", chat_model="fake-chat")
        checks = asyncio.run(check_models(settings, timeout_s=10))
    chat = next(c for c in checks if c.name == "model chat")
    assert not chat.ok and "(404)" in chat.detail
    assert {env for env in ("CHAT_MODEL", "OPENAI_BASE_URL") if env in chat.fix} == blamed


async def test_model_lines_hide_a_password_in_the_base_url(make_settings):
    dead = f"http://bob:FakeUrlPassw0rd@127.0.0.1:{closed_port()}/v1"
    checks = await check_models(openai_settings(make_settings, dead), timeout_s=5)
    assert all("cannot connect" in c.detail for c in checks)
    assert "FakeUrlPassw0rd" not in report(checks) and "bob:REDACTED@" in report(checks)


async def test_dead_mcp_server(make_settings, tmp_path):
    path = tmp_path / "mcp_config.json"
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    path.write_text(json.dumps({"lamp": {"transport": "streamable_http", "url": url}}))
    checks = await check_mcp(make_settings(mcp_config=path), timeout_s=5)
    assert [c.name for c in failed(checks)] == ["mcp lamp"]
    assert url in checks[0].fix


async def test_mcp_lines_hide_url_passwords_and_stdio_args(make_settings, tmp_path, simulator):
    # The simulator answers 404 at /sse; httpx's error quotes the URL, password and all.
    port = urlsplit(simulator.base_url).port
    servers = {
        "lamp": {"transport": "sse", "url": f"http://bob:FakeMcpPassw0rd@127.0.0.1:{port}/sse"},
        "speaker": {
            "transport": "stdio",
            "command": str(tmp_path / "no-such-mcp-server"),
            "args": ["--token", "FakeArgToken"],
            "env": {"SPEAKER_TOKEN": "FakeEnvToken"},
        },
    }
    path = tmp_path / "mcp_config.json"
    path.write_text(json.dumps(servers))
    checks = await check_mcp(make_settings(mcp_config=path), timeout_s=5)
    assert len(failed(checks)) == 2
    shown = report(checks)
    for secret in ("FakeMcpPassw0rd", "FakeArgToken", "FakeEnvToken"):
        assert secret not in shown
    assert "bob:REDACTED@" in shown and "no-such-mcp-server` and its args" in shown


async def test_bad_mcp_config_file(make_settings, tmp_path):
    path = tmp_path / "mcp_config.json"
    path.write_text('{"mcpServers": {}}')
    checks = await check_mcp(make_settings(mcp_config=path), timeout_s=5)
    assert not checks[0].ok and "Claude-style" in checks[0].detail


@pytest.mark.parametrize("content", [None, "{not json", "[1, 2]"])
@pytest.mark.parametrize(
    ("name", "setting"),
    [("models file", "models_file"), ("profiles", "profiles_file"), ("device map", "device_map")],
)
def test_a_missing_or_broken_config_file_fails(make_settings, tmp_path, content, name, setting):
    # A missing profiles file "loaded": its loader falls back to the default profile quietly.
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    checks = check_files(make_settings(**{setting: path}))
    (bad,) = failed(checks)
    assert bad.name == name and setting.upper() in bad.fix


async def test_unreachable_database(make_settings):
    dsn = f"postgresql://agent:s3cret@127.0.0.1:{closed_port()}/lang_agent"
    check = await check_database(make_settings(conn_str=dsn), timeout_s=5)
    assert not check.ok and "cannot connect" in check.detail
    assert "s3cret" not in check.detail and "***" in check.detail
    assert "CONN_STR" in check.fix


@pytest.mark.parametrize(
    ("dsn", "where"),
    [
        # psycopg's message repeats a URI it cannot parse, password and all
        ("postgresql://u:FakeDbPassw0rd@[::1:{port}/db", 'matching "]" in IPv6 host address'),
        ("not a dsn FakeDbPassw0rd", 'missing "=" after "…"'),
        ("postgresql://u:Fake/DbPassw0rd@127.0.0.1:{port}/db", "an '@' in its host"),
    ],
)
async def test_a_malformed_dsn_is_not_echoed(make_settings, dsn, where):
    dsn = dsn.format(port=closed_port())
    check = await check_database(make_settings(conn_str=dsn), timeout_s=5)
    assert not check.ok and check.detail.startswith("CONN_STR ") and where in check.detail
    assert "DbPassw0rd" not in report([check]) and "CONN_STR" in check.fix


@pytest.mark.parametrize("password", ["password='Fake Passw0rd'", "password = FakePassw0rd"])
async def test_a_key_value_dsn_is_shown_with_its_password_masked(make_settings, password):
    dsn = f"host=127.0.0.1 port={closed_port()} user=agent {password}"
    check = await check_database(make_settings(conn_str=dsn), timeout_s=5)
    assert not check.ok and "cannot connect" in check.detail and "***" in check.detail
    assert "Passw0rd" not in report([check])


@pytest.mark.parametrize(("version", "words"), [(2, "needs version"), (999, "newer than")])
async def test_schema_out_of_date(make_settings, pg_dsn, version, words):
    name = f"doctor_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE lang_agent_migrations (v integer PRIMARY KEY)")
        conn.execute("INSERT INTO lang_agent_migrations VALUES (%s)", (version,))
    check = await check_database(make_settings(conn_str=dsn), timeout_s=5)
    assert not check.ok and words in check.detail


def answering_get(status: int, body: dict, headers: dict[str, str] | None = None) -> FastAPI:
    """Another program on a port: every GET answered with `status` and JSON `body`."""
    app = FastAPI()

    @app.get("/{path:path}")
    def answer(path: str) -> Response:
        return JSONResponse(body, status_code=status, headers=headers)

    return app


def port_of(server: LiveServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


async def test_port_taken_by_another_program(make_settings):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        checks = await check_ports(make_settings(port=taken, viewer_port=closed_port()))
    assert not checks[0].ok
    assert checks[0].detail == f"something else is listening on port {taken} of 127.0.0.1"
    assert checks[0].fix == "stop it or set PORT"
    assert checks[1].ok


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (401, {"error": "unauthorized"}, None),
        (401, {}, {"www-authenticate": 'Basic realm="router"'}),
        (200, {"status": "ok"}, None),
    ],
)
async def test_another_service_answering_health_is_not_lang_agent(
    make_settings, status, body, headers
):
    """Any 401, or any JSON with a `status`, was taken for a running lang-agent."""
    with LiveServer(answering_get(status, body, headers)) as other:
        port = port_of(other)
        checks = await check_ports(make_settings(port=closed_port(), viewer_port=port))
    assert not checks[1].ok and "something else is listening" in checks[1].detail
    assert checks[1].fix == "stop it or set VIEWER_PORT"


def test_viewer_port_held_by_a_viewer_with_keys_is_fine(make_settings):
    from fastapi_server.viewer import create_viewer_app

    settings = make_settings(viewer_keys="viewer-key-0123456789")
    with LiveServer(create_viewer_app(settings)) as viewer:
        checks = asyncio.run(
            check_ports(make_settings(port=closed_port(), viewer_port=port_of(viewer)))
        )
    assert checks[1].ok and "running lang-agent" in checks[1].detail


async def test_the_api_and_the_viewer_on_one_port_fail(make_settings):
    port = closed_port()
    (check,) = await check_ports(make_settings(port=port, viewer_port=port))
    assert not check.ok and f"both want 127.0.0.1:{port}" in check.detail


def test_port_held_by_lang_agent_is_fine(live_server, make_settings):
    checks = asyncio.run(
        check_ports(make_settings(port=port_of(live_server()), viewer_port=closed_port()))
    )
    assert checks[0].ok and "running lang-agent" in checks[0].detail


def test_auth_lines(make_settings):
    open_api, _ = check_auth(make_settings(fast_auth_keys=""))
    assert open_api.ok and "127.0.0.1 only" in open_api.detail and "FAST_AUTH_KEYS" in open_api.fix
    short, viewer = check_auth(make_settings(fast_auth_keys="abc"))
    assert short.ok and "FAST_AUTH_KEYS: key 1 of 1 is shorter than 16 characters" in short.fix
    assert "abc" not in short.detail + short.fix and viewer.fix == ""  # the viewer's are FAST's
    guarded, viewer = check_auth(make_settings(viewer_keys=f"{TEST_KEY},v"))
    assert guarded.ok and guarded.fix == "" and TEST_KEY not in guarded.detail
    assert viewer.ok and "VIEWER_KEYS: key 2 of 2 is shorter than 16 characters" in viewer.fix


def test_tracing_off_unless_turned_on(monkeypatch, no_tracing):
    from langsmith import utils

    assert check_tracing().ok and "off" in check_tracing().detail
    monkeypatch.setenv("LANGSMITH_TRACING", "true")
    utils.get_env_var.cache_clear()
    check = check_tracing()
    assert not check.ok and check.fix == "set LANGSMITH_API_KEY"


def test_cli_exit_codes(healthy, migrated, make_settings, no_tracing):
    dead_db = f"postgresql://agent:pw@127.0.0.1:{closed_port()}/lang_agent"
    settings = healthy()
    env = {
        "SIM_URL": settings.sim_url,
        "LLM_PROVIDER": "sim",
        "MCP_CONFIG": str(make_settings().mcp_config),
        "FAST_AUTH_KEYS": TEST_KEY,
        "PORT": str(settings.port),
        "VIEWER_PORT": str(settings.viewer_port),
    }
    runner = CliRunner()
    good = runner.invoke(
        main, ["doctor", "--conn-str", settings.conn_str.get_secret_value()], env=env
    )
    assert good.exit_code == 0, good.output
    assert good.output.rstrip().endswith("everything works")
    bad = runner.invoke(main, ["doctor", "--timeout", "5", "--conn-str", dead_db], env=env)
    assert bad.exit_code == 1, bad.output
    lines = [line for line in bad.output.splitlines() if line.startswith("FAIL")]
    assert len(lines) == 1 and "database" in lines[0] and "→" in lines[0]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf"])
def test_a_timeout_no_check_can_keep_is_a_usage_error(timeout):
    """No check can answer in 0 s or less, or in NaN s: refused before any check runs."""
    result = CliRunner().invoke(main, ["doctor", "--timeout", timeout])
    assert result.exit_code == 2
    assert "Invalid value for '--timeout': must be a finite number above 0" in result.output


async def test_turns_with_tracing_unset_stay_on_loopback(make_settings, no_tracing, monkeypatch):
    """LangSmith is off by default: a whole service and its turns reach only loopback."""
    from langchain_core.tracers.context import _tracing_v2_is_enabled
    from langsmith import utils

    from lang_agent.agent.events import Done, InputMessage, TurnRequest
    from lang_agent.service import open_service

    assert not utils.tracing_is_enabled() and not _tracing_v2_is_enabled()
    reached: list[object] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def recording_connect(sock, address):
        reached.append(address)
        return connect(sock, address)

    def recording_getaddrinfo(host, *args, **kwargs):
        reached.append((host, None))
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    monkeypatch.setattr(socket, "getaddrinfo", recording_getaddrinfo)
    async with open_service(make_settings()) as service:
        for text in ("你好", "现在几点了"):
            request = TurnRequest(messages=(InputMessage("user", text),), thread_id=None)
            events = [e async for e in service.agent.run_turn(request)]
            assert isinstance(events[-1], Done)
    hosts = {a[0] if isinstance(a, tuple) else "unix socket" for a in reached}
    assert hosts <= {"127.0.0.1", "::1", "localhost", "unix socket"}, hosts
    assert reached  # the simulator was reached through the patched socket layer
