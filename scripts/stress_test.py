"""Stress test: throughput, latency and time to first text of both front ends under load.

    python scripts/stress_test.py                 # the full matrix (~10 min)
    python scripts/stress_test.py --quick         # a 1-minute smoke run
    python scripts/stress_test.py --scenario voice|proxy|scale|all

By default it starts an embedded Postgres, the simulator (`--profile original`) and the server
as separate processes, runs every mode (DashScope/OpenAI × stream/non-stream) over the
concurrency levels, and writes report.md, results.json and chart.svg to --out. With --target
it measures a running server instead (add --sim-url so server overhead can be computed).
See docs/performance.md for the method and the results.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lang_agent import loop  # noqa: E402
from lang_agent.bench.cli import main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lang_agent.bench.cli import add_arguments, check_arguments

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    if args.out is None:
        args.out = ROOT / "stress_results" / time.strftime("%Y%m%d-%H%M%S")
    args.out = args.out.resolve()  # the servers run in a directory of their own
    return args


if __name__ == "__main__":
    # SIGTERM stops the run like Ctrl-C, so the servers it started are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(loop.run(main(parse_args())))
