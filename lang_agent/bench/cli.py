"""The stress test's command line: flags, the process stack, the scenarios, the output files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from lang_agent.bench import report, scenarios
from lang_agent.bench.load import Counter
from lang_agent.bench.runner import DEFAULT_LEVELS, QUICK_LEVELS, Mode, Target, log, run_matrix
from lang_agent.bench.stack import ROOT, Meter, Stack
from lang_agent.bench.workload import FRONTS, Front
from lang_agent.cli_common import (
    FAILURE,
    OK,
    STARTUP_FAILURE,
    http_url,
    positive_float,
    positive_int,
    server_setting,
    setting_named,
)
from lang_agent.db import mask_dsn
from lang_agent.loop import freeze_start_up

BENCH_KEY = "bench-key-0123456789"  # the self-started servers' key (FAST_AUTH_KEYS)
SCENARIOS = ("matrix", "voice", "proxy", "scale", "floor")
SIM_PROFILES = ("fast", "original")  # SimProfile.named
HEALTH_TIMEOUT_S = 5.0
# Settings the tool gives the servers it starts, which --server-env must not change.
TOOL_SETTINGS = {
    "conn_str": "use --conn-str",
    "sim_url": "use --sim-url",
    "fast_auth_keys": "they take the tool's own key",
}
# --server-env settings whose values results.json and report.md must not keep.
SECRET_SETTING = re.compile(r"KEY|SECRET|PASSWORD|TOKEN", re.IGNORECASE)
# `python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'`
LITELLM = "/tmp/litellm-venv/bin/litellm"  # noqa: S108 - a path the user chose, not a temp file


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, e.g. 1,10,50: {text!r}")
    return levels


def _fronts(text: str) -> list[Front]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names or any(name not in FRONTS for name in names):
        raise argparse.ArgumentTypeError(f"expected front ends from {', '.join(FRONTS)}: {text!r}")
    return [front for front in FRONTS if front in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--scenario", default="matrix", choices=[*SCENARIOS, "all"], help="what to measure")
    add("--quick", action="store_true", help="a ~1-minute smoke run (levels 1,10; 5 s cells)")
    add("--levels", type=_levels, default=None, help="concurrency levels, e.g. 1,5,10,20,50")
    add(
        "--duration",
        type=positive_float,
        default=None,
        help="seconds per cell (default 15; quick 5)",
    )
    add("--fronts", type=_fronts, default=",".join(FRONTS), help="front ends: dashscope,openai")
    add("--streams", default="both", choices=["both", "stream", "plain"], help="stream modes")
    add("--turns-per-thread", type=positive_int, default=1, help="turns a user sends on one thread")
    add("--ramp", type=float, default=0.0, metavar="S",
        help="start the users evenly over S seconds (default 0: all at once, in step)")  # fmt: skip
    add("--tool-every", type=int, default=0, help="every n-th turn is a tool turn (0: none)")
    add("--profile", default=None, choices=SIM_PROFILES,
        help="simulator latency profile (default: original)")  # fmt: skip
    add(
        "--workers",
        type=positive_int,
        default=None,
        help="server worker processes (WORKERS; default 1)",
    )
    add("--server-env", type=server_setting, action="append", default=[], metavar="NAME=VALUE",
        help="extra server setting, e.g. SPECULATIVE_CHAT=false (repeatable)")  # fmt: skip
    add("--target", default=None,
        help="measure this running server instead of starting one (matrix only)")  # fmt: skip
    add("--sim-url", type=http_url, default=None,
        help="running simulator base URL (…/v1), the one --target calls; default: start one "
        "(none with --target: then no overhead figures)")  # fmt: skip
    add("--key", default=None, help="API key for --target (FAST_AUTH_KEYS)")
    add("--conn-str", default=None,
        help="Postgres DSN (with --target: the target's, for its own turn times); "
        "default: an embedded Postgres (none with --target)")  # fmt: skip
    add("--py-spy", type=int, default=0, metavar="C",
        help="record the server with py-spy during the first cell at concurrency C")  # fmt: skip
    add("--litellm", default=LITELLM, help="litellm binary, for the proxy comparison")
    add("--out", type=Path, default=None, help="output directory (default stress_results/<time>)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a run that would fail or mean nothing once the stack is up."""
    # `not value >= 0` refuses NaN too, and isfinite infinity: a ramp of either never ends.
    for flag in ("ramp", "tool_every"):
        value = getattr(args, flag)
        if not (value >= 0 and math.isfinite(value)):
            parser.error(f"--{flag.replace('_', '-')} must be 0 or more, not {value:g}")
    if args.target is not None:
        if not args.target.startswith("http://"):
            parser.error("--target must be a plain http:// URL (the load generator's protocol)")
        # Voice and scale start servers with settings of their own, proxy measures proxies.
        if args.scenario != "matrix":
            parser.error(f"--target measures a running server with --scenario matrix only; "
                         f"{args.scenario} starts servers of its own")  # fmt: skip
        # These shape the servers and simulator this tool starts, and it starts none.
        for flag, given in (("--workers", args.workers is not None),
                            ("--server-env", bool(args.server_env)),
                            ("--profile", args.profile is not None),
                            ("--py-spy", bool(args.py_spy))):  # fmt: skip
            if given:
                parser.error(f"{flag} configures the servers this tool starts: not with --target")
    elif args.key is not None:
        # The servers this tool starts accept only their own key.
        parser.error("--key is the key of --target: without --target it would go nowhere")
    if args.py_spy and shutil.which("py-spy") is None:
        parser.error("--py-spy needs py-spy on PATH (pip install py-spy)")
    for item in args.server_env:
        name = item.partition("=")[0]
        # The tool reads the same Postgres and simulator and sends the same key: a server on
        # others ended the run in a traceback (no `turns` table) or failed every turn.
        if (owner := TOOL_SETTINGS.get(setting_named(name) or "")) is not None:
            parser.error(f"--server-env {name}: the tool sets it for its servers; {owner}")


