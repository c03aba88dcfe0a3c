"""Eval runs through the real agent, the simulator and the MCP device simulator: a clean subset,
a simulator scripted to make known mistakes (counted exactly), the report files, the diff."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx2
import pytest

from lang_agent.evaluation.dataset import DatasetError
from lang_agent.evaluation.evaluate import EvalOptions, evaluate, pick_cases
from lang_agent.llm.sim_script import Script
from lang_agent.settings import ROOT
from tests.support import script_env

MCP_CONFIG = ROOT / "configs" / "mcp_config.json"
SUBSET = "vol-set-50-zh,lamp-on-en,calc-times-en,chat-hello-zh,mem-louder-zh,missing-pizza-en"
MISTAKES = Script.parse(
    [
        {"match": "what is 12 times 7", "role": "router", "route": "chat"},
        {
            "match": "turn on the desk lamp",
            "role": "tool",
            "tool_call": {"name": "self_lamp_turn_off", "arguments": {}},
        },
        {
            "match": "Reference answer",
            "role": "tool",
            "tool_call": {"name": "Verdict", "arguments": {"score": 4, "reason": "close"}},
        },
    ]
)


def options(tmp_path, **changes) -> EvalOptions:
    values = {"selection": SUBSET, "out_root": tmp_path / "results", "concurrency": 3}
    return EvalOptions(**(values | changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"limit": -1}, "limit must be a whole number of at least 1, not -1"),
        ({"limit": 0}, "limit must be"),
        ({"concurrency": 2.5}, "concurrency must be"),
    ],
)
def test_options_from_code_are_checked_as_the_command_line_checks_them(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        options(tmp_path, **changes)


@pytest.mark.parametrize("content", ["", "  \n\n\t\n"])
def test_a_dataset_without_cases_says_so(tmp_path, content):
    # It said "no case matches the filter ''".
    empty = tmp_path / "empty.jsonl"
    empty.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=f"^{empty}: the dataset has no cases$"):
        pick_cases(options(tmp_path, dataset=empty, selection=""))


async def test_a_clean_subset_passes_and_writes_the_report(make_settings, tmp_path):
    settings = make_settings(mcp_config=MCP_CONFIG)
    outcome = await evaluate(settings, options=options(tmp_path))
    m = outcome.metrics
    assert sorted(r.case_id for r in outcome.results) == sorted(SUBSET.split(","))
    assert (m.cases, m.passed, m.errors) == (6, 6, 0), outcome.text
    for rate in ("routing_accuracy", "tool_precision", "tool_recall", "argument_accuracy"):
        assert getattr(m, rate) == 1.0, rate
    assert m.no_tool_rate == 1.0 and m.answer_pass_rate == 1.0 and m.judge_score is None
    assert set(m.by_route) == {"chat", "tool"} and m.by_route["tool"].cases == 4
    assert m.by_route["tool"].latency_p50_ms > 0 and m.prompt_tokens_per_case > 0
    # Each case had its own device: the memory case set 50 and then went up from there.
    louder = next(r for r in outcome.results if r.case_id == "mem-louder-zh")
    assert [c["args"] for c in louder.calls] == [{}, {"volume": 60}]
    out = outcome.out
    assert out.parent == tmp_path / "results"
    assert {p.name for p in out.iterdir()} == {"cases", "summary.json", "summary.md", "chart.html"}
    assert sorted(p.stem for p in (out / "cases").glob("*.json")) == sorted(SUBSET.split(","))
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["run"]["selection"] == SUBSET and summary["metrics"]["passed"] == 6
    assert "no previous run" in outcome.text and "cases passed" in outcome.text


async def test_scripted_mistakes_are_counted_exactly(make_settings, simulator, tmp_path):
    settings = make_settings(mcp_config=MCP_CONFIG, judge_model="sim:sim-chat")
    scripted = await evaluate(settings, options=options(tmp_path, sim_script=MISTAKES))
    async with httpx2.AsyncClient(timeout=5) as client:
        control = await client.get(simulator.base_url.removesuffix("/v1") + "/_sim/script")
    assert control.json() == {"rules": []}, "the posted script is cleared after the run"
    by_id = {r.case_id: r for r in scripted.results}
    calc, lamp = by_id["calc-times-en"], by_id["lamp-on-en"]
    assert calc.route == "chat" and calc.route_ok is False and calc.calls == []
    assert calc.tool_problems == ["missing calculator"]
    assert lamp.route_ok is True and [c["name"] for c in lamp.calls] == ["self_lamp_turn_off"]
    assert (lamp.tool_true_pos, lamp.tool_false_pos, lamp.tool_false_neg) == (0, 1, 1)
    assert [r.case_id for r in scripted.results if not r.passed] == ["lamp-on-en", "calc-times-en"]
    m = scripted.metrics
    assert (m.cases, m.passed, m.errors) == (6, 4, 0)
    assert m.routing_accuracy == pytest.approx(5 / 6)
    assert m.tool_precision == pytest.approx(2 / 3)  # tp: vol, mem; fp: lamp_turn_off
    assert m.tool_recall == pytest.approx(2 / 4)  # fn: lamp_turn_on, calculator
    assert m.argument_accuracy == 1.0
    assert m.no_tool_rate == 1.0
    assert m.answer_pass_rate == pytest.approx(3 / 5)  # chat-hello-zh has only a reference
    assert m.judged == 1 and m.judge_score == pytest.approx(0.75)  # Verdict 4 of 5
    assert by_id["chat-hello-zh"].judge_reason == "close"

    clean = await evaluate(make_settings(mcp_config=MCP_CONFIG), options=options(tmp_path))
    diff = clean.diff
    assert diff is not None and diff.previous == scripted.out.name
    assert diff.fixed == ["calc-times-en", "lamp-on-en"] and diff.broken == []
    assert diff.metric_deltas["pass_rate"] == pytest.approx(2 / 6)
    saved = json.loads((clean.out / "diff.json").read_text(encoding="utf-8"))
    assert saved["fixed"] == ["calc-times-en", "lamp-on-en"]
    assert "fail → pass (2): calc-times-en, lamp-on-en" in clean.text


def test_eval_script_runs_and_reports_bad_lines(pg_dsn, simulator, tmp_path):
    env = script_env(
        pg_dsn=pg_dsn, sim_url=simulator.base_url, mcp_config=MCP_CONFIG, data_dir=tmp_path / "data"
    )
    script = [sys.executable, str(ROOT / "scripts" / "eval.py"), "--out", str(tmp_path / "r")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script, *args], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
        )

    done = run("--filter", "id=calc-times-en,id=lamp-on-en", "--fail-under", "1")
    assert done.returncode == 0, done.stderr
    assert "2 cases" in done.stdout and "cases passed" in done.stdout
    assert "2/2 cases" in done.stderr  # the progress bar
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "category": "calc", "lang": "en"}\n', encoding="utf-8")
    failed = run("--dataset", str(bad))
    assert failed.returncode == 2 and f"{bad}:1" in failed.stderr and "input" in failed.stderr
    nothing = run("--filter", "id=no-such-case")
    assert nothing.returncode == 2 and "no case matches" in nothing.stderr
    unknown = run("--profile", "no-such-profile", "--limit", "1")
    assert unknown.returncode == 2 and "unknown profile" in unknown.stderr
    keyless = run("--langsmith", "--limit", "1")
    assert keyless.returncode == 2 and "LANGSMITH_API_KEY" in keyless.stderr


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"rules": [{"match": "x", "role": "judge", "content": "y"}]}, "`role` must be one of"),
        ([{"match": "x", "role": "chat", "route": "tool"}], "for the router role only"),
        ([{"match": "x", "role": "router"}], "exactly one of route, tool_call, content"),
        ([{"match": "x", "role": "tool", "tool_call": {"arguments": {}}}], "needs a `name`"),
        ([{"match": "", "role": "chat", "content": "y"}], "non-empty string"),
        ([{"match": "x", "role": "chat", "content": "y", "when": 1}], "unknown keys when"),
    ],
)
def test_sim_script_rules_are_validated(rules, message):
    with pytest.raises(ValueError, match=message):
        Script.parse(rules)


def test_sim_script_over_http(simulator):
    control = simulator.base_url.removesuffix("/v1") + "/_sim/script"
    bad = httpx2.post(control, json={"rules": [{"match": "x", "role": "router"}]}, timeout=5)
    assert bad.status_code == 400 and "exactly one of" in bad.text
    rules = {"rules": [{"match": "你好", "role": "chat", "content": "脚本回答"}]}
    try:
        assert httpx2.post(control, json=rules, timeout=5).json() == rules
        reply = httpx2.post(
            simulator.base_url + "/chat/completions",
            json={"model": "sim-chat", "messages": [{"role": "user", "content": "你好呀"}]},
            timeout=5,
        ).json()
        assert reply["choices"][0]["message"]["content"] == "脚本回答"
    finally:
        assert httpx2.delete(control, timeout=5).json() == {"rules": []}


async def test_a_failed_turn_is_correct_in_no_metric(make_settings, simulator, tmp_path):
    # chat-hello-zh is routed right, then its chat model fails: it called no tool, but a turn
    # that did not answer must not count as a correct route or a correct "no tool".
    simulator.clear_faults()
    simulator.inject("500", role="chat")
    try:
        outcome = await evaluate(
            make_settings(mcp_config=MCP_CONFIG),
            options=options(tmp_path, selection="id=chat-hello-zh"),
        )
    finally:
        simulator.clear_faults()
    (result,) = outcome.results
    assert result.error and result.error.startswith("upstream_status"), result.error
    assert result.route == "chat" and result.calls == []
    assert result.route_ok is False and result.no_tool_ok is False and not result.passed
    m = outcome.metrics
    assert (m.cases, m.passed, m.errors) == (1, 0, 1)
    assert m.routing_accuracy == 0.0 and m.no_tool_rate == 0.0
