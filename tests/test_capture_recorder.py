"""The write-behind recorder: rows appear at the start, survive a dead database, and recover."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import httpx2

from lang_agent.capture.record import (
    REDACTED,
    CallRecord,
    redact_body,
    redact_headers,
    redact_url,
)
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.transport import CapturingTransport
from lang_agent.llm.context import calling
from tests.capture_fixtures import (
    capture_db,
    capture_dsn,
    capture_pg,
    capture_sim,
    eventually,
    pg_gate,
    recorder,
    rows_of_thread,
)

__all__ = ["capture_db", "capture_dsn", "capture_pg", "capture_sim", "pg_gate", "recorder"]

HELLO = {"model": "sim-chat", "messages": [{"role": "user", "content": "你好"}]}


def new_thread() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_redaction_covers_key_like_headers_and_query_parameters():
    headers = redact_headers(
        [
            ("Authorization", "Bearer sk-1"),
            ("api-key", "k"),
            ("X-DashScope-Token", "t"),
            ("Cookie", "a=b"),
            ("X-Custom", "secret-but-configured"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("Msh-Context-Cache-Token-Saved", "12"),
        ],
        extra=["x-custom"],
    )
    assert set(headers.values()) == {"[REDACTED]", "100", "12"}
    assert headers["x-ratelimit-remaining-tokens"] == "100"
    assert redact_url("http://h/v1/x?a=1&api_key=sk-2&key=3") == (
        "http://h/v1/x?a=1&api_key=[REDACTED]&key=[REDACTED]"
    )


def test_only_credentials_are_redacted_and_a_session_id_is_not_one():
    headers = redact_headers(
        [
            ("X-Session-Id", "sess-42"),
            ("Idempotency-Key", "idem-1"),
            ("Proxy-Authorization", "Basic eA=="),
            ("X-Auth-Token", "t"),
            ("X-Goog-Api-Key", "g"),
            ("Ocp-Apim-Subscription-Key", "o"),
        ]
    )
    assert headers == {
        "x-session-id": "sess-42",
        "idempotency-key": "idem-1",
        "proxy-authorization": REDACTED,
        "x-auth-token": REDACTED,
        "x-goog-api-key": REDACTED,
        "ocp-apim-subscription-key": REDACTED,
    }


def test_urls_lose_passwords_and_query_secrets_by_the_header_rule():
    assert redact_url(
        "http://user:pa%40ss@h:8/v1?auth=a&password=b&access_token=c&sig=d&session=s&q=1#f"
    ) == (
        "http://user:REDACTED@h:8/v1?auth=[REDACTED]&password=[REDACTED]"
        "&access_token=[REDACTED]&sig=[REDACTED]&session=s&q=1#f"
    )
    # A name alone is a token more often than a name (https://TOKEN@host).
    assert redact_url("https://sk-tok@h/v1?a=1") == "https://REDACTED@h/v1?a=1"
    assert redact_url("https://REDACTED@h/v1") == "https://REDACTED@h/v1"  # stays as it is
    assert redact_url("http://h/v1?next=a@b") == "http://h/v1?next=a@b"  # no userinfo
    # Still a URL: the proxy's log line reads its path (`[REDACTED]` there made urlsplit raise).
    assert urlsplit(redact_url("http://user:pw@h:8/v1/x")).hostname == "h"
    names = "auth passwd x-auth-token api_key apiKey key client_secret x-session-id max_tokens"
    for name in names.split():
        in_header = redact_headers([(name, "v")])[name.lower()] == REDACTED
        in_query = redact_url(f"http://h/v1?{name}=v") == f"http://h/v1?{name}={REDACTED}"
        assert in_header == in_query, name


def test_body_fields_named_like_credentials_are_redacted_at_the_top_level():
    kept = {
        "model": "m",
        "max_tokens": 5,
        "max_completion_tokens": 6,
        "prompt_tokens": 1,
        "prompt_cache_key": "k",
        "stop_token_ids": [2],
        "messages": [{"role": "user", "content": "x", "token": "nested, not a field of ours"}],
        7: "a non-string key",
    }
    secret = {"api_key": "sk-1", "apiKey": "sk-2", "access_token": "t", "client_secret": "s"}
    assert redact_body(kept | secret) == kept | dict.fromkeys(secret, REDACTED)
    # Cut at the size limit, the text is not JSON: pairs are found in it, not inside strings.
    said = '{"messages": [{"content": "say \\"secret\\": \\"no\\""}], '
    cut = said + '"secret": "abc", "api_key": "sk-c'
    assert redact_body(cut) == said + '"secret": "[REDACTED]", "api_key": "[REDACTED]"'
    assert redact_body(None) is None and redact_body([{"api_key": 1}]) == [{"api_key": 1}]


async def test_the_upstream_gets_the_body_and_url_the_table_keeps_redacted(capture_db):
    """The body is redacted as the record becomes a row: force-stream re-sends the record's
    body, which must still hold the client's key."""
    sent: list[tuple[str, dict]] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        sent.append((str(request.url), json.loads(request.content)))
        chunk = {"id": "c-key", "choices": [{"index": 0, "delta": {"content": "好"}}]}
        done = {"id": "c-key", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        sse = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps(done)}\n\ndata: [DONE]\n\n"
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, text=sse)

    recorder = Recorder(dsn=capture_db.dsn, force_stream=True)
    await recorder.start()
    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    thread = new_thread()
    url = "http://user:pw-secret@up/v1/chat/completions?password=q-secret&session=s-1"
    body = HELLO | {"api_key": "sk-body-secret", "max_tokens": 9}
    try:
        async with httpx2.AsyncClient(transport=transport) as http:
            with calling(thread_id=thread):
                response = await http.post(
                    url, json=body, headers={"X-Session-Id": "sess-42", "X-Auth-Token": "t-secret"}
                )
    finally:
        await recorder.close()
    assert response.status_code == 200
    assert sent == [(url, body | {"stream": True, "stream_options": {"include_usage": True}})]
    (row,) = await rows_of_thread(capture_db, thread)
    assert row["url"] == (
        "http://user:REDACTED@up/v1/chat/completions?password=[REDACTED]&session=s-1"
    )
    assert row["request_header"]["x-session-id"] == "sess-42"
    assert row["request_header"]["x-auth-token"] == REDACTED
    assert row["client_request_body"] == body | {"api_key": REDACTED}
    assert row["request_body"]["api_key"] == REDACTED and row["request_body"]["max_tokens"] == 9
    stored = json.dumps(row, default=str)
    assert not any(s in stored for s in ("pw-secret", "q-secret", "sk-body-secret", "t-secret"))


