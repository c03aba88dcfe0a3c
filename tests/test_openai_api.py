"""End to end: the OpenAI front end under uvicorn, driven by the real openai SDK."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import uuid

import httpx2
import openai
import psycopg
import pytest
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from lang_agent.checkpointer import LoopExecutor
from tests.conftest import TEST_KEY
from tests.support import LiveServer, latency, wait_until

THREAD_LOG_SQL = """
SELECT role, content, turn_id FROM messages
WHERE thread_id = %s AND NOT is_filler ORDER BY turn_started_at, turn_id, seq
"""


@pytest.fixture
def server(live_server):
    return live_server()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)


def ask(client: openai.OpenAI, text: str, *, thread_id: str | None = None, **kwargs) -> str:
    extra = {"thread_id": thread_id} if thread_id is not None else {}
    reply = client.chat.completions.create(
        model="lang-agent", messages=[{"role": "user", "content": text}], extra_body=extra, **kwargs
    )
    return reply.choices[0].message.content


def stream_chunks(client: openai.OpenAI, text: str, **kwargs) -> list:
    stream = client.chat.completions.create(
        model="lang-agent", messages=[{"role": "user", "content": text}], stream=True, **kwargs
    )
    return list(stream)


def test_chat_turn_non_stream(client):
    reply = client.chat.completions.create(
        model="lang-agent", messages=[{"role": "user", "content": "你好"}]
    )
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content.startswith("好的，")
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0


def test_chat_turn_stream_role_first_usage_last(client):
    chunks = stream_chunks(client, "hello there", stream_options={"include_usage": True})
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "hello there" in text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0


def test_tool_turn_filler_comes_before_answer(client, simulator):
    with latency(simulator, "tool", ttft_ms=400):
        chunks = stream_chunks(client, "帮我算一下 3加5乘2 等于多少", extra_body={"events": True})
    kinds = []
    for chunk in chunks:
        marker = (chunk.model_extra or {}).get("x_lang_agent") or {}
        if marker.get("kind") == "filler":
            kinds.append("filler")
        elif marker.get("kind") in ("tool_started", "tool_finished"):
            kinds.append(marker["kind"])
        elif chunk.choices and chunk.choices[0].delta.content:
            kinds.append("answer")
    assert kinds.index("filler") < kinds.index("tool_started") < kinds.index("answer")
    answer = "".join(
        c.choices[0].delta.content
        for c in chunks
        if c.choices
        and c.choices[0].delta.content
        and not (c.model_extra or {}).get("x_lang_agent")
    )
    assert "13" in answer


def test_a_long_tool_earns_a_different_phrase_each_ending_where_tts_speaks_it(client, simulator):
    # xiaozhi's segmenting TTS cuts a turn's later segments only at 。？！；：, so a phrase
    # ending in "，" would wait, silent, for the answer.
    with latency(simulator, "tool", ttft_ms=2500):  # twice: the tool call, then the answer
        chunks = stream_chunks(client, "帮我算一下 3加5乘2 等于多少")
    filler = "".join(
        c.choices[0].delta.content
        for c in chunks
        if (c.model_extra or {}).get("x_lang_agent", {}).get("kind") == "filler"
    )
    *phrases, rest = filler.split("。")
    assert rest == "" and len(phrases) >= 2 and len(set(phrases)) == len(phrases), filler


def test_non_stream_tool_turn_has_no_filler(client):
    assert "13" in ask(client, "3加5乘2等于多少")


def test_memory_across_turns_and_restart(live_server, thread_id):
    first = live_server()
    client = openai.OpenAI(base_url=f"{first.url}/v1", api_key=TEST_KEY, max_retries=0)
    ask(client, "我叫小明", thread_id=thread_id)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)
    first.stop()

    second = live_server()
    client = openai.OpenAI(base_url=f"{second.url}/v1", api_key=TEST_KEY, max_retries=0)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)


def test_model_calls_reuse_their_upstream_connections(client, simulator):
    # A call that stopped reading at [DONE] left the chunked body's end unread, so its
    # connection was closed and every call opened a new one (a TLS handshake with a provider).
    for _ in range(10):
        ask(client, "你好")
    before = simulator.snapshot()["connections"]
    for _ in range(10):
        ask(client, "你好")
    assert simulator.snapshot()["connections"] - before <= 2  # 20 calls


def test_numeric_thread_id_is_its_string(client, thread_id):
    number = int(thread_id.encode().hex()[:12], 16)
    ask(client, "my name is Ada", thread_id=number)
    assert "Ada" in ask(client, "what is my name", thread_id=str(number))


def test_without_thread_id_the_request_is_the_whole_context(client):
    ask(client, "我叫小红")
    assert "小红" not in ask(client, "我叫什么名字")
    reply = client.chat.completions.create(
        model="lang-agent",
        messages=[
            {"role": "user", "content": "我叫小红"},
            {"role": "assistant", "content": "好的。"},
            {"role": "user", "content": "我叫什么名字"},
        ],
    )
    assert "小红" in reply.choices[0].message.content


def test_failed_turn_leaves_memory_unchanged(client, simulator, thread_id):
    ask(client, "我叫小明", thread_id=thread_id)
    simulator.inject("500", role="chat")
    with pytest.raises(openai.APIStatusError) as failure:
        ask(client, "我叫小红", thread_id=thread_id)
    assert failure.value.status_code == 502
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)


def test_upstream_cut_after_first_token_ends_with_error_chunk(client, simulator, thread_id):
    ask(client, "我叫小明", thread_id=thread_id)
    simulator.inject("cut", role="chat")
    with pytest.raises(openai.APIError):
        stream_chunks(client, "我叫小红", extra_body={"thread_id": thread_id})
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)


def test_the_sdk_does_not_retry_what_the_server_already_retried(live_server, simulator):
    """The SDK retried each 502 twice, each time with the server's own retries: a failing
    upstream got three times LLM_RETRIES + 1 calls, a turn timeout kept the client three times."""
    server = live_server(llm_retries=1)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY)  # 2 retries
    simulator.inject("500", role="router", count=10)
    before = simulator.snapshot()["calls"]["router"]
    try:
        with pytest.raises(openai.InternalServerError) as failure:
            ask(client, "你好")
    finally:
        simulator.clear_faults()
    assert failure.value.status_code == 502
    assert failure.value.response.headers["x-should-retry"] == "false"
    assert simulator.snapshot()["calls"]["router"] - before == 2  # the server's try and retry


def test_upstream_timeout_is_504(live_server, simulator):
    server = live_server(llm_timeout_s=0.5)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    simulator.inject("timeout", role="router")
    with pytest.raises(openai.APIStatusError) as failure:
        ask(client, "你好")
    assert failure.value.status_code == 504


def test_auth_is_required(server):
    for key in ("wrong", TEST_KEY + "x", TEST_KEY[:-1]):
        bad = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            ask(bad, "你好")
    for headers in ({}, {"Authorization": ""}, {"Authorization": f"Basic {TEST_KEY}"}):
        response = httpx2.post(f"{server.url}/v1/chat/completions", json={}, headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        (b'{"messages": []}', 400),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400),
        (b'{"messages": [{"role": "user", "content": 5}]}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "thread_id": true}', 400),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', 400),
        (b'{"messages": [{"role": "assistant", "content": "only me"}]}', 400),
        (b"\xff\xfe", 400),
    ],
)
def test_bad_input_is_a_clear_4xx(server, body, status):
    response = httpx2.post(
        f"{server.url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_oversized_body_is_413(live_server):
    server = live_server(max_body_bytes=10_000)
    response = httpx2.post(
        f"{server.url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x" * 20_000}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_path_is_404_in_openai_shape(server):
    response = httpx2.get(
        f"{server.url}/v1/nothing", headers={"Authorization": f"Bearer {TEST_KEY}"}
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_an_unexpected_error_is_a_500_in_the_paths_shape_and_closes_the_connection(make_settings):
    from fastapi_server.app import create_app

    def fail() -> None:
        raise RuntimeError("secret internals")

    app = create_app(make_settings())
    for path in ("/v1/fail", "/api/v1/fail"):
        app.add_api_route(path, fail)
    with (
        LiveServer(app) as server,
        httpx2.Client(base_url=server.url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as http,
    ):
        openai_500, dashscope_500 = http.get("/v1/fail"), http.get("/api/v1/fail")
        # The next request on the same client needs no retry: it was told to reconnect.
        assert http.get("/v1/models").status_code == 200
    assert openai_500.status_code == dashscope_500.status_code == 500
    assert openai_500.headers["connection"] == dashscope_500.headers["connection"] == "close"
    assert openai_500.json()["error"]["code"] == "internal_error"
    assert dashscope_500.json()["code"] == "InternalError"
    assert "secret" not in openai_500.text + dashscope_500.text


def test_delete_thread(client, server, thread_id):
    ask(client, "我叫小明", thread_id=thread_id)
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    deleted = httpx2.delete(f"{server.url}/v1/threads/{thread_id}", headers=headers)
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True
    assert "小明" not in ask(client, "我叫什么名字", thread_id=thread_id)
    missing = httpx2.delete(f"{server.url}/v1/threads/{thread_id}-nope", headers=headers)
    assert missing.status_code == 404


def test_concurrent_turns_on_one_thread_never_interleave(client, pg_dsn, thread_id):
    texts = [f"第{i}句话" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        replies = list(pool.map(lambda t: ask(client, t, thread_id=thread_id), texts))
    assert all(reply for reply in replies)

    def logged():
        rows = psycopg.connect(pg_dsn).execute(THREAD_LOG_SQL, (thread_id,)).fetchall()
        return rows if len(rows) == 2 * len(texts) else None

    rows = wait_until(logged)
    # Each turn is a user message followed by its own answer: nothing lost, nothing interleaved.
    for user, answer in zip(rows[::2], rows[1::2], strict=True):
        assert user[0] == "user" and answer[0] == "assistant"
        assert user[2] == answer[2]
        assert user[1] in answer[1]
    assert sorted(row[1] for row in rows[::2]) == sorted(texts)


def test_busy_thread_rejected_when_configured(live_server, simulator, thread_id):
    server = live_server(busy_thread="reject")
    # The SDK's own retries: it retried the 409 until the thread was free, so none was refused.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY)
    with latency(simulator, "chat", ttft_ms=800):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            slow = pool.submit(ask, client, "慢一点", thread_id=thread_id)
            wait_for_busy = pool.submit(_ask_when_busy, client, thread_id)
            assert slow.result()
            assert wait_for_busy.result() == 409


def _ask_when_busy(client: openai.OpenAI, thread_id: str) -> int:
    import time

    time.sleep(0.3)
    try:
        ask(client, "插一句", thread_id=thread_id)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def test_the_sdk_lists_and_retrieves_models(client):
    """models.retrieve was a bare 404: only the list had a route."""
    names = [model.id for model in client.models.list()]
    assert "lang-agent" in names and "sim-chat" in names
    assert client.models.retrieve("lang-agent").id == "lang-agent"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-nothing")
    assert missing.value.body["code"] == "not_found"
    assert "gpt-nothing" in missing.value.body["message"]


def test_model_names_a_profile_as_a_dashscope_app_id_does(live_server, tmp_path, pg_dsn):
    # The kitchen product could not be tried over the OpenAI API: `model` was only echoed,
    # and models.retrieve("kitchen-speaker") was a 404 while a chat with it was answered.
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"kitchen-speaker": {"models": {"chat": "sim:kimi-k2.5"}}}))
    server = live_server(profiles_file=path)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    assert "kitchen-speaker" in [model.id for model in client.models.list()]
    assert client.models.retrieve("kitchen-speaker").id == "kitchen-speaker"
    threads = {name: f"model-{uuid.uuid4().hex[:8]}" for name in ("kitchen-speaker", "gpt-4o")}
    for name, thread_id in threads.items():
        reply = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "你好"}],
            extra_body={"thread_id": thread_id},
        )
        assert reply.model == name

    def answered_by(thread_id: str):
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(
                "SELECT t.profile, m.model FROM turns t JOIN messages m USING (turn_id)"
                " WHERE t.thread_id = %s AND m.role = 'assistant'",
                (thread_id,),
            ).fetchone()

    assert wait_until(lambda: answered_by(threads["kitchen-speaker"])) == (
        "kitchen-speaker",
        "kimi-k2.5",
    )
    assert wait_until(lambda: answered_by(threads["gpt-4o"])) == ("default", "sim-chat")


def test_health_lists_models_and_tools(server):
    health = httpx2.get(f"{server.url}/health").json()
    assert health["status"] == "ok"
    assert set(health["models"]) == {"router", "chat", "tool", "chatty"}
    assert any(source["name"] == "builtin" for source in health["tools"])


def test_health_answers_head_like_get(server):
    """Load balancers and uptime checkers ask with HEAD; it was a 405."""
    with httpx2.Client(base_url=server.url, timeout=15) as client:
        head = client.head("/health")
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-type"] == "application/json"
        assert client.get("/health").json()["status"] == "ok"  # the connection goes on


def test_two_servers_on_one_database_serialise_a_thread(live_server, pg_dsn, thread_id):
    """Two app instances stand in for two worker processes: only the Postgres lease is shared."""
    urls = [live_server().url, live_server().url]
    clients = [openai.OpenAI(base_url=f"{u}/v1", api_key=TEST_KEY, max_retries=0) for u in urls]
    texts = [f"消息{i}" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        list(pool.map(lambda i: ask(clients[i % 2], texts[i], thread_id=thread_id), range(8)))

    def logged():
        rows = psycopg.connect(pg_dsn).execute(THREAD_LOG_SQL, (thread_id,)).fetchall()
        return rows if len(rows) == 2 * len(texts) else None

    rows = wait_until(logged)
    for user, answer in zip(rows[::2], rows[1::2], strict=True):
        assert (user[0], answer[0]) == ("user", "assistant") and user[2] == answer[2]


def test_memory_keeps_the_latest_turns_and_the_log_keeps_all(live_server, pg_dsn, thread_id):
    server = live_server(memory_max_messages=4)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    ask(client, "我叫小明", thread_id=thread_id)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)
    ask(client, "你好", thread_id=thread_id)
    assert "小明" not in ask(client, "我叫什么名字", thread_id=thread_id)
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
    remembered = [m.content for m in state.checkpoint["channel_values"]["messages"]]
    assert remembered[0::2] == ["你好", "我叫什么名字"] and len(remembered) == 4

    def logged():
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(THREAD_LOG_SQL, (thread_id,)).fetchall()
        return rows if len(rows) == 8 else None

    assert [row[1] for row in wait_until(logged)[0::2]] == [
        "我叫小明", "我叫什么名字", "你好", "我叫什么名字"
    ]  # fmt: skip


def test_history_a_client_sends_is_logged_as_it_is_remembered(client, pg_dsn, thread_id):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "现在几点了"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
        {"role": "assistant", "content": "十二点了。"},
        {"role": "user", "content": "谢谢"},
    ]
    client.chat.completions.create(
        model="lang-agent", messages=messages, extra_body={"thread_id": thread_id}
    )
    sql = "SELECT role, content, tool_calls, tool_call_id FROM messages WHERE thread_id = %s"

    def logged():
        with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
            rows = conn.execute(sql + " ORDER BY seq", (thread_id,)).fetchall()
        return rows if len(rows) == 6 else None

    rows = wait_until(logged)
    assert [r["role"] for r in rows] == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
    ]
    assert rows[1]["tool_calls"][0]["name"] == "get_time" and rows[2]["tool_call_id"] == "call_1"
    assert [r["content"] for r in rows[2:5]] == ["12:00", "十二点了。", "谢谢"]


def test_memory_holds_the_dialogue_not_the_turns_input(live_server, pg_dsn, thread_id):
    """The turn's input reaches the nodes through an ephemeral channel: the checkpoint saved at
    the end has the dialogue and the route, and no copy of what the client sent."""
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    ask(client, "我叫小明", thread_id=thread_id)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
        channels = conn.execute(
            "SELECT DISTINCT channel FROM checkpoint_blobs WHERE thread_id = %s", (thread_id,)
        ).fetchall()
    assert set(state.checkpoint["channel_values"]) == {"messages", "route"}
    assert [row["channel"] for row in channels] == ["messages"]


def test_a_turn_hands_no_work_to_a_worker_thread(live_server, monkeypatch, thread_id):
    """LangGraph and langchain run a plain function (a route, a tool) in the loop's default
    executor: a thread hop per call, and under load a wait for the GIL. A chat turn, a stream
    and tool turns run all their work on the event loop."""
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)

    def turns() -> None:
        assert ask(client, "你好", thread_id=thread_id)
        assert stream_chunks(client, "你好")
        assert ask(client, "现在几点了", thread_id=thread_id)
        assert "16" in ask(client, "(3+5)*2等于多少", thread_id=thread_id)

    turns()  # start-up work (first connections) is not a turn's
    ran_on: list[str] = []
    submit = LoopExecutor.submit

    def observed_submit(self, fn, /, *args, **kwargs):
        def observed(*inner_args, **inner_kwargs):
            ran_on.append(threading.current_thread().name)
            return fn(*inner_args, **inner_kwargs)

        return submit(self, observed, *args, **kwargs)

    monkeypatch.setattr(LoopExecutor, "submit", observed_submit)
    turns()
    assert ran_on and not [name for name in ran_on if name.startswith("lang-agent")]


def test_filler_is_logged_but_not_remembered(client, simulator, pg_dsn, thread_id):
    with latency(simulator, "tool", ttft_ms=300):
        chunks = stream_chunks(client, "现在几点了", extra_body={"thread_id": thread_id})
    filler = "".join(
        c.choices[0].delta.content or ""
        for c in chunks
        if (c.model_extra or {}).get("x_lang_agent", {}).get("kind") == "filler"
    )
    assert filler

    def logged_filler():
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute(
                "SELECT content FROM messages WHERE thread_id = %s AND is_filler", (thread_id,)
            ).fetchall()

    assert wait_until(logged_filler)[0][0] == filler
    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread_id}})
    remembered = [m.content for m in state.checkpoint["channel_values"]["messages"]]
    assert remembered[0] == "现在几点了"
    assert all(filler not in str(content) for content in remembered)


def test_client_disconnect_cancels_the_upstream_call(client, simulator, thread_id):
    ask(client, "我叫小明", thread_id=thread_id)
    before = simulator.snapshot()["cancelled"]
    simulator.inject("loop", role="chat")
    with latency(simulator, "chat", ttft_ms=0, tokens_per_s=50):
        stream = client.chat.completions.create(
            model="lang-agent",
            messages=[{"role": "user", "content": "讲个故事"}],
            stream=True,
            extra_body={"thread_id": thread_id},
        )
        for number, _ in enumerate(stream):
            if number == 5:
                break
        stream.close()
        wait_until(lambda: simulator.snapshot()["cancelled"] > before)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)


def test_speculative_chat_answer_never_leaks_into_a_tool_turn(client, simulator):
    # The router answers last, so the speculative chat answer is complete before it is dropped.
    with latency(simulator, "router", ttft_ms=300):
        chunks = stream_chunks(client, "3加5乘2等于多少")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "13" in text and "「" not in text


def test_chat_without_speculation(live_server, thread_id):
    server = live_server(speculative_chat=False)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    ask(client, "我叫小明", thread_id=thread_id)
    assert "小明" in ask(client, "我叫什么名字", thread_id=thread_id)
