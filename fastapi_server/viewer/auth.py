"""Viewer access: loopback-only without keys; with keys, a login cookie or a Bearer key.

The cookie never holds a key: it is `<expiry>.<HMAC-SHA256 keyed by the key over the expiry>`,
checked against every configured key in constant time, so removing a key ends its sessions.
A plain ASGI middleware guards every path except the login page and static files (fail closed),
and adds the security headers (a strict CSP among them) to every response. Wrong keys, at the
login page or as a Bearer key, are counted per client address (guess_limit.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fastapi_server.auth import key_matches
from fastapi_server.viewer.guess_limit import GuessLimit
from lang_agent import local_requests

COOKIE = "lang_agent_viewer"
SESSION_S = 7 * 24 * 3600
LOGIN_BODY_MAX = 4096
# Sent with every 401 (as HTTP asks); its realm is also how `lang-agent doctor` tells a viewer
# holding the port from another program that asks for a login.
CHALLENGE = 'Bearer realm="lang-agent viewer"'
PUBLIC_PATHS = frozenset({"/login", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/",)
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def session_mac(key: str, expires: int) -> str:
    return hmac.new(
        key.encode(), f"lang-agent-viewer|{expires}".encode(), hashlib.sha256
    ).hexdigest()


def session_cookie(key: str, *, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + SESSION_S
    return f"{expires}.{session_mac(key, expires)}"


def cookie_valid(value: str, keys: list[str], *, now: float | None = None) -> bool:
    """True for an unexpired cookie made with one of `keys`; every key is tried."""
    expires_text, _, mac = value.partition(".")
    if not expires_text.isdigit() or int(expires_text) < (now or time.time()):
        return False
    expires = int(expires_text)
    found = False
    for key in keys:
        found |= hmac.compare_digest(mac.encode(), session_mac(key, expires).encode())
    return found


def _cookie(headers: dict[bytes, bytes]) -> str:
    for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE:
            return value
    return ""


def _bearer(headers: dict[bytes, bytes]) -> str:
    scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


def too_many_guesses(retry_after: int) -> Response:
    denial = _error(
        429,
        "too_many_attempts",
        f"too many wrong keys from this address; try again in {retry_after} s",
    )
    denial.headers["retry-after"] = str(retry_after)
    return denial


class ViewerGuard:
    """ASGI middleware: who may see what, plus security headers on every response."""

    def __init__(self, app: ASGIApp, *, keys: list[str], guesses: GuessLimit) -> None:
        self.app = app
        self.keys = keys
        self.guesses = guesses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        denial = self.denial(scope)
        if denial is not None:
            await denial(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def denial(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        path: str = scope["path"]
        if not self.keys:
            why = local_requests.refusal(scope)
            if why is None:
                return None
            message = "the viewer has no keys, so it answers only programs on this host"
            return _error(403, "forbidden", f"{message}; this request came {why}")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if cookie_valid(_cookie(headers), self.keys):
            return None
        bearer = _bearer(headers)
        if bearer:
            # A key is a guess like a login's; a session cookie is not worth guessing.
            address = client_address(scope)
            retry_after = self.guesses.retry_after(address)
            if retry_after is not None:
                return too_many_guesses(retry_after)
            if key_matches(bearer, self.keys):
                self.guesses.succeeded(address)
                return None
            self.guesses.failed(address)
        if path.startswith("/api/"):
            denial = _error(401, "unauthorized", "log in or send Authorization: Bearer <key>")
            denial.headers["www-authenticate"] = CHALLENGE
            return denial
        return RedirectResponse("/login", status_code=303)


def _error(status: int, code: str, message: str) -> Response:
    body = json.dumps({"error": {"code": code, "message": message}})
    return Response(body, status_code=status, media_type="application/json")


def login_router(*, keys: list[str], guesses: GuessLimit, login_page: str) -> APIRouter:
    router = APIRouter(tags=["viewer-auth"])

    @router.get("/login", include_in_schema=False)
    async def login_form() -> Response:
        if not keys:
            return RedirectResponse("/", status_code=303)
        return FileResponse(login_page)

    @router.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        address = client_address(request.scope)
        # Refused unread, the right key too: else a guesser would just ignore the 429s.
        retry_after = guesses.retry_after(address)
        if retry_after is not None:
            return too_many_guesses(retry_after)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > LOGIN_BODY_MAX:  # a key is short: refuse to buffer more
                return RedirectResponse("/login?failed=1", status_code=303)
        key = (parse_qs(body.decode("utf-8", "replace")).get("key") or [""])[0].strip()
        matched = None
        for candidate in keys:  # every key is compared, so timing tells nothing
            if hmac.compare_digest(key.encode(), candidate.encode()):
                matched = candidate
        if not key or matched is None:
            guesses.failed(address)
            return RedirectResponse("/login?failed=1", status_code=303)
        guesses.succeeded(address)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            COOKIE,
            session_cookie(matched),
            max_age=SESSION_S,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout", include_in_schema=False)
    async def logout() -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict")
        return response

    return router
