"""The shipped SQL script matches the migrations, and migrating twice is harmless."""

import asyncio

import psycopg

from lang_agent.db import CONNECTION_KWARGS, MIGRATIONS, migrate, schema_script
from lang_agent.settings import ROOT


def test_recreate_table_sql_is_generated_from_migrations():
    shipped = (ROOT / "scripts" / "recreate_table.sql").read_text(encoding="utf-8")
    assert shipped == schema_script(), "run: lang-agent schema > scripts/recreate_table.sql"


def test_migrations_are_idempotent_and_versioned(pg_dsn):
    async def twice() -> list[int]:
        async with await psycopg.AsyncConnection.connect(pg_dsn, **CONNECTION_KWARGS) as conn:
            return [await migrate(conn), await migrate(conn)]

    assert asyncio.run(twice()) == [len(MIGRATIONS) - 1] * 2
    with psycopg.connect(pg_dsn) as conn:
        versions = [
            row[0] for row in conn.execute("SELECT v FROM lang_agent_migrations ORDER BY v")
        ]
    assert versions == list(range(len(MIGRATIONS)))


def test_script_runs_on_a_database(pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(schema_script())
        assert conn.execute("SELECT count(*) FROM lang_agent_migrations").fetchone()[0] == len(
            MIGRATIONS
        )
