"""The MCP manager against real device simulators: stdio subprocesses and loopback HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import ToolMessage
from langchain_core.utils.function_calling import convert_to_openai_tool
from mcp import types

from lang_agent.settings import Settings
from lang_agent.tools.mcp import MCPManager
from lang_agent.tools.mcp_config import ServerConfig, parse_mcp_config
from lang_agent.tools.mcp_names import rewrite_description, sanitize_tool_name, unique_name
from lang_agent.tools.registry import ToolRegistry

FAST = {"retry_s": 0.05, "retry_max_s": 0.2, "connect_timeout_s": 20.0, "ping_s": 0.5}


def stdio(*sim_args: str, timeout_s: float = 10, marker: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "transport": "stdio",
        "command": sys.executable,
        "args": ["-m", "lang_agent.tools.device_sim", *sim_args],
        "timeout_s": timeout_s,
    }
    if marker:
        entry["env"] = {"SIM_MARK": marker}
    return entry


@asynccontextmanager
async def manager(servers: dict[str, Any], **kwargs: Any) -> AsyncIterator[MCPManager]:
    configs = parse_mcp_config(json.dumps(servers))
    async with MCPManager(configs, **{**FAST, **kwargs}) as mcp:
        yield mcp


async def until(condition: Callable[[], bool], timeout_s: float = 20) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - polls state that has no event to await
            await asyncio.sleep(0.05)


async def invoke(mcp: MCPManager, name: str, config: dict | None = None, **args: Any):
    tool = {t.name: t for t in mcp.tools()}[name]
    call = {"type": "tool_call", "name": name, "args": args, "id": uuid.uuid4().hex}
    message = await tool.ainvoke(call, config or {})
    assert isinstance(message, ToolMessage)
    return message


async def volume(mcp: MCPManager, name: str = "self_get_device_status", **config: Any) -> int:
    message = await invoke(mcp, name, {"configurable": config})
    return json.loads(message.content)["audio_speaker"]["volume"]


def sim_pids(marker: str) -> list[int]:
    """Live processes started with SIM_MARK=marker (the stdio simulators of one test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"SIM_MARK={marker}".encode() in environ and state != "Z":
            pids.append(int(entry.name))
    return pids


def up(mcp: MCPManager) -> bool:
    return mcp.health()["state"] == "up"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_stdio_tools_are_sanitised_and_the_session_is_reused():
    marker = uuid.uuid4().hex
    async with manager({"xiaozhi_device": stdio(marker=marker)}) as mcp:
        names = [t.name for t in mcp.tools()]
        assert names[:2] == ["self_get_device_status", "self_audio_speaker_set_volume"]
        assert all(name.startswith("self_") and "." not in name for name in names)
        assert mcp.resolve("self_audio_speaker_set_volume") == (
            "xiaozhi_device",
            "self.audio_speaker.set_volume",
        )
        assert mcp.model_name("xiaozhi_device", "self.lamp.turn_on") == "self_lamp_turn_on"
        set_volume = convert_to_openai_tool(mcp.tools()[1])["function"]
        assert "call `self_get_device_status` tool first" in set_volume["description"]
        assert set_volume["parameters"]["properties"] == {
            "volume": {"type": "integer", "minimum": 0, "maximum": 100}
        }
        assert (await invoke(mcp, "self_audio_speaker_set_volume", volume=30)).content == "true"
        assert await volume(mcp) == 30  # same device process: the session was reused
        assert len(sim_pids(marker)) == 1
        health = mcp.health()
        assert health["state"] == "up"
        assert health["servers"][0] | {"since": 0} == {
            "name": "xiaozhi_device",
            "transport": "stdio",
            "state": "up",
            "tools": 13,
            "last_error": None,
            "failures": 0,
            "since": 0,
            "problems": [],
        }
    assert mcp.health()["servers"][0]["state"] == "closed"
    await until(lambda: not sim_pids(marker))  # no orphan process


async def test_device_errors_reach_the_model_as_error_messages():
    async with manager({"dev": stdio("--board", "lang-agent-sim-minimal")}) as mcp:
        message = await invoke(mcp, "self_audio_speaker_set_volume", volume=300)
        assert message.status == "error"
        assert message.content == "Value exceeds maximum allowed: 100"
        message = await invoke(mcp, "self_audio_speaker_set_volume")
        assert (message.status, message.content) == ("error", "Missing valid argument: volume")
        assert await volume(mcp) == 70


async def test_a_killed_server_gives_an_error_then_comes_back():
    marker = uuid.uuid4().hex
    servers = {"dev": stdio("--hang-tool", "self.lamp.turn_on", timeout_s=60, marker=marker)}
    async with manager(servers) as mcp:
        await invoke(mcp, "self_audio_speaker_set_volume", volume=30)
        (pid,) = sim_pids(marker)
        pending = asyncio.create_task(invoke(mcp, "self_lamp_turn_on"))
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        message = await asyncio.wait_for(pending, 30)  # far less than the 60 s tool timeout
        assert message.status == "error"
        assert "connection to dev was lost" in message.content
        lost = await invoke(mcp, "self_get_device_status")
        assert lost.status == "error"
        assert lost.content.startswith("the device server dev is not connected")
        assert mcp.health()["servers"][0]["last_error"] == "Connection closed"
        await until(lambda: mcp.health()["state"] == "up")
        assert [p for p in sim_pids(marker) if p != pid]
        assert len(mcp.tools()) == 13
        assert await volume(mcp) == 70  # a fresh device process
        (second,) = sim_pids(marker)
        os.kill(second, signal.SIGKILL)  # idle this time: the ping finds it
        await until(
            lambda: mcp.health()["state"] == "up" and sim_pids(marker) not in ([], [second])
        )
        assert await volume(mcp) == 70


async def test_a_server_down_at_start_up_comes_up_later():
    port = free_port()
    servers = {"bridge": {"transport": "streamable_http", "url": f"http://127.0.0.1:{port}/mcp"}}
    async with manager(servers) as mcp:
        registry = ToolRegistry([mcp])
        health = mcp.health()["servers"][0]
        assert health["state"] in ("down", "connecting")
        assert registry.tools() == []
        await until(lambda: mcp.health()["servers"][0]["last_error"] is not None)
        assert mcp.health()["state"] == "down"
        command = [sys.executable, "-m", "lang_agent.tools.device_sim", "--port", str(port)]
        sim = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
        try:
            await until(lambda: mcp.health()["state"] == "up")
            assert registry.health()[0]["servers"][0]["tools"] == 13
            assert (await invoke(mcp, "self_audio_speaker_set_volume", volume=30)).content == "true"
            assert await volume(mcp) == 30
            sim.kill()
            await sim.wait()
            message = await invoke(mcp, "self_get_device_status")
            assert message.status == "error"
            await until(lambda: mcp.health()["state"] == "down")
            assert len(registry.tools()) == 13  # known tools stay visible while it is down
            sim = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
            await until(lambda: mcp.health()["state"] == "up")
            assert await volume(mcp) == 70  # a fresh device
        finally:
            if sim.returncode is None:
                sim.terminate()
            await asyncio.wait_for(sim.wait(), 10)


async def test_a_loopback_server_is_reached_directly_whatever_the_proxy_variables(monkeypatch):
    # A proxy for the outside world (Clash, a corporate one) must not swallow a local device.
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    command = [sys.executable, "-m", "lang_agent.tools.device_sim", "--port", str(port)]
    sim = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    servers = {"bridge": {"transport": "streamable_http", "url": f"http://127.0.0.1:{port}/mcp"}}
    try:
        async with manager(servers) as mcp:
            await until(lambda: mcp.health()["state"] == "up")
            assert (await invoke(mcp, "self_audio_speaker_set_volume", volume=40)).content == "true"
            assert await volume(mcp) == 40
    finally:
        sim.terminate()
        await asyncio.wait_for(sim.wait(), 10)


async def test_a_call_after_the_bridge_restarted_reaches_the_new_bridge():
    # An HTTP bridge redeployed between two turns forgets our session and answers the next
    # call 404 without running it; that call failed ("没有成功") though the device was there.
    port = free_port()
    command = [sys.executable, "-m", "lang_agent.tools.device_sim", "--port", str(port)]
    servers = {"bridge": {"transport": "streamable_http", "url": f"http://127.0.0.1:{port}/mcp"}}

    async def listening() -> None:
        async with asyncio.timeout(20):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                return

    sim = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
    try:
        async with manager(servers, ping_s=600) as mcp:  # no ping finds the restart first
            await until(lambda: mcp.health()["state"] == "up")
            assert await volume(mcp) == 70
            sim.kill()
            await sim.wait()
            sim = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.DEVNULL)
            await listening()
            message = await invoke(mcp, "self_audio_speaker_set_volume", volume=30)
            assert (message.status, message.content) == ("success", "true")
            assert await volume(mcp) == 30  # it ran on the new bridge
            assert mcp.health()["state"] == "up"
    finally:
        if sim.returncode is None:
            sim.terminate()
        await asyncio.wait_for(sim.wait(), 10)


