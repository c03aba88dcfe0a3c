"""Evaluating the agent on a dataset of xiaozhi cases: scripts/eval.py and make_eval_dataset.py."""

from lang_agent.evaluation.dataset import (
    AnswerChecks,
    DatasetError,
    EvalCase,
    ToolExpectation,
    load_cases,
    select_cases,
    write_cases,
)
from lang_agent.evaluation.evaluate import EvalOptions, EvalOutcome, evaluate
from lang_agent.evaluation.metrics import Metrics, RunDiff, diff_runs, summarise
from lang_agent.evaluation.results import CaseResult, Trace, score_case

__all__ = [
    "AnswerChecks",
    "CaseResult",
    "DatasetError",
    "EvalCase",
    "EvalOptions",
    "EvalOutcome",
    "Metrics",
    "RunDiff",
    "ToolExpectation",
    "Trace",
    "diff_runs",
    "evaluate",
    "load_cases",
    "score_case",
    "select_cases",
    "summarise",
    "write_cases",
]
