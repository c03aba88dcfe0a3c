"""The `lang-agent` command: each subcommand parses flags into Settings and calls one function."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from lang_agent.settings import Settings

# Named exit codes, as uvicorn does.
OK = 0
FAILURE = 1
STARTUP_FAILURE = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """lang-agent: a LangGraph voice-agent server for the xiaozhi speaker."""


def _settings(**flags: object) -> Settings:
    """Settings from env/.env with the flags that were given on top; a clear exit on bad values."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        raise click.ClickException(exc.errors()[0]["msg"]) from exc


@main.command()
@click.option("--host", default=None, help="Agent API bind address [env HOST, default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Agent API port [env PORT, default 8588].")
@click.option("--conn-str", default=None, help="Postgres DSN [env CONN_STR; default embedded].")
def serve(host: str | None, port: int | None, conn_str: str | None) -> None:
    """Run the agent API (OpenAI and DashScope paths) and the viewer."""
    from fastapi_server.serve import run_agent_and_viewer

    sys.exit(run_agent_and_viewer(_settings(host=host, port=port, conn_str=conn_str)))


@main.command()
@click.argument("kind", type=click.Choice(["env", "markdown"]))
def config(kind: str) -> None:
    """Print every setting with its default: as .env.example (env) or a README table."""
    from lang_agent.settings_docs import env_example, markdown_table

    click.echo(env_example() if kind == "env" else markdown_table(), nl=False)


@main.command()
def schema() -> None:
    """Print the database schema as one idempotent SQL script."""
    from lang_agent.db import schema_script

    click.echo(schema_script(), nl=False)


