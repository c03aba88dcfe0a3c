"""`calls diff`: two calls compared field by field, and where their cacheable prefix ended."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner

from lang_agent.capture.detect import estimate_prompt_tokens
from lang_agent.capture.diff import diff_calls
from lang_agent.capture.diff_text import render_diff
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport
from lang_agent.cli import main
from lang_agent.llm.context import calling
from tests.capture_fixtures import capture_dsn, capture_pg

__all__ = ["capture_dsn", "capture_pg"]

START = datetime(2026, 1, 31, 8, 0, tzinfo=UTC)
PROMPT = "你是小智，一个住在智能音箱里的语音助手。现在是 2026-01-31 {time} 星期六。\n用口语回答。"
CALCULATOR = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate arithmetic.",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
HISTORY = [
    {"role": "user", "content": "你好"},
    {"role": "assistant", "content": "你好呀"},
    {"role": "user", "content": "几点了"},
]
CACHED = 32


def system(time: str = "08:00") -> dict[str, str]:
    return {"role": "system", "content": PROMPT.format(time=time)}


def body(messages: list[dict[str, Any]], **parameters: Any) -> dict[str, Any]:
    return {"model": "qwen-plus", "messages": messages, "tools": [CALCULATOR], **parameters}


def row(call_id: int, request_body: Any, **columns: Any) -> dict[str, Any]:
    """A stored call as `get_calls` returns it, `call_id` seconds after START."""
    return {
        "id": call_id,
        "thread_id": "t-diff",
        "node": "chat_model_call",
        "model": "qwen-plus",
        "created_at": START + timedelta(seconds=call_id),
        "request_body": request_body,
        "flags": {},
        **columns,
    }


def test_system_prompt_time_ends_the_prefix_where_the_minute_changed():
    before = row(1, body([system("08:00"), *HISTORY[:1]]))
    after = row(2, body([system("08:01"), *HISTORY]), cached_tokens=0, prompt_tokens=300)
    facts = diff_calls(before, after)
    messages, prefix = facts["messages"], facts["prefix_cache"]
    at = PROMPT.index("{time}") + len("08:0")
    assert messages["common_prefix"] == 0 and messages["only_after"] == 2
    first = messages["first_difference"]
    assert (
        first["index"] == 0 and first["role"] == "system" and list(first["differs"]) == ["content"]
    )
    assert first["differs"]["content"]["at"] == at
    assert first["differs"]["content"]["clock"] == {"before": "08:00", "after": "08:01"}
    assert prefix["ends_at"] == "message"
    assert f"the system message (#0) differs at character {at}" in prefix["reason"]
    assert "make it coarser ({current_date}" in prefix["reason"]
    # The tools and the system prompt up to the minute are shared; no message after it is.
    shared = {"messages": [{"role": "system", "content": PROMPT[: at - 4]}], "tools": [CALCULATOR]}
    assert 0 < estimate_prompt_tokens(shared) <= prefix["estimated_prefix_tokens"]
    assert prefix["estimated_prefix_tokens"] < prefix["estimated_prompt_tokens"]
    assert prefix["cached_tokens"] == 0 and prefix["reading"].startswith("a miss, although")
    text = render_diff(facts)
    assert '"08:00" → "08:01"' in text and "cached_tokens 0, prompt_tokens 300" in text
    assert "1 s apart" in text


def test_a_message_appended_keeps_the_whole_earlier_request_as_prefix():
    earlier = body([system(), *HISTORY])
    later = body([system(), *HISTORY, {"role": "assistant", "content": "八点"}, HISTORY[0]])
    facts = diff_calls(row(1, earlier), row(2, later, cached_tokens=64, prompt_tokens=90))
    assert facts["messages"] == {
        "before": 4,
        "after": 6,
        "common_prefix": 4,
        "first_difference": None,
        "only_before": 0,
        "only_after": 2,
    }
    prefix = facts["prefix_cache"]
    assert prefix["ends_at"] == "end" and "the usual next call in a thread" in prefix["reason"]
    assert prefix["estimated_prefix_tokens"] == estimate_prompt_tokens(earlier)
    assert prefix["reading"] == "a hit: 64 of 90 prompt tokens were served from the cache"
    assert facts["parameters"] == [] and "no change" in render_diff(facts)


def test_a_tool_added_or_changed_breaks_the_prefix_before_any_message():
    described = {"type": "function", "function": {**CALCULATOR["function"], "description": "Maths"}}
    facts = diff_calls(
        row(1, body([system(), *HISTORY])),
        row(2, body([system(), *HISTORY], tools=[described, WEATHER])),
    )
    tools = facts["tools"]
    assert tools["added"] == ["get_weather"] and tools["removed"] == []
    assert tools["changed"] == [{"name": "calculator", "parts": ["description"]}]
    assert facts["messages"]["common_prefix"] == 4
    prefix = facts["prefix_cache"]
    assert prefix["ends_at"] == "tools" and prefix["estimated_prefix_tokens"] == 0
    assert "added get_weather; changed calculator (description)" in prefix["reason"]
    assert prefix["reading"] == "the later call reported no cached_tokens: the provider did not say"


def test_parameters_added_removed_and_changed_are_shown_shortened():
    schema = {"type": "json_schema", "json_schema": {"name": "x" * 200}}
    facts = diff_calls(
        row(1, body(HISTORY, temperature=0.3, stream=True)),
        row(2, body(HISTORY, temperature=0.7, max_tokens=512, response_format=schema)),
    )
    changes = {c["key"]: c for c in facts["parameters"]}
    assert changes["temperature"] == {
        "key": "temperature",
        "change": "changed",
        "before": 0.3,
        "after": 0.7,
    }
    assert changes["max_tokens"]["change"] == "added" and "before" not in changes["max_tokens"]
    assert changes["stream"] == {"key": "stream", "change": "removed", "before": True}
    assert changes["response_format"]["after"] == schema  # whole in JSON, cut only as text
    text = render_diff(facts)
    assert "temperature      0.3 → 0.7" in text and "max_tokens       (absent) → 512" in text
    assert "stream           true → (absent)" in text and "x" * 100 not in text
    assert facts["prefix_cache"]["ends_at"] == "end"


def test_the_first_differing_message_names_what_differs():
    called = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    facts = diff_calls(
        row(1, body([system(), {**called, "tool_calls": [{"id": "c0"}]}])),
        row(2, body([system(), called, {"role": "tool", "tool_call_id": "c1", "content": "2"}])),
    )
    first = facts["messages"]["first_difference"]
    assert first["index"] == 1 and list(first["differs"]) == ["tool_calls"]
    assert first["differs"]["tool_calls"] == {"before": [{"id": "c0"}], "after": [{"id": "c1"}]}
    assert facts["messages"]["only_after"] == 1
    assert facts["prefix_cache"]["reason"] == "the assistant message (#1) differs in tool_calls"


def test_another_model_shares_no_cache():
    facts = diff_calls(row(1, body(HISTORY)), row(2, body(HISTORY, model="kimi-k2")))
    prefix = facts["prefix_cache"]
    assert prefix["ends_at"] == "model" and prefix["estimated_prefix_tokens"] == 0
    assert '"qwen-plus" → "kimi-k2"' in prefix["reason"]


def test_a_body_stored_cut_is_said_plainly_and_its_stored_text_compared():
    whole = json.dumps(body([system(), *HISTORY]), ensure_ascii=False)
    cut = row(1, whole[:80], flags={"request_truncated": len(whole)})
    other = row(2, whole[:70] + "X" + whole[71:90], flags={"request_truncated": len(whole)})
    facts = diff_calls(cut, other)
    assert "parameters" not in facts and "prefix_cache" not in facts
    assert facts["notes"][0] == (
        f"call 1: its {len(whole)}-byte request body was stored cut at CAPTURE_MAX_BODY_BYTES, "
        "so its parameters, tools and messages cannot be compared"
    )
    assert facts["stored_text"]["at"] == 70
    text = render_diff(facts)
    assert "note: call 2: its" in text and "identical for their first 70 characters" in text
    not_json = diff_calls(row(1, "<html>"), row(2, body(HISTORY)))
    assert not_json["notes"] == ["call 1: its request body is not JSON"]
    assert "stored_text" not in not_json


def test_a_key_in_a_stored_body_is_redacted_again():
    facts = diff_calls(row(1, body(HISTORY)), row(2, body(HISTORY, api_key="sk-diff-secret")))
    assert "sk-diff-secret" not in json.dumps(facts) + render_diff(facts)


# The CLI against rows captured through the transport, in a thread of their own.


def upstream(_request: httpx2.Request) -> httpx2.Response:
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": CACHED},
    }
    answer = {"role": "assistant", "content": "好的"}
    return httpx2.Response(
        200,
        json={
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
            "usage": usage,
        },
    )


async def seed(dsn: str, *, thread: str, lone_model: str) -> None:
    """Three chat calls in `thread` (one, the same plus an answer and a question, that again a
    minute later), each followed by a filler call, and one call in no thread."""
    recorder = Recorder(dsn=dsn)
    await recorder.start()
    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    requests = [
        body([system("08:00"), HISTORY[0]]),
        body([system("08:00"), *HISTORY]),
        body([system("08:01"), *HISTORY]),
    ]
    async with httpx2.AsyncClient(transport=transport) as http:
        for request in requests:
            with calling(thread_id=thread, node="chat_model_call"):
                await http.post("http://up/v1/chat/completions", json=request)
            # Another node's call between them: not the one a chat call is compared with.
            with calling(thread_id=thread, node="chatty"):
                await http.post("http://up/v1/chat/completions", json=body(HISTORY[:1]))
        await http.post("http://up/v1/chat/completions", json=body(HISTORY, model=lone_model))
    await recorder.close()


@pytest.fixture(scope="module")
def seeded(capture_dsn) -> dict[str, Any]:
    thread, lone_model = f"diff-{uuid.uuid4().hex[:8]}", f"lone-{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(capture_dsn, thread=thread, lone_model=lone_model))
    run = _runner(capture_dsn)
    listed = run("calls", "list", "--json", "--thread", thread, "-p", "node == 'chat_model_call'")
    lone = run("calls", "list", "--json", "-p", f"model == '{lone_model}'")
    return {
        "run": run,
        "name": thread,
        "thread": [r["id"] for r in reversed(json.loads(listed.output))],
        "lone": json.loads(lone.output)[0]["id"],
    }


def _runner(dsn: str):  # type: ignore[no-untyped-def]
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(main, list(args), env={"CONN_STR": dsn})

    return invoke


def test_cli_compares_a_call_with_the_one_before_it_in_its_thread(seeded):
    run, (first, second, third) = seeded["run"], seeded["thread"]
    result = run("calls", "diff", "--id", str(third))
    assert result.exit_code == 0, result.output
    assert f"before  call {second}" in result.output and f"after   call {third}" in result.output
    assert "the system message (#0) differs at character" in result.output
    assert '"08:00" → "08:01"' in result.output
    assert f"cached_tokens {CACHED}, prompt_tokens 50" in result.output
    appended = json.loads(run("calls", "diff", "--id", str(second), "--json").output)
    assert appended["before"]["id"] == first and appended["after"]["id"] == second
    assert appended["messages"]["common_prefix"] == 2 and appended["messages"]["only_after"] == 2
    assert appended["prefix_cache"]["ends_at"] == "end"
    chosen = json.loads(
        run("calls", "diff", "--id", str(first), "--id", str(third), "--json").output
    )
    assert (chosen["before"]["id"], chosen["after"]["id"]) == (first, third)
    in_thread = json.loads(run("calls", "list", "--conversation", str(third), "--json").output)
    assert len(in_thread) == 6 and {r["thread_id"] for r in in_thread} == {seeded["name"]}


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("first", "is the first call by chat_model_call in thread"),
        ("lone", "continues no earlier call (no call's messages begin its own)"),
        ("unknown", "no call with id 2000000000"),
        ("three", "give one --id"),
    ],
)
def test_cli_errors_are_one_line(seeded, which, message):
    first = str(seeded["thread"][0])
    args = {
        "first": ["--id", first],
        "lone": ["--id", str(seeded["lone"])],
        "unknown": ["--id", "2000000000"],
        "three": ["--id", first, "--id", first, "--id", first],
    }[which]
    result = seeded["run"]("calls", "diff", *args)
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert len(result.stderr.splitlines()) == 1 and message in result.stderr
