"""Upstream faults, injected by the simulator, seen through both front ends: retries with backoff,
the fallback model, clean protocol errors before and after the first token, cut and endless
streams, a client that hangs up mid-stream, and the turns each outcome adds on /metrics."""

from __future__ import annotations

import itertools
import logging
import time
import uuid

import dashscope
import httpx2
import openai
import psycopg
import pytest
from dashscope import Application
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from tests.conftest import TEST_KEY
from tests.support import ask, ds_thread, metric_series, set_latency, wait_until

logger = logging.getLogger(__name__)

FALLBACK = "sim:sim-fallback"
SPOKEN_FALLBACK = "抱歉，我这边出了点问题，请稍后再试。"
CALLS_SQL = """
SELECT node, model, status, status_code, error, finish_reason, flags, created_at
FROM llm_calls WHERE thread_id = %s ORDER BY id
"""
TURNS_SQL = "SELECT status, error_code FROM turns WHERE thread_id = %s ORDER BY started_at"
LEASE_SQL = "SELECT count(*) FROM thread_leases WHERE thread_id = %s"
FAILED_TURN_SQL = """SELECT m.role, m.content, m.is_fallback
FROM messages m JOIN turns t USING (turn_id)
WHERE t.thread_id = %s AND t.status = 'failed' ORDER BY m.seq"""
LOGGED_ANSWERS_SQL = """SELECT m.content FROM messages m JOIN turns t USING (turn_id)
WHERE t.thread_id = %s AND t.status = %s AND m.role = 'assistant' AND NOT m.is_filler
ORDER BY m.seq"""


@pytest.fixture(autouse=True)
def clean_simulator(simulator):
    """A fault or a latency left behind must not leak into the next test."""
    simulator.clear_faults()
    yield
    simulator.clear_faults()
    httpx2.post(f"{simulator.base_url.removesuffix('/v1')}/_sim/profile", json={"profile": "fast"})


def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0, timeout=30)


def stream_text(client: openai.OpenAI, text: str, thread_id: str) -> tuple[str, str | None]:
    """The streamed answer and its finish_reason; raises what the SDK raises."""
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": text}],
        stream=True,
        extra_body={"thread_id": thread_id},
    )
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(pieces), finish


def alibl(server, text: str, session_id: str) -> tuple[str, list]:
    """Call and consume as xiaozhi's AliBL does: cumulative text, non-200 items skipped."""
    dashscope.base_http_api_url = f"{server.url}/api/"
    items = list(
        Application.call(
            api_key=TEST_KEY,
            app_id="lang-agent",
            session_id=session_id,
            messages=[{"role": "user", "content": text}],
            stream=True,
        )
    )
    texts = [i.output.text for i in items if i.status_code == 200]
    return (texts[-1] if texts else ""), items


def captured(pg_dsn: str, thread_id: str, *, at_least: int) -> list[dict]:
    """The thread's captured model calls, once at least that many are written and finished."""

    def rows():
        with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
            found = conn.execute(CALLS_SQL, (thread_id,)).fetchall()
        done = [r for r in found if r["status"] != "pending"]
        return found if len(found) >= at_least and len(done) == len(found) else None

    return wait_until(rows)


def turn_statuses(pg_dsn: str, thread_id: str, count: int) -> list[tuple]:
    def rows():
        with psycopg.connect(pg_dsn) as conn:
            found = conn.execute(TURNS_SQL, (thread_id,)).fetchall()
        return found if len(found) >= count else None

    return wait_until(rows)


def logged_answers(pg_dsn: str, thread_id: str, *, status: str) -> list[str]:
    """The answers the log holds for the thread's turns of `status`."""
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(LOGGED_ANSWERS_SQL, (thread_id, status)).fetchall()
    return [content for (content,) in rows]


def failed_turn_log(pg_dsn: str, thread_id: str) -> list[tuple[str, str, bool]]:
    """The messages logged for the thread's failed turn: (role, content, is_fallback)."""

    def rows():
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(FAILED_TURN_SQL, (thread_id,)).fetchall() or None

    return wait_until(rows)


def well_formed_usage(item) -> list[str]:
    """The models a result frame's usage names, once checked to be DashScope's shape: a list of
    {model_id, input_tokens, output_tokens}, as the SDK's ApplicationUsage reads it."""
    models = item.usage.models
    assert isinstance(models, list)
    for model in models:
        assert isinstance(model.model_id, str)
        assert isinstance(model.input_tokens, int) and isinstance(model.output_tokens, int)
    return [model.model_id for model in models]


