"""The turn graph: router_call → chat_model_call | tool_model_call, compiled once."""

from __future__ import annotations

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from lang_agent.agent.nodes import chat_model_call, router_call, tool_model_call
from lang_agent.agent.state import TurnContext, TurnState


async def _route(state: TurnState) -> str:
    # A coroutine, not a plain function: LangGraph runs a plain one in a worker thread, a hop
    # (and a wait for the GIL under load) on every turn for a dict lookup.
    return state["route"]


def build_graph(*, checkpointer: BaseCheckpointSaver | None = None) -> CompiledStateGraph:
    builder = StateGraph(TurnState, context_schema=TurnContext)
    builder.add_node("router_call", router_call)
    builder.add_node("chat_model_call", chat_model_call)
    builder.add_node("tool_model_call", tool_model_call)
    builder.add_edge(START, "router_call")
    builder.add_conditional_edges(
        "router_call", _route, {"chat": "chat_model_call", "tool": "tool_model_call"}
    )
    builder.add_edge("chat_model_call", END)
    builder.add_edge("tool_model_call", END)
    return builder.compile(checkpointer=checkpointer, name="lang-agent")