@main.command("device-sim")
@click.option(
    "--port",
    type=int,
    default=None,
    help="Serve streamable HTTP on this port (0: any free port). Without it: MCP over stdio.",
)
@click.option("--host", default="127.0.0.1", help="HTTP bind address (loopback only).")
@click.option(
    "--board",
    default="lang-agent-sim",
    help="Simulated board: lang-agent-sim, lang-agent-sim-nocam or lang-agent-sim-minimal.",
)
@click.option("--tool-delay-ms", type=int, default=0, help="Delay every tool call by this.")
@click.option("--hang-tool", default=None, help="A tool name that never answers (for tests).")
@click.option(
    "--device-id-arg",
    is_flag=True,
    help="Advertise the optional `device_id` argument in every schema, as a multi-device "
    "bridge does.",
)
@click.option(
    "--user-tools",
    is_flag=True,
    help="Also list user-only tools (annotations.audience=['user']), as a bridge asking "
    "withUserTools:true does.",
)
def device_sim(
    port: int | None,
    host: str,
    board: str,
    tool_delay_ms: int,
    hang_tool: str | None,
    device_id_arg: bool,
    user_tools: bool,
) -> None:
    """Run a simulated xiaozhi speaker as an MCP server (the firmware's exact tools)."""
    from lang_agent.settings import is_loopback
    from lang_agent.tools.device_catalog import BOARDS
    from lang_agent.tools.device_sim import run

    if not is_loopback(host):
        raise click.ClickException(f"refusing to serve the device simulator on {host}")
    if board not in BOARDS:
        raise click.ClickException(f"unknown board {board}; choose one of {', '.join(BOARDS)}")
    sys.exit(
        run(
            host=host,
            port=port,
            board=board,
            tool_delay_ms=tool_delay_ms,
            hang_tool=hang_tool,
            device_id_arg=device_id_arg,
            user_tools=user_tools,
            on_ready=lambda url: print(f"device simulator: {url}", flush=True),
        )
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option("--port", type=int, default=8599, show_default=True, help="Port; 0 picks a free one.")
@click.option(
    "--profile",
    type=click.Choice(["fast", "original"]),
    default="fast",
    show_default=True,
    help="Latency: fast = no delays; original = the reference system's model timings.",
)
@click.option(
    "--key",
    default=None,
    show_default="none, no auth",
    help="Require 'Authorization: Bearer KEY' on every request.",
)
def sim(host: str, port: int, profile: str, key: str | None) -> None:
    """Run the model simulator: a deterministic OpenAI-compatible upstream, no API keys needed."""
    from lang_agent.llm.sim import run

    def ready(url: str) -> None:
        click.echo(url)
        click.echo(f"model simulator ({profile} profile) listening; Ctrl-C stops it", err=True)

    try:
        run(host=host, port=port, profile=profile, api_key=key, on_ready=ready)
    except OSError as exc:
        click.echo(f"cannot start the simulator on {host}:{port}: {exc}", err=True)
        sys.exit(STARTUP_FAILURE)
    sys.exit(OK)


@main.group()
def calls() -> None:
    """Search, inspect, export, clean up and replay captured model calls (table llm_calls)."""


_CONN_STR = click.option("--conn-str", default=None, help="Postgres DSN [env CONN_STR; embedded].")
_SELECTORS = (
    click.option("--id", "call_id", type=int, default=None, help="The call's id."),
    click.option("--chatcmpl", default=None, help="The completion id (chatcmpl-…)."),
    click.option("--requestid", default=None, help="The upstream request id (Msh-Request-Id …)."),
)
_PREDICATE = click.option(
    "-p",
    "--predicate",
    "predicates",
    multiple=True,
    help="Filter, e.g. \"status_code @ [429, 500] && model ~ 'qwen'\"; repeat to AND.",
)


def _selectors(func):  # type: ignore[no-untyped-def]
    for option in reversed(_SELECTORS):
        func = option(func)
    return func


def _run_calls(coro):  # type: ignore[no-untyped-def]
    """Run one calls command; user errors become a clean message and exit code 1."""
    import asyncio

    from lang_agent.capture.commands import CallsError
    from lang_agent.capture.query import PredicateError

    try:
        return asyncio.run(coro)
    except (CallsError, PredicateError) as exc:
        raise click.ClickException(str(exc)) from exc


@calls.command("list")
@_PREDICATE
@click.option("--thread", default=None, help="Only this thread's calls.")
@click.option("--since", default=None, help="Only calls since: a date/time, or 30m, 2h, 7d.")
@click.option("-n", "--limit", type=int, default=20, help="Most calls shown; 0 = all.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_CONN_STR
def calls_list(
    predicates: tuple[str, ...],
    thread: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
    conn_str: str | None,
) -> None:
    """List calls, newest first: ids, status, model, latency, TTFT, tokens, cost."""
    from lang_agent.capture.commands import list_command
    from lang_agent.capture.query import CallFilter

    filters = CallFilter(predicates=predicates, thread_id=thread, since=since)
    settings = _settings(conn_str=conn_str)
    click.echo(_run_calls(list_command(settings, filters=filters, limit=limit, as_json=as_json)))


@calls.command("inspect")
@_selectors
@click.option(
    "--print",
    "sections",
    default="metadata",
    help="Comma-separated: metadata, request_header, request_body, client_request_body, "
    "response_header, response_body, response_sse, events, flags, error.",
)
@_CONN_STR
def calls_inspect(
    call_id: int | None,
    chatcmpl: str | None,
    requestid: str | None,
    sections: str,
    conn_str: str | None,
) -> None:
    """Show one call in full."""
    from lang_agent.capture.commands import inspect_command
    from lang_agent.capture.query import CallFilter

    filters = CallFilter(id=call_id, chatcmpl=chatcmpl, request_id=requestid)
    wanted = [s.strip() for s in sections.split(",") if s.strip()]
    settings = _settings(conn_str=conn_str)
    click.echo(_run_calls(inspect_command(settings, filters=filters, sections=wanted)))


@calls.command("export")
@_selectors
@_PREDICATE
@click.option("--directory", type=click.Path(path_type=Path), default=None, help="Write files.")
@click.option("--good", "category", flag_value="goodcase", default=None, help="A good case.")
@click.option("--bad", "category", flag_value="badcase", help="A bad case.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable); stored with the call.")
@click.option("--curl", is_flag=True, help="Print a replayable curl command ($API_KEY).")
@_CONN_STR
def calls_export(
    call_id: int | None,
    chatcmpl: str | None,
    requestid: str | None,
    predicates: tuple[str, ...],
    directory: Path | None,
    category: str | None,
    tags: tuple[str, ...],
    curl: bool,
    conn_str: str | None,
) -> None:
    """Export calls as case JSON (one per file with --directory) or as curl commands."""
    from lang_agent.capture.commands import export_command
    from lang_agent.capture.query import CallFilter

    filters = CallFilter(predicates=predicates, id=call_id, chatcmpl=chatcmpl, request_id=requestid)
    settings = _settings(conn_str=conn_str)
    click.echo(
        _run_calls(
            export_command(
                settings,
                filters=filters,
                directory=directory,
                category=category,
                tags=tags,
                curl=curl,
            )
        )
    )


@calls.command("cleanup")
@click.option("--before", default=None, help="Delete calls before: a date/time, or 7d, 12h.")
@click.option("--all", "everything", is_flag=True, help="Delete every call.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_CONN_STR
def calls_cleanup(before: str | None, everything: bool, yes: bool, conn_str: str | None) -> None:
    """Delete old calls in batches, after a confirmation."""
    from lang_agent.capture.commands import cleanup_command

    def confirm(count: int) -> bool:
        return yes or click.confirm(f"delete {count} calls?", default=False)

    settings = _settings(conn_str=conn_str)
    deleted = _run_calls(
        cleanup_command(settings, before=before, everything=everything, confirm=confirm)
    )
    click.echo(f"deleted {deleted} calls")


@calls.command("replay")
@click.option("--id", "call_id", type=int, required=True, help="The call to serve again.")
@click.option("--port", type=int, default=0, help="Port on 127.0.0.1; 0 picks a free one.")
@click.option("--speed", type=float, default=1.0, help="Timing scale: 2 = twice as fast.")
@_CONN_STR
def calls_replay(call_id: int, port: int, speed: float, conn_str: str | None) -> None:
    """Serve a recorded response again, with its original chunk timing, until Ctrl-C."""
    from lang_agent.capture.commands import replay_command

    def ready(url: str) -> None:
        click.echo(f'replaying call {call_id}: change base_url to "{url}"')

    settings = _settings(conn_str=conn_str)
    with contextlib.suppress(KeyboardInterrupt):
        _run_calls(
            replay_command(settings, call_id=call_id, port=port, speed=speed, on_ready=ready)
        )


@main.group()
def proxy() -> None:
    """The standalone capture proxy for any OpenAI-compatible client."""


@proxy.command("start")
@click.option("--port", type=int, default=None, help="Port on 127.0.0.1 [default 9988].")
@click.option("--upstream", default=None, help="Upstream base URL [default Moonshot /v1].")
@click.option("--key", default=None, help="Send this key upstream instead of the client's.")
@click.option("--force-stream", is_flag=True, default=None, help="Stream non-stream calls.")
@click.option("--detect-repeat", is_flag=True, default=None, help="Cut looping streams.")
@click.option("--repeat-threshold", type=float, default=None, help="Repeat share [0.5].")
@click.option("--repeat-min-length", type=int, default=None, help="Judged characters [200].")
@click.option(
    "--config", type=click.Path(path_type=Path, exists=True), default=None, help="TOML/JSON."
)
@_CONN_STR
def proxy_start(
    port: int | None,
    upstream: str | None,
    key: str | None,
    force_stream: bool | None,
    detect_repeat: bool | None,
    repeat_threshold: float | None,
    repeat_min_length: int | None,
    config: Path | None,
    conn_str: str | None,
) -> None:
    """Forward every call to the upstream and capture it; flags override the config file."""
    import asyncio

    from fastapi_server.serve import configure_logging
    from lang_agent.capture.proxy import load_config_file, run_proxy

    values: dict[str, object] = load_config_file(config) if config else {}
    flags = {
        "proxy_port": port,
        "proxy_upstream": upstream,
        "proxy_key": key,
        "force_stream": force_stream,
        "detect_repeat": detect_repeat,
        "repeat_threshold": repeat_threshold,
        "repeat_min_length": repeat_min_length,
        "conn_str": conn_str,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = _settings(**values)
    configure_logging(settings)

    def ready(url: str) -> None:
        click.echo(f'change base_url to "{url}"')

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_proxy(settings, on_ready=ready))
    except OSError as exc:
        click.echo(f"cannot start the proxy: {exc}", err=True)
        sys.exit(STARTUP_FAILURE)


@main.command()
@click.option("--timeout", type=float, default=10.0, help="Seconds allowed to each check.")
@click.option("--verbose", is_flag=True, help="Also show the log lines the checks produce.")
@_CONN_STR
def doctor(timeout: float, verbose: bool, conn_str: str | None) -> None:
    """Check models, database, MCP servers, auth and ports; exit 1 when something is broken."""
    import asyncio
    import logging

    from lang_agent.doctor import diagnose, report

    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL)
    settings = _settings(conn_str=conn_str)
    checks = asyncio.run(diagnose(settings, timeout_s=timeout))
    click.echo(report(checks, colour=sys.stdout.isatty()))
    sys.exit(OK if all(c.ok for c in checks) else FAILURE)


@main.command()
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--keep-checkpoints", type=int, default=None, help="Latest checkpoints kept per thread [20]."
)
@click.option("--log-retention-days", type=float, default=None, help="Days of turns kept [0].")
@click.option(
    "--capture-retention-days", type=float, default=None, help="Days of captured calls kept [30]."
)
@_CONN_STR
def cleanup(
    dry_run: bool,
    yes: bool,
    keep_checkpoints: int | None,
    log_retention_days: float | None,
    capture_retention_days: float | None,
    conn_str: str | None,
) -> None:
    """Prune old checkpoints, conversation log rows and captured calls (0 keeps a table's rows)."""
    import asyncio

    from lang_agent.retention import cleanup_command

    def confirm(plan: str) -> bool:
        click.echo(plan)
        return yes or click.confirm("delete these rows?", default=False)

    settings = _settings(
        conn_str=conn_str,
        keep_checkpoints=keep_checkpoints,
        log_retention_days=log_retention_days,
        capture_retention_days=capture_retention_days,
    )
    click.echo(asyncio.run(cleanup_command(settings, dry_run=dry_run, confirm=confirm)))


if __name__ == "__main__":
    sys.exit(main())
