"""The graph's nodes: router_call, chat_model_call and tool_model_call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, ToolMessage
from langchain_core.tools import BaseTool
from langgraph.runtime import Runtime
from pydantic import BaseModel, Field, ValidationError

from lang_agent.agent.calls import model_name, stream_reply, text_of
from lang_agent.agent.chatty import FillerTask
from lang_agent.agent.events import RouteChosen, ToolFinished, ToolStarted
from lang_agent.agent.history import client_instructions, fit_window, remember, split_turn
from lang_agent.agent.speculation import SpeculativeChat, cancel_call
from lang_agent.agent.state import LogEntry, TurnContext, TurnState

logger = logging.getLogger(__name__)


class RouteDecision(BaseModel):
    """Choose how the assistant handles the user's latest message."""

    route: Literal["chat", "tool"] = Field(
        description="'tool' if a listed tool is needed to act or look something up, else 'chat'."
    )


def _system(ctx: TurnContext, name: str, **values: str) -> str:
    prompt = ctx.deps.prompt(name, **values)
    extra = client_instructions(ctx.request.messages)
    return f"{prompt}\n\n{extra}" if extra else prompt


def _fit(ctx: TurnContext, role: Literal["chat", "tool"], messages: list[AnyMessage], system: str):
    window = ctx.deps.window(model_name(ctx, role))
    return fit_window(messages, system=system, window=window, max_tokens=ctx.max_tokens(role))


def _tool_catalogue(tools: list[BaseTool]) -> str:
    lines = [f"  - {t.name}: {(t.description or '').strip().splitlines()[0][:120]}" for t in tools]
    return "\n".join(lines) or "  (no tools are available right now)"


def router_view(messages: list[AnyMessage], keep: int) -> list[AnyMessage]:
    """The latest `keep` user and spoken assistant messages as plain text, starting on a user
    message: the router needs the gist, not tool-call plumbing. Walked from the end, so a
    thread at the memory cap costs what a short one does."""
    recent: list[AnyMessage] = []
    for message in reversed(messages):
        if len(recent) == keep:
            break
        if isinstance(message, HumanMessage):
            recent.append(HumanMessage(text_of(message.content)))
        elif isinstance(message, AIMessage) and (text := text_of(message.content)):
            recent.append(AIMessage(text))
    recent.reverse()
    while recent and not isinstance(recent[0], HumanMessage):
        recent.pop(0)
    return recent


def _client_entry(message: AnyMessage) -> LogEntry:
    """A message the client sent, as the log keeps it: whatever reaches memory is logged."""
    text = text_of(message.content)
    match message:
        case AIMessage(tool_calls=calls):
            return LogEntry("assistant", text, tool_calls=calls or None)
        case ToolMessage(tool_call_id=call_id, name=name):
            return LogEntry("tool", text, tool_call_id=call_id, tool_name=name)
    return LogEntry("user", text)


