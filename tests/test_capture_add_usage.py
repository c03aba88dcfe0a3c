"""Add-usage at the edges: upstreams that compress or state a length anyway, bodies past the
capture limit, bytes that parsing would change, a lone surrogate, and the lint of what is sent."""

from __future__ import annotations

import gzip
import json
import logging
from typing import Any

import httpx2
import pytest

from lang_agent.capture.record import CallRecord
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport

URL = "http://up/v1/chat/completions"
ASK = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "你好"}]}


def sse(*chunks: dict[str, Any]) -> bytes:
    events = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks]
    return ("".join(events) + "data: [DONE]\n\n").encode()


ANSWER = sse(
    {"choices": [{"index": 0, "delta": {"content": "好"}, "finish_reason": "stop"}]},
    {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
)
WITHOUT_USAGE = sse(
    {"choices": [{"index": 0, "delta": {"content": "好"}, "finish_reason": "stop"}]}
)


class Upstream:
    """Answers every request with `body` and `headers`, and keeps what it was sent."""

    def __init__(self, body: bytes = ANSWER, status: int = 200, **headers: str) -> None:
        self.body, self.status, self.headers = body, status, headers
        self.sent: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.sent.append(request)
        headers = {"content-type": "text/event-stream", **self.headers}
        # A stream, not content=: a Response given its content decodes it at once.
        return httpx2.Response(self.status, headers=headers, stream=httpx2.ByteStream(self.body))


class Capture:
    """A capturing transport with add-usage on in front of `upstream`, and its records."""

    def __init__(self, upstream: Upstream, *, max_body_bytes: int = 1_000_000, **options: Any):
        self.records: list[CallRecord] = []
        self.transport = CapturingTransport(
            httpx2.MockTransport(upstream),
            recorder=Recorder(dsn=None, max_body_bytes=max_body_bytes),
            source="proxy",
            on_finish=self.records.append,
            **{"add_usage": True, **options},
        )

    async def send(self, content: bytes) -> tuple[httpx2.Response, bytes]:
        headers = {"content-type": "application/json", "accept-encoding": "gzip"}
        request = httpx2.Request("POST", URL, headers=headers, content=content)
        response = await self.transport.handle_async_request(request)
        body = b"".join([piece async for piece in response.stream])
        await response.aclose()
        return response, body


async def call(
    upstream: Upstream, content: bytes, **options: Any
) -> tuple[httpx2.Response, bytes, CallRecord]:
    capture = Capture(upstream, **options)
    response, body = await capture.send(content)
    (record,) = capture.records
    return response, body, record


@pytest.mark.parametrize(
    "headers",
    [
        {"content-encoding": "gzip"},  # asked for identity, compressed all the same
        {"content-length": str(len(ANSWER))},
        {"content-encoding": "gzip", "content-length": str(len(gzip.compress(ANSWER)))},
    ],
)
async def test_the_chunk_is_taken_out_of_a_body_compressed_or_sized_anyway(headers):
    body = gzip.compress(ANSWER) if "content-encoding" in headers else ANSWER
    upstream = Upstream(body, **headers)
    response, received, record = await call(upstream, json.dumps(ASK).encode())
    assert received == WITHOUT_USAGE
    assert "content-encoding" not in response.headers and "content-length" not in response.headers
    assert upstream.sent[0].headers["accept-encoding"] == "identity"
    assert record.prompt_tokens == 5 and record.flags["usage_added"] is True


async def test_an_encoding_capture_cannot_read_keeps_the_chunk_and_says_so():
    upstream = Upstream(b"\x00brotli", **{"content-encoding": "br"})
    response, received, record = await call(upstream, json.dumps(ASK).encode())
    assert received == b"\x00brotli" and response.headers["content-encoding"] == "br"
    assert record.flags["usage_chunk_passed_on"] is True


async def test_the_option_is_spliced_into_the_client_s_own_bytes():
    content = b' {"seed": 18446744073709551617, "stream": true, "model": "m", "messages": []}'
    upstream = Upstream()
    _, _, record = await call(upstream, content)
    sent = upstream.sent[0]
    assert sent.content == (
        b' {"stream_options":{"include_usage":true},"seed": 18446744073709551617, '
        b'"stream": true, "model": "m", "messages": []}'
    )
    assert json.loads(sent.content)["seed"] == 18446744073709551617
    # The record shows what went upstream: its length, and the encoding asked for.
    assert record.request_header["content-length"] == str(len(sent.content))
    assert record.request_header["accept-encoding"] == "identity"
    assert "stream_options" not in record.client_request_body


async def test_a_body_past_the_capture_limit_still_gets_usage_and_is_stored_cut():
    big = {**ASK, "messages": [{"role": "user", "content": "长" * 4000}]}
    upstream = Upstream()
    _, received, record = await call(upstream, json.dumps(big).encode(), max_body_bytes=1000)
    assert json.loads(upstream.sent[0].content)["stream_options"] == {"include_usage": True}
    assert received == WITHOUT_USAGE and record.prompt_tokens == 5
    assert isinstance(record.request_body, str) and len(record.request_body.encode()) <= 1000
    assert record.request_body.startswith('{"stream_options":{"include_usage":true},')
    assert record.flags["request_truncated"] > 1000


@pytest.mark.parametrize("stream", [True, False])
async def test_a_lone_surrogate_costs_neither_the_call_nor_its_record(stream):
    content = b'{"model": "m", "stream": %s, "messages": [{"role": "user", "content": "\\ud83d"}]}'
    upstream = Upstream(ANSWER if stream else b'{"choices": []}', **(
        {} if stream else {"content-type": "application/json"}
    ))  # fmt: skip
    response, _, record = await call(upstream, content % (b"true" if stream else b"false"))
    assert response.status_code == 200 and record.status == "ok"
    assert record.flags.get("usage_added") is (True if stream else None)


async def test_the_lint_reads_the_request_as_sent():
    ask = {"model": "qwq-plus", "messages": ASK["messages"]}  # a stream-only model, not streamed
    upstream = Upstream()
    _, _, record = await call(upstream, json.dumps(ask).encode(), force_stream=True)
    assert json.loads(upstream.sent[0].content)["stream"] is True
    assert record.flags["force_stream"] is True and "lint" not in record.flags
    _, _, plain = await call(Upstream(), json.dumps(ask).encode(), force_stream=False)
    assert [f["rule"] for f in plain.flags["lint"]] == ["stream_only"]


async def test_a_400_to_an_added_option_says_once_per_host_what_to_do(caplog):
    refused = Upstream(b'{"error": {"message": "unknown field"}}', status=400)
    refused.headers["content-type"] = "application/json"
    with caplog.at_level(logging.WARNING, logger="lang_agent.capture.transport"):
        for _ in range(2):
            refused.sent.clear()
            response, body, record = await call(refused, json.dumps(ASK).encode())
            assert response.status_code == 400 and record.flags["usage_added"] is True
            assert body == refused.body and len(refused.sent) == 1
    hints = [r.getMessage() for r in caplog.records if "--no-add-usage" in r.getMessage()]
    assert len(hints) == 2  # one per transport: each call above has its own
    assert hints[0].startswith("up answered 400 to a stream the proxy asked its usage for")


class RefusesStreamOptions(Upstream):
    """An upstream that takes no stream_options, refusing them by name as Azure's did."""

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        if b"stream_options" not in request.content:
            return super().__call__(request)
        self.sent.append(request)
        error = b'{"error": {"message": "Unrecognized request argument supplied: stream_options"}}'
        return httpx2.Response(400, headers={"content-type": "application/json"}, content=error)


async def test_an_upstream_refusing_the_option_by_name_gets_the_client_s_request_from_then_on(
    caplog,
):
    upstream = RefusesStreamOptions(WITHOUT_USAGE)
    capture = Capture(upstream)
    with caplog.at_level(logging.WARNING, logger="lang_agent.capture.transport"):
        first, first_body = await capture.send(json.dumps(ASK).encode())
        second, second_body = await capture.send(json.dumps(ASK).encode())
    # The client never sees the 400: the same call went again as it wrote it.
    assert first.status_code == second.status_code == 200
    assert first_body == second_body == WITHOUT_USAGE
    assert [b"stream_options" in r.content for r in upstream.sent] == [True, False, False]
    refused, retried, later = capture.records
    assert refused.status_code == 400 and refused.flags["usage_added"] is True
    for record in (retried, later):
        assert record.status == "ok" and record.prompt_tokens is None
        assert record.flags.get("usage_refused") is True and "usage_added" not in record.flags
        assert record.client_request_body is None and "stream_options" not in record.request_body
    warnings = [
        r.getMessage() for r in caplog.records if "refused the stream_options" in r.getMessage()
    ]
    assert len(warnings) == 1 and "Unrecognized request argument" in warnings[0]
