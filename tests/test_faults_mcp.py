"""An MCP device server that dies or hangs in the middle of a turn: the tool call ends with an
error the model turns into an honest answer, the turn ends cleanly, and tools come back."""

from __future__ import annotations

import concurrent.futures
import json
import sys
import time
import uuid
from pathlib import Path

import dashscope
import httpx2
import openai
import psycopg
import pytest
from dashscope import Application

from tests.conftest import TEST_KEY
from tests.support import ds_thread, wait_until
from tests.test_mcp_e2e import DeviceServer

TOOL_TIMEOUT_S = 20.0  # far above how long the failures below may take
SPEECH_SQL = """SELECT content, is_filler, is_fallback FROM messages
WHERE thread_id = %s AND role = 'assistant' AND tool_calls IS NULL ORDER BY seq"""


@pytest.fixture
def device():
    servers: list[DeviceServer] = []

    def start(*extra: str, port: int | None = None) -> DeviceServer:
        server = DeviceServer(*extra)
        if port is not None:
            server.port = port
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.kill()


def _config(tmp_path: Path, url: str, timeout_s: float) -> Path:
    path = tmp_path / f"mcp-{uuid.uuid4().hex[:6]}.json"
    entry = {"transport": "streamable_http", "url": url, "timeout_s": timeout_s}
    path.write_text(json.dumps({"device": entry}), encoding="utf-8")
    return path


def _turn(server, text: str, thread_id: str, seen_start: concurrent.futures.Future | None = None):
    """Stream a tool turn; returns (answer, tool events, finish_reason)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": text}],
        stream=True,
        timeout=60,
        extra_body={"thread_id": thread_id, "events": True},
    )
    answer, events, finish = [], [], None
    for chunk in stream:
        marker = (chunk.model_extra or {}).get("x_lang_agent") or {}
        if marker.get("kind", "").startswith("tool_"):
            events.append({**marker, "at": time.monotonic()})
            if marker["kind"] == "tool_started" and seen_start and not seen_start.done():
                seen_start.set_result(time.monotonic())
        elif chunk.choices:
            if chunk.choices[0].delta.content and not marker:
                answer.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    return "".join(answer), events, finish


def _mcp_state(server) -> str:
    health = httpx2.get(f"{server.url}/health").json()
    mcp = next(source for source in health["tools"] if source["name"] == "mcp")
    return mcp["servers"][0]["state"]


def test_device_server_killed_during_a_tool_call(live_server, device, tmp_path, thread_id):
    hanging = device("--hang-tool", "self.audio_speaker.set_volume")
    server = live_server(
        mcp_config=_config(tmp_path, hanging.url, TOOL_TIMEOUT_S),
        mcp_retry_s=0.1,
        mcp_retry_max_s=0.5,
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        started: concurrent.futures.Future = concurrent.futures.Future()
        turn = pool.submit(_turn, server, "把音量调到30", thread_id, started)
        started.result(timeout=30)
        time.sleep(0.3)  # the call is on the wire, waiting for a device that hangs
        hanging.kill()
        killed_at = time.monotonic()
        answer, events, finish = turn.result(timeout=TOOL_TIMEOUT_S + 10)
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert finished and finished[0]["error"]  # an error result, not a hang
    assert finished[0]["at"] - killed_at < 5  # noticed by a ping during the call, not a timeout
    assert "没有成功" in answer and finish == "stop"

    # The device comes back on its address: the manager reconnects and tools work again.
    device(port=hanging.port)
    wait_until(lambda: _mcp_state(server) == "up", within_s=20)
    answer, events, _ = _turn(server, "把音量调到40", thread_id)
    assert "40" in answer and not [e for e in events if e.get("error")]


def test_a_hanging_device_is_bounded_by_the_tool_timeout(live_server, device, tmp_path):
    hanging = device("--hang-tool", "self.audio_speaker.set_volume")
    server = live_server(mcp_config=_config(tmp_path, hanging.url, 1.0))
    dashscope_thread = f"mcp-hang-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    answer, events, finish = _turn(server, "把音量调到30", dashscope_thread)
    assert time.monotonic() - started < 10
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert "within" in finished[0]["error"] and finish == "stop"
    assert "没有成功" in answer
    # Other tools of the same server still answer while one tool hangs.
    answer, events, _ = _turn(server, "现在音量是多少", dashscope_thread)
    assert [e["error"] for e in events if e["kind"] == "tool_finished"] == [None]


HUGE_RESULT_SERVER = """
from mcp.server.fastmcp import FastMCP

