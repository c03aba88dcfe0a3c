"""The stress tool's own code (scripts/stress_test.py, lang_agent/bench): table and JSON shape,
success accounting, E(c), the simulator call-log matching. No timing asserts."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from lang_agent.bench import report, scenarios
from lang_agent.bench.cli import ROOT
from lang_agent.bench.load import (
    CellResult,
    Counter,
    Sample,
    attach_model_time,
    completed_within,
    make_client,
)
from lang_agent.bench.load import run_cell as run_one
from lang_agent.bench.runner import Mode, Target, cell_line, run_cell, run_matrix
from lang_agent.bench.scenarios import voice_markdown, voice_row
from lang_agent.bench.stack import Meter, Stack
from lang_agent.bench.stats import add_efficiency, failures, percentile, summarise
from lang_agent.bench.workload import CHAT_TEXT, StreamReader, marker, turn_text
from lang_agent.llm import sim_intents
from tests.conftest import TEST_KEY
from tests.support import wait_until

MODES = [Mode(front, stream) for front in ("dashscope", "openai") for stream in (False, True)]


@pytest.fixture
def bench_server(live_server):
    return live_server()


async def test_quick_matrix_against_in_process_servers(bench_server, simulator, pg_dsn) -> None:
    sim_root = simulator.base_url.removesuffix("/v1")
    target = Target(bench_server.url, sim_root, None, TEST_KEY, pg_dsn)
    cells: list[tuple[Mode, int]] = []
    rows = await run_matrix(
        target,
        MODES,
        [1, 2],
        duration_s=60,
        run_id="t",
        max_turns=2,
        pause_s=0,
        on_cell=lambda mode, concurrency: cells.append((mode, concurrency)),
    )
    # Level by level, so a drift of the machine's speed does not fall on one mode alone; the
    # rows come back grouped by mode, for the tables.
    assert cells == [(mode, level) for level in (1, 2) for mode in MODES]
    assert [(r["front"], r["stream"]) for r in rows] == [
        (mode.front, mode.stream) for mode in MODES for _ in (1, 2)
    ]
    for row in rows:
        assert row["requests"] == row["concurrency"] * 2
        assert row["ok"] == row["requests"] and row["success_pct"] == 100.0, row["errors"]
        assert row["throughput_rps"] > 0 and row["efficiency"] is not None
        # every turn matched its simulator calls (router + chat) by its unique marker
        assert row["overhead_matched"] == row["ok"]
        assert row["overhead_p50_ms"] is not None and row["p99_ms"] >= row["p50_ms"]
        # and read the server's own time for each turn from its conversation log
        assert row["engine_overhead_p50_ms"] is not None
        if row["stream"]:
            assert row["first_text_p50_ms"] is not None
            assert row["first_clause_p50_ms"] is not None
        else:
            assert "first_text_p50_ms" not in row
    by_mode = {(r["front"], r["stream"], r["concurrency"]): r for r in rows}
    assert by_mode[("openai", True, 1)]["ideal_rps"] == pytest.approx(
        1000 / by_mode[("openai", True, 1)]["avg_ms"], rel=1e-2
    )
    json.dumps(rows)  # the JSON record takes the rows as they are
    markdown = report.matrix_markdown(rows, title="quick")
    assert markdown.count("| Concurrency | Requests | Success % | Throughput (req/s)") == 4
    assert "First text p50 / p95 (ms)" in markdown and "### openai, streaming" in markdown
    assert report.chart_svg(rows, title="quick").startswith("<svg")


async def test_a_failing_turn_is_counted_not_raised(bench_server, simulator) -> None:
    simulator.inject("500", count=2, role="router")
    target = Target(bench_server.url, simulator.base_url.removesuffix("/v1"), None, TEST_KEY)
    rows = await run_matrix(
        target, [Mode("openai", False)], [1], duration_s=60, run_id="f", max_turns=3, pause_s=0
    )
    simulator.clear_faults()
    (row,) = rows
    assert row["requests"] == 3
    assert row["ok"] < row["requests"] and row["success_pct"] < 100
    assert sum(row["errors"].values()) == row["requests"] - row["ok"]


def test_efficiency_is_throughput_over_c_over_latency_at_1() -> None:
    rows = [
        {"front": "openai", "stream": True, "concurrency": 1, "avg_ms": 1000.0,
         "throughput_rps": 0.99},
        {"front": "openai", "stream": True, "concurrency": 50, "avg_ms": 1100.0,
         "throughput_rps": 45.0},
        {"front": "dashscope", "stream": False, "concurrency": 50, "avg_ms": 900.0,
         "throughput_rps": 40.0},
    ]  # fmt: skip
    add_efficiency(rows)
    assert rows[1]["ideal_rps"] == 50.0 and rows[1]["efficiency"] == 0.9
    assert rows[0]["efficiency"] == 0.99
    assert rows[2]["efficiency"] is None  # no concurrency-1 row for that mode


def test_model_time_is_the_union_of_a_turns_calls() -> None:
    sample = Sample("chat", "hello", "t", 0, start=10.0, end=11.2, ok=True)
    other = Sample("chat", "other", "t", 0, start=10.0, end=11.0, ok=True)
    calls = [
        {"role": "router", "user": "hello", "start": 10.01, "end": 10.30},
        {"role": "chat", "user": "hello", "start": 10.02, "end": 11.00},  # overlaps the router
        {"role": "chat", "user": "nobody", "start": 10.0, "end": 11.0},
    ]
    assert attach_model_time([sample, other], calls) == 1
    assert sample.model_s == pytest.approx(0.99)
    assert sample.overhead == pytest.approx(0.21)
    assert sample.before_model_s == pytest.approx(0.01)
    assert sample.after_model_s == pytest.approx(0.2)
    assert other.model_s is None and other.overhead is None


def test_throughput_counts_the_share_of_each_turn_inside_the_window() -> None:
    samples = [
        Sample("chat", "a", "t", 0, start=0.0, end=1.0, ok=True),  # half inside
        Sample("chat", "b", "t", 0, start=1.0, end=2.0, ok=True),  # inside
        Sample("chat", "c", "t", 0, start=1.0, end=2.0, ok=False),  # failed: not counted
    ]
    assert completed_within(samples, 0.5, 2.0) == pytest.approx(1.5)


def test_the_window_overhead_leaves_out_the_turns_of_the_warm_up() -> None:
    def turn(start: float, overhead: float) -> Sample:
        sample = Sample("chat", f"u{start}", "t", 0, start=start, end=start + 1.0, ok=True)
        sample.model_s = 1.0 - overhead
        return sample

    burst = [turn(0.0, 0.300), turn(0.0, 0.200)]  # everyone at once, before the window
    steady = [turn(2.0 + i / 10, 0.010) for i in range(10)]
    row = summarise(CellResult("openai", False, 50, 10.0, 2.0, burst + steady))
    assert row["overhead_p99_ms"] > 200
    assert row["window_overhead_p99_ms"] == pytest.approx(10.0)


def test_percentile_interpolates() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0


def test_stream_reader_finds_first_text_and_first_clause() -> None:
    reader = StreamReader("openai", started=0.0)
    role = {"choices": [{"delta": {"role": "assistant", "content": ""}}]}
    reader.feed(f"data: {json.dumps(role)}\n\n".encode())
    assert reader.first_text is None
    reader.feed(b'data: {"choices":[{"delta":{"content":"\xe5\xa5\xbd"}}]}\n\ndata: {"choi')
    assert reader.first_text is not None and reader.first_clause is None
    reader.feed('ces":[{"delta":{"content":"的，"}}]}\n\ndata: [DONE]\n\n'.encode())
    assert reader.first_clause is not None and reader.finished and reader.text == "好的，"

    dash = StreamReader("dashscope", started=0.0)
    frame = 'id:1\nevent:result\n:HTTP_STATUS/200\ndata:{"output":{"text":"%s",' \
            '"finish_reason":"%s"}}\n\n'  # fmt: skip
    dash.feed((frame % ("好的", "null")).encode())
    dash.feed((frame % ("好的，我", "stop")).encode())
    assert dash.text == "好的，我" and dash.finished and dash.first_clause is not None

    failed = StreamReader("dashscope", started=0.0)
    failed.feed(b'id:1\nevent:error\nstatus:500\ndata:{"code":"InternalError"}\n\n')
    assert failed.error is not None and not failed.finished


def test_turn_texts_are_unique_and_route_as_intended() -> None:
    texts = {turn_text(n, kind="chat") for n in range(2000)}
    assert len(texts) == 2000
    assert marker(0) != marker(26) and "qx" in marker(12345)
    for n in (0, 1, 25, 26, 700, 12345):
        assert sim_intents.detect(turn_text(n, kind="chat")) == []
        assert sim_intents.detect(turn_text(n, kind="tool")) != []
    assert turn_text(3, kind="chat").startswith(CHAT_TEXT)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--py-spy", "50"], "--py-spy needs py-spy on PATH"),
        (["--levels", "0,10"], "expected positive whole numbers"),
        (["--levels", "ten"], "expected positive whole numbers"),
        (["--duration", "0"], "--duration: must be a finite number above 0"),
        (["--workers", "-1"], "--workers: must be at least 1"),
        (["--ramp", "-1"], "--ramp must be 0 or more"),
        (["--tool-every", "-3"], "--tool-every must be 0 or more"),
    ],
)
def test_a_run_that_cannot_work_is_refused_before_anything_starts(tmp_path, flags, message):
    # An empty PATH: no py-spy, whatever this machine has installed.
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "stress_test.py"),
        *flags,
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env={"PATH": str(tmp_path)})  # noqa: S603
    assert done.returncode == 2
    assert message in done.stderr
    assert not any(tmp_path.iterdir())  # no stack, no results


async def test_a_ramp_starts_the_users_one_after_another(bench_server) -> None:
    async with make_client(bench_server.url) as client:
        cell = await run_one(
            client, front="openai", stream=False, concurrency=4, duration_s=60,
            counter=Counter(), run_id="r", key=TEST_KEY, ramp_s=0.4, max_turns=1,
        )  # fmt: skip
    assert all(s.ok for s in cell.samples) and len(cell.samples) == 4
    starts = sorted(s.start for s in cell.samples)
    # user i waits i × ramp / concurrency before its first turn (a sleep: never shorter)
    assert all(later - earlier >= 0.09 for earlier, later in itertools.pairwise(starts))


def test_the_report_marks_each_target_the_run_covers_met_or_not() -> None:
    def row(stream: bool, concurrency: int, **values: float) -> dict:
        return {"front": "openai", "stream": stream, "concurrency": concurrency, **values}

    rows = [
        row(False, 1, efficiency=1.0, overhead_p50_ms=9.5),
        row(False, 50, efficiency=0.96, overhead_p99_ms=51.0, window_overhead_p99_ms=20.0),
        row(True, 1, efficiency=1.0, overhead_p50_ms=10.5),
        row(True, 50, efficiency=0.94, overhead_p99_ms=50.0),
    ]
    lines = report.targets_markdown(rows).splitlines()
    assert lines[2] == "| Target | openai non-stream | openai stream |"
    assert "| E(50) ≥ 0.95 | 0.960 met | 0.940 **not met** |" in lines
    assert "| Overhead p50 ≤ 10 ms at c=1 | 9.5 met | 10.5 **not met** |" in lines
    assert "| Overhead p99 ≤ 50 ms at c=50 | 51.0 **not met** | 50.0 met |" in lines
    assert "| … of the turns started after the warm-up | 20.0 met | – |" in lines
    assert not any(line.startswith("| E(100)") for line in lines)  # no c=100 in this run
    assert report.targets_markdown([row(False, 5, efficiency=0.99)]) == ""


def test_the_tables_show_ratios_and_rates_finer_than_milliseconds() -> None:
    row = {"concurrency": 1, "requests": 16, "success_pct": 100.0, "throughput_rps": 1.019,
           "efficiency": 1.002, "avg_ms": 983.2, "p50_ms": 981.6, "p95_ms": 991.0,
           "p99_ms": 1001.6, "overhead_p50_ms": 9.5, "overhead_p99_ms": 31.7,
           "cpu_pct": {"server": 4.3, "sim": 1.5}}  # fmt: skip
    cells = report.table([row], stream=False).splitlines()[2].split(" | ")
    assert cells[3:6] == ["1.019", "1.002", "983.2"]
    assert "9.5 / 31.7" in cells
    assert "4.3 / 1.5 / – / – / –" in cells
    row["worker_cpu_pct"] = [44.0, 40.1]
    cells = report.table([row], stream=False).splitlines()[2].split(" | ")
    assert "4.3 = 44.0 + 40.1 / 1.5 / – / – / –" in cells


# Children for a process tree: one that burns about 0.3 s of CPU, one that holds about 64 MB;
# each says so, then waits to be told to end.
_BURN = """
import sys, time
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
print("burned", flush=True)
sys.stdin.readline()
"""
_HOLD = """
import sys
block = bytearray(64 * 2**20)
print("holding", flush=True)
sys.stdin.readline()
"""


@contextlib.contextmanager
def _tree(child: str) -> Iterator[subprocess.Popen]:
    """A parent running `child`: it passes on the child's first line, and on a line of its own
    stdin ends the child, reaps it and says "reaped"."""
    parent_code = f"""
