"""Write-behind capture: records go through a bounded queue to a batch writer with its own pool.

A record is inserted when its call starts (status `pending`) and finalised when it ends, so
in-flight and killed calls are visible (a call shorter than the writer's linger of 50 ms only
gets its final row). Nothing here ever blocks or fails a model call: `begin`
and `finish` only `put_nowait`. Through a database outage the writer keeps its batch and retries
it with a backoff for up to `OUTAGE_WAIT_S`, while the queue holds what arrives meanwhile. The
queue is bounded in rows and in the bytes of the bodies they carry; a full queue, or an outage
longer than that, drops rows. `written` and `dropped` count calls, by their final row: a call
whose final row was written is recorded whole, whatever became of its pending row, and one
whose final row was dropped is lost (its row, if any, stays `pending`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from lang_agent.capture.detect import RepeatConfig
from lang_agent.capture.metrics import Metrics
from lang_agent.capture.record import COLUMNS, CallRecord
from lang_agent.db import (
    CONNECTION_KWARGS,
    OUTAGE_WAIT_S,
    gather_batch,
    insert_rows_sql,
    mask_dsn,
    migrate,
)
from lang_agent.jsonwire import jsonb_dumps
from lang_agent.pool import CheckoutCheck, Pool
from lang_agent.settings import Settings

logger = logging.getLogger(__name__)

# Pending and final rows alike, in one statement (in queue order, so that ids follow the order
# of the calls). Only a pending row is ever overwritten, and a final row without the request
# keeps the pending row's.
UPSERT_CALLS_SQL = insert_rows_sql(
    "llm_calls",
    COLUMNS,
    then="""ON CONFLICT (call_id) DO UPDATE SET
    model = EXCLUDED.model, stream = EXCLUDED.stream, status = EXCLUDED.status,
    status_code = EXCLUDED.status_code, error = EXCLUDED.error,
    request_header = COALESCE(EXCLUDED.request_header, llm_calls.request_header),
    request_body = COALESCE(EXCLUDED.request_body, llm_calls.request_body),
    client_request_body = COALESCE(EXCLUDED.client_request_body, llm_calls.client_request_body),
    conversation_key = COALESCE(EXCLUDED.conversation_key, llm_calls.conversation_key),
    response_header = EXCLUDED.response_header, response_body = EXCLUDED.response_body,
    response_sse = EXCLUDED.response_sse, event_offsets_ms = EXCLUDED.event_offsets_ms,
    upstream_request_id = EXCLUDED.upstream_request_id, chatcmpl_id = EXCLUDED.chatcmpl_id,
    server_timing_ms = EXCLUDED.server_timing_ms, finished_at = EXCLUDED.finished_at,
    ttfb_ms = EXCLUDED.ttfb_ms, ttft_ms = EXCLUDED.ttft_ms,
    ttft_reasoning_ms = EXCLUDED.ttft_reasoning_ms, latency_ms = EXCLUDED.latency_ms,
    tpot_ms = EXCLUDED.tpot_ms, prompt_tokens = EXCLUDED.prompt_tokens,
    completion_tokens = EXCLUDED.completion_tokens, cached_tokens = EXCLUDED.cached_tokens,
    reasoning_tokens = EXCLUDED.reasoning_tokens, total_tokens = EXCLUDED.total_tokens,
    cost = EXCLUDED.cost, finish_reason = EXCLUDED.finish_reason, flags = EXCLUDED.flags
