"""Running eval cases through the turn engine, concurrently and bounded, into CaseResults.

Each case gets its own thread id and its own device id (`eval-<run>-<case>`): the thread keeps
the memory of a multi-turn case, and the device id (passed as `TurnRequest.metadata`) gives the
case a fresh simulated speaker in the MCP device simulator. The thread's memory is forgotten
once the case is scored; its conversation log stays (front end `eval`) for the viewer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import assert_never

from lang_agent.agent.events import (
    AnswerDelta,
    Done,
    Failed,
    Filler,
    InputMessage,
    RouteChosen,
    ToolFinished,
    ToolStarted,
    TurnRequest,
)
from lang_agent.agent.runner import Agent
from lang_agent.evaluation.checks import Call
from lang_agent.evaluation.dataset import EvalCase
from lang_agent.evaluation.results import CaseResult, Trace, score_case
from lang_agent.llm.models_catalog import ModelCatalog

logger = logging.getLogger(__name__)

FRONT_END = "eval"
Progress = Callable[[CaseResult], None]


def case_key(case: EvalCase, *, run_id: str) -> str:
    """The case's thread id and device id in this run."""
    return f"eval-{run_id}-{case.id}"


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 1)


async def _turn(
    agent: Agent, text: str, *, key: str, profile: str | None, trace: Trace, catalog: ModelCatalog
) -> None:
    """Run one turn into `trace`: the events replace the previous turn's, usage adds up."""
    request = TurnRequest(
        messages=(InputMessage("user", text),),
        thread_id=key,
        profile=profile,
        front_end=FRONT_END,
        metadata={"device_id": key},
    )
    trace.route, trace.calls, trace.tool_errors, trace.error = None, [], [], None
    answer: list[str] = []
    filler: list[str] = []
    started = time.perf_counter()
    first: float | None = None
    async for event in agent.run_turn(request):
        match event:
            case RouteChosen(route=route):
                trace.route = route
            case Filler(text=piece):
                first = time.perf_counter() if first is None else first
                filler.append(piece)
            case AnswerDelta(text=piece):
                first = time.perf_counter() if first is None else first
                answer.append(piece)
            case ToolStarted(name=name, args=args):
                trace.calls.append(Call(name, dict(args)))
            case ToolFinished(name=name, error=error):
                if error is not None:
                    trace.tool_errors.append(f"{name}: {error}")
            case Done(usage=usage):
                trace.prompt_tokens += usage.prompt_tokens
                trace.completion_tokens += usage.completion_tokens
                for model in usage.models:
                    if model.model not in trace.models:
                        trace.models.append(model.model)
                    cost = catalog.cost(
                        model.model, model.input_tokens, model.output_tokens, model.cached_tokens
                    )
                    if cost is not None:
                        trace.cost = (trace.cost or 0.0) + cost
            case Failed(code=code, message=message):
                trace.error = f"{code}: {message}"
            case _:
                assert_never(event)
    trace.latency_ms = _ms(started, time.perf_counter())
    trace.ttft_ms = _ms(started, first)
    trace.answer, trace.filler = "".join(answer), "".join(filler)


async def run_case(
    agent: Agent,
    *,
    case: EvalCase,
    run_id: str,
    catalog: ModelCatalog,
    profile: str | None = None,
) -> CaseResult:
    """Run a case's turns in order on its own thread and device, then score the last one."""
    key = case_key(case, run_id=run_id)
    trace = Trace()
    try:
        for text in case.user_turns:
            await _turn(agent, text, key=key, profile=profile, trace=trace, catalog=catalog)
            if trace.error is not None:
                break  # a failed set-up turn leaves nothing sensible to score
    except Exception as exc:  # the edge of a case: one broken case must not stop the run
        logger.exception("eval case %s failed", case.id)
        trace.error = f"eval_error: {type(exc).__name__}"
    finally:
        try:
            await agent.forget(key)
        except Exception:  # the edge of a case: clean-up must not lose the result
            logger.exception("eval case %s: could not forget thread %s", case.id, key)
    return score_case(case, trace=trace)


async def run_cases(
    agent: Agent,
    *,
    cases: Sequence[EvalCase],
    run_id: str,
    catalog: ModelCatalog,
    concurrency: int = 8,
    profile: str | None = None,
    on_result: Progress | None = None,
) -> list[CaseResult]:
    """Every case, at most `concurrency` at a time; results in the cases' order."""
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(case: EvalCase) -> CaseResult:
        async with gate:
            result = await run_case(
                agent, case=case, run_id=run_id, catalog=catalog, profile=profile
            )
        if on_result is not None:
            on_result(result)
        return result

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(case), name=f"eval-{case.id}") for case in cases]
    return [task.result() for task in tasks]
