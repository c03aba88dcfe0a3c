"""The terminal chat behind scripts/demo_chat.py: turns in-process or over HTTP, events as text.

Both back ends yield the engine's own `TurnEvent`s: in-process they come from `Agent.run_turn`;
against a server they are read back from the OpenAI stream with `events: true` (filler chunks
carry `x_lang_agent.kind == "filler"`, tool events come as chunks with empty `choices`).
`EventPrinter` turns them into coloured text; it never writes, the script does.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, assert_never

import httpx2

from lang_agent.agent.events import (
    AnswerDelta,
    Done,
    Failed,
    Filler,
    InputMessage,
    ModelUsage,
    RouteChosen,
    ToolFinished,
    ToolStarted,
    TurnEvent,
    TurnRequest,
    Usage,
)

if TYPE_CHECKING:
    from lang_agent.service import Service

RESULT_CHARS = 200
# The code of a turn that failed because the server's answer was not the stream we asked for.
BAD_RESPONSE = "bad_response"
STREAM_TIMEOUT = httpx2.Timeout(60.0, connect=5.0)
# SGR codes: the kinds of text the chat shows.
STYLES = {
    "answer": "",
    "filler": "2;3",  # dim italic: speech while a tool runs
    "tool": "33",  # yellow: a tool call
    "result": "32",  # green: its result
    "error": "31",  # red
    "meta": "2",  # dim: route, usage
    "you": "1;36",  # bold cyan
    "bot": "1;35",  # bold magenta
}
PREFIXES = {"answer": "bot › ", "filler": "  … ", "tool": "  ⚙ ", "result": "  ✓ ", "meta": "  · "}


def _short(text: str, limit: int = RESULT_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class EventPrinter:
    """Renders one turn's events: answer and filler stream inline, tool lines stand alone."""

    colour: bool = False
    answer: str = ""
    _open: str | None = field(default=None, repr=False)  # the kind of the unfinished line

    def paint(self, text: str, *, kind: str) -> str:
        code = STYLES.get(kind, "")
        return f"\033[{code}m{text}\033[0m" if self.colour and code and text else text

    def _segment(self, kind: str, text: str, *, prefix_kind: str | None = None) -> str:
        """`text` of `kind`, continuing the open line of the same kind or starting a new one."""
        out = ""
        if self._open != kind:
            if self._open is not None:
                out += "\n"
            label = PREFIXES.get(kind, "")
            out += self.paint(label, kind=prefix_kind or kind)
            self._open = kind
        return out + self.paint(text, kind=kind)

    def _line(self, kind: str, text: str) -> str:
        out = self._segment(kind, text)
        self._open = None
        return out + "\n"

    def feed(self, event: TurnEvent) -> str:
        match event:
            case RouteChosen(route=route):
                return self._line("meta", f"route: {route}")
            case Filler(text=text):
                return self._segment("filler", text)
            case AnswerDelta(text=text):
                self.answer += text
                return self._segment("answer", text, prefix_kind="bot")
            case ToolStarted(name=name, args=args):
                return self._line("tool", f"{name} {json.dumps(args, ensure_ascii=False)}")
            case ToolFinished(name=name, result=result, error=error):
                if error is not None:
                    return self._line("error", f"  ✗ {name}: {_short(error)}")
                return self._line("result", f"{name} → {_short(result or '')}")
            case Done(usage=usage, finish_reason=finish):
                cut = ", cut at the token limit" if finish == "length" else ""
                tokens = f"{usage.prompt_tokens}+{usage.completion_tokens} tokens{cut}"
                return self._close() + self._line("meta", tokens)
            case Failed(code=code, message=message):
                return self._close() + self._line("error", f"✗ {code}: {message}")
            case _:
                assert_never(event)

    def _close(self) -> str:
        if self._open is None:
            return ""
        self._open = None
        return "\n"


# --- back ends


class LocalChat:
    """Turns through an open Service, in this process."""

    empty_history = "nothing logged on this thread yet"

    def __init__(self, service: Service) -> None:
        self.service = service

    def turn(self, text: str, *, thread_id: str) -> AsyncIterator[TurnEvent]:
        request = TurnRequest(
            messages=(InputMessage("user", text),),
            thread_id=thread_id,
            front_end="demo",
        )
        return self.service.agent.run_turn(request)

    async def history(self, thread_id: str) -> list[dict[str, Any]]:
        """The thread's conversation log (written behind the turn, so flushed first)."""
        from lang_agent.conversations import read_thread

        await self.service.log.flush(within_s=5.0)
        return await read_thread(self.service.db, thread_id)