import subprocess, sys
pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
child = subprocess.Popen([sys.executable, "-c", {child!r}], **pipes)
print(child.stdout.readline().strip(), flush=True)
sys.stdin.readline()
child.communicate("exit\\n")
print("reaped", flush=True)
sys.stdin.readline()
"""
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    parent = subprocess.Popen([sys.executable, "-c", parent_code], **pipes)
    try:
        yield parent
    finally:
        parent.kill()
        parent.wait()


def _reap_child(parent: subprocess.Popen) -> None:
    parent.stdin.write("\n")
    parent.stdin.flush()
    assert parent.stdout.readline().strip() == "reaped"


# A worker that burns the CPU seconds of its argument when told, then says so.
_WORKER = """
import sys, time
print("up", flush=True)
sys.stdin.readline()
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
print("burned", flush=True)
sys.stdin.readline()
"""
# A server of two such workers and a child that only sleeps (as multiprocessing's resource
# tracker does); on a line of its stdin the workers burn.
_GROUP = f"""
import subprocess, sys
pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
code = {_WORKER!r}
workers = [subprocess.Popen([sys.executable, "-c", code, s], **pipes) for s in ("0.4", "0.2")]
idle = subprocess.Popen([sys.executable, "-c", "print('up', flush=True); input()"], **pipes)
for child in [*workers, idle]:
    child.stdout.readline()
