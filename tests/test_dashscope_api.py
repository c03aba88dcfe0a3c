"""End to end: the DashScope front end driven exactly as xiaozhi's AliBL provider drives it."""

from __future__ import annotations

import json
import uuid

import dashscope
import httpx2
import psycopg
import pytest
from dashscope import Application
from langgraph.checkpoint.postgres import PostgresSaver
from psycopg.rows import dict_row

from fastapi_server.serve import settings_from_flags
from fastapi_server.wire_types import session_thread
from tests.conftest import TEST_KEY
from tests.support import latency, set_latency, wait_until


@pytest.fixture
def server(live_server):
    return live_server()


@pytest.fixture
def base_url(server):
    dashscope.base_http_api_url = f"{server.url}/api/"
    return server.url


def alibl_call(text_or_messages, *, session_id=None, api_key=TEST_KEY, **kwargs):
    """Call like AliBL.py and consume like it: diff cumulative text, skip non-200 items."""
    messages = (
        [{"role": "user", "content": text_or_messages}]
        if isinstance(text_or_messages, str)
        else text_or_messages
    )
    responses = Application.call(
        api_key=api_key,
        app_id="lang-agent",
        session_id=session_id,
        messages=messages,
        stream=True,
        **kwargs,
    )
    spoken, last, items = [], "", []
    for response in responses:
        items.append(response)
        if response.status_code != 200:
            continue
        current = response.output.text or ""
        spoken.append(current[len(last) :] if len(current) >= len(last) else current)
        last = current
    return "".join(spoken), items


@pytest.fixture
def paced_chat(simulator):
    """The chat model streams like a real one. Deltas that arrive together go out as one
    frame, and the unpaced simulator would deliver a whole answer at once."""
    set_latency(simulator, "chat", ttft_ms=0, tokens_per_s=200)
    yield
    set_latency(simulator, "chat", ttft_ms=0)


def test_stream_speaks_every_character_once(base_url, paced_chat):
    for text in ("你好，今天过得怎么样？", "hello, how are you today?"):
        spoken, items = alibl_call(text, session_id=uuid.uuid4().hex)
        assert all(item.status_code == 200 for item in items)
        assert spoken == items[-1].output.text
        assert text.rstrip("？?") in spoken
        assert [i.output.finish_reason for i in items][-1] == "stop"
        assert all(i.output.finish_reason == "null" for i in items[:-1])
        assert len(items) > 2


def test_every_event_carries_ids_and_usage(base_url):
    session = uuid.uuid4().hex
    _, items = alibl_call("你好", session_id=session)
    assert {i.output.session_id for i in items} == {session}
    assert len({i.request_id for i in items}) == 1
    models = items[-1].usage.models
    assert models and models[0].model_id and models[0].output_tokens > 0


def test_memory_across_calls_with_one_session_id(base_url):
    session = uuid.uuid4().hex
    alibl_call("我叫小明", session_id=session)
    spoken, _ = alibl_call("我叫什么名字", session_id=session)
    assert "小明" in spoken


def test_xiaozhi_resends_history_and_only_the_new_turn_is_answered(base_url):
    session = uuid.uuid4().hex
    first = [{"role": "user", "content": "我叫小明"}]
    spoken, _ = alibl_call(first, session_id=session)
    dialogue = [
        *first,
        {"role": "assistant", "content": spoken},
        {"role": "user", "content": "我叫什么名字"},
    ]
    spoken, _ = alibl_call(dialogue, session_id=session)
    assert "小明" in spoken


def test_new_session_is_seeded_from_client_history(base_url):
    dialogue = [
        {"role": "user", "content": '{"speaker": "小明", "content": "我叫小明"}'},
        {
            "role": "assistant",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "index": 0,
                    "function": {"name": "self_get_device_status", "arguments": "{}"},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"audio_speaker":{"volume":70}}'},
        {"role": "assistant", "content": "好的。"},
        {"role": "user", "content": "我叫什么名字"},
        {"role": "user", "content": "我叫什么名字"},
    ]
    spoken, items = alibl_call(dialogue, session_id=uuid.uuid4().hex)
    assert all(item.status_code == 200 for item in items)
    assert "小明" in spoken
    assert spoken.count("你叫") == 1


