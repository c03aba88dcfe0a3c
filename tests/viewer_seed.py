"""Viewer test data: turns, messages and captured calls written straight into Postgres."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from lang_agent.agent.state import LogEntry as Msg  # a logged message, as the agent writes it
from lang_agent.db import CONNECTION_KWARGS, migrate

XSS = "<img src=x onerror=window.__xss=1>"
FALLBACK_SPOKEN = "抱歉，我这边出了点问题，请稍后再试。"

INSERT_TURN = """
INSERT INTO turns (turn_id, thread_id, front_end, profile, route, status, error_code, error,
                   started_at, ttft_ms, latency_ms, prompt_tokens, completion_tokens, models)
VALUES (%s, %s, 'openai', %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
INSERT_MESSAGE = """
INSERT INTO messages (thread_id, turn_id, seq, role, content, tool_calls, tool_call_id, tool_name,
                      is_filler, is_fallback, model, turn_started_at, created_at)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""
INSERT_CALL = """
INSERT INTO llm_calls (call_id, thread_id, turn_id, node, method, url, model, stream, status,
                       status_code, created_at, finished_at, ttft_ms, latency_ms, prompt_tokens,
                       completion_tokens, total_tokens, cost, finish_reason, flags,
                       request_header, request_body, response_body)
VALUES (%s, %s, %s, %s, 'POST', 'http://127.0.0.1:1/v1/chat/completions', %s, true, %s, %s,
        %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
"""


@dataclass
class Call:
    node: str = "chat"
    model: str = "qwen-plus"
    status: str = "ok"
    latency_ms: float = 400.0
    ttft_ms: float = 120.0
    cost: float | None = 0.0002
    flags: dict[str, Any] = field(default_factory=dict)
    finish_reason: str = "stop"


def apply_schema(dsn: str) -> None:
    async def run() -> None:
        async with await psycopg.AsyncConnection.connect(dsn, **CONNECTION_KWARGS) as conn:
            await migrate(conn)

    asyncio.run(run())


def seed_turn(
    conn: psycopg.Connection,
    thread_id: str | None,
    *,
    at: datetime,
    messages: list[Msg],
    route: str = "chat",
    status: str = "ok",
    error_code: str | None = None,
    latency_ms: float = 900.0,
    ttft_ms: float = 250.0,
    calls: list[Call] = (),
    profile: str = "default",
) -> uuid.UUID:
    """One turn with its messages and captured calls; returns the turn id."""
    turn_id = uuid.uuid4()
    models = [{"model": "qwen-plus", "input_tokens": 50, "output_tokens": 10, "cached_tokens": 0}]
    conn.execute(
        INSERT_TURN,
        (turn_id, thread_id, profile, route, status, error_code, None, at, ttft_ms, latency_ms,
         50, 10, Jsonb(models)),
    )  # fmt: skip
    for seq, m in enumerate(messages):
        conn.execute(
            INSERT_MESSAGE,
            (thread_id, turn_id, seq, m.role, m.content,
             Jsonb(m.tool_calls) if m.tool_calls else None, m.tool_call_id, m.tool_name,
             m.is_filler, m.is_fallback, m.model, at,
             at + timedelta(milliseconds=100 * (seq + 1))),
        )  # fmt: skip
    for i, c in enumerate(calls):
        created = at + timedelta(milliseconds=10 * i)
        conn.execute(
            INSERT_CALL,
            (uuid.uuid4(), thread_id, str(turn_id), c.node, c.model, c.status,
             200 if c.status == "ok" else 500, created,
             created + timedelta(milliseconds=c.latency_ms), c.ttft_ms, c.latency_ms, 40, 8, 48,
             c.cost, c.finish_reason, Jsonb(c.flags), Jsonb({"authorization": "[REDACTED]"}),
             Jsonb({"model": c.model, "messages": [{"role": "user", "content": "hi"}]}),
             Jsonb({"choices": [{"message": {"content": "hello"}}]})),
        )  # fmt: skip
    return turn_id


def weather_thread(conn: psycopg.Connection, thread_id: str, *, at: datetime) -> list[uuid.UUID]:
    """Two turns: a chat greeting, then a tool turn with filler, a tool call and its result."""
    first = seed_turn(
        conn,
        thread_id,
        at=at,
        messages=[
            Msg("user", "你好"),
            Msg("assistant", "你好！有什么可以帮你？", model="sim-chat"),
        ],
        calls=[Call(node="router"), Call(node="chat")],
    )
    call = {"name": "get_weather", "args": {"city": "北京"}, "id": "call-1"}
    second = seed_turn(
        conn,
        thread_id,
        at=at + timedelta(seconds=30),
        route="tool",
        messages=[
            Msg("user", "北京天气怎么样"),
            Msg("assistant", "稍等，我查一下", is_filler=True, model="sim-chatty"),
            Msg("assistant", "", tool_calls=[call], model="sim-tool"),
            Msg(
                "tool",
                '{"weather": "sunny", "temp_c": 25}',
                tool_call_id="call-1",
                tool_name="get_weather",
            ),
            Msg("assistant", "北京今天晴，25度。", model="sim-tool"),
        ],  # fmt: skip
        calls=[
            Call(node="router"),
            Call(node="tool", flags={"truncated": {"suggested_max_tokens": 2048}}),
            Call(node="chatty", status="error", cost=None),
        ],
    )
    return [first, second]


def failed_turn(conn: psycopg.Connection, thread_id: str, *, at: datetime) -> uuid.UUID:
    """A DashScope turn the model cut mid-answer: the cut answer, then the spoken fallback."""
    return seed_turn(
        conn,
        thread_id,
        at=at,
        status="failed",
        error_code="upstream_error",
        messages=[
            Msg("user", "讲个故事"),
            Msg("assistant", "从前有座山，", model="sim-chat"),
            Msg("assistant", FALLBACK_SPOKEN, is_fallback=True),
        ],
    )
