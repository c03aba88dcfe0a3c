"""Numbers from samples: percentiles, one table row per cell, and the efficiency E(c).

E(c) = measured throughput ÷ (c ÷ mean latency at concurrency 1): the share of what the model
latency allows that the server delivers, 1.0 being a server that adds nothing under load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from lang_agent.bench.load import CellResult, Sample


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0–100), linear between ranks; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def _spread(values: Sequence[float], prefix: str) -> dict[str, float | None]:
    return {
        f"{prefix}avg_ms": _ms(sum(values) / len(values)) if values else None,
        f"{prefix}p50_ms": _ms(percentile(values, 50)),
        f"{prefix}p95_ms": _ms(percentile(values, 95)),
        f"{prefix}p99_ms": _ms(percentile(values, 99)),
    }


def summarise(cell: CellResult) -> dict[str, Any]:
    """One row: counts, throughput, latency spread, first text/clause, server overhead."""
    samples = cell.samples
    ok = [s for s in samples if s.ok]
    row: dict[str, Any] = {
        "front": cell.front,
        "stream": cell.stream,
        "concurrency": cell.concurrency,
        "requests": len(samples),
        "ok": len(ok),
        "success_pct": round(100 * len(ok) / len(samples), 2) if samples else 0.0,
        "throughput_rps": round(cell.completed_in_window / cell.window_s, 3),
        "window_s": round(cell.window_s, 2),
    }
    row |= _spread([s.latency for s in ok], "")
    if cell.stream:
        row |= _spread([s.first_text for s in ok if s.first_text is not None], "first_text_")
        row |= _spread([s.first_clause for s in ok if s.first_clause is not None], "first_clause_")
    overheads = [s.overhead for s in ok if s.overhead is not None]
    row |= _spread(overheads, "overhead_")
    row["overhead_matched"] = len(overheads)
    steady = [s.overhead for s in ok if s.overhead is not None and s.start >= cell.window_start]
    row |= _spread(steady, "window_overhead_")
    engine = [s.engine_overhead for s in ok if s.engine_overhead is not None]
    row |= _spread(engine, "engine_overhead_")
    row |= _spread([s.before_model_s for s in ok if s.before_model_s is not None], "before_model_")
    row |= _spread([s.after_model_s for s in ok if s.after_model_s is not None], "after_model_")
    row["errors"] = failures(samples)
    return row


# An error body's request id: unique per answer, so with it each failure was a reason of its own.
REQUEST_ID = re.compile(r"\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b")


def failures(samples: Sequence[Sample]) -> dict[str, int]:
    """How many turns failed for each reason, request ids left out."""
    errors: dict[str, int] = {}
    for sample in samples:
        if not sample.ok:
            key = REQUEST_ID.sub("…", sample.error or "unknown")[:120]
            errors[key] = errors.get(key, 0) + 1
    return errors


def add_efficiency(rows: list[dict[str, Any]]) -> None:
    """Set `efficiency` on each row from the mean latency of its mode's concurrency-1 row."""
    base: dict[tuple[str, bool], float] = {}
    for row in rows:
        if row["concurrency"] == 1 and row.get("avg_ms"):
            base[(row["front"], row["stream"])] = row["avg_ms"] / 1000
    for row in rows:
        latency_1 = base.get((row["front"], row["stream"]))
        if latency_1 is None:
            row["ideal_rps"] = row["efficiency"] = None
            continue
        ideal = row["concurrency"] / latency_1
        row["ideal_rps"] = round(ideal, 3)
        row["efficiency"] = round(row["throughput_rps"] / ideal, 3)
