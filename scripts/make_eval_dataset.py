"""Write or update the xiaozhi eval dataset (JSONL), and upload it to LangSmith when a key is set.

    python scripts/make_eval_dataset.py                   # configs/eval/xiaozhi.jsonl
    python scripts/make_eval_dataset.py --prune           # also drop cases no longer defined
    LANGSMITH_API_KEY=… python scripts/make_eval_dataset.py --langsmith-dataset my-xiaozhi

The cases are defined in lang_agent/evaluation/xiaozhi_cases.py. Cases are keyed by id:
running this again replaces changed cases in place and appends new ones, never duplicates
(hand-added cases in the file are kept unless --prune). With LANGSMITH_API_KEY set, the same
cases are created or updated as examples of a LangSmith dataset (also keyed by case id);
--no-langsmith skips that (and then no setting is read).

Exit codes: 0 written (and uploaded); 1 written, but the upload failed (the file is kept);
2 the dataset file cannot be used; 3 a bad setting, named on one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from fastapi_server.serve import settings_or_exit
from lang_agent.cli_common import print_error
from lang_agent.evaluation.dataset import DatasetError, EvalCase, load_cases
from lang_agent.evaluation.evaluate import DEFAULT_DATASET
from lang_agent.evaluation.langsmith_sync import DEFAULT_DATASET as LANGSMITH_DATASET
from lang_agent.evaluation.xiaozhi_cases import write_dataset

UPLOAD_FAILED = 1
DATASET_UNUSABLE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="\n".join(__doc__.splitlines()[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_DATASET, help="dataset file (default: %(default)s)"
    )
    parser.add_argument("--prune", action="store_true", help="drop cases no longer defined")
    parser.add_argument(
        "--langsmith-dataset",
        default=LANGSMITH_DATASET,
        help="LangSmith dataset name (default: %(default)s)",
    )
    parser.add_argument("--no-langsmith", action="store_true", help="never upload")
    return parser.parse_args(argv)


def upload(cases: Sequence[EvalCase], *, api_key: str, name: str) -> int:
    from lang_agent.evaluation.langsmith_sync import LangSmithFailed, upload_dataset

    try:
        print(upload_dataset(cases, api_key=api_key, name=name))
    except LangSmithFailed as exc:
        print_error(f"upload to LangSmith failed: {exc}")
        return UPLOAD_FAILED
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # langsmith's warnings repeat a failure this script reports, with part of the key.
    logging.getLogger("langsmith").setLevel(logging.ERROR)
    key = None if args.no_langsmith else settings_or_exit().langsmith_api_key
    try:
        summary = write_dataset(args.out, prune=args.prune)
        cases = load_cases(args.out)
    except DatasetError as exc:
        print_error(str(exc))
        return DATASET_UNUSABLE
    print(f"{args.out}: {len(cases)} cases ({summary})")
    if key is None:
        return 0
    return upload(cases, api_key=key.get_secret_value(), name=args.langsmith_dataset)


if __name__ == "__main__":
    sys.exit(main())