WHERE llm_calls.status = 'pending'""",
)

# What a call's pending row holds already, left out of its final row: a long thread's request
# is tens of kilobytes, written and parsed (jsonb) a second time for nothing.
REQUEST_COLUMNS = ("request_header", "request_body", "client_request_body", "conversation_key")
# Calls whose pending row is written and final row is not: past this many (final rows dropped),
# the set starts again, and their final rows carry the request as before.
BEGUN_MAX = 50_000
CONNECT_TIMEOUT_S = 3.0
BACKOFF_MAX_S = 5.0
FAILURE_LOG_EVERY_S = 30.0


@dataclass
class _Item:
    kind: Literal["begin", "finish"]
    call_id: uuid.UUID
    row: dict[str, Any]
    size: int  # the record's body bytes, counted against `queue_bytes`


def _calls(items: Iterable[_Item]) -> int:
    """The calls these items account for: one per final row (see the module docstring)."""
    return sum(item.kind == "finish" for item in items)


class Recorder:
    """Takes records without waiting; a background task writes them to `llm_calls` in batches."""

    def __init__(
        self,
        *,
        dsn: str | None,
        enabled: bool = True,
        queue_size: int = 10000,
        queue_bytes: int = 32 * 2**20,
        batch_size: int = 200,
        redact: Iterable[str] = (),
        max_body_bytes: int = 1_000_000,
        metrics: Metrics | None = None,
        apply_schema: bool = True,
        force_stream: bool = False,
        repeat: RepeatConfig | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self.dsn = dsn
        self.enabled = enabled and dsn is not None
        self.batch_size = batch_size
        self.redact = tuple(name.strip().lower() for name in redact if name.strip())
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics or Metrics()
        self.apply_schema = apply_schema
        self.connect_timeout_s = connect_timeout_s
        # Defaults for the transports that share this recorder.
        self.force_stream = force_stream
        self.repeat = repeat or RepeatConfig()
        self.written = 0
        self.dropped = 0
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=max(1, queue_size))
        # Rows carry whole request bodies, and a long thread's is tens of kilobytes: through an
        # outage a queue bounded by rows alone held half a gigabyte (docs/reliability.md).
        self.queue_bytes = queue_bytes
        self.queued_bytes = 0
        self._pool: AsyncConnectionPool | None = None
        self._task: asyncio.Task[None] | None = None
        self._schema_ready = not apply_schema
        self._stopped = False
        self._last_failure_log = float("-inf")  # the first outage is always logged
        self._begun: set[uuid.UUID] = set()  # pending row written, final row not yet
        self.metrics.bind_capture(self)

    def __repr__(self) -> str:
        return f"Recorder({mask_dsn(self.dsn or '')!r}, enabled={self.enabled})"

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, settings: Settings, *, dsn: str | None) -> AsyncIterator[Recorder]:
        """A started recorder configured from settings; drained and stopped on exit."""
        recorder = cls(
            dsn=dsn,
            enabled=settings.capture,
            queue_size=settings.capture_queue_size,
            queue_bytes=round(settings.capture_queue_mb * 2**20),
            batch_size=settings.capture_batch_size,
            redact=settings.redact_headers.split(","),
            max_body_bytes=settings.capture_max_body_bytes,
            force_stream=settings.force_stream,
            repeat=RepeatConfig(
                threshold=settings.repeat_threshold,
                min_length=settings.repeat_min_length,
                cut=settings.detect_repeat,
            ),
        )
        await recorder.start()
        try:
            yield recorder
        finally:
            await recorder.close()

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        await self._open_pool()
        self._task = asyncio.create_task(self._run(), name="capture-writer")
        logger.info("capture writer started on %s", mask_dsn(self.dsn or ""))

    async def _open_pool(self) -> None:
        """A pool that starts connecting in the background (never waits for the DB); through
        an outage it keeps trying at a steady pace (`pool.Pool`)."""
        checkout = CheckoutCheck()
        self._pool = Pool(
            self.dsn or "",
            min_size=1,
            max_size=2,
            open=False,
            kwargs={**CONNECTION_KWARGS, "connect_timeout": max(1, round(self.connect_timeout_s))},
            check=checkout.check,
            reset=checkout.returned,
            timeout=self.connect_timeout_s,
            max_idle=300,
            max_lifetime=1800,
            name="capture-writer",
        )
        await self._pool.open(wait=False)

    async def close(self, *, drain_timeout_s: float = 5.0) -> None:
        """Write what is queued (within the timeout), then stop; the rest counts as dropped."""
        if self._task is None:
            return
        self._stopped = True
        with contextlib.suppress(TimeoutError):
            await self.flush(timeout_s=drain_timeout_s)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._taken(item)
            self._drop([item])
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        logger.info(
            "capture writer stopped: %s rows written, %s dropped", self.written, self.dropped
        )

    async def flush(self, *, timeout_s: float = 10.0) -> None:
        """Wait until everything queued so far has been written or dropped."""
        async with asyncio.timeout(timeout_s):
            await self._queue.join()

    def begin(self, record: CallRecord) -> None:
        """The call has started: queue its pending row."""
        self.metrics.call_started()
        self._put(_Item("begin", record.call_id, record.row(), record.body_bytes))

    def finish(self, record: CallRecord) -> None:
        """The call has ended: count it in the metrics and queue its final row."""
        self.metrics.call_finished(record)
        self._put(_Item("finish", record.call_id, record.row(), record.body_bytes))

    def _put(self, item: _Item) -> None:
        if not self.enabled:
            return
        if self._stopped:
            self._drop([item])  # a call that outlived the writer
            return
        # One row larger than the whole budget still goes through when nothing else is held.
        if self.queued_bytes and self.queued_bytes + item.size > self.queue_bytes:
            self._drop([item])
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._drop([item])
            return
        self.queued_bytes += item.size

    def _taken(self, item: _Item) -> None:
        """The item has left the queue for good (written or dropped)."""
        self.queued_bytes -= item.size
        self._queue.task_done()

    def _drop(self, items: Iterable[_Item]) -> None:
        if self.dropped == 0:
            logger.warning("capture rows dropped (queue full or database unavailable)")
        self.dropped += _calls(items)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            try:
                # A short call's pending and final rows then share a batch (the pending one
                # is skipped).
                await gather_batch(self._queue, batch, self.batch_size)
                await self._write_through_outage(batch)
            except psycopg.Error as exc:  # not an outage: retrying the batch cannot help
                self._drop(batch)
                logger.warning("capture writer dropped a batch of %s rows: %r", len(batch), exc)
            except asyncio.CancelledError:
                self._drop(batch)  # stopped mid-batch: these rows are lost, count them
                raise
            except Exception:  # the writer loop is an edge: it must never die
                self._drop(batch)
                logger.exception("capture writer failed on a batch of %s rows", len(batch))
            finally:
                for item in batch:
                    self._taken(item)

    async def _write_through_outage(self, batch: list[_Item]) -> None:
        """Write the batch; an unreachable or restarting database is retried with a backoff
        for up to OUTAGE_WAIT_S while the pool reconnects. The calls of a short outage are then
        written when the database is back, not lost."""
        give_up_at = time.monotonic() + OUTAGE_WAIT_S
        backoff = 0.2
        while True:
            try:
                await self._write(batch)
                return
            except (psycopg.OperationalError, OSError) as exc:
                self._log_outage(exc)
                if time.monotonic() + backoff > give_up_at:
                    self._drop(batch)
                    return
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _log_outage(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            self._last_failure_log = now
            logger.warning(
                "capture writer cannot reach the database (%s: %s); rows wait for it "
                "(%s dropped so far)",
                type(exc).__name__,
                exc,
                self.dropped,
            )

    async def _write(self, batch: list[_Item]) -> None:
        finished = {item.call_id for item in batch if item.kind == "finish"}
        items = [i for i in batch if i.kind == "finish" or i.call_id not in finished]
        rows = [self._row(item) for item in items]
        assert self._pool is not None
        async with self._pool.connection() as conn:
            if not self._schema_ready:
                await migrate(conn)
                self._schema_ready = True
            try:
                await conn.execute(UPSERT_CALLS_SQL, (Jsonb(rows, dumps=jsonb_dumps),))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError):
                # One bad row must not sink the batch: retry row by row, drop the bad ones.
                refused = await self._write_one_by_one(conn, rows)
                self._drop(i for i in items if i.call_id in refused)
                items = [i for i in items if i.call_id not in refused]
        self.written += _calls(items)
        self._note_written(items)

    def _row(self, item: _Item) -> dict[str, Any]:
        if item.kind == "finish" and item.call_id in self._begun:
            return {**item.row, **dict.fromkeys(REQUEST_COLUMNS)}
        return item.row

    def _note_written(self, items: Iterable[_Item]) -> None:
        for item in items:
            if item.kind == "finish":
                self._begun.discard(item.call_id)
            else:
                if len(self._begun) >= BEGUN_MAX:
                    self._begun.clear()
                self._begun.add(item.call_id)

    async def _write_one_by_one(
        self, conn: psycopg.AsyncConnection, rows: list[dict]
    ) -> set[uuid.UUID]:
        """Write rows singly; returns the calls whose row the database refused (dropped)."""
        refused = set()
        for row in rows:
            try:
                await conn.execute(UPSERT_CALLS_SQL, (Jsonb([row], dumps=jsonb_dumps),))
            except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
                refused.add(row["call_id"])
                logger.warning("capture row %s refused by the database: %s", row["call_id"], exc)
        return refused
