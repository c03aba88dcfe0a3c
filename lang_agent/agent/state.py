"""Graph state (what memory keeps) and the per-turn runtime context (what it does not)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.channels.ephemeral_value import EphemeralValue
from langgraph.graph.message import add_messages

from lang_agent.agent.events import AnswerDelta, Filler, ModelUsage, TurnEvent, TurnRequest, Usage
from lang_agent.llm.factory import ModelFactory
from lang_agent.prompts import Prompts
from lang_agent.settings import Role, Settings
from lang_agent.tools.registry import ToolRegistry

# A tool gets the turn's remaining budget minus this, so the model can still say it failed.
ANSWER_RESERVE_S = 5.0
MIN_TOOL_BUDGET_S = 1.0
# A settled turn's memory write may run this long past the moment it settled, whatever is left
# of TURN_TIMEOUT_S: a write that lands after the turn timed out was a turn logged unanswered.
SETTLED_WRITE_S = 10.0


class TurnState(TypedDict, total=False):
    # Memory: only the answering node writes it, in one step, so a failed turn adds nothing.
    messages: Annotated[list[AnyMessage], add_messages]
    # This turn's new messages, for the nodes of this turn only: an ephemeral channel is empty
    # once a step passes without a write, so the checkpoint saved at the end leaves it out.
    turn_input: Annotated[list[Any], EphemeralValue(list)]
    route: str
    # What the client sent ahead of the thread's first turn (history.split_turn): written by
    # that turn's answering node beside its memory, then only read.
    preamble: list[AnyMessage]


@dataclass(frozen=True)
class Profile:
    """A named pipeline variant (DashScope app_id): filler on/off and per-role models."""

    name: str = "default"
    filler: bool = True
    models: dict[str, str] = field(default_factory=dict)


@dataclass
class AgentDeps:
    """What every turn shares: built once in the app lifespan."""

    settings: Settings
    models: ModelFactory
    tools: ToolRegistry
    prompts: Prompts
    window: Callable[[str], int]
    clock: Callable[[], dict[str, str]]

    def prompt(self, name: str, **values: str) -> str:
        """A system prompt rendered for this call, with the clock's placeholders filled."""
        return self.prompts.render(name, **self.clock(), **values)


@dataclass
class LogEntry:
    role: str
    content: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    tool_name: str | None = None
    is_filler: bool = False
    model: str | None = None
    # The words said in place of an answer a failure cut (TurnRequest.fallback): not the model's.
    is_fallback: bool = False


@dataclass
class TurnContext:
    """Per-turn runtime context (LangGraph `context=`): deps, the request, and what the turn
    measures and logs on the way."""

    deps: AgentDeps
    request: TurnRequest
    profile: Profile
    turn_id: str
    emit: Callable[[TurnEvent], None] = lambda event: None
    # What settling does for the thread: a newer request on it waits for this turn instead
    # of ending it (ThreadLocks.settle).
    on_settle: Callable[[], None] = lambda: None
    budget: asyncio.Timeout | None = None  # TURN_TIMEOUT_S, while the graph runs
    settled: bool = False
    started: float = field(default_factory=time.perf_counter)
    first_text_at: float | None = None
    route: str | None = None
    usage: dict[str, ModelUsage] = field(default_factory=dict)
    log: list[LogEntry] = field(default_factory=list)
    finish_reason: str = "stop"
    routing: Any = None  # the router's Routing, from the turn's start until router_call
    speculation: Any = None  # a SpeculativeChat while the router decides
    filler: Any = None  # a FillerTask from the router's "tool" until tool_model_call takes it
    # The thread's preamble, or the one this turn seeds it with: the models see it first.
    preamble: list[AnyMessage] = field(default_factory=list)
    # When the turn took its thread (wall clock): the log orders a thread's turns by it, so
    # turns that queued for the thread, in any process, are logged in the order they ran.
    began_at: datetime | None = None
    # The answer's text as it went out, for the log of a turn that ends before its answer does.
    said: list[str] = field(default_factory=list)

    def settle(self) -> None:
        """Called by the answering node once its answer is whole, just before memory is
        written. LangGraph saves in a task of its own, which a cancel does not reach: the
        write lands all the same. So from here neither a newer request nor its client hanging
        up ends the turn, and its time budget leaves the write SETTLED_WRITE_S at least, so
        the log records what memory keeps."""
        self.settled = True
        self.on_settle()
        if self.budget is not None and not self.budget.expired():
            # Bounded all the same: a database that never answers still ends the turn.
            grace = asyncio.get_running_loop().time() + SETTLED_WRITE_S
            self.budget.reschedule(max(self.budget.when() or grace, grace))

    def tool_budget_s(self) -> float:
        """How long a tool may take and still leave time to speak its answer in this turn."""
        left = self.deps.settings.turn_timeout_s - (time.perf_counter() - self.started)
        return max(MIN_TOOL_BUDGET_S, left - ANSWER_RESERVE_S)

    def max_tokens(self, role: Role) -> int:
        """A call's completion budget: MAX_TOKENS, or the client's cap on the answer for the
        models that write it (not the router's route nor the filler's phrases)."""
        cap = self.deps.settings.max_tokens
        if role in ("chat", "tool") and self.request.max_tokens is not None:
            return min(cap, self.request.max_tokens)
        return cap

    def say(self, event: AnswerDelta | Filler) -> None:
        if self.first_text_at is None:
            self.first_text_at = time.perf_counter()
        if isinstance(event, AnswerDelta):
            self.said.append(event.text)
        self.emit(event)

    def add_usage(self, model: str, usage: dict[str, Any] | None) -> None:
        if not usage:
            return
        before = self.usage.get(model, ModelUsage(model))
        details = usage.get("input_token_details") or {}
        self.usage[model] = ModelUsage(
            model,
            before.input_tokens + int(usage.get("input_tokens") or 0),
            before.output_tokens + int(usage.get("output_tokens") or 0),
            before.cached_tokens + int(details.get("cache_read") or 0),
        )

    def total_usage(self) -> Usage:
        return Usage(tuple(self.usage.values()))
