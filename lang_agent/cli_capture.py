"""`lang-agent calls …` and `lang-agent proxy …`: the capture layer's commands."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from lang_agent import loop
from lang_agent.capture.faults import FAULT_FORMS, Fault
from lang_agent.cli_common import (
    CONN_STR_OPTION,
    PORT,
    Checked,
    confirmed,
    positive_float,
    positive_int,
    run_command,
    settings_from,
    start_failures,
)


@click.group()
def calls() -> None:
    """Search, inspect, compare, export, clean up and replay captured model calls (llm_calls)."""


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


_TIME_HELP = (
    "30m, 2h, 7d or 1w ago (units s m h d w), or an ISO date/time such as 2026-01-31, "
    "'2026-01-31 15:00' (in TIMEZONE, as the times shown) or 2026-01-31T15:00+08:00."
)


def _check_time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """--since/--before are checked as the flags are parsed: a typo is a usage error, not SQL."""
    from lang_agent.capture.query import parse_time

    if value is not None:
        try:
            parse_time(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


@calls.command("list")
@_PREDICATE
@click.option("--thread", default=None, help="Only this thread's calls.")
@click.option(
    "--turn",
    default=None,
    metavar="ID",
    help="Only this turn's calls: the turn id the viewer shows above a turn's model calls.",
)
@click.option(
    "--conversation",
    type=int,
    default=None,
    metavar="ID",
    help="Only the calls of call ID's conversation: its thread, or for a call without one "
    "(through the proxy), the calls linked to it by their messages.",
)
@click.option("--since", default=None, callback=_check_time, help=f"Only calls since {_TIME_HELP}")
@click.option(
    "--before", default=None, callback=_check_time, help="Only calls before this time (as --since)."
)
@click.option(
    "--failed",
    is_flag=True,
    help="Only failed calls: refused, unreachable, broken off, unfinished or looping; not "
    "those their caller left (a discarded speculative chat, a stopped filler, a hang-up).",
)
@click.option("-n", "--limit", type=int, default=20, help="Most calls shown; 0 = all.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@CONN_STR_OPTION
def calls_list(
    predicates: tuple[str, ...],
    thread: str | None,
    turn: str | None,
    conversation: int | None,
    since: str | None,
    before: str | None,
    failed: bool,
    limit: int,
    as_json: bool,
    conn_str: str | None,
) -> None:
    """List calls, newest first: ids, status, node, model, latency, TTFT, tokens, cost."""
    from lang_agent.capture.commands import list_command
    from lang_agent.capture.query import CallFilter

    turn = turn.strip() if turn is not None else None
    filters = CallFilter(
        predicates=predicates,
        thread_id=thread,
        turn_id=turn,
        since=since,
        before=before,
        failed=failed,
    )
    settings = settings_from(conn_str=conn_str)
    command = list_command(
        settings, filters=filters, limit=limit, as_json=as_json, conversation_of=conversation
    )
    click.echo(run_command(command))


@calls.command("inspect")
@_selectors
@click.option(
    "--print",
    "sections",
    default="metadata",
    help="Comma-separated: metadata, request_header, request_body, client_request_body, "
    "response_header, response_body, response_sse, events, flags, error.",
)
@CONN_STR_OPTION
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
    settings = settings_from(conn_str=conn_str)
    click.echo(run_command(inspect_command(settings, filters=filters, sections=wanted)))


@calls.command("export")
@_selectors
@_PREDICATE
@click.option("--directory", type=click.Path(path_type=Path), default=None, help="Write files.")
@click.option("--good", "category", flag_value="goodcase", default=None, help="A good case.")
@click.option("--bad", "category", flag_value="badcase", help="A bad case.")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable); stored with the call.")
@click.option("--curl", is_flag=True, help="Print a replayable curl command ($API_KEY).")
@CONN_STR_OPTION
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
    settings = settings_from(conn_str=conn_str)
    click.echo(
        run_command(
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
@click.option(
    "--before", default=None, callback=_check_time, help=f"Delete calls before {_TIME_HELP}"
)
@click.option("--all", "everything", is_flag=True, help="Delete every call.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@CONN_STR_OPTION
def calls_cleanup(before: str | None, everything: bool, yes: bool, conn_str: str | None) -> None:
    """Delete old calls in batches, after a confirmation."""
    from lang_agent.capture.commands import cleanup_command

    def confirm(count: int) -> bool:
        return confirmed(f"delete {count} calls?", yes=yes)

    settings = settings_from(conn_str=conn_str)
    click.echo(
        run_command(
            cleanup_command(settings, before=before, everything=everything, confirm=confirm)
        )
    )


@calls.command("replay")
@click.option("--id", "call_id", type=int, required=True, help="The call to serve again.")
@click.option("--port", type=PORT, default=0, help="Port on 127.0.0.1; 0 picks a free one.")
@click.option(
    "--speed", type=Checked(positive_float), default=1.0, help="Timing scale: 2 = twice as fast."
)
@click.option(
    "--fault",
    type=Checked(Fault.parse, name="fault"),
    default=None,
    help=f"Answer with a fault: {FAULT_FORMS}.",
)
@click.option(
    "--fault-count",
    type=Checked(positive_int),
    default=None,
    help="Only the first N answers get the fault [all].",
)
@CONN_STR_OPTION
def calls_replay(
    call_id: int,
    port: int,
    speed: float,
    fault: Fault | None,
    fault_count: int | None,
    conn_str: str | None,
) -> None:
    """Serve a recorded response again, with its original chunk timing, until Ctrl-C."""
    from lang_agent.capture.commands import replay_command

    if fault_count is not None and fault is None:
        raise click.UsageError("--fault-count needs --fault")
    with_fault = ""
    if fault is not None:
        answers = "every answer" if fault_count is None else f"the first {fault_count} answers"
        with_fault = f" with fault {fault} in {answers}"

    def ready(url: str) -> None:
        click.echo(f'replaying call {call_id}{with_fault}: change base_url to "{url}"')

    settings = settings_from(conn_str=conn_str)
    command = replay_command(
        settings,
        call_id=call_id,
        port=port,
        speed=speed,
        fault=fault,
        fault_count=fault_count,
        on_ready=ready,
    )
    with start_failures("the replay"), contextlib.suppress(KeyboardInterrupt):
        run_command(command)


@calls.command("diff")
@click.option(
    "--id",
    "call_ids",
    type=int,
    multiple=True,
    required=True,
    help="The call; twice to compare two (the first is before). Once: it is compared with the "
    "call before it in its thread, or, without a thread, with the call it continues.",
)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
@CONN_STR_OPTION
def calls_diff(call_ids: tuple[int, ...], as_json: bool, conn_str: str | None) -> None:
    """Compare two calls' parameters, tools and messages, and explain their prompt-cache hit."""
    from lang_agent.capture.commands import diff_command

    settings = settings_from(conn_str=conn_str)
    click.echo(run_command(diff_command(settings, call_ids=call_ids, as_json=as_json)))


