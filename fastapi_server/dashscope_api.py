"""DashScope Application API front end (xiaozhi's AliBL provider): request → TurnRequest,
TurnEvent → cumulative or incremental `output.text` frames."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, assert_never

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from fastapi_server import dashscope_frames as frames
from fastapi_server.auth import require_api_key
from fastapi_server.bodies import parse_json
from fastapi_server.dashscope_fields import INPUT_REFUSALS, PARAMETER_REFUSALS
from fastapi_server.hangup import unless_hung_up
from fastapi_server.sse import EventStream
from fastapi_server.wire_types import ToolCall, session_thread, thread_key
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
)
from lang_agent.agent.runner import Agent
from lang_agent.errors import InvalidRequest


class DashMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class HistoryTurn(BaseModel):
    """A turn of the deprecated `input.history`, which the SDK sends for `history=`."""

    user: str = ""
    bot: str = ""


class DashInput(BaseModel):
    # Fields not declared are taken as they come: `memory_id` is whatever xiaozhi's
    # `ali_memory_id` holds (an id, "", true, a number), and a 400 would silence the speaker.
    model_config = ConfigDict(extra="allow")

    messages: list[DashMessage] | None = None
    history: list[HistoryTurn] | None = None
    prompt: str | None = None
    session_id: str | None = None
    biz_params: dict[str, Any] | None = None

    @field_validator("session_id")
    @classmethod
    def _session_key(cls, value: str | None) -> str | None:
        # Empty or blank is no session (the SDK drops "", hand-written clients may send
        # either): a new one, where a blank one was a 400 and an empty one was not.
        return thread_key(value) if value and not value.isspace() else None


class DashParameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    incremental_output: bool | None = None
    stream: bool | None = None
    # Checked, then left to the profile's model settings: a wrong value is still an error.
    temperature: float | None = Field(None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    # The answer's cap: not in the Application API's documentation, but the name DashScope's
    # generation API gives it, and the SDK passes it on.
    max_tokens: StrictInt | None = Field(None, ge=1)


class DashRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: DashInput
    parameters: DashParameters | None = None
    stream: bool | None = None


def wants_stream(request: Request, body: DashRequest) -> bool:
    """Headers decide (the SDK never sends a body flag); hand-written clients may use the body."""
    if request.headers.get("x-dashscope-sse", "").lower() == "enable":
        return True
    if "text/event-stream" in request.headers.get("accept", ""):
        return True
    return bool(body.stream or (body.parameters and body.parameters.stream))


def unwrap_voiceprint(content: str) -> tuple[str, str | None]:
    """xiaozhi sends `{"speaker": …, "content": …}` the first time it recognises a speaker."""
    text = content.strip()
    if text.startswith("{") and text.endswith("}"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            return content, None
        if isinstance(data, dict) and isinstance(data.get("content"), str) and "speaker" in data:
            return data["content"], str(data["speaker"])
    return content, None


def from_history(turns: list[HistoryTurn]) -> list[DashMessage]:
    """The deprecated `history` pairs as the messages they stand for."""
    messages = []
    for turn in turns:
        messages.append(DashMessage(role="user", content=turn.user))
        messages.append(DashMessage(role="assistant", content=turn.bot))
    return [message for message in messages if message.content]


def to_inputs(body: DashInput) -> tuple[tuple[InputMessage, ...], str | None]:
    """The dialogue as InputMessages, plus the speaker if a voiceprint named one."""
    # `history` is the older form of `messages`; the SDK sends one or the other.
    raw = list(body.messages or from_history(body.history or []))
    if body.prompt and not body.prompt.isspace():  # after `messages`, as the SDK sends it
        raw.append(DashMessage(role="user", content=body.prompt))
    # The SDK appends `prompt` to `messages` when memory_id/prompt is set: answer it once.
    if len(raw) >= 2 and raw[-1].role == raw[-2].role == "user":
        if raw[-1].content == raw[-2].content:
            raw.pop()
    speaker = None
    messages = []
    for message in raw:
        content = message.content or ""
        if message.role == "user":
            content, named = unwrap_voiceprint(content)
            speaker = named or speaker
        messages.append(
            InputMessage(
                role=message.role,
                content=content,
                tool_calls=tuple(call.as_dict() for call in message.tool_calls or ()),
                tool_call_id=message.tool_call_id,
                name=message.name,
            )
        )
    if not messages:
        raise InvalidRequest("input.messages or input.prompt is required", param="input")
    if messages[-1].role == "user" and not messages[-1].content.strip():
        raise InvalidRequest("the latest user message is empty", param="input.messages")
    return tuple(messages), speaker


def newest(messages: tuple[InputMessage, ...], limit: int) -> tuple[InputMessage, ...]:
    """At most `limit` messages: the system messages and the newest of the rest, from a user
    message on. xiaozhi resends its whole dialogue every turn, and only its tail is new to a
    session (a new one remembers MEMORY_MAX_MESSAGES), so a long one is cut, not refused."""
    system = [m for m in messages if m.role == "system"]
    if len(messages) <= limit or len(system) >= limit:
        return messages
    rest = [m for m in messages if m.role != "system"][len(system) - limit :]
    while rest and rest[0].role != "user":
        rest.pop(0)
    return (*system, *rest)


class SpokenText:
    """What the speaker has been sent. Cumulative text only grows; a piece that is exactly
    "content" waits for the next one (xiaozhi's function-call mode chokes on that delta)."""

    def __init__(self, *, incremental: bool) -> None:
        self.incremental = incremental
        self.text = ""
        self._pending = ""

    def add(self, piece: str) -> str | None:
        """The `output.text` to send for this piece, or None to send nothing yet."""
        self._pending += piece
        if not self._pending or self._pending == "content":
            return None
        new, self._pending = self._pending, ""
        self.text += new
        return new if self.incremental else self.text

    def final(self, last: str = "") -> str:
        """The `output.text` of the closing event, which also carries `last` if given."""
        self._pending += last
        new = self._pending + (" " if self._pending == "content" else "")
        self._pending = ""
        self.text += new
        return new if self.incremental else self.text


# Where a segmenting TTS (xiaozhi's, after a turn's first segment) cuts, and ASCII ends.
SENTENCE_ENDS = frozenset("。？！；：.?!;…")


def after_cut(spoken: str, fallback: str) -> str:
    """The fallback as said after `spoken`, the text a failure cut: a sentence of its own, not
    the end of the cut one."""
    tail = spoken.rstrip()
    return fallback if not tail or tail[-1] in SENTENCE_ENDS else "。" + fallback


class Reply:
    """One response's identifiers and text, turned into frames."""

    def __init__(self, *, session_id: str, incremental: bool) -> None:
        self.request_id = str(uuid.uuid4())
        self.session_id = session_id
        self.spoken = SpokenText(incremental=incremental)
        self.event_id = 0

    def frame(self, text: str, finish_reason: str, usage=None) -> str:
        self.event_id += 1
        body = frames.output_body(
            text=text,
            finish_reason=finish_reason,
            session_id=self.session_id,
            usage=usage,
            request_id=self.request_id,
        )
        return frames.result_frame(self.event_id, body)

    def error(self, code: str, message: str) -> str:
        self.event_id += 1
        return frames.error_frame(self.event_id, code, message, self.request_id)


async def _stream(
    first: TurnEvent, events: AsyncIterator[TurnEvent], reply: Reply
) -> AsyncIterator[str]:
    try:
        event: TurnEvent | None = first
        while event is not None:
            match event:
                case Filler(text=text) | AnswerDelta(text=text):
                    shown = reply.spoken.add(text)
                    if shown is not None:
                        yield reply.frame(shown, "null")
                case RouteChosen() | ToolStarted() | ToolFinished():
                    pass
                case Done(usage=usage, finish_reason=finish):
                    yield reply.frame(reply.spoken.final(), finish, usage)
                case Failed(code=code, message=message, usage=usage, fallback=fallback):
                    # The engine decided the failure is to be said (and logged it as said):
                    # the speaker ends in words, then the error is reported.
                    if fallback is not None:
                        last = after_cut(reply.spoken.text, fallback)
                        yield reply.frame(reply.spoken.final(last), "stop", usage)
                    yield reply.error(code, message)
                case _:
                    assert_never(event)
            event = None if isinstance(event, Done | Failed) else await anext(events, None)
    finally:
        await events.aclose()


async def _collect(first: TurnEvent, events: AsyncIterator[TurnEvent]) -> list[TurnEvent]:
    collected = [first]
    try:
        while not isinstance(collected[-1], Done | Failed):
            collected.append(await anext(events))
    finally:
        await events.aclose()
    return collected


async def _replayed(collected: list[TurnEvent], *, piece_chars: int) -> AsyncIterator[TurnEvent]:
    """A finished turn re-cut into small pieces, for the fake-stream debugging server."""
    for event in collected:
        if isinstance(event, AnswerDelta | Filler):
            for start in range(0, len(event.text), piece_chars):
                yield type(event)(event.text[start : start + piece_chars])
        else:
            yield event


async def _complete(first: TurnEvent, events: AsyncIterator[TurnEvent], reply: Reply) -> Response:
    collected = await _collect(first, events)
    last = collected[-1]
    if isinstance(last, Failed):
        return frames.error_response(last.code, last.message, request_id=reply.request_id)
    assert isinstance(last, Done)
    text = "".join(e.text for e in collected if isinstance(e, AnswerDelta))
    body = frames.output_body(
        text=text,
        finish_reason=last.finish_reason,
        session_id=reply.session_id,
        usage=last.usage,
        request_id=reply.request_id,
    )
    return JSONResponse(body, headers={"x-request-id": reply.request_id})


router = APIRouter(tags=["dashscope"], dependencies=[Depends(require_api_key)])


@router.post("/api/apps/{app_id}/completion")
@router.post("/api/v1/apps/{app_id}/completion")
async def completion(app_id: str, request: Request) -> Response:
    settings = request.app.state.settings
    body = await parse_json(request, DashRequest, limit=settings.max_body_bytes)
    INPUT_REFUSALS.check(body.input.model_extra or {})
    PARAMETER_REFUSALS.check((body.parameters and body.parameters.model_extra) or {})
    messages, speaker = to_inputs(body.input)
    messages = newest(messages, settings.max_messages)
    if len(messages) > settings.max_messages:
        raise InvalidRequest(f"at most {settings.max_messages} messages", param="input.messages")
    stream = wants_stream(request, body)
    incremental = bool(body.parameters and body.parameters.incremental_output)
    metadata = {"app_id": app_id}
    if speaker:
        metadata["speaker"] = speaker
    # Without a session_id the turn opens a new session, as DashScope's do: the id it answers
    # with continues it (Alibaba's multi-turn sample passes `output.session_id` back).
    session_id = body.input.session_id or uuid.uuid4().hex
    try:
        thread_id = session_thread(app_id, session_id)
    except ValueError as exc:
        raise InvalidRequest(f"app_id/input.session_id (the session's thread) {exc}") from None
    turn = TurnRequest(
        messages=messages,
        thread_id=thread_id,
        stream=stream,
        history="seed",
        profile=app_id,
        front_end="dashscope",
        busy=settings.dashscope_busy_session,
        # Only a stream is spoken; a whole answer's failure is an error response.
        fallback=settings.dashscope_fallback_text if stream else None,
        metadata=metadata,
        max_tokens=body.parameters.max_tokens if body.parameters else None,
    )
    reply = Reply(session_id=session_id, incremental=incremental)
    answer = _answer(request.app.state.service.agent, turn, reply, settings.dashscope_fake_stream)
    return await unless_hung_up(request, answer)


async def _answer(agent: Agent, turn: TurnRequest, reply: Reply, fake_stream: bool) -> Response:
    events = agent.run_turn(turn)
    first = await anext(events)
    if isinstance(first, Failed) and first.fallback is None:
        await events.aclose()
        return frames.error_response(first.code, first.message, request_id=reply.request_id)
    if not turn.stream:
        return await _complete(first, events, reply)
    if fake_stream:
        collected = await _collect(first, events)
        events = _replayed(collected, piece_chars=2)
        first = await anext(events)
    # Real DashScope sends x-dashscope-finished on streams; clients may look for it.
    headers = {"x-request-id": reply.request_id, "x-dashscope-finished": "true"}
    return EventStream(_stream(first, events, reply), headers=headers)


def dashscope_error(code: str, message: str) -> Response:
    """Errors raised before a handler could answer (auth, bad JSON), in the flat DashScope shape."""
    return frames.error_response(code, message, request_id=str(uuid.uuid4()))
