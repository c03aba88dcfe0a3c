"""Eval metrics: pure functions from per-case results to rates, percentiles and run diffs.

Every rate is a fraction in [0, 1], or None when no case asks for it. A case whose scored
turn failed (an upstream error, a timeout…) is correct in none of them (results.score_case):

- routing accuracy: cases whose route was right / cases with an expected route;
- tool precision / recall: micro-averaged over cases that check tools (see checks.ToolScore);
  a failed turn misses every expected tool, and a call it made that none names is still wrong;
- argument accuracy: matched expectations whose arguments passed / those with argument rules;
- correct no-tool rate: cases that called no tool and answered / cases that must call none;
- answer-check pass rate: cases whose answer passed every check / cases with answer checks;
- judge score: the mean judge score (0..1) of the cases a judge scored; `judge_failed` counts
  the cases it was asked about whose answer it could not give or that did not parse.

Tokens are per case (every turn of it); cost per case is the mean over the cases whose models
have prices in configs/models.json. Latency and time to first text (filler or answer, what the
speaker can start saying) are per route (the scored turn's actual route; "failed" when it
has none), p50 and p95 by linear interpolation between closest ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from lang_agent.evaluation.results import CaseResult

HEADLINE = (
    ("pass_rate", "cases passed"),
    ("routing_accuracy", "routing accuracy"),
    ("tool_precision", "tool precision"),
    ("tool_recall", "tool recall"),
    ("argument_accuracy", "argument accuracy"),
    ("no_tool_rate", "correct no-tool rate"),
    ("answer_pass_rate", "answer checks"),
    ("judge_score", "judge score"),
)


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else numerator / denominator


def percentile(values: Sequence[float], *, q: float) -> float | None:
    """The q-th percentile (0..100), interpolating linearly between closest ranks."""
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return data[low] + (data[high] - data[low]) * (rank - low)


@dataclass(frozen=True)
class RouteTiming:
    cases: int
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


@dataclass(frozen=True)
class Metrics:
    cases: int
    passed: int
    errors: int
    pass_rate: float | None
    routing_accuracy: float | None
    tool_precision: float | None
    tool_recall: float | None
    argument_accuracy: float | None
    no_tool_rate: float | None
    answer_pass_rate: float | None
    judge_score: float | None
    judged: int
    prompt_tokens_per_case: float | None
    completion_tokens_per_case: float | None
    total_tokens: int
    cost_per_case: float | None
    total_cost: float | None
    by_route: dict[str, RouteTiming] = field(default_factory=dict)
    by_category: dict[str, tuple[int, int]] = field(default_factory=dict)  # (passed, cases)
    judge_failed: int = 0  # a default: summaries written before it still load

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Metrics:
        values = dict(data)
        values["by_route"] = {k: RouteTiming(**v) for k, v in data.get("by_route", {}).items()}
        values["by_category"] = {k: tuple(v) for k, v in data.get("by_category", {}).items()}
        return cls(**values)


def _timings(results: Iterable[CaseResult]) -> dict[str, RouteTiming]:
    groups: dict[str, list[CaseResult]] = {}
    for result in results:
        groups.setdefault(result.route or "failed", []).append(result)
    out = {}
    for route in sorted(groups):
        latency = [r.latency_ms for r in groups[route] if r.latency_ms is not None]
        ttft = [r.ttft_ms for r in groups[route] if r.ttft_ms is not None]
        out[route] = RouteTiming(
            cases=len(groups[route]),
            latency_p50_ms=percentile(latency, q=50),
            latency_p95_ms=percentile(latency, q=95),
            ttft_p50_ms=percentile(ttft, q=50),
            ttft_p95_ms=percentile(ttft, q=95),
        )
    return out


def summarise(results: Sequence[CaseResult]) -> Metrics:
    """The run's metrics; see the module docstring for each definition."""
    n = len(results)
    routed = [r for r in results if r.route_ok is not None]
    tool_cases = [r for r in results if r.expected_tools is not None]
    tp = sum(r.tool_true_pos for r in tool_cases)
    fp = sum(r.tool_false_pos for r in tool_cases)
    fn = sum(r.tool_false_neg for r in tool_cases)
    no_tool = [r for r in results if r.no_tool_expected]
    answered = [r for r in results if r.answer_checked]
    judged = [r.judge_score for r in results if r.judge_score is not None]
    # The judge gives every case it is asked about a reason, a score only when it answered.
    judge_failed = sum(r.judge_reason is not None and r.judge_score is None for r in results)
    priced = [r.cost for r in results if r.cost is not None]
    categories: dict[str, tuple[int, int]] = {}
    for result in results:
        passed, total = categories.get(result.category, (0, 0))
        categories[result.category] = (passed + result.passed, total + 1)
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return Metrics(
        cases=n,
        passed=sum(r.passed for r in results),
        errors=sum(r.error is not None for r in results),
        pass_rate=_ratio(sum(r.passed for r in results), n),
        routing_accuracy=_ratio(sum(bool(r.route_ok) for r in routed), len(routed)),
        tool_precision=_ratio(tp, tp + fp),
        tool_recall=_ratio(tp, tp + fn),
        argument_accuracy=_ratio(
            sum(r.args_ok for r in tool_cases), sum(r.args_checked for r in tool_cases)
        ),
        no_tool_rate=_ratio(sum(bool(r.no_tool_ok) for r in no_tool), len(no_tool)),
        answer_pass_rate=_ratio(sum(not r.answer_failures for r in answered), len(answered)),
        judge_score=sum(judged) / len(judged) if judged else None,
        judged=len(judged),
        prompt_tokens_per_case=prompt / n if n else None,
        completion_tokens_per_case=completion / n if n else None,
        total_tokens=prompt + completion,
        cost_per_case=sum(priced) / len(priced) if priced else None,
        total_cost=sum(priced) if priced else None,
        by_route=_timings(results),
        by_category=dict(sorted(categories.items())),
        judge_failed=judge_failed,
    )