def memory(pg_dsn: str, thread_id: str) -> list[str]:
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
    if state is None:
        return []
    return [str(m.content) for m in state.checkpoint["channel_values"].get("messages", [])]


# ---- before the first token: retries, fallback, clean errors ----------------------------------


@pytest.mark.parametrize("fault", ["429", "500", "timeout", "reset"])
def test_a_fault_before_the_first_token_is_retried(live_server, simulator, pg_dsn, fault):
    server = live_server(llm_retries=1, llm_timeout_s=0.5)
    thread_id = f"retry-{uuid.uuid4().hex[:10]}"
    simulator.inject(fault, role="chat")
    assert ask(openai_client(server), "你好呀", thread_id).startswith("好的，")
    chat = [r for r in captured(pg_dsn, thread_id, at_least=3) if r["node"] == "chat_model_call"]
    assert [r["status"] for r in chat][-1] == "ok" and len(chat) == 2
    assert chat[0]["status"] in ("http_error", "error", "incomplete")


def test_retries_back_off_and_stop_at_the_limit(live_server, simulator, pg_dsn):
    server = live_server(llm_retries=2)
    thread_id = f"limit-{uuid.uuid4().hex[:10]}"
    simulator.inject("500", role="chat", count=3)
    with pytest.raises(openai.APIStatusError) as failure:
        ask(openai_client(server), "你好", thread_id)
    assert failure.value.status_code == 502
    assert failure.value.body["code"] == "upstream_status"
    chat = [r for r in captured(pg_dsn, thread_id, at_least=4) if r["node"] == "chat_model_call"]
    assert [r["status_code"] for r in chat] == [500, 500, 500]  # 1 try + 2 retries, no more
    gaps = [
        (b["created_at"] - a["created_at"]).total_seconds() for a, b in itertools.pairwise(chat)
    ]
    assert all(gap >= 0.3 for gap in gaps), gaps  # the SDK waits ≥ 0.375 s, then doubles
    assert simulator.snapshot()["queued_faults"] == 0


@pytest.mark.parametrize("role", ["router", "chat"])
def test_the_fallback_model_answers_when_retries_are_spent(live_server, simulator, pg_dsn, role):
    server = live_server(llm_retries=1, fallback_model=FALLBACK)
    thread_id = f"fallback-{uuid.uuid4().hex[:10]}"
    simulator.inject("429", role=role, count=2)
    assert "小明" in ask(openai_client(server), "我叫小明", thread_id)
    node = {"router": "router_call", "chat": "chat_model_call"}[role]
    calls = [r for r in captured(pg_dsn, thread_id, at_least=4) if r["node"] == node]
    assert [(r["model"], r["status_code"]) for r in calls] == [
        (f"sim-{role}", 429),
        (f"sim-{role}", 429),
        ("sim-fallback", 200),
    ]
    assert memory(pg_dsn, thread_id)[0] == "我叫小明"  # the fallback's turn is remembered


def test_the_fallback_model_also_serves_dashscope(live_server, simulator, pg_dsn):
    server = live_server(llm_retries=0, fallback_model=FALLBACK)
    session = f"fallback-ds-{uuid.uuid4().hex[:8]}"
    simulator.inject("reset", role="chat")
    spoken, items = alibl(server, "你好", session)
    assert all(item.status_code == 200 for item in items)
    assert spoken.startswith("好的，") and SPOKEN_FALLBACK not in spoken
    models = [r["model"] for r in captured(pg_dsn, ds_thread(session), at_least=3)]
    assert "sim-fallback" in models


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ("429", 502, "upstream_status"),
        ("500", 502, "upstream_status"),
        ("timeout", 504, "upstream_timeout"),
        ("reset", 502, "upstream_error"),
    ],
)
def test_spent_retries_without_fallback_are_a_clean_openai_error(
    live_server, simulator, fault, status, code
):
    server = live_server(llm_retries=0, llm_timeout_s=0.5)
    client = openai_client(server)
    thread_id = f"err-{uuid.uuid4().hex[:10]}"
    simulator.inject(fault, role="router")
    with pytest.raises(openai.APIStatusError) as failure:
        ask(client, "你好", thread_id)
    assert failure.value.status_code == status
    assert failure.value.body == {
        "message": failure.value.body["message"],
        "type": "upstream_error",
        "param": None,
        "code": code,
    }
    assert "Traceback" not in failure.value.body["message"]
    # A stream fails the same way: the error comes before any chunk was sent. So it does when
    # the chat model fails before its first word (it came as a 200 with a role chunk, then an
    # error chunk: no status for the SDK's APIError, `except APIStatusError` missed it).
    for role in ("router", "chat"):
        simulator.inject(fault, role=role)
        with pytest.raises(openai.APIStatusError) as failure:
            stream_text(client, "你好", thread_id)
        assert (failure.value.status_code, failure.value.body["code"]) == (status, code)
    assert ask(client, "你好", thread_id)  # the thread still works


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("429", 502, "InternalError"), ("timeout", 504, "RequestTimeOut"), ("reset", 502, None)],
)
def test_spent_retries_are_spoken_then_reported_on_dashscope(
    live_server, simulator, fault, status, code
):
    server = live_server(llm_retries=0, llm_timeout_s=0.5)
    simulator.inject(fault, role="chat")
    spoken, items = alibl(server, "你好", f"ds-err-{uuid.uuid4().hex[:8]}")
    assert spoken == SPOKEN_FALLBACK
    assert items[-2].output.finish_reason == "stop"
    # The frame that ends the speech carries the turn's usage, as a finished turn's does: the
    # router answered before the chat model failed (it was `{}`, so `usage.models` was None).
    assert "sim-router" in well_formed_usage(items[-2])
    assert items[-1].status_code == status and items[-1].code == (code or "InternalError")


