"""Calling a model from a node: stream it, speak its text, count its usage, translate errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.tools import BaseTool

from lang_agent.agent.events import AnswerDelta, Filler
from lang_agent.agent.state import TurnContext
from lang_agent.errors import UpstreamError, upstream_errors
from lang_agent.llm.context import calling
from lang_agent.settings import Role

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


async def stream_reply(
    ctx: TurnContext,
    role: Role,
    messages: Sequence[BaseMessage],
    *,
    tools: Sequence[BaseTool] | None = None,
    speak: Callable[[str], AnswerDelta | Filler | None] | None = AnswerDelta,
    before_speaking: Callable[[], Awaitable[None]] | None = None,
) -> AIMessage:
    """Stream one model call; each text piece is spoken as `speak(text)` as it arrives
    (a `speak` that returns None holds the piece back)."""
    llm = ctx.deps.models.model(role, model=ctx.profile.models.get(role))
    runnable = llm.bind_tools(list(tools)) if tools else llm
    reply: AIMessageChunk | None = None
    spoken = False
    with calling(node=NODE_OF_ROLE[role]), upstream_errors():
        async for chunk in runnable.astream(list(messages)):
            reply = chunk if reply is None else reply + chunk
            piece = text_of(chunk.content)
            if piece and speak is not None:
                if not spoken and before_speaking is not None:
                    await before_speaking()
                spoken = True
                event = speak(piece)
                if event is not None:
                    ctx.say(event)
    if reply is None:
        raise UpstreamError("the model returned an empty stream")
    ctx.add_usage(model_name(ctx, role), reply.usage_metadata)
    finish = reply.response_metadata.get("finish_reason")
    if finish == "length" and role != "chatty":
        ctx.finish_reason = "length"
    return AIMessage(
        content=text_of(reply.content),
        tool_calls=reply.tool_calls,
        response_metadata={"model": model_name(ctx, role), "finish_reason": finish},
    )
