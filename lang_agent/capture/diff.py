"""Two captured calls compared: parameters, tools, messages, and where the cached prefix ended.

Moonshot, Qwen (DashScope) and OpenAI reuse the longest prefix a request shares with an earlier
one. The prefix is the model's prompt as rendered: tool definitions first, then the messages in
order. So the first character that differs ends what can be cached, and everything after it is
billed in full. Token counts are estimates by `lang_agent.llm.tokens`, the estimator capture's
context-window check uses; the provider's own count is the call's `cached_tokens`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from lang_agent.capture.detect import estimate_prompt_tokens
from lang_agent.capture.record import redact_body

ESTIMATOR = "lang_agent.llm.tokens: one token per CJK character, one per ~4 other characters"
EXCERPT_CHARS = 30  # shown on each side of a difference
VALUE_CHARS = 60  # a parameter's or field's value, shortened for display
FRAME_KEYS = ("messages", "tools")
MESSAGE_FIELDS = ("role", "content", "tool_calls", "tool_call_id", "name")
# A date or clock (2026-01-31, 08:01, 2026年1月31日): a value rendered fresh on every call.
_CLOCK = re.compile(r"\d{1,4}(?:[-/:.年月日时点分秒]\s?\d{1,2})+")


def diff_calls(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The facts `calls diff` shows, JSON-ready: the two calls, a note on each body that cannot
    be compared, and the parameter, tool, message and prefix-cache comparisons."""
    facts: dict[str, Any] = {"before": _call(before), "after": _call(after)}
    seconds_apart = _seconds_between(before, after)
    facts["seconds_apart"] = seconds_apart
    (old, old_note), (new, new_note) = _request_body(before), _request_body(after)
    facts["notes"] = [note for note in (old_note, new_note) if note]
    if old_note is None and new_note is None:
        facts["parameters"] = diff_parameters(old, new)
        facts["tools"] = diff_tools(old.get("tools"), new.get("tools"))
        facts["messages"] = diff_messages(_messages(old), _messages(new))
        prefix = prefix_cache(old, new, tools=facts["tools"], messages=facts["messages"])
        prefix |= {k: after.get(k) for k in ("cached_tokens", "prompt_tokens")}
        prefix["reading"] = cache_reading(prefix, seconds_apart=seconds_apart)
        facts["prefix_cache"] = prefix
    elif isinstance(old, str) and isinstance(new, str):
        # Two bodies kept as text (cut or not JSON) still show where the stored texts part.
        facts["stored_text"] = text_difference(old, new)
    return facts


def _call(row: dict[str, Any]) -> dict[str, Any]:
    keys = "id thread_id turn_id node model status created_at prompt_tokens cached_tokens"
    call = {key: row.get(key) for key in keys.split()}
    if isinstance(call["created_at"], datetime):
        call["created_at"] = call["created_at"].isoformat(timespec="milliseconds")
    return call


def _seconds_between(before: dict[str, Any], after: dict[str, Any]) -> float | None:
    start, end = before.get("created_at"), after.get("created_at")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return round((end - start).total_seconds(), 3)
    return None


def _request_body(row: dict[str, Any]) -> tuple[Any, str | None]:
    """The stored request body (redacted again by today's rules, as exports are) and, when it
    is not a whole JSON object, a note saying why it cannot be compared field by field."""
    body = redact_body(row.get("request_body"))
    name = f"call {row.get('id')}"
    cut = (row.get("flags") or {}).get("request_truncated")
    if cut:
        return body, (
            f"{name}: its {cut}-byte request body was stored cut at CAPTURE_MAX_BODY_BYTES, "
            "so its parameters, tools and messages cannot be compared"
        )
    if body is None:
        return None, f"{name} has no stored request body"
    if isinstance(body, str):
        return body, f"{name}: its request body is not JSON"
    if not isinstance(body, dict):
        return None, f"{name}: its request body is JSON but not an object"
    return body, None


