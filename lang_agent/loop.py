"""Running a coroutine on the fastest event loop installed: uvloop when present, else asyncio;
and a long-running process's start-up objects put out of the garbage collector's reach."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (a dependency except on Windows), as uvicorn's own
    `--loop auto` picks it. It costs about a tenth less CPU per turn (docs/performance.md)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop from `loop_factory`."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def run_until_stopped(main: Coroutine[Any, Any, T]) -> T:
    """`run(main)`, where SIGTERM ends the process through Python's own exit, as Ctrl-C does:
    the loop's tasks are cancelled, so their cleanup runs, and then the atexit hook that stops
    the embedded Postgres. The default handler would end the process at once, leaving that
    Postgres running. uvicorn takes SIGTERM while it serves and hands it back here once its
    own shutdown is done."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        return run(main)
    finally:
        signal.signal(signal.SIGTERM, previous)


def freeze_start_up() -> None:
    """What start-up built (modules, schemas, pools: 100,000 objects and more) lives as long as
    the process. Out of the collector's reach, a full collection pauses everything the loop
    serves for a few ms instead of 100 ms or more (docs/performance.md)."""
    gc.collect()
    gc.freeze()
