"""Who is calling a model right now: thread, turn and graph node, carried in a ContextVar."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class CallContext:
    thread_id: str | None = None
    turn_id: str | None = None
    node: str | None = None


current_call: ContextVar[CallContext | None] = ContextVar("current_call", default=None)


@contextlib.contextmanager
def calling(**fields: str | None) -> Iterator[CallContext]:
    """Set (or refine) the call context for the model calls made inside the block."""
    base = current_call.get() or CallContext()
    ctx = replace(base, **fields)
    token = current_call.set(ctx)
    try:
        yield ctx
    finally:
        current_call.reset(token)