def tool_round(call_id: str, name: str, arguments: dict, result: str) -> list[dict]:
    function = {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}
    call = {"id": call_id, "type": "function", "index": 0, "function": function}
    return [
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


# xiaozhi's few-shot examples in function_call mode, which AliBL sends ahead of the dialogue
# on every call (dashscope_app_api.md §4.1; is_no_prompt drops the system prompt before them).
XIAOZHI_FEW_SHOT = [
    {"role": "user", "content": "给我讲个故事吧"},
    *tool_round("call_fs1", "direct_answer", {"response": "好的，从前有座山。"}, "已直接回复"),
    {"role": "user", "content": "拜拜"},
    *tool_round("call_fs2", "handle_exit_intent", {"say_goodbye": "再见"}, "退出意图已处理"),
    {"role": "assistant", "content": "再见，下次再聊~"},
]
FEW_SHOT_TEXTS = ["给我讲个故事吧", "已直接回复", "拜拜", "退出意图已处理", "再见，下次再聊~"]


def test_xiaozhi_s_few_shot_guides_every_turn_and_memory_keeps_only_what_was_said(base_url, pg_dsn):
    session = str(uuid.uuid4())
    thread = session_thread("lang-agent", session)
    utterances = ["我叫小明", "今天天气怎么样", "我叫什么名字"]
    dialogue: list[dict] = []
    for text in utterances:
        dialogue.append({"role": "user", "content": text})
        spoken, items = alibl_call([*XIAOZHI_FEW_SHOT, *dialogue], session_id=session)
        assert all(item.status_code == 200 for item in items)
        dialogue.append({"role": "assistant", "content": spoken})
    assert "小明" in spoken

    with psycopg.connect(pg_dsn, autocommit=True, row_factory=dict_row) as conn:
        state = PostgresSaver(conn).get_tuple({"configurable": {"thread_id": thread}})
    remembered = state.checkpoint["channel_values"]["messages"]
    assert [m.content for m in remembered] == [m["content"] for m in dialogue]
    # The conversation log says what was said, too: the examples are not the user's words.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:

        def logged():
            rows = conn.execute(
                "SELECT content FROM messages WHERE thread_id = %s AND NOT is_filler"
                " ORDER BY turn_started_at, turn_id, seq",
                (thread,),
            ).fetchall()
            return rows if len(rows) >= len(dialogue) else None

        assert [row[0] for row in wait_until(logged)] == [m["content"] for m in dialogue]

        def chat_calls():
            rows = conn.execute(
                "SELECT request_body FROM llm_calls WHERE thread_id = %s"
                " AND node = 'chat_model_call' ORDER BY id",
                (thread,),
            ).fetchall()
            return rows if len(rows) == len(utterances) else None

        # Each turn's chat model saw the examples once, ahead of the dialogue.
        for (body,) in wait_until(chat_calls):
            texts = [m.get("content") for m in body["messages"]]
            assert [t for t in texts if t in FEW_SHOT_TEXTS] == FEW_SHOT_TEXTS
            assert texts.index(FEW_SHOT_TEXTS[-1]) < texts.index(utterances[0])


def test_a_call_without_a_session_opens_one_that_the_next_call_continues(base_url):
    # Alibaba's multi-turn sample: call without session_id, then pass output.session_id back.
    first = Application.call(api_key=TEST_KEY, app_id="x", prompt="我叫李雷")
    assert first.status_code == 200 and first.output.finish_reason == "stop"
    second = Application.call(
        api_key=TEST_KEY, app_id="x", prompt="我叫什么名字", session_id=first.output.session_id
    )
    assert second.status_code == 200 and "李雷" in second.output.text
    assert second.output.session_id == first.output.session_id
    other = Application.call(api_key=TEST_KEY, app_id="x", prompt="我叫什么名字")
    assert other.output.session_id != first.output.session_id and "李雷" not in other.output.text


@pytest.mark.parametrize("session_id", ["", "   ", "\t\n"])
def test_an_empty_or_blank_session_id_opens_a_new_session(server, session_id):
    def call(text: str, session: str) -> dict:
        body = {"input": {"prompt": text, "session_id": session}}
        headers = {"Authorization": f"Bearer {TEST_KEY}"}
        response = httpx2.post(f"{server.url}/api/apps/x/completion", json=body, headers=headers)
        assert response.status_code == 200
        return response.json()["output"]

    first = call("我叫韩梅梅", session_id)
    assert first["session_id"].strip() and first["session_id"] != session_id
    again = call("我叫什么名字", first["session_id"])
    assert again["session_id"] == first["session_id"] and "韩梅梅" in again["text"]
    other = call("我叫什么名字", session_id)
    assert other["session_id"] != first["session_id"] and "韩梅梅" not in other["text"]


def test_a_prompt_beside_messages_is_the_turn_after_them(server):
    body = {
        "input": {
            "messages": [
                {"role": "user", "content": "我叫小明"},
                {"role": "assistant", "content": "好的。"},
            ],
            "prompt": "hello there",
        }
    }
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    response = httpx2.post(f"{server.url}/api/apps/x/completion", json=body, headers=headers)
    assert response.status_code == 200
    assert "hello there" in response.json()["output"]["text"]


def test_the_sdk_s_deprecated_history_is_the_dialogue_before_the_prompt(base_url):
    # It was dropped: the answer knew nothing of the turns the client sent.
    history = [{"user": "我叫小明", "bot": "好的，小明。"}]
    for session_id in (None, uuid.uuid4().hex):  # stateless, and a new session it seeds
        answer = Application.call(
            api_key=TEST_KEY, app_id="x", prompt="我叫什么名字", history=history,
            session_id=session_id,
        )  # fmt: skip
        assert answer.status_code == 200 and "小明" in answer.output.text


# AliBL sends `memory_id` as its `ali_memory_id` holds it, and the last user turn again as
# `prompt`: true or a number was a 400, and the speaker fell silent.
@pytest.mark.parametrize("memory_id", ["", "mem-1", True, 12345])
def test_xiaozhi_s_memory_id_of_any_value_is_taken_and_the_turn_answered_once(base_url, memory_id):
    dialogue = [{"role": "user", "content": "你好"}]
    plain, _ = alibl_call(dialogue, session_id=uuid.uuid4().hex)
    spoken, items = alibl_call(
        dialogue, session_id=uuid.uuid4().hex, memory_id=memory_id, prompt="你好"
    )
    assert all(item.status_code == 200 for item in items)
    assert spoken == plain and items[-1].output.finish_reason == "stop"


def test_non_stream(base_url):
    response = Application.call(
        api_key=TEST_KEY, app_id="any-app", messages=[{"role": "user", "content": "hello"}]
    )
    assert response.status_code == 200
    assert "hello" in response.output.text
    assert response.usage.models[0].input_tokens > 0


def test_incremental_output(base_url, paced_chat):
    responses = Application.call(
        api_key=TEST_KEY,
        app_id="lang-agent",
        messages=[{"role": "user", "content": "给我讲一个很短的故事"}],
        stream=True,
        incremental_output=True,
    )
    pieces = [r.output.text for r in responses]
    assert len(pieces) > 2
    assert "".join(pieces).startswith("好的，")
    assert max(len(p) for p in pieces) < len("".join(pieces))


def test_bad_key_is_a_401_item(base_url):
    _, items = alibl_call("你好", api_key="wrong")
    assert [item.status_code for item in items] == [401]
    assert items[0].code == "InvalidApiKey"


# The SDK turns an explicit incremental_output=False into `true` on the wire and merges the
# deltas itself, so both output modes reach the server from ordinary callers.
@pytest.mark.parametrize("incremental", [{}, {"incremental_output": False}])
def test_upstream_failure_is_spoken_then_reported(base_url, simulator, incremental):
    simulator.inject("500", role="router")
    spoken, items = alibl_call("你好", session_id=uuid.uuid4().hex, **incremental)
    assert spoken == "抱歉，我这边出了点问题，请稍后再试。"
    assert items[-2].output.finish_reason == "stop"
    assert items[-1].status_code == 502 and items[-1].code == "InternalError"


def test_tool_turn_streams_filler_then_answer(base_url, simulator):
    with latency(simulator, "tool", ttft_ms=300):
        spoken, items = alibl_call("帮我算一下 3加5乘2 等于多少", session_id=uuid.uuid4().hex)
    assert all(item.status_code == 200 for item in items)
    first = items[0].output.text
    assert first and first[-1] in "，,"
    assert "13" in spoken and spoken.index(first) == 0


def test_raw_frame_format(server):
    body = {"input": {"messages": [{"role": "user", "content": "你好"}], "session_id": "raw-1"}}
    headers = {"Authorization": f"Bearer {TEST_KEY}", "X-DashScope-SSE": "enable"}
    with httpx2.stream(
        "POST", f"{server.url}/api/v1/apps/whatever/completion", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert "content-encoding" not in response.headers
        raw = response.read().decode()
    assert "[DONE]" not in raw
    events = [block for block in raw.split("\n\n") if block]
    for number, block in enumerate(events, start=1):
        lines = block.split("\n")
        assert lines[:3] == [f"id:{number}", "event:result", ":HTTP_STATUS/200"]
        assert len(lines) == 4 and lines[3].startswith("data:")
        data = json.loads(lines[3][len("data:") :])
        assert data["output"]["session_id"] == "raw-1"
        assert set(data) == {"output", "usage", "request_id"}


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"X-DashScope-SSE": "enable"}, {"input": {"prompt": "你好"}}),
        ({}, {"input": {"prompt": "你好"}}),
        ({}, {"input": {"prompt": " "}}),
    ],
    ids=["stream", "non-stream", "error"],
)
def test_responses_carry_dashscope_s_headers(server, headers, body):
    headers = {"Authorization": f"Bearer {TEST_KEY}", **headers}
    response = httpx2.post(f"{server.url}/api/apps/x/completion", json=body, headers=headers)
    raw = response.text
    data = json.loads(raw.rsplit("data:", 1)[-1]) if "event:" in raw else response.json()
    assert response.headers["x-request-id"] == data["request_id"]
    # Real DashScope marks its streams only.
    streamed = "X-DashScope-SSE" in headers
    assert response.headers.get("x-dashscope-finished") == ("true" if streamed else None)


