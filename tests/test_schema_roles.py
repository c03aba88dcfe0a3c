"""A server role that may not change the schema: it runs on a schema its owner brought up to
date (`lang-agent schema --apply`), and says in one line what to do when the schema is not."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from fastapi_server.serve import STARTUP_FAILURE
from lang_agent.cli import main
from tests.conftest import TEST_KEY
from tests.support import failed_start

GRANTS = """
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}
"""


@dataclass
class Database:
    owner: str  # DSN of the role that owns the schema
    worker: str  # DSN of a role that may read and write rows, nothing more
    role: str

    def grant(self) -> None:
        with psycopg.connect(self.owner, autocommit=True) as conn:
            conn.execute(GRANTS.format(role=self.role))


@pytest.fixture
def database(pg_dsn) -> Iterator[Database]:
    """A new database without tables, and a role without DDL rights on it."""
    name = f"roles_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"CREATE ROLE {name} LOGIN")
    owner = make_conninfo(pg_dsn, dbname=name)
    with psycopg.connect(owner, autocommit=True) as conn:
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    yield Database(owner, make_conninfo(owner, user=name), name)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.execute(f"DROP ROLE {name}")


def lang_agent(*argv: str):
    return CliRunner().invoke(main, list(argv))


def test_the_owner_applies_the_schema_and_the_worker_then_runs_on_it(database):
    refused = lang_agent("schema", "--apply", "--conn-str", database.worker)
    assert refused.exit_code == 1
    assert "no schema" in refused.stderr and "`lang-agent schema --apply`" in refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr

    applied = lang_agent("schema", "--apply", "--conn-str", database.owner)
    assert applied.exit_code == 0 and "up to date" in applied.output
    database.grant()
    # A current schema is only read: nothing a role without DDL rights may not do.
    assert lang_agent("schema", "--apply", "--conn-str", database.worker).exit_code == 0
    cleanup = lang_agent("cleanup", "--dry-run", "--conn-str", database.worker)
    assert cleanup.exit_code == 0, cleanup.output


def test_a_server_on_a_role_without_ddl_rights_serves_turns(database, live_server):
    assert lang_agent("schema", "--apply", "--conn-str", database.owner).exit_code == 0
    database.grant()
    server = live_server(conn_str=database.worker)
    body = {"messages": [{"role": "user", "content": "我叫小明"}], "thread_id": "roles"}
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    with httpx2.Client(base_url=server.url, headers=headers, timeout=30) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        body["messages"] = [{"role": "user", "content": "我叫什么名字"}]
        answer = client.post("/v1/chat/completions", json=body).json()
    assert "小明" in answer["choices"][0]["message"]["content"]


def test_a_server_whose_role_may_not_create_the_schema_stops_in_one_line(database, tmp_path):
    env = {**os.environ, "CONN_STR": database.worker, "DB_START_WAIT_S": "1"}
    done = failed_start(env, cwd=tmp_path)
    assert done.returncode == STARTUP_FAILURE
    assert done.stderr.startswith("Error: the database has no schema, this code needs version")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