def workers(args: argparse.Namespace) -> int:
    return args.workers or 1


def modes(args: argparse.Namespace) -> list[Mode]:
    streams = {"both": (False, True), "stream": (True,), "plain": (False,)}[args.streams]
    return [Mode(front, stream) for front in args.fronts for stream in streams]


def recorded_argv(args: argparse.Namespace) -> dict[str, Any]:
    """The flags as results.json and report.md keep them: results are kept and shared, so the
    key, passwords in URLs and DSNs, and secret settings are masked."""
    argv = vars(args) | {"out": str(args.out)}
    if args.key is not None:
        argv["key"] = "***"
    for flag in ("conn_str", "target", "sim_url"):
        if argv[flag] is not None:
            argv[flag] = mask_dsn(argv[flag])
    argv["server_env"] = [_masked_setting(item) for item in args.server_env]
    return argv


def _masked_setting(item: str) -> str:
    name, sep, value = item.partition("=")
    return f"{name}{sep}{'***' if SECRET_SETTING.search(name) else mask_dsn(value)}"


def _server_env(args: argparse.Namespace, *, sim_url: str, dsn: str) -> dict[str, str]:
    empty_mcp = args.out / "mcp_config.json"
    empty_mcp.write_text("{}", encoding="utf-8")
    env = {
        "SIM_URL": sim_url,
        "LLM_PROVIDER": "sim",
        "CONN_STR": dsn,
        "FAST_AUTH_KEYS": BENCH_KEY,
        "MCP_CONFIG": str(empty_mcp),
        "DATA_DIR": str(args.out / "data"),
    }
    for item in args.server_env:  # NAME=VALUE, NAME upper case (cli_common.server_setting)
        name, _, value = item.partition("=")
        env[name] = value
    return env