def test_the_fallback_is_logged_when_it_was_spoken(live_server, simulator, pg_dsn):
    """An operator reading a failed turn sees what the speaker said, marked as the fallback;
    a whole answer (no stream) is an error response, nothing said, so nothing is logged."""
    server = live_server(llm_retries=0)
    session = f"ds-said-{uuid.uuid4().hex[:8]}"
    simulator.inject("429", role="chat")
    spoken, _ = alibl(server, "你好", session)
    assert spoken == SPOKEN_FALLBACK
    assert failed_turn_log(pg_dsn, ds_thread(session)) == [
        ("user", "你好", False),
        ("assistant", SPOKEN_FALLBACK, True),
    ]
    # A failed turn is not remembered, nor its fallback.
    assert memory(pg_dsn, ds_thread(session)) == []

    session = f"ds-whole-{uuid.uuid4().hex[:8]}"
    simulator.inject("429", role="chat")
    reply = Application.call(
        api_key=TEST_KEY,
        app_id="lang-agent",
        session_id=session,
        messages=[{"role": "user", "content": "你好"}],
    )
    assert reply.status_code == 502
    assert failed_turn_log(pg_dsn, ds_thread(session)) == [("user", "你好", False)]


# ---- after the first token: error frames, never a hang, never a second answer --------------


def test_a_cut_after_the_first_token_ends_the_openai_stream_with_an_error(
    live_server, simulator, pg_dsn
):
    server = live_server(fallback_model=FALLBACK, llm_retries=2)
    client = openai_client(server)
    thread_id = f"cut-{uuid.uuid4().hex[:10]}"
    ask(client, "我叫小明", thread_id)
    simulator.inject("cut", role="chat")
    started = time.monotonic()
    with pytest.raises(openai.APIError) as failure:
        stream_text(client, "我叫小红", thread_id)
    assert time.monotonic() - started < 10  # ended, not hung until a timeout
    assert failure.value.body["code"] == "upstream_error"
    rows = captured(pg_dsn, thread_id, at_least=4)
    chat = [r for r in rows if r["node"] == "chat_model_call"]
    # Spoken text is never answered again: no retry, no fallback after the first token.
    assert [r["status"] for r in chat[-1:]] == ["incomplete"]
    assert not any(r["model"] == "sim-fallback" for r in rows)
    assert "stream" in (chat[-1]["error"] or "") or chat[-1]["error"]
    assert [s for s, _ in turn_statuses(pg_dsn, thread_id, 2)] == ["ok", "failed"]
    assert memory(pg_dsn, thread_id)[0] == "我叫小明" and len(memory(pg_dsn, thread_id)) == 2
    assert "小明" in ask(client, "我叫什么名字", thread_id)


