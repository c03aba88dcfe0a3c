"""What the stress test sends and how it reads the answers: turn texts, request bodies, SSE.

Every turn's user text carries a unique marker (`（代号 qx…）`), so the simulator's call log
(GET /_sim/calls) can be matched to the turn that caused each call. With the `original`
simulator profile a chat turn's answer is about 37 pieces (≈ 0.97 s) and the router's ≈ 0.29 s.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from typing import Any, Literal

from fastapi_server.wire_types import session_thread
from lang_agent.jsonwire import loads

Front = Literal["openai", "dashscope"]
FRONTS: tuple[Front, ...] = ("dashscope", "openai")
DASHSCOPE_APP_ID = "bench"

# No intent keywords (light, volume, time …): the simulated router answers `chat`.
CHAT_TEXT = (
    "请给我讲一个关于小猫和小狗在森林里一起寻找宝藏的温暖故事，故事要简短有趣，"
    "适合睡前讲给孩子听，最好还能讲讲它们之间的友谊，谢谢你"
)
# Intents the simulator routes to the built-in tools (clock, calculator).
TOOL_TEXTS = ("现在几点了？", "帮我算一下三百二十乘以十五等于多少")
CLAUSE_END = re.compile(r"[，,。；;！!？?\n]")


def marker(number: int) -> str:
    """A unique, intent-free tag: letters only, so no number or keyword reaches the intents."""
    letters = string.ascii_lowercase
    code = ""
    while True:
        number, digit = divmod(number, 26)
        code = letters[digit] + code
        if number == 0:
            break
    return f"（代号 qx{code}）"


@dataclass(frozen=True)
class Job:
    """One turn to send."""

    front: Front
    stream: bool
    thread_id: str
    text: str
    kind: Literal["chat", "tool"]

    @property
    def server_thread(self) -> str:
        """The thread the server keys the turn by (and logs it under)."""
        if self.front == "openai":
            return self.thread_id
        return session_thread(DASHSCOPE_APP_ID, self.thread_id)


def turn_text(number: int, *, kind: str) -> str:
    base = CHAT_TEXT if kind == "chat" else TOOL_TEXTS[number % len(TOOL_TEXTS)]
    return base + marker(number)


def build_request(job: Job, *, key: str | None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(path, JSON body, headers) of the job for its front end."""
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if job.front == "openai":
        body: dict[str, Any] = {
            "model": "lang-agent",
            "messages": [{"role": "user", "content": job.text}],
            "stream": job.stream,
            "thread_id": job.thread_id,
        }
        return "/v1/chat/completions", body, headers
    if job.stream:
        headers |= {"x-dashscope-sse": "enable", "accept": "text/event-stream"}
    body = {"input": {"prompt": job.text, "session_id": job.thread_id}, "parameters": {}}
    return f"/api/v1/apps/{DASHSCOPE_APP_ID}/completion", body, headers


class StreamReader:
    """Reads one SSE response as it arrives: when the first text and the first comma-class
    clause came, whether it ended properly, and the whole text."""

    def __init__(self, front: Front, *, started: float) -> None:
        self.front = front
        self.started = started
        self.first_text: float | None = None  # seconds after `started`
        self.first_clause: float | None = None
        self.text = ""
        self.finished = False
        self.error: str | None = None
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        while (end := self._buf.find(b"\n\n")) >= 0:
            event, self._buf = self._buf[:end], self._buf[end + 2 :]
            self._event(event.decode("utf-8", "replace"))

    def _event(self, event: str) -> None:
        name = ""
        data = ""
        for line in event.split("\n"):
            if line.startswith("data:"):
                data += line[5:].lstrip(" ")
            elif line.startswith("event:"):
                name = line[6:].strip()
        if not data:
            return
        if data == "[DONE]":
            self.finished = self.error is None
            return
        try:
            body = loads(data)
        except ValueError:
            self.error = f"bad frame: {data[:80]}"
            return
        if name == "error" or (isinstance(body, dict) and "error" in body):
            self.error = f"error frame: {data[:200]}"
            return
        self._text(body)

    def _text(self, body: dict[str, Any]) -> None:
        if self.front == "openai":
            piece = ""
            for choice in body.get("choices") or ():
                piece += (choice.get("delta") or {}).get("content") or ""
            self._grow(self.text + piece)
        else:
            output = body.get("output") or {}
            self._grow(output.get("text") or self.text)  # cumulative
            if output.get("finish_reason") not in (None, "null"):
                self.finished = self.error is None

    def _grow(self, text: str) -> None:
        if text and self.first_text is None:
            self.first_text = time.monotonic() - self.started
        if self.first_clause is None and CLAUSE_END.search(text):
            self.first_clause = time.monotonic() - self.started
        self.text = text


def completion_text(front: Front, body: Any) -> str:
    """The answer text of a non-stream response body ('' when it has none)."""
    if not isinstance(body, dict):
        return ""
    if front == "openai":
        choices = body.get("choices") or [{}]
        return str(((choices[0] or {}).get("message") or {}).get("content") or "")
    return str((body.get("output") or {}).get("text") or "")
