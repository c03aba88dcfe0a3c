"""Provider rules checked before a call, and the kind of a 429; then both through the proxy."""

from __future__ import annotations

import openai
import pytest
from langchain_core.messages import HumanMessage

from lang_agent.capture.lint import lint, provider, rate_limit
from lang_agent.capture.proxy import running_proxy
from lang_agent.capture.query import CallFilter, get_calls
from lang_agent.llm.chat_stream import request_body
from lang_agent.llm.factory import ModelSpec
from lang_agent.settings import Settings
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg, capture_sim, eventually

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim"]

MOONSHOT = "https://api.moonshot.cn/v1/chat/completions"
DASHSCOPE = "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions"
ASK = [{"role": "user", "content": "开灯"}]


def tool(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


def rules(body: dict, url: str | None = None) -> list[str]:
    return [finding["rule"] for finding in lint(body, url=url)]


@pytest.mark.parametrize(
    ("url", "model", "expected"),
    [
        (MOONSHOT, "anything", "moonshot"),
        ("https://api.moonshot.ai/v1", None, "moonshot"),
        (DASHSCOPE, "deepseek-v3", "qwen"),
        ("http://127.0.0.1:9/v1", "kimi-k2.5", "moonshot"),
        ("http://gateway/v1", "qwen-plus", "qwen"),
        ("http://gateway/v1", "gpt-4o", None),
        ("http://127.0.0.1:11434/v1", "qwq:32b", None),  # a local server's name:tag
        (None, None, None),
    ],
)
def test_the_provider_is_the_host_or_else_the_model(url, model, expected):
    assert provider(url, model) == expected


def test_tool_names_follow_each_provider_s_pattern():
    body = {"model": "m", "messages": ASK, "tools": [tool("light.on"), tool("1st"), tool("ok_1")]}
    (moonshot,) = lint(body, url=MOONSHOT)
    assert moonshot["rule"] == "tool_name" and "'light.on', '1st'" in moonshot["message"]
    (qwen,) = lint(body, url=DASHSCOPE)  # Qwen takes a leading digit
    assert "'light.on'" in qwen["message"] and "'1st'" not in qwen["message"]
    assert rules({**body, "tools": [tool("x" * 65)]}, MOONSHOT) == ["tool_name"]
    assert rules({"model": "m", "messages": ASK, "tools": [tool("ok")]}, MOONSHOT) == []


def test_moonshot_takes_128_functions_at_most():
    body = {"model": "kimi-k2-0905-preview", "messages": ASK}
    assert rules({**body, "tools": [tool(f"t{i}") for i in range(128)]}, MOONSHOT) == []
    assert rules({**body, "tools": [tool(f"t{i}") for i in range(129)]}, MOONSHOT) == [
        "too_many_tools"
    ]


def test_partial_mode_with_json_object_is_refused():
    lead = {"role": "assistant", "content": "{", "partial": True}
    body = {"model": "moonshot-v1-8k", "messages": [*ASK, lead]}
    assert rules(body, MOONSHOT) == []
    assert rules({**body, "response_format": {"type": "json_object"}}, MOONSHOT) == ["partial_json"]


def test_kimi_k2_5_takes_only_its_default_parameters():
    body = {"model": "kimi-k2.5", "messages": ASK, "temperature": 1.0, "top_p": 0.95, "n": 1}
    assert rules(body) == []
    (finding,) = lint({**body, "temperature": 0.3, "presence_penalty": 0.5}, url=None)
    assert finding["rule"] == "fixed_parameters"
    assert finding["message"] == "kimi-k2.5 accepts only temperature=1.0, presence_penalty=0"
    assert rules({**body, "model": "Kimi-K2.5", "temperature": 0.3}) == ["fixed_parameters"]
    off = {**body, "thinking": {"type": "disabled"}}
    assert rules(off) == ["fixed_parameters"]  # thinking off: 0.6
    assert rules({**off, "temperature": 0.6}) == []


def test_thinking_models_need_reasoning_content_back_and_tool_choice_auto():
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    loop = [*ASK, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": "ok"}]  # fmt: skip
    body = {"model": "kimi-k2-thinking", "messages": loop, "tool_choice": "required"}
    assert rules(body) == ["thinking_tool_choice", "reasoning_content_missing"]
    loop[1]["reasoning_content"] = "我先查一下"
    assert rules({**body, "tool_choice": "auto"}) == []
    # kimi-k2.5 thinks unless told not to
    assert rules({"model": "kimi-k2.5", "messages": loop, "tool_choice": "none"}) == []
    unthinking = {"model": "kimi-k2.5", "messages": ASK, "tool_choice": {"type": "function"}}
    assert rules({**unthinking, "thinking": {"type": "disabled"}, "temperature": 0.6}) == []


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"model": "qwen-plus", "enable_thinking": True}, ["thinking_needs_stream"]),
        ({"model": "qwen-plus", "enable_thinking": True, "stream": True}, []),
        ({"model": "qwen-plus"}, []),  # commercial Qwen3 thinks only when asked
        ({"model": "qwen3-32b"}, ["thinking_needs_stream"]),
        ({"model": "qwen3-235b-a22b"}, ["thinking_needs_stream"]),
        ({"model": "qwen3-32b", "enable_thinking": False}, []),
        ({"model": "qwen3.5-plus"}, ["thinking_needs_stream"]),
        ({"model": "qwq-plus"}, ["stream_only"]),
        ({"model": "qwen-omni-turbo", "stream": True}, []),
        ({"model": "qwen3-omni-flash"}, ["stream_only"]),
        (
            {"model": "qwen3-235b-a22b-thinking-2507", "enable_thinking": False},
            ["thinking_needs_stream"],
        ),  # thinks whatever it is told
        ({"model": "QwQ-Plus"}, ["stream_only"]),
    ],
)
def test_qwen_calls_that_must_stream(body, expected):
    assert rules({**body, "messages": ASK}, DASHSCOPE) == expected


