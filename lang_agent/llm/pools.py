"""An httpx2 transport spread over several connection pools, for many concurrent model calls.

A connection pool walks all its connections and queued requests on every request start and
end, so each request costs time in proportion to the open connections. K pools of n/K
connections cut that by K: at 200 concurrent streams 8 pools saved about a fifth of the client
CPU (docs/performance.md). Requests go round-robin; a pool keeps its connections alive as
before. The agent's model calls and the capture proxy both go through one. Its connections
read through `network.LeanBackend`."""

from __future__ import annotations

import itertools

import httpx2
from httpcore2 import AsyncNetworkBackend

from lang_agent.llm.network import LeanBackend

DEFAULT_SHARDS = 8
# Every upstream connection kept alive: a turn holds two or three calls at once, so at
# concurrency 100 a keep-alive cap of 200 closed and reopened connections all the time.
UPSTREAM_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000)


class ShardedTransport(httpx2.AsyncBaseTransport):
    """`shards` AsyncHTTPTransports sharing the limits between them."""

    def __init__(
        self,
        *,
        limits: httpx2.Limits = UPSTREAM_LIMITS,
        shards: int = DEFAULT_SHARDS,
        network_backend: AsyncNetworkBackend | None = None,
    ) -> None:
        def part(value: int | None) -> int | None:
            return None if value is None else max(1, -(-value // shards))

        per_pool = httpx2.Limits(
            max_connections=part(limits.max_connections),
            max_keepalive_connections=part(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        # One TLS context for all: each loads the CA bundle, about 25 ms.
        tls = httpx2.create_ssl_context()
        self._pools = [
            httpx2.AsyncHTTPTransport(verify=tls, limits=per_pool) for _ in range(shards)
        ]
        backend = network_backend or LeanBackend()
        for pool in self._pools:
            # httpx2 takes no network backend; its httpcore2 pool does, and reads it per connect.
            pool._pool._network_backend = backend
        self._next = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
