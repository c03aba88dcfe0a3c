"""stream_chat on the bare transport and through capture's tee: the same pieces, errors and
connection reuse either way, the tee's parse taken instead of a second one."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import httpx2
import pytest

from lang_agent.capture import CapturingTransport, Recorder
from lang_agent.capture.record import CallRecord
from lang_agent.errors import UpstreamError
from lang_agent.llm.chat_stream import Reply, stream_chat
from lang_agent.llm.factory import ModelSpec
from lang_agent.llm.http1 import Http1Transport
from lang_agent.llm.sim import Simulator
from tests.support import answering, http_chunk, raw_server

TIMEOUTS = httpx2.Timeout(10.0, connect=5.0)
BODY = {
    "model": "sim-chat",
    "messages": [{"role": "user", "content": "讲个笑话"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


def _event(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
    return f"data: {json.dumps({'choices': [choice]}, ensure_ascii=False)}\n\n".encode()


def _sse(*events: bytes, headers: bytes = b"") -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n" + headers + b"\r\n"
    )
    return head + b"".join(http_chunk(event) for event in events) + b"0\r\n\r\n"


class Upstreams:
    """The two ways a call reaches the upstream; `records` holds what capture recorded."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    def bare(self) -> httpx2.AsyncBaseTransport:
        return Http1Transport()

    def captured(self) -> httpx2.AsyncBaseTransport:
        return CapturingTransport(
            Http1Transport(), recorder=Recorder(dsn=None), on_finish=self.records.append
        )


@pytest.fixture(params=["bare", "captured"])
async def upstream(request) -> AsyncIterator[tuple[httpx2.AsyncBaseTransport, Upstreams]]:
    upstreams = Upstreams()
    transport = getattr(upstreams, request.param)()
    yield transport, upstreams
    await transport.aclose()


async def _call(transport, url: str, reply: Reply | None = None, retries: int = 0) -> list[str]:
    """One call to `url`'s base (raw_server's URL less its last segment, or a base URL)."""
    base = url.rsplit("/", 1)[0] if url.endswith("?q=1") else url
    spec = ModelSpec(role="chat", provider="sim", model="sim-chat", base_url=base, api_key=None)
    reply = reply or Reply()
    pieces = stream_chat(transport, spec, BODY, reply, timeouts=TIMEOUTS, retries=retries)
    return [piece async for piece in pieces]


async def test_the_simulator_answers_the_same_either_way(upstream):
    transport, upstreams = upstream
    sim = Simulator()
    url = await sim.start(host="127.0.0.1", port=0)
    try:
        reply = Reply()
        pieces = await _call(transport, url, reply)
    finally:
        await sim.stop()
    assert len(pieces) > 3 and reply.finish_reason == "stop" and reply.usage
    assert "".join(pieces) == reply.message(model="sim-chat").content
    assert len(upstreams.records) == (0 if isinstance(transport, Http1Transport) else 1)
    for record in upstreams.records:  # the record saw what the caller saw
        assert record.status == "ok"
        assert record.response_body["choices"][0]["message"]["content"] == "".join(pieces)


async def test_after_done_the_body_is_drained_so_the_connection_is_reused(upstream):
    transport, _ = upstream
    answer = _sse(_event("你"), _event("好", "stop"), b"data: [DONE]\n\n")
    async with raw_server(answering(answer, answer)) as (url, accepted):
        assert await _call(transport, url) == ["你", "好"]
        assert await _call(transport, url) == ["你", "好"]
    assert accepted[0] == 1


async def test_events_after_done_are_not_read_as_the_answer(upstream):
    transport, _ = upstream
    answer = _sse(_event("好", "stop"), b"data: [DONE]\n\n" + _event("ignored"))
    async with raw_server(answering(answer)) as (url, _):
        assert await _call(transport, url) == ["好"]


async def test_a_stream_without_done_gives_what_came(upstream):
    transport, upstreams = upstream
    async with raw_server(answering(_sse(_event("只有"), _event("这些")))) as (url, _):
        assert await _call(transport, url) == ["只有", "这些"]
    assert [r.status for r in upstreams.records] in ([], ["incomplete"])


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (b"data: {not json\n\n", "malformed event"),
        (b"data: [1, 2]\n\n", "malformed event"),
        (b'data: {"error": {"message": "overloaded"}}\n\n', "returned an error"),
    ],
)
async def test_a_broken_or_error_event_is_an_upstream_error(upstream, event, message):
    transport, _ = upstream
    async with raw_server(answering(_sse(_event("先"), event, _event("后", "stop")))) as (url, _):
        reply = Reply()
        with pytest.raises(UpstreamError, match=message):
            await _call(transport, url, reply)
    assert reply.text == ["先"]


async def test_a_gzip_body_is_decoded_on_both_paths(upstream):
    transport, _ = upstream
    body = gzip.compress(_event("压缩") + _event("的", "stop") + b"data: [DONE]\n\n")
    answer = _sse(body, headers=b"content-encoding: gzip\r\n")
    async with raw_server(answering(answer)) as (url, _):
        assert "".join(await _call(transport, url)) == "压缩的"


async def test_a_retried_status_then_an_answer(upstream, monkeypatch):
    monkeypatch.setattr("lang_agent.llm.chat_stream.RETRY_BASE_S", 0.0)
    transport, upstreams = upstream
    busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy"
    answer = _sse(_event("好", "stop"), b"data: [DONE]\n\n")
    async with raw_server(answering(busy, answer)) as (url, accepted):
        assert await _call(transport, url, retries=1) == ["好"]
    assert accepted[0] == 1
    assert [r.status for r in upstreams.records] in ([], ["http_error", "ok"])
