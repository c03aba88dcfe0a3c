"""The viewer in real headless Chromium: log in, open a conversation, see the bubbles on the right
sides in the right colours, a tool bubble, the turn's calls, search, live updates, inert XSS."""

from __future__ import annotations

import importlib
import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from fastapi_server.viewer import create_viewer_app
from lang_agent.settings import ROOT, Settings
from tests.support import LiveServer
from tests.viewer_seed import (
    FALLBACK_SPOKEN,
    XSS,
    Msg,
    apply_schema,
    failed_turn,
    seed_turn,
    weather_thread,
)

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
KEY = "browser-viewer-key-42"
HUMAN_BLUE = "rgb(37, 99, 235)"
AI_GREEN = "rgb(22, 163, 74)"
TOOL_ORANGE = "rgb(249, 115, 22)"

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing in CI: .ci/run installs Debian's chromium")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

if os.environ.get("CI") == "true":
    sync_api = importlib.import_module("playwright.sync_api")
else:
    sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def seeded(pg_dsn: str) -> dict[str, str]:
    """A weather thread, an XSS thread and a search token; newer than anything else."""
    apply_schema(pg_dsn)
    suffix = uuid.uuid4().hex[:8]
    ids = {"weather": f"kitchen-speaker-{suffix}", "xss": f"{XSS}-{suffix}", "token": suffix}
    at = datetime.now(UTC) + timedelta(days=73000)  # newest of all, so on the first page
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        weather_thread(conn, ids["weather"], at=at)
        failed_turn(conn, ids["weather"], at=at + timedelta(seconds=45))
        weather_thread(conn, f"dashboard-{suffix}", at=datetime.now(UTC) - timedelta(minutes=10))
        seed_turn(
            conn,
            ids["weather"],
            at=at + timedelta(minutes=1),
            messages=[
                Msg("user", f"记住暗号 zebra-{suffix}"),
                Msg("assistant", "好的，记住了。", model="sim-chat"),
            ],
            profile="kitchen-speaker",
        )
        seed_turn(
            conn,
            ids["xss"],
            at=at + timedelta(minutes=2),
            messages=[Msg("user", XSS), Msg("assistant", f"<script>window.__xss=2</script>{XSS}")],
        )
    return ids


