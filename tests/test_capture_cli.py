"""`lang-agent calls …` and `lang-agent proxy start` against a database of their own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx2
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
        with calling(thread_id=THREAD, node="chat"):
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


def test_bad_predicate_is_a_clean_error(run):
    result = run("calls", "list", "-p", "password == 'x'")
    assert result.exit_code == 1 and "unknown field 'password'" in result.output
    assert "Traceback" not in result.output


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
    curl = run("calls", "export", "--requestid", "req-two", "--curl").output
    assert "$API_KEY" in curl and SECRET not in curl and curl.startswith("curl -X POST")
    many = run("calls", "export", "-p", "status == 'ok'", "--directory", str(tmp_path / "all"))
    assert many.exit_code == 0 and len(list((tmp_path / "all").iterdir())) == 2


def test_cleanup_asks_first(run):
    assert run("calls", "cleanup").exit_code == 1
    refused = run("calls", "cleanup", "--all", input="n\n")
    assert "delete 3 calls?" in refused.output and "deleted 0 calls" in refused.output
    assert "deleted 0 calls" in run("calls", "cleanup", "--before", "2000-01-01", "--yes").output


def test_proxy_config_file_keys(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text('[proxy]\nport = 9999\nupstream = "http://u/v1"\nforce-stream = true\n')
    assert load_config_file(config) == {
        "proxy_port": 9999,
        "proxy_upstream": "http://u/v1",
        "force_stream": True,
    }


def test_proxy_start_prints_the_base_url_and_serves_metrics(cli_dsn, tmp_path):
    env = {**os.environ, "CONN_STR": cli_dsn, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "lang_agent.cli",
            "proxy",
            "start",
            "--port",
            "0",
            "--upstream",
            "http://127.0.0.1:9/v1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=Path(__file__).resolve().parent.parent,
        text=True,
    )
    try:
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
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=15)
