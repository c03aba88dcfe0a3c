"""The closed set of typed events a turn yields, and the request that starts one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# What a request does when another turn holds its thread: wait in line, be refused with
# ThreadBusy, or end that turn (and those waiting) and run next (barge-in).
BusyPolicy = Literal["wait", "reject", "preempt"]


@dataclass(frozen=True)
class ModelUsage:
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


@dataclass(frozen=True)
class Usage:
    """Token usage of a whole turn, one entry per model that was called."""

    models: tuple[ModelUsage, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return sum(m.input_tokens for m in self.models)

    @property
    def completion_tokens(self) -> int:
        return sum(m.output_tokens for m in self.models)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class RouteChosen:
    route: Literal["chat", "tool"]


@dataclass(frozen=True)
class Filler:
    """Speech that keeps the speaker talking while a tool runs; never stored in memory."""

    text: str


@dataclass(frozen=True)
class ToolStarted:
    call_id: str
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class ToolFinished:
    call_id: str
    name: str
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class AnswerDelta:
    text: str


@dataclass(frozen=True)
class Done:
    usage: Usage
    finish_reason: Literal["stop", "length"] = "stop"


@dataclass(frozen=True)
class Failed:
    """The turn ended in an error; memory is left as it was before the turn (a turn whose
    answer was whole is not ended, bar a memory write outliving its budget: TurnContext.settle).

    `usage` is what the models used before it. `fallback` is the request's fallback when the
    failure is to be told in words (TurnRequest.fallback), else None: the log records it as
    said, so a front end that gets it must say it.
    """

    code: str
    message: str
    usage: Usage = Usage()
    fallback: str | None = None


TurnEvent = RouteChosen | Filler | ToolStarted | ToolFinished | AnswerDelta | Done | Failed


@dataclass(frozen=True)
class InputMessage:
    """A message as a client sent it, already validated by the front end."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TurnRequest:
    """One user turn, whatever protocol it came in.

    `history` says how to read `messages` when `thread_id` names a thread:
    - "append": every message is new and is appended to the thread's memory (OpenAI clients).
    - "seed": `messages` is the client's whole dialogue (DashScope / xiaozhi). Only its last
      user turn is new. On a new thread what comes before it (xiaozhi's few-shot examples)
      becomes the thread's preamble: the models see it every turn, memory never holds it.
    Without `thread_id` the turn is stateless and `messages` is the whole context.
    `busy` is what it does on a busy thread; None: BUSY_THREAD.
    `max_tokens` is the client's cap on the answer (OpenAI's max_tokens): the chat and tool
    models' calls take it where it is below MAX_TOKENS.
    `fallback` is what a voice client says when the turn fails, so the speaker is not silent
    (DashScope streams: DASHSCOPE_FALLBACK_TEXT); None: a failure is only reported.
    """

    messages: tuple[InputMessage, ...]
    thread_id: str | None = None
    stream: bool = True
    history: Literal["append", "seed"] = "append"
    profile: str | None = None
    front_end: str = "openai"
    busy: BusyPolicy | None = None
    fallback: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None