class Routing:
    """The router's call for one turn, started by the Agent as soon as the thread's memory is
    read, before LangGraph starts the graph: that start-up (about 2 ms of CPU a turn) then
    runs while the router thinks, instead of before its request leaves. With
    SPECULATIVE_CHAT the chat answer starts beside it. `router_call` takes the answer;
    `discard()` ends a call that no node took (a turn that failed or was cancelled first)."""

    def __init__(
        self,
        ctx: TurnContext,
        memory: list[AnyMessage],
        turn_input: list[Any],
        *,
        preamble: list[AnyMessage],
    ) -> None:
        settings = ctx.deps.settings
        seed, self.new = split_turn(
            turn_input, history=ctx.request.history, thread_has_memory=bool(memory)
        )
        ctx.preamble = preamble if memory else seed
        ctx.log.extend(_client_entry(m) for m in self.new)
        system = ctx.deps.prompt("route_prompt", tools=_tool_catalogue(ctx.deps.tools.tools()))
        view = _fit(ctx, "chat", router_view([*memory, *self.new], settings.router_history), system)
        # Both windows before either call starts: one that does not fit (InvalidRequest) must
        # not leave the other running with no one to take its answer.
        chat = None
        if settings.speculative_chat:
            chat = _fit(
                ctx, "chat", [*ctx.preamble, *memory, *self.new], _system(ctx, "chat_prompt")
            )
        # Structured output by function calling, the route forced as the one tool call.
        call = stream_reply(
            ctx, "router", view, tools=[RouteDecision], tool_choice=RouteDecision.__name__,
            speak=None,
        )  # fmt: skip
        self._task = asyncio.create_task(call, name=f"router-{ctx.turn_id}")
        if chat is not None:
            ctx.speculation = SpeculativeChat(ctx, chat)

    @property
    def answered(self) -> asyncio.Future[AIMessage]:
        """Done once the router's call has ended, answered or not."""
        return self._task

    async def answer(self) -> AIMessage:
        return await self._task

    async def discard(self) -> None:
        await cancel_call(self._task)


