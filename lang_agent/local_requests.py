"""Whether a request comes from this host's own programs: all a listener without keys answers
(the agent API without FAST_AUTH_KEYS, the viewer without keys, the capture proxy).

Binding loopback keeps other hosts out, not the browser on this host: any web page may POST to
http://127.0.0.1:PORT (a form, or a fetch with a text/plain body, needs no CORS preflight), and
a page whose own host name is rebound to 127.0.0.1 (DNS rebinding) reads the answers too. Such
a request names the page's origin in `Origin`, or a host name that is not loopback in `Host`;
a program (an SDK, curl, xiaozhi-server on this host) sends neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from lang_agent.settings import is_loopback


def _host_name(host_header: str) -> str:
    """The name in a Host header, without its port (`[::1]:8590` → `::1`)."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if host_header.count(":") == 1 else host_header


def refusal(scope: Mapping[str, Any]) -> str | None:
    """None for an ASGI request from a program on this host, else what gave it away, as the
    end of a sentence. A Unix socket (no client address) only this host can reach."""
    client = scope.get("client")
    if client and not is_loopback(client[0]):
        return "from another host"
    headers = dict(scope["headers"])
    host = headers.get(b"host", b"").decode("latin-1")
    if host and not is_loopback(_host_name(host)):
        return "for a host name that is not loopback (a DNS-rebinding web page)"
    origin = headers.get(b"origin")
    if origin is not None:
        try:
            page = urlsplit(origin.decode("latin-1")).hostname
        except ValueError:
            page = None
        if page is None or not is_loopback(page):
            return "from a web page of another site"
    return None
