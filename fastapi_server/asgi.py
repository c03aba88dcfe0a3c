"""An import-string app factory for uvicorn's own CLI and other ASGI servers:

    uvicorn fastapi_server.asgi:app_factory --factory --port 8588

Each process builds its Settings from the environment (and .env) and opens its own pool;
they share Postgres, where the per-thread lease keeps one turn per thread across processes.
For several workers on one port prefer `server_dashscope.py --workers N` (fastapi_server/
workers.py): uvicorn's `--workers` shares one socket and can leave a worker idle.
"""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_server.app import create_app
from fastapi_server.serve import configure_logging, warn_of_short_keys
from lang_agent.settings import Settings


def app_factory() -> FastAPI:
    settings = Settings()
    configure_logging(settings)
    warn_of_short_keys(settings)
    return create_app(settings)
