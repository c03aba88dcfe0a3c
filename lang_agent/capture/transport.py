"""CapturingTransport: an httpx2 transport that records every call it delegates to an inner one.

It reads the call context (thread, turn, graph node), redacts the request headers, runs the
context-window pre-flight and the provider-rule lint (lint.py), queues a `pending` row,
delegates, and swaps the response stream for the tee from stream.py, which finalises the row
when the body is closed. With force-stream a non-stream chat request goes upstream as a stream
and the client gets the merged completion; a stream whose client did not ask for its usage is
asked for it, and the tee takes that chunk out (an upstream that refuses the option by name
gets the call again as the client wrote it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx2

from lang_agent.capture.detect import (
    RepeatConfig,
    RepeatDetector,
    context_overflow,
    preflight,
    requested_max_tokens,
    truncation,
)
from lang_agent.capture.lint import lint, rate_limit
from lang_agent.capture.record import CallRecord, redact_headers, redact_url
from lang_agent.capture.recorder import Recorder
from lang_agent.capture.stream import CapturingStream, describe_error, readable
from lang_agent.jsonwire import dumpb, loads
from lang_agent.llm.context import current_call
from lang_agent.llm.models_catalog import ModelCatalog

logger = logging.getLogger(__name__)

# Request extension a caller (the proxy) uses to add flags to the record.
FLAGS_EXTENSION = "capture_flags"
# Request extension: the JSON body as the caller built it, before it became the request's
# bytes, so the record takes it instead of parsing them again (a long thread's chat request
# is tens of kilobytes). The caller must not change it afterwards: the record keeps it.
BODY_EXTENSION = "capture_body"
UPSTREAM_ID_HEADERS = ("msh-request-id", "x-dashscope-request-id", "x-request-id", "request-id")
_DURATION = re.compile(r"dur=([0-9.]+)")
USAGE_OPTION = b'"stream_options":{"include_usage":true},'
# A 400 naming the option: an upstream that takes no stream_options (Azure's "Unrecognized
# request argument supplied: stream_options", a strict validator's field path).
_REFUSES_USAGE = re.compile(rb"stream_options|include_usage", re.IGNORECASE)
_DROPPED_AFTER_MERGE = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "content-type"}
)


def server_timing_ms(headers: httpx2.Headers) -> float | None:
    """Upstream processing time: `Server-Timing: inner; dur=1033` or a known ms header."""
    match = _DURATION.search(headers.get("server-timing", ""))
    if match:
        return float(match.group(1))
    for name in ("x-envoy-upstream-service-time", "openai-processing-ms"):
        try:
            return float(headers[name])
        except (KeyError, ValueError):
            continue
    return None


def _parse_body(content: bytes, *, max_bytes: int) -> tuple[Any, bool]:
    """(JSON value, or text when not JSON; True when cut to max_bytes)."""
    if not content:
        return None, False
    if len(content) > max_bytes:
        return content[:max_bytes].decode("utf-8", "replace"), True
    text = content.decode("utf-8", "replace")
    try:
        return loads(text), False
    except ValueError:
        return text, False


def _host(request: httpx2.Request) -> str:
    return request.url.netloc.decode("ascii")


def _is_chat(request: httpx2.Request) -> bool:
    return request.method == "POST" and request.url.path.rstrip("/").endswith("/chat/completions")


class CapturingTransport(httpx2.AsyncBaseTransport):
    """Delegates to `inner`; every call becomes a row in `llm_calls` (see the module docstring)."""

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport,
        *,
        recorder: Recorder,
        catalog: ModelCatalog | None = None,
        source: str = "agent",
        force_stream: bool | None = None,
        add_usage: bool = False,
        repeat: RepeatConfig | None = None,
        on_finish: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.inner = inner
        self.recorder = recorder
        self.catalog = catalog or ModelCatalog({})
        self.source = source
        self.force_stream = recorder.force_stream if force_stream is None else force_stream
        self.add_usage = add_usage
        self._warned_hosts: set[str] = set()
        self._refusing_hosts: set[str] = set()  # answered 400 naming stream_options
        self.repeat = recorder.repeat if repeat is None else repeat
        self.on_finish = on_finish
        recorder.metrics.currency = self.catalog.currency

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        await request.aread()
        response, change = await self._call(request)
        if change == "usage_added" and response.status_code == 400:
            body = b"".join([piece async for piece in response.stream])  # through the tee
            await response.aclose()
            if _REFUSES_USAGE.search(body):
                self._refused_usage(request, body)
                response, _ = await self._call(request)  # now as the client wrote it
            else:
                self._warn_refused_usage(request)
                response = httpx2.Response(
                    400,
                    headers=response.headers,
                    stream=httpx2.ByteStream(body),
                    extensions=response.extensions,
                )
        return response

    async def _call(self, request: httpx2.Request) -> tuple[httpx2.Response, str | None]:
        """Send the request (rewritten, see `_rewrite`) with the tee on its response: one
        call, one record. Also what was changed."""
        try:
            record, body = self._new_record(request)
            upstream, change = self._rewrite(request, record, body)
            self.recorder.begin(record)
        except Exception:  # an edge: a capture bug must not cost the call
            logger.exception("capture could not start; the call goes out uncaptured")
            return await self.inner.handle_async_request(request), None
        try:
            response = await self.inner.handle_async_request(upstream)
        except BaseException as exc:
            # A cancel is the caller leaving (a client gone, a call discarded), not a failure.
            failed = not isinstance(exc, asyncio.CancelledError)
            record.status, record.error = "error" if failed else "incomplete", describe_error(exc)
            record.latency_ms = record.elapsed_ms()
            record.finished_at = datetime.now(UTC)
            self._complete(record)
            raise
        if response.is_closed:
            # A response built from bytes (a test double) was read already: tee a fresh copy.
            response = httpx2.Response(
                response.status_code,
                headers=response.headers,
                stream=httpx2.ByteStream(response.content),
                extensions=response.extensions,
            )
        self._on_headers(record, response)
        sse = response.headers.get("content-type", "").startswith("text/event-stream")
        record.stream = sse
        detector = RepeatDetector(self.repeat) if sse and _is_chat(request) else None
        encoding = response.headers.get("content-encoding")
        strip = (
            change == "usage_added"
            and sse
            and response.status_code < 400
            and self._strippable(record, response, encoding)
        )
        stream = CapturingStream(
            response.stream,
            record=record,
            sse=sse,
            content_encoding=encoding,
            max_bytes=self.recorder.max_body_bytes,
            detector=detector,
            on_close=self._complete,
            strip_usage=strip,
        )
        if change == "force_stream" and sse and response.status_code < 400:
            return await self._merged_response(response, stream, upstream), change
        response.stream = stream
        return response, change

    def _refused_usage(self, request: httpx2.Request, answer: bytes) -> None:
        """The upstream refused the added stream_options by name: from now on its streams go
        out as their clients wrote them (flag usage_refused), this one again at once."""
        self._refusing_hosts.add(_host(request))
        logger.warning(
            "%s refused the stream_options the proxy added to ask a stream's usage (%s): its "
            "streams now go out as their clients write them, and one whose client does not "
            "ask its usage is recorded without tokens or cost",
            _host(request),
            answer[:200].decode(errors="replace"),
        )

    def _warn_refused_usage(self, request: httpx2.Request) -> None:
        """Once per upstream host: a 400 to a request that had stream_options added, which does
        not name them, may still be an upstream that takes none."""
        host = _host(request)
        if host in self._warned_hosts:
            return
        self._warned_hosts.add(host)
        logger.warning(
            "%s answered 400 to a stream the proxy asked its usage for (stream_options."
            "include_usage, flag usage_added): if it takes no stream_options, start the proxy "
            "with --no-add-usage",
            host,
        )

    def _strippable(
        self, record: CallRecord, response: httpx2.Response, encoding: str | None
    ) -> bool:
        """Whether the usage chunk can be taken out of this response for the client: the body
        goes out decoded, without its length (an upstream may compress, or state a length,
        although asked for neither). An encoding the tee cannot read keeps the chunk, flagged."""
        if not readable(encoding):
            record.flags["usage_chunk_passed_on"] = True
            return False
        for name in ("content-encoding", "content-length"):
            if name in response.headers:
                del response.headers[name]
        return True

    def _new_record(self, request: httpx2.Request) -> tuple[CallRecord, Any]:
        """The call's record, and the request's body parsed whole (the record keeps it cut
        to CAPTURE_MAX_BODY_BYTES)."""
        body, cut = request.extensions.get(BODY_EXTENSION), False
        if body is None or len(request.content) > self.recorder.max_body_bytes:
            body, cut = _parse_body(request.content, max_bytes=self.recorder.max_body_bytes)
        context = current_call.get()
        record = CallRecord(
            method=request.method,
            url=redact_url(str(request.url)),
            request_header=redact_headers(
                request.headers.multi_items(), extra=self.recorder.redact
            ),
            created_at=datetime.now(UTC),
            source=self.source,
            thread_id=context.thread_id if context else None,
            turn_id=context.turn_id if context else None,
            node=context.node if context else None,
            request_body=body,
            client_request_id=request.headers.get("x-request-id"),
        )
        record.body_bytes = min(len(request.content), self.recorder.max_body_bytes)
        record.flags.update(request.extensions.get(FLAGS_EXTENSION) or {})
        if cut:
            record.flags["request_truncated"] = len(request.content)
            # Only the stored copy is cut: model, stream and the window check read it whole.
            body, _ = _parse_body(request.content, max_bytes=len(request.content))
        if isinstance(body, dict):
            model = body.get("model")
            record.model = model if isinstance(model, str) else None
            record.stream = bool(body.get("stream"))
            if _is_chat(request):
                self._preflight(record, body, size=len(request.content))
        return record, body

    def _preflight(self, record: CallRecord, body: dict[str, Any], *, size: int) -> None:
        model = body.get("model")
        if isinstance(model, str) and self.catalog.resolve_auto(model, 0) == model:
            # No text estimates to more tokens than its JSON has bytes, so the request of a
            # model with one window that fits by its size fits: its messages are not walked
            # (a long thread's would be, on every call).
            if size + (requested_max_tokens(body) or 0) <= self.catalog.window(model):
                return
        verdict = preflight(body, catalog=self.catalog)
        if verdict is None:
            return
        if verdict["resolved_model"] != verdict["model"] or not verdict["fits"]:
            record.flags["preflight"] = verdict
        if not verdict["fits"]:
            record.flags["context_overflow"] = {**verdict, "source": "estimate"}
            logger.warning(
                "call %s: about %s prompt tokens + max_tokens %s exceed the %s-token window of %s",
                record.call_id,
                verdict["estimated_prompt_tokens"],
                verdict["max_tokens"],
                verdict["window"],
                verdict["resolved_model"],
            )

    def _lint(self, record: CallRecord, body: dict[str, Any], *, url: str) -> None:
        findings = lint(body, url=url)
        if findings:
            record.flags["lint"] = findings
            logger.warning(
                "call %s breaks provider rules: %s",
                record.call_id,
                "; ".join(f["message"] for f in findings),
            )

    def _rewrite(
        self, request: httpx2.Request, record: CallRecord, body: Any
    ) -> tuple[httpx2.Request, str | None]:
        """The request as it goes upstream, and what was changed, also a flag of the record:
        `force_stream` (a non-stream chat call sent as a stream, merged back) or `usage_added`
        (a stream whose client did not ask for its usage; the tee takes that chunk out). The
        lint reads the request as sent."""
        if not (_is_chat(request) and isinstance(body, dict)):
            return request, None
        options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        change = None
        if self.force_stream and not body.get("stream"):
            change = "force_stream"
        elif self.add_usage and body.get("stream") is True and not options.get("include_usage"):
            if _host(request) in self._refusing_hosts:
                record.flags["usage_refused"] = True
            else:
                change = "usage_added"
        if change is None:
            self._lint(record, body, url=str(request.url))
            return request, None
        sent = {**body, "stream": True, "stream_options": {**options, "include_usage": True}}
        start = request.content.find(b"{")
        if change == "usage_added" and "stream_options" not in body and start >= 0:
            # Spliced into the client's own bytes, which parsing and writing again could
            # change (an integer over 64 bits parses as a float).
            content = request.content[: start + 1] + USAGE_OPTION + request.content[start + 1 :]
        else:
            content = dumpb(sent)
        headers = httpx2.Headers(request.headers)
        headers["content-length"] = str(len(content))
        if change == "usage_added":
            headers["accept-encoding"] = "identity"
        upstream = httpx2.Request(
            request.method,
            request.url,
            headers=headers,
            content=content,
            extensions=request.extensions,
        )
        record.client_request_body = record.request_body
        record.request_body = sent
        if record.flags.get("request_truncated"):
            record.request_body, _ = _parse_body(content, max_bytes=self.recorder.max_body_bytes)
        record.request_header = redact_headers(headers.multi_items(), extra=self.recorder.redact)
        record.body_bytes += min(len(content), self.recorder.max_body_bytes)
        record.flags[change] = True
        self._lint(record, sent, url=str(request.url))
        return upstream, change

    def _on_headers(self, record: CallRecord, response: httpx2.Response) -> None:
        record.ttfb_ms = record.elapsed_ms()
        record.status_code = response.status_code
        record.response_header = redact_headers(
            response.headers.multi_items(), extra=self.recorder.redact
        )
        for name in UPSTREAM_ID_HEADERS:
            if response.headers.get(name):
                record.upstream_request_id = response.headers[name]
                break
        record.server_timing_ms = server_timing_ms(response.headers)

    async def _merged_response(
        self, response: httpx2.Response, stream: CapturingStream, request: httpx2.Request
    ) -> httpx2.Response:
        """Force-stream: read the whole upstream stream and answer with the merged completion."""
        try:
            async for _chunk in stream:
                pass
        finally:
            await stream.aclose()
        record = stream.record
        if record.status not in ("ok", "stopped") or not isinstance(record.response_body, dict):
            raise httpx2.RemoteProtocolError(
                f"force-stream: the upstream stream did not complete ({record.error})",
                request=request,
            )
        content = json.dumps(record.response_body, ensure_ascii=False).encode()
        headers = [
            (k, v)
            for k, v in response.headers.multi_items()
            if k.lower() not in _DROPPED_AFTER_MERGE
        ]
        headers += [("content-type", "application/json"), ("content-length", str(len(content)))]
        extensions = {
            k: v for k, v in response.extensions.items() if k in ("http_version", "reason_phrase")
        }
        return httpx2.Response(
            response.status_code,
            headers=headers,
            stream=httpx2.ByteStream(content),
            extensions=extensions,
        )

    def _complete(self, record: CallRecord) -> None:
        """Usage, cost and detector verdicts from the finished call; then hand it over."""
        try:
            self._account(record)
        except Exception:  # an edge: a surprising body must not lose the record
            logger.exception("accounting of call %s failed", record.call_id)
        self.recorder.finish(record)
        if self.on_finish is not None:
            try:
                self.on_finish(record)
            except Exception:  # an edge: a hook must not break the call
                logger.exception("on_finish hook failed for call %s", record.call_id)

    def _account(self, record: CallRecord) -> None:
        body = record.response_body
        if not isinstance(body, dict):  # stored cut (or not JSON): what its ends still say
            body = record.response_summary or {}
        choices = [c for c in body.get("choices") or [] if isinstance(c, dict)]
        if isinstance(body.get("id"), str):
            record.chatcmpl_id = body["id"]
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        request_id = body.get("request_id") or error.get("request_id")
        if not record.upstream_request_id and isinstance(request_id, str):
            record.upstream_request_id = request_id
        usage = body.get("usage") or next(
            (c["usage"] for c in choices if isinstance(c.get("usage"), dict)), None
        )
        if isinstance(usage, dict):
            _read_usage(record, usage)
        if record.finish_reason is None:
            record.finish_reason = next(
                (c["finish_reason"] for c in choices if c.get("finish_reason")), None
            )
        served = body.get("model") if isinstance(body.get("model"), str) else None
        if served and record.model and served != record.model:
            record.flags["served_model"] = served
        model = served if self.catalog.known(served) else record.model
        if _unbilled_or_counted(record):
            record.cost = self.catalog.cost(
                model, record.prompt_tokens, record.completion_tokens, record.cached_tokens
            )
        if record.ttft_ms is not None and (record.completion_tokens or 0) > 1:
            record.tpot_ms = round(
                ((record.latency_ms or 0) - record.ttft_ms) / (record.completion_tokens - 1), 3
            )
        self._verdicts(record, model)

    def _verdicts(self, record: CallRecord, model: str | None) -> None:
        request = record.request_body if isinstance(record.request_body, dict) else {}
        truncated = truncation(
            record.finish_reason,
            model=model,
            prompt_tokens=record.prompt_tokens,
            completion_tokens=record.completion_tokens,
            catalog=self.catalog,
        )
        if truncated:
            record.flags["truncated"] = truncated
            logger.warning(
                "call %s stopped at max_tokens (finish_reason=length); max_tokens up to %s fits",
                record.call_id,
                truncated["suggested_max_tokens"],
            )
        if model and self.catalog.known(model):
            overflow = context_overflow(
                prompt_tokens=record.prompt_tokens,
                max_tokens=requested_max_tokens(request),
                window=self.catalog.window(model),
            )
            if overflow:
                record.flags["context_overflow"] = {**overflow, "source": "usage"}
        limited = rate_limit(record.status_code, record.response_body, record.response_header)
        if limited:
            record.flags["rate_limit"] = limited
        repeat = record.flags.get("repeat")
        if isinstance(repeat, dict) and repeat.get("cut"):
            produced = int(repeat.get("output_tokens") or 0)
            budget = requested_max_tokens(request) or (
                self.catalog.window(model) - (record.prompt_tokens or 0)
            )
            saved = max(0, budget - produced)
            repeat["tokens_saved"] = saved
            repeat["cost_saved"] = self.catalog.cost(model, 0, saved)


def _unbilled_or_counted(record: CallRecord) -> bool:
    """Whether the call's cost is known: its usage came back, or the upstream refused it (a
    4xx/5xx bills nothing). A call cut or cancelled before its usage came was billed for what
    the model read and wrote: its cost is unknown, not 0."""
    refused = record.status_code is not None and record.status_code >= 400
    return refused or record.prompt_tokens is not None or record.completion_tokens is not None


def _read_usage(record: CallRecord, usage: dict[str, Any]) -> None:
    def number(value: Any) -> int | None:
        return int(value) if isinstance(value, int | float) else None

    record.prompt_tokens = number(usage.get("prompt_tokens"))
    record.completion_tokens = number(usage.get("completion_tokens"))
    record.total_tokens = number(usage.get("total_tokens"))
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    record.cached_tokens = number(usage.get("cached_tokens")) or number(
        prompt_details.get("cached_tokens") if isinstance(prompt_details, dict) else None
    )
    record.reasoning_tokens = number(
        completion_details.get("reasoning_tokens") if isinstance(completion_details, dict) else None
    )
