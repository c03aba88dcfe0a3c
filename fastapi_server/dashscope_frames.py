"""DashScope Application API wire shapes: SSE frames, bodies and the error table."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from lang_agent.agent.events import Usage
from lang_agent.jsonwire import dumps

# code → (HTTP status, DashScope error code)
DASHSCOPE_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "InvalidParameter"),
    "context_length_exceeded": (400, "InvalidParameter"),
    "payload_too_large": (413, "InvalidParameter"),
    "invalid_api_key": (401, "InvalidApiKey"),
    "forbidden": (403, "AccessDenied"),
    "not_found": (404, "NotFound"),
    "thread_busy": (429, "Throttling"),
    "upstream_error": (502, "InternalError"),
    "upstream_status": (502, "InternalError"),
    "upstream_timeout": (504, "RequestTimeOut"),
    "turn_timeout": (504, "RequestTimeOut"),
    "store_unavailable": (503, "InternalError"),
    "shutting_down": (503, "InternalError"),
    "preempted": (409, "RequestCancelled"),
    "internal_error": (500, "InternalError"),
}


def error_body(code: str, message: str, request_id: str) -> dict[str, str]:
    _, name = DASHSCOPE_ERRORS.get(code, DASHSCOPE_ERRORS["internal_error"])
    return {"code": name, "message": message, "request_id": request_id}


def error_response(code: str, message: str, *, request_id: str) -> JSONResponse:
    status, _ = DASHSCOPE_ERRORS.get(code, DASHSCOPE_ERRORS["internal_error"])
    return JSONResponse(
        error_body(code, message, request_id),
        status_code=status,
        headers={"x-request-id": request_id},
    )


def usage_body(usage: Usage | None) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "models": [
            {"model_id": m.model, "input_tokens": m.input_tokens, "output_tokens": m.output_tokens}
            for m in usage.models
        ]
    }


def output_body(
    *, text: str, finish_reason: str, session_id: str, usage: Usage | None, request_id: str
) -> dict[str, Any]:
    return {
        "output": {
            "text": text,
            "finish_reason": finish_reason,
            "session_id": session_id,
            "thoughts": None,
            "doc_references": None,
        },
        "usage": usage_body(usage),
        "request_id": request_id,
    }


def result_frame(event_id: int, body: dict[str, Any]) -> str:
    """`id:` / `event:result` / `:HTTP_STATUS/200` / one-line `data:`, as DashScope frames it."""
    return f"id:{event_id}\nevent:result\n:HTTP_STATUS/200\ndata:{dumps(body)}\n\n"


def error_frame(event_id: int, code: str, message: str, request_id: str) -> str:
    """`event:error` with no space after the colon: the only form the SDK treats as an error."""
    status, _ = DASHSCOPE_ERRORS.get(code, DASHSCOPE_ERRORS["internal_error"])
    body = dumps(error_body(code, message, request_id))
    return f"id:{event_id}\nevent:error\nstatus:{status}\n:HTTP_STATUS/{status}\ndata:{body}\n\n"
