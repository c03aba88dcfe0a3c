"""An httpx transport spread over several connection pools, for many concurrent model calls.

httpcore's pool re-scans all its connections on every request start and end, and for each
idle one counts them all again (`len([... for connection in self._connections])`), so its
cost grows with the square of the open connections: at 100 concurrent turns (two or three
calls each) that scan was a visible share of the server's CPU. K pools of n/K connections
cost n²/K. Requests go round-robin; a pool keeps its connections alive as before.
"""

from __future__ import annotations

import itertools

import httpx

DEFAULT_SHARDS = 8


class ShardedTransport(httpx.AsyncBaseTransport):
    """`shards` AsyncHTTPTransports sharing the limits between them."""

    def __init__(self, *, limits: httpx.Limits, shards: int = DEFAULT_SHARDS) -> None:
        def part(value: int | None) -> int | None:
            return None if value is None else max(1, -(-value // shards))

        per_pool = httpx.Limits(
            max_connections=part(limits.max_connections),
            max_keepalive_connections=part(limits.max_keepalive_connections),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._pools = [httpx.AsyncHTTPTransport(limits=per_pool) for _ in range(shards)]
        self._next = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
