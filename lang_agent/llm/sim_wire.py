"""Wire format of the model simulator: HTTP/1.1 framing and Qwen-style chat completion bodies."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from lang_agent.llm import sim_replies
from lang_agent.llm.sim_replies import Reply

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 300.0  # a connection with no complete request for this long is closed
LOOP_CAP = 20_000  # chunks a `loop` fault streams at most
LENGTH_FAULT_TOKENS = 3  # tokens a `length` fault keeps
ARG_FRAGMENT_CHARS = 8  # tool-call arguments stream in pieces this long
MESSAGE_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class HttpError(Exception):
    """An error answer: status, message, and the OpenAI/Qwen error `code` and `type`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_parameter_error",
        kind: str | None = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind


def fault_error(fault: str) -> HttpError:
    """The error a `429` or `500` fault answers with, shaped as Qwen sends it."""
    if fault == "429":
        message = "Requests rate limit exceeded, please try again later."
        return HttpError(429, message, code="Throttling.RateQuota", kind=None)
    message = "The simulator was told to fail this request."
    return HttpError(500, message, code="internal_error", kind="server_error")


def auth_error() -> HttpError:
    return HttpError(401, "Incorrect API key provided.", code="invalid_api_key")


def json_object(raw: bytes) -> dict[str, Any]:
    """A control request's JSON object body (empty = {}); 400 otherwise."""
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise HttpError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def error_body(exc: HttpError, *, rid: str) -> dict[str, Any]:
    error: dict[str, Any] = {"code": exc.code, "message": exc.message}
    if exc.kind is not None:
        error |= {"type": exc.kind, "param": None}
    return {"error": error, "request_id": rid}


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    started: float  # time.monotonic() when the head was read


