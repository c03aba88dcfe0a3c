"""One captured call: the record, and the redaction of what it stores (headers before a record
exists, request bodies as it becomes a row)."""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

from lang_agent.capture.linking import conversation_key

REDACTED = "[REDACTED]"
# A URL's redacted password: brackets there would make the host unreadable (urlsplit takes
# `[...]` in the authority for an IPv6 address and raises).
USERINFO_REDACTED = "REDACTED"
ALWAYS_REDACTED = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"}
)
# The one notion of a credential's name, for headers, query parameters and body fields. Tokens
# only at the end (access_token, x-auth-token) and `key`/`sig` only alone (Google's ?key=, Azure
# SAS's sig=): max_tokens, stop_token_ids, prompt_cache_key and Idempotency-Key are not secrets.
# Neither is a session id: a secret session travels as a cookie or a token.
_KEY_LIKE = re.compile(
    r"api[-_]?key|(?:access|private|subscription)[-_]?key|^(?:key|sig)$|token$"
    r"|secret|passw|auth|cookie|credential|signature",
    re.I,
)
# The password in `scheme://user:password@host`, up to the last `@` of the authority.
_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/?#@:]*:)[^/?#]*@", re.I)
# A userinfo that is a name alone (`https://TOKEN@host`): in an API's URL, a credential.
_URL_USER = re.compile(r"^([a-z][a-z0-9+.-]*://)[^/?#@:]+@", re.I)
# A `"name": "string"` pair in JSON text, not inside another string (whose quotes are escaped);
# the string may be cut off by the end of the text.
_JSON_PAIR = re.compile(r'(?<!\\)"([\w.-]+)"(\s*:\s*)"(?:[^"\\]|\\.)*(?:"|\\?\Z)')

# pending: in flight · ok · http_error: the upstream answered 4xx/5xx · error: failed before any
# response (refused, timeout) · incomplete: the body or stream ended early · stopped: cut by us
# (the repeat detector).
Status = Literal["pending", "ok", "http_error", "error", "incomplete", "stopped"]
# The columns a record's fields fill, then the one its row derives from them.
FIELD_COLUMNS = (
    "call_id source thread_id turn_id node method url model stream status status_code error "
    "request_header request_body client_request_body response_header response_body "
    "response_sse event_offsets_ms client_request_id upstream_request_id chatcmpl_id "
    "server_timing_ms created_at finished_at ttfb_ms ttft_ms ttft_reasoning_ms latency_ms "
    "tpot_ms prompt_tokens completion_tokens cached_tokens reasoning_tokens total_tokens cost "
    "finish_reason flags category tags"
).split()
COLUMNS = [*FIELD_COLUMNS, "conversation_key"]


def is_secret_header(name: str, *, extra: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    return _looks_secret(lowered) or lowered in {e.lower() for e in extra}


@functools.lru_cache(maxsize=1024)
def _looks_secret(lowered: str) -> bool:
    """Cached: every captured call asks again about the same few dozen names."""
    return lowered in ALWAYS_REDACTED or bool(_KEY_LIKE.search(lowered))


def redact_headers(headers: Iterable[tuple[str, str]], *, extra: Iterable[str] = ()) -> dict:
    """Headers as {lower-case name: value} with every key-like value replaced by [REDACTED]."""
    configured = {name.lower() for name in extra}
    result: dict[str, str] = {}
    for name, value in headers:
        key = name.lower()
        value = REDACTED if _looks_secret(key) or key in configured else value
        result[key] = f"{result[key]}, {value}" if key in result else value
    return result


def redact_url(url: str) -> str:
    """The URL with its userinfo password (or a userinfo that is a name alone, as a token is
    often given) and the values of key-like query parameters replaced: safe to store, print
    and log (an upstream may be configured as http://user:pw@host or https://TOKEN@host)."""
    url = _URL_PASSWORD.sub(lambda m: m.group(1) + USERINFO_REDACTED + "@", url)
    url = _URL_USER.sub(lambda m: m.group(1) + USERINFO_REDACTED + "@", url)
    rest, hash_mark, fragment = url.partition("#")
    head, mark, query = rest.partition("?")
    if not mark:
        return url
    params = (_redact_param(param) for param in query.split("&"))
    return head + mark + "&".join(params) + hash_mark + fragment


def _redact_param(param: str) -> str:
    name, equals, _value = param.partition("=")
    return name + equals + REDACTED if equals and _looks_secret(unquote(name).lower()) else param


def redact_body(body: Any) -> Any:
    """A request body as stored: top-level fields named like credentials (an SDK's extra_body
    can carry `api_key`) get [REDACTED]. A body kept as text (cut at the size limit, or not
    JSON) cannot be walked, so every such "name": "string" pair in it is replaced."""
    if isinstance(body, dict):
        return {
            k: REDACTED if isinstance(k, str) and _looks_secret(k.lower()) else v
            for k, v in body.items()
        }
    if isinstance(body, str):
        return _JSON_PAIR.sub(_redact_pair, body)
    return body


def _redact_pair(match: re.Match[str]) -> str:
    if not _looks_secret(match.group(1).lower()):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'


@dataclass
class CallRecord:
    """One captured call; headers are already redacted when a record is built, request bodies
    when it becomes a row (force-stream re-sends the record's body upstream)."""

    method: str
    url: str
    request_header: dict[str, str]
    created_at: datetime
    started: float = field(default_factory=time.monotonic)
    call_id: uuid.UUID = field(default_factory=uuid.uuid4)
    source: str = "agent"
    thread_id: str | None = None
    turn_id: str | None = None
    node: str | None = None
    model: str | None = None
    stream: bool = False
    status: Status = "pending"
    status_code: int | None = None
    error: str | None = None
    request_body: Any = None
    client_request_body: Any = None
    response_header: dict[str, str] | None = None
    response_body: Any = None
    response_sse: str | None = None
    event_offsets_ms: list[float] | None = None
    client_request_id: str | None = None
    upstream_request_id: str | None = None
    chatcmpl_id: str | None = None
    server_timing_ms: float | None = None
    finished_at: datetime | None = None
    ttfb_ms: float | None = None
    ttft_ms: float | None = None
    ttft_reasoning_ms: float | None = None
    latency_ms: float | None = None
    tpot_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None
    total_tokens: int | None = None
    cost: float | None = None
    finish_reason: str | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    category: str | None = None
    tags: list[str] = field(default_factory=list)
    # Request and response bytes the record holds, for the writer's queue budget (not stored).
    body_bytes: int = 0
    # What a response stored cut still tells (id, model, usage, finish reason), read from its
    # head and tail for the accounting; not stored itself.
    response_summary: dict[str, Any] | None = None

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    def row(self) -> dict[str, Any]:
        """The `llm_calls` columns as JSON-ready values, for the recorder's batch upsert."""
        row = {name: getattr(self, name) for name in FIELD_COLUMNS}
        row["request_body"] = redact_body(self.request_body)
        row["client_request_body"] = redact_body(self.client_request_body)
        # A call with a thread is found by it; any other is linked by its messages.
        row["conversation_key"] = None if self.thread_id else conversation_key(self.request_body)
        return row
