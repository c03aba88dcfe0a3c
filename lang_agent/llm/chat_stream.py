"""A lean streaming chat-completions call on the shared (capturing) upstream transport.

The turn engine's hot path. `ChatOpenAI.astream` spent about 6 ms of CPU per call in the
openai SDK and LangChain (a pydantic chunk object, callbacks and a message merge per chunk);
this takes the chunks capture's tee parsed, in well under 1 ms, so a server core serves more
turns (docs/performance.md). Same wire request as ChatOpenAI sends, same errors as
`errors.upstream_errors` gives, same retries (`LLM_RETRIES`, before any token only).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2
from langchain_core.messages import AIMessage, BaseMessage, convert_to_openai_messages

from lang_agent.capture.merge import DONE, SseSplitter, event_data, parse_chunk
from lang_agent.capture.stream import CapturingStream
from lang_agent.capture.transport import BODY_EXTENSION
from lang_agent.errors import UpstreamError, UpstreamStatus
from lang_agent.jsonwire import dumpb
from lang_agent.llm.factory import ModelSpec, reasoning_off

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
RETRY_BASE_S = 0.5
DRAIN_S = 0.5


@dataclass
class Reply:
    """What a streamed call said, assembled as it arrives."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None

    def message(self, *, model: str) -> AIMessage:
        tool_calls = []
        for index in sorted(self.calls):
            call = self.calls[index]
            try:
                args = json.loads(call["arguments"] or "{}")
            except ValueError:
                args = {}
            tool_calls.append(
                {
                    "name": call["name"],
                    "args": args if isinstance(args, dict) else {},
                    "id": call["id"],
                    "type": "tool_call",
                }
            )
        usage = None
        if self.usage:
            details = self.usage.get("prompt_tokens_details") or {}
            usage = {
                "input_tokens": int(self.usage.get("prompt_tokens") or 0),
                "output_tokens": int(self.usage.get("completion_tokens") or 0),
                "total_tokens": int(self.usage.get("total_tokens") or 0),
                "input_token_details": {"cache_read": int(details.get("cached_tokens") or 0)},
            }
        return AIMessage(
            content="".join(self.text),
            tool_calls=tool_calls,
            usage_metadata=usage,
            response_metadata={"model": model, "finish_reason": self.finish_reason},
        )

    def add(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; returns its text ('' for none)."""
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        piece = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            piece += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                slot = self.calls.setdefault(
                    int(call.get("index") or 0), {"id": "", "name": "", "arguments": ""}
                )
                function = call.get("function") or {}
                slot["id"] = slot["id"] or call.get("id") or ""
                slot["name"] = slot["name"] or function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if piece:
            self.text.append(piece)
        return piece


def request_body(
    spec: ModelSpec,
    messages: Sequence[BaseMessage],
    *,
    max_tokens: int,
    tools: Sequence[dict[str, Any]] | None = None,
    tool_choice: str | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": spec.model,
        "messages": convert_to_openai_messages(list(messages)),
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": max_tokens,
    }
    if tools:
        body["tools"] = list(tools)
        if tool_choice is not None:
            body["tool_choice"] = {"type": "function", "function": {"name": tool_choice}}
            body["parallel_tool_calls"] = False
    body.update(reasoning_off(spec))
    return body


async def _drain(body: AsyncIterator[bytes]) -> None:
    """Read the body to its end after [DONE], within DRAIN_S: a connection left with unread
    bytes (the chunked body's last chunk) cannot be reused, so every call would open a new
    one, with a TLS handshake for a real provider."""
    with contextlib.suppress(TimeoutError, httpx2.TransportError):
        async with asyncio.timeout(DRAIN_S):
            async for _data in body:
                pass


async def _tee_events(
    tee: CapturingStream, body: AsyncIterator[bytes]
) -> AsyncIterator[dict[str, Any] | None]:
    parsed = tee.subscribe()
    async for _data in body:
        for chunk in parsed:
            yield chunk
        parsed.clear()
        if tee.done:
            return


async def _sse_events(body: AsyncIterator[bytes]) -> AsyncIterator[dict[str, Any] | None]:
    splitter = SseSplitter()
    async for data in body:
        for raw, _end in splitter.feed(data):
            text = event_data(raw)
            if text is None:
                continue
            if text.strip() == DONE:
                return
            yield parse_chunk(text)


async def _chunks(response: httpx2.Response) -> AsyncIterator[dict[str, Any] | None]:
    """The data events of an SSE body up to [DONE], each as its parsed chunk (None for one
    that is not a JSON object); then the rest of the body is drained. Capture's tee parses
    every event for its record anyway: when the body passes through it, that parse is taken,
    not repeated (about a twelfth of a streamed call's CPU, docs/performance.md)."""
    stream = response.stream
    tee = stream if isinstance(stream, CapturingStream) else None
    body = aiter(stream) if tee is not None else response.aiter_bytes()
    async with contextlib.aclosing(body):
        events = _tee_events(tee, body) if tee is not None else _sse_events(body)
        async with contextlib.aclosing(events):
            async for chunk in events:
                yield chunk
        await _drain(body)


async def stream_chat(
    transport: httpx2.AsyncBaseTransport,
    spec: ModelSpec,
    body: dict[str, Any],
    reply: Reply,
    *,
    timeouts: httpx2.Timeout,
    retries: int,
) -> AsyncIterator[str]:
    """POST the body and yield each text piece, filling `reply`; raises UpstreamError
    subclasses (httpx2 errors are left to `errors.upstream_errors`). The request goes to the
    transport itself: an httpx2 client and its stream wrappers add nothing a model call needs,
    for about a tenth of its CPU (docs/performance.md)."""
    key = spec.api_key.get_secret_value() if spec.api_key else "missing"
    headers = {
        "authorization": f"Bearer {key}",
        "accept": "text/event-stream",
        "content-type": "application/json",
    }
    url = spec.base_url.rstrip("/") + "/chat/completions"
    request = httpx2.Request(
        "POST", url, headers=headers, content=dumpb(body),
        extensions={"timeout": timeouts.as_dict(), BODY_EXTENSION: body},
    )  # fmt: skip
    for attempt in range(retries + 1):
        spoke = False
        try:
            response = await transport.handle_async_request(request)
            response.request = request
            try:
                if response.status_code >= 400:
                    await response.aread()
                    if response.status_code in RETRY_STATUSES and attempt < retries:
                        await asyncio.sleep(RETRY_BASE_S * 2**attempt)
                        continue
                    raise UpstreamStatus(
                        f"the model API answered HTTP {response.status_code}",
                        status=response.status_code,
                    )
                async with contextlib.aclosing(_chunks(response)) as chunks:
                    async for chunk in chunks:
                        if chunk is None:
                            raise UpstreamError("the model API sent a malformed event")
                        if "error" in chunk:
                            raise UpstreamError("the model API returned an error")
                        piece = reply.add(chunk)
                        if piece:
                            spoke = True
                            yield piece
            finally:
                await response.aclose()
            return  # [DONE], or a stream that ends cleanly without it: take what came
        # Like the openai SDK: a timeout or a dropped connection before any token is retried.
        except (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError):
            if spoke or reply.calls or attempt >= retries:
                raise
            await asyncio.sleep(RETRY_BASE_S * 2**attempt)
