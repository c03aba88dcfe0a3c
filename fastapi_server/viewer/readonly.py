"""The viewer's read-only database access: a SELECT-only role, or a read-only session fallback.

With VIEWER_CONN_STR the viewer trusts that DSN. Otherwise it uses the main DSN once, at start-up,
to apply the schema and to ensure the role `lang_agent_viewer` (SELECT grants only, read-only by
default, LOGIN without a password: only a trust-auth server such as the embedded one lets it in),
then connects as that role. When that cannot work (no CREATEROLE, password auth) it falls back
to the main DSN with every session read-only, and says so in the log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from lang_agent.db import CONNECTION_KWARGS, mask_dsn, migrate, resolve_dsn
from lang_agent.pool import Database
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

VIEWER_ROLE = "lang_agent_viewer"
POOL_SIZE = 5
CONNECT_TIMEOUT_S = 5
# Every viewer session: read-only by default, and no query may run away with the server.
SESSION_OPTIONS = "-c default_transaction_read_only=on -c statement_timeout=15000"

ROLE_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtext('lang_agent_viewer_role'))"
CREATE_ROLE_SQL = """DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'lang_agent_viewer') THEN
        CREATE ROLE lang_agent_viewer NOLOGIN;
    END IF;
END
$$"""
SCOPE_SQL = "SELECT current_database() AS db, current_schema() AS schema"
# Grants first, LOGIN last: the role can only log in once it is SELECT-only.
GRANT_SQL = (
    "ALTER ROLE lang_agent_viewer SET default_transaction_read_only = on",
    "GRANT CONNECT ON DATABASE {db} TO lang_agent_viewer",
    "GRANT USAGE ON SCHEMA {schema} TO lang_agent_viewer",
    "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO lang_agent_viewer",
    "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO lang_agent_viewer",
    "ALTER ROLE lang_agent_viewer LOGIN",
)
CHECK_SQL = "SELECT current_user AS role, current_setting('transaction_read_only') AS ro"
CAN_WRITE_SQL = "SELECT has_table_privilege('messages', 'INSERT') AS can_write"


@dataclass(frozen=True)
class ReadOnlyAccess:
    """The DSN the viewer reads with, and how its read-only guarantee is made."""

    dsn: str
    mode: str  # "viewer_conn_str" | "role" | "read_only_session"

    def __repr__(self) -> str:
        return f"ReadOnlyAccess({mask_dsn(self.dsn)!r}, mode={self.mode!r})"


def with_session_options(dsn: str, *, user: str | None = None) -> str:
    """`dsn` with the viewer's session options added (and, given `user`, that user, no password)."""
    params: dict[str, Any] = conninfo_to_dict(dsn)
    params["options"] = f"{params.get('options', '')} {SESSION_OPTIONS}".strip()
    if user is not None:
        params["user"] = user
        params.pop("password", None)
    return make_conninfo("", **params)


async def ensure_viewer_role(main_dsn: str) -> None:
    """Create or refresh `lang_agent_viewer` with SELECT-only grants; psycopg.Error on refusal."""
    async with await psycopg.AsyncConnection.connect(
        main_dsn, connect_timeout=CONNECT_TIMEOUT_S, **CONNECTION_KWARGS
    ) as conn:
        await migrate(conn)
        async with conn.transaction():
            await conn.execute(ROLE_LOCK_SQL)
            await conn.execute(CREATE_ROLE_SQL)
            scope = await (await conn.execute(SCOPE_SQL)).fetchone()
            names = {"db": sql.Identifier(scope["db"]), "schema": sql.Identifier(scope["schema"])}
            for statement in GRANT_SQL:
                await conn.execute(sql.SQL(statement).format(**names))


async def _check(dsn: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(
        dsn, connect_timeout=CONNECT_TIMEOUT_S, **CONNECTION_KWARGS
    ) as conn:
        row = await (await conn.execute(CHECK_SQL)).fetchone()
        try:
            can_write = (await (await conn.execute(CAN_WRITE_SQL)).fetchone())["can_write"]
        except psycopg.errors.UndefinedTable:
            can_write = False
        return {**row, "can_write": can_write}


async def resolve_read_only(settings: Settings) -> ReadOnlyAccess:
    """Decide how the viewer connects; see the module docstring."""
    if settings.viewer_conn_str is not None:
        dsn = with_session_options(settings.viewer_conn_str.get_secret_value())
        state = await _check(dsn)
        if state["can_write"]:
            logger.warning(
                "VIEWER_CONN_STR role %s may INSERT into messages: give the viewer a SELECT-only "
                "role (its sessions are read-only, but that is the weaker guarantee)",
                state["role"],
            )
        return ReadOnlyAccess(dsn, "viewer_conn_str")
    main_dsn, _server = await resolve_dsn(settings)
    try:
        await ensure_viewer_role(main_dsn)
        dsn = with_session_options(main_dsn, user=VIEWER_ROLE)
        await _check(dsn)
    except psycopg.Error as exc:
        logger.warning(
            "viewer: no read-only role on %s (%s); reading with the main role in read-only "
            "sessions. Set VIEWER_CONN_STR to a SELECT-only role for a hard guarantee.",
            mask_dsn(main_dsn),
            type(exc).__name__,
        )
        return ReadOnlyAccess(with_session_options(main_dsn), "read_only_session")
    logger.info("viewer reads %s as role %s", mask_dsn(main_dsn), VIEWER_ROLE)
    return ReadOnlyAccess(dsn, "role")


def read_only_db(access: ReadOnlyAccess, *, timeout_s: float) -> Database:
    """A small pool over `access` (not yet open: `await db.open(apply_schema=False)`); a request
    that gets no connection within `timeout_s` is a 503."""
    return Database(access.dsn, max_size=POOL_SIZE, timeout=timeout_s)
