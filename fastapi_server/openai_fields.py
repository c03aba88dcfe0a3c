"""OpenAI request fields that ask for what an agent's answer cannot give: each is refused by name.

Fields not listed here are honoured (see openai_api.ChatRequest) or ignored by design, as the
README's OpenAI section lists: model tuning (`temperature`, `top_p`, penalties…) is left to each
role's configuration, and the provider's bookkeeping (`user`, `store`, `service_tier`…) asks
nothing of the answer.
"""

from __future__ import annotations

from fastapi_server.refusals import MADE, SEARCH, TEXT, UNREPEATABLE, Refusals

_TOOLS = "lang-agent uses its own tools (MCP) and hands no tool call back to the client"

REFUSALS = Refusals(
    why={
        "n": "lang-agent gives one answer per turn, the one its memory keeps",
        "stop": f"{MADE}: stop sequences are not applied",
        "seed": UNREPEATABLE,
        "logit_bias": f"{MADE}: token biases are not applied",
        "logprobs": f"{MADE}: there are no log probabilities to give",
        "top_logprobs": f"{MADE}: there are no log probabilities to give",
        # A client's own `tools` are taken and never called: under tool_choice "auto" a plain
        # answer is one a model may give. Requiring a call asks for what never comes.
        "tool_choice": _TOOLS,
        "function_call": _TOOLS,
        "web_search_options": SEARCH,
        "modalities": TEXT,
        "audio": TEXT,
        "moderation": "lang-agent does not moderate input or output",
    },
    # An empty web_search_options asks for a search with OpenAI's defaults.
    ask_nothing={
        "n": (1,),
        "top_logprobs": (0,),
        "tool_choice": ("none", "auto"),
        "function_call": ("none", "auto"),
        "modalities": (["text"],),
        "web_search_options": (),
    },
)
