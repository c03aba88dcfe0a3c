"""The scenarios beyond the matrix: voice timing, the capture proxy's overhead, scale-out.

voice  – time to first text at concurrency 1: chat turns with the speculative chat call on and
         off, tool turns with the filler, each against what the model timing allows.
proxy  – the simulator direct, behind `lang-agent proxy`, and behind LiteLLM's proxy: each
         call's time minus the simulator's own time for it, at concurrency 1/10/50.
scale  – throughput at concurrency 200 with one and two worker processes, and a per-thread
         ordering check: concurrent turns on one thread across workers, none lost or mixed.
floor  – the server beside the floor server (bench/floor.py), one process each, their cells
         alternating: how much of the overhead is the engine's and how much the machine's.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from lang_agent.bench import report
from lang_agent.bench.load import Counter, Sample, attach_model_time, make_client
from lang_agent.bench.runner import Mode, Target, drain_calls, log, run_cell
from lang_agent.bench.stack import Meter, Stack
from lang_agent.bench.stats import failures, percentile
from lang_agent.bench.wire import Connection, WireError
from lang_agent.bench.workload import FRONTS, StreamReader, turn_text
from lang_agent.jsonwire import loads

SCALE_WORKERS = (1, 2)
SCALE_ROUNDS = 2  # cells alternate between the two servers, each order once

VOICE_CONFIGS: list[tuple[str, dict[str, str]]] = [
    ("speculative chat", {"SPECULATIVE_CHAT": "true", "FILLER_DELAY_MS": "0"}),
    ("sequential chat", {"SPECULATIVE_CHAT": "false", "FILLER_DELAY_MS": "0"}),
    ("filler after 300 ms", {"SPECULATIVE_CHAT": "true", "FILLER_DELAY_MS": "300"}),
]
FILLER_SLACK_S = 0.020


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value * 1000:.0f}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value} %"


def _p(values: list[float], q: float) -> float | None:
    return percentile(values, q)


def _calls_by_user(calls: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        grouped.setdefault(call["user"], []).append(call)
    return grouped


def voice_row(samples: list[Sample], calls: list[dict[str, Any]], *, kind: str,
              speculative: bool, profile: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """First text against its model bound. Chat: max(router, chat TTFT) when speculative,
    router + chat TTFT when not. Tool: router + filler TTFT + 20 ms."""
    by_user = _calls_by_user(calls)
    chat_ttft = profile["chat"]["ttft_ms"] / 1000
    chatty_ttft = profile["chatty"]["ttft_ms"] / 1000
    excess, within, routers = [], 0, []
    for sample in samples:
        if not sample.ok or sample.first_text is None:
            continue
        router = [c for c in by_user.get(sample.user[:200], []) if c["role"] == "router"]
        if not router:
            continue
        # Strict: the router call's own time, so everything the server adds (before the
        # router and after the model's first token) counts against the bound.
        router_s = router[0]["end"] - router[0]["start"]
        routers.append(router_s)
        if kind == "tool":
            bound = router_s + chatty_ttft
        elif speculative:
            bound = max(router_s, chat_ttft)
        else:
            bound = router_s + chat_ttft
        excess.append(sample.first_text - bound)
        within += sample.first_text <= bound + FILLER_SLACK_S
    firsts = [s.first_text for s in samples if s.ok and s.first_text is not None]
    clauses = [s.first_clause for s in samples if s.ok and s.first_clause is not None]
    return {
        "turns": len(samples),
        "ok": sum(s.ok for s in samples),
        "first_text_p50": _p(firsts, 50),
        "first_text_p95": _p(firsts, 95),
        "first_clause_p50": _p(clauses, 50),
        "router_call_p50": _p(routers, 50),
        "excess_p50": _p(excess, 50),
        "excess_p95": _p(excess, 95),
        "within_bound_pct": round(100 * within / len(excess), 1) if excess else None,
        "errors": failures(samples),
    }


async def voice(args, stack: Stack, env: dict[str, Any]) -> dict[str, Any]:
    turns = 6 if args.quick else 20
    profile = env["sim_profile"]
    rows: list[dict[str, Any]] = []
    for name, extra in VOICE_CONFIGS:
        server = await asyncio.to_thread(stack.server, env=env["server_env"] | extra)
        target = Target(server.url, env["sim_root"], None, env["key"])
        speculative = extra.get("SPECULATIVE_CHAT", "true") == "true"
        for front in FRONTS:
            for kind, tool_every in (("chat", 0), ("tool", 1)):
                log(f"▶ voice: {name}, {front}, {kind} turns")
                _, cell = await run_cell(
                    target, Mode(front, True), 1, duration_s=600, counter=env["counter"],
                    run_id=env["run_id"] + "v", tool_every=tool_every, max_turns=turns,
                    quiet=True,
                )  # fmt: skip
                row = voice_row(cell.samples, cell.calls, kind=kind, speculative=speculative,
                                profile=profile)  # fmt: skip
                rows.append({"config": name, "front": front, "kind": kind} | row)
        await asyncio.to_thread(stack.stop, server)
    return {"rows": rows, "markdown": voice_markdown(rows)}


def voice_markdown(rows: list[dict[str, Any]]) -> str:
    """The voice table, and why turns failed: a row of 0/6 must say what went wrong."""
    lines = [
        "## Voice: time to first text at concurrency 1 (streams)", "",
        "Bound: chat turns max(router, chat TTFT) when speculative, router + chat TTFT when "
        "not; tool turns router + filler TTFT (+20 ms allowed). Router = the router call's "
        "own time in the simulator's log; TTFTs are the profile's. Everything the server "
        "adds counts against the bound.", "",
        "| Config | Front | Turn | OK | First text p50 / p95 (ms) | First clause p50 (ms) "
        "| Router call p50 (ms) | Over the bound p50 / p95 (ms) | Within bound (+20 ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['config']} | {r['front']} | {r['kind']} | {r['ok']}/{r['turns']} "
            f"| {_ms(r['first_text_p50'])} / {_ms(r['first_text_p95'])} "
            f"| {_ms(r['first_clause_p50'])} | {_ms(r['router_call_p50'])} "
            f"| {_ms(r['excess_p50'])} / {_ms(r['excess_p95'])} | {_pct(r['within_bound_pct'])} |"
        )
    lines += ["", *report.failure_lines(rows, label=_voice_label)]
    return "\n".join(lines)


def _voice_label(row: dict[str, Any]) -> str:
    return f"{row['config']}, {row['front']}, {row['kind']} turns"


async def _raw_call(connection: Connection, text: str, stream: bool, sample: Sample) -> None:
    body = {"model": "sim-chat", "messages": [{"role": "user", "content": text}],
            "stream": stream}  # fmt: skip
    headers = {"authorization": "Bearer sim"}
    try:
        if stream:
            reader = StreamReader("openai", started=sample.start)
            sample.status = await connection.post("/chat/completions", body, headers=headers,
                                                  sink=reader.feed)  # fmt: skip
            sample.ok = sample.status == 200 and reader.finished and bool(reader.text)
        else:
            answer = bytearray()
            sample.status = await connection.post("/chat/completions", body, headers=headers,
                                                  sink=answer.extend)  # fmt: skip
            sample.ok = sample.status == 200 and bool(loads(answer).get("choices"))
        if not sample.ok:
            sample.error = f"status {sample.status}"
    except (WireError, TimeoutError, ValueError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"[:200]
    sample.end = time.monotonic()


async def _proxy_cell(base: str, sim_root: str, *, stream: bool, concurrency: int,
                      duration_s: float, ramp_s: float,
                      counter: Counter) -> list[Sample]:  # fmt: skip
    await drain_calls(sim_root)
    samples: list[Sample] = []
    deadline = time.monotonic() + ramp_s + duration_s
    async with make_client(base) as client:

        async def user(index: int) -> None:
            await asyncio.sleep(ramp_s * index / concurrency)
            connection = client.connection()
            while time.monotonic() < deadline:
                text = turn_text(counter.next(), kind="chat")
                sample = Sample("chat", text, "", 0, time.monotonic())
                await _raw_call(connection, text, stream, sample)
                samples.append(sample)

        await asyncio.gather(*(user(i) for i in range(concurrency)))
    attach_model_time(samples, await drain_calls(sim_root))
    return samples


async def proxy(args, stack: Stack, env: dict[str, Any]) -> dict[str, Any]:
    duration = 3.0 if args.quick else 8.0
    levels = [1, 10] if args.quick else [1, 10, 50]
    targets = {"direct": env["sim_url"]}
    ours = await asyncio.to_thread(stack.capture_proxy, upstream=env["sim_url"], dsn=env["dsn"])
    targets["lang-agent proxy"] = ours.url
    litellm_error = None
    try:
        theirs = await asyncio.to_thread(
            stack.litellm, binary=args.litellm, upstream=env["sim_url"]
        )
        targets["LiteLLM proxy"] = theirs.url
    except (RuntimeError, OSError) as exc:
        litellm_error = f"{type(exc).__name__}: {exc}"
    rows: list[dict[str, Any]] = []
    for stream in (False, True):
        for concurrency in levels:
            base: dict[str, list[float]] = {}
            for name, url in targets.items():
                log(f"▶ proxy: {name}, {'stream' if stream else 'non-stream'}, c={concurrency}")
                samples = await _proxy_cell(url, env["sim_root"], stream=stream,
                                            concurrency=concurrency, duration_s=duration,
                                            ramp_s=args.ramp, counter=env["counter"])  # fmt: skip
                extra = [s.overhead for s in samples if s.ok and s.overhead is not None]
                base.setdefault(name, extra)
                direct = base["direct"]
                row = {"target": name, "stream": stream, "concurrency": concurrency,
                       "requests": len(samples), "ok": sum(s.ok for s in samples),
                       "latency_p50": _p([s.latency for s in samples if s.ok], 50),
                       "errors": failures(samples)}  # fmt: skip
                for q in (50, 99):
                    own, ref = _p(extra, q), _p(direct, q)
                    row[f"outside_sim_p{q}"] = own
                    row[f"added_p{q}"] = None if own is None or ref is None else own - ref
                rows.append(row)
    lines = [
        "## Capture proxy overhead", "",
        "Outside sim = a call's time at the client minus the simulator's own time for it. "
        "Added = that, minus the same percentile for the simulator called direct.", "",
        "| Target | Mode | c | OK | Latency p50 (ms) | Outside sim p50 / p99 (ms) "
        "| Added p50 / p99 (ms) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        mode = "stream" if r["stream"] else "non-stream"
        lines.append(
            f"| {r['target']} | {mode} | {r['concurrency']} | {r['ok']}/{r['requests']} "
            f"| {_ms(r['latency_p50'])} | {_ms(r['outside_sim_p50'])} / "
            f"{_ms(r['outside_sim_p99'])} | {_ms(r['added_p50'])} / {_ms(r['added_p99'])} |"
        )
    lines += ["", *report.failure_lines(rows, label=_proxy_label)]
    if litellm_error:
        lines += ["", f"LiteLLM not measured: {litellm_error}"]
    return {"rows": rows, "markdown": "\n".join(lines), "litellm_error": litellm_error}


def _proxy_label(row: dict[str, Any]) -> str:
    return f"{row['target']}, {'stream' if row['stream'] else 'non-stream'}, c={row['concurrency']}"


async def _ordering_check(url: str, key: str, dsn: str, *, threads: int, per_thread: int,
                          counter: Counter, run_id: str) -> dict[str, Any]:  # fmt: skip
    """`per_thread` turns sent at once on each of `threads` threads; then every thread's
    memory must hold all of them, each answer right after its own question."""
    from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

    async with make_client(url) as client:

        async def one(thread: str) -> int:
            text = turn_text(counter.next(), kind="chat")
            body = {"model": "lang-agent", "thread_id": thread, "stream": False,
                    "messages": [{"role": "user", "content": text}]}  # fmt: skip
            return await client.connection().post(
                "/v1/chat/completions", body, headers={"authorization": f"Bearer {key}"}
            )

        names = [f"{run_id}-order-{i}" for i in range(threads)]
        statuses = await asyncio.gather(*(one(t) for t in names for _ in range(per_thread)))
    bad: list[str] = []
    async with AsyncPostgresSaver.from_conn_string(dsn) as saver:
        for thread in names:
            state = await saver.aget_tuple({"configurable": {"thread_id": thread}})
            messages = (state.checkpoint["channel_values"].get("messages") if state else []) or []
            pairs_ok = len(messages) == 2 * per_thread and all(
                messages[i].type == "human" and messages[i + 1].type == "ai"
                and messages[i].content in messages[i + 1].content
                for i in range(0, len(messages), 2)
            )  # fmt: skip
            if not pairs_ok:
                bad.append(f"{thread}: {len(messages)} messages")
    return {"threads": threads, "turns_per_thread": per_thread,
            "non_200": sum(s != 200 for s in statuses), "bad_threads": bad}  # fmt: skip


async def scale(args, stack: Stack, env: dict[str, Any]) -> dict[str, Any]:
    """One and two workers at once, their cells alternating: this machine's speed drifts by
    tens of percent within minutes, and one configuration measured after the other once came
    out the wrong way round (docs/performance.md)."""
    duration = 5.0 if args.quick else 15.0
    concurrency = 20 if args.quick else 200
    targets: dict[int, Target] = {}
    servers = []
    for workers in SCALE_WORKERS:
        server = await asyncio.to_thread(stack.server, env=env["server_env"], workers=workers)
        servers.append(server)
        meter = Meter({"server": server.pid, "sim": env.get("sim_pid"),
                       "postgres": stack.postgres_pid()})  # fmt: skip
        targets[workers] = Target(server.url, env["sim_root"], meter, env["key"], env["dsn"])
    rows, checks = [], {}
    for round_ in range(SCALE_ROUNDS):
        for mode in (Mode("openai", True), Mode("dashscope", False)):
            for workers in SCALE_WORKERS if round_ % 2 == 0 else SCALE_WORKERS[::-1]:
                log(f"▶ scale: round {round_ + 1}, {workers} worker(s), {mode.label}, "
                    f"c={concurrency}")  # fmt: skip
                row, _ = await run_cell(
                    targets[workers],
                    mode,
                    concurrency,
                    duration_s=duration,
                    counter=env["counter"],
                    run_id=env["run_id"] + f"w{workers}r{round_}",
                )
                rows.append(row | {"workers": workers, "round": round_ + 1})  # fmt: skip
    for workers, target in targets.items():
        log(f"▶ scale: {workers} worker(s), per-thread ordering check")
        checks[workers] = await _ordering_check(
            target.base_url, env["key"], env["dsn"], threads=10 if args.quick else 40,
            per_thread=4, counter=env["counter"], run_id=env["run_id"] + f"w{workers}",
        )  # fmt: skip
    for server in servers:
        await asyncio.to_thread(stack.stop, server)
    lines = [
        "## Scale-out: one vs two worker processes, one Postgres", "",
        "| Round | Workers | Mode | c | Requests | Success % | Throughput (req/s) | Avg (ms) "
        "| p99 (ms) | Overhead p50 / p99 (ms) | CPU % server / sim / pg / load / other "
        "| Server RSS (MB) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        mode = f"{r['front']} {'stream' if r['stream'] else 'non-stream'}"
        lines.append(
            f"| {r['round']} | {r['workers']} | {mode} | {r['concurrency']} | {r['requests']} "
            f"| {r['success_pct']} | {r['throughput_rps']:.1f} | {r['avg_ms']} | {r['p99_ms']} "
            f"| {r['overhead_p50_ms']} / {r['overhead_p99_ms']} | {report.cpu_cell(r)} "
            f"| {(r.get('peak_rss_mb') or {}).get('server')} |"
        )
    lines += ["", *report.failure_lines(rows, label=_scale_label)]
    lines.append("")
    for mode in sorted({(r["front"], r["stream"]) for r in rows}):
        means = {
            w: statistics.mean(r["throughput_rps"] for r in rows
                               if (r["front"], r["stream"]) == mode and r["workers"] == w)
            for w in SCALE_WORKERS
        }  # fmt: skip
        label = f"{mode[0]} {'stream' if mode[1] else 'non-stream'}"
        gain = (means[SCALE_WORKERS[-1]] / means[SCALE_WORKERS[0]] - 1) * 100
        lines.append(f"Mean throughput, {label}: " + " → ".join(
            f"{means[w]:.1f} req/s with {w} worker(s)" for w in SCALE_WORKERS
        ) + f" ({gain:+.0f} %).")  # fmt: skip
        lines.append("")
    for workers in SCALE_WORKERS:
        check = checks[workers]
        verdict = "holds" if not check["bad_threads"] and not check["non_200"] else "BROKEN"
        lines.append(
            f"Ordering with {workers} worker(s): {check['threads']} threads × "
            f"{check['turns_per_thread']} turns sent at once: {check['non_200']} non-200, "
            f"{len(check['bad_threads'])} threads with lost or mixed turns → {verdict}."
        )
        lines.append("")
    return {"rows": rows, "ordering": checks, "markdown": "\n".join(lines)}


async def floor(args, stack: Stack, env: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI front end against the floor server at each level, lockstep unless --ramp.
    Cells alternate, the order flipped at each level, as in `scale`."""
    duration = args.duration or (5.0 if args.quick else 15.0)
    levels = args.levels or ([1, 10] if args.quick else [1, 50])
    streams = {"both": (False, True), "stream": (True,), "plain": (False,)}[args.streams]
    floor_server = await asyncio.to_thread(stack.floor, sim_url=env["sim_url"])
    server = await asyncio.to_thread(stack.server, env=env["server_env"], front="openai")
    targets = {}
    for name, service, key, dsn in (("floor", floor_server, None, None),
                                    ("lang-agent", server, env["key"], env["dsn"])):  # fmt: skip
        meter = Meter({"server": service.pid, "sim": env.get("sim_pid"),
                       "postgres": stack.postgres_pid()})  # fmt: skip
        targets[name] = Target(service.url, env["sim_root"], meter, key, dsn)
    rows = []
    for index, concurrency in enumerate(levels):
        names = list(targets) if index % 2 == 0 else list(targets)[::-1]
        for stream in streams:
            mode = Mode("openai", stream)
            for name in names:
                log(f"▶ floor: {name}, {mode.label}, c={concurrency}")
                row, _ = await run_cell(
                    targets[name], mode, concurrency, duration_s=duration,
                    counter=env["counter"], run_id=env["run_id"] + f"f{index}", ramp_s=args.ramp,
                )  # fmt: skip
                rows.append(row | {"server": name, "cpu_ms_per_turn": _cpu_per_turn(row)})
    for service in (floor_server, server):
        await asyncio.to_thread(stack.stop, service)
    return {"rows": rows, "markdown": _floor_markdown(rows, ramp_s=args.ramp)}