def test_unknown_providers_and_odd_bodies_give_nothing():
    assert rules({"model": "gpt-4o", "messages": ASK, "tools": [tool("a.b")]}) == []
    odd = {"model": "kimi-k2.5", "messages": "x", "tools": "y", "thinking": "z", "n": None}
    assert rules(odd) == []


@pytest.mark.parametrize(
    ("body", "headers", "expected"),
    [
        (
            {"error": {"type": "rate_limit_reached_error", "message": "max RPM: 3, please try "
                       "again after 20 seconds"}},
            {},
            {"kind": "rate_limit_reached_error", "retryable": True, "retry_after_s": 20.0},
        ),
        (
            {"error": {"type": "exceeded_current_quota_error", "message": "suspended"}},
            {},
            {"kind": "exceeded_current_quota_error", "retryable": False, "retry_after_s": None},
        ),
        (
            {"error": {"code": "Throttling.RateQuota", "message": "Requests rate limit exceeded"}},
            {"retry-after": "2"},
            {"kind": "Throttling.RateQuota", "retryable": True, "retry_after_s": 2.0},
        ),
        (
            {"error": {"type": "insufficient_quota", "code": "insufficient_quota"}},
            {},
            {"kind": "insufficient_quota", "retryable": False, "retry_after_s": None},
        ),
        ({"code": "Throttling", "message": "flat"}, {}, {"kind": "Throttling", "retryable": True,
                                                         "retry_after_s": None}),
        ("not json", {}, {"kind": "unknown", "retryable": True, "retry_after_s": None}),
        ("x", {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"},
         {"kind": "unknown", "retryable": True, "retry_after_s": 0.0}),  # a date in the past
        ("x", {"retry-after": "soon"}, {"kind": "unknown", "retryable": True,
                                        "retry_after_s": None}),
    ],
)  # fmt: skip
def test_a_429_says_its_kind_and_how_long_to_wait(body, headers, expected):
    assert rate_limit(429, body, headers) == expected
    assert rate_limit(500, body, headers) is None


async def test_findings_and_the_429_are_stored_with_calls_through_the_proxy(
    capture_sim, capture_dsn, capture_db
):
    settings = Settings(_env_file=None, conn_str=capture_dsn, proxy_upstream=capture_sim.base_url)
    async with running_proxy(settings, dsn=capture_dsn, port=0) as running:
        client = openai.AsyncOpenAI(base_url=running.base_url, api_key="k", max_retries=0)
        answer = await client.chat.completions.create(
            model="kimi-k2.5",
            messages=[{"role": "user", "content": "lint-probe 开灯"}],
            tools=[tool("light.on")],
            temperature=0.3,
        )
        assert answer.choices  # advice only: the request went out as it was
        capture_sim.inject("429", role="chat")
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(
                model="qwen-plus", messages=[{"role": "user", "content": "lint-probe 429"}]
            )

    async def rows() -> list[dict] | None:
        predicate = "request_body.messages.0.content ~ 'lint-probe'"
        async with capture_db.connection() as conn:
            found = await get_calls(conn, CallFilter(predicates=(predicate,)), limit=5)
        done = [r for r in found if r["status"] != "pending"]
        return done if len(done) == 2 else None

    limited, linted = await eventually(rows)  # newest first
    assert [f["rule"] for f in linted["flags"]["lint"]] == ["tool_name", "fixed_parameters"]
    assert limited["flags"]["rate_limit"] == {
        "kind": "Throttling.RateQuota",
        "retryable": True,
        "retry_after_s": None,
    }


@pytest.mark.parametrize(
    ("provider_name", "model", "base_url"),
    [
        ("ali", "qwen3-32b", DASHSCOPE.removesuffix("/chat/completions")),
        ("ali", "qwen-plus", DASHSCOPE.removesuffix("/chat/completions")),
        ("moonshot", "kimi-k2.5", "https://api.moonshot.cn/v1"),
        ("moonshot", "moonshot-v1-8k", "https://api.moonshot.cn/v1"),
    ],
)
def test_the_agent_s_own_requests_break_no_rule(provider_name, model, base_url):
    """The router forces its tool choice, which a thinking model refuses: reasoning is off."""
    spec = ModelSpec("router", provider_name, model, base_url, None)
    route = tool("RouteDecision")["function"]
    for tools, choice in (([{"type": "function", "function": route}], "RouteDecision"), ([], None)):
        body = request_body(
            spec, [HumanMessage("开灯")], max_tokens=256, tools=tools, tool_choice=choice
        )
        assert lint(body, url=f"{base_url}/chat/completions") == []
        assert lint({**body, "stream": False}, url=f"{base_url}/chat/completions") == []
