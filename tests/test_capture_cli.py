"""`lang-agent calls …` and `lang-agent proxy start` against a database of their own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx2
import openai
import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql

from lang_agent.capture.proxy import load_config_file
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport
from lang_agent.cli import main
from lang_agent.db import MIGRATIONS
from lang_agent.llm.context import calling
from tests.capture_fixtures import capture_pg

__all__ = ["capture_pg"]

SECRET = "sk-cli-secret-4242"
THREAD = "cli-thread"
TURN = "0b5e0c1e-2f6a-4d38-9a51-7c1d2e3f4a5b"
DB_PASSWORD = "pg-pass-9137"
CALLS_COMMANDS = [
    ["list"],
    ["inspect", "--id", "1"],
    ["export", "--id", "1"],
    ["cleanup", "--all", "--yes"],
    ["replay", "--id", "1"],
    ["diff", "--id", "1"],
]


def upstream(request: httpx2.Request) -> httpx2.Response:
    body = json.loads(request.content)
    if "fail" in body["messages"][0]["content"]:
        return httpx2.Response(429, json={"error": {"message": "slow down", "type": "rate_limit"}})
    answer = {"role": "assistant", "content": "好的"}
    return httpx2.Response(
        200,
        headers={"msh-request-id": f"req-{body['messages'][0]['content']}"},
        json={
            "id": f"chatcmpl-{body['messages'][0]['content']}",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        },
    )


async def seed(dsn: str) -> None:
    recorder = Recorder(dsn=dsn)
    await recorder.start()
    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    headers = {"authorization": f"Bearer {SECRET}"}
    async with httpx2.AsyncClient(transport=transport, headers=headers) as http:
        with calling(thread_id=THREAD, turn_id=TURN, node="chat"):
            for content in ("one", "two", "fail"):
                body = {"model": "qwen-plus", "messages": [{"role": "user", "content": content}]}
                await http.post("http://up/v1/chat/completions", json=body)
    await recorder.close()


@pytest.fixture(scope="module")
def cli_dsn(capture_pg) -> str:
    """A database of its own, so cleanup here never touches the other tests' rows."""
    name = f"capture_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(capture_pg.get_uri(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = capture_pg.get_uri(database=name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in MIGRATIONS:
            conn.execute(statement)
    asyncio.run(seed(dsn))
    return dsn


@pytest.fixture
def run(cli_dsn):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), env={"CONN_STR": cli_dsn}, input=input)

    return invoke


def test_list_table_json_and_predicates(run):
    table = run("calls", "list", "--thread", THREAD)
    assert table.exit_code == 0, table.output
    assert "chatcmpl-one" in table.output and "req-two" in table.output
    assert "http_error 429" in table.output and "10/2/-" in table.output
    rows = json.loads(run("calls", "list", "--json", "-p", "status_code == 429").output)
    assert [r["status"] for r in rows] == ["http_error"]
    newest = json.loads(run("calls", "list", "--json", "-n", "1", "--since", "1h").output)
    assert len(newest) == 1


def test_list_takes_the_viewer_s_turn_id_and_names_each_call_s_node(run):
    """From a turn in the viewer to its calls: `--turn` with the id the viewer shows, and the
    node column tells the router's, the chat model's, the tool model's and the filler's apart."""
    table = run("calls", "list", "--turn", f" {TURN} ")
    assert table.exit_code == 0, table.output
    header, *lines = table.output.splitlines()
    assert header.split()[:3] == ["id", "status", "node"]
    assert len(lines) == 3 and all(line.split()[3] == "chat" for line in lines if "200" in line)
    assert "chat" in lines[0].split()  # the 429 too
    other = run("calls", "list", "--turn", "0b5e0c1e")  # a turn id is matched whole
    assert other.exit_code == 0 and len(other.output.splitlines()) == 1


def test_bad_predicate_is_a_clean_error(run):
    result = run("calls", "list", "-p", "password == 'x'")
    assert result.exit_code == 1 and "unknown field 'password'" in result.output
    assert "Traceback" not in result.output
    # Values only Postgres can judge (a date, a regular expression) are one-line errors too.
    for predicate, message in (("created_at > 'soon'", "soon"), ("model % '('", "regular")):
        refused = run("calls", "list", "-p", predicate)
        assert refused.exit_code == 1 and len(refused.stderr.splitlines()) == 1, refused.output
        assert message in refused.stderr


def test_inspect_by_chatcmpl_and_requestid(run):
    result = run(
        "calls", "inspect", "--chatcmpl", "chatcmpl-one", "--print", "request_header,response_body"
    )
    assert result.exit_code == 0, result.output
    assert "[REDACTED]" in result.output and SECRET not in result.output
    assert '"content": "好的"' in result.output
    by_request = run("calls", "inspect", "--requestid", "req-two")
    assert "chatcmpl-two" in by_request.output
    assert run("calls", "inspect").exit_code == 1
    assert run("calls", "inspect", "--id", "1", "--print", "nope").exit_code == 1


