"""Captured calls as text: the list table, inspect sections, case JSON files and curl commands.

Stored rows are already redacted; URLs and bodies are redacted again here, since a row stored
before a rule existed holds what it now hides. curl puts `$API_KEY` only where the key went and
a named placeholder for any other secret, so neither a case file nor a command ever holds one.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable, Sequence
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from lang_agent.capture.merge import split_events
from lang_agent.capture.record import (
    REDACTED,
    USERINFO_REDACTED,
    is_secret_header,
    redact_body,
    redact_url,
)

SECTIONS = (
    "metadata",
    "request_header",
    "request_body",
    "client_request_body",
    "response_header",
    "response_body",
    "response_sse",
    "events",
    "flags",
    "error",
)
METADATA = (
    "id call_id source thread_id turn_id node method url model stream status status_code "
    "chatcmpl_id upstream_request_id client_request_id server_timing_ms created_at finished_at "
    "ttfb_ms ttft_ms ttft_reasoning_ms latency_ms tpot_ms prompt_tokens completion_tokens "
    "cached_tokens reasoning_tokens total_tokens cost finish_reason category tags"
).split()
# Never put on a curl line: hop-by-hop, recomputed, or encodings curl would not undo.
CURL_SKIPPED = frozenset(
    {"content-length", "host", "connection", "accept-encoding", "transfer-encoding", "cookie"}
)
_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# Names whose redacted value was the API key itself. Any other secret gets `$REDACTED_<NAME>`:
# filling it with the key would send the key where it never went.
_CARRIES_API_KEY = re.compile(r"^(?:authorization|key)$|api[-_]?key|subscription[-_]?key", re.I)
# A redacted value in a stored URL: a query parameter's (group 2; group 1 is its name), the
# password (group 3) or a userinfo that was a name alone (group 4).
_URL_SECRET = re.compile(
    rf"(?:[?&]([^=&#]*)=({re.escape(REDACTED)})"
    rf"|^[^/?#]*//[^/?#@:]*:({USERINFO_REDACTED})@"
    rf"|^[^/?#]*//({USERINFO_REDACTED})@)"
)
_SHELL_SPECIAL = re.compile(r'([\\"$`])')


def status_text(code: int | None) -> str:
    if code is None:
        return ""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds")
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if value < 1 else f"{value:.1f}"
    return str(value)


def _scrubbed(row: dict[str, Any]) -> dict[str, Any]:
    """The row's URL and request bodies redacted again by today's rules (a no-op on a row stored
    under them); curl re-checks header names itself."""
    scrubbed = row | {
        "request_body": redact_body(row.get("request_body")),
        "client_request_body": redact_body(row.get("client_request_body")),
    }
    if row.get("url"):
        scrubbed["url"] = redact_url(row["url"])
    return scrubbed


def calls_table(rows: Sequence[dict[str, Any]]) -> str:
    """The `calls list` table: one line per call."""
    header = (
        "id",
        "status",
        "node",
        "chatcmpl",
        "request_id",
        "model",
        "latency_ms",
        "ttft_ms",
        "tokens p/c/cached",
        "cost",
        "requested_at",
    )
    lines = [header]
    for row in rows:
        code = f" {row['status_code']}" if row.get("status_code") is not None else ""
        tokens = "/".join(
            _text(row.get(k)) or "-"
            for k in ("prompt_tokens", "completion_tokens", "cached_tokens")
        )
        lines.append(
            (
                _text(row["id"]),
                f"{row['status']}{code}",
                _text(row.get("node")),
                _text(row.get("chatcmpl_id")),
                _text(row.get("upstream_request_id")),
                _text(row.get("model")),
                _text(row.get("latency_ms")),
                _text(row.get("ttft_ms")),
                tokens,
                _text(row.get("cost")),
                _text(row.get("created_at")),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def calls_json(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps([_plain(row) for row in rows], ensure_ascii=False, indent=2, default=str)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (_text(v) if isinstance(v, datetime) else v) for k, v in row.items()}


def render_call(row: dict[str, Any], *, sections: Iterable[str] = ("metadata",)) -> str:
    """`calls inspect`: the chosen sections of one call, bodies in full."""
    out, row = [], _scrubbed(row)
    for section in sections:
        if section not in SECTIONS:
            raise ValueError(f"unknown section {section!r}; choose from {', '.join(SECTIONS)}")
        if section == "metadata":
            value: Any = {k: _text(row.get(k)) for k in METADATA if row.get(k) not in (None, [])}
        elif section == "events":
            value = list(zip(row.get("event_offsets_ms") or [], _events(row), strict=False))
        else:
            value = row.get(section)
        body = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, indent=2)
        out.append(f"== {section}\n{body}")
    return "\n".join(out)


def _events(row: dict[str, Any]) -> list[str]:
    return [event.strip() for event in split_events(row.get("response_sse") or "")]


def _header_text(headers: dict[str, str] | None) -> str:
    return "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())


def case_json(
    row: dict[str, Any], *, category: str | None = None, tags: Sequence[str] = ()
) -> dict[str, Any]:
    """MoonPalace's export envelope: metadata, request, response, error, category, tags."""
    row = _scrubbed(row)
    metadata = {
        key: _text(row.get(key))
        for key in METADATA
        if row.get(key) not in (None, []) and key not in ("category", "tags")
    }
    metadata["flags"] = row.get("flags") or {}
    client_body = row.get("client_request_body")
    request = {
        "url": row.get("url"),
        "method": row.get("method"),
        "header": _header_text(row.get("request_header")),
        "body": client_body if client_body is not None else row.get("request_body"),
    }
    if client_body is not None:
        request["upstream_body"] = row.get("request_body")
    response: dict[str, Any] = {
        "status": status_text(row.get("status_code")),
        "header": _header_text(row.get("response_header")),
        "body": row.get("response_body"),
    }
    if row.get("response_sse"):
        response["sse"] = row["response_sse"]
        response["event_offsets_ms"] = row.get("event_offsets_ms")
    return {
        "metadata": metadata,
        "request": request,
        "response": response,
        "error": row.get("error"),
        "category": category or row.get("category"),
        "tags": list(tags) or list(row.get("tags") or []),
    }


