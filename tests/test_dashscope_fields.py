"""End to end, through the real dashscope SDK: which Application.call fields (`input` and
`parameters`) the DashScope front end honours, which it refuses by name, and which it ignores by
design (README, "xiaozhi")."""

from __future__ import annotations

import dashscope
import pytest
from dashscope import Application

from tests.conftest import TEST_KEY

MADE = "lang-agent's answer is made by several model calls (router, chat or tool model, filler)"
NO_KNOWLEDGE_BASE = "lang-agent has no knowledge base to retrieve from"
CHAT = "你好。再见。"


@pytest.fixture
def call(live_server):
    server = live_server(max_tokens=64)
    dashscope.base_http_api_url = f"{server.url}/api/"

    def call(text: str = CHAT, **fields):
        return Application.call(api_key=TEST_KEY, app_id="lang-agent", prompt=text, **fields)

    return call


# Each was accepted and silently not done: an image or a file answered as if never sent, an
# answer from general knowledge passing for one from the documents asked for.
@pytest.mark.parametrize(
    ("fields", "param", "why"),
    [
        ({"image_list": ["https://example.com/cat.png"]}, "input.image_list",
         "lang-agent takes and gives text only: the images would not be seen"),
        ({"file_list": ["https://example.com/report.pdf"]}, "input.file_list",
         "lang-agent takes and gives text only: the files would not be read"),
        ({"doc_tag_codes": ["manual"]}, "input.doc_tag_codes", NO_KNOWLEDGE_BASE),
        ({"rag_options": {"pipeline_ids": ["p-1"]}}, "parameters.rag_options", NO_KNOWLEDGE_BASE),
        ({"seed": 1234}, "parameters.seed", f"{MADE}: a repeatable answer is not offered"),
        ({"enable_web_search": True}, "parameters.enable_web_search",
         "lang-agent looks things up only with its own tools (MCP)"),
    ],
)  # fmt: skip
def test_a_field_asking_what_the_agent_cannot_give_is_refused_by_name(call, fields, param, why):
    refused = call(**fields)
    assert (refused.status_code, refused.code) == (400, "InvalidParameter")
    assert refused.message == f"{param}: {why}" and refused.request_id


def test_a_refusal_on_a_stream_is_one_400_item(call):
    items = list(call(stream=True, image_list=["https://example.com/cat.png"]))
    assert [(item.status_code, item.code) for item in items] == [(400, "InvalidParameter")]


# Model tuning left to each role's configuration, what only workflow or RAG apps and their
# traces use, a Bailian account's bookkeeping, and the refused fields' values that ask for
# nothing (the Java SDK sends has_thoughts and incremental_output false on every call): the
# answer is what it would be without them.
IGNORED = {
    "temperature": 0.2,
    "top_p": 0.5,
    "top_k": 5,
    "has_thoughts": True,
    "flow_stream_mode": "message_format",
    "doc_reference_type": "indexed",
    "biz_params": {"city": "杭州"},
    "workspace": "ws-1",
    "enable_thinking": True,
    "incremental_output": False,
    "doc_tag_codes": [],
    "rag_options": {},
    "enable_web_search": False,
}


def test_fields_ignored_by_design_leave_the_answer_as_it_is(call):
    plain = call()
    tuned = call(**IGNORED)
    assert tuned.status_code == 200
    assert (tuned.output.text, tuned.output.finish_reason) == (plain.output.text, "stop")
    assert tuned.output.thoughts is None and tuned.output.doc_references is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 2}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "3"}, "max_tokens"),
    ],
)
def test_a_value_of_the_wrong_type_or_range_is_a_400_naming_it(call, fields, param):
    refused = call(**fields)
    assert (refused.status_code, refused.code) == (400, "InvalidParameter")
    assert refused.message.startswith(f"parameters.{param}: ")


# Not in the Application API's documentation, but the SDK passes it on: it was ignored, and
# max_tokens=3 got the whole answer.
def test_max_tokens_cuts_the_answer(call):
    plain = call().output.text
    cut = call(max_tokens=3)
    assert cut.status_code == 200 and cut.output.finish_reason == "length"
    assert plain.startswith(cut.output.text) and len(cut.output.text) < len(plain)
    streamed = list(call(stream=True, max_tokens=3))
    assert (streamed[-1].output.text, streamed[-1].output.finish_reason) == (
        cut.output.text,
        "length",
    )
    whole = call(max_tokens=100_000)  # above MAX_TOKENS: the server's cap
    assert (whole.output.text, whole.output.finish_reason) == (plain, "stop")