async def read_request(
    reader: asyncio.StreamReader, buf: bytearray, *, writer: asyncio.StreamWriter
) -> Request | None:
    """The next request on a connection (bytes already read wait in `buf`); None at its end."""
    async with asyncio.timeout(IDLE_TIMEOUT_S):
        while (end := buf.find(b"\r\n\r\n")) < 0:
            if len(buf) > MAX_HEAD:
                raise HttpError(431, "the request head is too large")
            data = await reader.read(65536)
            if not data:
                return None
            buf += data
    started = time.monotonic()
    request_line, *lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "malformed request line")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise HttpError(411, "send the request body with Content-Length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "malformed Content-Length") from None
    if length < 0:
        raise HttpError(400, "malformed Content-Length")
    if length > MAX_BODY:
        raise HttpError(413, "the request body is too large")
    if length > len(buf) and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for this on big bodies
    async with asyncio.timeout(IDLE_TIMEOUT_S):
        while len(buf) < length:
            data = await reader.read(65536)
            if not data:
                return None
            buf += data
    body = bytes(buf[:length])
    del buf[:length]
    connection = headers.get("connection", "").lower()
    keep = connection != "close" if parts[2] == "HTTP/1.1" else connection == "keep-alive"
    return Request(parts[0].upper(), parts[1].split("?", 1)[0], headers, body, keep, started)


@dataclass(frozen=True)
class ResponseHead:
    """Status line and headers of one response, Qwen/Moonshot style."""

    status: int
    rid: str
    started: float

    def _head(self, lines: list[str], keep: bool) -> bytes:
        took = (time.monotonic() - self.started) * 1000
        return (
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
            + "".join(f"{line}\r\n" for line in lines)
            + f"x-request-id: {self.rid}\r\nMsh-Request-Id: {self.rid}\r\n"
            f"Server-Timing: inner; dur={took:.0f}\r\nMsh-Uid: sim-user\r\nMsh-Gid: sim-group\r\n"
            f"Connection: {'keep-alive' if keep else 'close'}\r\n\r\n"
        ).encode()

    def raw(self, length: int, *, keep: bool) -> bytes:
        """The head of a JSON body of `length` bytes."""
        return self._head(["Content-Type: application/json", f"Content-Length: {length}"], keep)

    def json_bytes(self, data: bytes, *, keep: bool) -> bytes:
        return self.raw(len(data), keep=keep) + data

    def json(self, payload: Any, *, keep: bool) -> bytes:
        return self.json_bytes(dumps(payload), keep=keep)

    def stream_start(self, *, keep: bool) -> bytes:
        lines = [
            "Content-Type: text/event-stream;charset=UTF-8",
            "Transfer-Encoding: chunked",
            "Cache-Control: no-cache",
        ]
        return self._head(lines, keep)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _functions(items: Any) -> bool:
    """None, or a list of objects that each carry a `function` object."""
    if items is None:
        return True
    return isinstance(items, list) and all(
        isinstance(item, dict) and isinstance(item.get("function"), dict) for item in items
    )


def parse_chat(raw: bytes) -> dict[str, Any]:
    """A chat completion request body, validated enough to answer it; 400 otherwise."""
    try:
        body = json.loads(raw)
    except ValueError:
        raise HttpError(400, "Invalid request: the body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise HttpError(400, "Invalid request: the body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HttpError(400, "Invalid request: 'messages' must be a non-empty list.")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in MESSAGE_ROLES:
            raise HttpError(400, "Invalid request: each message needs a valid 'role'.")
        if not isinstance(message.get("content"), str | list | None):
            raise HttpError(400, "Invalid request: 'content' must be a string or a list.")
        if not _functions(message.get("tool_calls")):
            raise HttpError(400, "Invalid request: 'tool_calls' must be a list of functions.")
    if body.get("stream") not in (None, True, False):
        raise HttpError(400, "Invalid request: 'stream' must be a boolean.")
    if not _functions(body.get("tools")):
        raise HttpError(400, "Invalid request: 'tools' must be a list of functions.")
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None and not _positive_int(body[key]):
            raise HttpError(400, f"Invalid request: '{key}' must be a positive integer.")
    return body


def frame(data: bytes) -> bytes:
    """One HTTP chunk."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class Peer:
    """Watches the client while a response is produced: end of input means it went away."""

    def __init__(self, reader: asyncio.StreamReader, buf: bytearray) -> None:
        self._read = asyncio.ensure_future(reader.read(65536))
        self._buf = buf
        self._pipelined = False

    def left(self) -> bool:
        if not self._read.done() or self._pipelined:
            return False
        if self._read.cancelled() or self._read.exception() is not None:
            return True
        data = self._read.result()
        if data:  # the next request arrived early: keep it for the request reader
            self._buf.extend(data)
            self._pipelined = True
            return False
        return True

    async def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, or less if the client leaves; True if it has left."""
        if self._read.done():
            if self.left():
                return True
            await asyncio.sleep(seconds)
            return False
        await asyncio.wait((self._read,), timeout=seconds)
        return self.left()

    async def close(self) -> None:
        if not self._read.done():
            self._read.cancel()  # the reader keeps unread bytes; a cancelled read loses nothing
            await asyncio.wait((self._read,))
        self.left()


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop the connection with a TCP reset: SO_LINGER 0, then abort."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# A token: ("c", text) for content, ("t", index, argument piece, call id, name) for a tool call;
# the id and name ride on a call's first fragment only, as Qwen streams them.
Token = tuple[Any, ...]


class ChatPlan:
    """One answer laid out as tokens, ready to stream (a token ≈ a chunk) or to send whole."""

    def __init__(
        self, body: dict[str, Any], tokens: Iterable[Token], *, rid: str, model: str, finish: str
    ) -> None:
        self.body = body
        self.tokens = tokens
        self.finish = finish
        self.fault: str | None = None
        self.stream = body.get("stream") is True
        self.emitted = 0
        self.id = f"chatcmpl-{rid}"
        self.model = model
        self.created = int(time.time())
        self._prefix = (
            f'data: {{"id":"{self.id}","object":"chat.completion.chunk","created":{self.created},'
            f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":'
        )

    @classmethod
    def build(
        cls, body: dict[str, Any], reply: Reply, *, rid: str, fault: str | None, role: str
    ) -> ChatPlan:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        model = str(body.get("model") or f"sim-{role}")
        if fault == "loop":
            lang = sim_replies.language(body["messages"])
            sentence = sim_replies.pieces(sim_replies.LOOP_SENTENCE[lang])
            count = min(LOOP_CAP, limit or LOOP_CAP)
            loop = (("c", piece) for piece in itertools.islice(itertools.cycle(sentence), count))
            stream = body.get("stream") is True
            plan = cls(body, loop if stream else list(loop), rid=rid, model=model, finish="length")
        else:
            content: list[Token] = [("c", piece) for piece in sim_replies.pieces(reply.content)]
            calls: list[Token] = []
            for index, call in enumerate(reply.tool_calls):
                args = call.arguments
                chunks = [
                    args[i : i + ARG_FRAGMENT_CHARS]
                    for i in range(0, len(args), ARG_FRAGMENT_CHARS)
                ] or [""]
                call_id = f"call_{uuid.uuid4().hex[:24]}"
                calls.append(("t", index, chunks[0], call_id, call.name))
                calls.extend(("t", index, piece, "", None) for piece in chunks[1:])
            finish = "tool_calls" if calls else "stop"
            if limit and len(content) > limit:  # out of tokens before any tool call
                content, calls, finish = content[:limit], [], "length"
            tokens = content + calls
            if fault == "length":
                tokens, finish = tokens[:LENGTH_FAULT_TOKENS], "length"
            plan = cls(body, tokens, rid=rid, model=model, finish=finish)
        plan.fault = fault
        return plan

    def token_count(self) -> int:
        return len(self.tokens) if isinstance(self.tokens, list) else LOOP_CAP

    def usage(self, completion: int) -> dict[str, Any]:
        prompt = sim_replies.prompt_tokens(self.body["messages"])
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
        }

    def _event(self, delta: str, finish: str | None = None) -> bytes:
        reason = "null" if finish is None else f'"{finish}"'
        choice = f'[{{"index":0,"delta":{delta},"finish_reason":{reason},"logprobs":null}}]'
        return frame(f'{self._prefix}{choice},"usage":null}}\n\n'.encode())

    def role_event(self) -> bytes:
        return self._event('{"role":"assistant","content":""}')

    def token_events(self) -> Iterator[bytes]:
        for token in self.tokens:
            self.emitted += 1
            if token[0] == "c":
                yield self._event(f'{{"content":{json.dumps(token[1], ensure_ascii=False)}}}')
                continue
            _, index, piece, call_id, name = token
            call: dict[str, Any] = {"index": index, "id": call_id}
            if name is not None:
                call |= {"type": "function", "function": {"name": name, "arguments": piece}}
            else:
                call["function"] = {"arguments": piece}
            yield self._event(dumps({"tool_calls": [call]}).decode())

    def tail_events(self) -> bytes:
        """The finish chunk, the usage chunk when asked for, [DONE] and the last HTTP chunk."""
        empty = "{}" if self.finish == "tool_calls" else '{"content":""}'
        out = [self._event(empty, self.finish)]
        if ((self.body.get("stream_options") or {}).get("include_usage")) is True:
            usage = dumps(self.usage(self.emitted)).decode()
            out.append(frame(f'{self._prefix}[],"usage":{usage}}}\n\n'.encode()))
        out.append(frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        return b"".join(out)

    def completion_json(self) -> bytes:
        """The whole answer as a non-stream `chat.completion` body."""
        tokens = list(self.tokens)
        content = "".join(t[1] for t in tokens if t[0] == "c")
        calls: dict[int, dict[str, Any]] = {}
        for token in (t for t in tokens if t[0] == "t"):
            _, index, piece, call_id, name = token
            if name is not None:
                calls[index] = {"id": call_id, "type": "function", "function": {"name": name}}
                calls[index]["function"]["arguments"] = ""
            if index in calls:
                calls[index]["function"]["arguments"] += piece
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = list(calls.values())
        return dumps(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": self.finish, "logprobs": None}
                ],
                "usage": self.usage(len(tokens)),
            }
        )
