"""Read-only queries for the viewer: thread list and search, a thread's turns, calls, dashboard.

Every list is one keyset-paginated query on indexed columns (see db.MIGRATIONS), with its
per-row counts as correlated index lookups on the page's rows only, so a page costs the same with
ten or ten million threads. Dynamic filters are joined from the fixed fragments below.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection, sql

from lang_agent.llm.models_catalog import ModelCatalog

PAGE_MAX = 200
# Detector verdicts the dashboard charts (other flag keys are informational).
DETECTOR_FLAGS = ("truncated", "repeat", "context_overflow", "request_truncated",
                  "response_truncated")  # fmt: skip
BUCKETS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}
MAX_BUCKETS = 2000

# Each thread's latest turn, newest first: walk turns_thread_latest and keep a turn only when
# its thread has no later one (an index probe on turns_thread_started).
THREAD_PAGE_SQL = """
SELECT p.thread_id, p.last_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = p.thread_id) AS message_count,
       (SELECT left(m.content, 160) FROM messages m
        WHERE m.thread_id = p.thread_id AND m.role = 'user'
        ORDER BY m.turn_started_at DESC, m.seq DESC LIMIT 1) AS preview,
       NULL::text AS match
FROM (
    SELECT t.thread_id, t.started_at AS last_at
    FROM turns t
    WHERE {where}
      AND NOT EXISTS (
        SELECT 1 FROM turns n
        WHERE n.thread_id = t.thread_id
          AND (n.started_at > t.started_at
               OR (n.started_at = t.started_at AND n.turn_id > t.turn_id)))
    ORDER BY t.started_at DESC, t.thread_id DESC
    LIMIT %(limit)s
) p
ORDER BY p.last_at DESC, p.thread_id DESC
"""
THREAD_SEARCH_SQL = """
SELECT p.thread_id, p.last_at,
       (SELECT count(*) FROM messages m WHERE m.thread_id = p.thread_id) AS message_count,
       NULL::text AS preview,
       (SELECT left(m.content, 160) FROM messages m
        WHERE m.thread_id = p.thread_id AND m.content ILIKE %(pattern)s
        ORDER BY m.turn_started_at DESC, m.seq DESC LIMIT 1) AS match
FROM (
    SELECT h.thread_id, l.started_at AS last_at
    FROM (SELECT m.thread_id FROM messages m
          WHERE m.thread_id IS NOT NULL AND m.content ILIKE %(pattern)s
          UNION
          SELECT t.thread_id FROM turns t WHERE t.thread_id ILIKE %(pattern)s) h
    CROSS JOIN LATERAL (
        SELECT t.started_at FROM turns t WHERE t.thread_id = h.thread_id
        ORDER BY t.started_at DESC LIMIT 1) l
    WHERE {where}
    ORDER BY l.started_at DESC, h.thread_id DESC
    LIMIT %(limit)s
) p
ORDER BY p.last_at DESC, p.thread_id DESC
"""
PAGE_WHERE = "t.thread_id IS NOT NULL"
PAGE_KEYSET = "(t.started_at, t.thread_id) < (%(before_at)s, %(before_key)s)"
SEARCH_WHERE = "true"
SEARCH_KEYSET = "(l.started_at, h.thread_id) < (%(before_at)s, %(before_key)s)"

TURNS_SQL = """
SELECT t.turn_id, t.thread_id, t.front_end, t.profile, t.route, t.status, t.error_code, t.error,
       t.started_at, t.ttft_ms, t.latency_ms, t.prompt_tokens, t.completion_tokens, t.models,
       t.metadata, c.calls, c.cost, c.flags
