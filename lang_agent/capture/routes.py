"""Which upstream a proxied call goes to: a route chosen by path prefix, else by model, else the
default upstream (`PROXY_UPSTREAM`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from lang_agent.capture.record import redact_url
from lang_agent.jsonwire import loads
from lang_agent.settings import HOSTED_PROVIDERS, ProxyRoute, Settings


@dataclass(frozen=True)
class Upstream:
    """Where a call goes, and the key it goes with (None: the client's own)."""

    name: str
    base_url: str
    key: str | None
    prefix: str | None = None
    models: tuple[str, ...] = ()

    def describe(self) -> str:
        """For the start-up log: never the key, only where it comes from."""
        chosen = []
        if self.prefix:
            chosen.append(f"path {self.prefix}/…")
        if self.models:
            chosen.append(f"model {' or '.join(self.models)}")
        when = " or ".join(chosen) or "anything else"
        key = "its own key" if self.key else "the client's key"
        return f"{when} -> {redact_url(self.base_url)} with {key}"


def upstream_of(route: ProxyRoute, settings: Settings) -> Upstream:
    """A configured route made concrete: a provider name takes that provider's URL and key."""
    base_url, key = route.upstream, route.key
    if base_url in HOSTED_PROVIDERS:
        base_url, provider_key = settings.provider_endpoint(base_url)
        key = key or provider_key
    secret = key.get_secret_value() if key else None
    return Upstream(route.label, base_url, secret, route.prefix, tuple(route.models))


def _model_of(body: bytes) -> str | None:
    try:
        model = loads(body).get("model")
    except (ValueError, AttributeError):  # not JSON, or not an object: the default's to judge
        return None
    return model if isinstance(model, str) else None


class Routes:
    """The default upstream and the routes, matched as the module docstring says: the longest
    matching prefix wins; model patterns are tried in the order they were configured."""

    def __init__(self, default: Upstream, routes: Sequence[Upstream] = ()) -> None:
        self.default = default
        self.routes = tuple(routes)
        self._by_prefix = sorted(
            (r for r in routes if r.prefix), key=lambda r: len(r.prefix or ""), reverse=True
        )
        self._by_model = [r for r in routes if r.models]

    @classmethod
    def from_settings(cls, settings: Settings) -> Routes:
        key = settings.proxy_key.get_secret_value() if settings.proxy_key else None
        default = Upstream("default", settings.proxy_upstream, key)
        return cls(default, [upstream_of(route, settings) for route in settings.proxy_routes])

    def pick(self, path: str, body: bytes) -> tuple[Upstream, str]:
        """The upstream for a call, and the path to forward (a route's prefix taken off)."""
        for route in self._by_prefix:
            prefix = route.prefix or ""
            if path == prefix or path.startswith(prefix + "/"):
                return route, path[len(prefix) :]
        if self._by_model and body:
            model = _model_of(body)
            if model is not None:
                for route in self._by_model:
                    if any(fnmatchcase(model, pattern) for pattern in route.models):
                        return route, path
        return self.default, path
