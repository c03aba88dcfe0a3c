"""The viewer's JSON API under /api/viewer: threads, a thread's turns, calls, dashboard, events."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from psycopg import AsyncConnection

from fastapi_server.sse import EventStream
from fastapi_server.viewer.live import event_frames
from lang_agent import conversation_queries as queries
from lang_agent.capture.export import case_file_name, case_json
from lang_agent.conversation_queries import Cursor
from lang_agent.errors import store_errors

router = APIRouter(prefix="/api/viewer", tags=["viewer"])

_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_QUERY_CHARS = 200
MAX_ID_CHARS = 512


async def connection(request: Request) -> AsyncIterator[AsyncConnection]:
    # Around the yield: a query that loses the database mid-way is translated too.
    with store_errors():
        async with request.app.state.db.connection() as conn:
            yield conn


Conn = Annotated[AsyncConnection, Depends(connection)]
ThreadId = Annotated[str, Query(alias="id", min_length=1, max_length=MAX_ID_CHARS)]
Limit = Annotated[int, Query(ge=1, le=queries.PAGE_MAX)]


def _cursor(text: str | None) -> Cursor | None:
    if not text:
        return None
    try:
        return Cursor.decode(text)
    except ValueError as exc:
        raise HTTPException(400, "invalid cursor") from exc


def _download(document: Any, *, filename: str) -> Response:
    body = json.dumps(jsonable_encoder(document), ensure_ascii=False, indent=2)
    disposition = f'attachment; filename="{_FILE_SAFE.sub("_", filename)[:150]}"'
    return Response(
        body + "\n",
        media_type="application/json",
        headers={"Content-Disposition": disposition},
    )


@router.api_route("/health", methods=["GET", "HEAD"])  # HEAD: what uptime checkers send
async def health(request: Request) -> JSONResponse:
    """`status` is `degraded` (503) while the database does not answer, as on the agent's."""
    health = {
        **await request.app.state.db.health(),
        "read_only": request.app.state.access.mode,
        "auth": bool(request.app.state.settings.viewer_auth_keys),
        "live": request.app.state.notifier.listening.is_set(),
    }
    return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)


@router.get("/threads")
async def threads(
    conn: Conn,
    q: Annotated[str, Query(max_length=MAX_QUERY_CHARS)] = "",
    cursor: str | None = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    """Threads newest first; `q` keeps those with a message or an id containing it
    (case-insensitive)."""
    return await queries.list_threads(conn, query=q.strip(), cursor=_cursor(cursor), limit=limit)


@router.get("/thread")
async def thread(
    request: Request, conn: Conn, thread_id: ThreadId, before: str | None = None, limit: Limit = 50
) -> dict[str, Any]:
    """The thread's latest turns with their messages; `before` (next_before) pages back."""
    view = await queries.thread_turns(
        conn, thread_id, before=_cursor(before), limit=limit, catalog=request.app.state.catalog
    )
    if not view["turns"] and before is None:
        raise HTTPException(404, "no such thread")
    return view


@router.get("/thread/export")
async def export_thread(request: Request, conn: Conn, thread_id: ThreadId) -> Response:
    """The whole thread as a JSON download."""
    document = await queries.export_thread(conn, thread_id, catalog=request.app.state.catalog)
    if document is None:
        raise HTTPException(404, "no such thread")
    document = {"exported_at": datetime.now(UTC), **document}
    return _download(document, filename=f"thread-{thread_id}.json")


@router.get("/turns/{turn_id}/calls")
async def turn_calls(conn: Conn, turn_id: uuid.UUID) -> dict[str, Any]:
    """The model calls captured for one turn (summaries; bodies via /calls/{call_id})."""
    return {"turn_id": turn_id, "calls": await queries.turn_calls(conn, str(turn_id))}


@router.get("/calls/{call_id}")
async def call(conn: Conn, call_id: uuid.UUID) -> dict[str, Any]:
    """One captured call with its (redacted) headers and bodies."""
    row = await queries.get_call(conn, str(call_id))
    if row is None:
        raise HTTPException(404, "no such call")
    return row


@router.get("/calls/{call_id}/export")
async def export_call(
    conn: Conn,
    call_id: uuid.UUID,
    category: Literal["badcase", "goodcase"] = "badcase",
) -> Response:
    """The call as a case file (the capture layer's export envelope), as a download."""
    row = await queries.get_call(conn, str(call_id))
    if row is None:
        raise HTTPException(404, "no such call")
    return _download(case_json(row, category=category), filename=case_file_name(row))


@router.get("/dashboard")
async def dashboard(
    request: Request,
    conn: Conn,
    hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24,
    bucket: Literal["minute", "hour", "day"] | None = None,
) -> dict[str, Any]:
    """Aggregates over the last `hours`: series per bucket, percentiles, usage by model, flags."""
    until = datetime.now(UTC)
    try:
        return await queries.dashboard(
            conn,
            since=until - timedelta(hours=hours),
            until=until,
            bucket=bucket,
            tz=request.app.state.settings.timezone,
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from exc


@router.get("/events")
async def events(request: Request) -> EventStream:
    """Server-sent events: `turn` with {"thread_id"} after each logged turn, or {"resync"}."""
    return EventStream(event_frames(request.app.state.notifier))
