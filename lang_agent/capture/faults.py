"""Faults `calls replay --fault` puts into a recorded answer; the providers' own error bodies."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

FAULT_FORMS = "cut:N, no-done, stall:SECONDS, 429 or 500"


@dataclass(frozen=True)
class Fault:
    """One way to fail: `cut` drops the connection after `amount` stream events (or body bytes);
    `no-done` ends a stream without `[DONE]`; `stall` stops `amount` seconds after the first
    event (before a body); `429` and `500` answer with the recording provider's error."""

    kind: str
    amount: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Fault:
        kind, sep, value = text.strip().partition(":")
        if kind in ("no-done", "429", "500") and not sep:
            return cls(kind)
        if kind == "cut" and sep and value.isdigit() and int(value) >= 0:
            return cls(kind, int(value))
        if kind == "stall" and sep:
            try:
                seconds = float(value)
            except ValueError:
                seconds = math.nan
            if seconds > 0 and math.isfinite(seconds):
                return cls(kind, seconds)
        raise ValueError(f"unknown fault {text!r}: one of {FAULT_FORMS}")

    def __str__(self) -> str:
        if self.kind == "cut":
            return f"cut:{int(self.amount)}"
        return f"stall:{self.amount:g}" if self.kind == "stall" else self.kind


def provider_error(url: str | None, status: int) -> dict[str, Any]:
    """The body a provider answers a 429 or 500 with, chosen by the recorded call's URL:
    Moonshot's (a `type`, no `code`), DashScope's (compatible mode nests it, the native API
    is flat, both with Qwen's codes) or OpenAI's, for any other upstream."""
    parts = urlsplit(url or "")
    host, path = (parts.hostname or "").lower(), parts.path
    busy = status == 429
    if "moonshot" in host:
        if busy:
            message = (
                "Your account request reached organization max RPM: 3, "
                "please try again after 1 seconds"
            )
            return {"error": {"type": "rate_limit_reached_error", "message": message}}
        return {"error": {"type": "server_error", "message": "unexpected server error"}}
    if "dashscope" in host or "aliyuncs" in host:
        if busy:
            error = {
                "code": "Throttling.RateQuota",
                "message": "Requests rate limit exceeded, please try again later.",
            }
        else:
            error = {
                "code": "InternalError",
                "message": "An internal error has occured, please try again later.",
            }
        request_id = str(uuid.uuid4())
        if "/compatible-mode/" in path:
            return {"error": error, "request_id": request_id}
        return {**error, "request_id": request_id}
    if busy:
        error = {
            "message": "Rate limit reached for requests",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    else:
        error = {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    return {"error": error}
