"""Request fields that ask for what lang-agent's answer cannot give, refused by name: the reasons
both front ends give, and the check each runs over its own table of fields."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lang_agent.errors import InvalidRequest

MADE = "lang-agent's answer is made by several model calls (router, chat or tool model, filler)"
TEXT = "lang-agent takes and gives text only"
SEARCH = "lang-agent looks things up only with its own tools (MCP)"
UNREPEATABLE = f"{MADE}: a repeatable answer is not offered"

# What asks for nothing when a field has no values of its own: null and false always, then these.
EMPTY: tuple[Any, ...] = ("", [], {})


@dataclass(frozen=True)
class Refusals:
    """`why`: field → why what it asks for cannot be given, checked in this order.
    `ask_nothing`: a field's values that ask for nothing (else EMPTY's).
    `where`: the fields' place in the body, named in the error (DashScope's `input.`)."""

    why: Mapping[str, str]
    ask_nothing: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    where: str = ""

    def check(self, fields: Mapping[str, Any]) -> None:
        """InvalidRequest naming the first field that asks for what lang-agent cannot give."""
        for name, why in self.why.items():
            if name in fields and self._asks(name, fields[name]):
                param = self.where + name
                raise InvalidRequest(f"{param}: {why}", param=param)

    def _asks(self, name: str, value: Any) -> bool:
        if value is None or value is False:
            return False
        return value not in self.ask_nothing.get(name, EMPTY)