def _route(text: str) -> dict[str, object]:
    """`/qwen=ali` (by path prefix) or `qwen-*,qwq-*=ali` (by model) as a route's fields."""
    chosen, _, upstream = text.partition("=")
    if not chosen or not upstream:
        raise click.BadParameter(f"{text!r} is not PREFIX=UPSTREAM or MODELS=UPSTREAM")
    if chosen.startswith("/"):
        return {"prefix": chosen, "upstream": upstream}
    return {"models": chosen.split(","), "upstream": upstream}


@click.group()
def proxy() -> None:
    """The standalone capture proxy for any OpenAI-compatible client."""


@proxy.command("start")
@click.option("--port", type=PORT, default=None, help="Port on 127.0.0.1 [default 9988].")
@click.option("--upstream", default=None, help="Default upstream base URL [Moonshot /v1].")
@click.option("--key", default=None, help="Send this key upstream instead of the client's.")
@click.option(
    "--route",
    "routes",
    multiple=True,
    callback=lambda _ctx, _param, value: [_route(text) for text in value] or None,
    metavar="PREFIX=UPSTREAM|MODELS=UPSTREAM",
    help="Another upstream (a URL, or ali/moonshot/openai) for paths under /PREFIX or for "
    "models matching MODELS (comma-separated globs); repeatable, replaces the file's routes.",
)
@click.option("--force-stream", is_flag=True, default=None, help="Stream non-stream calls.")
@click.option(
    "--add-usage/--no-add-usage",
    default=None,
    help="Ask for a stream's usage when its client did not [on].",
)
@click.option("--detect-repeat", is_flag=True, default=None, help="Cut looping streams.")
@click.option("--repeat-threshold", type=float, default=None, help="Repeat share [0.5].")
@click.option("--repeat-min-length", type=int, default=None, help="Judged characters [200].")
@click.option(
    "--config", type=click.Path(path_type=Path, exists=True), default=None, help="TOML/JSON."
)
@CONN_STR_OPTION
def proxy_start(
    port: int | None,
    upstream: str | None,
    key: str | None,
    routes: list[dict[str, object]] | None,
    force_stream: bool | None,
    add_usage: bool | None,
    detect_repeat: bool | None,
    repeat_threshold: float | None,
    repeat_min_length: int | None,
    config: Path | None,
    conn_str: str | None,
) -> None:
    """Forward every call to the upstream and capture it; flags override the config file."""

    from fastapi_server.serve import configure_logging
    from lang_agent.capture.proxy import load_config_file, run_proxy

    try:
        values: dict[str, object] = load_config_file(config) if config else {}
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    flags = {
        "proxy_port": port,
        "proxy_upstream": upstream,
        "proxy_key": key,
        "proxy_routes": routes,
        "force_stream": force_stream,
        "proxy_add_usage": add_usage,
        "detect_repeat": detect_repeat,
        "repeat_threshold": repeat_threshold,
        "repeat_min_length": repeat_min_length,
        "conn_str": conn_str,
    }
    values.update({k: v for k, v in flags.items() if v is not None})
    settings = settings_from(**values)
    configure_logging(settings)

    def ready(url: str) -> None:
        click.echo(f'change base_url to "{url}"')

    with start_failures("the proxy"), contextlib.suppress(KeyboardInterrupt):
        loop.run_until_stopped(run_proxy(settings, on_ready=ready))