async def test_a_hanging_tool_times_out_and_the_session_survives():
    servers = {"dev": stdio("--hang-tool", "self.lamp.turn_on", timeout_s=1)}
    async with manager(servers) as mcp:
        tool = {t.name: t for t in mcp.tools()}["self_lamp_turn_on"]
        assert tool.metadata["timeout_s"] > 1  # the runner's outer guard
        message = await invoke(mcp, "self_lamp_turn_on")
        assert message.status == "error"
        assert message.content == "the device did not answer within 1 s"
        assert (await invoke(mcp, "self_lamp_turn_off")).content == "true"
        assert mcp.health()["state"] == "up"


async def test_device_id_is_hidden_and_filled_from_the_turn(tmp_path: Path):
    devices = {"thread-b": "bedroom", "*": "hall"}
    async with manager({"dev": stdio("--device-id-arg")}, devices=devices) as mcp:
        for tool in mcp.tools():
            parameters = convert_to_openai_tool(tool)["function"]["parameters"]
            assert "device_id" not in parameters["properties"]
            assert "device_id" not in parameters.get("required", [])
        kitchen = {"configurable": {"thread_id": "t", "turn_metadata": {"device_id": "kitchen"}}}
        await invoke(mcp, "self_audio_speaker_set_volume", kitchen, volume=30, device_id="evil")
        await invoke(
            mcp,
            "self_audio_speaker_set_volume",
            {"configurable": {"thread_id": "thread-b"}},
            volume=40,
        )
        await invoke(mcp, "self_audio_speaker_set_volume", None, volume=50)
        assert await volume(mcp, turn_metadata={"device_id": "kitchen"}) == 30
        assert await volume(mcp, turn_metadata={"device_id": "evil"}) == 70
        assert await volume(mcp, thread_id="thread-b", turn_metadata={}) == 40
        assert await volume(mcp, thread_id="other") == 50  # the "*" fallback
    settings = Settings(_env_file=None, mcp_config=tmp_path / "none.json")
    with pytest.raises(ValueError, match="cannot read the MCP config"):
        MCPManager.from_settings(settings)


