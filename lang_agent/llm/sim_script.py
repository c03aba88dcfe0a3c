"""Scripted simulator replies: rules that make the simulated model say chosen things (evals, tests).

A script is a list of rules, as JSON (a list, or `{"rules": [...]}`), given to
`Simulator(script=…)`, loaded with `Script.load(path)` (scripts/eval.py `--sim-script`) or
posted to a running simulator as `POST /_sim/script` with `{"rules": [...]}` (`GET` shows
it, `DELETE` clears it):

    [{"match": "调到五十", "role": "router", "route": "chat"},
     {"match": "turn on the lamp", "role": "tool",
      "tool_call": {"name": "self_lamp_turn_off", "arguments": {}}},
     {"match": "讲个笑话", "role": "chat", "content": "我不会讲笑话。"}]

A rule applies when its `match` is a substring of the request's latest user message (case
folded) and its `role` is the role the request comes from (router, chat, tool, chatty). The
first such rule wins; otherwise the simulator answers as usual. A `route` rule (router only)
decides the route. A `tool_call` rule (tool only) makes that the only call of the turn: the
first tool step calls it, and once its result is in the model answers from it, calling nothing
else (and never looping). A `content` rule makes the model say that text instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lang_agent.llm.sim_replies import (
    Reply,
    ToolCall,
    answer_from_results,
    read_conversation,
    route_function,
)

ROLES = ("router", "chat", "tool", "chatty")
_KEYS = {"match", "role", "route", "tool_call", "content"}


@dataclass(frozen=True)
class Rule:
    """One scripted reply: who it answers (role, text match) and what it says."""

    match: str
    role: str
    route: str | None = None
    tool_call: ToolCall | None = None
    content: str | None = None

    @classmethod
    def parse(cls, raw: Any, *, index: int = 0) -> Rule:
        where = f"rule {index}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be an object")
        unknown = set(raw) - _KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        match, role = raw.get("match"), raw.get("role")
        if not isinstance(match, str) or not match:
            raise ValueError(f"{where}: `match` must be a non-empty string")
        if role not in ROLES:
            raise ValueError(f"{where}: `role` must be one of {', '.join(ROLES)}")
        actions = [k for k in ("route", "tool_call", "content") if raw.get(k) is not None]
        if len(actions) != 1:
            raise ValueError(f"{where}: give exactly one of route, tool_call, content")
        route, call, content = raw.get("route"), raw.get("tool_call"), raw.get("content")
        if route is not None and (role != "router" or route not in ("chat", "tool")):
            raise ValueError(f"{where}: `route` (chat or tool) is for the router role only")
        if content is not None and (role == "router" or not isinstance(content, str)):
            raise ValueError(f"{where}: `content` must be a string, and not for the router")
        tool_call = None
        if call is not None:
            if role != "tool" or not isinstance(call, dict):
                raise ValueError(f"{where}: `tool_call` is an object, for the tool role only")
            name, arguments = call.get("name"), call.get("arguments", {})
            if not isinstance(name, str) or not name or not isinstance(arguments, dict):
                raise ValueError(f"{where}: `tool_call` needs a `name` and `arguments` object")
            tool_call = ToolCall(name, json.dumps(arguments, ensure_ascii=False))
        return cls(match, role, route=route, tool_call=tool_call, content=content)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"match": self.match, "role": self.role}
        if self.route is not None:
            out["route"] = self.route
        if self.tool_call is not None:
            out["tool_call"] = {
                "name": self.tool_call.name,
                "arguments": json.loads(self.tool_call.arguments),
            }
        if self.content is not None:
            out["content"] = self.content
        return out


@dataclass(frozen=True)
class Script:
    """An ordered list of rules; empty means the simulator answers as usual."""

    rules: tuple[Rule, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> Script:
        """From JSON data: a list of rules or `{"rules": [...]}`; ValueError when malformed."""
        if isinstance(raw, dict) and set(raw) == {"rules"}:
            raw = raw["rules"]
        if not isinstance(raw, list):
            raise ValueError('a script is a list of rules or {"rules": [...]}')
        return cls(tuple(Rule.parse(rule, index=i) for i, rule in enumerate(raw)))

    @classmethod
    def load(cls, path: Path | str) -> Script:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"simulator script {path}: {exc}") from exc
        try:
            return cls.parse(raw)
        except ValueError as exc:
            raise ValueError(f"simulator script {path}: {exc}") from exc

    def as_dict(self) -> dict[str, Any]:
        return {"rules": [rule.as_dict() for rule in self.rules]}

    def reply(self, body: dict[str, Any], *, role: str) -> Reply | None:
        """The scripted reply to this chat request, or None to answer as usual."""
        if not self.rules:
            return None
        convo = read_conversation(body.get("messages") or [])
        text = convo.user_text.casefold()
        for rule in self.rules:
            if rule.role != role or rule.match.casefold() not in text:
                continue
            if rule.route is not None:
                name = route_function(body.get("tools")) or "route"
                return Reply(tool_calls=(ToolCall(name, json.dumps({"route": rule.route})),))
            if rule.tool_call is not None:
                if convo.results:  # the scripted call ran: speak its result, call nothing else
                    return Reply(answer_from_results(convo.results, lang=convo.lang))
                return Reply(tool_calls=(rule.tool_call,))
            return Reply(rule.content or "")
        return None