FROM turns t
LEFT JOIN LATERAL (
    SELECT count(*) AS calls, sum(lc.cost) AS cost,
           coalesce((SELECT jsonb_agg(DISTINCT k) FROM llm_calls f, jsonb_object_keys(f.flags) k
                     WHERE f.turn_id = t.turn_id::text AND jsonb_typeof(f.flags) = 'object'),
                    '[]'::jsonb) AS flags
    FROM llm_calls lc WHERE lc.turn_id = t.turn_id::text
) c ON true
WHERE {where}
ORDER BY t.started_at DESC, t.turn_id DESC
{limit}
"""
TURNS_WHERE = "t.thread_id = %(thread_id)s"
TURNS_KEYSET = "(t.started_at, t.turn_id) < (%(before_at)s, %(before_key)s::uuid)"
TURNS_LIMIT = "LIMIT %(limit)s"
MESSAGES_SQL = """
SELECT id, turn_id, seq, role, content, tool_calls, tool_call_id, tool_name, is_filler,
       is_fallback, model, turn_started_at, created_at
FROM messages WHERE turn_id = ANY(%s)
ORDER BY turn_started_at, turn_id, seq
"""
# Call summaries: everything but headers and bodies (those load one call at a time).
TURN_CALLS_SQL = """
SELECT id, call_id, thread_id, turn_id, node, model, stream, status, status_code, error,
       created_at, finished_at, ttfb_ms, ttft_ms, latency_ms, prompt_tokens, completion_tokens,
       cached_tokens, total_tokens, cost, finish_reason, flags, category, tags
FROM llm_calls WHERE turn_id = %s ORDER BY created_at, id
"""
THREAD_CALLS_SQL = """
SELECT id, call_id, thread_id, turn_id, node, model, stream, status, status_code, error,
       created_at, finished_at, ttfb_ms, ttft_ms, latency_ms, prompt_tokens, completion_tokens,
       cached_tokens, total_tokens, cost, finish_reason, flags, category, tags
FROM llm_calls WHERE thread_id = %s ORDER BY created_at, id
"""
CALL_SQL = "SELECT * FROM llm_calls WHERE call_id = %s"

TURN_SERIES_SQL = """
SELECT date_trunc(%(bucket)s, started_at, %(tz)s) AS bucket, count(*) AS turns,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p95
FROM turns WHERE started_at >= %(since)s AND started_at < %(until)s
GROUP BY 1 ORDER BY 1
"""
TURN_SUMMARY_SQL = """
SELECT count(*) AS turns, count(*) FILTER (WHERE status = 'ok') AS ok,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS latency,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ttft_ms) AS ttft,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens
FROM turns WHERE started_at >= %(since)s AND started_at < %(until)s
"""
ROUTES_SQL = """
SELECT coalesce(route, '(none)') AS route, count(*) AS turns
FROM turns WHERE started_at >= %(since)s AND started_at < %(until)s
GROUP BY 1 ORDER BY 2 DESC
"""
CALL_SERIES_SQL = """
SELECT date_trunc(%(bucket)s, created_at, %(tz)s) AS bucket, count(*) AS calls,
       count(*) FILTER (WHERE status = 'ok') AS ok
FROM llm_calls WHERE created_at >= %(since)s AND created_at < %(until)s
GROUP BY 1 ORDER BY 1
"""
BY_MODEL_SQL = """
SELECT coalesce(model, '(unknown)') AS model, count(*) AS calls,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       coalesce(sum(prompt_tokens), 0) AS prompt_tokens,
       coalesce(sum(completion_tokens), 0) AS completion_tokens,
       coalesce(sum(cached_tokens), 0) AS cached_tokens, sum(cost) AS cost,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) AS latency_p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms) AS latency_p95,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY ttft_ms) AS ttft_p50
FROM llm_calls WHERE created_at >= %(since)s AND created_at < %(until)s
GROUP BY 1 ORDER BY calls DESC
"""
FLAG_SERIES_SQL = """
SELECT date_trunc(%(bucket)s, c.created_at, %(tz)s) AS bucket, k AS flag, count(*) AS calls
FROM llm_calls c, jsonb_object_keys(c.flags) k
WHERE c.created_at >= %(since)s AND c.created_at < %(until)s
  AND jsonb_typeof(c.flags) = 'object' AND k = ANY(%(flags)s)
