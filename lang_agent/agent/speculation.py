"""The speculative chat answer: started while the router decides, spoken only on the chat route."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage

from lang_agent.agent.calls import stream_reply
from lang_agent.agent.events import AnswerDelta
from lang_agent.agent.state import TurnContext

DROP_BACKSTOP_S = 30.0


class SpeculativeChat:
    """Time to first text becomes max(router, chat first token) instead of their sum. Text is
    held until `answer()`; on the tool route `drop()` ends the call and `discard()` cancels it."""

    def __init__(self, ctx: TurnContext, messages: Sequence[BaseMessage]) -> None:
        self.ctx = ctx
        self._held: list[str] = []
        self._released = False
        self._dropped = False
        self._task = asyncio.create_task(
            stream_reply(ctx, "chat", messages, speak=self._speak),
            name=f"speculative-chat-{ctx.turn_id}",
        )

    def _speak(self, text: str) -> AnswerDelta | None:
        if self._dropped:
            raise SpeculationDropped
        if self._released:
            return AnswerDelta(text)
        self._held.append(text)
        return None

    async def answer(self) -> AIMessage:
        self._released = True
        for text in self._held:
            self.ctx.say(AnswerDelta(text))
        self._held.clear()
        return await self._task

    def drop(self) -> None:
        """End the call without waiting for it (the tool route goes on at once).

        Not by cancelling: a call cancelled just as its response arrives leaks its pooled
        connection in httpcore (encode/httpcore#1093), one per tool turn. The call stops at its
        next piece instead, leaving the response through its context manager; a cancel after
        DROP_BACKSTOP_S bounds a call that never sends one."""
        self._dropped = True
        self._task.add_done_callback(_retrieve)
        backstop = asyncio.get_running_loop().call_later(DROP_BACKSTOP_S, self._task.cancel)
        self._task.add_done_callback(lambda _: backstop.cancel())

    async def discard(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved, so a failed guess is not logged as unhandled


class SpeculationDropped(Exception):
    """Raised inside a dropped speculative call to end its stream at the next piece."""


def _retrieve(task: asyncio.Task[AIMessage]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so a failed guess is not logged as unhandled