@contextlib.contextmanager
def py_spy(pid: int | None, *, seconds: float, out: Path):
    """py-spy recording `pid` (all its processes) for `seconds` while the block runs."""
    if not pid:
        yield
        return
    argv = ["py-spy", "record", "--pid", str(pid), "--duration", str(int(seconds)),
            "--format", "raw", "--rate", "250", "--subprocesses", "--nonblocking",
            "--output", str(out)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()


async def matrix(args: argparse.Namespace, _stack: Stack, env: dict[str, Any]) -> dict[str, Any]:
    levels = args.levels or (list(QUICK_LEVELS) if args.quick else list(DEFAULT_LEVELS))
    duration = args.duration or (5.0 if args.quick else 15.0)
    target: Target = env["target"]
    spied = {"done": False}

    def on_cell(_mode: Mode, concurrency: int) -> None:
        if args.py_spy and concurrency == args.py_spy and not spied["done"]:
            spied["done"] = True
            out = args.out / "py-spy.txt"
            env["spy"] = py_spy(env.get("server_pid"), seconds=duration, out=out)
            env["spy"].__enter__()
        elif env.get("spy") is not None:
            env.pop("spy").__exit__(None, None, None)

    rows = await run_matrix(
        target,
        modes(args),
        levels,
        duration_s=duration,
        run_id=env["run_id"],
        counter=env["counter"],
        turns_per_thread=args.turns_per_thread,
        tool_every=args.tool_every,
        ramp_s=args.ramp,
        on_cell=on_cell,
    )
    if env.get("spy") is not None:
        env.pop("spy").__exit__(None, None, None)
    title = f"Matrix: {duration:g} s per cell, {args.turns_per_thread} turn(s) per thread"
    if args.ramp:
        title += f", users started over {args.ramp:g} s"
    (args.out / "chart.svg").write_text(report.chart_svg(rows, title=title), "utf-8")
    markdown = report.matrix_markdown(rows, title=title)
    unmeasured = _unmeasured(target)
    if unmeasured:
        markdown += f"\n{unmeasured}\n"
    targets = report.targets_markdown(rows)
    if targets:
        log(targets)
    return {"rows": rows, "markdown": f"{markdown}\n{targets}".rstrip() + "\n"}


def _unmeasured(target: Target) -> str:
    """What a run against --target cannot show, and the flag that would give it ('' for
    none): the tool starts no simulator or Postgres the target does not use."""
    missing = []
    if target.sim_root is None:
        missing.append("Overhead needs --sim-url (the simulator the target calls: its call log)")
    if target.dsn is None:
        missing.append("engine overhead needs --conn-str (the target's Postgres: its turn times)")
    if target.meter is None:
        missing.append("CPU and memory are measured only for servers this tool starts")
    return "; ".join(missing) + "." if missing else ""


async def unreachable(base_url: str) -> str | None:
    """Why the server at `base_url` cannot be measured, or None when its /health answers."""
    import httpx2

    try:
        async with httpx2.AsyncClient(timeout=HEALTH_TIMEOUT_S) as http:
            response = await http.get(f"{base_url.rstrip('/')}/health")
    except httpx2.HTTPError as exc:
        return f"no answer from /health ({type(exc).__name__}: {exc})"
    if response.status_code != 200:
        return f"/health answered {response.status_code}"
    return None


async def main(args: argparse.Namespace) -> int:
    # Before anything starts: against a server that is not there every turn fails at once.
    if args.target is not None and (problem := await unreachable(args.target)):
        log(f"--target {mask_dsn(args.target)}: {problem}")
        return STARTUP_FAILURE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # before Postgres and the servers start for a run it cannot keep
        log(f"--out {args.out}: cannot make the folder ({exc.strerror})")
        return STARTUP_FAILURE
    wanted = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    record: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": recorded_argv(args),
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "scenarios": {},
    }
    with Stack(args.out / "stack") as stack:
        env = await _start(args, stack, wanted=wanted)
        # A full collection here holds every user's reading, which the turns' overhead showed.
        freeze_start_up()
        record["simulator_profile"] = env.get("sim_profile")
        for name in wanted:
            log(f"═ scenario {name}")
            runner = SCENARIO_RUNNERS[name]
            record["scenarios"][name] = await runner(args, stack, env)
            _write(args, record)
    log(f"results in {args.out}")
    if _nothing_succeeded(record):
        log("every request failed: see the failures in report.md")
        return FAILURE
    return OK