def test_a_cut_after_the_first_token_is_spoken_then_reported_on_dashscope(
    live_server, simulator, pg_dsn
):
    server = live_server(fallback_model=FALLBACK)
    session = f"ds-cut-{uuid.uuid4().hex[:8]}"
    alibl(server, "我叫小明", session)
    remembered = memory(pg_dsn, ds_thread(session))
    simulator.inject("cut", role="chat")
    spoken, items = alibl(server, "hello there my friend", session)
    assert spoken.endswith(SPOKEN_FALLBACK) and len(spoken) > len(SPOKEN_FALLBACK)
    # A sentence of its own: a segmenting TTS cuts the cut answer off before it.
    cut = spoken[: -len(SPOKEN_FALLBACK)]
    assert cut.endswith("。")
    assert items[-1].status_code == 502 and items[-1].code == "InternalError"
    texts = [i.output.text for i in items if i.status_code == 200]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # cumulative, never retracted
    assert "sim-router" in well_formed_usage(items[-2])
    # The log holds what the speaker said: the cut answer, then the fallback, marked as such
    # (it held the cut answer alone); memory holds neither.
    assert failed_turn_log(pg_dsn, ds_thread(session)) == [
        ("user", "hello there my friend", False),
        ("assistant", cut.removesuffix("。"), False),
        ("assistant", SPOKEN_FALLBACK, True),
    ]
    assert memory(pg_dsn, ds_thread(session)) == remembered and len(remembered) == 2


# ---- endless repetition -----------------------------------------------------------------------


def test_a_loop_is_cut_by_the_repeat_detector_and_captured(live_server, simulator, pg_dsn):
    server = live_server(detect_repeat=True)
    thread_id = f"loop-{uuid.uuid4().hex[:10]}"
    simulator.inject("loop", role="chat")
    text, finish = stream_text(openai_client(server), "讲个故事", thread_id)
    assert finish == "stop" and text
    chat = [r for r in captured(pg_dsn, thread_id, at_least=2) if r["node"] == "chat_model_call"]
    assert chat[0]["status"] == "stopped" and chat[0]["finish_reason"] == "repeat"
    assert chat[0]["flags"]["repeat"]["cut"] is True
    assert [s for s, _ in turn_statuses(pg_dsn, thread_id, 1)] == ["ok"]


def test_a_loop_without_the_detector_ends_at_max_tokens_and_is_flagged(
    live_server, simulator, pg_dsn
):
    server = live_server(max_tokens=300)
    thread_id = f"loop-len-{uuid.uuid4().hex[:10]}"
    simulator.inject("loop", role="chat")
    text, finish = stream_text(openai_client(server), "讲个故事", thread_id)
    assert finish == "length" and text
    chat = [r for r in captured(pg_dsn, thread_id, at_least=2) if r["node"] == "chat_model_call"]
    assert chat[0]["finish_reason"] == "length" and "repeat" in chat[0]["flags"]


def test_a_slow_endless_stream_is_ended_by_the_turn_budget(live_server, simulator):
    server = live_server(turn_timeout_s=1.5)
    set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=40)
    simulator.inject("loop", role="chat")
    spoken, items = alibl(server, "讲个故事", f"ds-budget-{uuid.uuid4().hex[:8]}")
    assert spoken.endswith(SPOKEN_FALLBACK)
    assert items[-1].status_code == 504 and items[-1].code == "RequestTimeOut"


# ---- the client hangs up -----------------------------------------------------------------------


def _hang_up_after(chunks, count: int) -> list:
    taken = []
    for number, chunk in enumerate(chunks):
        if number == count:
            break
        taken.append(chunk)
    return taken


def _cancelled_within(simulator, before: int) -> float:
    started = time.monotonic()
    wait_until(lambda: simulator.snapshot()["cancelled"] > before, within_s=5, every_s=0.01)
    return time.monotonic() - started


def _thread_is_consistent(client, pg_dsn: str, thread_id: str) -> None:
    def released():
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(LEASE_SQL, (thread_id,)).fetchone()[0] == 0

    wait_until(released)
    assert [s for s, _ in turn_statuses(pg_dsn, thread_id, 2)] == ["ok", "cancelled"]
    assert len(memory(pg_dsn, thread_id)) == 2  # the hung-up turn left memory as it was
    assert "小明" in ask(client, "我叫什么名字", thread_id)


def test_an_openai_client_hanging_up_cancels_the_upstream_call(live_server, simulator, pg_dsn):
    server = live_server()
    client = openai_client(server)
    thread_id = f"hangup-{uuid.uuid4().hex[:10]}"
    ask(client, "我叫小明", thread_id)
    set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=50)
    simulator.inject("loop", role="chat")
    before = simulator.snapshot()["cancelled"]
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": "讲个故事"}],
        stream=True,
        extra_body={"thread_id": thread_id},
    )
    heard = "".join(c.choices[0].delta.content or "" for c in _hang_up_after(stream, 5))
    stream.close()
    took = _cancelled_within(simulator, before)
    logger.warning("openai hang-up: upstream call cancelled after %.3f s", took)
    _thread_is_consistent(client, pg_dsn, thread_id)
    # The log keeps what went out before the hang-up: it held the user's words alone.
    (said,) = logged_answers(pg_dsn, thread_id, status="cancelled")
    assert heard and said.startswith(heard)