class RemoteChat:
    """Turns through a running server's OpenAI API, streamed with tool events."""

    # The API has no way to read a thread's log back: that is the viewer's (and its key's).
    empty_history = "no turns on this thread in this session (the viewer shows its whole log)"

    def __init__(self, client: httpx2.AsyncClient, *, url: str, key: str | None) -> None:
        self.client = client
        self.base = url.rstrip("/").removesuffix("/v1")
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.transcript: dict[str, list[dict[str, Any]]] = {}

    async def turn(self, text: str, *, thread_id: str) -> AsyncIterator[TurnEvent]:
        body = {
            "model": "lang-agent",
            "messages": [{"role": "user", "content": text}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "thread_id": thread_id,
            "events": True,
        }
        answer = ""
        url = f"{self.base}/v1/chat/completions"
        try:
            async with self.client.stream(
                "POST", url, json=body, headers=self.headers, timeout=STREAM_TIMEOUT
            ) as response:
                if response.status_code != 200:
                    yield _http_failure(response.status_code, await response.aread())
                    return
                content_type = response.headers.get("content-type", "")
                if not content_type.startswith("text/event-stream"):
                    got = content_type or "no content type"
                    yield Failed(BAD_RESPONSE, f"{url} answered {got}, not an event stream")
                    return
                async for event in events_from_sse(response.aiter_lines()):
                    if isinstance(event, AnswerDelta):
                        answer += event.text
                    yield event
        except httpx2.HTTPError as exc:
            yield Failed("connection_error", f"{url}: {exc or type(exc).__name__}")
            return
        log = self.transcript.setdefault(thread_id, [])
        log.append({"role": "user", "content": text, "is_filler": False})
        log.append({"role": "assistant", "content": answer, "is_filler": False})

    async def history(self, thread_id: str) -> list[dict[str, Any]]:
        """This session's turns on the thread (the server keeps its whole memory)."""
        return list(self.transcript.get(thread_id, []))


def _http_failure(status: int, raw: bytes) -> Failed:
    try:
        error = json.loads(raw)["error"]
        return Failed(str(error.get("code") or status), str(error.get("message") or ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return Failed(str(status), raw.decode("utf-8", "replace")[:200])


def _json_object(data: str) -> dict[str, Any] | None:
    """A frame's chunk, or None when the server sent something else."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


async def events_from_sse(lines: AsyncIterator[str]) -> AsyncIterator[TurnEvent]:
    """OpenAI chat.completion.chunk frames (with lang-agent's `events: true`) → TurnEvents."""
    finish, usage, model = "stop", Usage(), "lang-agent"
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = _json_object(data)
        if chunk is None:
            yield Failed(BAD_RESPONSE, f"a stream frame is not a JSON object: {_short(data, 80)}")
            return
        if "error" in chunk:
            error = chunk["error"] or {}
            yield Failed(str(error.get("code") or "error"), str(error.get("message") or ""))
            return
        model = chunk.get("model") or model
        marker = chunk.get("x_lang_agent") or {}
        kind = marker.get("kind")
        if kind == "route":
            yield RouteChosen(marker["route"])
        elif kind == "tool_started":
            yield ToolStarted(marker["id"], marker["name"], marker.get("args") or {})
        elif kind == "tool_finished":
            yield ToolFinished(
                marker["id"], marker["name"], marker.get("result"), marker.get("error")
            )
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                yield Filler(content) if kind == "filler" else AnswerDelta(content)
            finish = choice.get("finish_reason") or finish
        if chunk.get("usage"):
            tokens = chunk["usage"]
            usage = Usage(
                (ModelUsage(model, tokens["prompt_tokens"], tokens["completion_tokens"]),)
            )
    yield Done(usage, "length" if finish == "length" else "stop")


def history_text(rows: list[dict[str, Any]], *, printer: EventPrinter, empty: str) -> str:
    """A thread's logged messages as the chat shows them; `empty` says why there are none."""
    if not rows:
        return printer.paint(f"  · {empty}", kind="meta") + "\n"
    out = []
    for row in rows:
        role, content = row["role"], row.get("content") or ""
        if row.get("is_filler"):
            out.append(printer.paint(f"  … {content}", kind="filler"))
        elif role == "user":
            out.append(printer.paint("you › ", kind="you") + content)
        elif role == "assistant" and row.get("tool_calls"):
            for call in row["tool_calls"]:
                args = json.dumps(call.get("args") or {}, ensure_ascii=False)
                out.append(printer.paint(f"  ⚙ {call.get('name', '?')} {args}", kind="tool"))
        elif role == "assistant":
            out.append(printer.paint("bot › ", kind="bot") + content)
        elif role == "tool":
            name = row.get("tool_name") or ""
            out.append(printer.paint(f"  ✓ {name} → ", kind="result") + _short(content))
    return "\n".join(out) + "\n"