def test_export_files_labels_and_curl(run, tmp_path):
    out = tmp_path / "cases"
    result = run(
        "calls",
        "export",
        "--chatcmpl",
        "chatcmpl-one",
        "--directory",
        str(out),
        "--bad",
        "--tag",
        "voice",
        "--tag",
        "slow",
    )
    assert result.exit_code == 0, result.output
    (path,) = out.iterdir()
    case = json.loads(path.read_text(encoding="utf-8"))
    assert case["category"] == "badcase" and case["tags"] == ["voice", "slow"]
    assert SECRET not in path.read_text(encoding="utf-8")
    stored = json.loads(run("calls", "list", "--json", "-p", "category == 'badcase'").output)
    assert len(stored) == 1  # the label is kept in the table, not only in the file
    for predicate in ("tags == 'slow'", "tags @ ['voice', 'x']", "tags ~ 'VOICE'"):
        tagged = json.loads(run("calls", "list", "--json", "-p", predicate).output)
        assert [r["chatcmpl_id"] for r in tagged] == ["chatcmpl-one"], predicate
    untagged = json.loads(run("calls", "list", "--json", "-p", "tags != 'slow'").output)
    assert len(untagged) == 2 and "chatcmpl-one" not in [r["chatcmpl_id"] for r in untagged]
    curl = run("calls", "export", "--requestid", "req-two", "--curl").output
    assert "$API_KEY" in curl and SECRET not in curl and curl.startswith("curl -X POST")
    many = run("calls", "export", "-p", "status == 'ok'", "--directory", str(tmp_path / "all"))
    assert many.exit_code == 0 and len(list((tmp_path / "all").iterdir())) == 2


def test_cleanup_asks_first(run):
    assert run("calls", "cleanup").exit_code == 1
    refused = run("calls", "cleanup", "--all", input="n\n")
    assert "delete 3 calls?" in refused.output and "nothing deleted" in refused.output
    # No terminal and no answer piped in (cron): click said only "Aborted!".
    unasked = run("calls", "cleanup", "--all")
    assert unasked.exit_code == 1
    assert unasked.stderr == "Error: no terminal to confirm on: pass --yes\n"
    assert "nothing to delete" in run("calls", "cleanup", "--before", "2000-01-01", "--yes").output


def test_since_and_before_take_durations_and_iso_times(run):
    for since in ("1w", "2 d", "2000-01-01", "2000-01-01T00:00:00+08:00", "2000-01-01 00:00Z"):
        result = run("calls", "list", "--json", "--thread", THREAD, "--since", since)
        assert result.exit_code == 0, (since, result.output)
        assert len(json.loads(result.output)) == 3, since


def test_a_time_window_without_offsets_is_read_in_timezone_by_flags_and_predicates(cli_dsn):
    """ "Yesterday around 15:00" is the speaker's time (TIMEZONE), whatever the host's zone;
    --since/--before took it as the host's, a predicate as the database's."""
    zone = "Asia/Kathmandu"  # +05:45: no host's zone, so a time read in the wrong one misses

    def listed(*args: str) -> list[dict]:
        env = {"CONN_STR": cli_dsn, "TIMEZONE": zone}
        result = CliRunner().invoke(main, ["calls", "list", "--json", *args], env=env)
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    calls = listed("--thread", THREAD)
    assert all(call["created_at"].endswith("+05:45") for call in calls)  # shown in TIMEZONE
    first = min(datetime.fromisoformat(call["created_at"]) for call in calls)
    start = (first - timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S")
    end = (first + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S")
    assert len(listed("--thread", THREAD, "--since", start, "--before", end)) == 3
    assert listed("--thread", THREAD, "--before", start) == []
    window = f"created_at >= '{start}' && created_at < '{end}'"
    assert len(listed("--thread", THREAD, "-p", window)) == 3


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--since", "garbage"],
        ["list", "--since", "90"],
        ["list", "--since", "1y"],
        ["list", "--since", "2026-13-45"],
        ["cleanup", "--before", "last week", "--yes"],
    ],
)
def test_bad_since_or_before_is_a_usage_error_before_any_sql(args):
    # The database does not exist: only a check made before connecting can give this answer.
    result = CliRunner().invoke(main, ["calls", *args], env={"CONN_STR": _refused_dsn()})
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--" in result.stderr and "30m" in result.stderr
    assert "Traceback" not in result.output and "connect" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fault", "reset"], "Invalid value for '--fault': unknown fault 'reset': one of cut:N"),
        (["--fault", "stall:0"], "Invalid value for '--fault': unknown fault 'stall:0'"),
        (["--speed", "nan"], "Invalid value for '--speed': must be a finite number above 0"),
        (["--fault", "429", "--fault-count", "0"], "'--fault-count': must be at least 1, not 0"),
        (["--fault-count", "2"], "--fault-count needs --fault"),
    ],
)
def test_bad_replay_flags_are_usage_errors_before_any_sql(args, message):
    argv = ["calls", "replay", "--id", "1", *args]
    result = CliRunner().invoke(main, argv, env={"CONN_STR": _refused_dsn()})
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output


