"""scripts/demo_chat.py: `--once` in-process and against a server, the chat commands, how
events are shown (filler, tool calls and results apart from the answer), and how it fails:
bad settings, bad thread ids, Ctrl-C, servers that do not answer with the stream."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from lang_agent.agent.events import (
    AnswerDelta,
    Done,
    Failed,
    Filler,
    ModelUsage,
    RouteChosen,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    Usage,
)
from lang_agent.demo import EventPrinter, RemoteChat, history_text
from lang_agent.llm.sim import Simulator
from lang_agent.settings import ROOT
from tests.conftest import TEST_KEY
from tests.support import bare_env, script_env, set_latency

SCRIPT = ROOT / "scripts" / "demo_chat.py"
# Chat mode against this URL only connects on a turn: tests that send none need no server.
NO_SERVER = "http://127.0.0.1:18599"
PROMPT = "you › ".encode()


@pytest.fixture
def run_script(pg_dsn, simulator, empty_mcp_config, tmp_path):
    """Run the script in a clean directory (no .env) with settings for the test database."""

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        env = script_env(
            pg_dsn=pg_dsn,
            sim_url=simulator.base_url,
            mcp_config=empty_mcp_config,
            data_dir=tmp_path / "data",
            LLM_RETRIES="0",
        )
        return subprocess.run(
            [sys.executable, str(SCRIPT), *args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=120,
        )

    return run


def test_once_in_process_with_thread_memory(run_script, thread_id):
    first = run_script("--once", "3加5乘2等于多少")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("\n") == 1 and "13" in first.stdout
    run_script("--once", "我叫小明", "--thread", thread_id)
    again = run_script("--once", "我叫什么名字", "--thread", thread_id)
    assert again.returncode == 0, again.stderr
    assert "小明" in again.stdout


def test_in_process_thread_ids_follow_the_api_rule(run_script, thread_id):
    run_script("--once", "我叫小明", "--thread", f"  {thread_id} ")  # trimmed, as the API does
    again = run_script("--once", "我叫什么名字", "--thread", thread_id)
    assert again.returncode == 0, again.stderr
    assert "小明" in again.stdout
    too_long = run_script("--once", "你好", "--thread", "x" * 201)
    assert too_long.returncode == 2 and too_long.stdout == ""
    assert "thread id must be 1 to 200 characters" in too_long.stderr
    blank = run_script("--once", " ")
    assert blank.returncode == 2 and blank.stdout == ""
    assert "--once: expected something to say" in blank.stderr


def test_once_against_a_server(run_script, live_server, thread_id):
    server = live_server()
    result = run_script("--url", server.url, "--key", TEST_KEY, "--once", "3加5乘2等于多少")
    assert result.returncode == 0, result.stderr
    assert "13" in result.stdout and "\033[" not in result.stdout
    run_script("--url", f"{server.url}/v1", "--once", "我叫小明", "--thread", thread_id)
    again = run_script("--url", server.url, "--once", "我叫什么名字", "--thread", thread_id)
    assert "小明" in again.stdout  # --key defaults to the first FAST_AUTH_KEYS
    refused = run_script("--url", server.url, "--key", "wrong", "--once", "你好")
    assert refused.returncode == 1 and refused.stdout == ""
    assert "invalid_api_key" in refused.stderr


def test_interactive_commands_in_process(run_script, thread_id):
    lines = [
        f"/thread {thread_id}",
        "/thread " + "x" * 201,
        "我叫小明",
        "现在几点了",
        "/history",
        "/new",
        "/bogus now",
        "/thread",
        "/help",
        "/quit",
    ]
    result = run_script(stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"thread {thread_id}" in out
    assert f"thread id must be 1 to 200 characters; still on thread {thread_id}" in out
    assert "  · route: tool" in out and "  ⚙ current_time" in out and "  ✓ current_time → " in out
    # Piped input is not echoed: the user's words appear only in /history's listing.
    assert "you › 我叫小明" in out and "you › 现在几点了" in out
    assert "new thread demo-" in out and "/history" in out
    # It printed the help alone, as if /bogus had been a command that shows it.
    assert "unknown command /bogus\n/new  a new thread" in out
    assert "/thread wants a thread id: /thread ID\n/new  a new thread" in out
    assert out.count("/history · /help · /quit") == 4  # the banner, /bogus, /thread, /help


async def test_remote_events_show_filler_tools_and_answer(background_loop, live_server):
    simulator = Simulator()  # its own, on its own loop: latency changes stay here
    url = background_loop.run(simulator.start(host="127.0.0.1", port=0))
    try:
        set_latency(simulator, "tool", ttft_ms=600)  # slow tool model: filler speaks meanwhile
        server = live_server(sim_url=url)
        async with httpx2.AsyncClient() as client:
            chat = RemoteChat(client, url=server.url, key=TEST_KEY)
            events = [e async for e in chat.turn("现在几点了", thread_id="demo-remote")]
    finally:
        background_loop.run(simulator.stop())
    kinds = [type(e) for e in events]
    assert kinds[0] is RouteChosen and kinds[-1] is Done
    assert Filler in kinds and ToolStarted in kinds and ToolFinished in kinds
    assert kinds.index(Filler) < kinds.index(ToolStarted) < kinds.index(AnswerDelta)
    assert events[-1].usage.total_tokens > 0
    assert (await chat.history("demo-remote"))[0]["content"] == "现在几点了"
    # A thread this session has not used: the listing says where its log is, not "none".
    empty = history_text(
        await chat.history("other"), printer=EventPrinter(colour=False), empty=chat.empty_history
    )
    assert "this session" in empty and "viewer" in empty


def test_ctrl_c_while_waiting_on_piped_input_exits_130(tmp_path: Path):
    """No thread is left blocked on the piped stdin, so shutdown does not abort (SIGABRT)."""
    chat = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--url", NO_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=bare_env(),
    )
    try:
        shown = b""
        while PROMPT not in shown:  # the prompt is out: the chat is waiting for a line
            chunk = chat.stdout.read1()
            assert chunk, chat.stderr.read()
            shown += chunk
        chat.send_signal(signal.SIGINT)
        returncode = chat.wait(timeout=60)
    finally:
        chat.kill()
        chat.stdin.close()
    stderr = chat.stderr.read().decode()
    assert returncode == 130, stderr
    assert "Fatal Python error" not in stderr


@pytest.mark.parametrize(("setting", "value"), [("MCP_PING_S", "0"), ("LLM_PROVIDER", "bogus")])
def test_a_bad_setting_is_one_line(tmp_path: Path, setting: str, value: str):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--once", "你好"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**bare_env(), setting: value},
        timeout=60,
    )
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"Error: {setting}: ")


async def remote_turn(answer: httpx2.Response) -> list[TurnEvent]:
    """One turn through RemoteChat against a server that answers every request with `answer`."""
    transport = httpx2.MockTransport(lambda request: answer)
    async with httpx2.AsyncClient(transport=transport) as client:
        chat = RemoteChat(client, url=NO_SERVER, key=TEST_KEY)
        return [event async for event in chat.turn("你好", thread_id="demo-bad-server")]


async def test_remote_refuses_an_answer_that_is_not_a_stream():
    events = await remote_turn(httpx2.Response(200, json={"choices": []}))
    assert events == [
        Failed(
            "bad_response",
            f"{NO_SERVER}/v1/chat/completions answered application/json, not an event stream",
        )
    ]


async def test_remote_refuses_a_frame_that_is_not_json():
    sse = {"content-type": "text/event-stream"}
    events = await remote_turn(httpx2.Response(200, headers=sse, content=b"data: {oops\n\n"))
    assert events == [Failed("bad_response", "a stream frame is not a JSON object: {oops")]


def test_printer_keeps_kinds_apart():
    printer = EventPrinter(colour=False)
    events = [
        RouteChosen("tool"),
        Filler("好的，"),
        Filler("我看一下。"),
        ToolStarted("c1", "calculator", {"expression": "1+1"}),
        ToolFinished("c1", "calculator", result="2"),
        AnswerDelta("结果"),
        AnswerDelta("是2。"),
        Done(Usage((ModelUsage("m", 10, 5),))),
    ]
    text = "".join(printer.feed(e) for e in events)
    assert text.splitlines() == [
        "  · route: tool",
        "  … 好的，我看一下。",
        '  ⚙ calculator {"expression": "1+1"}',
        "  ✓ calculator → 2",
        "bot › 结果是2。",
        "  · 10+5 tokens",
    ]
    assert printer.answer == "结果是2。"


def test_printer_colours_and_errors():
    printer = EventPrinter(colour=True)
    filler = printer.feed(Filler("嗯"))
    tool = printer.feed(ToolStarted("c1", "lamp", {}))
    error = printer.feed(ToolFinished("c1", "lamp", error="the device did not answer"))
    failed = printer.feed(Failed("upstream_timeout", "no answer"))
    assert "\033[2;3m" in filler and "\033[33m" in tool and "\033[31m" in error
    assert "✗ lamp: the device did not answer" in error
    assert "✗ upstream_timeout: no answer" in failed and not printer.answer


def test_script_help_runs_without_side_effects(tmp_path: Path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0 and "--once" in result.stdout
    assert not (tmp_path / ".lang-agent").exists()