print("ready", flush=True)
sys.stdin.readline()
for worker in workers:
    worker.stdin.write("go\\n")
    worker.stdin.flush()
for worker in workers:
    worker.stdout.readline()
print("burned", flush=True)
sys.stdin.readline()
"""


def test_the_meter_splits_the_servers_cpu_by_worker() -> None:
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    server = subprocess.Popen([sys.executable, "-c", _GROUP], **pipes)
    try:
        assert server.stdout.readline().strip() == "ready"
        meter = Meter({"server": server.pid})
        meter.start()
        server.stdin.write("\n")
        server.stdin.flush()
        assert server.stdout.readline().strip() == "burned"
        measured = meter.stop()
    finally:
        server.kill()
        server.wait()
    busiest, other = measured["worker_cpu_pct"]  # the sleeping child is left out
    assert busiest > other > 0
    assert busiest + other <= measured["cpu_pct"]["server"] + 0.2  # rounding


def test_a_tree_keeps_the_cpu_of_a_child_that_exits_during_the_cell() -> None:
    """Postgres backends come and go with connections; the tree's CPU must not drop when one
    ends (it gave a negative CPU % for Postgres in a c=1 cell)."""
    with _tree(_BURN) as parent:
        assert parent.stdout.readline().strip() == "burned"
        meter = Meter({"pg": parent.pid})
        meter.start()
        _reap_child(parent)
        assert meter.stop()["cpu_pct"]["pg"] >= 0


def test_the_meter_samples_a_trees_memory_on_its_own_thread() -> None:
    """The peak is caught while the cell runs, with nothing but start() and stop() called: the
    load generator's loop never waits for a sample (it did, 15-37 ms every half second)."""
    with _tree(_HOLD) as parent:
        assert parent.stdout.readline().strip() == "holding"
        meter = Meter({"server": parent.pid})
        meter.start()
        wait_until(lambda: "server" in meter.peak_rss, within_s=10)
        _reap_child(parent)
        peak = meter.stop()["peak_rss_mb"]["server"]
        assert 64 <= peak < 256  # the child's block, and nothing beyond the tree


