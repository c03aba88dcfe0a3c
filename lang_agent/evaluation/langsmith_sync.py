"""LangSmith, optional: upload an eval dataset idempotently and record a run as an experiment.

Only used when a LangSmith key is set (`LANGSMITH_API_KEY`) and asked for: the `langsmith`
package is imported here, lazily, and nothing reaches the network otherwise.

- Dataset: one example per case, inputs `{"case_id", "turns"}`, reference outputs the case's
  expectations, metadata `{"case_id", "category", "lang", "tags"}`. Examples are matched to
  cases by `metadata.case_id`: new cases are created, changed ones updated, others left alone.
- Experiment: `langsmith.aevaluate` over the run's examples. The target returns the result the
  local run already computed (no second agent run), and one evaluator reports its scores
  (route, tool precision and recall, arguments, no-tool, answer checks, judge, passed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

from lang_agent.evaluation.dataset import EvalCase
from lang_agent.evaluation.results import CaseResult

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "lang-agent-xiaozhi"


class LangSmithFailed(RuntimeError):
    """LangSmith could not be reached or refused a call. The message names the endpoint and
    langsmith's error class only: langsmith's own text shows part of the key."""


@contextlib.contextmanager
def _langsmith_errors(client: Any) -> Iterator[None]:
    from langsmith.utils import LangSmithError

    try:
        yield
    except LangSmithError as exc:
        raise LangSmithFailed(f"{type(exc).__name__} from {client.api_url}") from exc


def _client(api_key: str) -> Any:
    try:
        from langsmith import Client
    except ImportError as exc:  # pragma: no cover - langsmith ships with langchain-core
        raise RuntimeError(
            "the `langsmith` package is not installed: pip install langsmith"
        ) from exc
    return Client(api_key=api_key)


def example_for(case: EvalCase) -> dict[str, Any]:
    """A case as a LangSmith example (inputs, reference outputs, metadata)."""
    expected = case.model_dump(
        mode="json", include={"route", "tools", "allowed_tools", "answer"}, exclude_none=True
    )
    return {
        "inputs": {"case_id": case.id, "turns": case.user_turns},
        "outputs": expected,
        "metadata": {
            "case_id": case.id,
            "category": case.category,
            "lang": case.lang,
            "tags": list(case.tags),
        },
    }


def _differs(example: Any, wanted: dict[str, Any]) -> bool:
    # LangSmith adds its own metadata keys (dataset_split): compare only ours.
    metadata = example.metadata or {}
    ours = {key: metadata.get(key) for key in wanted["metadata"]}
    return (example.inputs, example.outputs, ours) != (
        wanted["inputs"],
        wanted["outputs"],
        wanted["metadata"],
    )


def _upload(client: Any, cases: Sequence[EvalCase], *, name: str) -> tuple[Any, dict[str, int]]:
    if client.has_dataset(dataset_name=name):
        dataset = client.read_dataset(dataset_name=name)
    else:
        dataset = client.create_dataset(name, description="lang-agent xiaozhi eval cases")
    known = {
        (example.metadata or {}).get("case_id"): example
        for example in client.list_examples(dataset_id=dataset.id)
    }
    counts = {"created": 0, "updated": 0, "unchanged": 0}
    new: list[dict[str, Any]] = []
    for case in cases:
        wanted = example_for(case)
        example = known.get(case.id)
        if example is None:
            new.append(wanted)
            counts["created"] += 1
        elif _differs(example, wanted):
            client.update_example(
                example.id,
                inputs=wanted["inputs"],
                outputs=wanted["outputs"],
                metadata=wanted["metadata"],
            )
            counts["updated"] += 1
        else:
            counts["unchanged"] += 1
    if new:
        client.create_examples(dataset_id=dataset.id, examples=new)
    return dataset, counts


def upload_dataset(cases: Sequence[EvalCase], *, api_key: str, name: str = DEFAULT_DATASET) -> str:
    """Create or update the LangSmith dataset `name`; returns what changed, as text.
    Raises LangSmithFailed when LangSmith cannot be reached or refuses."""
    client = _client(api_key)
    with _langsmith_errors(client):
        _, counts = _upload(client, cases, name=name)
    summary = ", ".join(f"{n} {what}" for what, n in counts.items())
    logger.info("LangSmith dataset %s: %s", name, summary)
    return f"LangSmith dataset {name!r}: {summary}"


def result_scores(result: CaseResult) -> dict[str, float | None]:
    """One case's scores by LangSmith feedback key (None: the case does not ask for it)."""
    tp, fp, fn = result.tool_true_pos, result.tool_false_pos, result.tool_false_neg
    checked = result.expected_tools is not None
    return {
        "passed": float(result.passed),
        "route_correct": None if result.route_ok is None else float(result.route_ok),
        "tool_precision": tp / (tp + fp) if checked and tp + fp else None,
        "tool_recall": tp / (tp + fn) if checked and tp + fn else None,
        "argument_accuracy": result.args_ok / result.args_checked if result.args_checked else None,
        "no_tool_correct": None if result.no_tool_ok is None else float(result.no_tool_ok),
        "answer_checks": float(not result.answer_failures) if result.answer_checked else None,
        "judge": result.judge_score,
    }


async def record_experiment(
    cases: Sequence[EvalCase],
    *,
    results: Sequence[CaseResult],
    api_key: str,
    dataset: str = DEFAULT_DATASET,
    prefix: str = "lang-agent",
    metadata: dict[str, Any] | None = None,
) -> str:
    """Upload the cases (idempotent), then record the run as an experiment; returns its name.
    Raises LangSmithFailed when LangSmith cannot be reached or refuses."""
    client = _client(api_key)
    with _langsmith_errors(client):
        return await _record(client, cases, results=results, dataset=dataset, prefix=prefix,
                             metadata=metadata)  # fmt: skip


async def _record(
    client: Any,
    cases: Sequence[EvalCase],
    *,
    results: Sequence[CaseResult],
    dataset: str,
    prefix: str,
    metadata: dict[str, Any] | None,
) -> str:
    from langsmith import aevaluate

    by_id = {r.case_id: r for r in results}
    ds, _ = await asyncio.to_thread(_upload, client, cases, name=dataset)
    examples = await asyncio.to_thread(
        lambda: [
            e
            for e in client.list_examples(dataset_id=ds.id)
            if (e.metadata or {}).get("case_id") in by_id
        ]
    )

    async def target(inputs: dict[str, Any]) -> dict[str, Any]:
        result = by_id[inputs["case_id"]]
        return {
            "answer": result.answer,
            "route": result.route,
            "calls": result.calls,
            "error": result.error,
            "latency_ms": result.latency_ms,
            "ttft_ms": result.ttft_ms,
            "scores": result_scores(result),
        }

    def scores(outputs: dict[str, Any]) -> dict[str, Any]:
        """The local run's scores for one example, as LangSmith feedback."""
        found = [{"key": k, "score": v} for k, v in outputs["scores"].items() if v is not None]
        return {"results": found}

    experiment = await aevaluate(
        target,
        data=examples,
        evaluators=[scores],
        experiment_prefix=prefix,
        metadata=metadata or {},
        max_concurrency=4,
        client=client,
    )
    name = str(getattr(experiment, "experiment_name", prefix))
    logger.info("LangSmith experiment %s recorded (%d examples)", name, len(examples))
    return name
