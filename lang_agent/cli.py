"""The `lang-agent` command: each subcommand parses flags into Settings and calls one function."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from fastapi_server.wire_types import thread_key
from lang_agent.cli_capture import calls, proxy
from lang_agent.cli_common import (
    CONN_STR_OPTION,
    FAILURE,
    OK,
    PORT,
    Checked,
    confirmed,
    positive_float,
    run_command,
    settings_from,
    start_failures,
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """lang-agent: a LangGraph voice-agent server for the xiaozhi speaker."""


@main.command()
@click.option("--host", default=None, help="Agent API bind address [env HOST, default 127.0.0.1].")
@click.option("--port", type=PORT, default=None, help="Agent API port [env PORT, default 8588].")
@click.option("--conn-str", default=None, help="Postgres DSN [env CONN_STR; default embedded].")
def serve(host: str | None, port: int | None, conn_str: str | None) -> None:
    """Run the agent API (OpenAI and DashScope paths) and the viewer."""
    from fastapi_server.serve import run_agent_and_viewer

    sys.exit(run_agent_and_viewer(settings_from(host=host, port=port, conn_str=conn_str)))


@main.command()
@click.argument("kind", type=click.Choice(["env", "markdown"]))
def config(kind: str) -> None:
    """Print every setting with its default: as .env.example (env) or a README table."""
    from lang_agent.settings_docs import env_example, markdown_table

    click.echo(env_example() if kind == "env" else markdown_table(), nl=False)


@main.command()
@click.option(
    "--apply",
    is_flag=True,
    help="Bring the database up to date instead (our tables and LangGraph's), as the tables' "
    "owner where the server's role may not change them.",
)
@CONN_STR_OPTION
def schema(apply: bool, conn_str: str | None) -> None:
    """Print the database schema as one idempotent SQL script, or apply it (--apply)."""
    if not apply:
        from lang_agent.db import schema_script

        click.echo(schema_script(), nl=False)
        return
    from lang_agent.checkpointer import prepare_database

    run_command(prepare_database(settings_from(conn_str=conn_str)))
    click.echo("the schema is up to date")


@main.command("device-sim")
@click.option(
    "--port",
    type=PORT,
    default=None,
    help="Serve streamable HTTP on this port (0: any free port). Without it: MCP over stdio.",
)
@click.option("--host", default="127.0.0.1", help="HTTP bind address (loopback only).")
@click.option(
    "--board",
    default="lang-agent-sim",
    help="Simulated board: lang-agent-sim, lang-agent-sim-nocam or lang-agent-sim-minimal.",
)
@click.option(
    "--tool-delay-ms", type=click.IntRange(min=0), default=0, help="Delay every tool call by this."
)
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
    with start_failures(f"the device simulator on {host}:{port}"):
        code = run(
            host=host,
            port=port,
            board=board,
            tool_delay_ms=tool_delay_ms,
            hang_tool=hang_tool,
            device_id_arg=device_id_arg,
            user_tools=user_tools,
            on_ready=lambda url: print(f"device simulator: {url}", flush=True),
        )
    sys.exit(code)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option(
    "--port", type=PORT, default=8599, show_default=True, help="Port; 0 picks a free one."
)
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

    with start_failures(f"the simulator on {host}:{port}"):
        run(host=host, port=port, profile=profile, api_key=key, on_ready=ready)
    sys.exit(OK)


@main.command()
@click.option(
    "--timeout",
    type=Checked(positive_float),
    default=10.0,
    help="Seconds allowed to each check.",
)
@click.option("--verbose", is_flag=True, help="Also show the log lines the checks produce.")
@CONN_STR_OPTION
def doctor(timeout: float, verbose: bool, conn_str: str | None) -> None:
    """Check models, database, MCP servers, auth and ports; exit 1 when something is broken."""
    import asyncio
    import logging

    from lang_agent.doctor import diagnose, report

    logging.basicConfig(level=logging.INFO if verbose else logging.CRITICAL)
    settings = settings_from(conn_str=conn_str)
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
@CONN_STR_OPTION
def cleanup(
    dry_run: bool,
    yes: bool,
    keep_checkpoints: int | None,
    log_retention_days: float | None,
    capture_retention_days: float | None,
    conn_str: str | None,
) -> None:
    """Prune old checkpoints, conversation log rows and captured calls (0 keeps a table's rows)."""
    from lang_agent.retention import cleanup_command

    settings = settings_from(
        conn_str=conn_str,
        keep_checkpoints=keep_checkpoints,
        log_retention_days=log_retention_days,
        capture_retention_days=capture_retention_days,
    )
    click.echo(run_command(cleanup_command(settings, dry_run=dry_run, confirm=_confirmer(yes))))


@main.command()
@click.argument(
    "thread_ids",
    nargs=-1,
    required=True,
    metavar="THREAD_ID...",
    # As the API keys a thread (trimmed, not blank): `forget ""` was taken.
    type=Checked(thread_key, name="thread id"),
)
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@CONN_STR_OPTION
def forget(thread_ids: tuple[str, ...], dry_run: bool, yes: bool, conn_str: str | None) -> None:
    """Erase threads everywhere: memory, conversation log and captured calls (exact ids)."""
    from lang_agent.forget import forget_command

    settings = settings_from(conn_str=conn_str)
    report = run_command(
        forget_command(settings, thread_ids, dry_run=dry_run, confirm=_confirmer(yes))
    )
    click.echo(report)


def _confirmer(yes: bool) -> Callable[[str], bool]:
    """Shows the plan, then asks, unless --yes."""

    def confirm(plan: str) -> bool:
        click.echo(plan)
        return confirmed("delete these rows?", yes=yes)

    return confirm


main.add_command(calls)
main.add_command(proxy)


if __name__ == "__main__":
    sys.exit(main())
