"""The bench and soak scripts: flags no run can honour are usage errors before anything starts,
and a tiny real run leaves nothing in the temp dir and warns of nothing."""

from __future__ import annotations

import functools
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from lang_agent.settings import ROOT


@functools.cache
def script(name: str) -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "scripts" / f"{name}.py"), run_name=f"{name}_script")


@pytest.mark.parametrize(
    ("name", "flags"),
    [
        ("bench_memory", ["--turns", "0"]),
        ("bench_memory", ["--turns", "-1"]),
        ("bench_memory", ["--sizes", "abc"]),
        ("bench_memory", ["--sizes", "2,"]),
        ("bench_memory", ["--sizes", "-4"]),
        ("bench_memory", ["--sizes", "0"]),
        ("bench_memory", ["--sizes", "3"]),  # a memory a turn writes holds question-answer pairs
        ("bench_model_call", ["--calls", "0"]),
        ("bench_model_call", ["--calls", "-1"]),
        ("bench_model_call", ["--rounds", "0"]),
        ("bench_model_call", ["--rounds", "-2"]),
    ],
)
def test_a_run_that_cannot_be_honoured_is_a_usage_error(name, flags, capsys):
    with pytest.raises(SystemExit) as exited:
        script(name)["parse_args"](flags)
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_memory_sizes_are_parsed():
    assert script("bench_memory")["parse_args"]([]).sizes == [20, 100, 200]
    assert script("bench_memory")["parse_args"](["--sizes", "2,40"]).sizes == [2, 40]


@pytest.mark.parametrize(
    "argv",
    [
        ["bench_memory.py", "--sizes", "2", "--turns", "1"],
        ["bench_model_call.py", "--calls", "1", "--rounds", "1"],
        ["soak.py", "--minutes", "0.02", "--rate", "4", "--sample-s", "0.5"],
    ],
)
def test_a_run_leaves_no_temp_dirs_and_no_warnings(argv, tmp_path):
    # A short TMPDIR of its own: Postgres's socket path must fit in 107 bytes, and pytest's
    # tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="bs-") as temp:  # noqa: S108
        # Without a runtime dir of the caller's: the script's Postgres must bring its own.
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"} | {"TMPDIR": temp}
        command = [sys.executable, str(ROOT / "scripts" / argv[0]), *argv[1:]]
        finished = subprocess.run(
            command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
        )
        assert finished.returncode == 0, finished.stdout + finished.stderr
        assert "Warning" not in finished.stderr
        assert list(Path(temp).iterdir()) == []
