"""Hostile request bodies against both APIs, on a live server: property-based fuzzing (no 5xx,
no hang, always the protocol's error shape), and the classic abuses one by one: oversized
bodies and messages, deep JSON, invalid UTF-8, unknown roles, 10,000 messages, NUL bytes."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx2
import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import TEST_KEY
from tests.support import LiveServer, ds_thread, wait_until

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
OPENAI = "/v1/chat/completions"
DASHSCOPE = "/api/v1/apps/lang-agent/completion"
REQUEST_BOUND_S = 30.0  # a request that takes longer is a hang
FUZZ = settings(
    max_examples=80,
    deadline=None,
    database=None,  # nothing written into the work tree; failures print their example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module")
def server(module_server) -> LiveServer:
    return module_server()


@pytest.fixture(scope="module")
def http(server) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=server.url, headers=AUTH, timeout=REQUEST_BOUND_S) as client:
        yield client


# ---- what every answer must look like -----------------------------------------------------------


def assert_openai_shape(response: httpx2.Response) -> None:
    assert response.status_code < 500, response.text
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["message"]
        assert "Traceback" not in error["message"]
    elif kind.startswith("text/event-stream"):
        assert response.text.endswith("data: [DONE]\n\n"), response.text[-300:]
        for block in response.text.split("\n\n")[:-2]:
            payload = json.loads(block.removeprefix("data: "))
            if "error" in payload:  # a turn that failed after the stream began
                assert payload["error"]["code"] and payload["error"]["message"]
            else:
                assert payload["object"] == "chat.completion.chunk"
    else:
        assert isinstance(response.json()["choices"][0]["message"]["content"], str)


def assert_dashscope_shape(response: httpx2.Response) -> None:
    assert response.status_code < 500, response.text
    kind = response.headers.get("content-type", "")
    if response.status_code >= 400:
        error = response.json()
        assert set(error) == {"code", "message", "request_id"} and error["message"]
    elif kind.startswith("text/event-stream"):
        events = [block for block in response.text.split("\n\n") if block]
        last = events[-1].split("\n")
        assert last[1] in ("event:result", "event:error"), events[-1]
        if last[1] == "event:result":
            data = json.loads(last[-1].removeprefix("data:"))
            assert data["output"]["finish_reason"] in ("stop", "length")
    else:
        assert isinstance(response.json()["output"]["text"], str)


# ---- property-based fuzzing ----------------------------------------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=25,
)
ROLES = st.sampled_from(
    ["user", "user", "user", "assistant", "system", "developer", "tool", "function", "wizard", ""]
)
TEXT = st.one_of(st.text(max_size=200), st.sampled_from(["你好", "3加5乘2等于多少", "现在几点了"]))
PARTS = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url", "input_audio"]), "text": TEXT | JUNK}
    ),
    max_size=3,
)
TOOL_CALLS = st.lists(
    st.one_of(
        JUNK,
        st.fixed_dictionaries(
            {
                "id": st.text(max_size=10),
                "type": st.just("function"),
                "function": st.fixed_dictionaries(
                    {"name": st.text(max_size=20), "arguments": st.text(max_size=40) | JUNK}
                ),
            }
        ),
    ),
    max_size=2,
)
MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLES, "content": st.one_of(TEXT, PARTS, JUNK)},
        optional={
            "tool_calls": TOOL_CALLS | JUNK,
            "tool_call_id": st.text(max_size=10) | JUNK,
            "name": st.text(max_size=10) | JUNK,
        },
    ),
    JUNK,
)
THREAD_ID = st.one_of(
    st.builds(lambda: f"fuzz-{uuid.uuid4().hex[:10]}"), st.text(max_size=220), JUNK
)
# Near-valid dialogues (any history, then a user turn) get past validation and run real turns.
WELL_FORMED = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system"]), "content": TEXT}
)
DIALOGUE = st.builds(
    lambda head, text: [*head, {"role": "user", "content": text}],
    st.lists(WELL_FORMED, max_size=3),
    TEXT,
)
OPENAI_BODY = st.fixed_dictionaries(
    {"messages": st.one_of(DIALOGUE, DIALOGUE, st.lists(MESSAGE, min_size=1, max_size=5), JUNK)},
    optional={
        "stream": st.booleans() | JUNK,
        "thread_id": THREAD_ID,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2) | JUNK,
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JUNK}) | JUNK,
        "events": st.booleans() | JUNK,
        "model": st.text(max_size=20) | JUNK,
        "tools": JUNK,
        "max_tokens": JUNK,
    },
)
DASH_MESSAGE = st.one_of(
    st.fixed_dictionaries(
        {"role": ROLES, "content": st.one_of(TEXT, JUNK)},
        optional={"tool_calls": TOOL_CALLS | JUNK, "tool_call_id": st.text(max_size=10) | JUNK},
    ),
    JUNK,
)
DASH_BODY = st.fixed_dictionaries(
    {
        "input": st.one_of(
            st.fixed_dictionaries(
                {"messages": st.one_of(DIALOGUE, DIALOGUE, st.lists(DASH_MESSAGE, max_size=5))},
                optional={
                    "prompt": TEXT | JUNK,
                    "session_id": THREAD_ID,
                    "memory_id": JUNK,
                    "biz_params": JUNK,
                },
            ),
            st.fixed_dictionaries({}, optional={"prompt": TEXT | JUNK, "messages": JUNK}),
            JUNK,
        )
    },
    optional={
        "parameters": st.fixed_dictionaries(
            {},
            optional={"incremental_output": st.booleans() | JUNK, "stream": st.booleans() | JUNK},
        )
        | JUNK,
        "model": JUNK,
        "stream": JUNK,
    },
)


FRESH_ID = st.builds(lambda: f"fuzz-{uuid.uuid4().hex[:10]}")
# Well-typed bodies with random values: they reach the turn engine and the model.
OPENAI_NEAR = st.fixed_dictionaries(
    {"messages": DIALOGUE},
    optional={
        "stream": st.booleans(),
        "thread_id": FRESH_ID,
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "events": st.booleans(),
        "model": st.text(max_size=20),
    },
)
DASH_NEAR = st.fixed_dictionaries(
    {
        "input": st.fixed_dictionaries(
            {"messages": DIALOGUE}, optional={"session_id": FRESH_ID, "prompt": TEXT}
        )
    },
    optional={"parameters": st.fixed_dictionaries({"incremental_output": st.booleans()})},
)


@FUZZ
@given(body=st.one_of(OPENAI_NEAR, OPENAI_BODY, ANY_JSON))
def test_openai_fuzzed_bodies_get_an_answer_or_a_clean_4xx(http, body):
    response = http.post(OPENAI, json=body)
    event(f"status {response.status_code}")
    assert_openai_shape(response)


@FUZZ
@given(body=st.one_of(DASH_NEAR, DASH_BODY, ANY_JSON), sse=st.booleans())
def test_dashscope_fuzzed_bodies_get_an_answer_or_a_clean_4xx(http, body, sse):
    headers = {"X-DashScope-SSE": "enable"} if sse else {}
    response = http.post(DASHSCOPE, json=body, headers=headers)
    event(f"status {response.status_code}")
    assert_dashscope_shape(response)


@FUZZ
@given(raw=st.binary(max_size=300))
def test_raw_bytes_are_a_clean_4xx_on_both_apis(http, raw):
    for path, check in ((OPENAI, assert_openai_shape), (DASHSCOPE, assert_dashscope_shape)):
        response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
        check(response)
        assert response.status_code == 400 or raw.strip().startswith(b"{")


# ---- the classic abuses, one by one ------------------------------------------------------------


def user(text: str = "你好") -> dict[str, Any]:
    return {"role": "user", "content": text}


def openai_body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages) or [user()], **extra}


def dash_body(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"input": {"messages": list(messages) or [user()], **extra}}


BOTH = [
    pytest.param(OPENAI, openai_body, assert_openai_shape, id="openai"),
    pytest.param(DASHSCOPE, dash_body, assert_dashscope_shape, id="dashscope"),
]


def error_code(response: httpx2.Response) -> str:
    body = response.json()
    return body["error"]["code"] if "error" in body else body["code"]


def test_ten_thousand_messages_are_refused_clearly(http):
    messages = [user(f"第{i}句") for i in range(10_000)]
    response = http.post(OPENAI, json=openai_body(*messages))
    assert_openai_shape(response)
    assert response.status_code == 400
    assert "at most 2000 messages" in response.text


def test_xiaozhi_s_resent_dialogue_past_the_limit_is_cut_to_its_newest(http):
    # xiaozhi resends the whole dialogue of a connection every turn: after a thousand turns it
    # passes MAX_MESSAGES, and a refusal would silence the device for good.
    dialogue = []
    for i in range(1500):
        dialogue += [user(f"第{i}句"), {"role": "assistant", "content": "好的。"}]
    dialogue[-4:] = [user("我叫小明"), {"role": "assistant", "content": "好的。"}]
    system = {"role": "system", "content": "你是小智"}
    response = http.post(DASHSCOPE, json=dash_body(system, *dialogue, user("我叫什么名字")))
    assert response.status_code == 200 and "小明" in response.json()["output"]["text"]
    too_many = http.post(DASHSCOPE, json=dash_body(*[system] * 2001, user("你好")))
    assert_dashscope_shape(too_many)
    assert too_many.status_code == 400 and "at most 2000 messages" in too_many.text


@pytest.mark.parametrize(
    "content", ["", "   ", None, json.dumps({"speaker": "小明", "content": " "})]
)
def test_an_empty_latest_utterance_is_refused_like_an_empty_prompt(http, content):
    response = http.post(DASHSCOPE, json=dash_body({"role": "user", "content": content}))
    assert_dashscope_shape(response)
    assert response.status_code == 400 and "empty" in response.json()["message"]


@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_an_oversized_body_is_413_declared_or_streamed(http, path, body, check):
    big = json.dumps(body(user("x" * 3_000_000))).encode()
    declared = http.post(path, content=big, headers={"Content-Type": "application/json"})
    check(declared)
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    streamed = http.post(path, content=chunks(), headers={"Content-Type": "application/json"})
    check(streamed)
    assert streamed.status_code == 413


@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_a_message_too_long_for_the_model_is_refused(http, path, body, check):
    response = http.post(path, json=body(user("长" * 600_000)))  # 1.8 MB: under the body limit
    check(response)
    # OpenAI's own code for it (a plain invalid_request before); DashScope has one for all.
    assert response.status_code == 400 and error_code(response) in (
        "context_length_exceeded",
        "InvalidParameter",
    )


@pytest.mark.parametrize("depth", [200, 100_000, 600_000])
@pytest.mark.parametrize(("path", "check"), [(OPENAI, assert_openai_shape),
                                             (DASHSCOPE, assert_dashscope_shape)])  # fmt: skip
def test_deeply_nested_json_is_a_clean_400(http, path, check, depth):
    for raw in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
        check(response)
        assert response.status_code in (400, 413)
    nested: Any = "你好"
    for _ in range(min(depth, 200)):
        nested = {"content": nested}
    response = http.post(path, json={"messages": [nested], "input": {"messages": [nested]}})
    check(response)
    assert response.status_code == 400


INVALID_UTF8 = [
    b"\xff\xfe\xfd",
    b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"input": {"messages": [{"role": "user", "content": "\xc3\x28"}]}}',
    b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}',  # an encoded surrogate
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # a lone surrogate escape
    b"\xef\xbb\xbf" + json.dumps(openai_body()).encode(),  # a BOM
]


@pytest.mark.parametrize("raw", INVALID_UTF8)
@pytest.mark.parametrize(("path", "check"), [(OPENAI, assert_openai_shape),
                                             (DASHSCOPE, assert_dashscope_shape)])  # fmt: skip
def test_invalid_utf8_and_lone_surrogates_are_handled(http, path, check, raw):
    response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    check(response)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "wizard", "content": "hi"},
        {"role": "function", "content": "hi"},
        {"role": None, "content": "hi"},
        {"role": ["user"], "content": "hi"},
        {"content": "no role"},
        {"role": "USER", "content": "hi"},
    ],
)
@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_unknown_roles_are_a_clean_400(http, path, body, check, message):
    response = http.post(path, json=body(message))
    check(response)
    assert response.status_code == 400


@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_wrong_methods_and_content_types(http, path, body, check):
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = http.request(method, path)
        check(response)
        assert response.status_code in (404, 405)
    form = http.post(path, data={"messages": "hi"})
    check(form)
    assert form.status_code == 400
    empty = http.post(path, content=b"")
    check(empty)
    assert empty.status_code == 400


@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_a_nul_byte_is_answered_logged_and_does_not_sink_other_turns(
    http, pg_dsn, path, body, check
):
    thread_id = f"nul-{uuid.uuid4().hex[:10]}"
    key = "thread_id" if path == OPENAI else "session_id"
    bad = body(user("坏\x00消息"), **{key: thread_id})
    if path == OPENAI:
        bad["metadata"] = {"device": "a\x00b"}
    response = http.post(path, json=bad)
    check(response)
    assert response.status_code == 200
    good = f"nul-neighbour-{uuid.uuid4().hex[:10]}"
    assert http.post(path, json=body(user("好消息"), **{key: good})).status_code == 200

    threads = [thread_id, good] if path == OPENAI else [ds_thread(thread_id), ds_thread(good)]

    def logged() -> bool:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT thread_id FROM turns WHERE thread_id = ANY(%s)", (threads,)
            ).fetchall()
        return len(rows) == 2

    wait_until(logged)  # both turns reached the log; the NUL did not sink the batch
    follow_up = http.post(path, json=body(user("我刚才说了什么"), **{key: thread_id}))
    check(follow_up)
    assert follow_up.status_code == 200  # and the thread's memory still loads


def test_absurd_field_values_are_clean(http):
    cases = [
        openai_body(thread_id="x" * 201),
        openai_body(thread_id=""),
        openai_body(thread_id=2**80),
        openai_body(thread_id=-1.5),
        openai_body(stream=None),
        openai_body(metadata={"k": 1}),
        openai_body(metadata=["a"]),
        openai_body(stream_options={"include_usage": "yes"}),
        openai_body({"role": "user", "content": [{"type": "image_url", "image_url": {}}]}),
        openai_body({"role": "user", "content": {"text": "hi"}}),
        openai_body({"role": "assistant", "content": None, "tool_calls": "nope"}),
        openai_body({"role": "tool", "content": "orphan result", "tool_call_id": "c1"}, user()),
        {"messages": None},
        {"messages": "hi"},
        {"messages": [[]]},
    ]
    for body in cases:
        assert_openai_shape(http.post(OPENAI, json=body))
    dash_cases = [
        {"input": {"session_id": "x" * 201, "prompt": "hi"}},
        {"input": {"prompt": 5}},
        {"input": {"prompt": ""}},
        {"input": {"messages": []}},
        {"input": {"messages": [{"role": "user", "content": '{"speaker": 1, "content": 2}'}]}},
        {"input": {"messages": [{"role": "user", "content": '{"speaker": "x", "content": "hi"}'}]}},
        {"input": None},
        {"input": []},
        {"input": {"prompt": "hi"}, "parameters": "x"},
    ]
    for body in dash_cases:
        assert_dashscope_shape(http.post(DASHSCOPE, json=body))


@pytest.mark.parametrize(
    "field",
    [
        {"temperature": "hot"},
        {"temperature": 5},
        {"top_p": -1},
        {"max_tokens": 0},
        {"max_completion_tokens": "many"},
        {"n": 3},
    ],
)
def test_sampling_fields_of_the_wrong_type_or_range_are_a_clean_400(http, field):
    response = http.post(OPENAI, json=openai_body(**field))
    assert_openai_shape(response)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == next(iter(field))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (openai_body(thread_id=1.5), "thread_id"),
        (openai_body({"role": "user", "content": 5}), "messages.0.content"),
    ],
)
def test_an_error_names_the_field_not_our_types(http, body, param):
    response = http.post(OPENAI, json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_sampling_fields_in_range_are_accepted(http):
    body = openai_body(temperature=0.3, top_p=0.9, max_tokens=64, n=1)
    assert http.post(OPENAI, json=body).status_code == 200
    text = openai_body({"role": "user", "content": [{"type": "text", "text": "hi"}]},
                       response_format={"type": "text"})  # fmt: skip
    assert http.post(OPENAI, json=text).status_code == 200


IMAGE = {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}}


@pytest.mark.parametrize(
    ("body", "param", "named"),
    [  # JSON asked for was answered in prose; an image was "Input should be a valid string"
        (openai_body(response_format={"type": "json_object"}), "response_format",
         "response_format 'json_object'"),
        (openai_body(response_format={"type": "json_schema", "json_schema": {"name": "x"}}),
         "response_format", "response_format 'json_schema'"),
        (openai_body({"role": "user", "content": [{"type": "text", "text": "看"}, IMAGE]}),
         "messages.0.content", "a content part of type 'image_url'"),
    ],
)  # fmt: skip
def test_what_is_not_text_is_refused_by_name(http, body, param, named):
    response = http.post(OPENAI, json=body)
    assert_openai_shape(response)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"] == f"{param}: lang-agent takes and gives text only, not {named}"


BAD_TOOL_CALLS = [[{"id": 1}], [{"function": "f"}], [{"function": {"name": 5}}], ["call"]]


@pytest.mark.parametrize("tool_calls", BAD_TOOL_CALLS)
@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_malformed_tool_calls_in_history_are_a_clean_400(http, path, body, check, tool_calls):
    history = {"role": "assistant", "content": "x", "tool_calls": tool_calls}
    response = http.post(path, json=body(history, user()))
    check(response)
    assert response.status_code == 400 and "tool_calls" in response.text


# A blank DashScope session_id is no session, as an empty one is: test_dashscope_api.py.
@pytest.mark.parametrize(
    ("path", "body", "check", "thread_id"),
    [
        *(pytest.param(*case.values, bad, id=f"{case.id}-{bad!r}") for case in BOTH
          for bad in ("a\x00b", "line\nbreak")),
        pytest.param(OPENAI, openai_body, assert_openai_shape, "   ", id="openai-blank"),
    ],
)  # fmt: skip
def test_thread_ids_the_store_cannot_keep_are_a_clean_400(http, path, body, check, thread_id):
    key = "thread_id" if path == OPENAI else "session_id"
    response = http.post(path, json=body(user(), **{key: thread_id}))
    check(response)
    assert response.status_code == 400 and key in response.text


@pytest.mark.parametrize(
    ("path", "check"), [(OPENAI, assert_openai_shape), (DASHSCOPE, assert_dashscope_shape)]
)
def test_a_number_too_long_to_read_is_a_clean_400(http, path, check):
    raw = b'{"messages": [{"role": "user", "content": "hi"}], "n": ' + b"9" * 5000 + b"}"
    response = http.post(path, content=raw, headers={"Content-Type": "application/json"})
    check(response)
    assert response.status_code == 400 and "too many digits" in response.text


def test_any_thread_a_turn_can_name_can_be_deleted(http):
    for thread_id in [f"home/kitchen-{uuid.uuid4().hex[:6]}", f" padded-{uuid.uuid4().hex[:6]} "]:
        assert http.post(OPENAI, json=openai_body(thread_id=thread_id)).status_code == 200
        path = "/v1/threads/" + thread_id.replace("/", "%2F").replace(" ", "%20")
        deleted = http.delete(path)
        assert deleted.status_code == 200 and deleted.json()["id"] == thread_id.strip()
        assert http.delete(path).status_code == 404
    refused = http.delete("/v1/threads/a%00b")
    assert_openai_shape(refused)
    assert refused.status_code == 400


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("path", "body", "check"), BOTH)
def test_unicode_line_separators_survive_the_round_trip(http, path, body, check, stream):
    """The model echoes them back: its event stream must not be split on U+2028 and friends."""
    text = "a\u0085b\u2028c\u2029d\x0ce\x1cf\rg"
    extra = {"stream": True} if stream and path == OPENAI else {}
    headers = {"X-DashScope-SSE": "enable"} if stream and path == DASHSCOPE else {}
    response = http.post(path, json=body(user(text), **extra), headers=headers)
    check(response)
    assert response.status_code == 200
    assert "\\u2028" in response.text or "\u2028" in response.text
