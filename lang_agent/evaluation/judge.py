"""The optional LLM judge: grades an answer against a case's reference, as structured output.

The judge is any chat model (`judge_model`, `[provider:]name`), asked through a function call
whose arguments are validated (`Verdict`: an integer score 1–5 and a reason); an answer that
does not parse is recorded as unscored, never guessed from free text. Scores are stored as
(score − 1) / 4, in 0..1. The judge does not decide `passed`; it is a separate metric.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from lang_agent.evaluation.dataset import EvalCase
from lang_agent.evaluation.results import CaseResult

logger = logging.getLogger(__name__)

JUDGE_TIMEOUT_S = 60.0
SYSTEM = (
    "You grade the answers of 小智, a voice assistant on a smart speaker. Answers are spoken, "
    "so they should be short, natural and in the user's language. Compare the assistant's "
    "answer with the reference answer: the facts and the action taken must agree; wording "
    "may differ. Score 5 = as good as the reference, 3 = partly right or clumsy, 1 = wrong, "
    "made up, or claims an action that did not happen. Answer only by calling the function."
)


class Verdict(BaseModel):
    """Grade the assistant's answer."""

    score: int = Field(ge=1, le=5, description="1 (wrong) to 5 (as good as the reference)")
    reason: str = Field(description="One short sentence: why this score.")


def judge_prompt(case: EvalCase, *, result: CaseResult) -> str:
    """The judge's user message for one case."""
    turns = "\n".join(f"User: {text}" for text in case.user_turns)
    calls = json.dumps(result.calls, ensure_ascii=False) if result.calls else "none"
    return (
        f"Conversation (the last user message is the one answered):\n{turns}\n\n"
        f"Tools the assistant called for it: {calls}\n\n"
        f"Reference answer: {case.answer.reference}\n\n"
        f"Assistant's answer: {result.answer or '(nothing)'}"
    )


async def judge_one(llm: Any, *, case: EvalCase, result: CaseResult) -> None:
    """Score one result in place (judge_score, judge_reason)."""
    structured = llm.with_structured_output(Verdict, method="function_calling", include_raw=True)
    messages = [("system", SYSTEM), ("human", judge_prompt(case, result=result))]
    try:
        async with asyncio.timeout(JUDGE_TIMEOUT_S):
            out = await structured.ainvoke(messages)
    except Exception as exc:  # noqa: BLE001 - the judge is optional: the case stays unscored
        # One line and no traceback: a judge that is down fails every case the same way, and
        # a traceback per case buried the run (its summary counts the failures).
        said = str(exc).strip().splitlines()
        why = f"{type(exc).__name__}: {said[0]}" if said else type(exc).__name__
        logger.warning("judge failed on case %s: %s", case.id, why)
        result.judge_reason = f"judge failed ({type(exc).__name__})"
        return
    verdict = out.get("parsed") if isinstance(out, dict) else None
    if not isinstance(verdict, Verdict):
        result.judge_reason = "the judge's answer did not parse"
        logger.warning("judge answer for case %s did not parse", case.id)
        return
    result.judge_score = (verdict.score - 1) / 4
    result.judge_reason = verdict.reason


async def judge_results(
    llm: Any, *, cases: Sequence[EvalCase], results: Sequence[CaseResult], concurrency: int
) -> int:
    """Judge every case that has a reference answer and did not fail; returns how many."""
    by_id = {case.id: case for case in cases}
    todo = [
        (by_id[r.case_id], r)
        for r in results
        if r.error is None and by_id.get(r.case_id) and by_id[r.case_id].answer.reference
    ]
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(case: EvalCase, result: CaseResult) -> None:
        async with gate:
            await judge_one(llm, case=case, result=result)

    async with asyncio.TaskGroup() as group:
        for case, result in todo:
            group.create_task(one(case, result))
    return len(todo)