GROUP BY 1, 2 ORDER BY 1, 2
"""


@dataclass(frozen=True)
class Cursor:
    """A keyset position: the sort time and the tie-breaking key of the last row seen."""

    at: datetime
    key: str

    def encode(self) -> str:
        raw = json.dumps([self.at.isoformat(), self.key], ensure_ascii=False).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """ValueError when `text` is not a cursor this module made."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            at, key = json.loads(raw)
            cursor = cls(datetime.fromisoformat(at), str(key))
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ValueError("invalid cursor") from exc
        if cursor.at.tzinfo is None:
            raise ValueError("invalid cursor")
        return cursor


def like_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, its own %, _ and \\ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(*fragments: str | None) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL(f) for f in fragments if f)


def threads_statement(
    *, query: str = "", cursor: Cursor | None = None, limit: int = 50
) -> tuple[sql.Composed, dict[str, Any]]:
    """The one query behind a thread-list page (fetching one row more, to know if more follow)."""
    params: dict[str, Any] = {"limit": limit + 1}
    if cursor is not None:
        params.update(before_at=cursor.at, before_key=cursor.key)
    if query:
        params["pattern"] = like_pattern(query)
        where = _where(SEARCH_WHERE, SEARCH_KEYSET if cursor else None)
        return sql.SQL(THREAD_SEARCH_SQL).format(where=where), params
    where = _where(PAGE_WHERE, PAGE_KEYSET if cursor else None)
    return sql.SQL(THREAD_PAGE_SQL).format(where=where), params


async def list_threads(
    conn: AsyncConnection, *, query: str = "", cursor: Cursor | None = None, limit: int = 50
) -> dict[str, Any]:
    """A page of threads, newest activity first; with `query`, those with a matching message
    or whose id contains it (a device's session id, a thread id the user gave support)."""
    limit = max(1, min(limit, PAGE_MAX))
    statement, params = threads_statement(query=query, cursor=cursor, limit=limit)
    rows = await (await conn.execute(statement, params)).fetchall()
    page = rows[:limit]
    more = len(rows) > limit
    next_cursor = Cursor(page[-1]["last_at"], page[-1]["thread_id"]).encode() if more else None
    return {"threads": page, "next_cursor": next_cursor}


async def thread_turns(
    conn: AsyncConnection,
    thread_id: str,
    *,
    before: Cursor | None = None,
    limit: int | None = 50,
    catalog: ModelCatalog | None = None,
) -> dict[str, Any]:
    """The thread's latest `limit` turns (older than `before`) in order, each with its messages,
    cost and detector flags; `next_before` pages further back. `limit=None`: every turn."""
    params: dict[str, Any] = {"thread_id": thread_id}
    if before is not None:
        params.update(before_at=before.at, before_key=before.key)
    if limit is not None:
        limit = max(1, min(limit, PAGE_MAX))
        params["limit"] = limit + 1
    statement = sql.SQL(TURNS_SQL).format(
        where=_where(TURNS_WHERE, TURNS_KEYSET if before else None),
        limit=sql.SQL(TURNS_LIMIT if limit is not None else ""),
    )
    turns = list(await (await conn.execute(statement, params)).fetchall())
    next_before = None
    if limit is not None and len(turns) > limit:
        del turns[limit:]
        next_before = Cursor(turns[-1]["started_at"], str(turns[-1]["turn_id"])).encode()
    turns.reverse()
    cursor = await conn.execute(MESSAGES_SQL, ([t["turn_id"] for t in turns],))
    messages = await cursor.fetchall()
    by_turn: dict[Any, list[dict[str, Any]]] = {t["turn_id"]: [] for t in turns}
    for message in messages:
        by_turn[message["turn_id"]].append(message)
    for turn in turns:
        turn["messages"] = with_tool_args(by_turn[turn["turn_id"]])
        if turn["cost"] is None and catalog is not None:
            turn["cost"] = estimated_cost(turn["models"], catalog=catalog)
    return {"thread_id": thread_id, "turns": turns, "next_before": next_before}


