"""Running cells: the concurrency matrix per mode (front end × stream), with progress lines,
the simulator's call log attached, CPU and memory per process, and E(c) per mode."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx2

from lang_agent.bench.load import CellResult, Counter, Sample, attach_model_time, make_client
from lang_agent.bench.load import run_cell as run_one
from lang_agent.bench.stack import Meter
from lang_agent.bench.stats import add_efficiency, summarise
from lang_agent.bench.workload import Front

DEFAULT_LEVELS = (1, 5, 10, 20, 50, 100, 200)
QUICK_LEVELS = (1, 10)
TICK_S = 2.0


@dataclass
class Target:
    """Where the cells go: the agent server, the simulator's control root, and the meter."""

    base_url: str
    sim_root: str | None = None  # http://host:port of the simulator, for /_sim/calls
    meter: Meter | None = None
    key: str | None = None
    dsn: str | None = None  # the server's Postgres, to read its own turn times from `turns`


@dataclass
class Mode:
    front: Front
    stream: bool

    @property
    def label(self) -> str:
        return f"{self.front} {'stream' if self.stream else 'non-stream'}"


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


async def drain_calls(sim_root: str | None) -> list[dict[str, Any]]:
    """The simulator's call log since the last drain ([] without a simulator)."""
    if sim_root is None:
        return []
    async with httpx2.AsyncClient(timeout=30) as http:
        response = await http.get(f"{sim_root}/_sim/calls")
        response.raise_for_status()
        return list(response.json()["calls"])


async def run_cell(
    target: Target,
    mode: Mode,
    concurrency: int,
    *,
    duration_s: float,
    counter: Counter,
    run_id: str,
    turns_per_thread: int = 1,
    tool_every: int = 0,
    ramp_s: float = 0.0,
    max_turns: int | None = None,
    quiet: bool = False,
) -> tuple[dict[str, Any], CellResult]:
    """One cell, metered; returns its summary row and the raw result."""
    await drain_calls(target.sim_root)
    done = [0, 0]

    def on_done(sample: Sample) -> None:
        done[0 if sample.ok else 1] += 1

    async def ticker() -> None:
        started = time.monotonic()
        while not quiet:
            await asyncio.sleep(TICK_S)
            elapsed = time.monotonic() - started
            log(f"  … {mode.label} c={concurrency}: {done[0]} ok, {done[1]} failed, "
                f"{elapsed:.0f}/{duration_s:.0f} s")  # fmt: skip

    if target.meter is not None:
        target.meter.start()
    tick = asyncio.create_task(ticker())
    try:
        async with make_client(target.base_url) as client:
            cell = await run_one(
                client,
                front=mode.front,
                stream=mode.stream,
                concurrency=concurrency,
                duration_s=duration_s,
                counter=counter,
                run_id=run_id,
                key=target.key,
                turns_per_thread=turns_per_thread,
                tool_every=tool_every,
                ramp_s=ramp_s,
                max_turns=max_turns,
                on_done=on_done,
            )
    finally:
        tick.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await tick
    resources = target.meter.stop() if target.meter is not None else {}
    cell.calls = await drain_calls(target.sim_root)
    attach_model_time(cell.samples, cell.calls)
    if target.dsn is not None:
        await attach_server_latency(target.dsn, cell.samples)
    row = summarise(cell) | resources
    row["turns_per_thread"] = turns_per_thread
    row["ramp_s"] = ramp_s
    return row, cell


SELECT_TURN_TIMES_SQL = """
SELECT thread_id, latency_ms FROM turns WHERE thread_id = ANY(%s) ORDER BY started_at
"""


async def attach_server_latency(dsn: str, samples: list[Sample], *, within_s: float = 5.0) -> int:
    """Each sample's turn time as the server logged it (write-behind: polled for a while).
    A thread's k-th logged turn is its k-th sample. Returns how many were matched."""
    import psycopg

    threads = sorted({s.thread_id for s in samples})
    if not threads:
        return 0
    rows: list[tuple[str, float | None]] = []
    deadline = time.monotonic() + within_s
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        while True:
            cursor = await conn.execute(SELECT_TURN_TIMES_SQL, (threads,))
            rows = await cursor.fetchall()
            if len(rows) >= len(samples) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
    logged: dict[str, list[float | None]] = {}
    for thread, latency in rows:
        logged.setdefault(thread, []).append(latency)
    matched = 0
    for sample in samples:
        times = logged.get(sample.thread_id) or []
        if sample.turn < len(times) and times[sample.turn] is not None:
            sample.server_latency = times[sample.turn] / 1000
            matched += 1
    return matched


def _ms(value: float | None) -> str:
    """Milliseconds, or "–" when unknown (nothing succeeded, no call log): never a false 0."""
    return "–" if value is None else f"{value:.1f}"


def cell_line(row: dict[str, Any]) -> str:
    eff = row.get("efficiency")
    return (
        f"{row['front']:<9} {'stream' if row['stream'] else 'plain ':<6} c={row['concurrency']:<4}"
        f" n={row['requests']:<5} ok={row['success_pct']:>6.2f}% {row['throughput_rps']:>7.2f} r/s"
        f" avg={_ms(row['avg_ms']):>7} p99={_ms(row['p99_ms']):>7} ms"
        f" ovh p50={_ms(row['overhead_p50_ms'])} p99={_ms(row['overhead_p99_ms'])}"
        + (f" E={eff:.3f}" if eff is not None else "")
    )


async def run_matrix(
    target: Target,
    modes: Sequence[Mode],
    levels: Sequence[int],
    *,
    duration_s: float,
    run_id: str,
    counter: Counter | None = None,
    turns_per_thread: int = 1,
    tool_every: int = 0,
    ramp_s: float = 0.0,
    max_turns: int | None = None,
    pause_s: float = 1.0,
    on_cell: Callable[[Mode, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every mode over every concurrency level; rows carry E(c) of their mode, grouped by mode.

    Level by level, each mode in turn: this machine's speed drifts within a run, and with each
    mode's cells together the drift fell on whichever mode came last (docs/performance.md)."""
    counter = counter or Counter()
    rows: list[dict[str, Any]] = []
    for concurrency in levels:
        for mode in modes:
            if on_cell is not None:
                on_cell(mode, concurrency)
            log(f"▶ {mode.label}, concurrency {concurrency}, {duration_s:g} s")
            row, _ = await run_cell(
                target,
                mode,
                concurrency,
                duration_s=duration_s,
                counter=counter,
                run_id=run_id,
                turns_per_thread=turns_per_thread,
                tool_every=tool_every,
                ramp_s=ramp_s,
                max_turns=max_turns,
            )
            rows.append(row)
            add_efficiency(rows)
            log("  " + cell_line(row))
            await asyncio.sleep(pause_s)  # let the write-behind log drain between cells
    order = {(mode.front, mode.stream): n for n, mode in enumerate(modes)}
    return sorted(rows, key=lambda row: order[(row["front"], row["stream"])])
