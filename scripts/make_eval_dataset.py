"""Write or update the xiaozhi eval dataset (JSONL), and upload it to LangSmith when a key is set.

    python scripts/make_eval_dataset.py                   # configs/eval/xiaozhi.jsonl
    python scripts/make_eval_dataset.py --prune           # also drop cases no longer defined
    LANGSMITH_API_KEY=… python scripts/make_eval_dataset.py --langsmith-dataset my-xiaozhi

The cases are defined in lang_agent/evaluation/xiaozhi_cases.py. Cases are keyed by id:
running this again replaces changed cases in place and appends new ones, never duplicates
(hand-added cases in the file are kept unless --prune). With LANGSMITH_API_KEY set, the same
cases are created or updated as examples of a LangSmith dataset (also keyed by case id);
--no-langsmith skips that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lang_agent.evaluation.dataset import DatasetError, load_cases
from lang_agent.evaluation.evaluate import DEFAULT_DATASET
from lang_agent.evaluation.langsmith_sync import DEFAULT_DATASET as LANGSMITH_DATASET
from lang_agent.evaluation.xiaozhi_cases import write_dataset
from lang_agent.settings import Settings


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary = write_dataset(args.out, prune=args.prune)
        cases = load_cases(args.out)
    except DatasetError as exc:
        print(f"make_eval_dataset: {exc}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(cases)} cases ({summary})")
    key = Settings().langsmith_api_key
    if key is not None and not args.no_langsmith:
        from lang_agent.evaluation.langsmith_sync import upload_dataset

        print(upload_dataset(cases, api_key=key.get_secret_value(), name=args.langsmith_dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