def with_tool_args(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each tool message the arguments its assistant message called it with."""
    calls: dict[str, Any] = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            if isinstance(call, dict) and call.get("id"):
                calls[call["id"]] = call.get("args")
        if message["role"] == "tool":
            message["tool_args"] = calls.get(message.get("tool_call_id") or "")
    return messages


def estimated_cost(models: list[dict[str, Any]], *, catalog: ModelCatalog) -> float | None:
    """A turn's cost from its per-model usage and the price table (when no call was captured)."""
    total = None
    for usage in models or []:
        cost = catalog.cost(
            usage.get("model"),
            usage.get("input_tokens"),
            usage.get("output_tokens"),
            usage.get("cached_tokens"),
        )
        if cost is not None:
            total = (total or 0.0) + cost
    return total


async def turn_calls(conn: AsyncConnection, turn_id: str) -> list[dict[str, Any]]:
    """The captured model calls of one turn (no bodies), in the order they were made."""
    return list(await (await conn.execute(TURN_CALLS_SQL, (turn_id,))).fetchall())


async def get_call(conn: AsyncConnection, call_id: str) -> dict[str, Any] | None:
    """One captured call, whole: headers (already redacted) and bodies."""
    return await (await conn.execute(CALL_SQL, (call_id,))).fetchone()


async def export_thread(
    conn: AsyncConnection, thread_id: str, *, catalog: ModelCatalog | None = None
) -> dict[str, Any] | None:
    """The whole thread as one JSON-able document: turns, messages and call summaries."""
    view = await thread_turns(conn, thread_id, limit=None, catalog=catalog)
    if not view["turns"]:
        return None
    calls = await (await conn.execute(THREAD_CALLS_SQL, (thread_id,))).fetchall()
    by_turn: dict[str, list[dict[str, Any]]] = {}
    for call in calls:
        by_turn.setdefault(call["turn_id"] or "", []).append(call)
    for turn in view["turns"]:
        turn["llm_calls"] = by_turn.get(str(turn["turn_id"]), [])
    return {"thread_id": thread_id, "turns": view["turns"]}


def pick_bucket(since: datetime, until: datetime) -> str:
    """The finest bucket that keeps a chart under ~200 points."""
    span = until - since
    for name in ("minute", "hour"):
        if span / BUCKETS[name] <= 200:
            return name
    return "day"


async def dashboard(
    conn: AsyncConnection,
    *,
    since: datetime,
    until: datetime,
    bucket: str | None = None,
    tz: str = "UTC",
) -> dict[str, Any]:
    """Turns and calls over time, success rates, latency/TTFT percentiles, usage by model and
    detector flags, for [since, until) in `bucket`s (minute, hour or day; in time zone `tz`)."""
    bucket = bucket or pick_bucket(since, until)
    if bucket not in BUCKETS:
        raise ValueError(f"bucket must be one of {', '.join(BUCKETS)}")
    if (until - since) / BUCKETS[bucket] > MAX_BUCKETS:
        raise ValueError(f"more than {MAX_BUCKETS} {bucket} buckets: choose a larger bucket")
    params = {
        "since": since,
        "until": until,
        "bucket": bucket,
        "tz": tz,
        "flags": list(DETECTOR_FLAGS),
    }

    async def rows(statement: str) -> list[dict[str, Any]]:
        return list(await (await conn.execute(statement, params)).fetchall())

    summary = (await rows(TURN_SUMMARY_SQL))[0]
    by_model = await rows(BY_MODEL_SQL)
    calls = sum(m["calls"] for m in by_model)
    calls_ok = sum(m["ok"] for m in by_model)
    costs = [m["cost"] for m in by_model if m["cost"] is not None]
    return {
        "since": since,
        "until": until,
        "bucket": bucket,
        "summary": {
            **summary,
            "success_rate": summary["ok"] / summary["turns"] if summary["turns"] else None,
            "calls": calls,
            "calls_ok": calls_ok,
            "call_success_rate": calls_ok / calls if calls else None,
            "cost": sum(costs) if costs else None,
        },
        "turns": await rows(TURN_SERIES_SQL),
        "calls": await rows(CALL_SERIES_SQL),
        "by_model": by_model,
        "routes": await rows(ROUTES_SQL),
        "flags": await rows(FLAG_SERIES_SQL),
    }
