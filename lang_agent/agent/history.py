"""Client messages into memory: which are new, trimming to the context window, the memory cap."""

from __future__ import annotations

import json
from collections.abc import Sequence

from langchain_core.messages import (
    AIMessage,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    ToolMessage,
)
from langgraph.graph.message import REMOVE_ALL_MESSAGES

from lang_agent.agent.events import InputMessage
from lang_agent.errors import ContextTooLong, InvalidRequest
from lang_agent.llm.tokens import MESSAGE_OVERHEAD_TOKENS, estimate_tokens


def _texts(message: BaseMessage) -> list[str]:
    """What of a message reaches the model as text: its content and its tool calls."""
    content = message.content if isinstance(message.content, str) else str(message.content)
    texts = [content]
    if isinstance(message, AIMessage):  # a getattr that misses costs pydantic an exception
        for call in message.tool_calls:
            texts += [call["name"], json.dumps(call["args"])]
    return texts


def _tool_call(raw: dict) -> dict:
    function = raw.get("function") or {}
    arguments = function.get("arguments") or "{}"
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    except (json.JSONDecodeError, TypeError, ValueError):
        args = {}
    if not isinstance(args, dict):
        args = {}
    return {"name": function.get("name") or "", "args": args, "id": raw.get("id") or ""}


def to_langchain(message: InputMessage) -> AnyMessage:
    match message.role:
        case "user":
            return HumanMessage(message.content)
        case "assistant":
            return AIMessage(
                message.content, tool_calls=[_tool_call(call) for call in message.tool_calls]
            )
        case "tool":
            return ToolMessage(message.content, tool_call_id=message.tool_call_id or "")
        case "system":
            return SystemMessage(message.content)
    raise InvalidRequest(f"unsupported role {message.role!r}")


def client_instructions(messages: Sequence[InputMessage]) -> str:
    """The client's own system messages, used for this turn only and never stored."""
    return "\n\n".join(m.content for m in messages if m.role == "system" and m.content)


def client_dialogue(messages: Sequence[InputMessage]) -> list[AnyMessage]:
    """The client's messages as LangChain messages, system messages left out."""
    return [to_langchain(m) for m in messages if m.role != "system"]


def split_turn(
    dialogue: Sequence[AnyMessage], *, history: str, thread_has_memory: bool
) -> tuple[list[AnyMessage], list[AnyMessage]]:
    """The client's preamble, and the messages this turn adds to memory.

    With history "seed" the client sends its whole dialogue every turn (xiaozhi), and only its
    last user turn is new. What comes before that on a thread's first turn is its preamble:
    xiaozhi's few-shot examples, or a dialogue held elsewhere. The models see it on every turn
    of the thread, but it is not memory, as nobody said it here; on later turns memory has the
    rest already."""
    dialogue = list(dialogue)
    preamble: list[AnyMessage] = []
    if history == "seed":
        # The last user turn: its user message(s) and, on a thread new to us, a tool round
        # of the client's after them (on a thread we know, memory has its user message).
        end = len(dialogue)
        if not thread_has_memory:
            while end and not isinstance(dialogue[end - 1], HumanMessage):
                end -= 1
        start = end
        while start and isinstance(dialogue[start - 1], HumanMessage):
            start -= 1
        if not thread_has_memory:
            preamble = dialogue[:start]
        dialogue = dialogue[start:]
    if not any(isinstance(m, HumanMessage) for m in dialogue):
        raise InvalidRequest("the request has no new user message", param="messages")
    return preamble, dialogue


def remember(
    memory: Sequence[AnyMessage], turn: Sequence[AnyMessage], *, keep: int
) -> list[AnyMessage]:
    """The `messages` update that adds a turn to memory and keeps at most `keep` messages:
    the latest, starting on a user message. A turn is never cut; 0 keeps everything.

    Every turn reads and rewrites the whole memory, so a thread that only grew would make
    each of its turns slower and bigger than the last."""
    if not keep or len(memory) + len(turn) <= keep:
        return list(turn)
    room = max(0, keep - len(turn))
    kept = list(memory[len(memory) - room :]) if room else []
    while kept and not isinstance(kept[0], HumanMessage):
        kept.pop(0)
    return [RemoveMessage(id=REMOVE_ALL_MESSAGES), *kept, *turn]


def fit_window(
    messages: Sequence[AnyMessage], *, system: str, window: int, max_tokens: int
) -> list[BaseMessage]:
    """System prompt plus the newest history that fits: prompt_tokens + max_tokens ≤ window."""
    budget = window - max_tokens - MESSAGE_OVERHEAD_TOKENS - estimate_tokens(system)
    kept = _newest_within(messages, budget)
    while kept and not isinstance(kept[0], HumanMessage):
        kept.pop(0)
    if not kept:
        raise ContextTooLong("the latest message alone exceeds the model's context window")
    return [SystemMessage(system), *kept]


def _newest_within(messages: Sequence[AnyMessage], budget: int) -> list[AnyMessage]:
    """The newest messages whose tokens fit the budget. Counts are per message, so a suffix
    costs the sum of its messages': one pass, where LangChain's trim_messages searched
    prefixes (and read its arguments' signature on every call)."""
    texts = [_texts(message) for message in messages]
    # No text estimates to more tokens than it has characters: when the characters fit, so
    # does everything (a long-lived thread far inside a large window), and none is scanned.
    if sum(MESSAGE_OVERHEAD_TOKENS + sum(map(len, parts)) for parts in texts) <= budget:
        return list(messages)
    kept: list[AnyMessage] = []
    for message, parts in zip(reversed(messages), reversed(texts), strict=True):
        budget -= MESSAGE_OVERHEAD_TOKENS + sum(map(estimate_tokens, parts))
        if budget < 0:
            break
        kept.append(message)
    kept.reverse()
    return kept
