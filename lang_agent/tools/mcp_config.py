"""Loads configs/mcp_config.json: MultiServerMCPClient connections, validated and ${VAR}-expanded.

The file is exactly langchain-mcp-adapters' connection dict, `{name: {"transport": …, …}}`
(see `reference/xiaozhi_device_tools.md` §6), plus two optional keys per server that this loader
strips before the dict reaches the adapters:

- `timeout_s`: the timeout of one tool call on that server (default: `tool_timeout_s`);
- `enabled`: `false` skips the server (its `${VAR}`s need not be defined).

`${VAR}` is expanded from the environment in `url`, `headers`, `command`, `args`, `env` and
`cwd`; an undefined variable is an error naming the server and the variable. A stdio `command`
of `python`/`python3` means the interpreter running lang-agent, so the bundled device simulator
starts from the right virtualenv whatever PATH says. Never load this file from an
unauthenticated source: a stdio entry runs a command.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXTRAS = ("timeout_s", "enabled")
HTTP_TRANSPORTS = ("streamable_http", "streamable-http", "http")
TRANSPORTS = ("stdio", "sse", *HTTP_TRANSPORTS, "websocket")

_STR, _NUM, _BOOL, _DICT = "a string", "a number", "true or false", "an object"
_STR_LIST, _STR_MAP = "a list of strings", "an object of strings"
_OPTIONAL: dict[str, dict[str, str]] = {
    "stdio": {
        "env": _STR_MAP,
        "cwd": _STR,
        "encoding": _STR,
        "encoding_error_handler": _STR,
        "session_kwargs": _DICT,
    },
    "sse": {
        "headers": _STR_MAP,
        "timeout": _NUM,
        "sse_read_timeout": _NUM,
        "session_kwargs": _DICT,
    },
    "http": {
        "headers": _STR_MAP,
        "timeout": _NUM,
        "sse_read_timeout": _NUM,
        "terminate_on_close": _BOOL,
        "session_kwargs": _DICT,
    },
    "websocket": {"session_kwargs": _DICT},
}
_REQUIRED: dict[str, dict[str, str]] = {
    "stdio": {"command": _STR, "args": _STR_LIST},
    "sse": {"url": _STR},
    "http": {"url": _STR},
    "websocket": {"url": _STR},
}
_SCHEMES = {"sse": ("http://", "https://"), "http": ("http://", "https://")}
_SCHEMES["websocket"] = ("ws://", "wss://")
_VAR = re.compile(r"\$\{([^}]*)\}")
_EXPANDED = ("url", "headers", "command", "args", "env", "cwd")


class MCPConfigError(ValueError):
    """The MCP config is unusable; the message names the file, the server and the problem."""


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server: its adapters connection dict and our per-server extras."""

    name: str
    connection: dict[str, Any] = field(repr=False)
    timeout_s: float = 30.0
    enabled: bool = True

    @property
    def transport(self) -> str:
        return str(self.connection["transport"])


def load_mcp_config(
    path: Path, *, default_timeout_s: float = 30.0, environ: Mapping[str, str] | None = None
) -> list[ServerConfig]:
    """Read and validate the file; raises MCPConfigError listing every bad entry."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MCPConfigError(f"{path}: cannot read the MCP config ({exc.strerror})") from exc
    return parse_mcp_config(
        text, source=str(path), default_timeout_s=default_timeout_s, environ=environ
    )


def parse_mcp_config(
    text: str,
    *,
    source: str = "mcp_config.json",
    default_timeout_s: float = 30.0,
    environ: Mapping[str, str] | None = None,
) -> list[ServerConfig]:
    """Validate a config text; servers come back in file order."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MCPConfigError(
            f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict):
        raise MCPConfigError(f"{source}: the top level must be an object {{name: connection}}")
    if "mcpServers" in data:
        raise MCPConfigError(
            f"{source}: this is a Claude-style {{'mcpServers': …}} file; lang-agent expects the "
            "MultiServerMCPClient dict {name: {'transport': …, …}}"
        )
    env = os.environ if environ is None else environ
    servers: list[ServerConfig] = []
    problems: list[str] = []
    for name, entry in data.items():
        try:
            servers.append(_server(name, entry, default_timeout_s=default_timeout_s, environ=env))
        except MCPConfigError as exc:
            problems.append(f"server {name!r}: {exc}")
    if problems:
        raise MCPConfigError(f"{source}: " + "; ".join(problems))
    return servers