def test_the_console_line_shows_unknown_figures_as_unknown() -> None:
    row = {"front": "openai", "stream": False, "concurrency": 1, "requests": 3,
           "success_pct": 0.0, "throughput_rps": 0.0, "avg_ms": None, "p99_ms": None,
           "overhead_p50_ms": None, "overhead_p99_ms": None, "efficiency": None}  # fmt: skip
    line = cell_line(row)
    assert "avg=      – p99=      – ms ovh p50=– p99=–" in line
    assert "0.0 ms" not in line


def test_the_charts_scale_keeps_the_digits_that_tell_its_ticks_apart() -> None:
    rows = [{"front": "openai", "stream": False, "concurrency": c, "throughput_rps": rps}
            for c, rps in ((1, 1.0), (2, 2.0))]  # fmt: skip
    svg = report.chart_svg(rows, title="small")
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', svg)
    assert labels == ["0.00", "0.42", "0.84", "1.26", "1.68", "2.10"]
    rows[1]["throughput_rps"] = 2000.0
    labels = re.findall(r'text-anchor="end">([^<]+)</text>', report.chart_svg(rows, title="big"))
    assert labels == ["0", "420", "840", "1,260", "1,680", "2,100"]


def test_a_voice_row_without_successes_says_why() -> None:
    failed = [Sample("chat", f"u{i}", "t", 0, start=0.0, end=0.1, error="status 401: bad key")
              for i in range(6)]  # fmt: skip
    profile = {"chat": {"ttft_ms": 350}, "chatty": {"ttft_ms": 200}}
    row = voice_row(failed, [], kind="chat", speculative=True, profile=profile)
    markdown = voice_markdown([{"config": "speculative chat", "front": "openai", "kind": "chat"}
                               | row])  # fmt: skip
    assert "| 0/6 |" in markdown and "None" not in markdown
    assert "Failures, speculative chat, openai, chat turns: 6× status 401: bad key" in markdown


