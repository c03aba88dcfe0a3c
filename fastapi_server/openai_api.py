"""OpenAI chat-completions front end: request → TurnRequest, TurnEvent → chat.completion(.chunk)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, assert_never

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic_core import PydanticCustomError

from fastapi_server.auth import require_api_key
from fastapi_server.bodies import parse_json
from fastapi_server.hangup import unless_hung_up
from fastapi_server.openai_fields import REFUSALS
from fastapi_server.refusals import TEXT
from fastapi_server.sse import EventStream, data_frame
from fastapi_server.wire_types import ThreadKey, ToolCall, thread_key
from lang_agent.agent.events import (
    AnswerDelta,
    Done,
    Failed,
    Filler,
    InputMessage,
    RouteChosen,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnRequest,
    Usage,
)
from lang_agent.agent.runner import Agent
from lang_agent.errors import InvalidRequest, NotFound

# code → (HTTP status, OpenAI error type)
OPENAI_ERRORS: dict[str, tuple[int, str]] = {
    "invalid_request": (400, "invalid_request_error"),
    "payload_too_large": (413, "invalid_request_error"),
    "context_length_exceeded": (400, "invalid_request_error"),
    "invalid_api_key": (401, "invalid_request_error"),
    "forbidden": (403, "permission_error"),
    "not_found": (404, "invalid_request_error"),
    "thread_busy": (409, "conflict_error"),
    "upstream_error": (502, "upstream_error"),
    "upstream_status": (502, "upstream_error"),
    "upstream_timeout": (504, "upstream_error"),
    "turn_timeout": (504, "timeout_error"),
    "store_unavailable": (503, "server_error"),
    "shutting_down": (503, "server_error"),
    "preempted": (409, "conflict_error"),
    "internal_error": (500, "server_error"),
}


# What the server has already retried (LLM_RETRIES), waited out (BUSY_WAIT_S, TURN_TIMEOUT_S)
# or was told to refuse (BUSY_THREAD=reject), and a turn a newer one ended (BUSY_THREAD=preempt):
# the openai SDK retries a 409 or a 5xx twice more unless the answer says not to, which tripled
# the calls to a failing upstream, made a 25 s turn timeout the client's 75 s, and sent an ended
# request again to end the newer one in its turn.
NOT_RETRIED = frozenset(
    {
        "upstream_error",
        "upstream_status",
        "upstream_timeout",
        "turn_timeout",
        "thread_busy",
        "preempted",
    }
)


def openai_error_body(code: str, message: str, *, param: str | None = None) -> dict[str, Any]:
    _, kind = OPENAI_ERRORS.get(code, OPENAI_ERRORS["internal_error"])
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_error(code: str, message: str, *, param: str | None = None) -> JSONResponse:
    status, _ = OPENAI_ERRORS.get(code, OPENAI_ERRORS["internal_error"])
    headers = {"x-should-retry": "false"} if code in NOT_RETRIED else None
    body = openai_error_body(code, message, param=param)
    return JSONResponse(body, status_code=status, headers=headers)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


def _unsupported(what: str, kind: object) -> PydanticCustomError:
    return PydanticCustomError("unsupported", TEXT + ", not {kind}", {"kind": f"{what} {kind!r}"})


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value: Any) -> Any:
        # An image part was refused as "Input should be a valid string", naming no image.
        for part in value if isinstance(value, list) else ():
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in (None, "text"):
                raise _unsupported("a content part of type", kind)
        return value

    def to_input(self) -> InputMessage:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        role = "system" if self.role == "developer" else self.role
        return InputMessage(
            role=role,
            content=content or "",
            tool_calls=tuple(call.as_dict() for call in self.tool_calls or ()),
            tool_call_id=self.tool_call_id,
            name=self.name,
        )


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = "lang-agent"
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    thread_id: StrictStr | StrictInt | None = None
    metadata: dict[str, StrictStr] | None = None
    # Checked, then left to the profile's model settings: a wrong value is still an error.
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    # The answer's cap (max_tokens is OpenAI's older name of max_completion_tokens).
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    # The answer is speech-ready prose: a client asking for JSON must not get prose instead.
    response_format: dict[str, Any] | None = None
    # lang-agent extension: also stream tool events (chunks with empty choices).
    events: StrictBool = False

    @field_validator("thread_id")
    @classmethod
    def _thread_id_text(cls, value: str | int | None) -> str | None:
        return None if value is None else thread_key(str(value))

    @field_validator("response_format")
    @classmethod
    def _text_answers(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            raise _unsupported("response_format", value.get("type"))
        return value


def _usage(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ChunkBuilder:
    """chat.completion.chunk objects for one response."""

    def __init__(self, model: str, thread_id: str | None) -> None:
        self.base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        if thread_id is not None:
            self.base["thread_id"] = thread_id

    def delta(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data_frame({**self.base, "choices": [choice], **extra})

    def bare(self, **extra: Any) -> str:
        return data_frame({**self.base, "choices": [], **extra})


async def _stream(
    leading: list[TurnEvent], events: AsyncIterator[TurnEvent], body: ChatRequest
) -> AsyncIterator[str]:
    """`leading`: the events already taken from `events`, sent first."""
    chunks = ChunkBuilder(body.model, body.thread_id)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    taken = iter(leading)
    try:
        yield chunks.delta({"role": "assistant", "content": ""})
        event: TurnEvent | None = next(taken)
        while event is not None:
            match event:
                case RouteChosen(route=route):
                    if body.events:
                        yield chunks.bare(x_lang_agent={"kind": "route", "route": route})
                case Filler(text=text):
                    yield chunks.delta({"content": text}, x_lang_agent={"kind": "filler"})
                case AnswerDelta(text=text):
                    yield chunks.delta({"content": text})
                case ToolStarted(call_id=call_id, name=name, args=args):
                    if body.events:
                        kind = {"kind": "tool_started", "id": call_id, "name": name, "args": args}
                        yield chunks.bare(x_lang_agent=kind)
                case ToolFinished(call_id=call_id, name=name, result=result, error=error):
                    if body.events:
                        kind = {"kind": "tool_finished", "id": call_id, "name": name}
                        yield chunks.bare(x_lang_agent={**kind, "result": result, "error": error})
                case Done(usage=usage, finish_reason=finish):
                    yield chunks.delta({}, finish)
                    if include_usage:
                        yield chunks.bare(usage=_usage(usage))
                case Failed(code=code, message=message):
                    yield data_frame(openai_error_body(code, message))
                case _:
                    assert_never(event)
            if isinstance(event, Done | Failed):
                break
            event = next(taken, None) or await anext(events, None)
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()


async def _complete(
    first: TurnEvent, events: AsyncIterator[TurnEvent], body: ChatRequest
) -> Response:
    text: list[str] = []
    event: TurnEvent | None = first
    try:
        while event is not None and not isinstance(event, Done | Failed):
            if isinstance(event, AnswerDelta):
                text.append(event.text)
            event = await anext(events, None)
    finally:
        await events.aclose()
    if not isinstance(event, Done):
        failed = event if isinstance(event, Failed) else Failed("internal_error", "no answer")
        return openai_error(failed.code, failed.message)
    payload: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(text)},
                "finish_reason": event.finish_reason,
            }
        ],
        "usage": _usage(event.usage),
    }
    if body.thread_id is not None:
        payload["thread_id"] = body.thread_id
    return JSONResponse(payload)


router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    settings = request.app.state.settings
    body = await parse_json(request, ChatRequest, limit=settings.max_body_bytes)
    REFUSALS.check(body.model_extra or {})
    if len(body.messages) > settings.max_messages:
        raise InvalidRequest(f"at most {settings.max_messages} messages", param="messages")
    turn = TurnRequest(
        messages=tuple(m.to_input() for m in body.messages),
        thread_id=body.thread_id,
        stream=body.stream,
        history="append",
        # As a DashScope app id does: another name gets DEFAULT_PROFILE.
        profile=body.model,
        front_end="openai",
        metadata=dict(body.metadata or {}),
        max_tokens=body.max_completion_tokens or body.max_tokens,
    )
    return await unless_hung_up(request, _answer(request.app.state.service.agent, turn, body))


async def _answer(agent: Agent, turn: TurnRequest, body: ChatRequest) -> Response:
    events = agent.run_turn(turn)
    leading = [await anext(events)]
    # A stream's status goes out with its first chunk, and the route is no text: the answer's
    # first event is awaited too, so a chat model that fails before its first word is a clean
    # 502 (or 504) before any chunk, as a router that fails is.
    if isinstance(leading[0], RouteChosen):
        leading.append(await anext(events))
    if isinstance(leading[-1], Failed):
        await events.aclose()
        return openai_error(leading[-1].code, leading[-1].message)
    if body.stream:
        return EventStream(_stream(leading, events, body))
    return await _complete(leading[-1], events, body)


def _model_names(request: Request) -> list[str]:
    """What `model` can name: lang-agent, each profile (it picks that profile), and each
    role's own model (echoed, answered by the default profile)."""
    agent = request.app.state.service.agent
    specs = agent.deps.models.specs.values()
    return sorted({"lang-agent", *agent.profiles, *(spec.model for spec in specs)})


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "lang-agent"}


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model(name) for name in _model_names(request)]}


# `path`: a model's name may hold a slash (Qwen/Qwen3-8B), as OpenAI's route allows.
@router.get("/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    if model not in _model_names(request):
        raise NotFound(f"no model {model!r}: GET /v1/models lists them")
    return _model(model)


# `path`: a thread id may hold a slash, and the chat path accepts it.
@router.delete("/threads/{thread_id:path}")
async def delete_thread(thread_id: ThreadKey, request: Request) -> dict[str, Any]:
    deleted = await request.app.state.service.agent.forget(thread_id)
    if not deleted:
        raise NotFound(f"no thread {thread_id!r}")
    return {"id": thread_id, "object": "thread.deleted", "deleted": True}