@dataclass(frozen=True)
class RunDiff:
    """How this run's cases compare with a previous run's, by case id and `passed`."""

    previous: str  # the previous run's directory name
    fixed: list[str]  # failed before, pass now
    broken: list[str]  # passed before, fail now
    added: list[str]  # not in the previous run
    dropped: list[str]  # in the previous run only
    common: int
    metric_deltas: dict[str, float]  # headline metric → now − before (both known)
    # Whether the previous run selected the same cases; when not, its metrics were taken over
    # other cases, so only the cases in both compare and `metric_deltas` stays empty.
    comparable: bool = True

    @property
    def flipped(self) -> int:
        return len(self.fixed) + len(self.broken)


def diff_runs(
    previous: Sequence[CaseResult],
    *,
    current: Sequence[CaseResult],
    previous_name: str = "",
    previous_metrics: Metrics | None = None,
    current_metrics: Metrics | None = None,
    comparable: bool = True,
) -> RunDiff:
    """Which cases flipped between two runs; metric deltas when both metrics are given and
    the runs are `comparable` (selected the same cases)."""
    before = {r.case_id: r.passed for r in previous}
    now = {r.case_id: r.passed for r in current}
    common = sorted(before.keys() & now.keys())
    deltas: dict[str, float] = {}
    if comparable and previous_metrics is not None and current_metrics is not None:
        for key, _ in HEADLINE:
            old, new = getattr(previous_metrics, key), getattr(current_metrics, key)
            if old is not None and new is not None:
                deltas[key] = new - old
    return RunDiff(
        previous=previous_name,
        fixed=[c for c in common if now[c] and not before[c]],
        broken=[c for c in common if before[c] and not now[c]],
        added=sorted(now.keys() - before.keys()),
        dropped=sorted(before.keys() - now.keys()),
        common=len(common),
        metric_deltas=deltas,
        comparable=comparable,
    )
