"""The MCP config loader: the adapters' connection dict, ${VAR} expansion, named errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lang_agent.settings import CONFIGS
from lang_agent.tools.mcp_config import (
    MCPConfigError,
    load_device_map,
    load_mcp_config,
    parse_mcp_config,
)

ENV = {"DEVICE_BRIDGE_TOKEN": "tok-1", "HOST": "127.0.0.1", "LOG_LEVEL": "debug"}


def parse(config: dict, **kwargs):
    return parse_mcp_config(json.dumps(config), environ=ENV, **kwargs)


def test_a_valid_config_in_file_order_with_extras_stripped():
    servers = parse(
        {
            "device": {
                "transport": "streamable_http",
                "url": "http://${HOST}:8805/mcp",
                "headers": {"Authorization": "Bearer ${DEVICE_BRIDGE_TOKEN}"},
                "timeout_s": 5,
                "terminate_on_close": False,
            },
            "sse": {"transport": "sse", "url": "https://example.test/sse", "timeout": 5},
            "alias": {"transport": "streamable-http", "url": "http://127.0.0.1:1/mcp"},
            "http": {"transport": "http", "url": "http://127.0.0.1:2/mcp"},
            "ws": {"transport": "websocket", "url": "ws://127.0.0.1:8004/call/?token=t"},
            "calc": {
                "transport": "stdio",
                "command": "node",
                "args": ["calc.js", "--level=${LOG_LEVEL}"],
                "env": {"LOG_LEVEL": "${LOG_LEVEL}"},
                "enabled": False,
            },
        },
        default_timeout_s=12,
    )
    assert [s.name for s in servers] == ["device", "sse", "alias", "http", "ws", "calc"]
    device = servers[0]
    assert device.connection == {
        "transport": "streamable_http",
        "url": "http://127.0.0.1:8805/mcp",
        "headers": {"Authorization": "Bearer tok-1"},
        "terminate_on_close": False,
    }
    assert device.timeout_s == 5 and device.enabled and device.transport == "streamable_http"
    assert servers[1].timeout_s == 12
    assert servers[-1].enabled is False
    assert "tok-1" not in repr(device)


def test_vars_expand_in_args_env_url_and_headers():
    (server,) = parse(
        {
            "calc": {
                "transport": "stdio",
                "command": "node",
                "args": ["calc.js", "--level=${LOG_LEVEL}", "$NOT_BRACED"],
                "env": {"LOG_LEVEL": "${LOG_LEVEL}", "PLAIN": "x"},
            }
        }
    )
    assert server.connection["args"] == ["calc.js", "--level=debug", "$NOT_BRACED"]
    assert server.connection["env"] == {"LOG_LEVEL": "debug", "PLAIN": "x"}


def test_python_means_this_interpreter():
    (server,) = parse({"sim": {"transport": "stdio", "command": "python", "args": []}})
    assert server.connection["command"] == sys.executable


def test_an_undefined_var_names_the_server_and_the_variable():
    config = {"bridge": {"transport": "sse", "url": "http://h/sse", "headers": {"A": "${NOPE}"}}}
    with pytest.raises(MCPConfigError, match=r"server 'bridge': headers.A uses \$\{NOPE\}"):
        parse(config)


def test_a_disabled_server_needs_no_vars():
    config = {"bridge": {"transport": "sse", "url": "${NOPE}", "enabled": False}}
    assert parse(config)[0].connection["url"] == "${NOPE}"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"url": "http://h/mcp"}, "missing 'transport'"),
        ({"transport": "grpc", "url": "http://h"}, "unknown transport 'grpc'"),
        ({"transport": "sse"}, "missing 'url' for transport 'sse'"),
        ({"transport": "streamable_http"}, "missing 'url'"),
        ({"transport": "websocket"}, "missing 'url'"),
        ({"transport": "stdio", "args": []}, "missing 'command'"),
        ({"transport": "stdio", "command": "x"}, "missing 'args'"),
        ({"transport": "stdio", "command": " ", "args": []}, "'command' is empty"),
        ({"transport": "stdio", "command": "x", "args": "a b"}, "'args' must be a list"),
        ({"transport": "stdio", "command": "x", "args": [1]}, "'args' must be a list of strings"),
        ({"transport": "stdio", "command": 3, "args": []}, "'command' must be a string"),
        ({"transport": "stdio", "command": "x", "args": [], "env": {"A": 1}}, "'env' must be"),
        ({"transport": "sse", "url": "http://h", "headers": ["A"]}, "'headers' must be"),
        ({"transport": "sse", "url": "http://h", "timeout": "5"}, "'timeout' must be a number"),
        ({"transport": "http", "url": "http://h", "terminate_on_close": 1}, "must be true"),
        ({"transport": "websocket", "url": "ws://h", "headers": {}}, "unknown key(s) headers"),
        ({"transport": "sse", "url": "http://h", "auth": "x"}, "unknown key(s) auth"),
        ({"transport": "sse", "url": "ftp://h"}, "'url' must start with http:// or https://"),
        ({"transport": "websocket", "url": "http://h"}, "must start with ws:// or wss://"),
        ({"transport": "sse", "url": "http://h", "timeout_s": 0}, "'timeout_s' must be a positive"),
        ({"transport": "sse", "url": "http://h", "timeout_s": True}, "'timeout_s' must be"),
        ({"transport": "sse", "url": "http://h", "enabled": "yes"}, "'enabled' must be true"),
        ("stdio", "must be an object"),
    ],
)
def test_each_bad_entry_is_named_with_its_problem(entry, problem):
    config = {"good": {"transport": "sse", "url": "http://h/sse"}, "bad_one": entry}
    with pytest.raises(MCPConfigError) as caught:
        parse(config)
    message = str(caught.value)
    assert "server 'bad_one':" in message
    assert problem in message
    assert "'good'" not in message


def test_every_bad_entry_is_reported_at_once():
    config = {"a": {"transport": "sse"}, "b": {"url": "x"}, "c": {"transport": "sse", "url": "h"}}
    with pytest.raises(MCPConfigError) as caught:
        parse(config)
    assert all(f"server '{name}'" in str(caught.value) for name in "abc")


def test_invalid_json_gives_line_and_column(tmp_path: Path):
    path = tmp_path / "mcp_config.json"
    path.write_text('{\n  "a": {"transport": "sse",\n  }\n}', encoding="utf-8")
    with pytest.raises(MCPConfigError, match=r"mcp_config.json: invalid JSON at line 3, column 3"):
        load_mcp_config(path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "the top level must be an object"),
        ('{"mcpServers": {}}', "Claude-style"),
    ],
)
def test_wrong_top_level(text, problem):
    with pytest.raises(MCPConfigError, match=problem):
        parse_mcp_config(text)


def test_a_missing_file_is_a_clear_error(tmp_path: Path):
    with pytest.raises(MCPConfigError, match="cannot read the MCP config"):
        load_mcp_config(tmp_path / "nope.json")


def test_shipped_configs_are_valid():
    (default,) = load_mcp_config(CONFIGS / "mcp_config.json")
    assert default.transport == "stdio" and default.connection["command"] == sys.executable
    assert default.connection["args"][:2] == ["-m", "lang_agent.tools.device_sim"]
    example = parse_mcp_config(
        (CONFIGS / "mcp_config.example.json").read_text(encoding="utf-8"),
        environ={"DEVICE_BRIDGE_TOKEN": "t"},
    )
    bridge = example[0]
    assert bridge.connection["headers"] == {"Authorization": "Bearer t"}
    assert {s.transport for s in example} >= {"sse", "streamable_http", "websocket", "stdio"}


def test_device_map(tmp_path: Path):
    assert load_device_map(None) == {}
    path = tmp_path / "devices.json"
    path.write_text('{"thread-1": "kitchen", "*": "hall"}', encoding="utf-8")
    assert load_device_map(path) == {"thread-1": "kitchen", "*": "hall"}
    path.write_text('{"thread-1": 3}', encoding="utf-8")
    with pytest.raises(MCPConfigError, match="object of non-empty strings"):
        load_device_map(path)