async def test_without_a_device_map_the_device_id_is_left_to_the_server():
    async with manager({"dev": stdio("--device-id-arg")}) as mcp:
        await invoke(mcp, "self_audio_speaker_set_volume", volume=20)
        assert await volume(mcp, turn_metadata={"device_id": "default"}) == 20


async def test_a_name_clash_across_servers_is_resolved_in_config_order():
    servers = {
        "first": stdio("--board", "lang-agent-sim-minimal"),
        "second": stdio("--board", "lang-agent-sim-minimal"),
    }
    async with manager(servers) as mcp:
        names = [t.name for t in mcp.tools()]
        assert names == [
            "self_get_device_status",
            "self_audio_speaker_set_volume",
            "second_self_get_device_status",
            "second_self_audio_speaker_set_volume",
        ]
        second = {t.name: t for t in mcp.tools()}["second_self_audio_speaker_set_volume"]
        assert "`second_self_get_device_status`" in second.description
        assert mcp.resolve("second_self_get_device_status") == (
            "second",
            "self.get_device_status",
        )
        await invoke(mcp, "second_self_audio_speaker_set_volume", volume=10)
        assert await volume(mcp, "second_self_get_device_status") == 10
        assert await volume(mcp, "self_get_device_status") == 70


async def test_user_only_tools_are_never_offered():
    async with manager({"bridge": stdio("--user-tools")}) as mcp:
        names = {t.name for t in mcp.tools()}
    assert len(names) == 13
    assert not names & {"self_reboot", "self_get_system_info", "self_screen_get_info"}


