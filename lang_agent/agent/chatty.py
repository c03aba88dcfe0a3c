"""The chatty filler: a cancellable task that keeps the speaker talking while tools run."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from lang_agent.agent.calls import model_name, stream_reply, text_of
from lang_agent.agent.events import Filler
from lang_agent.agent.state import LogEntry, TurnContext

logger = logging.getLogger(__name__)

MAX_PHRASES = 3
REPEAT_AFTER_S = 4.0  # a long tool earns another short phrase after this much silence
FINISH_PHRASE_S = 1.5  # how long the answer waits for a phrase already being spoken
# Told to the filler model with each phrase after the first, so a long tool does not hear the
# same phrase three times.
SAID_NOTE = "\n\n你已经说过{said}，工具还在执行：换一句不同的话，表示还在处理。"


class FillerTask:
    """Streams short filler phrases until `finish()`; a phrase already begun is completed
    (speech cannot be retracted), one not yet begun is dropped."""

    def __init__(self, ctx: TurnContext, *, user_text: str) -> None:
        self.ctx = ctx
        self.user_text = user_text
        self._stop = asyncio.Event()
        self._speaking = False
        self._said: list[str] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"filler-{self.ctx.turn_id}")

    async def finish(self) -> None:
        """Stop filling; return once nothing more will be said."""
        self._stop.set()
        task = self._task
        if task is not None and not task.done() and self._speaking:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), FINISH_PHRASE_S)
        await self.cancel()

    async def cancel(self) -> None:
        """Stop at once, mid-phrase too: the turn is over."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancel aimed at the caller.
            await asyncio.wait([self._task])

    async def _run(self) -> None:
        delay = self.ctx.deps.settings.filler_delay_ms / 1000
        try:
            if delay and await self._stopped_within(delay):
                return
            for _ in range(MAX_PHRASES):
                await self._phrase()
                if await self._stopped_within(REPEAT_AFTER_S):
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the filler is decoration: its failure must never fail the turn
            logger.exception("filler failed in turn %s", self.ctx.turn_id)

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    def _messages(self) -> list[BaseMessage]:
        system = self.ctx.deps.prompt("chatty_prompt")
        if self._said:
            system += SAID_NOTE.format(said="".join(f"“{phrase}”" for phrase in self._said))
        return [SystemMessage(system), HumanMessage(self.user_text)]

    async def _phrase(self) -> None:
        pieces: list[str] = []

        def speak(text: str) -> Filler:
            self._speaking = True
            pieces.append(text)
            return Filler(text)

        try:
            await stream_reply(self.ctx, "chatty", self._messages(), speak=speak)
        finally:
            self._speaking = False
            if pieces:
                self._said.append(text_of("".join(pieces)))
                self.ctx.log.append(
                    LogEntry(
                        "assistant",
                        self._said[-1],
                        is_filler=True,
                        model=model_name(self.ctx, "chatty"),
                    )
                )
