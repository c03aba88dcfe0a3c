"""Built-in tools: the calculator and the current date and time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from langchain_core.tools import BaseTool, StructuredTool

from lang_agent.tools.calculator import CalculatorError, calculate

WEEKDAYS_ZH = ("星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日")


def _calculator(expression: str) -> str:
    try:
        return calculate(expression)
    except CalculatorError as exc:
        return f"Error: {exc}"


def now_text(zone: ZoneInfo) -> str:
    """The local date and time as a prompt or a tool result shows it."""
    return clock_values(datetime.now(zone))["current_time"]


# The parts of the day, each from its first hour: enough for a greeting, or "早点休息".
DAY_PARTS = ((0, "凌晨"), (5, "早上"), (8, "上午"), (11, "中午"), (13, "下午"), (18, "晚上"))


def clock_values(now: datetime) -> dict[str, str]:
    """The prompts' clock placeholders: `{current_time}` to the minute, `{current_date}` to the
    day, `{day_part}` (上午, 晚上 …). A provider reuses (and bills less for) a request's prefix
    only up to its first changed character, and the history follows the system prompt: a
    time there makes every call in a new minute pay for the whole history again, a date once
    a day, the part of the day six times. `now` carries its ZoneInfo."""
    return {
        "current_time": f"{now:%Y-%m-%d %H:%M} {WEEKDAYS_ZH[now.weekday()]} ({now.tzinfo})",
        "current_date": f"{now:%Y-%m-%d} {WEEKDAYS_ZH[now.weekday()]}",
        "day_part": next(name for start, name in reversed(DAY_PARTS) if now.hour >= start),
    }


def _tool(function: Callable[..., str], **options: Any) -> StructuredTool:
    """A tool that runs on the event loop. Given only a plain function, StructuredTool runs
    every call in a worker thread: a hop (and a wait for the GIL under load) that costs more
    than these tools' microseconds of bounded work."""

    async def run(**arguments: Any) -> str:
        return function(**arguments)

    return StructuredTool.from_function(function, coroutine=run, **options)


class BuiltinTools:
    """The tool source for the tools that ship with lang-agent."""

    name = "builtin"

    def __init__(self, *, timezone: str = "Asia/Shanghai") -> None:
        zone = ZoneInfo(timezone)
        self._tools: list[BaseTool] = [
            _tool(
                _calculator,
                name="calculator",
                description=(
                    "Evaluate an arithmetic expression exactly. Supports + - * / // % ** "
                    "(or ^), parentheses, decimals and percentages like 15%. "
                    "Example: expression='(3+5)*2^3'."
                ),
            ),
            _tool(
                lambda: now_text(zone),
                name="current_time",
                description="The current local date, weekday and time.",
            ),
        ]

    def tools(self) -> list[BaseTool]:
        return self._tools

    def health(self) -> dict[str, Any]:
        return {"name": self.name, "state": "up", "tools": len(self._tools)}
