"""The predicate language over real rows, including input meant to break out of the filter."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest

from lang_agent.capture.predicate import PredicateError, compile_predicate
from lang_agent.capture.query import CallFilter, delete_calls, get_calls, list_calls
from lang_agent.capture.record import CallRecord
from lang_agent.capture.recorder import Recorder
from tests.capture_fixtures import capture_db, capture_dsn, capture_pg

__all__ = ["capture_db", "capture_dsn", "capture_pg"]

THREAD = f"q-{uuid.uuid4().hex[:10]}"


def record(n: int, **fields) -> CallRecord:
    base = CallRecord(
        method="POST",
        url=f"http://up/v1/chat/completions?n={n}",
        request_header={"content-type": "application/json"},
        created_at=datetime.now(UTC),
        thread_id=THREAD,
        status="ok",
        status_code=200,
    )
    for key, value in fields.items():
        setattr(base, key, value)
    return base


@pytest.fixture(scope="module")
async def seeded(capture_db):
    recorder = Recorder(dsn=capture_db.dsn)
    await recorder.start()
    rows = [
        record(
            1,
            model="qwen-plus",
            latency_ms=120.0,
            request_body={"messages": [{"role": "user", "content": "it's raining"}]},
            response_body={"choices": [{"finish_reason": "length"}], "usage": {"prompt_tokens": 9}},
            response_header={"msh-request-id": "req-42"},
            flags={"truncated": {"suggested_max_tokens": 100}},
            finish_reason="length",
        ),
        record(2, model="qwen-flash", status="http_error", status_code=429, latency_ms=5.0),
        record(3, model="kimi-k2.5", latency_ms=900.0, tags=["code", "python"]),
        record(4, model="100% real", latency_ms=50.0, status="incomplete", error="cut"),
    ]
    for row in rows:
        recorder.finish(row)
    await recorder.close()
    return rows


async def models(db, *predicates: str) -> set[str]:
    async with db.connection() as conn:
        rows = await list_calls(conn, CallFilter(predicates=predicates, thread_id=THREAD), limit=0)
    return {r["model"] for r in rows}


@pytest.mark.parametrize(
    ("predicate", "expected"),
    [
        ("status_code @ [429, 500]", {"qwen-flash"}),
        ("response_body.choices.0.finish_reason == 'length'", {"qwen-plus"}),
        ("response_body.choices.-1.finish_reason == 'length'", {"qwen-plus"}),
        ('request_body.messages.-1.content ~ "it\'s"', {"qwen-plus"}),
        ("request_body.messages.0.content ~ 'it\\'s*'", {"qwen-plus"}),
        ("model ~ 'qwen*'", {"qwen-plus", "qwen-flash"}),
        ("model ~ '*k2.5'", {"kimi-k2.5"}),
        ("model ~ '100%'", {"100% real"}),
        ("latency > 100 && (status == 'ok' || status == 'http_error')", {"qwen-plus", "kimi-k2.5"}),
        ("response_header % 'req-[0-9]+'", {"qwen-plus"}),
        ("response_body.usage.prompt_tokens >= 9", {"qwen-plus"}),
        ("flags.truncated != null", {"qwen-plus"}),
        ("error == null && status != 'ok'", {"qwen-flash"}),
        ("tags ~ 'python'", {"kimi-k2.5"}),
        # tags is a set: each operator asks about one tag, never the tags joined into a string
        ("tags == 'code'", {"kimi-k2.5"}),
        ("tags == 'python'", {"kimi-k2.5"}),
        ("tags == 'cod'", set()),
        ("tags != 'code'", {"qwen-plus", "qwen-flash", "100% real"}),
        ("tags @ ['python', 'rust']", {"kimi-k2.5"}),
        ("tags !@ ['rust', 'code']", {"qwen-plus", "qwen-flash", "100% real"}),
        ("tags ~ 'PYTHON'", {"kimi-k2.5"}),
        ("tags ~ 'pyth'", {"kimi-k2.5"}),  # contains, as `~` everywhere
        ("tags ~ 'e,p'", set()),  # never across two tags
        ("tags ~ 'py*'", {"kimi-k2.5"}),
        ("tags ~ '*od*'", {"kimi-k2.5"}),
        ("tags !~ 'code'", {"qwen-plus", "qwen-flash", "100% real"}),
        ("tags % '^py'", {"kimi-k2.5"}),
        ("tags !% '^py'", {"qwen-plus", "qwen-flash", "100% real"}),
        ("status !@ ['ok']", {"qwen-flash", "100% real"}),
        ("url ~ 'n=3'", {"kimi-k2.5"}),
        (
            "requested_at > '2000-01-01' && chatcmpl == null",
            {"qwen-plus", "qwen-flash", "kimi-k2.5", "100% real"},
        ),
    ],
)
async def test_predicates_select_the_right_calls(capture_db, seeded, predicate, expected):
    assert await models(capture_db, predicate) == expected


async def test_repeated_predicates_are_anded(capture_db, seeded):
    assert await models(capture_db, "model ~ 'qwen'", "status_code == 429") == {"qwen-flash"}


@pytest.mark.parametrize(
    "hostile",
    [
        'model == "\' OR 1=1 --"',
        'model == "x\'); DROP TABLE llm_calls; --"',
        "model == 'a\\' OR \\'1\\'=\\'1'",
        "model ~ '%' && model == '_'",
        "response_body.'x\\'); DROP TABLE llm_calls; --' == 1",
    ],
)
async def test_hostile_values_stay_values(capture_db, seeded, hostile):
    assert await models(capture_db, hostile) == set()
    assert len(await models(capture_db, "id > 0")) == 4  # the table is intact


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("password == 'x'", "unknown field"),
        ("pg_sleep(5) == 1", "unknown field"),
        ("status = 'ok'", "unexpected"),
        ("status == 'ok' & id > 1", "unexpected"),
        ("model.name == 'x'", "no sub-fields"),
        ("status_code == '200'", "needs a int value"),
        ("status == 'ok", "unexpected"),
        ("(status == 'ok'", "expected ')'"),
        ("", "empty predicate"),
        ("status ~ 1", "needs a text value"),
        ("id @ [1, null]", "null cannot"),
        ("status == 'ok'; DROP TABLE llm_calls", "unexpected"),
        ("model == '' OR 1=1 --'", "unexpected"),
        ("' OR 1=1 --", "unexpected"),
        ("OR 1 == 1", "unknown field"),
        ("status ==", "unexpected end"),
        ("tags > 'a'", "tags take"),
        ("tags == 1", "needs text"),
        ("tags @ ['a', 2]", "needs text"),
    ],
)
def test_invalid_predicates_are_rejected_before_sql(predicate, message):
    with pytest.raises(PredicateError, match=re.escape(message)):
        compile_predicate(predicate)


def test_compiled_sql_holds_no_user_text():
    condition, params = compile_predicate("model == 'evil; DROP' && request_body.'k' ~ 'x'")
    text = condition.as_string(None)
    assert "evil" not in text and "DROP" not in text and "'k'" not in text
    assert "evil; DROP" in params and ["k"] in params


async def test_get_and_delete_by_filter(capture_db, seeded):
    recorder = Recorder(dsn=capture_db.dsn)
    await recorder.start()
    doomed = record(9, model="doomed", error="cut", status="incomplete")
    doomed.thread_id = f"q-{uuid.uuid4().hex[:10]}"
    recorder.finish(doomed)
    await recorder.close()
    async with capture_db.connection() as conn:
        mine = CallFilter(thread_id=doomed.thread_id, predicates=("error == 'cut'",))
        (row,) = await get_calls(conn, mine)
        assert row["status"] == "incomplete" and row["request_header"]
        assert await delete_calls(conn, CallFilter(id=row["id"]), batch=1) == 1
        assert await get_calls(conn, mine) == []
