"""How many wrong viewer keys one client address may try: after VIEWER_LOGIN_FAILURES within
VIEWER_LOGIN_WINDOW_S it is refused (429) until the window it opened has passed, so a key
cannot be guessed as fast as the server answers."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

# Addresses remembered at most; past it the one whose last failure is oldest is forgotten, so
# a flood of addresses costs bounded memory (and at worst frees an address early).
MAX_ADDRESSES = 10_000


def source(address: str) -> str:
    """What counts as one client: an IPv4 address, or an IPv6 /64, since a single host on an
    IPv6 LAN may take any address of its /64 it likes."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class GuessLimit:
    def __init__(
        self,
        *,
        failures: int,
        window_s: float,
        max_addresses: int = MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failures = failures
        self.window_s = window_s
        self.max_addresses = max_addresses
        self.clock = clock
        # source → (start of its window, wrong keys in it); the least recently failed first.
        self._windows: dict[str, tuple[float, int]] = {}

    def retry_after(self, address: str) -> int | None:
        """Whole seconds until `address` may try a key again; None if it may now."""
        start, count = self._windows.get(source(address), (0.0, 0))
        left = start + self.window_s - self.clock()
        if count < self.failures or left <= 0:
            return None
        return math.ceil(left)

    def failed(self, address: str) -> None:
        now = self.clock()
        key = source(address)
        start, count = self._windows.pop(key, (now, 0))
        if start + self.window_s <= now:
            start, count = now, 0
        self._windows[key] = (start, count + 1)
        while len(self._windows) > self.max_addresses:
            del self._windows[next(iter(self._windows))]

    def succeeded(self, address: str) -> None:
        """A right key: the typos before it are forgiven."""
        self._windows.pop(source(address), None)

    def __len__(self) -> int:
        return len(self._windows)
