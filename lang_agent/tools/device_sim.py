"""A simulated xiaozhi speaker as an MCP server (stdio or streamable HTTP), for dev and tests.

It serves the firmware's tools from `device_catalog` with their exact names, descriptions and
input schemas, answers as the firmware does (`"true"`, compact status JSON, JSON-RPC errors
with the firmware's messages) and keeps state per device.

Device ids: every tool also accepts an optional string argument `device_id` (default
`"default"`). This is the bridge convention of `reference/xiaozhi_device_tools.md` §4 / §4.2:
a bridge serving many speakers takes the device id as an argument, and lang-agent hides it from
the model and fills it from the turn. By default the argument is hidden (schemas stay exactly
the firmware's); `device_id_arg=True` advertises it in every schema, as such a bridge does.

Test knobs: `tool_delay_ms` delays every call, `hang_tool` names a tool that never answers.
Run it with `lang-agent device-sim` or `python -m lang_agent.tools.device_sim`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from mcp import types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import McpError

from lang_agent.tools.device_catalog import (
    BOARDS,
    DEFAULT_BOARD,
    DEFAULT_DEVICE,
    DEVICE_ID_ARG,
    DeviceError,
    DeviceState,
    ToolSpec,
    board_tools,
    parse_arguments,
    render,
)

logger = logging.getLogger(__name__)

FIRMWARE_VERSION = "1.0.0-sim"
PAGE_BYTES = 8000  # the firmware caps one tools/list page at about 8000 bytes
MCP_PATH = "/mcp"


class DeviceSim:
    """The devices behind one simulator process: tool catalogue, per-device state, knobs."""

    def __init__(
        self,
        board: str = DEFAULT_BOARD,
        *,
        tool_delay_ms: int = 0,
        hang_tool: str | None = None,
        device_id_arg: bool = False,
        user_tools: bool = False,
        page_bytes: int = PAGE_BYTES,
    ) -> None:
        if board not in BOARDS:
            raise ValueError(f"unknown board {board!r}; choose one of {', '.join(BOARDS)}")
        self.board = board
        self.features = BOARDS[board]
        self.tool_delay_ms = tool_delay_ms
        self.hang_tool = hang_tool
        self.device_id_arg = device_id_arg
        self.page_bytes = page_bytes
        self.listed = board_tools(board, user_tools=user_tools)
        # User-only tools are callable even when not listed, as on the firmware.
        self.callable = {t.name: t for t in board_tools(board, user_tools=True)}
        self.devices: dict[str, DeviceState] = {}

    def state(self, device_id: str = DEFAULT_DEVICE) -> DeviceState:
        return self.devices.setdefault(device_id, DeviceState())

    def definition(self, spec: ToolSpec) -> types.Tool:
        annotations = types.ToolAnnotations(audience=["user"]) if spec.user_only else None
        return types.Tool(
            name=spec.name,
            description=spec.description,
            inputSchema=spec.input_schema(device_id_arg=self.device_id_arg),
            annotations=annotations,
        )

    def list_page(self, cursor: str | None) -> tuple[list[types.Tool], str | None]:
        """One `tools/list` page; the cursor is the name of the first tool not yet sent."""
        names = [t.name for t in self.listed]
        start = names.index(cursor) if cursor in names else (len(names) if cursor else 0)
        page: list[types.Tool] = []
        size = 0
        for spec in self.listed[start:]:
            tool = self.definition(spec)
            tool_size = len(tool.model_dump_json(exclude_none=True).encode())
            if page and size + tool_size > self.page_bytes:
                return page, spec.name
            if tool_size > self.page_bytes:
                raise DeviceError(f"Failed to add tool {spec.name} because of payload size limit")
            page.append(tool)
            size += tool_size
        return page, None

    async def call(self, name: str, arguments: dict[str, Any]) -> str:
        """Run one tool on one device; raises DeviceError with the firmware's message."""
        spec = self.callable.get(name)
        if spec is None:
            raise DeviceError(f"Unknown tool: {name}")
        device_id = arguments.get(DEVICE_ID_ARG, DEFAULT_DEVICE)
        if not isinstance(device_id, str) or not device_id:
            raise DeviceError(f"Missing valid argument: {DEVICE_ID_ARG}")
        values = parse_arguments(spec, arguments)
        if name == self.hang_tool:
            logger.info("tool %s hangs (hang_tool)", name)
            await anyio.sleep_forever()
        if self.tool_delay_ms:
            await anyio.sleep(self.tool_delay_ms / 1000)
        result = render(spec.handler(self.state(device_id), values, self.features))
        logger.info("device %s: %s(%s) -> %s", device_id, name, json.dumps(values), result)
        return result


