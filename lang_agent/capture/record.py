"""One captured call: the record, and the redaction that happens before a record exists."""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

REDACTED = "[REDACTED]"
ALWAYS_REDACTED = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "set-cookie"}
)
# Key-like names; `token(?!s)` keeps usage headers such as x-ratelimit-remaining-tokens.
_KEY_LIKE = re.compile(
    r"api[-_]?key|secret|passw|token(?!s)|auth|cookie|credential|signature|session", re.I
)
_HARMLESS = frozenset({"msh-context-cache-token-saved", "msh-context-cache-token-exp"})
_QUERY_SECRET = re.compile(r"([?&][^=&#]*(?:key|token|secret|sig)[^=&#]*=)[^&#]*", re.I)

# pending: in flight · ok · http_error: the upstream answered 4xx/5xx · error: failed before any
# response (refused, timeout) · incomplete: the body or stream ended early · stopped: cut by us
# (the repeat detector).
Status = Literal["pending", "ok", "http_error", "error", "incomplete", "stopped"]
COLUMNS = (
    "call_id source thread_id turn_id node method url model stream status status_code error "
    "request_header request_body client_request_body response_header response_body "
    "response_sse event_offsets_ms client_request_id upstream_request_id chatcmpl_id "
    "server_timing_ms created_at finished_at ttfb_ms ttft_ms ttft_reasoning_ms latency_ms "
    "tpot_ms prompt_tokens completion_tokens cached_tokens reasoning_tokens total_tokens cost "
    "finish_reason flags category tags"
).split()


def is_secret_header(name: str, *, extra: Iterable[str] = ()) -> bool:
    lowered = name.lower()
    return _looks_secret(lowered) or lowered in {e.lower() for e in extra}


@functools.lru_cache(maxsize=1024)
def _looks_secret(lowered: str) -> bool:
    """Cached: every captured call asks again about the same few dozen header names."""
    if lowered in ALWAYS_REDACTED:
        return True
    return lowered not in _HARMLESS and bool(_KEY_LIKE.search(lowered))


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
    """The URL with the values of key-like query parameters replaced."""
    return _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, url)


@dataclass
class CallRecord:
    """One captured call; headers are already redacted when a record is built."""

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

    def elapsed_ms(self) -> float:
        return round((time.monotonic() - self.started) * 1000, 3)

    def row(self) -> dict[str, Any]:
        """The `llm_calls` columns as JSON-ready values, for the recorder's batch upsert."""
        return {name: getattr(self, name) for name in COLUMNS}