def _cpu_per_turn(row: dict[str, Any]) -> float | None:
    """The server's CPU time per request of the cell, in ms."""
    share = (row.get("cpu_pct") or {}).get("server")
    if share is None or not row["requests"]:
        return None
    return round(share / 100 * row["metered_s"] / row["requests"] * 1000, 2)


def _floor_markdown(rows: list[dict[str, Any]], *, ramp_s: float) -> str:
    arrivals = f"users started over {ramp_s:g} s" if ramp_s else "lockstep"
    lines = [
        f"## The floor: lang-agent beside a server that only calls the models ({arrivals})", "",
        "| Server | Mode | c | Requests | Throughput (req/s) | Overhead p50 / p99 (ms) "
        "| Before / after the model calls, p99 (ms) | Server CPU per turn (ms) "
        "| CPU % server / sim / pg / load / other |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        mode = Mode(r["front"], r["stream"]).label
        lines.append(
            f"| {r['server']} | {mode} | {r['concurrency']} | {r['requests']} "
            f"| {r['throughput_rps']:.1f} | {r['overhead_p50_ms']} / {r['overhead_p99_ms']} "
            f"| {r['before_model_p99_ms']} / {r['after_model_p99_ms']} "
            f"| {r['cpu_ms_per_turn']} | {report.cpu_cell(r)} |"
        )
    lines += ["", *report.failure_lines(rows, label=_floor_label), ""]
    return "\n".join(lines)


def _floor_label(row: dict[str, Any]) -> str:
    return f"{row['server']}, {Mode(row['front'], row['stream']).label}, c={row['concurrency']}"


def _scale_label(row: dict[str, Any]) -> str:
    mode = Mode(row["front"], row["stream"])
    return f"round {row['round']}, {row['workers']} worker(s), {mode.label}"


__all__ = ["floor", "proxy", "scale", "voice", "voice_markdown", "voice_row"]