def _nothing_succeeded(record: dict[str, Any]) -> bool:
    rows = [row for result in record["scenarios"].values() for row in result.get("rows", [])]
    return bool(rows) and not any(row.get("ok") for row in rows)


def _write(args: argparse.Namespace, record: dict[str, Any]) -> None:
    report.write_json(args.out / "results.json", record)
    parts = [f"# Stress test {record['started']}", "", f"`{json.dumps(record['argv'])}`", ""]
    for name, result in record["scenarios"].items():
        parts += [result.get("markdown") or f"## {name}", ""]
    (args.out / "report.md").write_text("\n".join(parts), "utf-8")


async def _sim_profile(sim_root: str | None) -> dict[str, Any] | None:
    """The simulator's latency profile, or None without a simulator or an answer."""
    import httpx2

    if sim_root is None:
        return None
    with contextlib.suppress(httpx2.HTTPError, ValueError):
        async with httpx2.AsyncClient(timeout=HEALTH_TIMEOUT_S) as http:
            return (await http.get(f"{sim_root}/_sim/profile")).json()
    return None


def _sim_root(sim_url: str) -> str:
    return sim_url.rstrip("/").removesuffix("/v1")


async def _start(args: argparse.Namespace, stack: Stack, *, wanted: list[str]) -> dict[str, Any]:
    env: dict[str, Any] = {"run_id": time.strftime("%H%M%S"), "counter": Counter()}
    if args.target:
        # The target has its own simulator and Postgres: starting others would measure nothing.
        sim_root = _sim_root(args.sim_url) if args.sim_url else None
        env["sim_profile"] = await _sim_profile(sim_root)
        env["target"] = Target(args.target.rstrip("/"), sim_root, None, args.key, args.conn_str)
        return env
    if args.sim_url:
        sim_url = args.sim_url
    else:
        profile = args.profile or "original"
        sim_url = (await asyncio.to_thread(stack.simulator, profile=profile)).url
        env["sim_pid"] = stack.services[-1].pid
    sim_root = _sim_root(sim_url)
    env["sim_url"], env["sim_root"] = sim_url, sim_root
    env["sim_profile"] = await _sim_profile(sim_root)
    processes = _server_processes(args, wanted=wanted)
    env["dsn"] = args.conn_str or await asyncio.to_thread(stack.postgres, processes=processes)
    env["server_env"] = _server_env(args, sim_url=sim_url, dsn=env["dsn"])
    env["key"] = BENCH_KEY
    if "matrix" not in wanted:
        return env  # the other scenarios start the servers they need
    server = await asyncio.to_thread(stack.server, env=env["server_env"], workers=workers(args))
    env["server_pid"] = server.pid
    meter = Meter({"server": server.pid, "sim": env.get("sim_pid"),
                   "postgres": stack.postgres_pid()})  # fmt: skip
    env["target"] = Target(server.url, sim_root, meter, BENCH_KEY, env["dsn"])
    log(f"server {server.url} (pid {server.pid}), simulator {sim_url}, "
        f"postgres {mask_dsn(env['dsn'])}")  # fmt: skip
    return env


def _server_processes(args: argparse.Namespace, *, wanted: list[str]) -> int:
    """Server processes up at once, for Postgres's connection budget: the matrix's server
    stays up while the scale scenario runs its own two beside it; voice runs one at a time."""
    processes = workers(args) if "matrix" in wanted else 1
    if "scale" in wanted:
        processes += sum(scenarios.SCALE_WORKERS)
    if "floor" in wanted:
        processes += 1
    return processes


SCENARIO_RUNNERS = {
    "matrix": matrix,
    "voice": scenarios.voice,
    "proxy": scenarios.proxy,
    "scale": scenarios.scale,
    "floor": scenarios.floor,
}
__all__ = ["ROOT", "add_arguments", "check_arguments", "main", "modes", "recorded_argv"]
