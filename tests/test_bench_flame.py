"""The flame summary of a py-spy recording names each frame's file and package relative to
where it lives: the project, an installed package, the standard library."""

from __future__ import annotations

from lang_agent.bench.flame import summarise
from lang_agent.settings import ROOT


def test_frames_are_named_by_package_wherever_the_project_and_python_live():
    # A clone anywhere but /work/main, a venv inside it, and a Python other than 3.11: the
    # project's frames kept their whole path and counted as package "?", and so did the
    # standard library's.
    stacks = {
        f"run_turn ({ROOT}/lang_agent/agent/runner.py:10)": 5,
        f"loads ({ROOT}/.venv/lib/python3.12/site-packages/orjson/__init__.py:3)": 3,
        "select (/usr/lib/python3.12/selectors.py:5)": 2,
    }
    lines = [f"process 1:python;thread (0x1);{frame} {count}" for frame, count in stacks.items()]
    summary = summarise(lines)
    assert "| 5 | `lang_agent` |" in summary, summary
    assert "| 3 | `orjson` |" in summary, summary
    assert "| 2 | `selectors` |" in summary, summary
    assert "`run_turn (lang_agent/agent/runner.py)`" in summary, summary
    assert "`?`" not in summary and str(ROOT) not in summary, summary
