"""Several worker processes on one port, each with its own listening socket (SO_REUSEPORT).

uvicorn's `--workers` shares one listening socket and the process that wakes first takes the
connection, so with keep-alive clients (the load generator, a xiaozhi server) one worker got
about five sixths of the turns while the other idled (docs/performance.md). With a socket
per worker in one SO_REUSEPORT group, the kernel spreads connections by their addresses.

The parent only supervises. It holds the port (bound, never listening, so it takes no
connections), forwards SIGTERM and SIGINT once to every worker, and when a worker exits on
its own it stops the others and exits with that worker's code, for systemd or Docker to
restart the group. Workers run in their own process group, so a terminal's Ctrl-C reaches
them once, through the parent, and they drain gracefully instead of being forced. A worker
whose parent is gone (killed outright) drains and stops too. /metrics answers for the whole
group (`group_metrics`), through a directory the parent makes for the group's run.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import MutableSequence
from multiprocessing.connection import wait
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from fastapi_server import metrics_api
from fastapi_server.balance import ConnectionBalancer, ConnectionShare
from fastapi_server.group_metrics import GroupMetrics
from fastapi_server.serve import (
    STARTUP_FAILURE,
    configure_logging,
    load_factory,
    on_stop,
    server_config,
)
from lang_agent import loop
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port in the port's SO_REUSEPORT group."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(
    factory: str,
    settings: Settings,
    host: str,
    port: int,
    index: int,
    metrics_dir: str,
    connections: MutableSequence[int],
) -> None:
    os.setpgid(0, 0)
    configure_logging(settings)
    sock = reuse_port_socket(host, port)
    app = load_factory(factory)(settings)
    group = GroupMetrics(Path(metrics_dir), index, lambda: metrics_api.render(app))
    app.state.group_metrics = group
    share = ConnectionShare(connections, index)
    balanced = ConnectionBalancer(app, share)
    config = server_config(balanced, settings, host=host, port=port)
    server = uvicorn.Server(config)
    loop.run(_serve(server, app, sock, group, share))
    raise SystemExit(0 if server.started else STARTUP_FAILURE)


async def _serve(
    server: uvicorn.Server,
    app: FastAPI,
    sock: socket.socket,
    group: GroupMetrics,
    share: ConnectionShare,
) -> None:
    background = [
        asyncio.create_task(group.publishing(), name="group-metrics"),
        asyncio.create_task(share.follow(server), name="connection-share"),
        asyncio.create_task(on_stop(server, app), name="on-stop"),
    ]
    orphaned = False
    try:
        orphaned = await _serve_while_parent_lives(server, sock)
    finally:
        for task in background:
            task.cancel()
    if orphaned:  # no parent is left to remove the group's metrics files
        await asyncio.gather(*background, return_exceptions=True)
        shutil.rmtree(group.directory, ignore_errors=True)


async def _serve_while_parent_lives(server: uvicorn.Server, sock: socket.socket) -> bool:
    """Serve until signalled, or until the parent is gone (then True): a parent killed
    outright (SIGKILL, the OOM killer) forwards nothing, and its workers would hold the port
    on their own, out of a supervisor's sight. The parent's end of the spawn pipe closes
    however it dies."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:  # not started by run_workers
        await server.serve(sockets=[sock])
        return False
    running = asyncio.get_running_loop()
    gone = False

    def orphaned() -> None:
        nonlocal gone
        gone = True
        running.remove_reader(parent.sentinel)
        logger.warning("the parent process is gone; worker %d drains and stops", os.getpid())
        server.should_exit = True

    running.add_reader(parent.sentinel, orphaned)
    try:
        await server.serve(sockets=[sock])
    finally:
        running.remove_reader(parent.sentinel)
    return gone


def run_workers(factory: str, *, settings: Settings, host: str, port: int) -> int:
    """Serve the app `factory` (`module:function`) makes from WORKERS processes on host:port
    until signalled."""
    from lang_agent.db import resolve_dsn

    workers = settings.workers
    if not hasattr(socket, "SO_REUSEPORT"):
        logger.error("WORKERS=%d needs SO_REUSEPORT, which this system lacks: run one process "
                     "per port behind a proxy (docs/operations.md)", workers)  # fmt: skip
        return STARTUP_FAILURE
    if settings.conn_str is None:
        # One embedded Postgres for all workers, started before any of them could race to.
        dsn, _embedded = asyncio.run(resolve_dsn(settings))
        settings = settings.model_copy(update={"conn_str": SecretStr(dsn)})
    holder = reuse_port_socket(host, port)
    port = holder.getsockname()[1]
    metrics_dir = tempfile.mkdtemp(prefix="lang-agent-metrics-")
    context = multiprocessing.get_context("spawn")
    # Each worker's open connections, in shared memory (fastapi_server/balance.py).
    connections = context.Array("i", workers, lock=False)
    processes = [
        context.Process(
            target=_worker,
            args=(factory, settings, host, port, n, metrics_dir, connections),
            name=f"lang-agent-worker-{n}",
        )
        for n in range(workers)
    ]
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        for process in processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for process in processes:
            process.start()
        logger.info("%d workers on %s:%d (SO_REUSEPORT)", workers, host, port)
        code = 0
        running = {process.sentinel: process for process in processes}
        while running:
            for sentinel in wait(list(running)):
                process = running.pop(sentinel)
                process.join()
                exit_code = process.exitcode or 0
                if not stopping:
                    logger.error("worker %s exited (%s); stopping the others", process.pid,
                                 exit_code)  # fmt: skip
                    code = exit_code if exit_code > 0 else 1
                    stop()
                elif exit_code > 0 and not code:  # not a signal that stopped a worker
                    code = exit_code
        return code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        holder.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
