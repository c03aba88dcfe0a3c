"""The eval chart: one self-contained HTML page of inline SVG bars (no scripts, no CDN)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING

from lang_agent.evaluation.metrics import HEADLINE, Metrics, RunDiff

if TYPE_CHECKING:
    from lang_agent.evaluation.report import RunInfo

WIDTH = 720
LABEL_W = 190
BAR_H = 22
GAP = 8
COLOURS = {"now": "#3b82f6", "before": "#111827", "p50": "#10b981", "p95": "#f59e0b"}

STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #111827; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 28px; }
.meta { color: #4b5563; } svg text { font: 12px system-ui, sans-serif; }
"""


@dataclass(frozen=True)
class Bar:
    label: str
    value: float | None
    text: str
    before: float | None = None  # the previous run's value, drawn as a tick
    colour: str = COLOURS["now"]


def _bars(rows: list[Bar], *, scale: float) -> str:
    """Horizontal bars on one SVG; a value of `scale` fills the whole width."""
    span = WIDTH - LABEL_W - 80
    height = len(rows) * (BAR_H + GAP) + GAP
    parts = [f'<svg width="{WIDTH}" height="{height}" role="img">']
    for i, row in enumerate(rows):
        label, value, before, text = row.label, row.value, row.before, row.text
        y = GAP + i * (BAR_H + GAP)
        parts.append(
            f'<text x="{LABEL_W - 8}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
        )
        parts.append(
            f'<rect x="{LABEL_W}" y="{y}" width="{span}" height="{BAR_H}" fill="#f3f4f6"/>'
        )
        if value is not None and scale > 0:
            w = max(0.0, min(1.0, value / scale)) * span
            parts.append(
                f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" '
                f'fill="{row.colour}"><title>{escape(label)}: {escape(text)}</title></rect>'
            )
        if before is not None and scale > 0:
            x = LABEL_W + max(0.0, min(1.0, before / scale)) * span
            parts.append(
                f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2}" y2="{y + BAR_H + 2}" '
                f'stroke="{COLOURS["before"]}" stroke-width="2"/>'
            )
        parts.append(f'<text x="{LABEL_W + span + 8}" y="{y + 15}">{escape(text)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _timing_svg(metrics: Metrics) -> str:
    rows = []
    for route, t in metrics.by_route.items():
        for label, value, kind in (
            ("latency p50", t.latency_p50_ms, "p50"),
            ("latency p95", t.latency_p95_ms, "p95"),
            ("first text p50", t.ttft_p50_ms, "p50"),
            ("first text p95", t.ttft_p95_ms, "p95"),
        ):
            text = "-" if value is None else f"{value:.0f} ms"
            rows.append(Bar(f"{route} {label}", value, text, colour=COLOURS[kind]))
    if not rows:
        return "<p>no timings</p>"
    top = max((r.value for r in rows if r.value is not None), default=0.0)
    return _bars(rows, scale=top or 1.0)


def render_chart(metrics: Metrics, *, info: RunInfo, diff: RunDiff | None) -> str:
    """The chart page: quality rates (with the previous run as a black tick), latency per
    route, and pass rate per category."""
    rows = []
    for key, label in HEADLINE:
        value = getattr(metrics, key)
        before = None
        if diff is not None and key in diff.metric_deltas and value is not None:
            before = value - diff.metric_deltas[key]
        text = "n/a" if value is None else f"{value * 100:.1f}%"
        rows.append(Bar(label, value, text, before=before))
    categories = [
        Bar(name, passed / total if total else None, f"{passed}/{total}")
        for name, (passed, total) in metrics.by_category.items()
    ]
    compared = (
        f" · black ticks: {escape(diff.previous)}" if diff is not None and diff.comparable else ""
    )
    models = ", ".join(f"{r} {m}" for r, m in info.models.items())
    return "\n".join(
        [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>lang-agent eval {escape(info.run_id)}</title>",
            f"<style>{STYLE}</style></head><body>",
            f"<h1>lang-agent eval {escape(info.run_id)}</h1>",
            f'<p class="meta">{metrics.cases} cases · {escape(info.dataset)}'
            f"{' · filter ' + escape(info.selection) if info.selection else ''} · "
            f"{escape(models)}{compared}</p>",
            "<h2>Quality</h2>",
            _bars(rows, scale=1.0),
            "<h2>Latency per route (ms)</h2>",
            _timing_svg(metrics),
            "<h2>Pass rate per category</h2>",
            _bars(categories, scale=1.0),
            "</body></html>",
            "",
        ]
    )
