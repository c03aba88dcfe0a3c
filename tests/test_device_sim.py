"""The device simulator: the firmware's exact tools, results, errors and per-device state."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import McpError
from mcp.shared.memory import create_connected_server_and_client_session

from lang_agent.tools.device_sim import DeviceSim, build_server

# Copied from reference/xiaozhi_device_tools.md §2 and §2.2 (firmware 78/xiaozhi-esp32).
FIRMWARE_TOOLS = json.loads(
    (Path(__file__).parent / "data" / "xiaozhi_firmware_tools.json").read_text(encoding="utf-8")
)
DEFAULT_STATUS = (
    '{"audio_speaker":{"volume":70},"screen":{"brightness":80,"theme":"light"},'
    '"battery":{"level":90,"charging":false},'
    '"network":{"type":"wifi","ssid":"HomeWiFi","signal":"strong"},"chip":{"temperature":45}}'
)
USER_ONLY = {"self.get_system_info", "self.reboot", "self.screen.get_info"}


@asynccontextmanager
async def connect(sim: DeviceSim) -> AsyncIterator[ClientSession]:
    async with create_connected_server_and_client_session(build_server(sim)) as session:
        yield session


async def call(session: ClientSession, name: str, **arguments: object) -> str:
    result = await session.call_tool(name, arguments)
    assert result.isError is False
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


async def all_tools(session: ClientSession) -> list[types.Tool]:
    tools, cursor = [], None
    while True:
        page = await session.list_tools(cursor=cursor)
        tools.extend(page.tools)
        if not page.nextCursor:
            return tools
        cursor = page.nextCursor


def wire(tool: types.Tool) -> dict:
    return tool.model_dump(mode="json", exclude_none=True)


async def test_lists_the_firmware_tools_exactly():
    async with connect(DeviceSim()) as session:
        page = await session.list_tools()
    assert page.nextCursor is None
    assert [wire(t) for t in page.tools] == FIRMWARE_TOOLS


@pytest.mark.parametrize(
    ("board", "names"),
    [
        ("lang-agent-sim-minimal", ["self.get_device_status", "self.audio_speaker.set_volume"]),
        ("lang-agent-sim-nocam", [t["name"] for t in FIRMWARE_TOOLS if "camera" not in t["name"]]),
    ],
)
async def test_boards_list_their_own_tools(board, names):
    async with connect(DeviceSim(board)) as session:
        assert [t.name for t in (await session.list_tools()).tools] == names
        status = json.loads(await call(session, "self.get_device_status"))
    if board == "lang-agent-sim-minimal":
        assert set(status) == {"audio_speaker", "network", "chip"}


def test_unknown_board_is_refused():
    with pytest.raises(ValueError, match="unknown board"):
        DeviceSim("no-such-board")


async def test_user_only_tools_are_listed_only_on_request_and_marked():
    async with connect(DeviceSim()) as session:
        names = {t.name for t in await all_tools(session)}
        assert not names & USER_ONLY
        assert await call(session, "self.reboot") == "true"  # callable, as on the firmware
    async with connect(DeviceSim(user_tools=True)) as session:
        tools = {t.name: t for t in await all_tools(session)}
    assert USER_ONLY <= set(tools)
    for name in USER_ONLY:
        assert wire(tools[name])["annotations"] == {"audience": ["user"]}
    assert "annotations" not in wire(tools["self.get_device_status"])


async def test_pages_like_the_firmware():
    sim = DeviceSim(page_bytes=700)
    async with connect(sim) as session:
        first = await session.list_tools()
        assert 0 < len(first.tools) < len(FIRMWARE_TOOLS)
        assert first.nextCursor == FIRMWARE_TOOLS[len(first.tools)]["name"]
        assert [wire(t) for t in await all_tools(session)] == FIRMWARE_TOOLS


async def test_device_id_argument_is_optional_and_advertised_on_request():
    async with connect(DeviceSim(device_id_arg=True)) as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
    volume = tools["self.audio_speaker.set_volume"].inputSchema
    assert volume["properties"]["device_id"] == {"type": "string", "default": "default"}
    assert volume["required"] == ["volume"]
    assert "required" not in tools["self.get_device_status"].inputSchema


async def test_results_have_the_firmware_shapes():
    async with connect(DeviceSim()) as session:
        assert await call(session, "self.get_device_status") == DEFAULT_STATUS
        assert await call(session, "self.audio_speaker.set_volume", volume=30) == "true"
        assert await call(session, "self.audio_speaker.set_volume", volume=42.9) == "true"
        assert await call(session, "self.screen.set_brightness", brightness=55) == "true"
        assert await call(session, "self.screen.set_theme", theme="dark") == "true"
        assert await call(session, "self.screen.set_theme", theme="blue") == "false"
        status = json.loads(await call(session, "self.get_device_status"))
        assert status["audio_speaker"] == {"volume": 42}  # a float is truncated
        assert status["screen"] == {"brightness": 55, "theme": "dark"}
        assert await call(session, "self.lamp.get_state") == '{"power": false}'
        assert await call(session, "self.lamp.turn_on") == "true"
        assert await call(session, "self.lamp.get_state") == '{"power": true}'
        assert await call(session, "self.lamp.turn_off") == "true"
        assert await call(session, "self.lamp.get_state") == '{"power": false}'
        assert await call(session, "self.led_strip.get_brightness") == "4"
        assert await call(session, "self.led_strip.set_brightness", level=8) == "true"
        assert await call(session, "self.led_strip.get_brightness") == "8"
        color = {"red": 1, "green": 2, "blue": 3}
        assert await call(session, "self.led_strip.set_all_color", **color) == "true"
        assert await call(session, "self.light.set_rgb", r=0, g=255, b=0) == "true"
        assert json.loads(await call(session, "self.battery.get_level")) == {
            "level": 90,
            "charging": False,
        }
        photo = json.loads(await call(session, "self.camera.take_photo", question="什么?"))
        assert photo["success"] is True and "什么?" in photo["text"]
        # extra arguments are ignored, as on the firmware
        assert await call(session, "self.lamp.turn_on", colour="red") == "true"


async def test_a_slow_device_still_answers():
    async with connect(DeviceSim(tool_delay_ms=50)) as session:
        assert await call(session, "self.lamp.turn_on") == "true"


async def test_state_is_kept_per_device():
    sim = DeviceSim()
    async with connect(sim) as session:
        await call(session, "self.audio_speaker.set_volume", volume=30, device_id="kitchen")
        await call(session, "self.lamp.turn_on", device_id="bedroom")
        kitchen = json.loads(await call(session, "self.get_device_status", device_id="kitchen"))
        default = json.loads(await call(session, "self.get_device_status"))
        assert kitchen["audio_speaker"]["volume"] == 30
        assert default["audio_speaker"]["volume"] == 70
        assert await call(session, "self.lamp.get_state", device_id="bedroom") == '{"power": true}'
        assert await call(session, "self.lamp.get_state", device_id="kitchen") == '{"power": false}'
    assert sim.state("kitchen").volume == 30 and sim.state("bedroom").lamp_on


@pytest.mark.parametrize(
    ("name", "arguments", "message"),
    [
        ("self.audio_speaker.set_volume", {"volume": 101}, "Value exceeds maximum allowed: 100"),
        ("self.audio_speaker.set_volume", {"volume": -1}, "Value is below minimum allowed: 0"),
        ("self.audio_speaker.set_volume", {}, "Missing valid argument: volume"),
        ("self.audio_speaker.set_volume", {"volume": "50"}, "Missing valid argument: volume"),
        ("self.audio_speaker.set_volume", {"volume": True}, "Missing valid argument: volume"),
        ("self.led_strip.set_brightness", {"level": 9}, "Value exceeds maximum allowed: 8"),
        ("self.led_strip.set_all_color", {"red": 1, "green": 2}, "Missing valid argument: blue"),
        ("self.screen.set_theme", {"theme": 1}, "Missing valid argument: theme"),
        ("self.get_device_status", {"device_id": 7}, "Missing valid argument: device_id"),
        ("self.led_control", {}, "Unknown tool: self.led_control"),
    ],
)
async def test_bad_calls_get_the_firmware_errors(name, arguments, message):
    sim = DeviceSim()
    async with connect(sim) as session:
        with pytest.raises(McpError) as caught:
            await session.call_tool(name, arguments)
    assert caught.value.error.message == message
    assert sim.state().volume == 70


async def test_stdio_module_entry_point():
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "lang_agent.tools.device_sim", "--board", "lang-agent-sim-minimal"],
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.serverInfo.name == "lang-agent-sim-minimal"
        assert len((await session.list_tools()).tools) == 2
        assert await call(session, "self.audio_speaker.set_volume", volume=5) == "true"
        status = json.loads(await call(session, "self.get_device_status"))
        assert status["audio_speaker"]["volume"] == 5


async def test_streamable_http_on_a_loopback_port():
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "lang_agent.cli", "device-sim", "--port", "0"],
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(process.stdout.readline(), 20)
        url = line.decode().strip().removeprefix("device simulator: ")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/mcp")
        async with (
            streamable_http_client(url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            assert [wire(t) for t in (await session.list_tools()).tools] == FIRMWARE_TOOLS
            assert await call(session, "self.audio_speaker.set_volume", volume=30) == "true"
            with pytest.raises(McpError, match="Value exceeds maximum allowed: 100"):
                await session.call_tool("self.audio_speaker.set_volume", {"volume": 300})
        # the state belongs to the device, not to the MCP session
        async with (
            streamable_http_client(url) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            status = json.loads(await call(session, "self.get_device_status"))
            assert status["audio_speaker"]["volume"] == 30
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)


def test_refuses_a_public_bind():
    result = subprocess.run(
        [sys.executable, "-m", "lang_agent.cli", "device-sim", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "refusing" in result.stderr
