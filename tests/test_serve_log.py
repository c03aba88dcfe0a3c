"""What a real `lang-agent serve` says as it starts: which of its two apps each of uvicorn's
lines is about, and client keys too short to be safe, named by their place and never shown."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lang_agent.short_keys import short_keys_line
from tests.conftest import TEST_KEY
from tests.test_faults_concurrency import free_port, worker_env
from tests.test_faults_shutdown import serve_until

SHORT_KEY = "k3y"
SHORT_VIEWER_KEY = "viewer-k3y"


@pytest.fixture(scope="module")
def serve_log(pg_dsn, simulator, tmp_path_factory) -> dict[str, str]:
    """The log of `lang-agent serve` from its start until it has shut down after SIGTERM, and
    the URL of each app."""
    tmp_path: Path = tmp_path_factory.mktemp("serve")
    port, viewer_port = free_port(), free_port()
    env = worker_env(pg_dsn, simulator.base_url, tmp_path, PORT=str(port),
                     VIEWER_PORT=str(viewer_port))  # fmt: skip
    env.update(FAST_AUTH_KEYS=f"{TEST_KEY},{SHORT_KEY}", VIEWER_KEYS=SHORT_VIEWER_KEY)
    text = serve_until(signal.SIGTERM, env, tmp_path, port, viewer_port)
    urls = {"agent API": f"http://127.0.0.1:{port}", "viewer": f"http://127.0.0.1:{viewer_port}"}
    return {"text": text, **urls}


def test_each_of_uvicorn_s_lines_names_its_app(serve_log):
    text = serve_log["text"]
    for app in ("agent API", "viewer"):
        for said in (
            "Started server process",
            "Waiting for application startup.",
            "Application startup complete.",
            f"Uvicorn running on {serve_log[app]} (Press CTRL+C to quit)",
            "Application shutdown complete.",
        ):
            assert text.count(f"uvicorn.error: {app}: {said}") == 1, (app, said, text)
    unnamed = [
        line
        for line in text.splitlines()
        if "uvicorn.error" in line
        and not line.split("uvicorn.error: ")[1].startswith(("agent API: ", "viewer: "))
    ]
    assert not unnamed, text


def test_short_keys_are_named_by_place_never_shown(serve_log):
    serve_log = serve_log["text"]
    lines = [line for line in serve_log.splitlines() if "shorter than 16 characters" in line]
    assert len(lines) == 2, serve_log
    assert "WARNING" in lines[0] and "FAST_AUTH_KEYS: key 2 of 2 is shorter" in lines[0]
    assert "VIEWER_KEYS: key 1 of 1 is shorter" in lines[1]
    assert SHORT_KEY not in serve_log and SHORT_VIEWER_KEY not in serve_log


def test_the_short_keys_line():
    assert short_keys_line("FAST_AUTH_KEYS", [TEST_KEY, "x" * 16]) is None
    line = short_keys_line("VIEWER_KEYS", ["a", "x" * 16, "x" * 15])
    assert line is not None and line.startswith("VIEWER_KEYS: keys 1, 3 of 3 are shorter than 16")
    assert "secrets.token_urlsafe" in line