def case_file_name(row: dict[str, Any]) -> str:
    """`<chatcmpl>.json`, else `requestid-<id>.json`, else `call-<id>.json`."""
    if row.get("chatcmpl_id"):
        stem = row["chatcmpl_id"]
    elif row.get("upstream_request_id"):
        stem = f"requestid-{row['upstream_request_id']}"
    else:
        stem = f"call-{row['id']}"
    return _FILE_SAFE.sub("_", stem)[:150] + ".json"


def write_cases(
    rows: Iterable[dict[str, Any]],
    *,
    directory: Path,
    category: str | None = None,
    tags: Sequence[str] = (),
) -> list[Path]:
    """One case JSON file per call in `directory` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        path = directory / case_file_name(row)
        case = case_json(row, category=category, tags=tags)
        text = json.dumps(case, ensure_ascii=False, indent=2, default=str)
        path.write_text(text + "\n", encoding="utf-8")
        paths.append(path)
    return paths


def curl_command(row: dict[str, Any]) -> str:
    """A curl command that replays what the client sent: the key is `$API_KEY`, any other secret
    `$REDACTED_<NAME>`. ValueError when the stored body was cut at the capture size limit: the
    command would send invalid JSON."""
    cut = (row.get("flags") or {}).get("request_truncated")
    if cut:
        raise ValueError(
            f"call {row.get('id')}: its {cut}-byte request body was stored cut to "
            "CAPTURE_MAX_BODY_BYTES, so no curl command can replay it"
        )
    row = _scrubbed(row)
    lines = [f"curl -X {shlex.quote(row.get('method') or 'POST')} {_url_word(row['url'])}"]
    headers = row.get("request_header") or {}
    if "authorization" in headers or not any(_CARRIES_API_KEY.search(n) for n in headers):
        lines.append('-H "Authorization: Bearer $API_KEY"')
    for name, value in headers.items():
        if name in CURL_SKIPPED or name == "authorization" or not _HEADER_NAME.match(name):
            continue
        if value == REDACTED or is_secret_header(name):
            lines.append(f'-H "{name}: {_placeholder(name)}"')
            continue
        lines.append(f"-H {shlex.quote(f'{name}: {value}')}")
    body = row.get("client_request_body")
    if body is None:
        body = row.get("request_body")
    if body is not None:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
        lines.append(f"-d {shlex.quote(text)}")
    return " \\\n  ".join(lines)


def _placeholder(name: str) -> str:
    if _CARRIES_API_KEY.search(name):
        return "$API_KEY"
    return "$REDACTED_" + re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()


def _url_word(url: str) -> str:
    """The URL as one shell word; redacted values become variables, so it is double-quoted."""
    pieces: list[str] = []
    done = 0
    for match in _URL_SECRET.finditer(url):
        secret = next(group for group in (2, 3, 4) if match.group(group) is not None)
        name = {2: unquote(match.group(1) or ""), 3: "url_password", 4: "url_user"}[secret]
        pieces += [_SHELL_SPECIAL.sub(r"\\\1", url[done : match.start(secret)]), _placeholder(name)]
        done = match.end(secret)
    if not pieces:
        return shlex.quote(url)
    return '"' + "".join(pieces) + _SHELL_SPECIAL.sub(r"\\\1", url[done:]) + '"'
