"""Calls without a thread, linked into conversations by their messages: the rules, then through
the proxy with the openai SDK as two clients whose conversations open alike."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import openai
from click.testing import CliRunner

from lang_agent.capture.linking import connected, conversation_key, parents
from lang_agent.capture.proxy import running_proxy
from lang_agent.cli import main
from lang_agent.llm.sim import Simulator
from lang_agent.settings import Settings
from tests.capture_fixtures import capture_dsn, capture_pg

__all__ = ["capture_dsn", "capture_pg"]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str = "", *call_ids: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if call_ids:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
            for i in call_ids
        ]
    return message


def system(text: str) -> dict[str, Any]:
    return {"role": "system", "content": text}


def call(call_id: int, messages: list[dict], answer: dict | None = None) -> dict[str, Any]:
    return {"id": call_id, "messages": messages, "answer": answer}


def test_the_key_is_the_first_user_message_whatever_the_instructions_say():
    opening = {"messages": [system("08:00"), user("你好")]}
    later = {"messages": [system("08:01"), user("你好"), assistant("嗨"), user("讲个笑话")]}
    assert conversation_key(opening) == conversation_key(later) is not None
    assert conversation_key({"messages": [user("你好呀")]}) != conversation_key(opening)
    for body in ('{"messages": [', {"input": "x"}, {"messages": [system("x")]}, None):
        assert conversation_key(body) is None


def test_two_conversations_that_open_alike_are_told_apart_by_their_answers():
    a1 = call(1, [user("你好")], assistant("你好，我是 A"))
    b1 = call(2, [user("你好")], assistant("你好，我是 B"))
    a2 = call(3, [user("你好"), assistant("你好，我是 A"), user("几点了")], assistant("八点"))
    b2 = call(4, [user("你好"), assistant("你好，我是 B"), user("讲个笑话")], assistant("好"))
    a3 = call(5, [*a2["messages"], assistant("八点"), user("谢谢")], assistant("不客气"))
    links = parents([a1, b1, a2, b2, a3])
    assert links == {3: 1, 4: 2, 5: 3}
    assert connected(5, links) == connected(1, links) == [1, 3, 5]
    assert connected(2, links) == [2, 4]


def test_instructions_may_change_and_break_ties_when_answers_are_alike():
    same = assistant("你好")
    ming = call(1, [system("用户叫小明 08:00"), user("你好")], same)
    hong = call(2, [system("用户叫小红 08:00"), user("你好")], same)
    bye = assistant("再见")
    ming2 = call(3, [system("用户叫小明 08:00"), user("你好"), same, user("再见")], bye)
    moved = call(4, [system("用户叫小红 08:01"), user("你好"), same, user("再见")], bye)
    links = parents([ming, hong, ming2, moved])
    assert links[3] == 1  # the same instructions
    assert links[4] == 2  # none the same: the latest of the alike


def test_a_tool_loop_continues_by_its_call_ids():
    ask = user("开灯")
    first = call(1, [ask], assistant("", "call_1"))
    other = call(2, [ask], assistant("", "call_9"))  # the same question, another client
    result = {"role": "tool", "tool_call_id": "call_1", "content": "ok"}
    second = call(3, [ask, assistant("", "call_1"), result], assistant("开好了"))
    third = call(4, [ask, assistant("", "call_1"), result, assistant("开好了"), user("关灯")])
    assert parents([first, other, second, third]) == {3: 1, 4: 3}


def test_a_retry_continues_the_attempt_that_failed_and_a_cut_body_links_to_nothing():
    failed = call(1, [user("x")])  # a 500: no answer
    retried = call(2, [user("x")], assistant("y"))
    other = call(3, [user("x")], assistant("y"))  # answered alike, by someone else: not a retry
    on = call(4, [user("x"), assistant("y"), user("z")], assistant("w"))
    cut = call(5, '[{"role": "user", "content": "x"}, ...')  # stored as text
    links = parents([failed, retried, other, on, cut])
    assert links == {2: 1, 4: 3}
    assert connected(4, links) == [3, 4] and connected(2, links) == [1, 2]
    assert connected(1, links) == [1, 2] and connected(5, links) == [5]


def test_the_same_words_match_however_a_client_sends_them_back():
    first = call(1, [user("讲个笑话")], assistant("好的，"))
    alike = call(2, [user("讲个笑话")], assistant("好的"))
    parts = [{"type": "text", "text": "讲个"}, {"type": "text", "text": "笑话"}]
    echoed = call(3, [{"role": "user", "content": parts}, assistant("好的， "), user("再来")])
    assert conversation_key({"messages": echoed["messages"]}) == conversation_key(
        {"messages": first["messages"]}
    )
    assert parents([first, alike, echoed]) == {3: 1}  # its answer, trimmed


def test_a_conversation_leaves_out_others_that_branch_off_before_it():
    links = {2: 1, 3: 2, 4: 2, 5: 4}  # 1 → 2, then 3 and 4 → 5 part ways
    assert connected(3, links) == [1, 2, 3]
    assert connected(5, links) == [1, 2, 4, 5]
    assert connected(2, links) == [1, 2, 3, 4, 5]  # all that continues it


# -- through the proxy ------------------------------------------------------------------------


async def chat(client: openai.AsyncOpenAI, who: str, tag: str, questions: list[str]) -> list[str]:
    """One client's conversation, its history kept and sent back as apps do; the
    completion ids of its calls."""
    history: list[dict[str, Any]] = []
    ids = []
    for minute, question in enumerate(questions):
        history.append(user(f"{question} {tag}" if not history else question))
        prompt = system(f"你是语音助手。用户叫{who}。现在是 08:0{minute}。")
        answer = await client.chat.completions.create(model="sim-chat", messages=[prompt, *history])
        history.append(assistant(answer.choices[0].message.content or ""))
        ids.append(answer.id)
    return ids


async def two_clients(dsn: str, tag: str) -> tuple[list[str], list[str]]:
    """Two conversations through a proxy in front of the simulator; its calls are written
    when it stops."""
    sim = Simulator()
    await sim.start(host="127.0.0.1", port=0)
    try:
        settings = Settings(_env_file=None, conn_str=dsn, proxy_upstream=sim.base_url)
        async with running_proxy(settings, dsn=dsn, port=0) as running:
            client = openai.AsyncOpenAI(base_url=running.base_url, api_key="k", max_retries=0)
            # Both open with the same words and get the same answers (the simulator echoes).
            ming = await chat(client, "小明", tag, ["你好", "讲个笑话", "再讲一个"])
            hong = await chat(client, "小红", tag, ["你好", "讲个笑话"])
    finally:
        await sim.stop()
    return ming, hong


def test_the_proxy_s_calls_are_listed_and_compared_by_conversation(capture_dsn):
    tag = uuid.uuid4().hex[:8]
    ming, hong = asyncio.run(two_clients(capture_dsn, tag))
    run = CliRunner()

    def calls(*args: str) -> Any:
        result = run.invoke(main, ["calls", *args, "--json"], env={"CONN_STR": capture_dsn})
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    rows = calls("list", "-p", f"request_body ~ '{tag}'", "-p", "status == 'ok'")
    by_chatcmpl = {row["chatcmpl_id"]: row["id"] for row in rows}
    ming_ids = [by_chatcmpl[c] for c in ming]
    hong_ids = [by_chatcmpl[c] for c in hong]
    for members, asked in ((ming_ids, ming_ids[-1]), (hong_ids, hong_ids[0])):
        listed = calls("list", "--conversation", str(asked))
        assert sorted(row["id"] for row in listed) == members

    diff = calls("diff", "--id", str(ming_ids[2]))
    assert (diff["before"]["id"], diff["after"]["id"]) == (ming_ids[1], ming_ids[2])
    # the clock in the system prompt is what ended the reusable prefix
    assert diff["prefix_cache"]["ends_at"] == "message"
    assert diff["messages"]["first_difference"]["role"] == "system"