def _messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def diff_parameters(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Every top-level key but messages and tools that was added, removed or changed."""
    changes = []
    for key in sorted((before.keys() | after.keys()) - set(FRAME_KEYS)):
        if key in before and key in after and before[key] == after[key]:
            continue
        kind = "added" if key not in before else "removed" if key not in after else "changed"
        change: dict[str, Any] = {"key": key, "change": kind}
        change.update({side: body[key] for side, body in _sides(before, after) if key in body})
        changes.append(change)
    return changes


def _sides(before: Any, after: Any) -> tuple[tuple[str, Any], tuple[str, Any]]:
    return ("before", before), ("after", after)


def diff_tools(before: Any, after: Any) -> dict[str, Any]:
    """Tools by function name: added, removed, changed (which parts), and whether only their
    order moved (that alone changes the prompt the provider renders)."""
    old, new = _tools_by_name(before), _tools_by_name(after)
    changed = []
    for name in sorted(old.keys() & new.keys()):
        parts = _tool_parts_changed(old[name], new[name])
        if parts:
            changed.append({"name": name, "parts": parts})
    same_set = old.keys() == new.keys() and not changed
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": changed,
        "reordered": same_set and list(old) != list(new),
        "identical": (before or []) == (after or []),
    }


def _tools_by_name(tools: Any) -> dict[str, dict[str, Any]]:
    named = {}
    for index, tool in enumerate(tools if isinstance(tools, list) else []):
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        name = function.get("name") if isinstance(function, dict) else None
        named[name if isinstance(name, str) else f"#{index}"] = function
    return named


def _tool_parts_changed(before: Any, after: Any) -> list[str]:
    if before == after:
        return []
    parts = [
        part
        for part in ("description", "parameters")
        if isinstance(before, dict)
        and isinstance(after, dict)
        and before.get(part) != after.get(part)
    ]
    return parts or ["definition"]


def diff_messages(before: list[Any], after: list[Any]) -> dict[str, Any]:
    """The identical leading messages, the first that differs and what differs in it, and how
    many messages one side has past the other's last."""
    common = _common_prefix(before, after)
    first = None
    if common < min(len(before), len(after)):
        first = _message_difference(common, before[common], after[common])
    return {
        "before": len(before),
        "after": len(after),
        "common_prefix": common,
        "first_difference": first,
        "only_before": max(0, len(before) - len(after)),
        "only_after": max(0, len(after) - len(before)),
    }


def _common_prefix(before: Sequence[Any], after: Sequence[Any]) -> int:
    """How many leading items (messages, or characters) the two sequences share."""
    for index, (old, new) in enumerate(zip(before, after, strict=False)):
        if old != new:
            return index
    return min(len(before), len(after))


def _message_difference(index: int, before: Any, after: Any) -> dict[str, Any]:
    """The message's index and role, and per differing field its two values (for content:
    where the texts part, with an excerpt of each)."""
    old, new = _as_message(before), _as_message(after)
    others = sorted((old.keys() | new.keys()) - set(MESSAGE_FIELDS))
    differs: dict[str, Any] = {}
    for field in (*MESSAGE_FIELDS, *others):
        if old.get(field) == new.get(field):
            continue
        if field == "content":
            differs[field] = text_difference(_text(old.get(field)), _text(new.get(field)))
        else:
            differs[field] = dict(_sides(old.get(field), new.get(field)))
    return {"index": index, "role": new.get("role") or old.get("role"), "differs": differs}


def _as_message(message: Any) -> dict[str, Any]:
    return message if isinstance(message, dict) else {"content": message}


def _text(value: Any) -> str:
    """Content as text: a string as it is, parts (text, images) as their JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def text_difference(before: str, after: str) -> dict[str, Any]:
    """Where two texts first differ (`at`, a character index), with an excerpt of each there."""
    at = _common_prefix(before, after)
    return {
        "at": at,
        "before": _excerpt(before, at),
        "after": _excerpt(after, at),
        "clock": _clocks(before, after, at=at),
    }


def _excerpt(text: str, at: int) -> str:
    start, end = max(0, at - EXCERPT_CHARS), at + EXCERPT_CHARS
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _clocks(before: str, after: str, *, at: int) -> dict[str, str] | None:
    """The date or time each text holds where they part, when both hold one there."""
    old, new = _clock_at(before, at), _clock_at(after, at)
    return {"before": old, "after": new} if old and new else None


def _clock_at(text: str, at: int) -> str | None:
    start = max(0, at - 20)
    for match in _CLOCK.finditer(text, start, at + 20):
        if match.start() <= at <= match.end():
            return match.group()
    return None


def prefix_cache(
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    tools: dict[str, Any],
    messages: dict[str, Any],
) -> dict[str, Any]:
    """Where the prefix the two requests share, as the provider renders it, ends and why, and
    its estimated tokens (`tools` and `messages` are this pair's diff_tools and diff_messages)."""
    if before.get("model") != after.get("model"):
        reason = (
            f"the model changed ({short(before.get('model'))} → {short(after.get('model'))}): "
            "a provider keeps a cache per model, so nothing is reused"
        )
        return _prefix("model", reason, shared=None, after=after)
    if not tools["identical"]:
        changes = "; ".join(f"{kind} {what}" for kind, what in tool_changes(tools))
        reason = (
            f"the tools differ ({changes}): tool definitions are rendered at the start of the "
            "prompt, so nothing after them is reused"
        )
        return _prefix("tools", reason, shared=None, after=after)
    common = messages["common_prefix"]
    shared = _messages(after)[:common]
    first = messages["first_difference"]
    if first is None:
        return _prefix("end", _no_difference(messages), shared=shared, after=after)
    head = _shared_head(_as_message(_messages(after)[common]), first)
    return _prefix("message", _message_reason(first), shared=shared + head, after=after)


def _prefix(
    ends_at: str, reason: str, *, shared: list[Any] | None, after: dict[str, Any]
) -> dict[str, Any]:
    tokens = 0
    if shared is not None:
        tokens = estimate_prompt_tokens({"messages": shared, "tools": after.get("tools")})
    return {
        "ends_at": ends_at,
        "reason": reason,
        "estimated_prefix_tokens": tokens,
        "estimated_prompt_tokens": estimate_prompt_tokens(after),
        "estimator": ESTIMATOR,
    }


def tool_changes(tools: dict[str, Any]) -> list[tuple[str, str]]:
    """(kind, what) per change: for the reason, and as the text's tools section."""
    pairs = [(kind, ", ".join(tools[kind])) for kind in ("added", "removed") if tools[kind]]
    pairs += [("changed", f"{c['name']} ({', '.join(c['parts'])})") for c in tools["changed"]]
    if tools["reordered"]:
        pairs.append(("reordered", "the same tools, in another order"))
    return pairs


def _no_difference(messages: dict[str, Any]) -> str:
    if messages["only_after"]:
        return (
            f"the later request keeps all {messages['before']} messages of the earlier one and "
            f"adds {messages['only_after']} (the usual next call in a thread): the whole earlier "
            "request is a reusable prefix"
        )
    if messages["only_before"]:
        return f"the later request's messages are the first {messages['after']} of the earlier one"
    return "the two requests' tools and messages are identical"


def _shared_head(message: dict[str, Any], first: dict[str, Any]) -> list[dict[str, Any]]:
    """What the provider renders identically of the first differing message: its role, and its
    content up to the first differing character (all of it when something later differs)."""
    if "role" in first["differs"]:
        return []
    content = _text(message.get("content"))
    if "content" in first["differs"]:
        content = content[: first["differs"]["content"]["at"]]
    return [{"role": message.get("role"), "content": content}]


def _message_reason(first: dict[str, Any]) -> str:
    role = first["role"]
    where = f"the {role} message (#{first['index']})" if role else f"message #{first['index']}"
    differs = first["differs"]
    if "role" in differs:
        roles = differs["role"]
        return f"{where} has another role ({short(roles['before'])} → {short(roles['after'])})"
    if "content" not in differs:
        return f"{where} differs in {', '.join(differs)}"
    content = differs["content"]
    where += f" differs at character {content['at']}"
    if clock := content["clock"]:
        return (
            f"{where}, a date or time ({quoted(clock['before'])} → {quoted(clock['after'])}): "
            "rendered fresh on every call, it ends the reusable prefix there and what follows "
            "is billed anew; make it coarser ({current_date} in lang-agent's prompts) or move "
            "it after the history"
        )
    return f"{where}: {quoted(content['before'])} → {quoted(content['after'])}"


def cache_reading(prefix: dict[str, Any], *, seconds_apart: float | None) -> str:
    """Hit or miss, in words, from the provider's cached_tokens and the estimated prefix."""
    cached, prompt = prefix.get("cached_tokens"), prefix.get("prompt_tokens")
    shared = prefix["estimated_prefix_tokens"]
    if cached is None:
        return "the later call reported no cached_tokens: the provider did not say"
    if cached > 0:
        return f"a hit: {cached} of {prompt} prompt tokens were served from the cache"
    if shared == 0:
        return "a miss, as expected: nothing before the difference could be reused"
    gap = f"; these calls are {seconds_apart:g} s apart" if seconds_apart is not None else ""
    return (
        f"a miss, although about {shared} tokens were identical: providers cache only a prefix "
        f"past a minimum length, and only for some minutes{gap}"
    )


def short(value: Any) -> str:
    """A value as JSON on one line, cut to VALUE_CHARS."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 1] + "…"


def quoted(excerpt: str) -> str:
    """On one line: a newline shows as \\n."""
    return '"' + excerpt.replace("\n", "\\n") + '"'
