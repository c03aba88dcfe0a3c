"""OpenAI request fields that ask for what an agent's answer cannot give: each is refused by name.

Fields not listed here are honoured (see openai_api.ChatRequest) or ignored by design, as the
README's OpenAI section lists: model tuning (`temperature`, `top_p`, penalties…) is left to each
role's configuration, and the provider's bookkeeping (`user`, `store`, `service_tier`…) asks
nothing of the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lang_agent.errors import InvalidRequest

_MADE = "lang-agent's answer is made by several model calls (router, chat or tool model, filler)"
_TOOLS = "lang-agent uses its own tools (MCP) and hands no tool call back to the client"
_TEXT = "lang-agent takes and gives text only"

# field → why what it asks for cannot be given
REFUSED: dict[str, str] = {
    "n": "lang-agent gives one answer per turn, the one its memory keeps",
    "stop": f"{_MADE}: stop sequences are not applied",
    "seed": f"{_MADE}: a repeatable answer is not offered",
    "logit_bias": f"{_MADE}: token biases are not applied",
    "logprobs": f"{_MADE}: there are no log probabilities to give",
    "top_logprobs": f"{_MADE}: there are no log probabilities to give",
    # A client's own `tools` are taken and never called: under tool_choice "auto" a plain
    # answer is one a model may give. Requiring a call asks for what never comes.
    "tool_choice": _TOOLS,
    "function_call": _TOOLS,
    "web_search_options": "lang-agent looks things up only with its own tools (MCP)",
    "modalities": _TEXT,
    "audio": _TEXT,
    "moderation": "lang-agent does not moderate input or output",
}

# What asks for nothing (beyond what lang-agent does anyway): null and false always; then the
# field's values here, or else an empty string, list or object. An empty web_search_options
# asks for a search with OpenAI's defaults.
ASK_NOTHING: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "top_logprobs": (0,),
    "tool_choice": ("none", "auto"),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
    "web_search_options": (),
}


def _asks(name: str, value: Any) -> bool:
    if value is None or value is False:
        return False
    return value not in ASK_NOTHING.get(name, ("", [], {}))


def refuse_unhonoured(fields: Mapping[str, Any]) -> None:
    """InvalidRequest naming the first field, in REFUSED's order, that asks for what
    lang-agent cannot give."""
    for name, why in REFUSED.items():
        if name in fields and _asks(name, fields[name]):
            raise InvalidRequest(f"{name}: {why}", param=name)
