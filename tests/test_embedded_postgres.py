"""The embedded Postgres a server starts without CONN_STR: sized for all its workers' pools."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import psycopg

from lang_agent.db import fit_max_connections, resolve_dsn
from lang_agent.settings import Settings

MAX_CONNECTIONS_SQL = "SHOW max_connections"


def _max_connections(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(MAX_CONNECTIONS_SQL).fetchone()[0])


def test_the_embedded_postgres_has_connections_for_every_worker() -> None:
    # initdb leaves 100: three workers with pools of 40 would run out and refuse even a psql.
    root = Path(tempfile.mkdtemp(prefix="lang-agent-pg-"))  # see conftest: not pytest's tmp
    root.chmod(0o755)
    settings = Settings(_env_file=None, conn_str=None, data_dir=root, workers=3, db_pool_size=40)
    dsn, server = asyncio.run(resolve_dsn(settings))
    try:
        assert _max_connections(dsn) == 3 * (40 + 5) + 20
        # Raised once and kept: a smaller group later neither lowers it nor restarts the server.
        pid = server.get_pid()
        fit_max_connections(server, 45)
        assert server.get_pid() == pid
        assert _max_connections(dsn) == 155
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_a_count_postgres_cannot_start_with_leaves_it_as_it_was() -> None:
    # Left in the data dir, a setting Postgres refuses would stop every later start too.
    root = Path(tempfile.mkdtemp(prefix="lang-agent-pg-"))
    root.chmod(0o755)
    settings = Settings(_env_file=None, conn_str=None, data_dir=root)
    dsn, server = asyncio.run(resolve_dsn(settings))
    try:
        have = _max_connections(dsn)
        # With its own background processes, past Postgres's ceiling of server processes.
        fit_max_connections(server, 262_143)
        assert _max_connections(dsn) == have
        assert "max_connections" not in (root / "pg" / "postgresql.auto.conf").read_text()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)