async def test_a_disabled_server_is_not_started():
    servers = {
        "off": {**stdio(), "enabled": False},
        "on": stdio("--board", "lang-agent-sim-minimal"),
    }
    async with manager(servers) as mcp:
        assert [s["name"] for s in mcp.health()["servers"]] == ["on"]
        assert len(mcp.tools()) == 2


async def test_a_missing_command_is_reported_not_raised():
    servers = {"broken": {"transport": "stdio", "command": "/nonexistent/device-sim", "args": []}}
    async with manager(servers) as mcp:
        await until(lambda: mcp.health()["servers"][0]["last_error"] is not None)
        assert mcp.health()["state"] == "down"
        assert mcp.tools() == []


def test_a_sanitising_clash_inside_one_server_is_loud(caplog):
    mcp = MCPManager([ServerConfig("dev", {"transport": "stdio", "command": "x", "args": []})])
    schema = {"type": "object", "properties": {}}
    mcp.links[0].tools = [
        types.Tool(name="a.b", inputSchema=schema),
        types.Tool(name="a_b", inputSchema=schema),
        types.Tool(name="c", inputSchema=schema),
    ]
    mcp._rebuild()
    assert [t.name for t in mcp.tools()] == ["a_b", "c"]
    assert mcp.resolve("a_b") == ("dev", "a.b")
    assert "both sanitise to 'a_b'" in mcp.health()["servers"][0]["problems"][0]
    assert "both sanitise" in caplog.text


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("self.audio_speaker.set_volume", "self_audio_speaker_set_volume"),
        ("self-ok_1", "self-ok_1"),
        ("3d.print", "_3d_print"),
        ("-x", "_-x"),
        ("灯.开", "___"),
        ("a" * 70, "a" * 64),
        ("", "_"),
    ],
)
def test_sanitize_tool_name(name, safe):
    assert sanitize_tool_name(name) == safe


def test_unique_name_and_description_rewriting():
    assert unique_name("a", []) == "a"
    assert unique_name("a", ["a", "a_2"]) == "a_3"
    assert len(unique_name("b" * 64, ["b" * 64])) == 64
    names = {"self.lamp.turn_on": "self_lamp_turn_on", "self.lamp": "self_lamp"}
    text = "Call `self.lamp.turn_on`, not self.lamp.turn_onx or my.self.lamp; self.lamp."
    assert rewrite_description(text, names) == (
        "Call `self_lamp_turn_on`, not self.lamp.turn_onx or my.self.lamp; self_lamp."
    )


async def test_an_empty_config_starts_nothing(tmp_path: Path):
    path = tmp_path / "mcp_config.json"
    path.write_text("{}", encoding="utf-8")
    settings = Settings(_env_file=None, mcp_config=path, device_map=None)
    async with MCPManager.from_settings(settings) as mcp:
        assert mcp.tools() == []
        assert mcp.health() == {"name": "mcp", "state": "up", "servers": []}


def test_device_id_schema_and_lookup():
    from lang_agent.tools.mcp import device_for, model_schema

    schema = {
        "type": "object",
        "properties": {"device_id": {"type": "string"}, "volume": {"type": "integer"}},
        "required": ["device_id", "volume"],
    }
    assert model_schema(schema) == (
        {"type": "object", "properties": {"volume": {"type": "integer"}}, "required": ["volume"]},
        "required",
    )
    assert schema["required"] == ["device_id", "volume"]  # the server's schema is untouched
    only = {"type": "object", "properties": {"device_id": {"type": "string"}}}
    assert model_schema(only) == ({"type": "object", "properties": {}}, "optional")
    assert model_schema({})[1] == "none"
    devices = {"t1": "kitchen", "*": "hall"}
    turn = {"configurable": {"thread_id": "t1", "turn_metadata": {"device_id": " desk "}}}
    assert device_for(turn, devices=devices) == "desk"
    assert device_for({"configurable": {"thread_id": "t1"}}, devices=devices) == "kitchen"
    assert device_for({"configurable": {"thread_id": "t2"}}, devices=devices) == "hall"
    assert device_for(None, devices={}) is None
