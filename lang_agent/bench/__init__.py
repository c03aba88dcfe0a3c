"""The stress test's logic (scripts/stress_test.py): load generator, process stack, reports."""

from lang_agent.bench.load import CellResult, Counter, Sample, attach_model_time, run_cell
from lang_agent.bench.runner import DEFAULT_LEVELS, Mode, Target, run_matrix
from lang_agent.bench.stats import add_efficiency, percentile, summarise

__all__ = [
    "DEFAULT_LEVELS",
    "CellResult",
    "Counter",
    "Mode",
    "Sample",
    "Target",
    "add_efficiency",
    "attach_model_time",
    "percentile",
    "run_cell",
    "run_matrix",
    "summarise",
]
