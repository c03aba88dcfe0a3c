"""API-key check for the agent APIs: Bearer keys from FAST_AUTH_KEYS, compared in constant time;
without keys, only programs on this host are answered (lang_agent/local_requests.py)."""

from __future__ import annotations

import hmac

from fastapi import Request

from lang_agent import local_requests
from lang_agent.errors import AuthError, Forbidden


def key_matches(presented: str, keys: list[str]) -> bool:
    """True if `presented` equals one of `keys`; every key is compared, so timing tells nothing."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(presented.encode(), key.encode())
    return found


def presented_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""
    return value.strip()


async def require_api_key(request: Request) -> None:
    """FastAPI dependency. With no keys configured the server is loopback-only and open to
    this host's programs, not to the web pages its browser shows."""
    keys = request.app.state.settings.auth_keys
    if not keys:
        why = local_requests.refusal(request.scope)
        if why is not None:
            raise Forbidden(
                "FAST_AUTH_KEYS is empty, so the API answers only programs on this host; "
                f"this request came {why}"
            )
        return
    if not key_matches(presented_key(request), keys):
        raise AuthError("Invalid API-key provided.")