def _refused_dsn() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{port}/postgres"


@pytest.mark.parametrize(
    "argv", [["calls", *args] for args in CALLS_COMMANDS] + [["cleanup", "--dry-run"]], ids=str
)
def test_refused_database_is_a_one_line_error(argv):
    result = CliRunner().invoke(main, argv, env={"CONN_STR": _refused_dsn()})
    assert result.exit_code == 1, result.output
    assert result.stdout == "" and len(result.stderr.splitlines()) == 1, result.stderr
    assert "Connection refused" in result.stderr and "postgres:***@127.0.0.1" in result.stderr
    assert DB_PASSWORD not in result.output


def test_silent_database_times_out_with_a_one_line_error():
    # A listening socket that never accepts: the kernel completes the TCP handshake, so the
    # client is connected and waits for a server that never says a word.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        dsn = f"postgresql://postgres:{DB_PASSWORD}@127.0.0.1:{port}/postgres"
        env = {**os.environ, "CONN_STR": dsn, "DB_TIMEOUT_S": "1"}
        process = subprocess.run(  # noqa: S603
            [sys.executable, "-m", "lang_agent.cli", "calls", "list"],
            capture_output=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            text=True,
            timeout=15,  # the unbounded connect hung here for good
        )
    assert process.returncode == 1 and process.stdout == "", process.stderr
    assert process.stderr.splitlines() == [
        f"Error: cannot connect to postgresql://postgres:***@127.0.0.1:{port}/postgres: "
        "connection timeout expired"
    ]


def test_proxy_config_file_keys(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[proxy]\nport = 9999\nupstream = "http://u/v1"\nforce-stream = true\nadd-usage = false\n'
    )
    assert load_config_file(config) == {
        "proxy_port": 9999,
        "proxy_upstream": "http://u/v1",
        "force_stream": True,
        "proxy_add_usage": False,
    }


@contextlib.contextmanager
def cli_process(dsn: str, *argv: str) -> Iterator[subprocess.Popen]:
    """`lang-agent ARGV` as a process of its own (it installs signal handlers), stdout piped,
    then SIGTERM. That must exit 0: through Python's exit, as after Ctrl-C, so an embedded
    Postgres would be stopped too (the default handler ended the process at once, -15,
    leaving it running)."""
    env = {**os.environ, "CONN_STR": dsn, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "lang_agent.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=15)
    assert code == 0


def test_proxy_start_serves_metrics_and_exits_cleanly_on_sigterm(cli_dsn, tmp_path):
    argv = ["proxy", "start", "--port", "0", "--upstream", "http://127.0.0.1:9/v1"]
    with cli_process(cli_dsn, *argv) as process:
        line = process.stdout.readline()
        assert line.startswith('change base_url to "http://127.0.0.1:'), line
        base_url = line.split('"')[1]
        deadline = time.monotonic() + 10
        while True:
            try:
                response = httpx2.get(base_url.removesuffix("/v1") + "/metrics", timeout=2)
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert "lang_agent_llm_calls_total" in response.text


def test_replay_with_a_fault_then_the_recording_until_sigterm(cli_dsn):
    """`calls replay --fault 500 --fault-count 1`: the openai SDK's retry gets the recording."""
    with psycopg.connect(cli_dsn) as conn:
        (call_id,) = conn.execute(
            "SELECT id FROM llm_calls WHERE chatcmpl_id = 'chatcmpl-one'"
        ).fetchone()
    argv = ["calls", "replay", "--id", str(call_id), "--fault", "500", "--fault-count", "1"]
    with cli_process(cli_dsn, *argv) as process:
        line = process.stdout.readline()
        assert f"replaying call {call_id} with fault 500 in the first 1 answers" in line, line
        client = openai.OpenAI(base_url=line.split('"')[1], api_key="none", max_retries=1)
        messages = [{"role": "user", "content": "anything"}]
        answer = client.chat.completions.create(model="qwen-plus", messages=messages)
        assert answer.choices[0].message.content == "好的" and answer.id == "chatcmpl-one"


def test_replay_on_a_port_in_use_is_one_line(cli_dsn):
    with psycopg.connect(cli_dsn) as conn:
        (call_id,) = conn.execute("SELECT min(id) FROM llm_calls").fetchone()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["calls", "replay", "--id", str(call_id), "--port", str(port)]
        result = CliRunner().invoke(main, argv, env={"CONN_STR": cli_dsn})
    assert result.exit_code == 3, result.output
    assert result.stderr.startswith("Error: cannot start the replay: ")
    assert "Traceback" not in result.output
    assert len(result.stderr.splitlines()) == 1