async def test_a_user_that_cannot_connect_backs_off_instead_of_spinning() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    async with make_client(f"http://127.0.0.1:{port}") as client:
        cell = await run_one(
            client, front="openai", stream=False, concurrency=1, duration_s=0.5,
            counter=Counter(), run_id="down",
        )  # fmt: skip
    # Pauses of 0.05, 0.1, 0.2 and 0.4 s (a sleep is never shorter) leave room for 5 tries in
    # the half second; without them a refused connect came back thousands of times.
    assert 1 <= len(cell.samples) <= 5
    assert all(not s.ok and "cannot connect" in (s.error or "") for s in cell.samples)


def test_failures_group_by_reason_whatever_the_request_id() -> None:
    def failed(request_id: str) -> Sample:
        body = f'{{"code":"InvalidApiKey","request_id":"{request_id}"}}'
        return Sample("chat", "u", "t", 0, start=0.0, end=0.1, error=f"status 401: {body}")

    samples = [failed("134c3522-b025-4e3f-aeb1-d86b50a8a1b2"),
               failed("4e795112-990c-46da-bd0d-1cb040561234")]  # fmt: skip
    assert failures(samples) == {'status 401: {"code":"InvalidApiKey","request_id":"…"}': 2}
    many = {f"reason {n}": 10 - n for n in range(8)}
    assert report.failures_text(many) == (
        "10× reason 0; 9× reason 1; 8× reason 2; 7× reason 3; 6× reason 4; 12× 3 other reasons"
    )


def test_the_stack_leaves_its_logs_and_takes_its_database_away(tmp_path):
    # Each run's Postgres data (up to a gigabyte) stayed in its --out directory.
    with Stack(tmp_path / "stack") as stack:
        dsn = stack.postgres()
        assert dsn and (tmp_path / "stack" / "pg" / "PG_VERSION").is_file()
    assert not (tmp_path / "stack" / "pg").exists()
    assert stack.postgres_pid() is None


def test_every_process_the_stack_starts_runs_this_checkouts_code(tmp_path, monkeypatch):
    # `-m lang_agent.cli` (the simulator, the capture proxy) found the installed package
    # first: a run from a worktree of an older commit measured the newer proxy.
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    with Stack(tmp_path / "stack") as stack:
        code = "import os; print(os.environ['PYTHONPATH'])"
        proc, log = stack._spawn("probe", [sys.executable, "-c", code])
        assert proc.wait(30) == 0
    assert log.read_text().split() == [f"{ROOT}{os.pathsep}/elsewhere"]


async def test_the_floor_server_makes_a_turns_two_calls_and_answers_both_ways(tmp_path, simulator):
    # The floor scenario sets the floor's overhead beside ours: it must make the router's
    # call and the chat call of every turn, as the engine does, and answer as the SDK expects.
    sim_root = simulator.base_url.removesuffix("/v1")
    with Stack(tmp_path / "stack") as stack:
        target = Target(stack.floor(sim_url=simulator.base_url).url, sim_root)
        for stream in (False, True):
            row, cell = await run_cell(target, Mode("openai", stream), 2, duration_s=60,
                                       counter=Counter(), run_id="floor", max_turns=2,
                                       quiet=True)  # fmt: skip
            assert row["ok"] == row["requests"] == 4, row["errors"]
            assert row["overhead_matched"] == 4
            roles = sorted(call["role"] for call in cell.calls)
            assert roles == ["chat"] * 4 + ["router"] * 4


def test_the_servers_cpu_per_turn_is_its_cpu_time_over_the_cells_requests() -> None:
    # Half a core for 10 s over 100 requests: 50 ms each.
    row = {"cpu_pct": {"server": 50.0}, "metered_s": 10.0, "requests": 100}
    assert scenarios._cpu_per_turn(row) == 50.0
    assert scenarios._cpu_per_turn(row | {"requests": 0}) is None
    assert scenarios._cpu_per_turn({"requests": 5}) is None  # a target this tool did not start