def test_a_dashscope_client_hanging_up_cancels_the_upstream_call(live_server, simulator, pg_dsn):
    server = live_server()
    client = openai_client(server)
    session = f"ds-hangup-{uuid.uuid4().hex[:8]}"
    thread_id = ds_thread(session)  # the session's thread, which OpenAI's side can name too
    ask(client, "我叫小明", thread_id)
    set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=50)
    simulator.inject("loop", role="chat")
    before = simulator.snapshot()["cancelled"]
    body = {"input": {"messages": [{"role": "user", "content": "讲个故事"}], "session_id": session}}
    headers = {"Authorization": f"Bearer {TEST_KEY}", "X-DashScope-SSE": "enable"}
    url = f"{server.url}/api/v1/apps/lang-agent/completion"
    with httpx2.stream("POST", url, json=body, headers=headers, timeout=10) as response:
        _hang_up_after(response.iter_lines(), 10)
    took = _cancelled_within(simulator, before)
    logger.warning("dashscope hang-up: upstream call cancelled after %.3f s", took)
    _thread_is_consistent(client, pg_dsn, thread_id)


def test_a_client_giving_up_on_an_answer_cancels_its_turn(live_server, simulator, pg_dsn):
    """A non-streamed turn ran on after its client gave up (the SDK's timeout, which it then
    retries): each try was answered into memory, the same words remembered up to three times."""
    server = live_server()
    thread_id = f"gave-up-{uuid.uuid4().hex[:10]}"
    ask(openai_client(server), "我叫小明", thread_id)
    impatient = openai.OpenAI(
        base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0, timeout=0.5
    )
    set_latency(simulator, "chat", ttft_ms=3000)
    before = simulator.snapshot()["cancelled"]
    with pytest.raises(openai.APITimeoutError):
        ask(impatient, "我叫小红", thread_id)
    _cancelled_within(simulator, before)
    set_latency(simulator, "chat", ttft_ms=0)
    _thread_is_consistent(openai_client(server), pg_dsn, thread_id)


def test_a_dashscope_client_giving_up_on_an_answer_cancels_its_turn(live_server, simulator, pg_dsn):
    server = live_server()
    session = f"ds-gave-up-{uuid.uuid4().hex[:8]}"
    thread_id = ds_thread(session)
    ask(openai_client(server), "我叫小明", thread_id)
    set_latency(simulator, "chat", ttft_ms=3000)
    before = simulator.snapshot()["cancelled"]
    body = {"input": {"prompt": "我叫小红", "session_id": session}}
    url = f"{server.url}/api/v1/apps/lang-agent/completion"
    with pytest.raises(httpx2.TimeoutException):
        httpx2.post(url, json=body, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=0.5)
    _cancelled_within(simulator, before)
    set_latency(simulator, "chat", ttft_ms=0)
    _thread_is_consistent(openai_client(server), pg_dsn, thread_id)


# ---- /metrics counts turns by outcome ---------------------------------------------------------


def test_metrics_count_ended_turns_by_front_end_and_status(live_server, simulator):
    """/metrics had no count of turns by outcome: a failure rate took a database query."""
    server = live_server()
    client = openai_client(server)
    thread_id = f"count-{uuid.uuid4().hex[:10]}"
    ask(client, "你好", thread_id)
    simulator.inject("500", role="router")
    with pytest.raises(openai.APIStatusError):
        ask(client, "你好", thread_id)
    alibl(server, "你好", f"ds-count-{uuid.uuid4().hex[:8]}")
    set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=50)
    simulator.inject("loop", role="chat")
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": "讲个故事"}],
        stream=True,
        extra_body={"thread_id": thread_id},
    )
    _hang_up_after(stream, 5)
    stream.close()
    expected = {
        '{front_end="dashscope",status="ok"}': 1,
        '{front_end="openai",status="client_closed"}': 1,
        '{front_end="openai",status="ok"}': 1,
        '{front_end="openai",status="upstream_status"}': 1,
    }

    def counted() -> dict[str, float]:
        metrics = httpx2.get(f"{server.url}/metrics", timeout=10)
        assert "# TYPE lang_agent_turns_total counter" in metrics.text
        return metric_series(metrics.text, "lang_agent_turns_total")

    wait_until(lambda: counted() == expected)  # the hung-up turn ends a moment after
