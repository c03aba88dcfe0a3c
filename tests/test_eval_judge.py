"""The LLM judge (lang_agent/evaluation/judge.py): a judge that fails leaves cases unscored,
each with one log line, and the summary counts them."""

from __future__ import annotations

import logging

from lang_agent.evaluation.dataset import EvalCase
from lang_agent.evaluation.judge import judge_results
from lang_agent.evaluation.metrics import summarise
from lang_agent.evaluation.results import Trace, score_case


class DownJudge:
    """A judge model whose every call fails, as one behind an unreachable base URL does."""

    def with_structured_output(self, *_: object, **__: object) -> DownJudge:
        return self

    async def ainvoke(self, _messages: object) -> None:
        raise ConnectionError("Connection refused\nwhile calling http://127.0.0.1:1/v1")


def referenced(case_id: str) -> EvalCase:
    return EvalCase.model_validate(
        {"id": case_id, "category": "chitchat", "lang": "en", "input": "hi",
         "answer": {"reference": "Hello!"}}
    )  # fmt: skip


async def test_a_failing_judge_logs_one_line_a_case_without_a_traceback(caplog):
    cases = [referenced("a"), referenced("b")]
    results = [score_case(case, trace=Trace(route="chat", answer="Hi!")) for case in cases]
    with caplog.at_level(logging.WARNING, logger="lang_agent.evaluation.judge"):
        judged = await judge_results(DownJudge(), cases=cases, results=results, concurrency=2)
    assert judged == 2
    records = [r for r in caplog.records if r.name == "lang_agent.evaluation.judge"]
    assert sorted(r.getMessage() for r in records) == [
        f"judge failed on case {case_id}: ConnectionError: Connection refused"
        for case_id in ("a", "b")
    ]
    assert all(r.exc_info is None for r in records)  # each was a whole traceback
    assert summarise(results).judge_failed == 2
