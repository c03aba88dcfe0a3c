"""DashScope Application API fields that ask for what lang-agent's answer cannot give: each is
refused by name, in `input` and in `parameters`.

Fields not listed here are honoured (see dashscope_api.DashInput and DashParameters) or ignored
by design, as the README's xiaozhi section lists. None of them is one xiaozhi's AliBL provider or
the dashscope SDK sends of its own accord: a refusal there would silence every speaker.
"""

from __future__ import annotations

from fastapi_server.refusals import SEARCH, TEXT, UNREPEATABLE, Refusals

# A Bailian app answers from its knowledge base; an answer from general knowledge instead would
# pass for one from the documents asked for.
_NO_KNOWLEDGE_BASE = "lang-agent has no knowledge base to retrieve from"

INPUT_REFUSALS = Refusals(
    why={
        "image_list": f"{TEXT}: the images would not be seen",
        "file_list": f"{TEXT}: the files would not be read",
        "doc_tag_codes": _NO_KNOWLEDGE_BASE,
    },
    where="input.",
)

PARAMETER_REFUSALS = Refusals(
    why={
        "rag_options": _NO_KNOWLEDGE_BASE,
        "seed": UNREPEATABLE,
        "enable_web_search": SEARCH,
    },
    where="parameters.",
)
