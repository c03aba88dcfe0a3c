"""The conversation viewer app: pages, static files, the JSON API, its own read-only pool."""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fastapi_server.hangup import gone_while_sending
from fastapi_server.viewer import api
from fastapi_server.viewer.auth import ViewerGuard, login_router
from fastapi_server.viewer.guess_limit import GuessLimit
from fastapi_server.viewer.live import Notifier
from fastapi_server.viewer.readonly import read_only_db, resolve_read_only
from lang_agent.errors import StoreUnavailable
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
CODES = {400: "invalid_request", 401: "unauthorized", 404: "not_found", 405: "invalid_request"}


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False)
    return Response(body, status_code=status, media_type="application/json")


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, gone_while_sending)

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException) -> Response:
        code = CODES.get(exc.status_code, "error")
        return _error(exc.status_code, code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return _error(400, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StoreUnavailable)
    async def _store(_request: Request, exc: StoreUnavailable) -> Response:
        # Postgres down or restarting (`store_errors`): retryable, as on the agent's API.
        return _error(503, exc.code, exc.message)

    @app.exception_handler(psycopg.DataError)
    async def _data(_request: Request, _exc: psycopg.DataError) -> Response:
        # A parameter Postgres cannot take (a NUL in a search or an id): the client's error.
        return _error(400, "invalid_request", "a parameter holds a value the database refuses")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        logger.exception("viewer: unhandled error, request %s", request_id, exc_info=exc)
        response = _error(500, "internal_error", f"internal error (request {request_id})")
        # As on the agent's API: the server drops the connection after this answer, and a
        # client told so opens a new one instead of failing on a dead one.
        response.headers["connection"] = "close"
        return response


def create_viewer_app(settings: Settings) -> FastAPI:
    """The viewer for `settings`' database; guarded by VIEWER_KEYS (or FAST_AUTH_KEYS)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        access = await resolve_read_only(settings)
        app.state.access = access
        app.state.catalog = ModelCatalog.load(settings.models_file)
        async with contextlib.AsyncExitStack() as stack:
            db = read_only_db(access, timeout_s=settings.db_timeout_s)
            await db.open(apply_schema=False)
            stack.push_async_callback(db.close)
            app.state.db = db
            app.state.notifier = await stack.enter_async_context(Notifier(access.dsn))
            # Browser streams never end on their own: the server would wait its whole grace
            # period for them (the browser reconnects to whichever server is up).
            app.state.on_stop = app.state.notifier.close_streams
            yield

    keys = settings.viewer_auth_keys
    guesses = GuessLimit(
        failures=settings.viewer_login_failures, window_s=settings.viewer_login_window_s
    )
    app = FastAPI(
        title="lang-agent viewer",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # An id that ends in an encoded "/" is a 404, not a redirect to some other record.
        redirect_slashes=False,
    )
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(
        login_router(keys=keys, guesses=guesses, login_page=str(STATIC / "login.html"))
    )
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html")

    app.add_middleware(ViewerGuard, keys=keys, guesses=guesses)
    return app
