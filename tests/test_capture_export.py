"""Exports and replay: case JSON, curl commands, no secret anywhere, recordings served again."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import uuid

import httpx2
import openai
import pytest

from lang_agent.capture.commands import CallsError, export_command
from lang_agent.capture.export import case_json, curl_command, render_call, write_cases
from lang_agent.capture.query import CallFilter, get_calls
from lang_agent.capture.record import REDACTED
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.replay import ReplayCase, ReplayServer
from lang_agent.capture.transport import CapturingTransport
from lang_agent.llm.context import calling
from lang_agent.llm.sim import Simulator
from lang_agent.llm.sim_profile import Latency, SimProfile
from lang_agent.settings import Settings
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg, capture_sim
from tests.support import Handler, raw_server

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


def _row(**fields) -> dict:
    return {
        "id": 1,
        "method": "POST",
        "url": "http://up/v1/chat/completions",
        "request_header": {},
        "request_body": {"model": "m"},
        "flags": {},
    } | fields


def test_curl_gives_the_key_only_to_the_headers_that_carried_it():
    headers = {
        "authorization": REDACTED,
        "x-goog-api-key": REDACTED,
        "x-session-id": "sess-42",
        "x-auth-token": REDACTED,
        "proxy-authorization": REDACTED,
    }
    command = curl_command(_row(request_header=headers))
    assert '-H "Authorization: Bearer $API_KEY"' in command
    assert '-H "x-goog-api-key: $API_KEY"' in command
    assert "-H 'x-session-id: sess-42'" in command
    assert '-H "x-auth-token: $REDACTED_X_AUTH_TOKEN"' in command
    assert '-H "proxy-authorization: $REDACTED_PROXY_AUTHORIZATION"' in command
    assert command.count("$API_KEY") == 2
    # A row stored when session headers were redacted: the value is lost, not filled with the key.
    old = curl_command(_row(request_header={"authorization": REDACTED, "x-session-id": REDACTED}))
    assert '-H "x-session-id: $REDACTED_X_SESSION_ID"' in old and old.count("$API_KEY") == 1


def test_curl_makes_redacted_url_parts_variables_the_shell_expands():
    url = "http://u:[REDACTED]@up/v1/x?api_key=[REDACTED]&password=[REDACTED]&q=a'b\"$c`d"
    command = curl_command(_row(url=url))
    assert "?api_key=$API_KEY&password=$REDACTED_PASSWORD&" in command
    word = command.split(" \\\n")[0].removeprefix("curl -X POST ")
    env = {"API_KEY": "k1", "REDACTED_PASSWORD": "p1", "REDACTED_URL_PASSWORD": "u1"}
    shell = subprocess.run(["sh", "-c", f"printf %s {word}"], env=env, capture_output=True)
    assert shell.stdout.decode() == "http://u:u1@up/v1/x?api_key=k1&password=p1&q=a'b\"$c`d"
    alone = curl_command(_row(url="https://REDACTED@up/v1/x")).split(" \\\n")[0]
    assert alone.endswith('"https://$REDACTED_URL_USER@up/v1/x"')


def test_export_redacts_a_row_stored_before_the_rules_did():
    row = _row(
        url="http://user:pw-secret@up/v1/chat/completions?password=q-secret",
        request_body={"model": "m", "api_key": "sk-body-secret"},
    )
    texts = [
        curl_command(row),
        json.dumps(case_json(row)),
        render_call(row, sections=["metadata", "request_body"]),
    ]
    assert not any(s in t for t in texts for s in ("pw-secret", "q-secret", "sk-body-secret"))
    token = _row(url="https://sk-user-secret@up/v1/chat/completions")
    assert not any(
        "sk-user-secret" in t for t in (curl_command(token), json.dumps(case_json(token)))
    )


def test_curl_refuses_a_body_cut_at_the_size_limit():
    with pytest.raises(ValueError, match="cut to CAPTURE_MAX_BODY_BYTES"):
        curl_command(_row(request_body='{"model": "m", "mess', flags={"request_truncated": 90}))


def _echo(seen: list[tuple[str, dict[str, str], bytes]]) -> Handler:
    """Answers `{}` and keeps each request's target, headers and body."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, *fields = (await reader.readuntil(b"\r\n\r\n"))[:-4].decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (f.split(":", 1) for f in fields)}
        body = await reader.readexactly(int(headers.get("content-length", 0)))
        seen.append((line.split(" ")[1], headers, body))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: 2\r\nconnection: close\r\n\r\n{}"
        )
        await writer.drain()

    return handler


