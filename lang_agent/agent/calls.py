"""Calling a model from a node: stream it, speak its text, count its usage, translate errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx2
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from lang_agent.agent.events import AnswerDelta, Filler
from lang_agent.agent.state import TurnContext
from lang_agent.errors import UpstreamError, UpstreamStatus, UpstreamTimeout, upstream_errors
from lang_agent.llm.chat_stream import Reply, request_body, stream_chat
from lang_agent.llm.context import calling
from lang_agent.settings import Role

logger = logging.getLogger(__name__)
# Statuses after which the fallback model (FALLBACK_MODEL) answers instead.
FALLBACK_STATUSES = frozenset({401, 403, 404, 408, 409, 429, 500, 502, 503, 504})
# A tool's OpenAI schema, built once per tool object (the conversion is slow).
_SCHEMAS: dict[int, tuple[Any, dict[str, Any]]] = {}

NODE_OF_ROLE: dict[Role, str] = {
    "router": "router_call",
    "chat": "chat_model_call",
    "tool": "tool_model_call",
    "chatty": "chatty",
}


def model_name(ctx: TurnContext, role: Role) -> str:
    return ctx.deps.models.spec(role, model=ctx.profile.models.get(role)).model


def text_of(content: Any) -> str:
    """Message content as plain text (content may be a list of blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
    return "".join(parts)


def tool_schema(tool: BaseTool | type | dict[str, Any]) -> dict[str, Any]:
    """The OpenAI `tools` entry of a LangChain tool or a pydantic schema, cached."""
    if isinstance(tool, dict):
        return tool
    cached = _SCHEMAS.get(id(tool))
    if cached is None or cached[0] is not tool:
        cached = _SCHEMAS[id(tool)] = (tool, convert_to_openai_tool(tool))
    return cached[1]


def _falls_back(exc: UpstreamError) -> bool:
    if isinstance(exc, UpstreamStatus):
        return exc.status in FALLBACK_STATUSES
    return isinstance(exc, UpstreamTimeout) or isinstance(exc.__cause__, httpx2.TransportError)


async def stream_reply(
    ctx: TurnContext,
    role: Role,
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[BaseTool | type | dict[str, Any]] | None = None,
    tool_choice: str | None = None,
    speak: Callable[[str], AnswerDelta | Filler | None] | None = AnswerDelta,
    before_speaking: Callable[[], Awaitable[None]] | None = None,
) -> AIMessage:
    """Stream one model call; each text piece is spoken as `speak(text)` as it arrives
    (a `speak` that returns None holds the piece back). With FALLBACK_MODEL set, a call that
    fails before its first piece is answered by the fallback model instead."""
    models, settings = ctx.deps.models, ctx.deps.settings
    max_tokens = ctx.max_tokens(role)
    spec = models.spec(role, model=ctx.profile.models.get(role))
    candidates = [spec]
    fallback = models.fallback_spec(role)
    if fallback is not None and fallback != spec:
        candidates.append(fallback)
    schemas = [tool_schema(t) for t in tools] if tools else None
    for attempt, candidate in enumerate(candidates):
        reply = Reply()
        body = request_body(
            candidate, messages, max_tokens=max_tokens, tools=schemas,
            tool_choice=tool_choice,
        )  # fmt: skip
        spoken = False
        try:
            pieces = stream_chat(
                models.transport, candidate, body, reply,
                timeouts=models.timeouts, retries=settings.llm_retries,
            )  # fmt: skip
            # aclosing: a body that raises (a dropped speculation) or is cancelled must close
            # the stream now, not whenever the abandoned generator is collected.
            with calling(node=NODE_OF_ROLE[role]), upstream_errors():
                async with contextlib.aclosing(pieces):
                    async for piece in pieces:
                        if speak is None:
                            continue
                        if not spoken and before_speaking is not None:
                            await before_speaking()
                        spoken = True
                        event = speak(piece)
                        if event is not None:
                            ctx.say(event)
        except UpstreamError as exc:
            last = attempt == len(candidates) - 1
            if last or spoken or reply.text or reply.calls or not _falls_back(exc):
                raise
            logger.warning("role %s: %s failed (%s), falling back", role, candidate, exc.code)
            continue
        break
    if not (reply.text or reply.calls or reply.finish_reason or reply.usage):
        raise UpstreamError("the model returned an empty stream")
    ctx.add_usage(candidate.model, reply.message(model=candidate.model).usage_metadata)
    return reply.message(model=candidate.model)
