"""The floor server: the least a server on this machine does for a turn, measured beside ours.

It answers the OpenAI front end's chat completions with only what a turn cannot do without:
the router's call and the chat model's streamed answer, started together as the engine does
(speculation), over the engine's own upstream transport and SSE response, with the engine's
prompts and route tool. No LangGraph, memory, capture, conversation log or auth. Its overhead
at a concurrency level is what the load generator, the simulator, uvicorn and the upstream
calls cost here; ours above it is the engine's (`stress_test.py --scenario floor`).

    python -m lang_agent.bench.floor --port 8600 --sim-url http://127.0.0.1:8000/v1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from langchain_core.messages import HumanMessage, SystemMessage

from fastapi_server.serve import uvicorn_config
from fastapi_server.sse import EventStream, data_frame
from lang_agent import loop
from lang_agent.agent.calls import tool_schema
from lang_agent.agent.nodes import RouteDecision
from lang_agent.bench.stack import ROOT
from lang_agent.jsonwire import loads
from lang_agent.llm.chat_stream import Reply, request_body, stream_chat
from lang_agent.llm.factory import ModelSpec
from lang_agent.llm.http1 import Http1Transport
from lang_agent.prompts import Prompts

MAX_TOKENS = 512
TIMEOUTS = httpx2.Timeout(60.0)


class Floor:
    """The two upstream calls of a chat turn, as the engine makes them."""

    def __init__(self, sim_url: str) -> None:
        self.transport = Http1Transport()
        self.prompts = Prompts.load(ROOT / "configs" / "route_sys_prompts")
        self.router = ModelSpec("router", "sim", "sim-router", sim_url, None)
        self.chat = ModelSpec("chat", "sim", "sim-chat", sim_url, None)
        self.route_tool = tool_schema(RouteDecision)

    def _call(self, spec: ModelSpec, body: dict[str, Any]) -> AsyncIterator[str]:
        return stream_chat(self.transport, spec, body, Reply(), timeouts=TIMEOUTS, retries=0)

    async def _route(self, text: str) -> None:
        messages = [SystemMessage(self.prompts.render("route_prompt")), HumanMessage(text)]
        body = request_body(
            self.router, messages, max_tokens=MAX_TOKENS, tools=[self.route_tool],
            tool_choice="RouteDecision",
        )  # fmt: skip
        async for _piece in self._call(self.router, body):
            pass

    async def answer(self, text: str) -> AsyncIterator[str]:
        """The chat answer's pieces; the router's call runs beside it, awaited before the
        first piece is given out, as the engine holds a speculative answer for its route."""
        messages = [SystemMessage(self.prompts.render("chat_prompt")), HumanMessage(text)]
        body = request_body(self.chat, messages, max_tokens=MAX_TOKENS)
        route = asyncio.ensure_future(self._route(text))
        try:
            pieces = self._call(self.chat, body)
            async with contextlib.aclosing(pieces):
                first = await anext(pieces, "")
                await route
                yield first
                async for piece in pieces:
                    yield piece
        finally:
            route.cancel()


def create_app(sim_url: str) -> FastAPI:
    floor = Floor(sim_url)
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = loads(await request.body())
        text = str(body["messages"][-1]["content"])
        answer_id = f"chatcmpl-{uuid.uuid4().hex}"
        if not body.get("stream"):
            content = "".join([piece async for piece in floor.answer(text)])
            message = {"role": "assistant", "content": content}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            return JSONResponse({"id": answer_id, "object": "chat.completion",
                                 "created": int(time.time()), "model": "floor",
                                 "choices": [choice]})  # fmt: skip
        return EventStream(_frames(answer_id, floor.answer(text)))

    return app


async def _frames(answer_id: str, pieces: AsyncIterator[str]) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return data_frame({"id": answer_id, "object": "chat.completion.chunk", "created": 0,
                           "model": "floor", "choices": [choice]})  # fmt: skip

    yield chunk({"role": "assistant", "content": ""})
    async for piece in pieces:
        yield chunk({"content": piece})
    yield chunk({}, "stop")
    yield "data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--sim-url", required=True, help="the simulator's base URL (…/v1)")
    args = parser.parse_args()
    config = uvicorn_config(
        create_app(args.sim_url), host="127.0.0.1", port=args.port, grace_s=1, read_timeout_s=30
    )
    # As the service does: a full collection over the modules it imports paused every turn in
    # flight for about 110 ms, once or twice a cell.
    loop.freeze_start_up()
    loop.run_until_stopped(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