async def test_a_replayed_curl_sends_the_key_only_where_the_client_did(capture_db):
    seen: list[tuple[str, dict[str, str], bytes]] = []
    recorder = Recorder(dsn=capture_db.dsn)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    headers = {
        "Authorization": f"Bearer {SECRET}",
        "X-Session-Id": "sess-42",
        "X-Auth-Token": "t-1",
    }
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": QUESTION}]}
    thread = f"k-{uuid.uuid4().hex[:8]}"
    async with raw_server(_echo(seen)) as (url, _):
        target = f"/v1/chat/completions?api_key={SECRET}&password=pw-1&q=1"
        try:
            async with httpx2.AsyncClient(transport=transport, headers=headers) as http:
                with calling(thread_id=thread):
                    await http.post(url.split("/v1")[0] + target, json=body | {"api_key": SECRET})
        finally:
            await recorder.close()
        async with capture_db.connection() as conn:
            (row,) = await get_calls(conn, CallFilter(thread_id=thread))
        command = curl_command(row)
        for secret in (SECRET, "pw-1", "t-1"):
            assert secret not in json.dumps(row, default=str) and secret not in command
        if shutil.which("curl") is None:
            pytest.skip("no curl binary to run the command")
        env = {"API_KEY": "replay-key", "REDACTED_PASSWORD": "pw-2", "REDACTED_X_AUTH_TOKEN": "t-2"}
        process = await asyncio.create_subprocess_shell(
            command + " --silent --max-time 10", env={**os.environ, **env}
        )
        assert await process.wait() == 0
    (_, sent, _), (replay_target, replayed, replay_body) = seen
    assert replay_target == "/v1/chat/completions?api_key=replay-key&password=pw-2&q=1"
    assert replayed["x-session-id"] == sent["x-session-id"] == "sess-42"
    assert replayed["x-auth-token"] == "t-2"
    assert [name for name, v in replayed.items() if "replay-key" in v] == ["authorization"]
    assert json.loads(replay_body) == body | {"api_key": REDACTED}


async def test_a_call_whose_body_was_cut_exports_no_curl(capture_db, capture_sim):
    small = Recorder(dsn=capture_db.dsn, max_body_bytes=40)
    await small.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=small)
    thread = f"c-{uuid.uuid4().hex[:8]}"
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": QUESTION}]}
    try:
        async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as http:
            with calling(thread_id=thread):
                assert (await http.post("/chat/completions", json=body)).status_code == 200
    finally:
        await small.close()
    async with capture_db.connection() as conn:
        (row,) = await get_calls(conn, CallFilter(thread_id=thread))
    assert row["flags"]["request_truncated"] > 40
    with pytest.raises(ValueError, match="cut to CAPTURE_MAX_BODY_BYTES"):
        curl_command(row)
    # `calls export --curl` says so in one line (CallsError), not with a traceback.
    settings = Settings(_env_file=None, conn_str=capture_db.dsn)
    with pytest.raises(CallsError, match="cut to CAPTURE_MAX_BODY_BYTES"):
        await export_command(settings, filters=CallFilter(thread_id=thread), curl=True)


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
    got = bytearray()
    try:
        async with httpx2.AsyncClient() as http:
            # The recording, then the connection breaks off as the original's did.
            with pytest.raises(httpx2.RemoteProtocolError):
                async with http.stream(
                    "POST", f"{url}/chat/completions", json={"stream": True}
                ) as response:
                    async for chunk in response.aiter_raw():
                        got += chunk
    finally:
        await replay_cut.stop()
    assert cut["status"] == "incomplete" and got.decode() == cut["response_sse"]
    assert "[DONE]" not in got.decode()