async def _slow_call(recorder, capture_db, *, while_pending=None) -> tuple[dict, dict]:
    """One call through the capture whose pending row is written before it ends: (the pending
    row, the final row). `while_pending(call_id)` runs in between."""
    release = asyncio.Event()

    async def slow_upstream(request: httpx2.Request) -> httpx2.Response:
        await release.wait()
        return httpx2.Response(200, json={"id": "chatcmpl-slow", "choices": []})

    transport = CapturingTransport(httpx2.MockTransport(slow_upstream), recorder=recorder)
    thread = new_thread()
    async with httpx2.AsyncClient(transport=transport) as http:
        with calling(thread_id=thread):
            call = asyncio.create_task(http.post("http://up/v1/chat/completions", json=HELLO))
        (pending,) = await eventually(lambda: rows_of_thread(capture_db, thread))
        if while_pending is not None:
            await while_pending(pending["call_id"])
        release.set()
        await call

    async def finished():
        rows = await rows_of_thread(capture_db, thread)
        return rows if rows and rows[0]["status"] == "ok" else None

    (row,) = await eventually(finished)
    return pending, row


async def test_row_is_pending_while_the_call_runs(recorder, capture_db):
    pending, row = await _slow_call(recorder, capture_db)
    assert pending["status"] == "pending" and pending["finished_at"] is None
    assert row["id"] == pending["id"] and row["chatcmpl_id"] == "chatcmpl-slow"
    assert row["request_body"] == HELLO and row["request_header"]["content-type"]


