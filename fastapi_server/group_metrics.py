"""/metrics across a worker group: each worker publishes its figures to a shared directory,
and the worker a scrape reaches answers with the sum of them all.

With WORKERS=N the kernel hands each connection to one worker (SO_REUSEPORT), so a worker
alone would show only its share, and a counter jumping between two workers' values looks to
Prometheus like a reset. Every worker writes its rendering to a file every PUBLISH_S and
before it answers a scrape, and the answer sums the latest file of every worker, series by
series. Counters therefore only grow from one scrape to the next; the other workers' figures
are up to PUBLISH_S old. Every family here is a count, a histogram or a level whose total is
the sum over workers (calls, turns or rows in flight, queue depth), so a sum is the right
merge for all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from lang_agent.capture.metrics import format_number

logger = logging.getLogger(__name__)

PUBLISH_S = 1.0


class GroupMetrics:
    """One worker's side: `publishing()` keeps its file fresh, `collect()` answers a scrape."""

    def __init__(self, directory: Path, index: int, render: Callable[[], str]) -> None:
        self.directory = directory
        self.render = render
        self._path = directory / f"worker-{index}.prom"
        self._scratch = directory / f".worker-{index}.tmp"

    def publish(self) -> str:
        """Write this worker's figures for the others; returns them."""
        text = self.render()
        self._scratch.write_text(text, "utf-8")
        os.replace(self._scratch, self._path)  # a reader sees the old file or the new one
        return text

    async def publishing(self) -> None:
        """Publish every PUBLISH_S until cancelled."""
        while True:
            try:
                self.publish()
            except OSError as exc:  # the group is stopping and its directory is gone
                logger.debug("worker metrics not published: %s", exc)
            await asyncio.sleep(PUBLISH_S)

    def collect(self) -> str:
        texts = [self.publish()]
        for path in sorted(self.directory.glob("worker-*.prom")):
            if path != self._path:
                with contextlib.suppress(OSError):
                    texts.append(path.read_text("utf-8"))
        return merge(texts)


def merge(texts: Iterable[str]) -> str:
    """Prometheus texts summed series by series, each family's lines kept together."""
    heads: dict[str, list[str]] = {}
    families: dict[str, dict[str, float]] = {}
    for text in texts:
        family = ""
        for line in text.splitlines():
            if line.startswith("#"):  # "# HELP name …" or "# TYPE name kind"
                family = line.split(" ", 3)[2]
                head = heads.setdefault(family, [])
                if line not in head:
                    head.append(line)
                families.setdefault(family, {})
            elif line:
                series, _, value = line.rpartition(" ")
                values = families.setdefault(family, {})
                values[series] = values.get(series, 0.0) + float(value)
    out: list[str] = []
    for family, values in families.items():
        out += heads.get(family, [])
        out += [f"{series} {format_number(value)}" for series, value in values.items()]
    return "\n".join(out) + "\n"
