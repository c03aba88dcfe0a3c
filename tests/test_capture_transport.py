"""CapturingTransport: every call becomes a row, whatever happens to it, with no secret stored."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx2
import openai
import pytest

from lang_agent.capture.record import CallRecord
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.replay import ReplayCase, ReplayServer
from lang_agent.capture.stream import TAIL_BYTES, CapturingStream, summary_of_cut_body
from lang_agent.capture.transport import BODY_EXTENSION, CapturingTransport
from lang_agent.llm.context import calling
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.settings import CONFIGS, Settings
from tests.capture_fixtures import (
    capture_db,
    capture_dsn,
    capture_pg,
    capture_sim,
    eventually,
    recorder,
    rows_of_thread,
)

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim", "recorder"]

CATALOG = ModelCatalog.load(CONFIGS / "models.json")
SECRET = "sk-very-secret-0123456789"
HELLO = {"model": "sim-chat", "messages": [{"role": "user", "content": "你好"}]}


@pytest.fixture
def thread() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def client(recorder: Recorder, capture_sim) -> AsyncIterator[httpx2.AsyncClient]:
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder, catalog=CATALOG)
    headers = {"authorization": f"Bearer {SECRET}", "x-api-key": SECRET, "x-request-id": "cli-1"}
    async with httpx2.AsyncClient(
        transport=transport, base_url=capture_sim.base_url, headers=headers, timeout=10
    ) as http:
        yield http


async def one_row(db, thread: str, *, status_not: str = "pending") -> dict:
    async def finished() -> list[dict] | None:
        rows = await rows_of_thread(db, thread)
        return rows if rows and all(r["status"] != status_not for r in rows) else None

    (row,) = await eventually(finished)
    return row


async def test_non_stream_call_is_recorded_with_ids_usage_and_context(client, capture_db, thread):
    with calling(thread_id=thread, turn_id="turn-1", node="router"):
        response = await client.post("/chat/completions", json=HELLO)
    assert response.status_code == 200
    row = await one_row(capture_db, thread)
    assert (row["status"], row["status_code"], row["node"], row["turn_id"]) == (
        "ok",
        200,
        "router",
        "turn-1",
    )
    assert row["chatcmpl_id"] == response.json()["id"]
    assert row["upstream_request_id"] == response.headers["msh-request-id"]
    assert row["client_request_id"] == "cli-1"
    assert row["server_timing_ms"] is not None and row["latency_ms"] >= row["ttfb_ms"]
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["ttft_ms"] is None and row["stream"] is False
    assert row["response_body"]["object"] == "chat.completion"
    assert row["cost"] == 0 and row["finished_at"] >= row["created_at"]


async def test_stream_call_keeps_raw_sse_offsets_and_merge(client, capture_db, thread):
    body = HELLO | {"stream": True, "stream_options": {"include_usage": True}}
    with calling(thread_id=thread, node="chat"):
        async with client.stream("POST", "/chat/completions", json=body) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    row = await one_row(capture_db, thread)
    assert row["status"] == "ok" and row["stream"] is True
    assert row["response_sse"].encode() == raw  # the tee stores exactly what the client got
    events = [e for e in row["response_sse"].split("\n\n") if e.strip()]
    assert len(row["event_offsets_ms"]) == len(events)
    assert row["event_offsets_ms"] == sorted(row["event_offsets_ms"])
    assert row["ttft_ms"] is not None and row["ttft_ms"] <= row["latency_ms"]
    assert row["response_body"]["choices"][0]["message"]["content"]
    assert row["completion_tokens"] > 0 and row["finish_reason"] == "stop"


async def test_429_is_recorded_with_its_body(client, capture_db, capture_sim, thread):
    capture_sim.inject("429", role="chat")
    with calling(thread_id=thread):
        response = await client.post("/chat/completions", json=HELLO)
    assert response.status_code == 429
    row = await one_row(capture_db, thread)
    assert (row["status"], row["status_code"]) == ("http_error", 429)
    assert row["response_body"]["error"]["code"] == "Throttling.RateQuota"
    assert row["cost"] == 0  # a refused call bills nothing


async def cut_stream_row(client, capture_db, capture_sim, thread) -> dict:
    """The captured row of a stream the upstream broke off."""
    capture_sim.inject("cut", role="chat")
    with calling(thread_id=thread), pytest.raises(httpx2.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=HELLO | {"stream": True}) as r:
            async for _ in r.aiter_raw():
                pass
    return await one_row(capture_db, thread)


async def test_cut_stream_is_incomplete_not_200_ok(client, capture_db, capture_sim, thread):
    row = await cut_stream_row(client, capture_db, capture_sim, thread)
    assert row["status"] == "incomplete" and row["status_code"] == 200
    assert "RemoteProtocolError" in row["error"]
    assert "[DONE]" not in row["response_sse"]
    # Billed for what the model read and wrote, but no usage said how much: unknown, not free.
    assert row["prompt_tokens"] is None and row["cost"] is None


async def test_a_cut_stream_s_replay_breaks_off_where_it_did(
    client, capture_db, capture_sim, thread
):
    """A bad case replayed must fail as it did: it answered a clean end, which a client (the
    agent too) took for a whole, short answer."""
    row = await cut_stream_row(client, capture_db, capture_sim, thread)
    server = ReplayServer(ReplayCase.from_row(row))
    url = await server.start()
    try:
        sdk = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
        got = []
        with pytest.raises(openai.APIConnectionError):
            stream = await sdk.chat.completions.create(stream=True, **HELLO)
            async for part in stream:
                got.append(part.choices[0].delta.content or "" if part.choices else "")
        assert "".join(got)  # what came before the break comes again
        with pytest.raises(openai.APIConnectionError):
            await sdk.chat.completions.create(**HELLO)
    finally:
        await server.stop()


async def test_connection_refused_and_timeout_are_errors(recorder, capture_db, capture_sim, thread):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    async with httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(0.5)) as http:
        with calling(thread_id=thread, node="tool"):
            with pytest.raises(httpx2.ConnectError):
                await http.post(f"http://127.0.0.1:{closed_port}/v1/chat/completions", json=HELLO)
            capture_sim.inject("timeout", role="chat")
            with pytest.raises(httpx2.ReadTimeout):
                await http.post(f"{capture_sim.base_url}/chat/completions", json=HELLO)
    rows = await eventually(lambda: _finished_rows(capture_db, thread, count=2), within_s=10)
    assert [r["status"] for r in rows] == ["error", "error"]
    assert "ConnectError" in rows[0]["error"] and rows[0]["status_code"] is None
    assert "ReadTimeout" in rows[1]["error"]


async def _finished_rows(db, thread: str, *, count: int) -> list[dict] | None:
    rows = await rows_of_thread(db, thread)
    done = [r for r in rows if r["status"] != "pending"]
    return done if len(done) == count else None


async def test_client_stopping_early_is_incomplete(client, capture_db, thread):
    with calling(thread_id=thread):
        async with client.stream("POST", "/chat/completions", json=HELLO | {"stream": True}) as r:
            async for _ in r.aiter_raw():
                break
    row = await one_row(capture_db, thread)
    assert row["status"] == "incomplete" and "client closed" in row["error"]


async def test_no_secret_in_any_stored_column(client, capture_db, thread):
    with calling(thread_id=thread):
        await client.post("/chat/completions?api_key=" + SECRET, json=HELLO)
    row = await one_row(capture_db, thread)
    assert row["request_header"]["authorization"] == "[REDACTED]"
    assert row["request_header"]["x-api-key"] == "[REDACTED]"
    assert SECRET not in json.dumps(row, default=str)


async def test_reasoning_and_content_ttft_and_a_stream_without_end(recorder, capture_db, thread):
    def upstream(request: httpx2.Request) -> httpx2.Response:
        events = [{"reasoning_content": "嗯"}, {"reasoning_content": "……"}, {"content": "好"}]
        body = "".join(
            "data: " + json.dumps({"id": "c1", "choices": [{"index": 0, "delta": d}]}) + "\n\n"
            for d in events
        )
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    async with httpx2.AsyncClient(transport=transport) as http:
        with calling(thread_id=thread):
            await http.post("http://up/v1/chat/completions", json=HELLO | {"stream": True})
    row = await one_row(capture_db, thread)
    assert row["ttft_reasoning_ms"] is not None and row["ttft_ms"] is not None
    assert row["ttft_reasoning_ms"] <= row["ttft_ms"]
    assert row["status"] == "incomplete"
    assert row["error"] == "the stream ended without [DONE] or finish_reason"
    assert row["response_body"]["choices"][0]["message"]["reasoning_content"] == "嗯……"


async def test_openai_sdk_on_the_capturing_client(client, capture_db, capture_sim, thread):
    sdk = openai.AsyncOpenAI(
        base_url=capture_sim.base_url, api_key=SECRET, http_client=client, max_retries=0
    )
    with calling(thread_id=thread, turn_id="turn-9", node="chat"):
        stream = await sdk.chat.completions.create(
            model="sim-chat",
            messages=[{"role": "user", "content": "讲个笑话"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    row = await one_row(capture_db, thread)
    assert row["response_body"]["choices"][0]["message"]["content"] == text
    assert row["status"] == "ok" and row["turn_id"] == "turn-9"
    assert SECRET not in json.dumps(row, default=str)
    metrics = client._transport.recorder.metrics.render()  # noqa: SLF001
    assert 'lang_agent_llm_calls_total{model="sim-chat",status="ok"}' in metrics


async def test_lifespan_wiring_with_langchain_and_metrics_route(
    capture_dsn, capture_db, capture_sim
):
    from contextlib import AsyncExitStack

    from fastapi import FastAPI
    from langchain_openai import ChatOpenAI

    from fastapi_server import metrics_api

    settings = Settings(_env_file=None, conn_str=capture_dsn)
    thread = f"t-{uuid.uuid4().hex[:10]}"
    app = FastAPI()
    app.include_router(metrics_api.router)
    async with AsyncExitStack() as stack:
        recorder = await stack.enter_async_context(Recorder.open(settings, dsn=capture_dsn))
        transport = CapturingTransport(
            httpx2.AsyncHTTPTransport(limits=httpx2.Limits(max_connections=10)),
            recorder=recorder,
            catalog=ModelCatalog.load(settings.models_file),
        )
        http_client = httpx2.AsyncClient(
            transport=transport,
            timeout=httpx2.Timeout(connect=5, read=settings.llm_timeout_s, write=10, pool=10),
        )
        stack.push_async_callback(http_client.aclose)
        app.state.recorder = recorder
        llm = ChatOpenAI(
            model="sim-chat",
            base_url=capture_sim.base_url,
            api_key="sim",
            http_async_client=http_client,
            streaming=True,
            stream_usage=True,
            max_retries=0,
        )
        with calling(thread_id=thread, turn_id="turn-lc", node="chat"):
            answer = await llm.ainvoke("你好")
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://app"
        ) as web:
            metrics = (await web.get("/metrics")).text
    row = await one_row(capture_db, thread)
    assert row["response_body"]["choices"][0]["message"]["content"] == answer.content
    assert (row["status"], row["node"], row["turn_id"]) == ("ok", "chat", "turn-lc")
    assert row["prompt_tokens"] == answer.usage_metadata["input_tokens"]
    assert 'lang_agent_llm_calls_total{model="sim-chat",status="ok"}' in metrics
    assert "lang_agent_llm_ttft_seconds_bucket" in metrics


async def test_error_chunk_inside_a_200_stream_is_an_error(recorder, capture_db, thread):
    def upstream(request: httpx2.Request) -> httpx2.Response:
        flat = {"code": "DataInspectionFailed", "message": "unsafe input", "request_id": "r-9"}
        body = 'data: {"id":"c2","choices":[{"index":0,"delta":{"content":"好"}}]}\n\n'
        body += f"data: {json.dumps(flat)}\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    async with httpx2.AsyncClient(transport=transport) as http:
        with calling(thread_id=thread):
            await http.post("http://up/v1/chat/completions", json=HELLO | {"stream": True})
    row = await one_row(capture_db, thread)
    assert row["status"] == "error" and row["upstream_request_id"] == "r-9"
    assert "DataInspectionFailed" in json.dumps(row["response_body"])


async def test_a_body_handed_over_is_recorded_without_parsing_its_bytes_again(
    client, capture_db, thread
):
    # The record takes the caller's dict: a key that only the dict has shows it was taken.
    handed = HELLO | {"handed_over": True}
    with calling(thread_id=thread):
        response = await client.post(
            "/chat/completions", json=HELLO, extensions={BODY_EXTENSION: handed}
        )
    assert response.status_code == 200
    row = await one_row(capture_db, thread)
    assert row["request_body"] == handed


async def post_with_a_body_limit(
    capture_db, capture_sim, thread: str, max_body_bytes: int, **request: Any
) -> tuple[httpx2.Response, dict]:
    """POST HELLO to the simulator through a recorder that keeps at most `max_body_bytes`;
    the response and its row."""
    small = Recorder(dsn=capture_db.dsn, max_body_bytes=max_body_bytes)
    await small.start()
    try:
        transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=small, catalog=CATALOG)
        async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as http:
            with calling(thread_id=thread):
                response = await http.post("/chat/completions", json=HELLO, **request)
        assert response.status_code == 200
        return response, await one_row(capture_db, thread)
    finally:
        await small.close()


async def test_a_handed_over_body_past_the_size_limit_is_cut_like_any_other(
    capture_db, capture_sim, thread
):
    response, row = await post_with_a_body_limit(
        capture_db, capture_sim, thread, 40, extensions={BODY_EXTENSION: HELLO}
    )
    assert row["flags"]["request_truncated"] == len(response.request.content)
    assert isinstance(row["request_body"], str) and len(row["request_body"]) <= 40
    assert row["model"] == HELLO["model"]  # read from the whole body: filters still find it


async def test_a_response_stored_cut_keeps_its_tokens_and_finish_reason(
    capture_db, capture_sim, thread
):
    response, row = await post_with_a_body_limit(capture_db, capture_sim, thread, 120)
    answer = response.json()
    assert len(response.content) > 120 and row["flags"]["response_truncated"]
    assert isinstance(row["response_body"], str)
    assert row["chatcmpl_id"] == answer["id"] and row["finish_reason"] == "stop"
    assert row["prompt_tokens"] == answer["usage"]["prompt_tokens"] > 0
    assert row["completion_tokens"] == answer["usage"]["completion_tokens"]


def test_a_cut_body_is_summed_up_from_its_two_ends():
    body = json.dumps(
        {
            "id": "chatcmpl-7",
            "model": "qwen-plus",
            "choices": [
                {
                    "message": {"content": '"usage": {"fake": 1} ' * 50_000},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3},
        }
    ).encode()
    summary = summary_of_cut_body(body[:1000], body[-TAIL_BYTES:])
    assert summary == {
        "id": "chatcmpl-7",
        "model": "qwen-plus",
        "choices": [{"finish_reason": "length"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3},
    }


async def test_preflight_flags_what_does_not_fit_and_the_auto_model_it_picks(client, capture_db):
    calls = {
        "fits": {"model": "moonshot-v1-8k", "messages": [{"role": "user", "content": "你好"}]},
        "overflows": {
            "model": "moonshot-v1-8k",
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": "字" * 5000}],
        },
        "auto": {"model": "moonshot-v1-auto", "messages": [{"role": "user", "content": "你好"}]},
    }
    flags = {}
    for name, body in calls.items():
        thread = f"t-{name}-{uuid.uuid4().hex[:8]}"
        with calling(thread_id=thread):
            assert (await client.post("/chat/completions", json=body)).status_code == 200
        flags[name] = (await one_row(capture_db, thread))["flags"]
    assert "preflight" not in flags["fits"] and "context_overflow" not in flags["fits"]
    # Preflight's estimate, then the overflow the answer's usage confirms.
    estimate = flags["overflows"]["preflight"]
    assert estimate["fits"] is False and estimate["estimated_prompt_tokens"] > 5000
    assert flags["overflows"]["context_overflow"]["source"] == "usage"
    assert flags["auto"]["preflight"]["resolved_model"] == "moonshot-v1-8k"
    assert "context_overflow" not in flags["auto"]


NOW = datetime.now(UTC)


class Pieces(httpx2.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece

    async def aclose(self) -> None:
        pass


def _event(chunk: dict) -> bytes:
    return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()


USAGE_EVENT = _event(
    {"id": "c", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
)
STREAM = [
    _event({"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "你"}}]}),
    _event(
        {"id": "c", "choices": [{"index": 0, "delta": {"content": "好"}, "finish_reason": "stop"}]}
    ),
    USAGE_EVENT,
    b"data: [DONE]\n\n",
]


@pytest.mark.parametrize("size", [1, 2, 5, 17, 64, 100_000])
@pytest.mark.parametrize("tail", [b"", b'data: {"unterminated'])
async def test_the_added_usage_chunk_is_taken_out_wherever_the_body_is_split(size, tail):
    body = b"".join(STREAM) + tail
    record = CallRecord(
        method="POST", url="http://u/v1/chat/completions", request_header={}, created_at=NOW
    )
    finished: list[CallRecord] = []
    stream = CapturingStream(
        Pieces([body[i : i + size] for i in range(0, len(body), size)]),
        record=record,
        sse=True,
        content_encoding=None,
        max_bytes=1_000_000,
        detector=None,
        on_close=finished.append,
        strip_usage=True,
    )
    sent = b"".join([piece async for piece in stream])
    await stream.aclose()
    assert sent == body.replace(USAGE_EVENT, b"")
    assert finished == [record] and record.response_sse == body.decode()
    assert record.response_body["usage"]["prompt_tokens"] == 9
