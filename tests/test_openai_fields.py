"""End to end, through the real openai SDK: which chat.completions fields the OpenAI front end
honours, which it refuses by name, and which it ignores by design (README, "Talk to it")."""

from __future__ import annotations

import openai
import psycopg
import pytest

from tests.conftest import TEST_KEY
from tests.support import latency, wait_until

FUNCTION = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
MADE = "lang-agent's answer is made by several model calls (router, chat or tool model, filler)"
TOOLS = "lang-agent uses its own tools (MCP) and hands no tool call back to the client"


CHAT = "你好。再见。"
TOOL = "帮我算一下 3加5乘2 等于多少"
CAPS_SQL = """SELECT node, request_body->>'max_completion_tokens' AS cap FROM llm_calls
WHERE thread_id = %s AND status <> 'pending'"""


@pytest.fixture
def client(live_server) -> openai.OpenAI:
    server = live_server(max_tokens=64)
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)


def create(client: openai.OpenAI, text: str = CHAT, **fields):
    messages = [{"role": "user", "content": text}]
    return client.chat.completions.create(model="lang-agent", messages=messages, **fields)


# Each was accepted and silently not done: the answer ran past the stop sequence, came without
# log probabilities, never called the client's function, had no audio.
@pytest.mark.parametrize(
    ("fields", "param", "why"),
    [
        ({"n": 2}, "n", "lang-agent gives one answer per turn, the one its memory keeps"),
        ({"stop": ["。"]}, "stop", f"{MADE}: stop sequences are not applied"),
        ({"stop": "。"}, "stop", f"{MADE}: stop sequences are not applied"),
        ({"seed": 0}, "seed", f"{MADE}: a repeatable answer is not offered"),
        ({"logit_bias": {"100": -100}}, "logit_bias", f"{MADE}: token biases are not applied"),
        ({"logprobs": True, "top_logprobs": 2}, "logprobs",
         f"{MADE}: there are no log probabilities to give"),
        ({"top_logprobs": 2}, "top_logprobs", f"{MADE}: there are no log probabilities to give"),
        ({"tools": [FUNCTION], "tool_choice": "required"}, "tool_choice", TOOLS),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
         "tool_choice", TOOLS),
        ({"function_call": {"name": "get_weather"}}, "function_call", TOOLS),
        ({"web_search_options": {}}, "web_search_options",
         "lang-agent looks things up only with its own tools (MCP)"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}},
         "modalities", "lang-agent takes and gives text only"),
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio",
         "lang-agent takes and gives text only"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation",
         "lang-agent does not moderate input or output"),
    ],
)  # fmt: skip
def test_a_field_asking_what_the_agent_cannot_give_is_refused_by_name(client, fields, param, why):
    with pytest.raises(openai.BadRequestError) as refused:
        create(client, **fields)
    error = refused.value.body
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    assert error["param"] == param
    assert error["message"] == f"{param}: {why}"


# Bookkeeping, model tuning left to each role's configuration, a speed-up, and the refused
# fields' values that ask for nothing: the answer is what it would be without them.
IGNORED = {
    "user": "u-1",
    "safety_identifier": "s-1",
    "prompt_cache_key": "k-1",
    "prompt_cache_retention": "24h",
    "service_tier": "flex",
    "store": True,
    "metadata": {"app": "test"},
    "temperature": 0.2,
    "top_p": 0.5,
    "presence_penalty": 1.5,
    "frequency_penalty": -1,
    "reasoning_effort": "high",
    "verbosity": "low",
    "prediction": {"type": "content", "content": "你好"},
    "parallel_tool_calls": False,
    "n": 1,
    "stop": [],
    "logprobs": False,
    "top_logprobs": 0,
    "logit_bias": {},
    "tools": [FUNCTION],  # never called: under "auto" a plain answer is one a model may give
    "functions": [FUNCTION["function"]],
    "tool_choice": "auto",
    "modalities": ["text"],
    "response_format": {"type": "text"},
}


def test_fields_ignored_by_design_leave_the_answer_as_it_is(client):
    plain = create(client).choices[0]
    tuned = create(client, **IGNORED).choices[0]
    assert tuned.message.content == plain.message.content
    assert tuned.finish_reason == "stop" and tuned.logprobs is None


# It was checked and ignored: max_tokens=3 got the whole answer, finish_reason "stop".
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_the_answer(client, field):
    plain = create(client).choices[0].message.content
    cut = create(client, **{field: 3}).choices[0]
    assert cut.finish_reason == "length"
    assert plain.startswith(cut.message.content) and len(cut.message.content) < len(plain)
    whole = create(client, **{field: 100_000}).choices[0]  # above MAX_TOKENS: the server's cap
    assert (whole.message.content, whole.finish_reason) == (plain, "stop")


def test_max_tokens_caps_the_answering_calls_not_the_route_nor_the_filler(
    client, simulator, pg_dsn, thread_id
):
    with latency(simulator, "tool", ttft_ms=400):  # the filler speaks while the tool model thinks
        stream = create(client, TOOL, stream=True, max_tokens=3,
                        extra_body={"events": True, "thread_id": thread_id})  # fmt: skip
        chunks = list(stream)
    kinds = [(chunk.model_extra or {}).get("x_lang_agent", {}).get("kind") for chunk in chunks]
    assert "filler" in kinds and "tool_finished" in kinds
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"

    def caps():
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(CAPS_SQL, (thread_id,)).fetchall()
        found: dict[str, set[str]] = {}
        for node, cap in rows:
            found.setdefault(node, set()).add(cap)
        return found if {"router_call", "tool_model_call", "chatty"} <= found.keys() else None

    found = wait_until(caps)
    assert found["router_call"] == found["chatty"] == {"64"}
    assert found["tool_model_call"] == found.get("chat_model_call", {"3"}) == {"3"}


def test_an_answer_that_fits_the_cap_is_not_cut_by_the_speculation_it_outran(client, simulator):
    # The chat answer started beside the router runs out of tokens, and the tool route is taken:
    # the turn said "length" for a tool answer that came whole.
    whole = create(client, TOOL).choices[0].message.content
    with latency(simulator, "router", ttft_ms=300):
        answer = create(client, TOOL, max_tokens=len(whole)).choices[0]  # a token is ≥ 1 char
    assert (answer.message.content, answer.finish_reason) == (whole, "stop")
