"""Prometheus text exposition of captured calls: counts, latency/TTFT histograms, tokens, cost."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lang_agent.capture.record import CallRecord

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "lang_agent"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS_S = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)

Labels = tuple[tuple[str, str], ...]


class CaptureStats(Protocol):
    written: int
    dropped: int
    queued_bytes: int

    @property
    def queued(self) -> int: ...


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


def format_number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Histogram:
    """Cumulative buckets per label set, rendered as _bucket/_sum/_count."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = (*buckets, math.inf)
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * len(self.buckets))
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, *, value: float) -> None:
        counts = self.counts[labels]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self.sums[labels] += value

    def lines(self, name: str) -> list[str]:
        out = []
        for labels, counts in sorted(self.counts.items()):
            for bound, count in zip(self.buckets, counts, strict=True):
                le = (*labels, ("le", format_number(bound)))
                out.append(f"{name}_bucket{_labels(le)} {count}")
            out.append(f"{name}_sum{_labels(labels)} {format_number(self.sums[labels])}")
            out.append(f"{name}_count{_labels(labels)} {counts[-1]}")
        return out


def family_lines(name: str, kind: str, help_text: str, values: dict[Labels, float]) -> list[str]:
    """One counter or gauge family: HELP, TYPE and a line per label set."""
    out = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in sorted(values.items()):
        out.append(f"{name}{_labels(labels)} {format_number(value)}")
    return out


def histogram_lines(name: str, help_text: str, histogram: Histogram) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]


class Metrics:
    """Counters fed by the recorder as calls end; `render()` is the /metrics body."""

    def __init__(self) -> None:
        self.calls: dict[Labels, int] = defaultdict(int)
        self.tokens: dict[Labels, int] = defaultdict(int)
        self.cost: dict[Labels, float] = defaultdict(float)
        self.flags: dict[Labels, int] = defaultdict(int)
        self.latency = Histogram(LATENCY_BUCKETS_S)
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.in_flight = 0
        self.currency = "CNY"
        self._capture: CaptureStats | None = None

    def bind_capture(self, capture: CaptureStats) -> None:
        self._capture = capture

    def call_started(self) -> None:
        self.in_flight += 1

    def call_finished(self, record: CallRecord) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        model = record.model or "unknown"
        self.calls[(("model", model), ("status", record.status))] += 1
        if record.latency_ms is not None:
            self.latency.observe((("model", model),), value=record.latency_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.observe((("model", model),), value=record.ttft_ms / 1000)
        for kind in ("prompt", "completion", "cached"):
            count = getattr(record, f"{kind}_tokens")
            if count:
                self.tokens[(("model", model), ("kind", kind))] += count
        if record.cost:
            self.cost[(("model", model), ("currency", self.currency))] += record.cost
        for flag in record.flags:
            self.flags[(("flag", flag),)] += 1

    def render(self, extra: Sequence[str] = ()) -> str:
        """The body, with `extra` lines (other families of the same process) at the end."""
        p = PREFIX
        out: list[str] = []

        def family(name: str, kind: str, help_text: str, values: dict[Labels, float]) -> None:
            out.extend(family_lines(name, kind, help_text, values))

        family(f"{p}_llm_calls_total", "counter", "Model calls by model and status.", self.calls)
        for name, hist, text in (
            (f"{p}_llm_call_duration_seconds", self.latency, "Model call latency."),
            (f"{p}_llm_ttft_seconds", self.ttft, "Time to the first content token."),
        ):
            out.extend(histogram_lines(name, text, hist))
        family(f"{p}_llm_tokens_total", "counter", "Tokens by model and kind.", self.tokens)
        family(f"{p}_llm_cost_total", "counter", "Cost from the price table.", self.cost)
        family(f"{p}_llm_flags_total", "counter", "Detector verdicts by flag.", self.flags)
        family(
            f"{p}_llm_calls_in_flight", "gauge", "Model calls running now.", {(): self.in_flight}
        )
        capture = self._capture
        written, dropped, queued, queued_bytes = (
            (capture.written, capture.dropped, capture.queued, capture.queued_bytes)
            if capture
            else (0, 0, 0, 0)
        )
        family(
            f"{p}_capture_rows_written_total",
            "counter",
            "Calls whose capture row was written whole (its final row).",
            {(): written},
        )
        family(
            f"{p}_capture_rows_dropped_total",
            "counter",
            "Calls whose final capture row was dropped (queue full or database down).",
            {(): dropped},
        )
        family(f"{p}_capture_queue_depth", "gauge", "Capture rows waiting.", {(): queued})
        family(
            f"{p}_capture_queue_bytes",
            "gauge",
            "Request and response bytes of the capture rows waiting (CAPTURE_QUEUE_MB bounds it).",
            {(): queued_bytes},
        )
        out.extend(extra)
        return "\n".join(out) + "\n"