def build_server(sim: DeviceSim) -> Server:
    """The MCP server; handlers are registered raw so errors are plain JSON-RPC errors."""
    server: Server = Server(sim.board, version=FIRMWARE_VERSION)

    async def list_tools(request: types.ListToolsRequest) -> types.ServerResult:
        cursor = request.params.cursor if request.params else None
        try:
            tools, next_cursor = sim.list_page(cursor)
        except DeviceError as exc:
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message=str(exc))) from exc
        return types.ServerResult(types.ListToolsResult(tools=tools, nextCursor=next_cursor))

    async def call_tool(request: types.CallToolRequest) -> types.ServerResult:
        try:
            text = await sim.call(request.params.name, dict(request.params.arguments or {}))
        except DeviceError as exc:
            raise McpError(types.ErrorData(code=types.INVALID_PARAMS, message=str(exc))) from exc
        content = [types.TextContent(type="text", text=text)]
        return types.ServerResult(types.CallToolResult(content=content, isError=False))

    server.request_handlers[types.ListToolsRequest] = list_tools
    server.request_handlers[types.CallToolRequest] = call_tool
    return server


async def serve_stdio(sim: DeviceSim) -> None:
    """Serve one MCP client on stdin/stdout until it closes them."""
    from mcp.server.stdio import stdio_server

    server = build_server(sim)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


class _Endpoint:
    """The ASGI endpoint at /mcp; a class so Starlette passes scope/receive/send through."""

    def __init__(self, handle: Callable[..., Any]) -> None:
        self.handle = handle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handle(scope, receive, send)


async def serve_http(
    sim: DeviceSim,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve streamable HTTP at http://host:port/mcp until cancelled or signalled."""
    import uvicorn
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette
    from starlette.routing import Route

    manager = StreamableHTTPSessionManager(app=build_server(sim))

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    app = Starlette(routes=[Route(MCP_PATH, _Endpoint(manager.handle_request))], lifespan=lifespan)
    # Bound here, so a port in use is an OSError for the caller: uvicorn would sys.exit inside
    # the task group, and the user would get an exception group's traceback.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: server.serve(sockets=[sock]))
        while not server.started:
            if server.should_exit:
                return
            await anyio.sleep(0.02)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        url = f"http://{shown}:{bound}{MCP_PATH}"
        logger.info("device simulator (%s) serving %s", sim.board, url)
        if on_ready is not None:
            on_ready(url)


def run(
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    board: str = DEFAULT_BOARD,
    tool_delay_ms: int = 0,
    hang_tool: str | None = None,
    device_id_arg: bool = False,
    user_tools: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run the simulator: stdio without a port, streamable HTTP with one. Returns an exit code."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="device-sim %(levelname)s %(message)s"
    )
    sim = DeviceSim(
        board,
        tool_delay_ms=tool_delay_ms,
        hang_tool=hang_tool,
        device_id_arg=device_id_arg,
        user_tools=user_tools,
    )
    with contextlib.suppress(KeyboardInterrupt):
        if port is None:
            anyio.run(serve_stdio, sim)
        else:
            anyio.run(lambda: serve_http(sim, host=host, port=port, on_ready=on_ready))
    return 0


if __name__ == "__main__":
    from lang_agent.cli import main

    sys.exit(main(["device-sim", *sys.argv[1:]], prog_name="python -m lang_agent.tools.device_sim"))
