"""The standalone proxy in front of the simulator, used by the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime

import httpx2
import openai
import pytest

from lang_agent.capture.proxy import CLIENT_LEFT, running_proxy, upstream_url
from lang_agent.capture.query import CallFilter, get_calls
from lang_agent.llm.sim import Simulator
from lang_agent.llm.sim_profile import Latency, SimProfile
from lang_agent.settings import Settings
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg, capture_sim, eventually
from tests.support import answering, raw_server

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim"]

SECRET = "sk-proxy-client-key-555"
CALCULATOR = {
    "name": "calculator",
    "description": "Arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
}
TOOLS = [{"type": "function", "function": CALCULATOR}]


def proxy_settings(upstream: str, dsn: str, **overrides: object) -> Settings:
    return Settings(_env_file=None, conn_str=dsn, proxy_upstream=upstream, **overrides)


@pytest.fixture(scope="module")
async def proxy(capture_sim, capture_dsn) -> AsyncIterator[str]:
    settings = proxy_settings(capture_sim.base_url, capture_dsn)
    async with running_proxy(settings, dsn=capture_dsn, port=0) as running:
        yield running.base_url


def sdk(base_url: str, key: str = SECRET) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)


async def rows_matching(db, predicate: str, *, count: int = 1) -> list[dict]:
    async def done() -> list[dict] | None:
        async with db.connection() as conn:
            rows = await get_calls(conn, CallFilter(predicates=(predicate,)), limit=10)
        finished = [r for r in rows if r["status"] != "pending"]
        return finished if len(finished) >= count else None

    return await eventually(done)


def marker() -> str:
    return uuid.uuid4().hex[:12]


def test_paths_map_onto_the_upstream_base():
    base = "https://dashscope.aliyuncs.com/compatible-mode/v1"
    assert (
        upstream_url(base, path="/v1/chat/completions", query="a=1")
        == f"{base}/chat/completions?a=1"
    )
    assert upstream_url("http://h/v1/", path="/v1") == "http://h/v1"
    assert upstream_url("http://h/v1", path="/health") == "http://h/v1/health"


async def test_stream_through_the_proxy(proxy, capture_db):
    tag = marker()
    stream = await sdk(proxy).chat.completions.create(
        model="sim-chat",
        messages=[{"role": "user", "content": f"你好 {tag}"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["source"] == "proxy" and row["status"] == "ok" and row["stream"] is True
    assert row["response_body"]["choices"][0]["message"]["content"] == text
    assert row["request_header"]["authorization"] == "[REDACTED]"
    assert SECRET not in json.dumps(row, default=str)


async def test_non_stream_and_query_string_are_forwarded(proxy, capture_db):
    tag = marker()
    client = sdk(proxy)
    completion = await client.chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": f"讲个笑话 {tag}"}]
    )
    assert completion.choices[0].message.content
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["chatcmpl_id"] == completion.id and row["prompt_tokens"] > 0
    models = await client.models.list(extra_query={"probe": f"{tag} x&y"})
    assert any(m.id == "sim-chat" for m in models.data)
    (listed,) = await rows_matching(capture_db, f"url ~ 'probe={tag}'")
    assert listed["method"] == "GET" and "x%26y" in listed["url"]


async def test_429_passes_through_unchanged(proxy, capture_sim, capture_db):
    capture_sim.inject("429", role="chat")
    tag = marker()
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk(proxy).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": tag}]
        )
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "Throttling.RateQuota"
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert (row["status"], row["status_code"]) == ("http_error", 429)


async def test_proxy_metrics(proxy):
    async with httpx2.AsyncClient() as http:
        response = await http.get(proxy.removesuffix("/v1") + "/metrics")
    assert response.status_code == 200
    assert "lang_agent_llm_calls_total{" in response.text
    assert "lang_agent_capture_rows_dropped_total" in response.text
    assert "lang_agent_event_loop_lag_seconds_count" in response.text


async def test_unreachable_upstream_is_a_502_and_a_recorded_error(capture_dsn, capture_db):
    settings = proxy_settings("http://127.0.0.1:9/v1", capture_dsn)
    async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
        tag = marker()
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk(p.base_url).chat.completions.create(
                model="sim-chat", messages=[{"role": "user", "content": tag}]
            )
    assert caught.value.status_code == 502
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["status"] == "error" and "ConnectError" in row["error"]


async def test_detect_repeat_cuts_the_loop(capture_sim, capture_dsn, capture_db):
    settings = proxy_settings(capture_sim.base_url, capture_dsn, detect_repeat=True)
    cancelled = capture_sim.snapshot()["cancelled"]
    async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
        capture_sim.inject("loop", role="chat")
        tag = marker()
        stream = await sdk(p.base_url).chat.completions.create(
            model="sim-chat",
            messages=[{"role": "user", "content": f"讲个故事 {tag}"}],
            stream=True,
            max_tokens=5000,
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "repeat"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert 0 < len(text) < 2000  # cut long before max_tokens
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["status"] == "stopped" and row["finish_reason"] == "repeat"
    verdict = row["flags"]["repeat"]
    assert verdict["cut"] is True and verdict["tokens_saved"] > 4000
    assert row["response_sse"].rstrip().endswith("data: [DONE]")
    await eventually(lambda: _async(capture_sim.snapshot()["cancelled"] > cancelled))


async def test_force_stream_with_a_tool_call(capture_sim, capture_dsn, capture_db):
    settings = proxy_settings(capture_sim.base_url, capture_dsn, force_stream=True)
    async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
        tag = marker()
        completion = await sdk(p.base_url).chat.completions.create(
            model="sim-tool",
            messages=[{"role": "user", "content": f"算一下3加5 {tag}"}],
            tools=TOOLS,
        )
    (call,) = completion.choices[0].message.tool_calls
    assert call.function.name == "calculator" and json.loads(call.function.arguments)
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["flags"]["force_stream"] is True and row["stream"] is True


async def test_force_stream_of_a_cut_stream_is_a_502_upstream_error(capture_sim, capture_dsn):
    settings = proxy_settings(capture_sim.base_url, capture_dsn, force_stream=True)
    async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
        capture_sim.inject("cut", role="chat")
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk(p.base_url).chat.completions.create(
                model="sim-chat", messages=[{"role": "user", "content": marker()}]
            )
    # Reached, then broken: not "unreachable", which sends one to check the address.
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_error"


async def test_an_upstream_cut_mid_stream_ends_with_an_error_frame(proxy, capture_sim, capture_db):
    capture_sim.inject("cut", role="chat")
    tag = marker()
    body = {"model": "sim-chat", "stream": True, "messages": [{"role": "user", "content": tag}]}
    async with (
        httpx2.AsyncClient() as http,
        http.stream("POST", f"{proxy}/chat/completions", json=body) as response,
    ):
        events = [line async for line in response.aiter_lines() if line.startswith("data:")]
    assert response.status_code == 200 and len(events) > 1
    error = json.loads(events[-1].removeprefix("data:"))["error"]
    assert error["code"] == "upstream_stream_error"
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["status"] == "incomplete" and "RemoteProtocolError" in row["error"]


async def test_a_sized_body_cut_by_the_upstream_reaches_the_client_cut(
    proxy, capture_sim, capture_db, caplog
):
    capture_sim.inject("cut", role="chat")
    tag = marker()
    with caplog.at_level(logging.WARNING), pytest.raises(openai.APIConnectionError):
        await sdk(proxy).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": tag}]
        )
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["status"] == "incomplete" and "RemoteProtocolError" in row["error"]
    # Said once, as a warning of the proxy's, not as an error in the app.
    assert [r.levelname for r in caplog.records if r.name.startswith("uvicorn")] == []
    assert any("failed mid-way" in r.getMessage() for r in caplog.records)


async def test_a_client_that_leaves_mid_stream_ends_the_upstream_call(capture_dsn, capture_db):
    slow = Simulator(profile=SimProfile(chat=Latency(ttft_ms=0, tokens_per_s=10)))
    url = await slow.start(host="127.0.0.1", port=0)
    tag = marker()
    body = {
        "model": "sim-chat",
        "stream": True,
        "messages": [{"role": "user", "content": f"讲个故事 {tag}"}],
    }
    try:
        async with running_proxy(proxy_settings(url, capture_dsn), dsn=capture_dsn, port=0) as p:
            async with (
                httpx2.AsyncClient() as http,
                http.stream("POST", f"{p.base_url}/chat/completions", json=body) as response,
            ):
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # the first event, then the client leaves
            await eventually(lambda: _async(slow.snapshot()["cancelled"] == 1))
    finally:
        await slow.stop()
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["status"] == "incomplete" and row["latency_ms"] < 3000
    assert row["error"] == CLIENT_LEFT


async def test_key_override_is_flagged_and_never_stored(capture_dsn, capture_db):
    guarded = Simulator(api_key="upstream-only-key")
    url = await guarded.start(host="127.0.0.1", port=0)
    try:
        settings = proxy_settings(url, capture_dsn, proxy_key="upstream-only-key")
        async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
            tag = marker()
            done = await sdk(p.base_url, key="client-wrong-key").chat.completions.create(
                model="sim-chat", messages=[{"role": "user", "content": tag}]
            )
    finally:
        await guarded.stop()
    assert done.choices[0].message.content
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["flags"]["key_override"] is True
    dumped = json.dumps(row, default=str)
    assert "upstream-only-key" not in dumped and "client-wrong-key" not in dumped


async def test_a_web_page_cannot_use_the_proxy_or_its_key(capture_dsn, capture_db):
    """Any page the browser on this host shows could POST to the proxy (text/plain needs no
    preflight; a preflight was forwarded upstream too), and a DNS-rebinding page read the
    answers: with --key, anyone's page spent the key. Such requests name a foreign Origin or
    Host and are refused before anything goes upstream; programs on this host get through."""
    guarded = Simulator(api_key="upstream-only-key")
    url = await guarded.start(host="127.0.0.1", port=0)
    tag = marker()
    body = json.dumps({"model": "sim-chat", "messages": [{"role": "user", "content": tag}]})
    try:
        settings = proxy_settings(url, capture_dsn, proxy_key="upstream-only-key")
        async with (
            running_proxy(settings, dsn=capture_dsn, port=0) as p,
            httpx2.AsyncClient(base_url=p.base_url, timeout=30) as client,
        ):
            for headers in (
                {"Origin": "https://evil.example", "Content-Type": "text/plain"},
                {"Origin": "null"},
                {"Host": "rebound.evil.example:9988"},
            ):
                refused = await client.post("/chat/completions", content=body, headers=headers)
                assert refused.status_code == 403, refused.text
                assert refused.json()["error"]["code"] == "forbidden"
            preflight = await client.options(
                "/chat/completions",
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 403
            assert (await client.get("/metrics", headers={"Origin": "https://x.example"})).is_error
            local_page = {"Origin": "http://localhost:3000", "Content-Type": "application/json"}
            answered = await client.post("/chat/completions", content=body, headers=local_page)
            assert answered.status_code == 200, answered.text
    finally:
        await guarded.stop()
    rows = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert len(rows) == 1  # only the local page's call went upstream


async def test_routes_send_calls_to_their_own_upstream_with_their_own_key(
    capture_sim, capture_dsn, capture_db
):
    guarded = Simulator(api_key="route-only-key")
    other = await guarded.start(host="127.0.0.1", port=0)
    routes = [
        {"name": "b", "prefix": "/b", "upstream": other, "key": "route-only-key"},
        {"models": ["sim-chatty*"], "upstream": other, "key": "route-only-key"},
    ]
    settings = proxy_settings(capture_sim.base_url, capture_dsn, proxy_routes=routes)
    tags = {how: marker() for how in ("prefix", "model", "default")}

    async def ask(base_url: str, model: str, tag: str) -> str:
        done = await sdk(base_url).chat.completions.create(
            model=model, messages=[{"role": "user", "content": tag}]
        )
        return done.choices[0].message.content

    try:
        async with running_proxy(settings, dsn=capture_dsn, port=0) as p:
            root = p.base_url.removesuffix("/v1")
            assert await ask(f"{root}/b/v1", "sim-chat", tags["prefix"])
            assert await ask(p.base_url, "sim-chatty", tags["model"])
            assert await ask(p.base_url, "sim-chat", tags["default"])
            listed = await sdk(f"{root}/b/v1").models.list()
            assert any(m.id == "sim-chat" for m in listed.data)
            answered_by_other = guarded.snapshot()["calls"]
    finally:
        await guarded.stop()
    assert answered_by_other["chat"] + answered_by_other["chatty"] == 2
    for how, tag in tags.items():
        (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
        upstream = capture_sim.base_url if how == "default" else other
        assert row["url"] == f"{upstream}/chat/completions" and row["status"] == "ok"
        assert row["flags"].get("key_override", False) is (how != "default")
        assert "route-only-key" not in json.dumps(row, default=str)


async def test_a_client_that_leaves_before_the_answer_ends_the_upstream_call(
    proxy, capture_sim, capture_db
):
    capture_sim.inject("timeout", role="chat")  # the upstream holds the call, answering nothing
    before = capture_sim.snapshot()
    tag = marker()
    call = asyncio.create_task(
        sdk(proxy).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": tag}]
        )
    )
    await eventually(
        lambda: _async(capture_sim.snapshot()["calls"]["chat"] > before["calls"]["chat"])
    )
    call.cancel()  # the client gives up before any response header
    with pytest.raises(asyncio.CancelledError):
        await call
    await eventually(lambda: _async(capture_sim.snapshot()["cancelled"] > before["cancelled"]))
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["status"] == "incomplete" and row["error"] == CLIENT_LEFT


UPSTREAM_HEAD = b"HTTP/1.1 200 OK\r\ndate: Mon, 01 Jan 2024 00:00:00 GMT\r\nserver: upstream/1\r\n"


async def test_each_response_has_one_date_and_the_upstreams_server(capture_dsn):
    answer = UPSTREAM_HEAD + b"content-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
    async with raw_server(answering(answer)) as (url, _):
        settings = proxy_settings(url.removesuffix("/x?q=1"), capture_dsn)
        async with (
            running_proxy(settings, dsn=capture_dsn, port=0) as p,
            httpx2.AsyncClient() as http,
        ):
            response = await http.get(f"{p.base_url}/models")
    assert response.headers.get_list("date") == ["Mon, 01 Jan 2024 00:00:00 GMT"]
    assert response.headers.get_list("server") == ["upstream/1"]


async def test_a_response_without_date_or_server_gets_a_date(proxy):
    # The simulator sends neither; the proxy's own responses have none to keep.
    async with httpx2.AsyncClient() as http:
        relayed = await http.get(f"{proxy}/models")
        own = await http.get(proxy.removesuffix("/v1") + "/metrics")
    for response in (relayed, own):
        (date,) = response.headers.get_list("date")
        assert parsedate_to_datetime(date).tzinfo is not None
        assert "server" not in response.headers


async def _async(value: bool) -> bool:
    return value


async def test_a_stream_without_include_usage_is_recorded_with_tokens_the_client_never_sees(
    proxy, capture_db
):
    tag = marker()
    stream = await sdk(proxy).chat.completions.create(
        model="sim-chat", messages=[{"role": "user", "content": f"讲个故事 {tag}"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.choices and c.usage is None for c in chunks)  # as without the proxy
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content ~ '{tag}'")
    assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0
    assert row["flags"]["usage_added"] is True
    assert "stream_options" not in row["client_request_body"]
    assert row["request_body"]["stream_options"] == {"include_usage": True}
    assert '"choices":[]' in row["response_sse"]  # the record keeps what the upstream sent


async def test_usage_is_taken_out_however_the_client_asked_for_encoding(proxy):
    body = {
        "model": "sim-chat",
        "messages": [{"role": "user", "content": f"你好 {marker()}"}],
        "stream": True,
        "stream_options": {"include_usage": False},
    }
    headers = {"authorization": f"Bearer {SECRET}", "accept-encoding": "gzip"}
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.post(f"{proxy}/chat/completions", json=body, headers=headers)
    assert response.status_code == 200 and "content-encoding" not in response.headers
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]" and '"choices":[]' not in response.text
    assert all(json.loads(e[6:])["choices"] for e in events[:-1])


async def test_without_add_usage_a_stream_goes_as_the_client_sent_it(
    capture_sim, capture_dsn, capture_db
):
    settings = proxy_settings(capture_sim.base_url, capture_dsn, proxy_add_usage=False)
    tag = marker()
    async with running_proxy(settings, dsn=capture_dsn, port=0) as running:
        stream = await sdk(running.base_url).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": tag}], stream=True
        )
        assert [chunk async for chunk in stream]
    (row,) = await rows_matching(capture_db, f"request_body.messages.0.content == '{tag}'")
    assert row["prompt_tokens"] is None and "usage_added" not in row["flags"]
    assert row["client_request_body"] is None and "stream_options" not in row["request_body"]
