"""The MCP client manager: one persistent session per configured server, offered as tools.

Wire it in the app lifespan (an `AsyncExitStack` closed in reverse):

    from lang_agent.tools.mcp import MCPManager

    mcp = await stack.enter_async_context(MCPManager.from_settings(settings))
    registry.add(mcp)  # a ToolSource named "mcp"; mcp.health() for /health

Entering starts every enabled server's `ServerLink` and waits up to `mcp_connect_timeout_s` for
each first attempt; a server that is down does not stop start-up: it is logged, shown in
`health()` and retried, and its tools appear when it comes up. Leaving ends every session and
stdio process.

What the model sees: names sanitised as xiaozhi does (`self_audio_speaker_set_volume`), the
first server in config order keeping a bare name and later ones getting `<server>_<name>`;
descriptions with original names rewritten; no user-only tools (`annotations.audience ==
["user"]`); no `device_id` argument. `device_id` is filled from the turn: the RunnableConfig's
`configurable.turn_metadata.device_id`, else `device_map[thread_id]`, else `device_map["*"]`;
a model-supplied value is dropped. A failed call never raises into the graph: the tool returns
a ToolMessage with `status="error"` and the reason as content (the device's own message, or
"the device did not answer within 30 s").
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, ToolException
from mcp import types

from lang_agent.tools.arguments import typed_arguments
from lang_agent.tools.device_catalog import DEVICE_ID_ARG
from lang_agent.tools.mcp_config import ServerConfig, load_device_map, load_mcp_config
from lang_agent.tools.mcp_link import CallFailed, ServerLink
from lang_agent.tools.mcp_names import rewrite_description, sanitize_tool_name, unique_name

if TYPE_CHECKING:
    from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

GRACE_S = 1.0  # the runner's outer timeout exceeds the tool's own, so the tool's message wins
MAX_TOOLS = 128  # Kimi's limit on tools per request


class MCPTool(BaseTool):
    """One MCP server tool as the model sees it; calls go over the server's live session."""

    link: ServerLink
    mcp_name: str
    device_arg: Literal["none", "optional", "required"] = "none"
    timeout_s: float = 30.0
    devices: Mapping[str, str] = {}
    handle_tool_error: bool = True

    def _run(self, *args: Any, **kwargs: Any) -> str:
        raise NotImplementedError("MCP tools are async: use ainvoke")

    async def _arun(self, config: RunnableConfig, **arguments: Any) -> str:
        arguments.pop(DEVICE_ID_ARG, None)  # never trust a device id from the model
        arguments = typed_arguments(self.args_schema, arguments)
        if self.device_arg != "none":
            device_id = device_for(config, devices=self.devices)
            if device_id is not None:
                arguments[DEVICE_ID_ARG] = device_id
            elif self.device_arg == "required":
                raise ToolException("no device is linked to this conversation")
        try:
            result = await self.link.call(self.mcp_name, arguments, timeout_s=self.timeout_s)
        except CallFailed as exc:
            raise ToolException(str(exc)) from exc
        return result_text(result)


def device_for(config: RunnableConfig | None, *, devices: Mapping[str, str]) -> str | None:
    """The turn's device: turn metadata, else the thread's mapping, else the `*` fallback."""
    configurable = (config or {}).get("configurable") or {}
    metadata = configurable.get("turn_metadata") or {}
    device_id = metadata.get(DEVICE_ID_ARG) if isinstance(metadata, Mapping) else None
    if isinstance(device_id, str) and device_id.strip():
        return device_id.strip()
    thread_id = configurable.get("thread_id")
    if thread_id is not None and str(thread_id) in devices:
        return devices[str(thread_id)]
    return devices.get("*")


def result_text(result: types.CallToolResult) -> str:
    """`content` as text (xiaozhi hands the model `content[0].text`); isError → ToolException."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.EmbeddedResource) and isinstance(
            block.resource, types.TextResourceContents
        ):
            parts.append(block.resource.text)
        else:
            parts.append(f"[{block.type} content omitted]")
    text = "\n".join(parts)
    if not parts and result.structuredContent is not None:
        text = json.dumps(result.structuredContent, ensure_ascii=False)
    if result.isError:
        raise ToolException(text or "the device reported an error")
    return text


def _user_only(tool: types.Tool) -> bool:
    audience = getattr(tool.annotations, "audience", None) if tool.annotations else None
    return isinstance(audience, list) and audience == ["user"]


def model_schema(schema: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The input schema without `device_id`, and whether the server wants one."""
    schema = copy.deepcopy(schema) if schema else {"type": "object", "properties": {}}
    properties = schema.get("properties")
    if not isinstance(properties, dict) or DEVICE_ID_ARG not in properties:
        return schema, "none"
    del properties[DEVICE_ID_ARG]
    required = [r for r in schema.get("required") or [] if r != DEVICE_ID_ARG]
    wanted = "required" if DEVICE_ID_ARG in (schema.get("required") or []) else "optional"
    if required:
        schema["required"] = required
    else:
        schema.pop("required", None)
    return schema, wanted


