"""End to end: a turn's model calls are captured, linked to thread, turn and node, and counted."""

from __future__ import annotations

import contextlib
import json
import re

import httpx2
import openai
import psycopg
from click.testing import CliRunner

from lang_agent.cli import main
from tests.conftest import TEST_KEY
from tests.support import latency, wait_until

CALLS_SQL = """
SELECT node, status, turn_id, request_header::text AS headers, prompt_tokens, conversation_key
FROM llm_calls WHERE thread_id = %s ORDER BY id
"""
STATUS_SQL = "SELECT id, status, error FROM llm_calls WHERE thread_id = %s"


def test_a_tool_turn_is_captured_call_by_call(live_server, pg_dsn, thread_id):
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    stream = client.chat.completions.create(
        model="lang-agent",
        messages=[{"role": "user", "content": "3加5乘2等于多少"}],
        stream=True,
        extra_body={"thread_id": thread_id},
    )
    assert "13" in "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def captured():
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(CALLS_SQL, (thread_id,)).fetchall()
        finished = [row for row in rows if row[1] != "pending"]
        return finished if len(finished) == len(rows) and len(rows) >= 4 else None

    rows = wait_until(captured)
    nodes = [row[0] for row in rows]
    assert {"router_call", "tool_model_call", "chatty"} <= set(nodes)
    assert nodes.count("tool_model_call") == 2  # the tool call, then the answer
    assert len({row[2] for row in rows}) == 1  # one turn
    assert all("Bearer sim" not in row[3] for row in rows)
    assert all(row[4] for row in rows if row[1] == "ok")
    assert all(row[5] is None for row in rows)  # found by their thread, not linked

    metrics = httpx2.get(f"{server.url}/metrics").text
    assert "sim-tool" in metrics
    assert "lang_agent_capture_queue_bytes " in metrics
    assert re.search(r"^lang_agent_turns_in_flight \d+$", metrics, re.MULTILINE)
    assert "lang_agent_event_loop_lag_seconds_bucket{le=" in metrics
    health = httpx2.get(f"{server.url}/health").json()
    assert health["capture"]["dropped"] == 0 and health["capture"]["queued_bytes"] >= 0
    assert isinstance(health["turns_in_flight"], int)


def test_failed_lists_the_calls_that_failed_not_those_the_engine_left(
    live_server, simulator, pg_dsn, thread_id
):
    """A tool turn's speculative chat call is discarded (`incomplete`, `cancelled`) on every
    tool turn: `status != 'ok'` drowned the real failures in them; `--failed` shows those only."""
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)

    def turn(text: str) -> None:
        with contextlib.suppress(openai.APIError):
            client.chat.completions.create(
                model="lang-agent",
                messages=[{"role": "user", "content": text}],
                extra_body={"thread_id": thread_id},
            )

    with latency(simulator, "chat", ttft_ms=1000):  # still running when the router answers
        turn("3加5乘2等于多少")  # the tool route: the speculative chat call is dropped
    simulator.inject("cut", role="chat")
    turn("你好")  # the chat route: its answer breaks off mid-stream

    def settled() -> dict[int, tuple[str, str | None]] | None:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(STATUS_SQL, (thread_id,)).fetchall()
        ended = {row[0]: row[1:] for row in rows if row[1] != "pending"}
        return ended if len(ended) == len(rows) >= 5 else None

    calls = wait_until(settled)

    def listed(*args: str) -> list[dict]:
        env = {"CONN_STR": pg_dsn}
        shown = CliRunner().invoke(main, ["calls", "list", "--thread", thread_id, *args], env=env)
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.output)

    not_ok = listed("--json", "-p", "status != 'ok'")
    assert ("incomplete", "cancelled") in [calls[row["id"]] for row in not_ok]
    (failed,) = listed("--json", "--failed")
    assert (failed["status"], failed["node"]) == ("incomplete", "chat_model_call")
    assert calls[failed["id"]][1] not in (None, "cancelled")  # the upstream broke it off
    assert listed("--json", "--failed", "-p", "node == 'router_call'") == []
