"""Evaluate the agent on the xiaozhi eval dataset and say, in one screen, if it got better or worse.

    python scripts/eval.py                                # the current default configuration
    python scripts/eval.py --filter category=device,tag=calc --limit 20
    python scripts/eval.py --set chat_model=ali:qwen-max --set tool_model=ali:qwen-max
    python scripts/eval.py --config kimi.env              # settings from another .env file
    python scripts/eval.py --set prompts_dir=my_prompts/  # another prompt set
    python scripts/eval.py --profile tool_node            # a profile of configs/profiles.json
    python scripts/eval.py --judge-model ali:qwen-plus    # also score answers with an LLM judge
    python scripts/eval.py --sim-script mistakes.json     # make the simulator err on purpose
    LANGSMITH_API_KEY=… python scripts/eval.py --langsmith

Cases run through the real turn engine (run_turn), a few at a time, each on its own thread
and its own simulated device. Without provider keys the models are the built-in simulator,
so the run is deterministic and local. Results go to eval_results/<timestamp>/: cases/<id>.json,
summary.md, summary.json, chart.html and diff.json (against the previous comparable run: the
same dataset, --filter and --limit; without one, metric changes are not shown and only the
cases both runs have are compared, against the newest run on the same dataset).

The dataset format (input or turns, expected route, tool calls with argument rules, answer
checks) is described in lang_agent/evaluation/dataset.py and checks.py; of a multi-turn case
only the last turn is scored. Filters (--filter): comma-separated terms, any may match:
category=device, lang=en, tag=volume, route=chat, id=vol-*, or text matched against case ids.
--langsmith also uploads the dataset (idempotent) and records the run as a LangSmith
experiment with langsmith's aevaluate; it needs LANGSMITH_API_KEY. Without it nothing leaves
this machine (apart from calls to the model providers you configured).
Exit codes: 0 done, 1 pass rate under --fail-under, 2 bad dataset, filter or options, or an
agent that cannot start (database, prompts, MCP config) or results that cannot be written;
130 on Ctrl-C, which keeps nothing of the run (no results folder).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lang_agent.cli_common import (
    env_file_settings,
    positive_int,
    print_error,
    setting_named,
    share,
)
from lang_agent.evaluation.dataset import DatasetError
from lang_agent.evaluation.evaluate import (
    DEFAULT_DATASET,
    DEFAULT_OUT,
    EvalError,
    EvalOptions,
    evaluate,
    pick_cases,
)
from lang_agent.evaluation.results import CaseResult
from lang_agent.llm.sim_script import Script
from lang_agent.settings import Settings, settings_error

EXIT_OK, EXIT_BELOW, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "--dataset", type=Path, default=DEFAULT_DATASET, help="JSONL dataset (default: %(default)s)"
    )
    add("--filter", default="", help="run only matching cases, e.g. category=device,lang=en")
    add("--limit", type=positive_int, help="run at most this many (matching) cases")
    add("--concurrency", type=positive_int, help="cases at a time (default: EVAL_CONCURRENCY, 8)")
    add(
        "--config",
        type=Path,
        help="settings file over .env and the environment: NAME=VALUE lines as in .env, or "
        "JSON {setting: value}; an unknown name or a bad value is refused",
    )
    add(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override one setting, named as in .env in any case, e.g. --set "
        "CHAT_MODEL=moonshot:kimi-k2.5 (repeatable)",
    )
    add("--profile", help="pipeline profile (configs/profiles.json) used for every turn")
    add("--judge-model", help="LLM judge, [provider:]name (default: JUDGE_MODEL, none)")
    add("--sim-script", type=Path, help="JSON rules for the simulator (lang_agent/llm/sim_script)")
    add("--langsmith", action="store_true", help="also record the run in LangSmith")
    add("--out", type=Path, default=DEFAULT_OUT, help="results root (default: %(default)s)")
    add("--no-diff", action="store_true", help="do not compare with the previous run")
    add("--no-progress", action="store_true", help="no progress bar on stderr")
    add(
        "--fail-under",
        type=share,
        metavar="RATE",
        help="exit 1 if the pass rate is below RATE, a share from 0 to 1 (e.g. 0.8)",
    )
    add("-v", "--verbose", action="store_true", help="log at INFO (default: warnings only)")
    return parser.parse_args(argv)


def json_config(path: Path) -> dict[str, Any]:
    """The {setting: value} object of a --config JSON file."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, or not JSON
        raise ValueError(f"{path}: not a JSON config ({exc})") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a JSON config must be an object {{setting: value}}")
    return _by_field(values)


def _by_field(values: dict[str, Any]) -> dict[str, Any]:
    """Settings named as the environment names them (any case, or an alias such as
    DATABASE_URL), by field name; a name no setting has is kept as given, to be refused."""
    return {setting_named(name) or name: value for name, value in values.items()}


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from .env / the environment, then --config, then --set, then --judge-model."""
    overrides: dict[str, Any] = {}
    if args.config is not None:
        # A missing file would run the defaults unnoticed.
        if not args.config.is_file():
            raise ValueError(f"{args.config}: no such config file")
        # Read here, not as pydantic-settings' env file: that ignores unknown names, and the
        # environment would win over it.
        read = json_config if args.config.suffix == ".json" else env_file_settings
        overrides.update(read(args.config))
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set wants NAME=VALUE, got {item!r}")
        overrides.update(_by_field({name.strip(): value}))
    if args.judge_model:
        overrides["judge_model"] = args.judge_model
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    return Settings(**overrides)


class ProgressBar:
    """One stderr line, redrawn in place on a terminal (every tenth case otherwise)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def __call__(self, result: CaseResult) -> None:
        self.done += 1
        self.failed += not result.passed
        if not self.enabled:
            return
        if not self.tty and self.done % max(1, self.total // 10) and self.done != self.total:
            return
        width = 30
        filled = width * self.done // max(1, self.total)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cases · "
            f"{self.failed} failing · {time.monotonic() - self.started:.1f} s"
        )
        sys.stderr.write(("\r" + line) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def refuse(message: str) -> int:
    """Report a bad dataset, filter or option on one line, exit 2: CI tells it from a run
    that went wrong (--fail-under's 1) and from a crash."""
    print_error(message)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = build_settings(args)
        script = Script.load(args.sim_script) if args.sim_script else None
    except ValidationError as exc:
        return refuse(settings_error(exc))
    except (ValueError, OSError) as exc:
        return refuse(str(exc))
    options = EvalOptions(
        dataset=args.dataset,
        selection=args.filter,
        limit=args.limit,
        out_root=args.out,
        concurrency=args.concurrency,
        profile=args.profile,
        sim_script=script,
        langsmith=args.langsmith,
        diff=not args.no_diff,
    )
    try:
        progress = ProgressBar(len(pick_cases(options)), enabled=not args.no_progress)
        outcome = asyncio.run(evaluate(settings, options=options, on_result=progress))
    except (DatasetError, EvalError) as exc:
        return refuse(str(exc))
    except KeyboardInterrupt:
        # On a terminal the progress bar (or the echoed ^C) leaves the cursor mid-line.
        lead = "\n" if sys.stderr.isatty() else ""
        print(f"{lead}eval: interrupted; nothing of the run is kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(outcome.text)
    rate = outcome.metrics.pass_rate or 0.0
    if args.fail_under is not None and rate < args.fail_under:
        print(f"eval: pass rate {rate:.3f} is under {args.fail_under}", file=sys.stderr)
        return EXIT_BELOW
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