class MCPManager:
    """A ToolSource over every configured MCP server; an async context manager."""

    name = "mcp"

    def __init__(
        self,
        servers: list[ServerConfig],
        *,
        retry_s: float = 1.0,
        retry_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        ping_s: float = 15.0,
        devices: Mapping[str, str] | None = None,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.devices = dict(devices or {})
        self.links = [
            ServerLink(
                server,
                retry_s=retry_s,
                retry_max_s=retry_max_s,
                connect_timeout_s=connect_timeout_s,
                ping_s=ping_s,
                on_tools=self._rebuild,
            )
            for server in servers
            if server.enabled
        ]
        for server in servers:
            if not server.enabled:
                logger.info("MCP server %s is disabled in the config", server.name)
        self._tools: list[MCPTool] = []
        self._routes: dict[str, tuple[str, str]] = {}
        self._problems: dict[str, list[str]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> MCPManager:
        """Servers from `settings.mcp_config`; raises MCPConfigError on a bad file."""
        return cls(
            load_mcp_config(settings.mcp_config, default_timeout_s=settings.tool_timeout_s),
            retry_s=settings.mcp_retry_s,
            retry_max_s=settings.mcp_retry_max_s,
            connect_timeout_s=settings.mcp_connect_timeout_s,
            ping_s=settings.mcp_ping_s,
            devices=load_device_map(settings.device_map),
        )

    async def __aenter__(self) -> MCPManager:
        for link in self.links:
            link.start()
        await self.wait_ready(timeout_s=self.connect_timeout_s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await asyncio.gather(*(link.close() for link in self.links))

    async def wait_ready(self, *, timeout_s: float) -> None:
        """Wait until every server's first connection attempt has succeeded or failed."""
        await asyncio.gather(*(link.wait_settled(timeout_s) for link in self.links))

    # --- ToolSource

    def tools(self) -> list[BaseTool]:
        return list(self._tools)

    def health(self) -> dict[str, Any]:
        servers = []
        for link in self.links:
            entry = link.health()
            entry["tools"] = sum(1 for t in self._tools if t.link is link)
            entry["problems"] = list(self._problems.get(link.name, []))
            servers.append(entry)
        up = sum(1 for s in servers if s["state"] == "up")
        state = "up" if up == len(servers) else "down" if up == 0 else "degraded"
        return {"name": self.name, "state": state, "servers": servers}

    def resolve(self, tool_name: str) -> tuple[str, str] | None:
        """A model-facing tool name → (server, original MCP tool name)."""
        return self._routes.get(tool_name)

    def model_name(self, server: str, mcp_name: str) -> str | None:
        """(server, original MCP tool name) → the model-facing name."""
        for name, route in self._routes.items():
            if route == (server, mcp_name):
                return name
        return None

    # --- naming

    def _rebuild(self) -> None:
        """Recompute the model-facing tools from every server's last known list."""
        tools: list[MCPTool] = []
        routes: dict[str, tuple[str, str]] = {}
        problems: dict[str, list[str]] = {}
        for link in self.links:  # config order decides who keeps a bare name
            names: dict[str, str] = {}
            local: dict[str, str] = {}
            offered = [t for t in link.tools if not _user_only(t)]
            for tool in offered:
                base = sanitize_tool_name(tool.name)
                if base in local:
                    problem = (
                        f"tools {local[base]!r} and {tool.name!r} both sanitise to {base!r}; "
                        f"{tool.name!r} is not offered"
                    )
                    logger.error("MCP server %s: %s", link.name, problem)
                    problems.setdefault(link.name, []).append(problem)
                    continue
                local[base] = tool.name
                final = base
                if final in routes:
                    final = unique_name(sanitize_tool_name(f"{link.name}_{base}"), routes)
                    logger.warning(
                        "MCP tool %s of %s is offered as %s: %s belongs to %s",
                        tool.name,
                        link.name,
                        final,
                        base,
                        routes[base][0],
                    )
                routes[final] = (link.name, tool.name)
                names[tool.name] = final
            for tool in offered:
                if tool.name in names:
                    tools.append(self._tool(link, tool, names[tool.name], names))
        if len(tools) > MAX_TOOLS:
            logger.warning(
                "%d MCP tools exceed the %d some model APIs allow", len(tools), MAX_TOOLS
            )
        self._tools, self._routes, self._problems = tools, routes, problems

    def _tool(
        self, link: ServerLink, tool: types.Tool, name: str, names: dict[str, str]
    ) -> MCPTool:
        schema, device_arg = model_schema(tool.inputSchema)
        timeout_s = link.config.timeout_s
        return MCPTool(
            name=name,
            description=rewrite_description(tool.description or "", names) or name,
            args_schema=schema,
            link=link,
            mcp_name=tool.name,
            device_arg=device_arg,
            timeout_s=timeout_s,
            devices=self.devices,
            metadata={"server": link.name, "mcp_name": tool.name, "timeout_s": timeout_s + GRACE_S},
        )