async def router_call(_state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    ctx = runtime.context
    routing, ctx.routing = ctx.routing, None  # this node owns it now
    answer = await routing.answer()
    decision = None
    if answer.tool_calls:
        with contextlib.suppress(ValidationError):
            decision = RouteDecision.model_validate(answer.tool_calls[0]["args"])
    if decision is not None:
        route = decision.route
    else:
        route = ctx.deps.settings.route_fallback
        logger.warning("turn %s: router answer unparseable, taking %s", ctx.turn_id, route)
    ctx.route = route
    if route == "tool":
        _start_filler(ctx, routing.new)  # now, not in tool_model_call: the graph's step costs ms
        if ctx.speculation is not None:
            ctx.speculation.drop()  # winds down on its own: the filler must not wait for it
            ctx.speculation = None
    ctx.emit(RouteChosen(route))
    return {"turn_input": routing.new, "route": route}


async def chat_model_call(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    ctx = runtime.context
    new = state["turn_input"]
    if ctx.speculation is not None:
        speculation, ctx.speculation = ctx.speculation, None  # this node owns it now
        answer = await speculation.answer()
    else:
        history = [*ctx.preamble, *(state.get("messages") or []), *new]
        answer = await stream_reply(
            ctx, "chat", _fit(ctx, "chat", history, _system(ctx, "chat_prompt"))
        )
    _take_answer(ctx, "chat", answer)
    return _remember(ctx, state, [*new, answer])


def _take_answer(ctx: TurnContext, role: Literal["chat", "tool"], answer: AnyMessage) -> None:
    """Log the answer. Its call's finish_reason is the turn's: a router's or a dropped
    speculation's call that ran out of tokens did not cut the answer."""
    ctx.log.append(LogEntry("assistant", text_of(answer.content), model=model_name(ctx, role)))
    ctx.finish_reason = answer.response_metadata.get("finish_reason") or "stop"


def _remember(ctx: TurnContext, state: TurnState, turn: list[AnyMessage]) -> dict[str, Any]:
    """The answering node's update: the turn into memory and, on a thread's first turn, the
    preamble it came with, in one step, so a failed turn writes neither. The answer is whole
    now, and the write that follows is not undone by a cancel: the turn settles first."""
    ctx.settle()
    memory = state.get("messages") or []
    update: dict[str, Any] = {
        "messages": remember(memory, turn, keep=ctx.deps.settings.memory_max_messages)
    }
    if ctx.preamble and not memory:
        update["preamble"] = ctx.preamble
    return update


def _result_text(output: Any) -> str:
    if isinstance(output, ToolMessage):
        return text_of(output.content)
    return output if isinstance(output, str) else text_of(output)


def _capped(ctx: TurnContext, content: str) -> str:
    """A tool's output cut to what the tool model can take beside the dialogue: one huge
    result would otherwise push the user's own message out of the window and fail the turn."""
    window = ctx.deps.window(model_name(ctx, "tool"))
    limit = min(ctx.deps.settings.tool_result_max_chars, window // 4)
    if len(content) <= limit:
        return content
    note = f"\n[cut: the tool returned {len(content)} characters; the first {limit} are above]"
    return content[:limit] + note


async def _run_tool(
    ctx: TurnContext, call: dict[str, Any], tools: dict[str, BaseTool]
) -> ToolMessage:
    name, args, call_id = call["name"], call.get("args") or {}, call.get("id") or ""
    ctx.emit(ToolStarted(call_id, name, args))
    tool = tools.get(name)
    error: str | None = None
    result = ""
    if tool is None:
        error = f"no tool named {name}"
    else:
        timeout = min(
            (tool.metadata or {}).get("timeout_s", ctx.deps.settings.tool_timeout_s),
            ctx.tool_budget_s(),
        )
        config = {
            "configurable": {
                "thread_id": ctx.request.thread_id,
                "turn_metadata": ctx.request.metadata,
            }
        }
        try:
            output = await asyncio.wait_for(
                tool.ainvoke(
                    {"type": "tool_call", "name": name, "args": args, "id": call_id}, config
                ),
                timeout,
            )
            result = _result_text(output)
            if getattr(output, "status", "success") == "error":
                error = result
        except TimeoutError:
            error = f"the tool did not answer within {timeout:g} s"
        except Exception as exc:  # a broken tool is reported to the model, never raised
            logger.exception("tool %s failed in turn %s", name, ctx.turn_id)
            error = f"the tool failed ({type(exc).__name__})"
    if error is None:
        result = _capped(ctx, result)
    else:
        error = _capped(ctx, error)
    content = f"Error: {error}" if error is not None else result
    ctx.emit(ToolFinished(call_id, name, result=None if error else result, error=error))
    ctx.log.append(LogEntry("tool", content, tool_call_id=call_id, tool_name=name))
    return ToolMessage(
        content, tool_call_id=call_id, name=name, status="error" if error else "success"
    )


def _start_filler(ctx: TurnContext, new: list[AnyMessage]) -> None:
    """On the tool route of a stream, the filler starts talking while the tool model works."""
    settings = ctx.deps.settings
    if ctx.request.stream and settings.filler and ctx.profile.filler:
        ctx.filler = FillerTask(ctx, user_text=text_of(new[-1].content) if new else "")
        ctx.filler.start()


async def tool_model_call(state: TurnState, runtime: Runtime[TurnContext]) -> dict[str, Any]:
    ctx = runtime.context
    settings = ctx.deps.settings
    new = state["turn_input"]
    memory = state.get("messages") or []
    tools = ctx.deps.tools.tools()
    by_name = {tool.name: tool for tool in tools}
    system = _system(ctx, "tool_prompt")
    filler, ctx.filler = ctx.filler, None  # this node finishes it from here on
    finish_filler = filler.finish if filler else None
    transcript: list[AnyMessage] = list(new)
    try:
        for step in range(settings.max_tool_steps + 1):
            offer = tools if step < settings.max_tool_steps else None
            messages = _fit(ctx, "tool", [*ctx.preamble, *memory, *transcript], system)
            reply = await stream_reply(
                ctx, "tool", messages, tools=offer, before_speaking=finish_filler
            )
            transcript.append(reply)
            if not reply.tool_calls:
                break
            ctx.log.append(
                LogEntry(
                    "assistant",
                    text_of(reply.content),
                    tool_calls=reply.tool_calls,
                    model=model_name(ctx, "tool"),
                )
            )
            results = await asyncio.gather(*(_run_tool(ctx, c, by_name) for c in reply.tool_calls))
            transcript.extend(results)
    finally:
        if filler is not None:
            await filler.finish()
    _take_answer(ctx, "tool", transcript[-1])
    return _remember(ctx, state, transcript)