async def test_a_final_row_leaves_out_the_request_its_pending_row_holds(recorder, capture_db):
    # A long thread's request is tens of kilobytes: written once, with the pending row. The
    # stand-in below shows the final row did not write it again.
    async def stand_in(call_id: uuid.UUID) -> None:
        async with capture_db.connection() as conn:
            await conn.execute(
                "UPDATE llm_calls SET request_body = '{\"kept\": true}' WHERE call_id = %s",
                (call_id,),
            )

    _, row = await _slow_call(recorder, capture_db, while_pending=stand_in)
    assert row["request_body"] == {"kept": True}
    assert row["request_header"]["content-type"] == "application/json"


async def test_a_nul_byte_does_not_sink_the_batch(recorder, capture_db):
    def upstream(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json={"id": "c-nul", "choices": [], "note": "a\u0000b"})

    transport = CapturingTransport(httpx2.MockTransport(upstream), recorder=recorder)
    thread = new_thread()
    async with httpx2.AsyncClient(transport=transport) as http:
        with calling(thread_id=thread):
            await http.post("http://up/v1/chat/completions", json=HELLO | {"x": "\u0000"})
    await recorder.flush()
    (row,) = await rows_of_thread(capture_db, thread)
    assert row["status"] == "ok" and row["response_body"]["note"] == "a\ufffdb"


async def test_a_batch_keeps_queue_order_and_loses_only_the_row_postgres_refuses(
    recorder, capture_db
):
    thread = new_thread()
    records = [_record(thread, f"m{i}") for i in range(6)]
    records[2].status_code = 2**40  # over the integer column's range: refused
    records[4].request_body = {"half": "\ud83d", 7: "non-string key"}  # stored as U+FFFD
    dropped = recorder.dropped
    for record in records:
        record.status = "ok"
        recorder.finish(record)  # one batch: all six are queued before the writer wakes
    await recorder.flush()
    rows = await rows_of_thread(capture_db, thread)
    assert [row["model"] for row in rows] == ["m0", "m1", "m3", "m4", "m5"]
    assert [row["id"] for row in rows] == sorted(row["id"] for row in rows)
    assert rows[3]["request_body"] == {"half": "\ufffd", "7": "non-string key"}
    assert rows[0]["event_offsets_ms"] == [1.5, 2.25] and rows[0]["tags"] == ["a"]
    assert recorder.dropped == dropped + 1


async def test_written_counts_calls_not_their_pending_and_final_rows(recorder, capture_db):
    thread = new_thread()
    slow, quick = _record(thread, "slow"), _record(thread, "quick")
    written = recorder.written
    recorder.begin(slow)
    await recorder.flush()  # the slow call's pending row is written before it ends
    for record in (slow, quick):
        record.status = "ok"
        if record is quick:
            recorder.begin(record)  # its pending row shares a batch with its final one
        recorder.finish(record)
    await recorder.flush()
    assert len(await rows_of_thread(capture_db, thread)) == 2
    assert recorder.written == written + 2  # it said 4: pending rows counted, even one skipped


def _record(thread: str, model: str) -> CallRecord:
    record = CallRecord(
        method="POST",
        url="http://up/v1/chat/completions",
        request_header={"content-type": "application/json"},
        created_at=datetime.now(UTC),
    )
    record.thread_id, record.model, record.status_code = thread, model, 200
    record.event_offsets_ms, record.tags = [1.5, 2.25], ["a"]
    return record


