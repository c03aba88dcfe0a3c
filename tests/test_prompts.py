"""System prompts: placeholders, the clock, and a request that begins with the last one."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import openai
import psycopg
import pytest
from psycopg.rows import dict_row

from lang_agent.prompts import PROMPT_NAMES, Prompts
from lang_agent.settings import CONFIGS
from lang_agent.tools.builtin import clock_values
from tests.conftest import TEST_KEY
from tests.support import wait_until

SHANGHAI = ZoneInfo("Asia/Shanghai")


def test_placeholders_are_filled_and_other_braces_are_left_alone():
    prompts = Prompts(
        dict.fromkeys(PROMPT_NAMES, '现在是 {current_time}，{tools} {"a": 1} {unknown}')
    )
    text = prompts.render("chat_prompt", current_time="08:00", tools="calculator")
    assert text == '现在是 08:00，calculator {"a": 1} {unknown}'


def test_a_missing_prompt_file_is_named(tmp_path):
    for name in PROMPT_NAMES[1:]:
        (tmp_path / f"{name}.txt").write_text("x", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="route_prompt.txt"):
        Prompts.load(tmp_path)


def test_the_clock_gives_the_minute_and_the_day():
    values = clock_values(datetime(2026, 12, 5, 8, 7, tzinfo=SHANGHAI))
    assert values == {
        "current_time": "2026-12-05 08:07 星期六 (Asia/Shanghai)",
        "current_date": "2026-12-05 星期六",
        "day_part": "上午",
    }
    parts = [clock_values(datetime(2026, 12, 5, h, tzinfo=SHANGHAI))["day_part"] for h in range(24)]
    assert parts[0] == "凌晨" and parts[7] == "早上" and parts[12] == "中午" and parts[23] == "晚上"


def test_the_shipped_prompts_change_six_times_a_day_not_every_minute():
    """A provider caches a request's prefix only up to its first changed character, and the
    thread's history follows the system prompt: a minute in it would bill the history anew."""
    prompts = Prompts.load(CONFIGS / "route_sys_prompts")

    def rendered(hour: int, minute: int, day: int = 5) -> list[str]:
        now = clock_values(datetime(2026, 12, day, hour, minute, tzinfo=SHANGHAI))
        return [prompts.render(name, tools="  - calculator", **now) for name in PROMPT_NAMES]

    day = [rendered(hour, minute) for hour in range(24) for minute in (0, 17, 59)]
    assert len({tuple(r) for r in day}) == 6  # one rendering per part of the day
    assert rendered(8, 0) == rendered(8, 41) == rendered(10, 59)
    chat = PROMPT_NAMES.index("chat_prompt")
    assert "2026-12-05 星期六，现在是上午" in rendered(8, 41)[chat]
    assert "2026-12-06 星期日" in rendered(8, 41, day=6)[chat]


CHAT_REQUESTS_SQL = """
SELECT request_body -> 'messages' AS messages FROM llm_calls
WHERE thread_id = %s AND node = %s AND status = 'ok' ORDER BY id
"""


@pytest.mark.parametrize("node", ["router_call", "chat_model_call"])
def test_each_turn_s_request_begins_with_the_last_one(live_server, pg_dsn, thread_id, node):
    """The second turn's request repeats the first's messages byte for byte, then adds to
    them: what a provider's prefix cache needs to bill the history once."""
    server = live_server()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=TEST_KEY, max_retries=0)
    for text in ("你好", "给我讲个笑话"):
        answer = client.chat.completions.create(
            model="lang-agent",
            messages=[{"role": "user", "content": text}],
            extra_body={"thread_id": thread_id},
        )
        assert answer.choices[0].message.content

    def requests():
        with psycopg.connect(pg_dsn, row_factory=dict_row) as conn:
            rows = conn.execute(CHAT_REQUESTS_SQL, (thread_id, node)).fetchall()
        return [row["messages"] for row in rows] if len(rows) == 2 else None

    first, second = wait_until(requests)
    assert first[0]["role"] == "system" and second[0] == first[0]
    if node == "chat_model_call":  # the whole first request, then its answer, then the new text
        assert second[: len(first)] == first
        assert second[len(first)]["role"] == "assistant"
        assert second[-1] == {"role": "user", "content": "给我讲个笑话"}
