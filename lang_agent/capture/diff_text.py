"""`calls diff` as text (in `calls inspect`'s `== section` form) and as JSON."""

from __future__ import annotations

import json
from typing import Any

from lang_agent.capture.diff import quoted, short, tool_changes


def render_diff(facts: dict[str, Any]) -> str:
    """`calls diff` as text, in `calls inspect`'s `== section` form."""
    sections = {"calls": _calls_lines(facts)}
    if "parameters" in facts:
        sections["parameters"] = _parameter_lines(facts["parameters"])
        sections["tools"] = _aligned(tool_changes(facts["tools"])) or ["no change"]
        sections["messages"] = _message_lines(facts["messages"])
        sections["prefix cache"] = _prefix_lines(facts["prefix_cache"])
    if "stored_text" in facts:
        sections["stored text"] = _text_lines(facts["stored_text"])
    return "\n".join(f"== {name}\n" + "\n".join(lines) for name, lines in sections.items())


def _aligned(pairs: list[tuple[str, str]]) -> list[str]:
    width = max((len(label) for label, _ in pairs), default=0)
    return [f"{label.ljust(width)}  {value}".rstrip() for label, value in pairs]


def _calls_lines(facts: dict[str, Any]) -> list[str]:
    pairs = []
    for side in ("before", "after"):
        call = facts[side]
        words = [f"call {call['id']}", call["created_at"] or ""]
        words += [f"{k} {call[k]}" for k in ("thread_id", "node", "model") if call[k]]
        pairs.append((side, "  ".join(words)))
    if facts["seconds_apart"] is not None:
        pairs.append(("apart", f"{facts['seconds_apart']:g} s"))
    return _aligned(pairs) + [f"note: {note}" for note in facts["notes"]]


def _parameter_lines(changes: list[dict[str, Any]]) -> list[str]:
    pairs = [(c["key"], f"{_shown(c, 'before')} → {_shown(c, 'after')}") for c in changes]
    return _aligned(pairs) or ["no change"]


def _shown(change: dict[str, Any], side: str) -> str:
    return short(change[side]) if side in change else "(absent)"


def _message_lines(messages: dict[str, Any]) -> list[str]:
    common = messages["common_prefix"]
    identical = f"the first {common} are identical" if common else "none are identical"
    lines = [f"before {messages['before']}, after {messages['after']}: {identical}"]
    first = messages["first_difference"]
    if first is not None:
        lines.append(f"first difference: message #{first['index']} ({first['role']})")
        for field, detail in first["differs"].items():
            if field == "content":
                lines += [f"  content differs at character {detail['at']}"]
                lines += ["    " + line for line in _aligned(_excerpts(detail))]
            else:
                lines.append(f"  {field}: {_shown(detail, 'before')} → {_shown(detail, 'after')}")
    lines.append(
        f"only in before {messages['only_before']}, only in after {messages['only_after']}"
    )
    return lines


def _excerpts(difference: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"{side}:", quoted(difference[side])) for side in ("before", "after")]


def _prefix_lines(prefix: dict[str, Any]) -> list[str]:
    reported = ", ".join(f"{k} {short(prefix[k])}" for k in ("cached_tokens", "prompt_tokens"))
    return _aligned(
        [
            ("ends", prefix["reason"]),
            (
                "identical prefix",
                f"≈ {prefix['estimated_prefix_tokens']} tokens of ≈ "
                f"{prefix['estimated_prompt_tokens']} in the later request (estimate)",
            ),
            ("reported", f"{reported} (the later call)"),
            ("reading", prefix["reading"]),
        ]
    )


def _text_lines(difference: dict[str, Any]) -> list[str]:
    lines = [f"the stored texts are identical for their first {difference['at']} characters"]
    return lines + ["  " + line for line in _aligned(_excerpts(difference))]


def diff_json(facts: dict[str, Any]) -> str:
    return json.dumps(facts, ensure_ascii=False, indent=2, default=str)
