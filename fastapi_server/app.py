"""The app factory: one FastAPI app, one lifespan, errors mapped to each protocol at the rim."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fastapi_server import dashscope_api, metrics_api, openai_api
from fastapi_server.hangup import gone_while_sending
from lang_agent.errors import InvalidRequest, LangAgentError
from lang_agent.service import Service, open_service
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)


# Path prefix → the protocol's error builder; OpenAI's shape is the fallback.
ERROR_SHAPES: list[tuple[str, Callable[..., Response]]] = [
    ("/api/", dashscope_api.dashscope_error),
]


def error_response(
    request: Request, code: str, message: str, *, param: str | None = None
) -> Response:
    """The error in the shape of the protocol the path belongs to."""
    for prefix, build in ERROR_SHAPES:
        if request.url.path.startswith(prefix):
            return build(code, message)
    return openai_api.openai_error(code, message, param=param)


def _install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, gone_while_sending)

    @app.exception_handler(LangAgentError)
    async def _ours(request: Request, exc: LangAgentError) -> Response:
        return error_response(request, exc.code, exc.message, param=getattr(exc, "param", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request"}
        return error_response(request, InvalidRequest.code, str(first.get("msg")))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "invalid_request"}.get(exc.status_code, "invalid_request")
        response = error_response(request, code, str(exc.detail))
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        request_id = uuid.uuid4().hex
        logger.exception("unhandled error, request %s", request_id, exc_info=exc)
        response = error_response(
            request, "internal_error", f"internal error (request {request_id})"
        )
        # Starlette raises the error again once this is sent, and the server then drops the
        # connection: a client told so opens a new one instead of failing on a dead one.
        response.headers["connection"] = "close"
        return response


# How long before the grace period ends the turns still running are ended, so their last
# frames reach the client before uvicorn cancels what is left.
TURN_END_MARGIN_S = 1.0


async def _end_turns(service: Service, grace_s: float) -> None:
    """The server stops: the turns still running a moment before its grace period ends are
    ended with an answer that says so (`Agent.stop_turns`)."""
    await asyncio.sleep(max(0.0, grace_s - TURN_END_MARGIN_S))
    await service.agent.stop_turns()


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_service(settings) as service:
            app.state.service = service
            app.state.recorder = service.recorder
            app.state.on_stop = functools.partial(_end_turns, service, settings.shutdown_grace_s)
            yield

    app = FastAPI(title="lang-agent", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    _install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(dashscope_api.router)
    app.include_router(metrics_api.router)

    # HEAD too: load balancers and uptime checkers ask with it.
    @app.api_route("/health", methods=["GET", "HEAD"], tags=["ops"])
    async def health(request: Request) -> JSONResponse:
        health = await request.app.state.service.health()
        return JSONResponse(health, status_code=200 if health["status"] == "ok" else 503)

    return app
