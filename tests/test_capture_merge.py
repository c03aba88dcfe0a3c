"""SSE framing and the chat.completion merge, also as force-stream through the transport."""

from __future__ import annotations

import json
import re
import uuid

import httpx2
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lang_agent.capture.merge import SseSplitter, event_data, merge_chunks, merge_sse
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport
from lang_agent.llm.context import calling
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.settings import CONFIGS
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg, eventually, rows_of_thread

__all__ = ["capture_db", "capture_dsn", "capture_pg"]


def chunk(delta: dict | None = None, *, finish: str | None = None, **extra) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "m", "created": 1}
    return {**base, "choices": choices, **extra}


def call(index: int, args: str, *, call_id: str = "", name: str | None = None) -> dict:
    """One streamed tool-call fragment: id and name on the first fragment only, as Qwen does."""
    function = {"arguments": args} if name is None else {"name": name, "arguments": args}
    fragment = {"index": index, "id": call_id, "function": function}
    return {"tool_calls": [fragment | ({"type": "function"} if name else {})]}


USAGE = {"prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42}
TOOL_STREAM = [
    chunk({"role": "assistant", "reasoning_content": "Let me "}),
    chunk({"reasoning_content": "think."}),
    chunk({"content": "Checking "}),
    chunk({"content": "now."}),
    chunk(call(0, '{"city":', call_id="call_a", name="get_weather")),
    chunk(call(1, "", call_id="call_b", name="get_time")),
    chunk(call(0, ' "上海"}')),
    chunk(call(1, "{}")),
    chunk({}, finish="tool_calls"),
    chunk(None, usage=USAGE | {"prompt_tokens_details": {"cached_tokens": 10}}),
]


def test_merge_tool_calls_by_index_reasoning_and_usage_from_empty_choices():
    result = merge_chunks(TOOL_STREAM)
    assert result["object"] == "chat.completion"
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think."
    assert message["content"] == "Checking now."
    assert [c["id"] for c in message["tool_calls"]] == ["call_a", "call_b"]
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "上海"}',
    }
    assert message["tool_calls"][1]["function"]["arguments"] == "{}"
    assert result["choices"][0]["finish_reason"] == "tool_calls"
    assert result["usage"]["prompt_tokens_details"]["cached_tokens"] == 10


def test_usage_inside_a_choice_and_calls_without_index_are_kept():
    finish = {"index": 0, "delta": {}, "finish_reason": "stop", "usage": {"completion_tokens": 1}}
    moonshot = [chunk({"content": "hi"}), {"id": "c", "choices": [finish]}]
    assert merge_chunks(moonshot)["usage"]["completion_tokens"] == 1
    no_index = [chunk({"tool_calls": [{"id": "x", "function": {"name": "a", "arguments": "{}"}}]})]
    assert merge_chunks(no_index)["choices"][0]["message"]["tool_calls"][0]["id"] == "x"


def test_unicode_line_separators_inside_an_event_do_not_split_it():
    # Providers send JSON with ensure_ascii off: U+2028, U+0085 or a form feed arrive raw.
    text = "a\u2028b\u0085c\x0cd"
    events = [chunk({"content": text}), chunk({"content": "!"}, finish="stop")]
    sse = "".join(f"data: {json.dumps(e, ensure_ascii=False)}\r\n\r\n" for e in events)
    merged = merge_sse(sse + "data: [DONE]\r\n\r\n")
    assert merged["choices"][0]["message"]["content"] == text + "!"


def test_sse_splitter_reports_event_ends_across_chunks():
    splitter = SseSplitter()
    assert splitter.feed(b"data: 1\r\n") == []
    events = splitter.feed(b"\r\ndata: 2\n\n: comment\n\ndata: 3")
    assert [raw for raw, _ in events] == [b"data: 1\r\n\r\n", b"data: 2\n\n", b": comment\n\n"]
    assert events[0][1] == 2  # the first event ended two bytes into this chunk
    assert splitter.tail() == b"data: 3"


