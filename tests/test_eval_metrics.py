"""Eval metrics on crafted results: argument rules, tool scoring, rates, percentiles and diffs."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from lang_agent.evaluation.checks import Call, arg_matches, check_answer, score_calls
from lang_agent.evaluation.dataset import AnswerChecks, EvalCase, ToolExpectation
from lang_agent.evaluation.metrics import Metrics, diff_runs, percentile, summarise
from lang_agent.evaluation.report import RunInfo, console_summary, read_run, write_run
from lang_agent.evaluation.results import Trace, score_case, why_failed

VOLUME = "self_audio_speaker_set_volume"
STATUS = "self_get_device_status"


def case(case_id: str, **fields) -> EvalCase:
    values = {"id": case_id, "category": "device", "lang": "zh", "input": "x"} | fields
    return EvalCase.model_validate(values)


def vol_case(case_id: str = "vol") -> EvalCase:
    return case(
        case_id,
        route="tool",
        tools=[{"name": VOLUME, "args": {"volume": {"min": 75, "max": 90}}}],
        allowed_tools=[STATUS],
        answer={"contains_any": ["80", "八十"], "not_contains": ["抱歉"]},
    )


def chat_case(case_id: str = "hello") -> EvalCase:
    return case(case_id, category="chitchat", route="chat", tools=[])


@pytest.mark.parametrize(
    ("rule", "value", "ok"),
    [
        (50, 50, True),
        (50, 50.0, True),
        (50, 51, False),
        (50, "50", False),
        ("dark", "dark", True),
        ("dark", "Dark", False),
        (True, 1, False),
        ({"min": 75, "max": 90}, 75, True),
        ({"min": 75, "max": 90}, 90, True),
        ({"min": 75, "max": 90}, 91, False),
        ({"min": 75}, 1000, True),
        ({"max": 60}, "10", False),
        ({"one_of": ["dark", "night"]}, "night", True),
        ({"one_of": ["dark", "night"]}, "light", False),
        ({"any": True}, "anything", True),
        ({"evaluates_to": 13}, "3 + 5 × 2", True),
        ({"evaluates_to": 13}, "(3+5)*2", False),
        ({"evaluates_to": 12.5}, "100/8", True),
        ({"evaluates_to": 13}, "import os", False),
        ({"exact": {"a": 1}}, {"a": 1.0}, True),
    ],
)
def test_argument_rules(rule, value, ok):
    assert arg_matches(rule, present=True, value=value) is ok


def test_a_missing_argument_fails_every_rule():
    assert not arg_matches({"any": True}, present=False, value=None)
    assert not arg_matches(None, present=False, value=None)


def test_tool_scoring_counts_names_and_arguments():
    expected = [
        ToolExpectation(name=VOLUME, args={"volume": {"min": 75, "max": 90}}),
        ToolExpectation(name=["self_led_strip_set_all_color", "self_light_set_rgb"]),
        ToolExpectation(name="self_lamp_turn_on"),
    ]
    calls = [
        Call(STATUS),  # allowed: not counted
        Call(VOLUME, {"volume": 95}),  # right tool, wrong argument
        Call(VOLUME, {"volume": 80}),  # ... and a second call that gets it right
        Call("self_light_set_rgb", {"r": 1, "g": 2, "b": 3}),  # an accepted alternative
        Call("self_lamp_turn_off"),  # not expected
        Call("self_lamp_turn_off"),  # counted once: selection is by distinct name
    ]
    score = score_calls(expected, calls=calls, allowed=[STATUS])
    assert (score.true_pos, score.false_pos, score.false_neg) == (2, 1, 1)
    assert (score.args_checked, score.args_ok) == (1, 1)
    assert score.missing == ("self_lamp_turn_on",) and score.unexpected == ("self_lamp_turn_off",)
    assert not score.ok


def test_answer_checks_are_case_folded():
    checks = AnswerChecks(contains=["Lamp"], contains_any=["on", "开"], not_contains=["Sorry"])
    assert check_answer(checks, text="OK, the lamp is ON.") == []
    assert check_answer(checks, text="sorry, the LAMP is off.") == [
        "none of ['on', '开']",
        "contains 'Sorry'",
    ]


def crafted() -> list:
    """Six scored cases with known mistakes."""
    good = score_case(
        vol_case("vol-good"),
        trace=Trace(
            route="tool",
            calls=[Call(STATUS), Call(VOLUME, {"volume": 80})],
            answer="好的，音量调到80了。",
            latency_ms=100,
            ttft_ms=10,
            prompt_tokens=100,
            completion_tokens=10,
            cost=0.5,
        ),
    )
    bad_args = score_case(
        vol_case("vol-bad-args"),
        trace=Trace(
            route="tool",
            calls=[Call(VOLUME, {"volume": 100})],
            answer="好的，音量调到100了。",
            latency_ms=200,
            ttft_ms=20,
            prompt_tokens=300,
            completion_tokens=30,
            cost=1.5,
        ),
    )
    wrong_route = score_case(
        vol_case("vol-chat"),
        trace=Trace(route="chat", answer="抱歉。", latency_ms=50, ttft_ms=5, prompt_tokens=50),
    )
    hello = score_case(chat_case("hello"), trace=Trace(route="chat", answer="你好", latency_ms=30))
    chatty_tool = score_case(
        chat_case("hello-tool"),
        trace=Trace(
            route="tool", calls=[Call(STATUS)], answer="音量70", latency_ms=300, ttft_ms=30
        ),
    )
    failed = score_case(
        case("broken", route="tool", tools=[{"name": "calculator"}], answer={"contains": ["13"]}),
        trace=Trace(error="upstream_timeout: the model did not answer"),
    )
    return [good, bad_args, wrong_route, hello, chatty_tool, failed]


def test_case_scores():
    good, bad_args, wrong_route, hello, chatty_tool, failed = crafted()
    assert good.passed and good.tools_ok and good.route_ok
    assert not bad_args.passed and bad_args.tool_problems == [f"wrong arguments for {VOLUME}"]
    assert bad_args.answer_failures == ["none of ['80', '八十']"]
    assert wrong_route.route_ok is False and wrong_route.tool_false_neg == 1
    assert wrong_route.answer_failures == ["none of ['80', '八十']", "contains '抱歉'"]
    assert hello.passed and hello.no_tool_ok is True and not hello.answer_checked
    assert chatty_tool.no_tool_ok is False and chatty_tool.tool_false_pos == 1
    assert failed.error and failed.answer_failures == ["missing '13'"] and not failed.passed


def test_a_failed_turn_is_correct_in_no_check():
    # It set the volume right and then failed: the call never became an answer, so no check
    # counts it (the route, the expected call and its arguments were all taken as right).
    failed = Trace(
        route="tool",
        calls=[Call(VOLUME, {"volume": 80}), Call("self_lamp_turn_off")],
        answer="好的，音量调到80了。",
        error="upstream_status: the model API answered HTTP 500",
    )
    vol = score_case(vol_case(), trace=failed)
    assert vol.route_ok is False and not vol.passed
    assert (vol.tool_true_pos, vol.tool_false_pos, vol.tool_false_neg) == (0, 1, 1)
    assert (vol.args_checked, vol.args_ok) == (0, 0)
    assert vol.tool_problems == ["the turn failed", "unexpected self_lamp_turn_off"]
    assert vol.answer_failures == ["the turn failed"]
    quiet = score_case(chat_case(), trace=Trace(route="chat", error=failed.error))
    assert quiet.route_ok is False and quiet.no_tool_ok is False
    assert why_failed(quiet) == f"error {failed.error}"  # not "route chat (want chat)"
    m = summarise([vol, quiet])
    assert m.routing_accuracy == 0 and m.no_tool_rate == 0 and m.answer_pass_rate == 0
    assert m.tool_recall == 0 and m.tool_precision == 0 and m.argument_accuracy is None


def test_metrics_on_crafted_results():
    m = summarise(crafted())
    assert (m.cases, m.passed, m.errors) == (6, 2, 1)
    assert m.pass_rate == pytest.approx(2 / 6)
    assert m.routing_accuracy == pytest.approx(3 / 6)  # a failed turn has no route: wrong
    # tp: good, bad_args; fp: hello-tool's status; fn: vol-chat, broken.
    assert m.tool_precision == pytest.approx(2 / 3)
    assert m.tool_recall == pytest.approx(2 / 4)
    assert m.argument_accuracy == pytest.approx(1 / 2)
    assert m.no_tool_rate == pytest.approx(1 / 2)
    assert m.answer_pass_rate == pytest.approx(1 / 4)  # good / (good, bad, chat, broken)
    assert m.judge_score is None and m.judged == 0
    assert m.prompt_tokens_per_case == pytest.approx(450 / 6)
    assert m.completion_tokens_per_case == pytest.approx(40 / 6)
    assert m.total_tokens == 490
    assert m.cost_per_case == pytest.approx(1.0) and m.total_cost == pytest.approx(2.0)
    assert set(m.by_route) == {"chat", "tool", "failed"}
    tool = m.by_route["tool"]  # good 100, bad 200, hello-tool 300
    assert tool.cases == 3 and tool.latency_p50_ms == 200 and tool.latency_p95_ms == 290
    assert tool.ttft_p50_ms == 20 and tool.ttft_p95_ms == 29
    chat = m.by_route["chat"]  # vol-chat 50, hello 30 (no first text)
    assert chat.latency_p50_ms == 40 and chat.ttft_p50_ms == 5
    assert m.by_route["failed"].latency_p50_ms is None
    assert m.by_category == {"chitchat": (1, 2), "device": (1, 4)}


def test_empty_metrics_are_none():
    m = summarise([])
    assert m.pass_rate is None and m.tool_precision is None and m.by_route == {}


def test_percentile_interpolates():
    assert percentile([], q=50) is None
    assert percentile([7], q=95) == 7
    assert percentile([1, 2, 3, 4], q=50) == 2.5
    assert percentile(list(range(1, 101)), q=95) == pytest.approx(95.05)


def test_judge_scores_average():
    results = crafted()
    results[0].judge_score, results[3].judge_score = 1.0, 0.5
    m = summarise(results)
    assert m.judge_score == 0.75 and m.judged == 2


def diff_with_metrics(before, after, *, comparable: bool = True):
    return diff_runs(
        before,
        current=after,
        previous_name="run-1",
        previous_metrics=summarise(before),
        current_metrics=summarise(after),
        comparable=comparable,
    )


def test_diff_reports_flips():
    before = crafted()
    after = crafted()
    after[0].passed = False  # vol-good breaks
    after[2].passed = True  # vol-chat is fixed
    after.pop()  # broken is no longer run
    diff = diff_with_metrics(before, after)
    assert diff.broken == ["vol-good"] and diff.fixed == ["vol-chat"]
    assert diff.dropped == ["broken"] and diff.added == [] and diff.common == 5
    assert diff.flipped == 2
    assert diff.metric_deltas["pass_rate"] == pytest.approx(2 / 5 - 2 / 6)


def test_a_run_over_other_cases_compares_case_by_case_only():
    before, after = crafted(), crafted()[:3]
    after[0].passed = False
    diff = diff_with_metrics(before, after, comparable=False)
    assert diff.broken == ["vol-good"] and diff.common == 3
    assert diff.metric_deltas == {} and not diff.comparable


def test_a_judge_whose_answers_all_failed_is_reported_as_configured(tmp_path):
    results = crafted()
    for result in results[:2]:
        result.judge_reason = "the judge's answer did not parse"
    metrics = summarise(results)
    assert (metrics.judge_score, metrics.judged, metrics.judge_failed) == (None, 0, 2)
    info = RunInfo(run_id="r1", started="now", duration_s=1.0, dataset="d.jsonl", selection="")
    judged = replace(info, judge_model="sim:sim-chat")
    text = console_summary(metrics, results=results, info=judged, diff=None, out=tmp_path)
    row = next(line for line in text.splitlines() if "judge score" in line)
    assert row.split() == ["judge", "score", "n/a", "0", "judged,", "2", "failed"]
    assert "judge sim:sim-chat" in text
    without = console_summary(metrics, results=results, info=info, diff=None, out=tmp_path)
    assert "judge score            n/a (no judge model configured)" in without
    # A summary.json written before judge_failed existed still loads.
    older = {k: v for k, v in metrics.as_dict().items() if k != "judge_failed"}
    assert Metrics.from_dict(older).judge_failed == 0


def test_report_files_round_trip(tmp_path):
    results = crafted()
    metrics = summarise(results)
    info = RunInfo(run_id="r1", started="now", duration_s=1.0, dataset="d.jsonl", selection="")
    diff = diff_runs(results, current=results, previous_name="r0")
    files = write_run(tmp_path / "r1", results=results, metrics=metrics, info=info, diff=diff)
    assert {p.name for p in files.values()} == {
        "summary.json",
        "summary.md",
        "chart.html",
        "diff.json",
    }
    assert len(list((tmp_path / "r1" / "cases").glob("*.json"))) == 6
    again, again_metrics = read_run(tmp_path / "r1")
    assert sorted(r.case_id for r in again) == sorted(r.case_id for r in results)
    assert again_metrics == metrics
    assert json.loads(files["diff"].read_text())["previous"] == "r0"
    chart = files["chart"].read_text()
    assert chart.startswith("<!doctype html>") and "<svg" in chart and "<script" not in chart
    text = console_summary(metrics, results=results, info=info, diff=diff, out=tmp_path / "r1")
    assert "cases passed" in text and "vol-bad-args" in text and len(text.splitlines()) < 40
