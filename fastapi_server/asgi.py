"""An import-string app factory for uvicorn's own CLI, e.g. several worker processes:

    uvicorn fastapi_server.asgi:app_factory --factory --workers 2 --port 8588

Each worker builds its Settings from the environment (and .env) and opens its own pool;
they share Postgres, where the per-thread lease keeps one turn per thread across workers.
"""

from __future__ import annotations

from fastapi import FastAPI

from fastapi_server.app import create_app
from fastapi_server.serve import configure_logging
from lang_agent.settings import Settings


def app_factory() -> FastAPI:
    settings = Settings()
    configure_logging(settings)
    return create_app(settings)
