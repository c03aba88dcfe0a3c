"""The speculative chat answer: started while the router decides, spoken only on the chat route;
and how a model call started ahead of its node is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from langchain_core.messages import AIMessage, BaseMessage

from lang_agent.agent.calls import stream_reply
from lang_agent.agent.events import AnswerDelta
from lang_agent.agent.state import TurnContext


class SpeculativeChat:
    """Time to first text becomes max(router, chat first token) instead of their sum. Text is
    held until `answer()`; on the tool route `drop()` cancels the call and `discard()` also waits
    for it to end."""

    def __init__(self, ctx: TurnContext, messages: Sequence[BaseMessage]) -> None:
        self.ctx = ctx
        self._held: list[str] = []
        self._released = False
        self._task = asyncio.create_task(
            stream_reply(ctx, "chat", messages, speak=self._speak),
            name=f"speculative-chat-{ctx.turn_id}",
        )

    def _speak(self, text: str) -> AnswerDelta | None:
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
        """Cancel the call without waiting for it: the tool route goes on at once."""
        self._task.add_done_callback(_retrieve)
        self._task.cancel()

    async def discard(self) -> None:
        await cancel_call(self._task)


def _retrieve(task: asyncio.Task[AIMessage]) -> None:
    """Take a dropped call's outcome, so its failure is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()


async def cancel_call(task: asyncio.Task[AIMessage]) -> None:
    """Cancel a model call started ahead and wait for it to wind down."""
    task.cancel()
    await asyncio.wait([task])
    _retrieve(task)
