"""Typed errors, translated where foreign errors enter and mapped to each protocol at the edge.

LangAgentError
 ├── InvalidRequest      the client sent something we cannot serve (4xx)
 │    └── ContextTooLong       its latest message alone exceeds the model's window (400)
 ├── AuthError           missing or wrong API key (401)
 ├── Forbidden           a keyless API asked by something other than a program on this host (403)
 ├── ThreadBusy          another turn holds the thread and the setting says refuse (409)
 ├── UpstreamError       a model call failed
 │    ├── UpstreamTimeout      no byte within the idle timeout
 │    └── UpstreamStatus       the upstream answered with an HTTP error
 ├── ToolError           a tool failed or timed out (the model sees it as a tool result)
 ├── StoreUnavailable    Postgres (memory, thread leases) cannot be reached (503)
 ├── TurnTimeout         the turn ran out of its budget
 ├── ShuttingDown        the server is stopping and its grace period is nearly over (503)
 └── Preempted           a newer request on the thread ended the turn (barge-in; 409)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx2
import openai
import psycopg
import psycopg_pool


class LangAgentError(Exception):
    """Base class; `code` is a stable machine-readable name."""

    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(LangAgentError):
    code = "invalid_request"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class PayloadTooLarge(InvalidRequest):
    code = "payload_too_large"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"  # OpenAI's code for it


class NotFound(LangAgentError):
    code = "not_found"


class AuthError(LangAgentError):
    code = "invalid_api_key"


class Forbidden(LangAgentError):
    code = "forbidden"


class ThreadBusy(LangAgentError):
    code = "thread_busy"


class UpstreamError(LangAgentError):
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class UpstreamStatus(UpstreamError):
    code = "upstream_status"

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class ToolError(LangAgentError):
    code = "tool_error"


class StoreUnavailable(LangAgentError):
    code = "store_unavailable"


class TurnTimeout(LangAgentError):
    code = "turn_timeout"


class ShuttingDown(LangAgentError):
    code = "shutting_down"


class Preempted(LangAgentError):
    code = "preempted"


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Translate a lost or unreachable Postgres (a restart, a network cut, a full pool) into
    StoreUnavailable: a clean, retryable 503 instead of an unexpected error."""
    try:
        yield
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
        raise StoreUnavailable("the database is unavailable; try again shortly") from exc


@contextlib.contextmanager
def upstream_errors() -> Iterator[None]:
    """Translate openai/httpx2 failures of a model call into UpstreamError subclasses."""
    try:
        yield
    except (openai.APITimeoutError, httpx2.TimeoutException) as exc:
        raise UpstreamTimeout("the model did not answer in time") from exc
    except openai.APIStatusError as exc:
        raise UpstreamStatus(
            f"the model API answered HTTP {exc.status_code}", status=exc.status_code
        ) from exc
    except (openai.APIConnectionError, httpx2.TransportError) as exc:
        raise UpstreamError("the model API could not be reached or cut the stream") from exc
    except openai.APIError as exc:
        raise UpstreamError("the model API returned an error") from exc
