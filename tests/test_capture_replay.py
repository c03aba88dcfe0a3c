"""`calls replay`: each recorded header once, a Date always, and faults as clients meet them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import httpx2
import openai
import pytest

from lang_agent.capture.faults import Fault
from lang_agent.capture.replay import ReplayCase, ReplayServer
from lang_agent.capture.stream import CANCELLED, CLIENT_CLOSED, CLIENT_LEFT, NO_DONE

RECORDED_DATE = "Mon, 01 Jan 2024 00:00:00 GMT"


async def answer(case: ReplayCase) -> httpx2.Response:
    server = ReplayServer(case)
    url = await server.start()
    try:
        async with httpx2.AsyncClient() as http:
            return await http.post(f"{url}/chat/completions", json={"model": "m"})
    finally:
        await server.stop()


async def test_recorded_date_and_server_are_sent_once():
    headers = {"date": RECORDED_DATE, "server": "upstream/1", "content-type": "application/json"}
    response = await answer(ReplayCase(status_code=200, headers=headers, body=b"{}"))
    assert response.status_code == 200 and response.json() == {}
    assert response.headers.get_list("date") == [RECORDED_DATE]
    assert response.headers.get_list("server") == ["upstream/1"]


async def test_a_recording_without_headers_still_gets_a_date():
    response = await answer(ReplayCase(status_code=None, error="ConnectError: refused"))
    assert response.status_code == 502
    (date,) = response.headers.get_list("date")
    assert parsedate_to_datetime(date).tzinfo is not None
    assert "server" not in response.headers


# -- faults -----------------------------------------------------------------------------------

PIECES = ("一", "二", "三", "四")


def chunk(delta: dict, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [choice],
    }
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def completion(completion_id: str, message: dict, finish: str) -> dict:
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": 0,
        "model": "m",
        "choices": [choice],
    }


def streamed(url: str | None = "https://api.openai.com/v1/chat/completions") -> ReplayCase:
    """A recorded stream: the role, four pieces, the finish and [DONE], 10 ms apart."""
    events = [
        chunk({"role": "assistant", "content": ""}),
        *(chunk({"content": p}) for p in PIECES),
        chunk({}, finish="stop"),
        b"data: [DONE]\n\n",
    ]
    merged = completion("chatcmpl-1", {"role": "assistant", "content": "".join(PIECES)}, "stop")
    headers = {"content-type": "text/event-stream"}
    timed = [(10.0 * i, event) for i, event in enumerate(events)]
    return ReplayCase(status_code=200, headers=headers, events=timed, merged=merged, url=url)


@contextlib.asynccontextmanager
async def replaying(case: ReplayCase, **options) -> AsyncIterator[tuple[ReplayServer, str]]:
    server = ReplayServer(case, **options)
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


def client(url: str, **options) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="none", **{"max_retries": 0, **options})


async def ask(url: str, *, stream: bool, **options) -> str:
    """One chat call through the openai SDK; the text it got."""
    sdk = client(url, **options)
    messages = [{"role": "user", "content": "x"}]
    if not stream:
        answer = await sdk.chat.completions.create(model="m", messages=messages)
        return answer.choices[0].message.content or ""
    got: list[str] = []
    try:
        response = await sdk.chat.completions.create(model="m", messages=messages, stream=True)
        async for part in response:
            got.append(part.choices[0].delta.content or "" if part.choices else "")
    except BaseException as exc:
        exc.add_note(f"text so far: {''.join(got)!r}")
        raise
    return "".join(got)


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("cut:3", Fault("cut", 3)),
        (" cut:0", Fault("cut", 0)),
        ("no-done", Fault("no-done")),
        ("stall:1.5", Fault("stall", 1.5)),
        ("429", Fault("429")),
        ("500", Fault("500")),
    ],
)
def test_faults_parse_and_print_as_written(text, fault):
    assert Fault.parse(text) == fault and str(fault) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cut",
        "cut:",
        "cut:-1",
        "cut:2.5",
        "stall:0",
        "stall:nan",
        "stall:inf",
        "no-done:1",
        "404",
        "reset",
    ],
)
def test_an_unknown_fault_names_the_forms(text):
    with pytest.raises(ValueError, match=r"one of cut:N, no-done, stall:SECONDS, 429 or 500"):
        Fault.parse(text)


def test_speed_must_be_a_finite_number_above_zero():
    for speed in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="speed must be a finite number above 0"):
            ReplayServer(streamed(), speed=speed)


async def test_a_cut_stream_drops_the_connection_after_n_events():
    async with replaying(streamed(), fault=Fault("cut", 3)) as (server, url):
        with pytest.raises(openai.APIConnectionError) as caught:
            await ask(url, stream=True)
        # the role event and two pieces came; then the body ended without its last chunk
        assert "text so far: '一二'" in caught.value.__notes__[0]
        assert not isinstance(caught.value, openai.APITimeoutError)
        assert not isinstance(caught.value, openai.APITimeoutError)


async def test_a_cut_body_ends_short_of_its_length():
    async with replaying(streamed(), fault=Fault("cut", 20)) as (_, url):
        with pytest.raises(openai.APIConnectionError):
            await ask(url, stream=False)


async def test_no_done_ends_the_stream_cleanly_without_it():
    async with replaying(streamed(), fault=Fault("no-done")) as (_, url):
        async with httpx2.AsyncClient() as http:
            response = await http.post(f"{url}/chat/completions", json={"stream": True})
        assert response.status_code == 200 and "[DONE]" not in response.text
        assert response.text.count("data: ") == 6  # every other event
        assert await ask(url, stream=True) == "一二三四"


async def test_a_stream_its_caller_left_or_that_ended_without_done_replays_to_its_end():
    """Only a body the upstream broke off breaks off on replay: a caller that stopped reading
    (a hang-up, a discarded call) or an upstream that ended the body cleanly did not break it."""
    sse = b"".join(event for _, event in streamed().events[:3]).decode()
    row = {"status": "incomplete", "status_code": 200, "response_sse": sse}
    for error in (CLIENT_CLOSED, CLIENT_LEFT, CANCELLED, NO_DONE):
        async with replaying(ReplayCase.from_row(row | {"error": error})) as (_, url):
            assert await ask(url, stream=True) == "一二", error
    broken = ReplayCase.from_row(row | {"error": "ReadError: connection reset"})
    async with replaying(broken) as (_, url):
        with pytest.raises(openai.APIConnectionError):
            await ask(url, stream=True)


async def test_a_stall_holds_the_stream_after_its_first_event_then_goes_on():
    async with replaying(streamed(), fault=Fault("stall", 0.5)) as (_, url):
        async with httpx2.AsyncClient() as http:
            async with http.stream("POST", f"{url}/chat/completions", json={"stream": True}) as r:
                arrived = []
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        arrived.append(time.monotonic())
        assert len(arrived) == 7 and arrived[1] - arrived[0] >= 0.5
        with pytest.raises(openai.APITimeoutError):  # a body stalls before it starts
            await ask(url, stream=False, timeout=0.2)


EXPECTED_ERRORS = [
    (
        "https://api.moonshot.cn/v1/chat/completions",
        429,
        {"type": "rate_limit_reached_error"},
    ),
    (
        "https://dashscope.aliyuncs.com/compatible-mode/v1/chat/completions",
        429,
        {"code": "Throttling.RateQuota"},
    ),
    ("https://api.openai.com/v1/chat/completions", 429, {"code": "rate_limit_exceeded"}),
    ("http://127.0.0.1:9/v1/chat/completions", 500, {"type": "server_error", "code": None}),
    ("https://api.moonshot.cn/v1/chat/completions", 500, {"type": "server_error"}),
]


@pytest.mark.parametrize(("url", "status", "fields"), EXPECTED_ERRORS)
async def test_errors_take_the_recording_provider_s_shape(url, status, fields):
    async with replaying(streamed(url), fault=Fault(str(status))) as (_, base):
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(base, stream=True)
    error = caught.value
    assert error.status_code == status and fields.items() <= error.body.items()
    assert "message" in error.body and ("code" in error.body) != ("moonshot" in url)


async def test_the_native_dashscope_api_gets_its_flat_error():
    url = "https://dashscope.aliyuncs.com/api/v1/services/aigc/text-generation/generation"
    async with replaying(streamed(url), fault=Fault("429")) as (_, base):
        async with httpx2.AsyncClient() as http:
            response = await http.post(f"{base}/x", json={})
    body = response.json()
    assert response.status_code == 429 and body["code"] == "Throttling.RateQuota"
    assert body["request_id"] and "error" not in body


async def test_a_fault_count_lets_the_client_s_retry_get_the_recording():
    async with replaying(streamed(), fault=Fault("429"), fault_count=1) as (server, url):
        assert await ask(url, stream=True, max_retries=1) == "一二三四"
        assert server.served == 2
        assert await ask(url, stream=False) == "一二三四"  # the count is spent


async def test_a_malformed_request_gets_a_400_not_a_dropped_connection():
    async with replaying(streamed()) as (_, url):
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"NONSENSE\r\n\r\n")
        answer = await reader.read()
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request")
    assert json.loads(body)["error"]["message"] == "malformed request line"


def test_a_replay_leaves_out_the_usage_chunk_the_proxy_asked_for():
    """The client of a usage_added call never saw that chunk: neither does a replay's."""
    events = [e for _, e in streamed().events]
    usage_chunk = {"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 3}}
    usage = f"data: {json.dumps(usage_chunk)}\n\n".encode()
    sse = b"".join([*events[:-1], usage, events[-1]]).decode()
    row = {"status_code": 200, "response_sse": sse, "event_offsets_ms": [0.0] * 8}
    assert len(ReplayCase.from_row(row).events) == 8  # recorded as it came
    added = ReplayCase.from_row({**row, "flags": {"usage_added": True}})
    assert [e for _, e in added.events] == events


def whole() -> ReplayCase:
    """A recorded whole answer (not a stream), of a tool call."""
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": "一二", "tool_calls": [call]}
    answer = completion("chatcmpl-2", message, "tool_calls")
    body = json.dumps(answer, ensure_ascii=False).encode()
    headers = {"content-type": "application/json"}
    return ReplayCase(status_code=200, headers=headers, body=body, merged=answer)


async def test_a_whole_answer_asked_for_as_a_stream_comes_as_one():
    async with replaying(whole()) as (_, url):
        stream = await client(url).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [c async for c in stream]
    (first,) = chunks
    assert first.choices[0].delta.content == "一二"
    assert first.choices[0].delta.tool_calls[0].function.name == "f"
    assert first.choices[0].finish_reason == "tool_calls"


async def test_head_gets_no_body_and_the_connection_stays_usable():
    async with replaying(whole()) as (_, url), httpx2.AsyncClient() as http:
        head = await http.head(f"{url}/chat/completions")
        post = await http.post(f"{url}/chat/completions", json={"model": "m"})
    assert head.status_code == 200 and head.content == b""
    assert post.json()["id"] == "chatcmpl-2"


async def test_only_chat_posts_take_a_fault():
    async with replaying(whole(), fault=Fault("429"), fault_count=1) as (server, url):
        async with httpx2.AsyncClient() as http:
            assert (await http.get(f"{url}/models")).status_code == 200  # a probe: no fault
            limited = await http.post(f"{url}/chat/completions", json={"model": "m"})
            after = await http.post(f"{url}/chat/completions", json={"model": "m"})
    assert (limited.status_code, after.status_code) == (429, 200)


async def test_a_recorded_failure_takes_a_status_fault_but_no_other():
    failed = ReplayCase(status_code=None, error="ConnectError: refused")
    for fault, status in ((Fault("cut", 0), 502), (Fault("stall", 5), 502), (Fault("500"), 500)):
        async with replaying(failed, fault=fault, fault_count=1) as (_, url):
            async with httpx2.AsyncClient() as http:
                response = await http.post(f"{url}/chat/completions", json={"model": "m"})
        assert response.status_code == status, fault


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"id": 7, "status": "pending"}, "call 7 is still in flight"),
        (
            {"id": 8, "status": "ok", "status_code": 200, "flags": {"response_truncated": True}},
            "call 8's response was stored cut at CAPTURE_MAX_BODY_BYTES",
        ),
    ],
)
def test_a_recording_that_cannot_be_served_whole_says_why(row, message):
    with pytest.raises(ValueError, match=message):
        ReplayCase.from_row(row)
