"""Queries over llm_calls: a filter (shortcuts plus predicates), list, get, count, delete, label."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql

from lang_agent.capture.predicate import PredicateError, compile_predicate
from lang_agent.capture.stream import CALLER_LEFT

# PredicateError is re-exported: callers catch it from here.
__all__ = [
    "CallFilter",
    "PredicateError",
    "compile_predicate",
    "count_calls",
    "delete_calls",
    "get_calls",
    "label_call",
    "list_calls",
    "parse_time",
]

LIST_CALLS_SQL = """
SELECT id, status, status_code, chatcmpl_id, upstream_request_id, model, latency_ms, ttft_ms,
       prompt_tokens, completion_tokens, cached_tokens, cost, created_at, thread_id, turn_id,
       node, finish_reason, flags
FROM llm_calls WHERE {where} ORDER BY id DESC LIMIT %s
"""
SELECT_CALLS_SQL = "SELECT * FROM llm_calls WHERE {where} ORDER BY id DESC LIMIT %s"
COUNT_CALLS_SQL = "SELECT count(*) AS n FROM llm_calls WHERE {where}"
DELETE_BATCH_SQL = """
DELETE FROM llm_calls WHERE id IN (
    SELECT id FROM llm_calls WHERE {where} ORDER BY id LIMIT %s
)
"""
UPDATE_LABELS_SQL = "UPDATE llm_calls SET category = %s, tags = %s WHERE id = %s"
# A call that failed: the upstream refused it or was not reached, broke its body off or ended
# it unfinished, or the model looped until the repeat detector cut it. Not one its caller left
# (`incomplete`, error `cancelled` or "the client closed …"): a speculative chat the engine
# discarded on the tool route, a filler stopped when the tool answered, a turn ended by a
# hang-up, a barge-in or its timeout, a proxy client that went; whatever failed is the turn's.
FAILED_SQL = """
status NOT IN ('ok', 'pending') AND NOT (status = 'incomplete' AND coalesce(error, '') = ANY(%s))
"""
STATEMENT_TIMEOUT_SQL = "SET statement_timeout = 30000"
# SET takes no parameters; set_config does. For the session: times shown and times read.
SESSION_TIME_ZONE_SQL = "SELECT set_config('TimeZone', %s, false)"
_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TIME_FORMS = "30m, 2h, 7d or 1w ago, or an ISO date/time (2026-01-31, 2026-01-31T08:00+08:00)"


@dataclass(frozen=True)
class CallFilter:
    """Which calls: predicates (ANDed, each parenthesised) and the common shortcuts."""

    predicates: tuple[str, ...] = ()
    id: int | None = None
    chatcmpl: str | None = None
    request_id: str | None = None
    thread_id: str | None = None
    turn_id: str | None = None
    node: str | None = None
    since: str | None = None
    before: str | None = None
    ids: tuple[int, ...] | None = None  # any of these calls
    failed: bool = False  # only calls that failed (FAILED_SQL)

    def where(self) -> tuple[sql.Composable, list[Any]]:
        parts: list[sql.Composable] = []
        params: list[Any] = []
        for column, value in (
            ("id", self.id),
            ("chatcmpl_id", self.chatcmpl),
            ("upstream_request_id", self.request_id),
            ("thread_id", self.thread_id),
            ("turn_id", self.turn_id),
            ("node", self.node),
        ):
            if value is not None:
                parts.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if self.ids is not None:
            parts.append(sql.SQL("id = ANY(%s)"))
            params.append(list(self.ids))
        for operator, value in ((">=", self.since), ("<", self.before)):
            if value is not None:
                parts.append(sql.SQL("created_at {} %s").format(sql.SQL(operator)))
                params.append(parse_time(value))
        if self.failed:
            parts.append(sql.SQL(FAILED_SQL))
            params.append(sorted(CALLER_LEFT))
        for text in self.predicates:
            condition, values = compile_predicate(text)
            parts.append(sql.SQL("({})").format(condition))
            params.extend(values)
        if not parts:
            return sql.SQL("true"), params
        return sql.SQL(" AND ").join(parts), params


def parse_time(value: str) -> datetime:
    """`30m`/`2h`/`7d`/`1w` ago, or an ISO date/time. One without an offset stays naive: it
    goes to Postgres as a `timestamp`, read in the session's time zone as a time a predicate
    compares with (`created_at >= '2026-01-31 15:00'`) is, so the two never disagree.

    Checked here, not left to Postgres: its parser takes words such as `today` and fails on
    typos with a raw DataError only once the query runs. ValueError names the accepted forms."""
    try:
        if match := _RELATIVE.match(value):
            seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
            return datetime.now(UTC) - timedelta(seconds=seconds)
        return datetime.fromisoformat(value.strip())
    except (ValueError, OverflowError):  # OverflowError: so long ago it is before year 1
        raise ValueError(f"{value!r} is not a time: give {_TIME_FORMS}") from None


async def list_calls(conn: AsyncConnection, filters: CallFilter, *, limit: int = 20) -> list[dict]:
    """Summary rows, newest first; `limit` 0 means all."""
    return await _select(conn, LIST_CALLS_SQL, filters, limit=limit)


async def get_calls(conn: AsyncConnection, filters: CallFilter, *, limit: int = 1) -> list[dict]:
    """Whole rows, newest first."""
    return await _select(conn, SELECT_CALLS_SQL, filters, limit=limit)


async def count_calls(conn: AsyncConnection, filters: CallFilter) -> int:
    where, params = filters.where()
    cursor = await conn.execute(sql.SQL(COUNT_CALLS_SQL).format(where=where), params)
    row = await cursor.fetchone()
    return int(row["n"]) if row else 0


async def delete_calls(conn: AsyncConnection, filters: CallFilter, *, batch: int = 5000) -> int:
    """Delete in batches (short locks, a healthy table); returns how many went."""
    where, params = filters.where()
    statement = sql.SQL(DELETE_BATCH_SQL).format(where=where)
    total = 0
    while True:
        cursor = await conn.execute(statement, [*params, batch])
        total += cursor.rowcount
        if cursor.rowcount < batch:
            return total


async def label_call(
    conn: AsyncConnection, *, call_id: int, category: str | None, tags: list[str]
) -> None:
    """Store an export's category and tags with the call."""
    await conn.execute(UPDATE_LABELS_SQL, (category, tags, call_id))


async def _select(
    conn: AsyncConnection, template: str, filters: CallFilter, *, limit: int
) -> list[dict]:
    where, params = filters.where()
    query = sql.SQL(template).format(where=where)
    cursor = await conn.execute(query, [*params, limit if limit > 0 else None])
    return list(await cursor.fetchall())
