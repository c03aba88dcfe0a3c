"""Writing results: markdown tables, the JSON record, and an SVG chart of throughput vs ideal."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import Any

MATRIX_COLUMNS = [
    ("Concurrency", "concurrency"),
    ("Requests", "requests"),
    ("Success %", "success_pct"),
    ("Throughput (req/s)", "throughput_rps"),
    ("E(c)", "efficiency"),
    ("Avg (ms)", "avg_ms"),
    ("p50 (ms)", "p50_ms"),
    ("p95 (ms)", "p95_ms"),
    ("p99 (ms)", "p99_ms"),
]
STREAM_COLUMNS = [
    ("First text p50 / p95 (ms)", ("first_text_p50_ms", "first_text_p95_ms")),
    ("First clause p50 / p95 (ms)", ("first_clause_p50_ms", "first_clause_p95_ms")),
]
TAIL_COLUMNS = [
    ("Overhead p50 / p99 (ms)", ("overhead_p50_ms", "overhead_p99_ms")),
    ("Engine overhead p50 / p99 (ms)", ("engine_overhead_p50_ms", "engine_overhead_p99_ms")),
    ("CPU % server / sim / pg / load / other", None),
    ("Server RSS (MB)", None),
]


# A ratio or a rate below 10 shows three decimals (E = 0.958, 1.019 req/s); milliseconds,
# percentages and megabytes one.
FINE_KEYS = frozenset({"efficiency", "throughput_rps"})


def _fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3f}" if key in FINE_KEYS and abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def cpu_cell(row: dict[str, Any]) -> str:
    """CPU % server / sim / pg / load / other; with several workers the server's is split,
    e.g. "84.1 = 44.0 + 40.1", to show how evenly they are loaded."""
    cpu = row.get("cpu_pct") or {}
    shares = [_fmt(cpu.get(n)) for n in ("server", "sim", "postgres", "loadgen", "other")]
    workers = row.get("worker_cpu_pct") or []
    if len(workers) > 1:
        shares[0] += " = " + " + ".join(_fmt(share) for share in workers)
    return " / ".join(shares)


def _cell(row: dict[str, Any], key: Any, title: str) -> str:
    if title.startswith("CPU"):
        return cpu_cell(row)
    if title.startswith("Server RSS"):
        return _fmt((row.get("peak_rss_mb") or {}).get("server"))
    if isinstance(key, tuple):
        return " / ".join(_fmt(row.get(k), k) for k in key)
    return _fmt(row.get(key), key)


def table(rows: Sequence[dict[str, Any]], *, stream: bool) -> str:
    """One markdown table for the rows of one mode."""
    columns: list[tuple[str, Any]] = list(MATRIX_COLUMNS)
    if stream:
        columns += STREAM_COLUMNS
    columns += TAIL_COLUMNS
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row, key, title) for title, key in columns) + " |")
    return "\n".join(lines)


def _modes(rows: Sequence[dict[str, Any]]) -> list[tuple[str, bool]]:
    """The (front end, stream) modes of the rows, in the order they came."""
    modes: list[tuple[str, bool]] = []
    for row in rows:
        if (row["front"], row["stream"]) not in modes:
            modes.append((row["front"], row["stream"]))
    return modes


def matrix_markdown(rows: Sequence[dict[str, Any]], *, title: str = "") -> str:
    """A heading and a table per mode (front end × stream), in the order the rows came."""
    out = [f"## {title}", ""] if title else []
    for front, stream in _modes(rows):
        mode_rows = [r for r in rows if r["front"] == front and r["stream"] == stream]
        out += [f"### {front}, {'streaming' if stream else 'non-streaming'}", ""]
        out += [table(mode_rows, stream=stream), ""]
        errors: dict[str, int] = {}
        for row in mode_rows:
            for error, count in (row.get("errors") or {}).items():
                errors[error] = errors.get(error, 0) + count
        if errors:
            out += [f"Failures: {failures_text(errors)}", ""]
    return "\n".join(out)


# Reasons a failures line names; the rest are counted together.
SHOWN_REASONS = 5


def failures_text(errors: dict[str, int]) -> str:
    """The commonest reasons on one line: "3× status 401: …; 1× TimeoutError: …"."""
    ranked = sorted(errors.items(), key=lambda item: -item[1])
    parts = [f"{count}× {error}" for error, count in ranked[:SHOWN_REASONS]]
    rest = ranked[SHOWN_REASONS:]
    if rest:
        parts.append(f"{sum(count for _, count in rest)}× {len(rest)} other reasons")
    return "; ".join(parts)


def failure_lines(rows: Sequence[dict[str, Any]], *, label: Callable[[dict[str, Any]], str]
                  ) -> list[str]:  # fmt: skip
    """A "Failures, <label>: …" line for each row with failed turns: a row of 0/6 says why."""
    return [f"Failures, {label(row)}: {failures_text(row['errors'])}"
            for row in rows if row.get("errors")]  # fmt: skip


# Issue 8's targets that one matrix run can show: label, concurrency, row key, bound, and
# whether the bound is a most (else a least).
TARGETS = (
    ("E(50) ≥ 0.95", 50, "efficiency", 0.95, False),
    ("E(100) ≥ 0.90", 100, "efficiency", 0.90, False),
    ("Overhead p50 ≤ 10 ms at c=1", 1, "overhead_p50_ms", 10.0, True),
    ("Overhead p99 ≤ 50 ms at c=50", 50, "overhead_p99_ms", 50.0, True),
    # Not a target of its own: read with the line above, it tells a start-up burst (every
    # user arriving at once) from a tail that lasts.
    ("… of the turns started after the warm-up", 50, "window_overhead_p99_ms", 50.0, True),
)


def targets_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The targets this run's levels cover, met or not in each mode ('' for none)."""
    modes = _modes(rows)
    cells = {(r["front"], r["stream"], r["concurrency"]): r for r in rows}
    names = [f"{front} {'stream' if stream else 'non-stream'}" for front, stream in modes]
    lines = []
    for label, concurrency, key, bound, at_most in TARGETS:
        verdicts = []
        for front, stream in modes:
            value = (cells.get((front, stream, concurrency)) or {}).get(key)
            if value is None:
                verdicts.append("–")
                continue
            met = value <= bound if at_most else value >= bound
            verdicts.append(f"{_fmt(value, key)} {'met' if met else '**not met**'}")
        if any(v != "–" for v in verdicts):
            lines.append(f"| {label} | " + " | ".join(verdicts) + " |")
    if not lines:
        return ""
    head = ["## Targets", "", "| Target | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names)]  # fmt: skip
    return "\n".join(head + lines)


def write_json(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, ensure_ascii=False, indent=1, default=str), "utf-8")


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def chart_svg(rows: Sequence[dict[str, Any]], *, title: str) -> str:
    """Throughput per mode against concurrency (log-scaled x), with each mode's ideal
    c ÷ latency(1) dashed."""
    import math

    width, height, left, bottom, top, right = 760, 420, 70, 50, 40, 190
    levels = sorted({r["concurrency"] for r in rows})
    peak = max([r["throughput_rps"] for r in rows] + [r.get("ideal_rps") or 0 for r in rows])
    peak = peak or 1.0
    span = math.log(max(levels[-1], 2))

    def x(c: int) -> float:
        return left + (width - left - right) * (math.log(c) / span if span else 0)

    def y(v: float) -> float:
        return height - bottom - (height - bottom - top) * v / (peak * 1.05)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14">{escape(title)}</text>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
        'stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
        f'<text x="{(width - right + left) / 2}" y="{height - 12}" text-anchor="middle">'
        "concurrency</text>",
        f'<text x="16" y="{(height - bottom + top) / 2}" transform="rotate(-90 16 '
        f'{(height - bottom + top) / 2})" text-anchor="middle">req/s</text>',
    ]
    for c in levels:
        parts.append(
            f'<text x="{x(c):.1f}" y="{height - bottom + 16}" text-anchor="middle">{c}</text>'
        )
    step = peak * 1.05 / 5
    # Two significant digits of the step: ticks 0.42 apart read 0.42, 0.84 (not 0, 1), and
    # ticks 420 apart read 420, 840 (not 420.000).
    decimals = max(0, 1 - math.floor(math.log10(step)))
    for i in range(6):
        value = step * i
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end">'
                     f"{value:,.{decimals}f}</text>")  # fmt: skip
    modes: list[tuple[str, bool]] = []
    for row in rows:
        if (row["front"], row["stream"]) not in modes:
            modes.append((row["front"], row["stream"]))
    for index, (front, stream) in enumerate(modes):
        colour = COLOURS[index % len(COLOURS)]
        mode_rows = sorted(
            (r for r in rows if r["front"] == front and r["stream"] == stream),
            key=lambda r: r["concurrency"],
        )
        points = " ".join(f"{x(r['concurrency']):.1f},{y(r['throughput_rps']):.1f}"
                          for r in mode_rows)  # fmt: skip
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
        )
        ideal = [r for r in mode_rows if r.get("ideal_rps")]
        if ideal:
            dashed = " ".join(f"{x(r['concurrency']):.1f},{y(r['ideal_rps']):.1f}" for r in ideal)
            parts.append(f'<polyline points="{dashed}" fill="none" stroke="{colour}" '
                         'stroke-dasharray="4 4"/>')  # fmt: skip
        label = f"{front} {'stream' if stream else 'non-stream'}"
        ly = top + 18 * index
        parts.append(f'<line x1="{width - right + 12}" y1="{ly}" x2="{width - right + 32}" '
                     f'y2="{ly}" stroke="{colour}" stroke-width="2"/>')  # fmt: skip
        parts.append(f'<text x="{width - right + 38}" y="{ly + 4}">{escape(label)}</text>')
    ly = top + 18 * len(modes)
    parts.append(f'<text x="{width - right + 12}" y="{ly + 4}">dashed: c ÷ latency(1)</text>')
    parts.append("</svg>")
    return "\n".join(parts)