mcp = FastMCP("huge")


@mcp.tool(name="self.get_device_status")
def get_device_status() -> str:
    \"\"\"The device's status.\"\"\"
    return "X" * 5_000_000


mcp.run("stdio")
"""


def _logged_speech(pg_dsn: str, thread_id: str) -> list[tuple[str, bool, bool]] | None:
    """What the log says the assistant said on the thread: (content, is_filler, is_fallback)."""
    with psycopg.connect(pg_dsn) as conn:
        return conn.execute(SPEECH_SQL, (thread_id,)).fetchall() or None


def _huge_result_config(tmp_path: Path) -> Path:
    """An MCP config with one real stdio server whose device status is 5 MB long."""
    script = tmp_path / "huge_mcp.py"
    script.write_text(HUGE_RESULT_SERVER, encoding="utf-8")
    config = tmp_path / "mcp-huge.json"
    entry = {"transport": "stdio", "command": sys.executable, "args": [str(script)]}
    config.write_text(json.dumps({"huge": entry}), encoding="utf-8")
    return config


def test_a_huge_tool_result_is_cut_to_fit_and_answered(live_server, tmp_path, pg_dsn, thread_id):
    config = _huge_result_config(tmp_path)
    server = live_server(mcp_config=config, tool_result_max_chars=2000)
    answer, events, finish = _turn(server, "设备状态怎么样", thread_id)
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert finished and finished[0]["error"] is None and finish == "stop" and answer
    assert len(finished[0]["result"]) < 2200 and "5000000 characters" in finished[0]["result"]

    def tool_logged() -> int | None:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(
                "SELECT length(content) FROM messages WHERE thread_id = %s AND role = 'tool'",
                (thread_id,),
            ).fetchone()

    assert wait_until(tool_logged)[0] < 2200  # the log keeps what the model saw, not 5 MB


def test_a_failure_after_the_filler_is_spoken_on_dashscope(live_server, tmp_path, pg_dsn):
    """A tool result that cannot fit beside a MAX_TOKENS this large fails the turn after the
    filler was spoken: the speaker must end on the fallback sentence, not stop mid-way."""
    config = _huge_result_config(tmp_path)
    server = live_server(mcp_config=config, max_tokens=31000)
    dashscope.base_http_api_url = f"{server.url}/api/"
    session = f"mcp-huge-{uuid.uuid4().hex[:8]}"
    items = list(
        Application.call(
            api_key=TEST_KEY,
            app_id="lang-agent",
            session_id=session,
            messages=[{"role": "user", "content": "设备状态怎么样"}],
            stream=True,
        )
    )
    spoken = [i.output.text for i in items if i.status_code == 200]
    assert len(spoken) >= 2 and spoken[0] != spoken[-1]  # the filler, then more
    assert spoken[-1].endswith("抱歉，我这边出了点问题，请稍后再试。")
    assert items[-1].status_code == 400
    # Logged as said: the filler, then the fallback (the turn failed on a code that is not
    # said by itself; it is said because the speaker had started).
    said = wait_until(lambda: _logged_speech(pg_dsn, ds_thread(session)))
    assert said[0][1] is True and said[-1] == ("抱歉，我这边出了点问题，请稍后再试。", False, True)