# SSE lines: data, comments, other fields; any of the three line ends; text with U+2028.
_line = st.sampled_from(["data: ", "data:", ": ", "event: ", "id: "]).flatmap(
    lambda field: st.text(st.sampled_from('ab {}"\u2028你'), max_size=6).map(
        lambda value: field + value
    )
)
_end = st.sampled_from(["\n", "\r\n", "\r"])
_event = st.tuples(st.lists(st.tuples(_line, _end), min_size=1, max_size=3), _end).map(
    lambda parts: "".join(line + end for line, end in parts[0]) + parts[1]
)


@given(
    st.lists(_event, max_size=6),
    st.text(st.sampled_from("da:t \n"), max_size=5),
    st.lists(st.integers(0, 200), max_size=5),
)
@example(["data: a\rdata: b\n\n"], "", [])  # a lone \r ends a line too
@settings(max_examples=300)
def test_sse_splitter_and_event_data_follow_the_spec_however_chunked(events, tail, cuts):
    stream = ("".join(events) + tail).encode()
    cuts = sorted(min(cut, len(stream)) for cut in cuts)
    splitter = SseSplitter()
    found = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        found += [raw for raw, _ in splitter.feed(stream[start:end])]
    ends = [m.end() for m in re.finditer(rb"\r\n\r\n|\n\n|\r\r", stream)]
    assert found == [stream[a:b] for a, b in zip([0, *ends], ends, strict=False)]
    assert b"".join(found) + splitter.tail() == stream
    for raw in found:
        lines = re.split(r"\r\n|\r|\n", raw.decode())
        data_lines = [line[5:].removeprefix(" ") for line in lines if line.startswith("data:")]
        assert event_data(raw) == ("\n".join(data_lines) if data_lines else None)


def test_merge_sse_text_skips_comments_and_done():
    text = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in TOOL_STREAM)
    merged = merge_sse(": keep-alive\n\n" + text + "data: [DONE]\n\n")
    assert merged["choices"][0]["message"]["tool_calls"][1]["function"]["name"] == "get_time"


async def test_force_stream_sends_a_stream_and_returns_the_merged_completion(capture_db):
    seen: list[dict] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        seen.append(json.loads(request.content))
        body = "".join(f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in TOOL_STREAM)
        return httpx2.Response(
            200,
            headers={"content-type": "text/event-stream", "msh-request-id": "req-1"},
            content=(body + "data: [DONE]\n\n").encode(),
        )

    recorder = Recorder(dsn=capture_db.dsn)
    await recorder.start()
    transport = CapturingTransport(
        httpx2.MockTransport(upstream),
        recorder=recorder,
        catalog=ModelCatalog.load(CONFIGS / "models.json"),
        force_stream=True,
    )
    thread = f"t-{uuid.uuid4().hex[:8]}"
    async with httpx2.AsyncClient(transport=transport, base_url="http://up/v1") as client:
        with calling(thread_id=thread, node="tool"):
            response = await client.post(
                "/chat/completions",
                json={"model": "qwen-plus", "messages": [{"role": "user", "content": "天气"}]},
            )
    await recorder.close()
    assert seen[0]["stream"] is True and seen[0]["stream_options"] == {"include_usage": True}
    assert response.headers["content-type"] == "application/json"
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert len(completion["choices"][0]["message"]["tool_calls"]) == 2
    assert completion["usage"]["total_tokens"] == 42

    (row,) = await eventually(lambda: rows_of_thread(capture_db, thread))
    assert row["status"] == "ok" and row["node"] == "tool"
    assert row["flags"]["force_stream"] is True
    assert "stream" not in row["client_request_body"]
    assert row["request_body"]["stream"] is True
    assert row["response_sse"].endswith("data: [DONE]\n\n")
    assert row["cached_tokens"] == 10 and row["upstream_request_id"] == "req-1"
    assert row["cost"] is not None and row["cost"] > 0
