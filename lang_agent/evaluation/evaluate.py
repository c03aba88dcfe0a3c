"""One eval run end to end: load and filter cases, open the service, run, judge, report, diff.

`evaluate(settings, options)` is what scripts/eval.py calls. With the simulator as the model
(no provider key) it starts its own simulator, with `options.sim_script` as its script, so a
run is deterministic and needs nothing outside this process but Postgres (embedded when
CONN_STR is empty) and the MCP servers of `settings.mcp_config`.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx2
import psycopg

from lang_agent.agent.profiles import load_profiles
from lang_agent.db import CommandError, reach
from lang_agent.evaluation.dataset import DatasetError, EvalCase, load_cases, select_cases
from lang_agent.evaluation.judge import judge_results
from lang_agent.evaluation.metrics import Metrics, RunDiff, diff_runs, summarise
from lang_agent.evaluation.report import (
    RunInfo,
    console_summary,
    find_previous,
    read_run,
    write_run,
)
from lang_agent.evaluation.results import CaseResult
from lang_agent.evaluation.runner import run_cases
from lang_agent.llm.factory import simulated_notice, uses_sim
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.llm.sim_script import Script
from lang_agent.service import Service, open_service
from lang_agent.settings import CONFIGS, ROOT, Settings

logger = logging.getLogger(__name__)

DEFAULT_DATASET = CONFIGS / "eval" / "xiaozhi.jsonl"
DEFAULT_OUT = Path("eval_results")


class EvalError(ValueError):
    """A run that cannot start as asked (an unknown profile, LangSmith without a key, a
    database that refuses us, a missing prompt or MCP config, an unusable --out)."""


@dataclass
class EvalOptions:
    """What to evaluate and where to write it; settings say with which models and prompts."""

    dataset: Path = DEFAULT_DATASET
    selection: str = ""  # a --filter expression, see dataset.select_cases
    limit: int | None = None
    out_root: Path = DEFAULT_OUT
    concurrency: int | None = None  # None: settings.eval_concurrency
    profile: str | None = None  # a pipeline profile of configs/profiles.json
    sim_script: Script | None = None  # scripted simulator replies, see llm/sim_script.py
    langsmith: bool = False
    langsmith_dataset: str = "lang-agent-xiaozhi"
    diff: bool = True

    def __post_init__(self) -> None:
        # As the command line refuses them: a limit of -1 would drop the last case unsaid.
        for name in ("limit", "concurrency"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}")


@dataclass
class EvalOutcome:
    out: Path
    results: list[CaseResult]
    metrics: Metrics
    info: RunInfo
    diff: RunDiff | None
    files: dict[str, Path] = field(default_factory=dict)
    text: str = ""  # the one-screen console summary


def pick_cases(options: EvalOptions) -> list[EvalCase]:
    every = load_cases(options.dataset)
    if not every:  # not the filter's fault, as "no case matches" would say
        raise DatasetError(f"{options.dataset}: the dataset has no cases")
    cases = select_cases(every, expression=options.selection)
    if options.limit is not None:
        cases = cases[: options.limit]
    if not cases:
        raise DatasetError(f"{options.dataset}: no case matches the filter {options.selection!r}")
    return cases


def shown_path(path: Path) -> str:
    """A path as reports show it: relative to the project when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def reserve_run_dir(root: Path) -> Path:
    """A new, empty eval_results/<YYYYmmdd-HHMMSS> (-2, -3… when that second is taken);
    EvalError when it cannot be made."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while True:
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            n += 1
            path = root / f"{stamp}-{n}"
        except OSError as exc:
            raise EvalError(f"cannot write results under {root} ({exc.strerror})") from exc


@contextlib.contextmanager
def removed_unless_finished(out: Path) -> Iterator[None]:
    """Remove the run directory `out` when the block does not finish (a failed start, Ctrl-C):
    it would be empty or half written, a run that did not happen."""
    try:
        yield
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise


@contextlib.asynccontextmanager
async def simulated(
    settings: Settings, *, script: Script | None, models: list[str]
) -> AsyncIterator[Settings]:
    """Settings whose simulator answers with `script`: an in-process simulator when the roles
    or the profile's `models` use the sim and none is running; a running one (`sim_url`) gets
    the script posted and cleared afterwards."""
    if not uses_sim(settings, models=models):
        if script is not None:
            logger.warning("--sim-script ignored: no role uses the simulator")
        yield settings
        return
    if settings.sim_url is None:
        from lang_agent.llm.sim import Simulator

        simulator = Simulator(script=script)
        url = await simulator.start(host="127.0.0.1", port=0)
        logger.warning("%s", simulated_notice(settings, where=f"the built-in simulator at {url}"))
        try:
            yield settings.model_copy(update={"sim_url": url})
        finally:
            await simulator.stop()
        return
    if script is None:
        yield settings
        return
    control = f"{settings.sim_url.rstrip('/').removesuffix('/v1')}/_sim/script"
    async with httpx2.AsyncClient(timeout=10) as client:
        (await client.post(control, json=script.as_dict())).raise_for_status()
        try:
            yield settings
        finally:
            await client.delete(control)


# What stops the service from starting and is the user's to fix: a missing prompt or MCP config
# file (OSError, ValueError), a database lost between the probe and the pool (psycopg.Error).
STARTUP_ERRORS = (OSError, ValueError, psycopg.Error)


@contextlib.asynccontextmanager
async def started_service(settings: Settings) -> AsyncIterator[Service]:
    """open_service, with a failure to start as a one-line EvalError. One connection tries the
    database first: one that refuses us or stays silent fails within db_timeout_s, where the
    pool would wait 30 s and end in a PoolTimeout."""
    try:
        await reach(settings)
    except CommandError as exc:
        raise EvalError(str(exc)) from exc
    async with contextlib.AsyncExitStack() as stack:
        try:
            service = await stack.enter_async_context(open_service(settings))
        except STARTUP_ERRORS as exc:
            raise EvalError(f"cannot start the agent: {exc}") from exc
        yield service


def _diff_with_previous(
    root: Path, *, out: Path, info: RunInfo, results: list[CaseResult], metrics: Metrics
) -> RunDiff | None:
    previous = find_previous(root, exclude=out, info=info)
    if previous is None:
        return None
    before, before_metrics = read_run(previous.path)
    return diff_runs(
        before,
        current=results,
        previous_name=previous.path.name,
        previous_metrics=before_metrics,
        current_metrics=metrics,
        comparable=previous.comparable,
    )


def _models(profile_models: dict[str, str], specs: dict) -> dict[str, str]:
    shown = {}
    for role, spec in specs.items():
        override = profile_models.get(role)
        shown[role] = override or f"{spec.provider}:{spec.model}"
    return shown


async def evaluate(
    settings: Settings,
    *,
    options: EvalOptions,
    on_result: Callable[[CaseResult], None] | None = None,
) -> EvalOutcome:
    """Run the selected cases and write `options.out_root/<timestamp>/`; see the module doc."""
    if options.langsmith and settings.langsmith_api_key is None:
        raise EvalError("recording in LangSmith needs LANGSMITH_API_KEY")
    profile_models: list[str] = []
    if options.profile:
        try:
            known = load_profiles(settings.profiles_file, default=settings.default_profile)
        except ValueError as exc:  # the file is broken, not the request
            raise EvalError(str(exc)) from exc
        if options.profile not in known:
            raise EvalError(f"unknown profile {options.profile!r} (see {settings.profiles_file})")
        profile_models = list(known[options.profile].models.values())
    cases = pick_cases(options)
    concurrency = options.concurrency or settings.eval_concurrency
    started = datetime.now().astimezone()
    clock = time.perf_counter()
    # Made before the agent starts: results that cannot be written stop the run, not get lost.
    out = reserve_run_dir(options.out_root)
    run_id = out.name
    # Thread and device ids also carry a random part: two runs in one second never share one.
    run_key = f"{run_id}-{uuid.uuid4().hex[:6]}"
    with removed_unless_finished(out):
        async with (
            simulated(settings, script=options.sim_script, models=profile_models) as settings,
            started_service(settings) as service,
        ):
            agent = service.agent
            catalog = ModelCatalog.load(settings.models_file)
            results = await run_cases(
                agent,
                cases=cases,
                run_id=run_key,
                catalog=catalog,
                concurrency=concurrency,
                profile=options.profile,
                on_result=on_result,
            )
            if settings.judge_model:
                llm = agent.deps.models.model("chat", model=settings.judge_model)
                await judge_results(llm, cases=cases, results=results, concurrency=concurrency)
            info = RunInfo(
                run_id=run_id,
                started=started.isoformat(timespec="seconds"),
                duration_s=round(time.perf_counter() - clock, 2),
                dataset=shown_path(options.dataset),
                selection=options.selection,
                limit=options.limit,
                models=_models(agent.profile(options.profile).models, agent.deps.models.specs),
                profile=options.profile,
                judge_model=settings.judge_model,
                currency=catalog.currency,
            )
        metrics = summarise(results)
        diff = None
        if options.diff:
            diff = _diff_with_previous(
                options.out_root, out=out, info=info, results=results, metrics=metrics
            )
        if options.langsmith and settings.langsmith_api_key is not None:
            from lang_agent.evaluation.langsmith_sync import LangSmithFailed, record_experiment

            try:
                info.langsmith = await record_experiment(
                    cases,
                    results=results,
                    api_key=settings.langsmith_api_key.get_secret_value(),
                    dataset=options.langsmith_dataset,
                    prefix=f"lang-agent-{run_id}",
                    metadata={"run_id": run_id, "models": info.models, "filter": options.selection},
                )
            except LangSmithFailed as exc:  # the run's own results are written all the same
                logger.warning("the run was not recorded in LangSmith: %s", exc)
        files = write_run(out, results=results, metrics=metrics, info=info, diff=diff)
    text = console_summary(metrics, results=results, info=info, diff=diff, out=out)
    return EvalOutcome(out, results, metrics, info, diff, files, text)
