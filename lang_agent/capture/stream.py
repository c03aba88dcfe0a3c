"""The tee on a response body: chunks pass through unchanged while the call record is filled in.

For server-sent events each event's offset (ms since the call started) is kept, the chunks are
merged into a chat.completion, TTFT is taken separately for the first content (or tool-call
argument) token and the first reasoning token, and the repeat detector watches the output.
The record is finished exactly once, in `aclose()`, whatever ended the stream. A stream without
`[DONE]` or a finish_reason, a transport error mid-body and a consumer that stops early are all
`incomplete`, with the reason in `error`. A reader of the body that wants the chunks parsed
can `subscribe()` to the tee's own parse instead of parsing the same bytes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx2

from lang_agent.capture.detect import RepeatDetector
from lang_agent.capture.merge import (
    DONE,
    CompletionMerger,
    SseSplitter,
    event_data,
    parse_chunk,
    usage_only,
)
from lang_agent.capture.record import CallRecord
from lang_agent.jsonwire import loads

logger = logging.getLogger(__name__)

# Why a call's body ended early, as its `error` says. The first four (CALLER_LEFT) are its
# caller leaving; CLIENT_LEFT is a proxy's client that disconnected, whenever it did (its task's
# cancel message). NO_DONE is a body the upstream ended cleanly; any other reason is the
# upstream's connection breaking off mid-body.
CLIENT_CLOSED = "the client closed the stream before the end"
CLIENT_LEFT = "the client closed the connection"
BODY_UNREAD = "the client closed before the body was read"
CANCELLED = "cancelled"
NO_DONE = "the stream ended without [DONE] or finish_reason"
CALLER_LEFT = frozenset({CLIENT_CLOSED, CLIENT_LEFT, BODY_UNREAD, CANCELLED})


def broken_off(status: str | None, error: str | None) -> bool:
    """Whether a captured call's body was broken off by the upstream mid-way (a dropped
    connection, a read error), rather than left by its caller or ended without [DONE]."""
    return status == "incomplete" and error not in CALLER_LEFT and error != NO_DONE


def describe_error(exc: BaseException) -> str:
    """A short, key-free description of why a call or stream failed."""
    if isinstance(exc, asyncio.CancelledError):  # a canceller may say why (task.cancel(msg))
        return str(exc.args[0]) if exc.args and exc.args[0] else CANCELLED
    if isinstance(exc, GeneratorExit):
        return CLIENT_CLOSED
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# A completion's usage and finish reason come last, after its (possibly huge) content.
TAIL_BYTES = 16 * 1024
_FIRST_TEXT = re.compile(rb'"(id|model)"\s*:\s*"([^"\\]{1,200})"')
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"(\w+)"')
_USAGE = re.compile(rb'"usage"\s*:\s*(?=\{)')


def summary_of_cut_body(head: bytes, tail: bytes) -> dict[str, Any]:
    """Of a JSON completion stored cut: its id and model from the head, its usage and finish
    reason from the tail, shaped like the completion itself for the accounting."""
    summary: dict[str, Any] = {}
    for match in _FIRST_TEXT.finditer(head[:4096]):
        summary.setdefault(match.group(1).decode(), match.group(2).decode("utf-8", "replace"))
    if finish := list(_FINISH.finditer(tail)):
        summary["choices"] = [{"finish_reason": finish[-1].group(1).decode()}]
    if usage := list(_USAGE.finditer(tail)):
        text = tail[usage[-1].end() :].decode("utf-8", "replace")
        with contextlib.suppress(ValueError):
            value, _ = json.JSONDecoder().raw_decode(text)
            summary["usage"] = value
    return summary


# Content encodings the tee reads (the proxy asks upstreams for no others).
DECODABLE_ENCODINGS = ("gzip", "deflate", "x-gzip")


def readable(encoding: str | None) -> bool:
    """Whether the tee can read a body sent with this Content-Encoding."""
    return (encoding or "identity").strip().lower() in ("identity", "", *DECODABLE_ENCODINGS)


class _Decoder:
    """gzip/deflate decoding for the captured copy; the client still gets the raw bytes."""

    def __init__(self, encoding: str | None) -> None:
        self.encoding = (encoding or "identity").strip().lower()
        self.failed = not readable(encoding)
        self._zlib = (
            zlib.decompressobj(zlib.MAX_WBITS | 32)
            if self.encoding in DECODABLE_ENCODINGS
            else None
        )

    @property
    def identity(self) -> bool:
        return self._zlib is None and not self.failed

    def decode(self, chunk: bytes) -> bytes:
        if self.failed:
            return b""
        if self._zlib is None:
            return chunk
        try:
            return self._zlib.decompress(chunk)
        except zlib.error:
            self.failed = True
            return b""


class CapturingStream(httpx2.AsyncByteStream):
    """Re-yields the inner stream's chunks and records them; see the module docstring."""

    def __init__(
        self,
        inner: httpx2.AsyncByteStream,
        *,
        record: CallRecord,
        sse: bool,
        content_encoding: str | None,
        max_bytes: int,
        detector: RepeatDetector | None,
        on_close: Callable[[CallRecord], None],
        strip_usage: bool = False,
    ) -> None:
        self._inner = inner
        self.record = record
        self._sse = sse
        self._decoder = _Decoder(content_encoding)
        # Events are left out of the decoded body: the transport drops the encoding's header.
        self._strip_usage = strip_usage and sse and not self._decoder.failed
        self._max_bytes = max_bytes
        self._detector = detector
        self._on_close = on_close
        self._splitter = SseSplitter()
        self._merger = CompletionMerger()
        self._events: list[bytes] = []
        self._offsets: list[float] = []
        self._body = bytearray()
        self._tail = bytearray()  # the last TAIL_BYTES of a body past the limit
        self._kept = 0
        self._seen = 0
        self._done = False
        self._exhausted = False
        self._cut = False
        self._error: BaseException | None = None
        self._inner_closed = False
        self._closed = False
        self._subscriber: list[dict[str, Any] | None] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                out = self._observe(chunk)
                if out:
                    yield out
                if self._cut:
                    break
            else:
                self._exhausted = True
                if self._strip_usage and (rest := self._splitter.flush()):
                    # An unterminated last event, held back as whole events are.
                    if not usage_only(self._on_event(rest)):
                        yield rest
        except BaseException as exc:
            self._error = exc
            raise
        if self._cut:
            # Closing the upstream response aborts the generation (and its billing).
            await self._close_inner()

    def subscribe(self) -> list[dict[str, Any] | None]:
        """A list that each data event before [DONE] is appended to, as its parsed chunk (None
        for one that is not a JSON object), as the body is read; the reader empties it.
        [DONE] itself sets `done`."""
        self._subscriber = []
        return self._subscriber

    @property
    def done(self) -> bool:
        return self._done

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_inner()
        finally:
            self._finish()

    async def _close_inner(self) -> None:
        if not self._inner_closed:
            self._inner_closed = True
            await self._inner.aclose()

    def _observe(self, chunk: bytes) -> bytes:
        data = self._decoder.decode(chunk)
        self._seen += len(data)
        if not self._sse:
            room = self._max_bytes - len(self._body)
            if room > 0:
                self._body += data[:room]
            if len(data) > room:
                self._tail += data[max(room, 0) :]
                del self._tail[: max(0, len(self._tail) - TAIL_BYTES)]
            return chunk
        if self._strip_usage:
            return self._without_usage(data)
        for raw, end in self._splitter.feed(data):
            self._on_event(raw)
            if self._cut:
                return chunk[:end] + self._repeat_tail()
        return chunk

    def _without_usage(self, data: bytes) -> bytes:
        """The chunk's complete events less the usage-only one, which the transport asked for
        on the client's behalf; an event's start waits for its end (a few bytes, not a wait)."""
        out = bytearray()
        for raw, _end in self._splitter.feed(data):
            if not usage_only(self._on_event(raw)):
                out += raw
            if self._cut:
                return bytes(out) + self._repeat_tail()
        return bytes(out)

    def _on_event(self, raw: bytes) -> dict[str, Any] | None:
        """Records an event; its parsed chunk, if it is one."""
        offset = self.record.elapsed_ms()
        if self._kept + len(raw) <= self._max_bytes:
            self._events.append(raw)  # decoded once, at the end
            self._offsets.append(offset)
            self._kept += len(raw)
        else:
            self.record.flags["response_truncated"] = True
        data = event_data(raw)
        if data is None:
            return None
        if data.strip() == DONE:
            self._done = True
            return None
        chunk = parse_chunk(data)
        if self._subscriber is not None and not self._done:
            self._subscriber.append(chunk)
        if chunk is None:
            return None
        self._merger.add(chunk)
        for position, choice in enumerate(chunk.get("choices") or []):
            if isinstance(choice, dict):
                self._on_choice(position, choice, offset)
        return chunk

    def _on_choice(self, position: int, choice: dict, offset: float) -> None:
        index = choice.get("index") if isinstance(choice.get("index"), int) else position
        delta = choice.get("delta") or {}
        content = delta.get("content") if isinstance(delta.get("content"), str) else ""
        reasoning = delta.get("reasoning_content")
        reasoning = reasoning if isinstance(reasoning, str) else ""
        arguments = any(
            isinstance(call, dict) and (call.get("function") or {}).get("arguments")
            for call in delta.get("tool_calls") or []
        )
        if (content or arguments) and self.record.ttft_ms is None:
            self.record.ttft_ms = offset
        if reasoning and self.record.ttft_reasoning_ms is None:
            self.record.ttft_reasoning_ms = offset
        detector = self._detector
        if detector is None or detector.verdict is not None:
            return
        verdict = detector.feed(index, "content", content) or detector.feed(
            index, "reasoning_content", reasoning
        )
        if verdict is None:
            return
        verdict["output_tokens"] = detector.output_tokens
        verdict["at_ms"] = offset
        self.record.flags["repeat"] = verdict
        logger.warning("call %s: the output repeats itself (%s)", self.record.call_id, verdict)
        if detector.config.cut and self._decoder.identity:
            self._cut = True

    def _repeat_tail(self) -> bytes:
        """A final chunk with finish_reason "repeat" for every open choice, then [DONE]."""
        merger = self._merger
        open_choices = [i for i, c in merger.choices.items() if not c["finish_reason"]] or [0]
        chunk = {
            "id": merger.top.get("id"),
            "object": "chat.completion.chunk",
            "created": merger.top.get("created"),
            "model": merger.top.get("model"),
            "choices": [{"index": i, "delta": {}, "finish_reason": "repeat"} for i in open_choices],
        }
        tail = f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()
        self._on_event(tail)
        self._on_event(b"data: [DONE]\n\n")
        return tail + b"data: [DONE]\n\n"

    def _finish(self) -> None:
        record = self.record
        record.latency_ms = record.elapsed_ms()
        record.finished_at = datetime.now(UTC)
        if self._decoder.failed:
            record.flags["response_encoding"] = self._decoder.encoding
        if self._seen > self._max_bytes:
            record.flags["response_truncated"] = True
        record.body_bytes += self._kept if self._sse else len(self._body)
        if self._sse:
            # Events end at a blank line, so no UTF-8 sequence spans two: one decode of the
            # whole is the same text as one per event.
            record.response_sse = b"".join([*self._events, self._splitter.tail()]).decode(
                "utf-8", "replace"
            )
            record.event_offsets_ms = self._offsets
            record.response_body = self._merger.result() if self._merger.chunks else None
        else:
            record.response_body = self._parsed_body()
            if self._tail:
                record.response_summary = summary_of_cut_body(self._body, self._tail)
        self._set_status()
        try:
            self._on_close(record)
        except Exception:  # an edge: recording must never break the caller
            logger.exception("finishing capture of call %s failed", record.call_id)

    def _parsed_body(self) -> object:
        text = bytes(self._body).decode("utf-8", "replace")
        if not text or self._seen > self._max_bytes:
            return text or None
        try:
            return loads(text)
        except ValueError:
            return text

    def _set_status(self) -> None:
        record, error = self.record, self._error
        finished = self._done or (
            self._exhausted and bool(self._merger.choices) and all(self._merger.finish_reasons)
        )
        if record.status_code is not None and record.status_code >= 400:
            record.status = "http_error"
            record.error = describe_error(error) if error else None
        elif self._cut:
            record.status, record.finish_reason = "stopped", "repeat"
        elif error is not None and not (self._sse and self._done):
            record.status, record.error = "incomplete", describe_error(error)
        elif not self._sse:
            ok = self._exhausted
            record.status = "ok" if ok else "incomplete"
            record.error = None if ok else BODY_UNREAD
        elif finished:
            record.status = "ok"
        else:
            record.status = "incomplete"
            record.error = NO_DONE if self._exhausted else CLIENT_CLOSED
        if self._sse and self._merger.error is not None and record.status in ("ok", "incomplete"):
            record.status = "error"
            record.error = "upstream error in stream: " + json.dumps(
                self._merger.error, ensure_ascii=False
            )
