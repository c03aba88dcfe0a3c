"""Which model upstreams are reached through an HTTP proxy: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY
and NO_PROXY, read as curl and httpx read them (the lower-case name first).

Only `http://` proxies are supported: an https upstream goes through a CONNECT tunnel, an http
one as an absolute-form request. A proxy of another kind (socks5, say, often set in ALL_PROXY
beside an http one in HTTPS_PROXY) is skipped with a warning rather than failing every call.
Loopback hosts are always reached directly (as Go's http client does): a proxy cannot reach
this machine's 127.0.0.1, which is where the built-in simulator and local models live.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)


class Proxy(NamedTuple):
    """An HTTP proxy's address, and the Proxy-Authorization its URL's user:password makes."""

    host: str
    port: int
    authorization: bytes | None

    def __str__(self) -> str:  # never the credentials: this goes into logs and errors
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_proxy(url: str) -> Proxy | None:
    """`http://[user:password@]host[:port]` (a bare `host:port` counts as http); None, with a
    warning, for any other kind or a URL that does not parse."""
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port or 80
    except ValueError:
        logger.warning("ignoring a proxy URL that does not parse")
        return None
    if parts.scheme.lower() != "http":
        logger.warning("ignoring proxy %s://%s: only http:// proxies are supported",
                       parts.scheme, parts.hostname)  # fmt: skip
        return None
    if not parts.hostname:
        logger.warning("ignoring a proxy URL without a host")
        return None
    authorization = None
    if parts.username is not None:
        secret = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = b"Basic " + base64.b64encode(secret)
    return Proxy(parts.hostname, port, authorization)


def is_loopback(host: str) -> bool:
    """A host on this machine: no proxy is ever right for it."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ProxyRoutes:
    """The proxy (or None: direct) for an upstream's scheme and host."""

    def __init__(
        self, *, http: Proxy | None = None, https: Proxy | None = None, no_proxy: str = ""
    ) -> None:
        self.http = http
        self.https = https
        names = (name.strip().lstrip(".").strip("[]").lower() for name in no_proxy.split(","))
        self._bypass = [name for name in names if name]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> ProxyRoutes | None:
        """The routes the environment asks for; None when it names no usable proxy."""

        def setting(name: str) -> str:
            return (environ.get(name.lower()) or environ.get(name.upper()) or "").strip()

        def proxy(name: str) -> Proxy | None:
            url = setting(name) or setting("all_proxy")
            return parse_proxy(url) if url else None

        http, https = proxy("http_proxy"), proxy("https_proxy")
        if http is None and https is None:
            return None
        routes = cls(http=http, https=https, no_proxy=setting("no_proxy"))
        logger.info("model calls go through proxies: http %s, https %s", http, https)
        return routes

    def proxy_for(self, scheme: str, host: str) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or is_loopback(host):
            return None
        host = host.lower().strip("[]")
        for name in self._bypass:
            if name == "*" or host == name or host.endswith("." + name):
                return None
        return proxy
