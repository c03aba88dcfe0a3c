"""Exports and replay: case JSON, curl commands, no secret anywhere, recordings served again."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import uuid

import httpx2
import openai
import pytest

from lang_agent.capture.export import case_json, curl_command, render_call, write_cases
from lang_agent.capture.query import CallFilter, get_calls
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.replay import ReplayCase, ReplayServer
from lang_agent.capture.transport import CapturingTransport
from lang_agent.llm.context import calling
from lang_agent.llm.sim import Simulator
from lang_agent.llm.sim_profile import Latency, SimProfile
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg, capture_sim

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim"]

SECRET = "sk-export-secret-987654321"
QUESTION = "it's 5 o'clock, what's \"up\"?"


@pytest.fixture(scope="module")
async def captured(capture_db, capture_sim) -> dict:
    """One force-streamed call made with a key in two headers, read back from the table."""
    recorder = Recorder(dsn=capture_db.dsn, force_stream=True)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    headers = {"Authorization": f"Bearer {SECRET}", "api-key": SECRET, "X-Trace": "abc"}
    thread = f"e-{uuid.uuid4().hex[:8]}"
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": QUESTION}]}
    async with httpx2.AsyncClient(transport=transport, headers=headers) as http:
        with calling(thread_id=thread, node="chat"):
            response = await http.post(f"{capture_sim.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    await recorder.close()
    async with capture_db.connection() as conn:
        (row,) = await get_calls(conn, CallFilter(thread_id=thread))
    return row


async def test_case_json_envelope(captured):
    case = case_json(captured, category="badcase", tags=["quote", "voice"])
    assert set(case) == {"metadata", "request", "response", "error", "category", "tags"}
    assert case["category"] == "badcase" and case["tags"] == ["quote", "voice"]
    assert case["metadata"]["chatcmpl_id"].startswith("chatcmpl-")
    assert all(isinstance(v, str) for k, v in case["metadata"].items() if k != "flags")
    assert case["request"]["body"]["messages"][0]["content"] == QUESTION
    assert "stream" not in case["request"]["body"]  # what the client sent ...
    assert case["request"]["upstream_body"]["stream"] is True  # ... and what went upstream
    assert case["response"]["status"] == "200 OK"
    assert case["response"]["body"]["object"] == "chat.completion"
    assert "data: [DONE]" in case["response"]["sse"]
    assert "x-trace: abc\r\n" in case["request"]["header"]


async def test_written_case_files_hold_no_secret(captured, tmp_path):
    (path,) = write_cases([captured], directory=tmp_path / "cases", category="goodcase")
    assert path.name == f"{captured['chatcmpl_id']}.json"
    text = path.read_text(encoding="utf-8")
    assert SECRET not in text and "[REDACTED]" in text
    assert json.loads(text)["category"] == "goodcase"
    assert SECRET not in render_call(captured, sections=["metadata", "request_header", "events"])


async def test_curl_replays_what_the_client_sent(captured, capture_sim):
    command = curl_command(captured)
    assert SECRET not in command
    assert '-H "Authorization: Bearer $API_KEY"' in command
    assert '-H "api-key: $API_KEY"' in command
    assert "content-length" not in command.lower()
    args = shlex.split(command.replace("\\\n", " "))
    body = json.loads(args[args.index("-d") + 1])
    assert body["messages"][0]["content"] == QUESTION and "stream" not in body
    if shutil.which("curl") is None:
        pytest.skip("no curl binary to run the command")
    process = await asyncio.create_subprocess_shell(
        command + " --silent --max-time 10",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "API_KEY": "replay-key"},
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    assert json.loads(out)["object"] == "chat.completion"


async def record_stream(db, base_url: str, content: str) -> dict:
    recorder = Recorder(dsn=db.dsn)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    thread = f"r-{uuid.uuid4().hex[:8]}"
    body = {"model": "sim-chat", "stream": True, "messages": [{"role": "user", "content": content}]}
    async with httpx2.AsyncClient(transport=transport, base_url=base_url) as http:
        with calling(thread_id=thread):
            try:
                async with http.stream("POST", "/chat/completions", json=body) as response:
                    await response.aread()
            except httpx2.RemoteProtocolError:
                pass  # the cut case
    await recorder.close()
    async with db.connection() as conn:
        (row,) = await get_calls(conn, CallFilter(thread_id=thread))
    return row


async def test_replay_serves_the_recording_with_its_timing(capture_db):
    paced = Simulator(profile=SimProfile(chat=Latency(ttft_ms=30, tokens_per_s=200)))
    base_url = await paced.start(host="127.0.0.1", port=0)
    try:
        row = await record_stream(capture_db, base_url, "给我讲一个关于猫的故事")
        paced.inject("cut", role="chat")
        cut = await record_stream(capture_db, base_url, "再讲一个")
    finally:
        await paced.stop()
    case = ReplayCase.from_row(row)
    offsets = [at for at, _ in case.events]
    assert offsets == sorted(offsets) and offsets[-1] > offsets[0]  # timing kept per event
    server = ReplayServer(case, speed=10)
    url = await server.start()
    try:
        client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0)
        stream = await client.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "x"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        whole = await client.chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "x"}]
        )
    finally:
        await server.stop()
    original = row["response_body"]["choices"][0]["message"]["content"]
    assert text == original and whole.choices[0].message.content == original

    replay_cut = ReplayServer(ReplayCase.from_row(cut))
    url = await replay_cut.start()
    try:
        async with httpx2.AsyncClient() as http:
            raw = (await http.post(f"{url}/chat/completions", json={"stream": True})).text
    finally:
        await replay_cut.stop()
    assert cut["status"] == "incomplete" and raw == cut["response_sse"]
    assert "[DONE]" not in raw