@pytest.fixture(scope="module")
def viewer(pg_dsn: str, seeded, tmp_path_factory) -> LiveServer:
    settings = Settings(
        _env_file=None,
        conn_str=pg_dsn,
        viewer_keys=KEY,
        data_dir=tmp_path_factory.mktemp("viewer-browser"),
    )
    with LiveServer(create_viewer_app(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def page(viewer: LiveServer):
    problems: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        context = browser.new_context(viewport={"width": 1360, "height": 900}, locale="zh-CN")
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.on(
            "response",
            lambda response: (
                problems.append(f"{response.status} {response.url}")
                if response.status >= 400
                else None
            ),
        )
        page.on(
            "console",
            lambda message: (
                problems.append(f"console: {message.text}") if message.type == "error" else None
            ),
        )
        page.problems = problems
        page.goto(viewer.url + "/")
        page.fill("input[name=key]", KEY)
        page.click("button[type=submit]")
        page.wait_for_selector(".thread-item")
        yield page
        context.close()
        browser.close()


def open_thread(page, thread_id: str) -> None:
    page.locator(".thread-item", has_text=thread_id).first.click()
    page.wait_for_function(
        "id => document.getElementById('thread-title').textContent === id && "
        "document.querySelector('#conversation .turn')",
        arg=thread_id,
    )


def style(locator, prop: str) -> str:
    return locator.evaluate("(node, prop) => getComputedStyle(node)[prop]", prop)


def centre_x(locator) -> float:
    box = locator.bounding_box()
    return box["x"] + box["width"] / 2


def test_conversation_bubbles_sides_colours_and_tool(page, seeded):
    open_thread(page, seeded["weather"])
    assert page.locator("#thread-title").text_content() == seeded["weather"]
    conversation = page.locator("#conversation").bounding_box()
    middle = conversation["x"] + conversation["width"] / 2

    human = page.locator(".bubble.human", has_text="北京天气怎么样")
    assert style(human, "backgroundColor") == HUMAN_BLUE
    assert centre_x(human) > middle

    answer = page.locator(".bubble.ai", has_text="北京今天晴")
    assert style(answer, "backgroundColor") == AI_GREEN
    assert centre_x(answer) < middle

    tool = page.locator(".bubble.tool")
    assert tool.count() == 1
    assert style(tool, "borderTopStyle") == "solid"
    assert style(tool, "borderTopColor") == TOOL_ORANGE
    assert centre_x(tool) < middle
    assert tool.locator(".tool-name").text_content() == "tool · get_weather"
    assert "北京" in tool.locator(".tool-args").text_content()
    assert "sunny" in tool.locator(".tool-result").text_content()

    filler = page.locator(".bubble.filler")
    assert filler.locator(".filler-badge").text_content() == "filler"
    assert "稍等" in filler.text_content()

    # A failed turn shows what the speaker was told: the cut answer, then the fallback.
    fallback = page.locator(".bubble.fallback")
    assert fallback.locator(".fallback-badge").text_content() == "fallback"
    assert FALLBACK_SPOKEN in fallback.text_content()
    failed = page.locator(".turn", has=fallback)
    assert failed.locator(".badge.status-failed").first.text_content() == "failed"
    assert failed.locator(".bubble.ai", has_text="从前有座山").count() == 1

    head = page.locator(".turn", has=tool).locator(".turn-head")
    assert head.locator(".badge.route").text_content() == "tool"
    # Which product answered a turn: a profile's name; the default profile's turns say none.
    assert head.locator(".badge.profile").count() == 0
    kitchen = page.locator(".turn", has_text="zebra-").locator(".badge.profile")
    assert kitchen.text_content() == "kitchen-speaker"
    assert "900 ms" in head.text_content() and "TTFT 250 ms" in head.text_content()
    assert "truncated" in head.text_content()
    href = page.locator("#export").get_attribute("href")
    assert href.startswith("/api/viewer/thread/export?id=kitchen-speaker-")


def test_turn_calls_expand_with_their_ids_and_bad_case_link(page, seeded, pg_dsn):
    open_thread(page, seeded["weather"])
    turn = page.locator(".turn", has=page.locator(".bubble.tool"))
    turn.locator(".calls-toggle").click()
    rows = turn.locator(".call-row")
    rows.first.wait_for()
    assert rows.count() == 3
    # The ids `lang-agent calls …` take: the turn's for `calls list --turn`, each call's `--id`.
    turn_id = turn.locator(".calls-head .turn-id").text_content()
    with psycopg.connect(pg_dsn) as conn:
        ids = conn.execute(
            "SELECT id FROM llm_calls WHERE turn_id = %s ORDER BY created_at, id", (turn_id,)
        ).fetchall()
    assert [row.locator(".call-id").text_content() for row in rows.all()] == [
        f"#{i}" for (i,) in ids
    ]
    assert "truncated" in rows.nth(1).text_content()
    link = rows.nth(1).locator("a.export-case")
    assert link.get_attribute("href").endswith("/export?category=badcase")
    rows.nth(1).locator("button.link").click()
    turn.locator(".call-detail pre", has_text='"model": "qwen-plus"').first.wait_for()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer.png"))


def test_search_finds_a_message(page, seeded):
    page.fill("#search", f"zebra-{seeded['token']}")
    items = page.locator(".thread-item")
    page.wait_for_function(
        "n => document.querySelectorAll('.thread-item').length === n && "
        "document.querySelector('.thread-snippet.match')",
        arg=1,
    )
    assert items.first.locator(".thread-id").text_content() == seeded["weather"]
    assert f"zebra-{seeded['token']}" in items.first.locator(".thread-snippet").text_content()
    page.fill("#search", "")
    page.wait_for_function("() => document.querySelectorAll('.thread-item').length > 1")


def test_html_in_a_thread_id_and_messages_stays_text(page, seeded):
    item = page.locator(".thread-item", has_text=seeded["xss"]).first
    assert item.locator(".thread-id").text_content() == seeded["xss"]
    open_thread(page, seeded["xss"])
    assert page.locator("#thread-title").text_content() == seeded["xss"]
    assert page.locator(".bubble.human .text").text_content() == XSS
    assert XSS in page.locator(".bubble.ai .text").text_content()
    assert page.locator("main img, aside img, main script").count() == 0
    assert page.evaluate("window.__xss") is None
    assert page.problems == []


def test_open_conversation_updates_live(page, seeded, pg_dsn):
    open_thread(page, seeded["weather"])
    page.wait_for_selector("#live.on")
    text = f"live message {uuid.uuid4().hex[:6]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        at = datetime.now(UTC) + timedelta(days=73000, minutes=5)
        seed_turn(conn, seeded["weather"], at=at, messages=[Msg("user", text)])
        conn.execute("SELECT pg_notify('lang_agent_turns', %s)", (seeded["weather"],))
    page.locator(".bubble.human", has_text=text).wait_for()


def test_dashboard_draws_charts(page, viewer):
    page.goto(viewer.url + "/dashboard")
    page.wait_for_selector("#cards .card")
    page.wait_for_selector("#chart-volume svg")
    assert page.locator(".chart svg").count() >= 4
    assert page.problems == []
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "viewer-dashboard.png"), full_page=True)