async def test_burst_of_200_calls_with_the_database_down(capture_sim, pg_gate):
    await pg_gate.shut()
    recorder = Recorder(dsn=pg_gate.dsn(), queue_size=50, batch_size=20, connect_timeout_s=1)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    limit = asyncio.Semaphore(50)

    async def one(http: httpx2.AsyncClient, i: int) -> str:
        async with limit:
            body = HELLO | {"messages": [{"role": "user", "content": f"第{i}个问题"}]}
            response = await http.post("/chat/completions", json=body)
            response.raise_for_status()
            return response.json()["choices"][0]["message"]["content"]

    async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as http:
        answers = await asyncio.gather(*(one(http, i) for i in range(200)))
    assert len(answers) == 200 and all(answers)
    await recorder.close(drain_timeout_s=0.5)
    assert recorder.written == 0
    assert recorder.dropped == 200  # calls, whatever became of their pending rows
    metrics = recorder.metrics.render()
    assert "lang_agent_capture_rows_dropped_total 200" in metrics
    assert 'lang_agent_llm_calls_total{model="sim-chat",status="ok"} 200' in metrics


async def test_calls_made_while_the_database_is_down_are_written_when_it_is_back(
    capture_db, capture_sim, pg_gate, caplog
):
    """The writer keeps its batch through an outage (up to OUTAGE_WAIT_S) and the queue holds
    the rest: a database restart loses no captured call. It used to drop every batch it could
    not write."""
    recorder = Recorder(dsn=pg_gate.dsn(), queue_size=1000, batch_size=50, connect_timeout_s=1)
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    during, after = new_thread(), new_thread()
    async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as http:
        await pg_gate.shut()
        with calling(thread_id=during):
            for _ in range(5):
                (await http.post("/chat/completions", json=HELLO)).raise_for_status()
        # The writer has met the outage (it says so) before the database comes back.
        await eventually(
            lambda: _true(any("cannot reach the database" in r.message for r in caplog.records)),
            within_s=15,
        )
        await pg_gate.open()
        with calling(thread_id=after):
            (await http.post("/chat/completions", json=HELLO)).raise_for_status()

        async def written(thread_id: str, calls: int):
            rows = await rows_of_thread(capture_db, thread_id)
            done = [row for row in rows if row["status"] == "ok"]
            return done if len(done) == calls else None

        await eventually(lambda: written(during, 5), within_s=20)
        await eventually(lambda: written(after, 1), within_s=20)
    await recorder.close()
    assert recorder.dropped == 0


async def _true(value: bool) -> bool:
    return value


async def test_an_outage_holds_no_more_bodies_than_the_queue_budget(
    capture_db, capture_sim, pg_gate
):
    """Rows carry whole request bodies: with the database down, the queue keeps rows up to
    `queue_bytes` of bodies and drops (and counts) the rest, however many rows it may hold.
    Bounded by rows alone, 5,000 calls of a long thread held half a gigabyte."""
    budget = 200_000
    recorder = Recorder(
        dsn=pg_gate.dsn(), queue_size=1000, queue_bytes=budget, batch_size=50, connect_timeout_s=1
    )
    await recorder.start()
    transport = CapturingTransport(httpx2.AsyncHTTPTransport(), recorder=recorder)
    thread = new_thread()
    long_thread = HELLO | {"messages": [{"role": "user", "content": "很长的对话。" * 2000}]}
    async with httpx2.AsyncClient(transport=transport, base_url=capture_sim.base_url) as http:
        await pg_gate.shut()
        with calling(thread_id=thread):
            for _ in range(10):
                (await http.post("/chat/completions", json=long_thread)).raise_for_status()
                assert recorder.queued_bytes <= budget
        kept = 10 - recorder.dropped  # calls whose final row is queued
        assert 0 < kept < 10
        assert f"lang_agent_capture_queue_bytes {recorder.queued_bytes}\n" in (
            recorder.metrics.render()
        )
        await pg_gate.open()
        await recorder.flush(timeout_s=30)
    assert (recorder.written, recorder.queued_bytes) == (kept, 0)
    rows = await rows_of_thread(capture_db, thread)
    assert (
        rows[0]["status"] == "ok"
        and len(rows[0]["request_body"]["messages"][0]["content"]) == 12000
    )
    await recorder.close()
