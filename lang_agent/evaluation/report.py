"""Eval reports: the run directory (per-case JSON, summary.json/.md, chart, diff) and the
one-screen console summary, plus finding and reading the previous run to diff against."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lang_agent.evaluation.chart import render_chart
from lang_agent.evaluation.metrics import HEADLINE, Metrics, RunDiff
from lang_agent.evaluation.results import CaseResult, why_failed

logger = logging.getLogger(__name__)

SUMMARY_JSON = "summary.json"
CASES_DIR = "cases"
FAILING_SHOWN = 12  # failing cases listed on the console; summary.md lists them all


@dataclass
class RunInfo:
    """What was evaluated, for the report header and for picking a comparable previous run."""

    run_id: str
    started: str
    duration_s: float
    dataset: str
    selection: str  # the --filter expression ("" = every case)
    limit: int | None = None  # --limit: only the first this many matching cases
    models: dict[str, str] = field(default_factory=dict)  # role → provider:model
    profile: str | None = None
    judge_model: str | None = None
    currency: str = "CNY"
    langsmith: str | None = None  # the experiment's name, when recorded


def pct(value: float | None) -> str:
    return "   n/a" if value is None else f"{value * 100:5.1f}%"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


@dataclass(frozen=True)
class PreviousRun:
    """A run to diff against; `comparable` when it selected the same cases as this one."""

    path: Path
    comparable: bool


def _run_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((path / SUMMARY_JSON).read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(meta, dict) else None


def find_previous(root: Path, *, exclude: Path, info: RunInfo) -> PreviousRun | None:
    """The newest earlier run under `root` on the same cases (dataset, filter and limit), else
    the newest on the same dataset: its cases still compare one by one, its metrics do not."""
    newest: PreviousRun | None = None
    for path in sorted(root.iterdir() if root.is_dir() else [], reverse=True):
        meta = None if path.resolve() == exclude.resolve() else _run_meta(path)
        if meta is None or meta.get("dataset") != info.dataset:
            continue
        if (meta.get("selection"), meta.get("limit")) == (info.selection, info.limit):
            return PreviousRun(path, comparable=True)
        newest = newest or PreviousRun(path, comparable=False)
    return newest


def read_run(path: Path) -> tuple[list[CaseResult], Metrics | None]:
    """A run directory's case results and metrics (None when its summary is unreadable)."""
    results = []
    for case_file in sorted((path / CASES_DIR).glob("*.json")):
        try:
            results.append(CaseResult.from_dict(json.loads(case_file.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("skipping unreadable result %s (%s)", case_file, exc)
    try:
        summary = json.loads((path / SUMMARY_JSON).read_text(encoding="utf-8"))
        metrics = Metrics.from_dict(summary["metrics"])
    except (OSError, ValueError, KeyError, TypeError):
        metrics = None
    return results, metrics


def _diff_lines(diff: RunDiff | None, *, limit: int = 10) -> list[str]:
    if diff is None:
        return ["no previous run to compare with"]

    def names(ids: list[str]) -> str:
        shown = ", ".join(ids[:limit])
        return shown + (f", … (+{len(ids) - limit})" if len(ids) > limit else "")

    head = "vs" if diff.comparable else "no comparable previous run (other filter or limit); vs"
    lines = [f"{head} {diff.previous} ({diff.common} cases in both): {diff.flipped} flipped"]
    if diff.broken:
        lines.append(f"  pass → FAIL ({len(diff.broken)}): {names(diff.broken)}")
    if diff.fixed:
        lines.append(f"  fail → pass ({len(diff.fixed)}): {names(diff.fixed)}")
    if diff.added or diff.dropped:
        lines.append(f"  new cases: {len(diff.added)}, cases no longer run: {len(diff.dropped)}")
    return lines


def _delta(diff: RunDiff | None, key: str) -> str:
    if diff is None or key not in diff.metric_deltas:
        return ""
    points = diff.metric_deltas[key] * 100
    return "   (=)" if abs(points) < 0.05 else f"   ({points:+.1f} pts)"


def _counts(metrics: Metrics, key: str) -> str:
    if key == "pass_rate":
        return f"{metrics.passed}/{metrics.cases}"
    if key == "judge_score":
        failed = f", {metrics.judge_failed} failed" if metrics.judge_failed else ""
        return f"{metrics.judged} judged{failed}"
    return ""


def console_summary(
    metrics: Metrics, *, results: list[CaseResult], info: RunInfo, diff: RunDiff | None, out: Path
) -> str:
    """The one-screen summary scripts/eval.py prints."""
    models = " · ".join(f"{role} {model}" for role, model in info.models.items())
    lines = [
        f"lang-agent eval · {metrics.cases} cases · {info.duration_s:.1f} s · {out}",
        f"  models: {models}"
        + (f" · profile {info.profile}" if info.profile else "")
        + (f" · judge {info.judge_model}" if info.judge_model else ""),
    ]
    for key, label in HEADLINE:
        value = getattr(metrics, key)
        if key == "judge_score" and info.judge_model is None:
            lines.append(f"  {label:<22} n/a (no judge model configured)")
            continue
        row = f"  {label:<22}{pct(value)}  {_counts(metrics, key):<12}{_delta(diff, key)}"
        lines.append(row.rstrip())
    for route, timing in metrics.by_route.items():
        lines.append(
            f"  {route:<5} n={timing.cases:<3} latency p50/p95 {ms(timing.latency_p50_ms)}/"
            f"{ms(timing.latency_p95_ms)} ms · first text p50/p95 {ms(timing.ttft_p50_ms)}/"
            f"{ms(timing.ttft_p95_ms)} ms"
        )
    cost = "n/a" if metrics.cost_per_case is None else f"{metrics.cost_per_case:.6f}"
    lines.append(
        f"  tokens/case {metrics.prompt_tokens_per_case or 0:.0f} in + "
        f"{metrics.completion_tokens_per_case or 0:.0f} out · cost/case {cost} {info.currency}"
        f" · errors {metrics.errors}"
    )
    lines.append(
        "  by category: " + " · ".join(f"{c} {p}/{n}" for c, (p, n) in metrics.by_category.items())
    )
    lines.extend(_diff_lines(diff))
    failing = [r for r in results if not r.passed]
    if diff is not None:  # what this change broke first
        failing.sort(key=lambda r: r.case_id not in diff.broken)
    if failing:
        lines.append(f"failing ({len(failing)}):")
        for result in failing[:FAILING_SHOWN]:
            lines.append(f"  {result.case_id}: {why_failed(result)}"[:160])
        if len(failing) > FAILING_SHOWN:
            lines.append(f"  … and {len(failing) - FAILING_SHOWN} more in {out / 'summary.md'}")
    return "\n".join(lines)


def markdown_summary(
    metrics: Metrics, *, results: list[CaseResult], info: RunInfo, diff: RunDiff | None
) -> str:
    """summary.md: metrics, timings, the diff and every failing case."""
    lines = [
        f"# Eval run {info.run_id}",
        "",
        f"- dataset: `{info.dataset}`"
        + (f", filter `{info.selection}`" if info.selection else "")
        + (f", first {info.limit} cases" if info.limit is not None else ""),
        f"- started {info.started}, {info.duration_s:.1f} s, {metrics.cases} cases",
        "- models: " + ", ".join(f"{r} `{m}`" for r, m in info.models.items()),
    ]
    if info.profile:
        lines.append(f"- profile: `{info.profile}`")
    if info.judge_model:
        lines.append(f"- judge: `{info.judge_model}` ({_counts(metrics, 'judge_score')})")
    if info.langsmith:
        lines.append(f"- LangSmith experiment: `{info.langsmith}`")
    lines += ["", "## Metrics", "", "| metric | value | change |", "|---|---|---|"]
    for key, label in HEADLINE:
        lines.append(f"| {label} | {pct(getattr(metrics, key)).strip()} | {_delta(diff, key)} |")
    lines += [
        "",
        "## Latency per route (scored turn)",
        "",
        "| route | cases | latency p50 | latency p95 | first text p50 | first text p95 |",
        "|---|---|---|---|---|---|",
    ]
    for route, t in metrics.by_route.items():
        lines.append(
            f"| {route} | {t.cases} | {ms(t.latency_p50_ms)} ms | {ms(t.latency_p95_ms)} ms | "
            f"{ms(t.ttft_p50_ms)} ms | {ms(t.ttft_p95_ms)} ms |"
        )
    cost = "n/a" if metrics.cost_per_case is None else f"{metrics.cost_per_case:.6f}"
    total = "n/a" if metrics.total_cost is None else f"{metrics.total_cost:.6f}"
    lines += [
        "",
        "## Tokens and cost",
        "",
        f"- prompt tokens per case: {metrics.prompt_tokens_per_case or 0:.1f}",
        f"- completion tokens per case: {metrics.completion_tokens_per_case or 0:.1f}",
        f"- cost per case: {cost} {info.currency} (total {total})",
        "",
        "## By category",
        "",
        "| category | passed | cases |",
        "|---|---|---|",
    ]
    lines += [f"| {c} | {p} | {n} |" for c, (p, n) in metrics.by_category.items()]
    lines += ["", "## Compared with the previous run", ""]
    lines += [line.strip() for line in _diff_lines(diff, limit=1000)]
    failing = [r for r in results if not r.passed]
    lines += ["", f"## Failing cases ({len(failing)})", ""]
    for result in failing:
        said = result.answer.replace("\n", " ").replace("|", "\\|")[:120]
        lines.append(
            f"- `{result.case_id}` ({result.category}): {why_failed(result)}; said: {said}"
        )
    return "\n".join(lines) + "\n"


def write_run(
    out: Path,
    *,
    results: list[CaseResult],
    metrics: Metrics,
    info: RunInfo,
    diff: RunDiff | None,
) -> dict[str, Path]:
    """Write the run directory; returns the files by kind."""
    cases_dir = out / CASES_DIR
    cases_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        result.write(cases_dir)
    summary: dict[str, Any] = {"run": asdict(info), "metrics": metrics.as_dict()}
    files = {
        "summary_json": out / SUMMARY_JSON,
        "summary_md": out / "summary.md",
        "chart": out / "chart.html",
    }
    if diff is not None:
        summary["diff"] = asdict(diff)
        files["diff"] = out / "diff.json"
        files["diff"].write_text(
            json.dumps(asdict(diff), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    files["summary_json"].write_text(
        json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    files["summary_md"].write_text(
        markdown_summary(metrics, results=results, info=info, diff=diff), encoding="utf-8"
    )
    files["chart"].write_text(render_chart(metrics, info=info, diff=diff), encoding="utf-8")
    return files
