"""The `lang-agent` command: each subcommand parses flags into Settings and calls one function."""

from __future__ import annotations

import sys

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
    from fastapi_server.app import create_app
    from fastapi_server.serve import run

    settings = _settings(host=host, port=port, conn_str=conn_str)
    sys.exit(run(create_app(settings), settings=settings, host=settings.host, port=settings.port))


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


if __name__ == "__main__":
    sys.exit(main())