def _server(
    name: str, entry: Any, *, default_timeout_s: float, environ: Mapping[str, str]
) -> ServerConfig:
    if not name.strip():
        raise MCPConfigError("the server name is empty")
    if not isinstance(entry, dict):
        raise MCPConfigError("must be an object")
    transport = entry.get("transport")
    if transport is None:
        raise MCPConfigError(f"missing 'transport' (one of {', '.join(TRANSPORTS)})")
    if transport not in TRANSPORTS:
        raise MCPConfigError(f"unknown transport {transport!r} (one of {', '.join(TRANSPORTS)})")
    kind = "http" if transport in HTTP_TRANSPORTS else transport
    enabled = entry.get("enabled", True)
    timeout_s = entry.get("timeout_s", default_timeout_s)
    if not isinstance(enabled, bool):
        raise MCPConfigError("'enabled' must be true or false")
    if not _is_number(timeout_s) or timeout_s <= 0:
        raise MCPConfigError("'timeout_s' must be a positive number of seconds")
    connection = {k: v for k, v in entry.items() if k not in EXTRAS}
    allowed = {"transport", *_REQUIRED[kind], *_OPTIONAL[kind]}
    unknown = sorted(set(connection) - allowed)
    if unknown:
        raise MCPConfigError(
            f"unknown key(s) {', '.join(unknown)} for transport {transport!r} "
            f"(allowed: {', '.join(sorted(allowed - {'transport'}))}, {', '.join(EXTRAS)})"
        )
    for key in _REQUIRED[kind]:
        if key not in connection:
            raise MCPConfigError(f"missing {key!r} for transport {transport!r}")
    for key, expected in {**_REQUIRED[kind], **_OPTIONAL[kind]}.items():
        if key in connection and not _has_type(connection[key], expected):
            raise MCPConfigError(f"{key!r} must be {expected}")
    if kind == "stdio" and not connection["command"].strip():
        raise MCPConfigError("'command' is empty")
    if enabled:
        connection = {
            k: _expand(v, where=k, environ=environ) if k in _EXPANDED else v
            for k, v in connection.items()
        }
    if kind in _SCHEMES and enabled and not connection["url"].startswith(_SCHEMES[kind]):
        raise MCPConfigError(
            f"'url' must start with {' or '.join(_SCHEMES[kind])} for transport {transport!r}"
        )
    if kind == "stdio" and connection["command"] in ("python", "python3"):
        connection["command"] = sys.executable
    return ServerConfig(name, connection, timeout_s=float(timeout_s), enabled=enabled)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _has_type(value: Any, expected: str) -> bool:
    if expected == _STR:
        return isinstance(value, str)
    if expected == _NUM:
        return _is_number(value)
    if expected == _BOOL:
        return isinstance(value, bool)
    if expected == _DICT:
        return isinstance(value, dict)
    if expected == _STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _expand(value: Any, *, where: str, environ: Mapping[str, str]) -> Any:
    """`${VAR}` → its value, in strings, list items and object values."""
    if isinstance(value, list):
        return [_expand(v, where=where, environ=environ) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, where=f"{where}.{k}", environ=environ) for k, v in value.items()}

    def lookup(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in environ:
            raise MCPConfigError(f"{where} uses ${{{var}}}, which is not set in the environment")
        return environ[var]

    return _VAR.sub(lookup, value)


def load_device_map(path: Path | None) -> dict[str, str]:
    """The `device_map` file: {"<thread_id>": "<device_id>", "*": "<fallback device>"}."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MCPConfigError(f"{path}: cannot read the device map ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise MCPConfigError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in data.items()
    ):
        raise MCPConfigError(f"{path}: the device map must be an object of non-empty strings")
    return data
