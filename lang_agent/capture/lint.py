"""Provider rules a chat request breaks, checked before it is sent, and what kind a 429 is.

The rules are Moonshot's (Kimi) and DashScope's (Qwen) as their documentation states them
(reference/capture_proxy.md §10, reference/dashscope_app_api.md §12). The provider is the
upstream's host, or else the model's name (a gateway in front of one; not a local server's
`name:tag`, as Ollama's `qwq:32b`). A finding is advice, stored with the call (`flags.lint`)
and logged; the request goes out unchanged, and the upstream's own answer stays the judge.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

TOOL_NAME = {
    "moonshot": re.compile(r"[a-zA-Z_][a-zA-Z0-9_-]{0,63}"),
    "qwen": re.compile(r"[a-zA-Z0-9_-]{1,64}"),
}
MOONSHOT_MAX_TOOLS = 128
# kimi-k2.5 refuses any other value of these (temperature: 1.0, or 0.6 with thinking off).
K25_DEFAULTS = {"top_p": 0.95, "n": 1, "presence_penalty": 0, "frequency_penalty": 0}
# Qwen families that answer only as a stream, and those that think unless told not to.
QWEN_STREAM_ONLY = re.compile(r"(qwq|qvq|qwen[\d.]*-omni)")
QWEN_THINKS_BY_DEFAULT = re.compile(r"qwen3\.5-|qwen3-\d+(\.\d+)?b(-a\d+(\.\d+)?b)?$")
QWEN_THINKS_ONLY = re.compile(r"qwen.*-thinking")
_WAIT = re.compile(r"after (\d+(?:\.\d+)?) ?s", re.I)


def provider(url: str | None, model: Any) -> str | None:
    """`moonshot`, `qwen` or None (rules unknown)."""
    host = (urlsplit(url or "").hostname or "").lower()
    if "moonshot" in host:
        return "moonshot"
    if "dashscope" in host or "aliyuncs" in host:
        return "qwen"
    name = model.lower() if isinstance(model, str) else ""
    if ":" in name:  # a local server's name:tag
        return None
    if name.startswith(("kimi-", "moonshot-")):
        return "moonshot"
    if name.startswith(("qwen", "qwq", "qvq")):
        return "qwen"
    return None


def lint(body: dict[str, Any], *, url: str | None) -> list[dict[str, str]]:
    """The rules of the request's provider that `body` breaks, as {rule, message}."""
    model = body.get("model")
    rules = provider(url, model)
    if rules is None:
        return []
    name = model.lower() if isinstance(model, str) else ""
    found = _tool_findings(body, rules)
    found += _moonshot(body, name) if rules == "moonshot" else _qwen(body, name)
    return [{"rule": rule, "message": message} for rule, message in found]


def _tool_findings(body: dict[str, Any], rules: str) -> list[tuple[str, str]]:
    tools = body.get("tools") if isinstance(body.get("tools"), list) else []
    names = [
        (tool.get("function") or {}).get("name")
        for tool in tools
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict)
    ]
    found = []
    bad = [n for n in names if not (isinstance(n, str) and TOOL_NAME[rules].fullmatch(n))]
    if bad:
        shown = ", ".join(repr(n) for n in bad[:5]) + (" …" if len(bad) > 5 else "")
        pattern = TOOL_NAME[rules].pattern
        found.append(("tool_name", f"tool names must match ^{pattern}$: {shown}"))
    if rules == "moonshot" and len(names) > MOONSHOT_MAX_TOOLS:
        found.append(
            ("too_many_tools", f"{len(names)} functions; Moonshot takes {MOONSHOT_MAX_TOOLS}")
        )
    return found


def _moonshot(body: dict[str, Any], model: str) -> list[tuple[str, str]]:
    found = []
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    response_format = body.get("response_format")
    if (
        last.get("partial")
        and isinstance(response_format, dict)
        and response_format.get("type") == "json_object"
    ):
        found.append(("partial_json", "partial mode cannot be combined with json_object"))
    thinking = body.get("thinking") if isinstance(body.get("thinking"), dict) else {}
    thinks = model.startswith("kimi-k2-thinking") or (
        model.startswith("kimi-k2.5") and thinking.get("type") != "disabled"
    )
    if model.startswith("kimi-k2.5"):
        fixed = {"temperature": 1.0 if thinks else 0.6, **K25_DEFAULTS}
        changed = [
            k for k, v in fixed.items() if k in body and body[k] is not None and body[k] != v
        ]
        if changed:
            wanted = ", ".join(f"{k}={fixed[k]}" for k in changed)
            found.append(("fixed_parameters", f"{model} accepts only {wanted}"))
    if thinks:
        choice = body.get("tool_choice")
        if choice is not None and choice not in ("auto", "none"):
            found.append(("thinking_tool_choice", "with thinking on, tool_choice is auto or none"))
        if any(
            isinstance(m, dict)
            and m.get("role") == "assistant"
            and m.get("tool_calls")
            and not m.get("reasoning_content")
            for m in messages
        ):
            found.append(
                (
                    "reasoning_content_missing",
                    "thinking is on and an assistant message with tool calls lacks its "
                    "reasoning_content",
                )
            )
    return found


def _qwen(body: dict[str, Any], model: str) -> list[tuple[str, str]]:
    if body.get("stream") is True:
        return []
    if QWEN_STREAM_ONLY.match(model):
        return [("stream_only", f"{model} answers only as a stream")]
    thinking = body.get("enable_thinking")
    if QWEN_THINKS_ONLY.match(model):
        why = f"{model} always thinks"
    elif thinking is True:
        why = "enable_thinking is on"
    elif thinking is None and QWEN_THINKS_BY_DEFAULT.match(model):
        why = f"{model} thinks unless enable_thinking is false"
    else:
        return []
    return [("thinking_needs_stream", f"{why}: a thinking call must stream")]


def rate_limit(
    status: int | None, body: Any, headers: dict[str, str] | None
) -> dict[str, Any] | None:
    """What a 429 says: its kind, whether waiting helps, and how long (Retry-After, or the
    `after N seconds` of Moonshot's message)."""
    if status != 429:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else body if isinstance(body, dict) else {}
    kind = error.get("code") or error.get("type") or "unknown"
    message = str(error.get("message") or "")
    # Quota spent (Moonshot, OpenAI) or an account in arrears (DashScope) waits for a person.
    spent = any(word in str(kind).lower() for word in ("quota_error", "insufficient_quota"))
    spent = spent or str(kind).startswith("Arrearage")
    wait = _retry_after((headers or {}).get("retry-after", ""))
    if wait is None and (match := _WAIT.search(message)):
        wait = float(match.group(1))
    return {"kind": str(kind), "retryable": not spent, "retry_after_s": wait}


def _retry_after(value: str) -> float | None:
    """Retry-After in seconds: a number of them, or an HTTP date."""
    if value.replace(".", "", 1).isdigit():
        return float(value)
    try:  # a date without a zone is naive, and cannot be compared: TypeError
        seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None
    return max(0.0, round(seconds, 1))
