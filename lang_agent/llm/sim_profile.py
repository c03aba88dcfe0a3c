"""The simulator's latency profile: each role's time to first byte and token rate."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

ROLES = ("router", "chat", "tool", "chatty")


@dataclass(frozen=True)
class Latency:
    """One role's timing."""

    ttft_ms: float = 0.0  # delay before the first byte of the answer
    tokens_per_s: float = 0.0  # 0 = all chunks at once


@dataclass(frozen=True)
class SimProfile:
    """Timing per role.

    ``fast`` (the default): no delays at all. ``original`` mimics the reference system's models:
    router 250 ms to the first byte + 80 tokens/s (its 3-fragment route call ≈ 0.3 s in all);
    chat 350 ms + 60 tokens/s (a 40-token answer ≈ 1 s); tool like chat; chatty filler 200 ms
    + 60 tokens/s (a short clause ≈ 0.3 s).
    """

    router: Latency = Latency()
    chat: Latency = Latency()
    tool: Latency = Latency()
    chatty: Latency = Latency()

    @classmethod
    def named(cls, name: str) -> SimProfile:
        if name == "fast":
            return cls()
        if name == "original":
            return cls(
                router=Latency(250, 80),
                chat=Latency(350, 60),
                tool=Latency(350, 60),
                chatty=Latency(200, 60),
            )
        raise ValueError(f"unknown simulator profile {name!r} (fast or original)")

    def updated(self, changes: dict[str, Any]) -> SimProfile:
        """A copy with `{"profile": name}` and/or `{role: {"ttft_ms": …, "tokens_per_s": …}}`."""
        base = SimProfile.named(str(changes["profile"])) if "profile" in changes else self
        roles: dict[str, Latency] = {}
        for role, values in changes.items():
            if role == "profile":
                continue
            if role not in ROLES or not isinstance(values, dict):
                raise ValueError(f"unknown profile setting {role!r}")
            for key, number in values.items():
                if key not in ("ttft_ms", "tokens_per_s") or not _non_negative(number):
                    raise ValueError(f"{role}.{key} must be ttft_ms or tokens_per_s, a number >= 0")
            roles[role] = replace(getattr(base, role), **values)
        return replace(base, **roles)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return asdict(self)


def _non_negative(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0
