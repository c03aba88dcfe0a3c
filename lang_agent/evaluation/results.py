"""Per-case eval results: what the scored turn did (a Trace) and how it scored (a CaseResult)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lang_agent.evaluation.checks import Call, check_answer, score_calls
from lang_agent.evaluation.dataset import EvalCase


@dataclass
class Trace:
    """What one case's run produced: the scored (last) turn's events, and the whole case's
    tokens and cost (every turn)."""

    route: str | None = None
    calls: list[Call] = field(default_factory=list)
    tool_errors: list[str] = field(default_factory=list)
    answer: str = ""
    filler: str = ""
    error: str | None = None  # "code: message" when a turn failed
    latency_ms: float | None = None  # the scored turn, request to Done
    ttft_ms: float | None = None  # the scored turn, request to its first spoken text
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None  # None when no model of the case has a known price
    models: list[str] = field(default_factory=list)


@dataclass
class CaseResult:
    """One case's outcome; `passed` is every check the case asks for passing, and no error."""

    case_id: str
    category: str
    lang: str
    tags: list[str]
    turns: list[str]
    expected_route: str | None
    route: str | None
    route_ok: bool | None  # None: the case does not check the route
    expected_tools: list[dict[str, Any]] | None
    calls: list[dict[str, Any]]
    tool_true_pos: int
    tool_false_pos: int
    tool_false_neg: int
    args_checked: int
    args_ok: int
    tool_problems: list[str]
    no_tool_expected: bool
    no_tool_ok: bool | None  # None: the case does not require "no tool"
    answer: str
    answer_checked: bool
    answer_failures: list[str]
    error: str | None
    passed: bool
    latency_ms: float | None = None
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    judge_score: float | None = None  # 0..1, when a judge model scored the answer
    judge_reason: str | None = None
    filler: str = ""
    tool_errors: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    @property
    def tools_ok(self) -> bool:
        return (
            not (self.tool_false_pos or self.tool_false_neg) and self.args_ok == self.args_checked
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CaseResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, directory: Path) -> Path:
        path = directory / f"{self.case_id}.json"
        path.write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return path


def score_case(case: EvalCase, *, trace: Trace) -> CaseResult:
    """Score a trace against its case. A failed turn is correct in no check the case asks
    for: what it did before failing (a right route, a call, no call) never reached the user."""
    failed = trace.error is not None
    route_ok = None if case.route is None else (not failed and trace.route == case.route)
    if case.tools is None:
        tools = score_calls([], calls=[])
        problems: list[str] = []
    else:
        calls = trace.calls
        if failed:  # every expectation is missed; a call no expectation names is still wrong
            expected = {name for t in case.tools for name in t.names}
            calls = [c for c in calls if c.name not in expected]
        tools = score_calls(case.tools, calls=calls, allowed=case.allowed_tools)
        problems = (
            ["the turn failed"]
            if failed and tools.missing
            else [f"missing {n}" for n in tools.missing]
        )
        problems += [f"unexpected {n}" for n in tools.unexpected]
        problems += [f"wrong arguments for {n}" for n in tools.bad_args]
    no_tool_ok = (not failed and not trace.calls) if case.expects_no_tools else None
    answer_checked = case.answer.has_text_checks
    failures = check_answer(case.answer, text=trace.answer) if answer_checked else []
    if failed and answer_checked and not failures:
        failures = ["the turn failed"]
    passed = (
        not failed
        and route_ok is not False
        and tools.ok
        and no_tool_ok is not False
        and not failures
    )
    return CaseResult(
        case_id=case.id,
        category=case.category,
        lang=case.lang,
        tags=list(case.tags),
        turns=case.user_turns,
        expected_route=case.route,
        route=trace.route,
        route_ok=route_ok,
        expected_tools=None
        if case.tools is None
        else [t.model_dump(mode="json") for t in case.tools],
        calls=[{"name": c.name, "args": c.args} for c in trace.calls],
        tool_true_pos=tools.true_pos,
        tool_false_pos=tools.false_pos,
        tool_false_neg=tools.false_neg,
        args_checked=tools.args_checked,
        args_ok=tools.args_ok,
        tool_problems=problems,
        no_tool_expected=case.expects_no_tools,
        no_tool_ok=no_tool_ok,
        answer=trace.answer,
        answer_checked=answer_checked,
        answer_failures=failures,
        error=trace.error,
        passed=passed,
        latency_ms=trace.latency_ms,
        ttft_ms=trace.ttft_ms,
        prompt_tokens=trace.prompt_tokens,
        completion_tokens=trace.completion_tokens,
        cost=trace.cost,
        filler=trace.filler,
        tool_errors=list(trace.tool_errors),
        models=list(trace.models),
    )


def why_failed(result: CaseResult) -> str:
    """A one-line reason a case failed (empty when it passed)."""
    if result.passed:
        return ""
    reasons: list[str] = []
    if result.error:
        reasons.append(f"error {result.error}")
    # A failed turn fails the route and "no tool" checks too; say so only when they were wrong.
    if result.route_ok is False and result.route != result.expected_route:
        reasons.append(f"route {result.route or '-'} (want {result.expected_route})")
    if result.no_tool_ok is False and result.calls:
        names = ", ".join(sorted({c["name"] for c in result.calls}))
        reasons.append(f"called {names} (want no tool)")
    elif result.tool_problems:
        reasons.append("; ".join(result.tool_problems))
    if result.answer_failures:
        reasons.append("answer " + ", ".join(result.answer_failures))
    return "; ".join(reasons)
