"""The embedded Postgres a server starts without CONN_STR: sized for all its workers' pools."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from lang_agent.db import fit_max_connections, resolve_dsn
from lang_agent.settings import Settings

MAX_CONNECTIONS_SQL = "SHOW max_connections"


def _max_connections(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(MAX_CONNECTIONS_SQL).fetchone()[0])


@contextlib.contextmanager
def _embedded(**settings: Any) -> Iterator[tuple[Path, str, Any]]:
    """A throwaway embedded Postgres, started the way the server starts it: (data dir, DSN,
    server)."""
    root = Path(tempfile.mkdtemp(prefix="lang-agent-pg-"))  # see conftest: not pytest's tmp
    root.chmod(0o755)
    config = Settings(_env_file=None, conn_str=None, data_dir=root, **settings)
    dsn, server = asyncio.run(resolve_dsn(config))
    try:
        yield root, dsn, server
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_the_embedded_postgres_has_connections_for_every_worker() -> None:
    # initdb leaves 100: three workers with pools of 40 would run out and refuse even a psql.
    with _embedded(workers=3, db_pool_size=40) as (_, dsn, server):
        assert _max_connections(dsn) == 3 * (40 + 5) + 20
        # Raised once and kept: a smaller group later neither lowers it nor restarts the server.
        pid = server.get_pid()
        fit_max_connections(server, 45)
        assert server.get_pid() == pid
        assert _max_connections(dsn) == 155


def test_a_count_postgres_cannot_start_with_leaves_it_as_it_was() -> None:
    # Left in the data dir, a setting Postgres refuses would stop every later start too.
    with _embedded() as (root, dsn, server):
        have = _max_connections(dsn)
        # With its own background processes, past Postgres's ceiling of server processes.
        fit_max_connections(server, 262_143)
        assert _max_connections(dsn) == have
        assert "max_connections" not in (root / "pg" / "postgresql.auto.conf").read_text()


def test_a_command_run_where_there_is_no_database_says_so_and_makes_none(
    tmp_path, monkeypatch
) -> None:
    # DATA_DIR is relative to the current directory: `cleanup --dry-run` run elsewhere made a
    # new, empty database and reported zeros; `forget` said "nothing to forget".
    from click.testing import CliRunner

    from lang_agent.cli import main

    monkeypatch.chdir(tmp_path)
    for name in ("CONN_STR", "DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    for argv in (["cleanup", "--dry-run"], ["forget", "t1", "--yes"], ["calls", "list"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1
        assert result.stderr.startswith(f"Error: no database in {tmp_path / '.lang-agent'} ")
    assert list(tmp_path.iterdir()) == []
