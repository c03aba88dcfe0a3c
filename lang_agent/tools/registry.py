"""The tool registry: every tool the tool model may call, gathered from its sources."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from langchain_core.tools import BaseTool

logger = logging.getLogger(__name__)


class ToolSource(Protocol):
    """A provider of tools: the built-ins, or one MCP server."""

    name: str

    def tools(self) -> list[BaseTool]: ...

    def health(self) -> dict[str, Any]: ...


class ToolRegistry:
    """Merges sources in order; a later tool whose name is taken is skipped and logged."""

    def __init__(self, sources: list[ToolSource] | None = None) -> None:
        self.sources: list[ToolSource] = list(sources or [])

    def add(self, source: ToolSource) -> None:
        self.sources.append(source)

    def tools(self) -> list[BaseTool]:
        seen: dict[str, str] = {}
        merged: list[BaseTool] = []
        for source in self.sources:
            for tool in source.tools():
                if tool.name in seen:
                    logger.warning(
                        "tool %s from %s hidden by the one from %s",
                        tool.name,
                        source.name,
                        seen[tool.name],
                    )
                    continue
                seen[tool.name] = source.name
                merged.append(tool)
        return merged

    def health(self) -> list[dict[str, Any]]:
        return [source.health() for source in self.sources]
