"""Settings: secure defaults, the CONN_STR alias, keys that stay secret, and values in range."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from fastapi_server.serve import STARTUP_FAILURE, settings_from_flags
from lang_agent.db import mask_dsn
from lang_agent.settings import Settings, settings_error
from tests.support import failed_start

ROOT = Path(__file__).resolve().parents[1]


def test_refuses_open_bind_without_keys():
    with pytest.raises(ValidationError, match="FAST_AUTH_KEYS"):
        Settings(_env_file=None, host="0.0.0.0")
    assert Settings(_env_file=None, host="0.0.0.0", fast_auth_keys="k").host == "0.0.0.0"
    assert Settings(_env_file=None, host="::1").host == "::1"


def test_keys_are_split_and_never_shown(monkeypatch):
    monkeypatch.setenv("FAST_AUTH_KEYS", " k1 , k2 ,,")
    settings = Settings(_env_file=None)
    assert settings.auth_keys == ["k1", "k2"]
    assert "k1" not in repr(settings)


@pytest.mark.parametrize("name", ["CONN_STR", "DATABASE_URL"])
def test_conn_str_aliases(monkeypatch, name):
    monkeypatch.setenv(name, "postgresql://u:secret@db/x")
    settings = Settings(_env_file=None)
    assert settings.conn_str.get_secret_value() == "postgresql://u:secret@db/x"
    assert "secret" not in repr(settings)


@pytest.mark.parametrize("blank", ["", "  "])
def test_a_blank_conn_str_flag_means_the_embedded_postgres(blank):
    # As an empty CONN_STR does; libpq took an empty DSN for its default local socket.
    settings = Settings(_env_file=None, conn_str=blank, viewer_conn_str=blank)
    assert settings.conn_str is None and settings.viewer_conn_str is None


def test_a_repeat_window_of_no_characters_is_refused(monkeypatch):
    """The repeat detector divides by it: zero would fail every streamed call, not the start."""
    monkeypatch.setenv("REPEAT_MIN_LENGTH", "0")
    with pytest.raises(ValidationError, match="repeat_min_length"):
        Settings(_env_file=None)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "70000"),
        ("MAX_BODY_BYTES", "0"),
        ("DB_POOL_SIZE", "0"),
        ("LLM_TIMEOUT_S", "0"),
        ("LLM_RETRIES", "-1"),
        ("ROUTER_HISTORY", "0"),  # plain[-0:] would have shown the router the whole thread
        ("TURN_TIMEOUT_S", "-5"),
        ("MCP_PING_S", "0"),  # a ping loop without a pause
        ("CAPTURE_BATCH_SIZE", "0"),
        ("REPEAT_THRESHOLD", "1.5"),
        # Beyond a century no cutoff date can be computed: cleanup and the job raised.
        ("LOG_RETENTION_DAYS", "1e9"),
        ("CAPTURE_RETENTION_DAYS", "inf"),
        ("RETENTION_INTERVAL_H", "inf"),
        # Each let doctor pass and then ended `serve` in a traceback.
        ("TIMEZONE", "Mars/Olympus"),
        ("LOG_LEVEL", "LOUD"),
        ("DATA_DIR", __file__),
        ("PROXY_ROUTES", "[{"),  # not JSON: pydantic-settings' own error, a traceback
        # Each failed only at the first call through it, as a connect error.
        ("OPENAI_BASE_URL", "ftp://x"),
        ("ALI_BASE_URL", "dashscope.aliyuncs.com/compatible-mode/v1"),
        ("MOONSHOT_BASE_URL", "https://"),
        ("SIM_URL", "http://127.0.0.1:0/v1"),
        ("PROXY_UPSTREAM", "file:///etc/passwd"),
        # Each ran on the default provider as the model "moonshoot:…": the simulator, keyless.
        ("CHAT_MODEL", "moonshoot:kimi-k2-0905-preview"),
        ("FALLBACK_MODEL", "qwne:qwen-max"),
        ("JUDGE_MODEL", "open-ai:gpt-4o"),
    ],
)
def test_out_of_range_values_are_refused_by_name(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises((ValidationError, SettingsError)) as caught:
        Settings(_env_file=None)
    assert settings_error(caught.value).startswith(f"{name}: ")


def test_a_base_url_that_is_not_http_is_one_line_without_the_url(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "ftp://user:pw-secret@x/v1")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert settings_error(caught.value) == (
        "OPENAI_BASE_URL: expected an http(s) URL with a host, e.g. http://127.0.0.1:8599/v1"
    )


def test_a_model_name_holding_a_colon_takes_its_provider_first():
    from lang_agent.llm.factory import resolve_specs

    settings = Settings(_env_file=None, chat_model="openai:llama3:8b", tool_model="qwen-max")
    specs = resolve_specs(settings, sim_url="http://127.0.0.1:1/v1")
    assert (specs["chat"].provider, specs["chat"].model) == ("openai", "llama3:8b")
    assert specs["tool"].model == "qwen-max"
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, chat_model="llama3:8b")
    assert settings_error(caught.value) == (
        "CHAT_MODEL: unknown provider 'llama3' in 'llama3:8b' (known: sim, ali, moonshot, "
        "openai; a model name holding ':' starts with its provider, e.g. openai:llama3:8b)"
    )


def test_a_validator_s_own_message_is_shown_as_written(monkeypatch):
    monkeypatch.delenv("FAST_AUTH_KEYS", raising=False)
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, host="0.0.0.0")
    assert settings_error(caught.value).startswith("refusing to listen on 0.0.0.0 without")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"x": {"transport": "stdio", "command": "python"}}', "server 'x': missing 'args'"),
        (None, "cannot read the MCP config"),
    ],
)
@pytest.mark.parametrize(
    "command", [["fastapi_server/server_openai.py"], ["-m", "lang_agent.cli", "serve"]]
)
def test_a_bad_mcp_config_stops_the_server_with_one_line_naming_it(
    tmp_path, command, content, problem
):
    config = tmp_path / "mcp.json"
    if content is not None:
        config.write_text(content, encoding="utf-8")
    env = {**os.environ, "MCP_CONFIG": str(config), "DATA_DIR": str(tmp_path / "data")}
    argv = [sys.executable, *(str(ROOT / c) if c.endswith(".py") else c for c in command)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == STARTUP_FAILURE
    assert done.stderr.startswith(f"Error: {config}: {problem}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_bad_setting_stops_the_server_with_one_line_naming_it(tmp_path):
    env = {**os.environ, "MCP_PING_S": "0", "REPEAT_THRESHOLD": "2"}
    done = failed_start(env, cwd=tmp_path)
    assert done.returncode == STARTUP_FAILURE
    assert done.stderr.strip() == (
        "Error: MCP_PING_S: Input should be greater than 0; "
        "REPEAT_THRESHOLD: Input should be less than or equal to 1"
    )


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (["-m", "lang_agent.cli", "doctor"], 1),
        (["-m", "lang_agent.cli", "calls", "list"], 1),
        (["fastapi_server/server_openai.py"], STARTUP_FAILURE),
    ],
)
def test_a_utf16_env_file_is_one_line_naming_it(tmp_path, command, code):
    """Windows Notepad may save .env as UTF-16: every command ended in a UnicodeDecodeError."""
    (tmp_path / ".env").write_text("LOG_LEVEL=INFO\n", encoding="utf-16")
    argv = [sys.executable, *(str(ROOT / c) if c.endswith(".py") else c for c in command)]
    done = subprocess.run(
        argv, cwd=tmp_path, env=os.environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == code
    assert done.stderr == f"Error: {tmp_path / '.env'}: not UTF-8 text; save it as UTF-8\n"


@pytest.mark.parametrize(
    ("name", "dsn", "shown"),
    [
        ("CONN_STR", "postgresql://u:pw-secret@[::1:5432/db", 'matching "]" in IPv6 host'),
        ("CONN_STR", "not a dsn pw-secret", 'missing "=" after "…"'),
        ("VIEWER_CONN_STR", "host=h password=pw-secret port", 'missing "=" after "…"'),
    ],
)
@pytest.mark.parametrize(
    "command", [["fastapi_server/server_openai.py"], ["-m", "lang_agent.cli", "serve"]]
)
def test_a_malformed_dsn_stops_the_server_with_one_masked_line(tmp_path, command, name, dsn, shown):
    # libpq's message quotes the DSN: the lifespan printed it, password and all, in tracebacks.
    env = {**os.environ, "CONN_STR": "host=/nowhere", name: dsn, "DATA_DIR": str(tmp_path)}
    argv = [sys.executable, *(str(ROOT / c) if c.endswith(".py") else c for c in command)]
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == STARTUP_FAILURE
    assert done.stderr.startswith(f"Error: {name} is not a valid Postgres DSN: "), done.stderr
    assert shown in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "pw-secret" not in done.stderr + done.stdout


def test_a_database_out_of_reach_stops_the_server_after_db_start_wait_s(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"postgresql://u:pw-secret@127.0.0.1:{closed.getsockname()[1]}/db"
    env = {**os.environ, "CONN_STR": refused, "DB_START_WAIT_S": "1", "DATA_DIR": str(tmp_path)}
    done = failed_start(env, cwd=tmp_path)
    assert done.returncode == STARTUP_FAILURE
    *waits, last = done.stderr.strip().splitlines()
    assert last.startswith("Error: cannot connect to postgresql://u:***@127.0.0.1:"), done.stderr
    assert 1 <= len(waits) <= 3, done.stderr  # one try a second, for a second: not the default 30
    assert "pw-secret" not in done.stderr + done.stdout and "Traceback" not in done.stderr


def test_serve_stops_when_one_of_its_apps_cannot_start(tmp_path, pg_dsn):
    # The viewer's database refuses it, so the viewer's start fails: the agent app used to
    # serve on alone, and the command never ended.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"postgresql://viewer@127.0.0.1:{closed.getsockname()[1]}/db"
    (tmp_path / "none.json").write_text("{}", encoding="utf-8")
    env = {
        **os.environ,
        "CONN_STR": pg_dsn,
        "VIEWER_CONN_STR": refused,
        "PORT": "0",
        "VIEWER_PORT": "0",
        "MCP_CONFIG": str(tmp_path / "none.json"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "lang_agent.cli", "serve"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == STARTUP_FAILURE, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("dsn", "masked"),
    [
        ("postgresql://u:pw@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@w@h:5432/db", "postgresql://u:***@h:5432/db"),  # up to the last @
        ("postgresql://u@h:5432/db", "postgresql://u@h:5432/db"),
        ("host=h password=pw port=1", "host=h password=*** port=1"),
        ("host=h password = 'p w' port=1", "host=h password = *** port=1"),  # quoted, spaced
        ("host=h PASSWORD='it\\'s' port=1", "host=h PASSWORD=*** port=1"),
    ],
)
def test_a_masked_dsn_keeps_no_password(dsn, masked):
    assert mask_dsn(dsn) == masked


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, [], ("127.0.0.1", 8589)),
        ({"PORT": "18674"}, [], ("127.0.0.1", 18674)),  # PORT was always replaced by 8589
        ({"PORT": "18674"}, ["--port", "18675"], ("127.0.0.1", 18675)),
        ({"FAST_AUTH_KEYS": "k1"}, [], ("0.0.0.0", 8589)),
        # An explicit HOST=127.0.0.1 was taken for the default and opened to 0.0.0.0.
        ({"FAST_AUTH_KEYS": "k1", "HOST": "127.0.0.1"}, [], ("127.0.0.1", 8589)),
        ({"FAST_AUTH_KEYS": "k1"}, ["--host", "127.0.0.1"], ("127.0.0.1", 8589)),
    ],
)
def test_a_server_script_takes_host_and_port_from_flags_then_settings_then_its_defaults(
    monkeypatch, env, argv, expected
):
    for name in ("PORT", "HOST", "FAST_AUTH_KEYS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    settings = settings_from_flags(argv, description="", port=8589, open_host="0.0.0.0")
    assert (settings.host, settings.port) == expected