def test_body_stream_flag_alone_does_not_matter_without_sse_header(server):
    body = {"input": {"prompt": "你好"}, "parameters": {}}
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    response = httpx2.post(f"{server.url}/api/apps/x/completion", json=body, headers=headers)
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["output"]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    "body",
    [
        b"{oops",
        b'{"input": {}}',
        b'{"input": {"prompt": "  "}}',
        b'{"input": {"messages": [{"role": "robot"}]}}',
        b'{"nope": 1}',
        # The session's thread, app id and session id (x/sss…), is over 200 characters.
        b'{"input": {"prompt": "hi", "session_id": "' + b"s" * 199 + b'"}}',
    ],
)
def test_bad_input_is_a_flat_400(server, body):
    response = httpx2.post(
        f"{server.url}/api/apps/x/completion",
        content=body,
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == "InvalidParameter" and error["message"] and error["request_id"]


def test_unknown_dashscope_path_is_a_flat_404(server):
    response = httpx2.post(
        f"{server.url}/api/v1/services/aigc/multimodal-generation/generation",
        json={},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert response.status_code == 404
    assert response.json()["code"] == "NotFound"


def test_app_id_selects_a_profile_and_unknown_ones_use_the_default(base_url, simulator, pg_dsn):
    set_latency(simulator, "tool", ttft_ms=300)
    sessions = {"tool_node": uuid.uuid4().hex, "no-such-app": uuid.uuid4().hex}
    try:
        for app_id, session in sessions.items():
            responses = Application.call(
                api_key=TEST_KEY,
                app_id=app_id,
                session_id=session,
                messages=[{"role": "user", "content": "3加5乘2等于多少"}],
                stream=True,
            )
            assert "13" in [r.output.text for r in responses][-1]
    finally:
        set_latency(simulator, "tool", ttft_ms=0)

    def fillers(app_id: str):
        thread = session_thread(app_id, sessions[app_id])
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT t.profile, count(m.*) FILTER (WHERE m.is_filler) FROM turns t"
                " JOIN messages m USING (turn_id) WHERE t.thread_id = %s GROUP BY t.profile",
                (thread,),
            ).fetchall()
        return rows or None

    assert wait_until(lambda: fillers("tool_node")) == [("tool_node", 0)]
    default = wait_until(lambda: fillers("no-such-app"))
    assert default[0][0] == "default" and default[0][1] == 1


def test_two_apps_sending_one_session_id_keep_apart_memories(base_url, pg_dsn):
    # Two products on one server (a kids' speaker, a kitchen one) whose clients name sessions
    # by their user: the kitchen speaker knew the name told to the kids' one.
    session = f"user-{uuid.uuid4().hex[:8]}"

    def say(app_id: str, text: str) -> str:
        reply = Application.call(api_key=TEST_KEY, app_id=app_id, prompt=text, session_id=session)
        assert reply.status_code == 200 and reply.output.session_id == session
        return reply.output.text

    say("kids-speaker", "我叫小明")
    assert "小明" not in say("kitchen-speaker", "我叫什么名字")
    assert "小明" in say("kids-speaker", "我叫什么名字")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:

        def logged():
            rows = conn.execute(
                "SELECT thread_id FROM turns WHERE thread_id LIKE %s ORDER BY started_at",
                (f"%/{session}",),
            ).fetchall()
            return rows if len(rows) == 3 else None

        threads = [row[0] for row in wait_until(logged)]
    # The log, the viewer and `calls list --thread` name each app's session apart.
    kids, kitchen = f"kids-speaker/{session}", f"kitchen-speaker/{session}"
    assert threads == [kids, kitchen, kids]


def test_route_flag_sets_the_default_profile():
    settings = settings_from_flags(["route", "chatty_tool_node"], description="", port=8588)
    assert settings.default_profile == "chatty_tool_node"


def test_fake_stream_server_streams_a_finished_turn_in_small_pieces(live_server):
    server = live_server(dashscope_fake_stream=True)
    dashscope.base_http_api_url = f"{server.url}/api/"
    spoken, items = alibl_call("hello there, how are you?", session_id=uuid.uuid4().hex)
    assert all(item.status_code == 200 for item in items)
    assert len(items) > 10
    assert spoken == items[-1].output.text and "hello there" in spoken
