"""What `lang-agent calls …` does: one function per subcommand, returning the text to print."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

from psycopg import AsyncConnection

from lang_agent.capture.diff import diff_calls
from lang_agent.capture.diff_text import diff_json, render_diff
from lang_agent.capture.export import (
    calls_json,
    calls_table,
    case_json,
    curl_command,
    render_call,
    write_cases,
)
from lang_agent.capture.faults import Fault
from lang_agent.capture.linking import conversation_calls, linked_ids
from lang_agent.capture.query import (
    SESSION_TIME_ZONE_SQL,
    STATEMENT_TIMEOUT_SQL,
    CallFilter,
    count_calls,
    delete_calls,
    get_calls,
    label_call,
    list_calls,
)
from lang_agent.capture.replay import ReplayCase, ReplayServer
from lang_agent.db import CommandError, command_connection
from lang_agent.settings import Settings

EXPORT_LIMIT = 10000


class CallsError(CommandError):
    """A calls command cannot do what was asked; the message is for the user."""


@contextlib.asynccontextmanager
async def calls_connection(settings: Settings) -> AsyncIterator[AsyncConnection]:
    """A command's connection (one-line errors), with a statement timeout for the queries, in
    TIMEZONE: the speakers' time, which a user's "yesterday at 15:00" means. Times are shown
    in it, and a time without an offset, in a flag or a predicate, is read in it."""
    async with command_connection(settings) as conn:
        await conn.execute(STATEMENT_TIMEOUT_SQL)
        await conn.execute(SESSION_TIME_ZONE_SQL, (settings.timezone,))
        yield conn


def _needs_selector(filters: CallFilter) -> None:
    if filters.id is None and filters.chatcmpl is None and filters.request_id is None:
        raise CallsError("say which call: --id, --chatcmpl or --requestid")


async def list_command(
    settings: Settings,
    *,
    filters: CallFilter,
    limit: int = 20,
    as_json: bool = False,
    conversation_of: int | None = None,
) -> str:
    """The calls the filters select; with `conversation_of`, only those of that call's
    conversation: its thread, or for a call without one, the calls linked to it by their
    messages."""
    async with calls_connection(settings) as conn:
        if conversation_of is not None:
            row = await _call_by_id(conn, conversation_of)
            if row["thread_id"] is not None:
                filters = replace(filters, thread_id=row["thread_id"])
            else:
                _, members = linked_ids(row, await conversation_calls(conn, row))
                filters = replace(filters, ids=tuple(members))
        rows = await list_calls(conn, filters, limit=limit)
    return calls_json(rows) if as_json else calls_table(rows)


async def inspect_command(
    settings: Settings, *, filters: CallFilter, sections: Sequence[str] = ("metadata",)
) -> str:
    _needs_selector(filters)
    async with calls_connection(settings) as conn:
        rows = await get_calls(conn, filters, limit=1)
    if not rows:
        raise CallsError("no such call")
    try:
        return render_call(rows[0], sections=sections)
    except ValueError as exc:
        raise CallsError(str(exc)) from exc


async def export_command(
    settings: Settings,
    *,
    filters: CallFilter,
    directory: Path | None = None,
    category: str | None = None,
    tags: Sequence[str] = (),
    curl: bool = False,
    limit: int = EXPORT_LIMIT,
) -> str:
    """Case JSON (stdout for one call, files in `directory` for many) or curl commands."""
    if not filters.predicates and filters.thread_id is None:
        _needs_selector(filters)
    async with calls_connection(settings) as conn:
        rows = await get_calls(conn, filters, limit=limit)
        if not rows:
            raise CallsError("no call matches")
        if category is not None or tags:
            for row in rows:
                await label_call(conn, call_id=row["id"], category=category, tags=list(tags))
                row["category"], row["tags"] = category, list(tags)
    if curl:
        try:
            return "\n\n".join(curl_command(row) for row in rows)
        except ValueError as exc:  # a body stored cut cannot be sent again
            raise CallsError(str(exc)) from exc
    if directory is not None:
        return "\n".join(
            str(p) for p in write_cases(rows, directory=directory, category=category, tags=tags)
        )
    if len(rows) > 1:
        raise CallsError(f"{len(rows)} calls match: give --directory to export them as files")
    return json.dumps(case_json(rows[0]), ensure_ascii=False, indent=2, default=str)


async def cleanup_command(
    settings: Settings,
    *,
    before: str | None,
    everything: bool = False,
    confirm: Callable[[int], bool],
) -> str:
    """Delete calls older than `before` (or all); `confirm(n)` is asked first. Returns the
    text to print: what was deleted, or why nothing was."""
    if (before is None) == (not everything):
        raise CallsError("give --before DATE or --all")
    filters = CallFilter(before=before)
    async with calls_connection(settings) as conn:
        count = await count_calls(conn, filters)
        if count == 0:
            return "nothing to delete"
        if not confirm(count):
            return "nothing deleted"
        return f"deleted {await delete_calls(conn, filters)} calls"


async def replay_command(
    settings: Settings,
    *,
    call_id: int,
    port: int = 0,
    speed: float = 1.0,
    fault: Fault | None = None,
    fault_count: int | None = None,
    on_ready: Callable[[str], None],
) -> None:
    """Serve one recorded response until interrupted, with `fault` in the first `fault_count`
    answers (all if None); `on_ready` gets the base_url."""
    async with calls_connection(settings) as conn:
        row = await _call_by_id(conn, call_id)
    try:
        case = ReplayCase.from_row(row)
    except ValueError as exc:
        raise CallsError(str(exc)) from exc
    server = ReplayServer(case, speed=speed, fault=fault, fault_count=fault_count)
    on_ready(await server.start(port=port))
    try:
        await server.wait()
    finally:
        await server.stop()


async def diff_command(
    settings: Settings, *, call_ids: Sequence[int], as_json: bool = False
) -> str:
    """Compare two calls (the first id is "before"), or one call with the one before it in its
    thread."""
    if not 1 <= len(call_ids) <= 2:
        raise CallsError(
            "give one --id (compared with the call before it in its thread or conversation) or two"
        )
    async with calls_connection(settings) as conn:
        rows = [await _call_by_id(conn, call_id) for call_id in call_ids]
        if len(rows) == 1:
            later = rows[0]
            if later["thread_id"] is None:
                rows.insert(0, await _previous_in_conversation(conn, later))
            else:
                rows.insert(0, await _previous_in_thread(conn, later))
    facts = diff_calls(*rows)
    return diff_json(facts) if as_json else render_diff(facts)


async def _call_by_id(conn: AsyncConnection, call_id: int) -> dict:
    rows = await get_calls(conn, CallFilter(id=call_id), limit=1)
    if not rows:
        raise CallsError(f"no call with id {call_id}")
    return rows[0]


async def _previous_in_conversation(conn: AsyncConnection, row: dict) -> dict:
    """The call this thread-less one continues, found by its messages (capture/linking.py)."""
    if (row.get("flags") or {}).get("request_truncated"):
        raise CallsError(
            f"call {row['id']}'s request body was stored cut at CAPTURE_MAX_BODY_BYTES, so its "
            "messages cannot be linked: give a second --id to compare it with"
        )
    if row["conversation_key"] is None:
        raise CallsError(
            f"call {row['id']} has no thread and no user message to link it by: "
            "give a second --id to compare it with"
        )
    parent, _ = linked_ids(row, await conversation_calls(conn, row))
    if parent is None:
        raise CallsError(
            f"call {row['id']} continues no earlier call (no call's messages begin its own): "
            "give a second --id to compare it with"
        )
    return await _call_by_id(conn, parent)


async def _previous_in_thread(conn: AsyncConnection, row: dict) -> dict:
    """The thread's newest call created before this one by the same node: a turn's router,
    chat and filler calls have prompts of their own, so only the same node's share a prefix."""
    earlier = CallFilter(
        thread_id=row["thread_id"], node=row["node"], before=row["created_at"].isoformat()
    )
    rows = await get_calls(conn, earlier, limit=1)
    if not rows:
        by = f" by {row['node']}" if row["node"] else ""
        raise CallsError(
            f"call {row['id']} is the first call{by} in thread {row['thread_id']}: "
            "give a second --id to compare it with"
        )
    return rows[0]
