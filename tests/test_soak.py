"""The soak script, shortened for CI: it runs a real server process under steady mixed load
(faults and hang-ups included) for about 20 s, and reports turns, outcomes and memory.

The long run (an hour of moderate use compressed into a few minutes) is documented in
docs/reliability.md: `python scripts/soak.py --minutes 5 --rate 12`."""

from __future__ import annotations

import functools
import json
import runpy
import subprocess
import sys
from collections import Counter
from typing import Any

import pytest

from lang_agent.settings import ROOT


def test_a_short_soak_completes_and_reports(pg_dsn, tmp_path):
    report = tmp_path / "soak.json"
    command = [
        sys.executable,
        str(ROOT / "scripts" / "soak.py"),
        "--minutes", "0.33",
        "--rate", "8",
        "--sample-s", "2",
        "--conn-str", pg_dsn,
        "--report", str(report),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    result = json.loads(report.read_text(encoding="utf-8"))
    assert result["turns"] >= 100
    # Only answers, cleanly reported upstream faults and deliberate hang-ups: nothing else.
    assert set(result["outcomes"]) <= {"ok", "upstream_error", "hung_up"}
    assert result["outcomes"]["ok"] >= 0.8 * result["turns"]
    assert len(result["samples"]) >= 8 and result["rss_peak_mb"] > 0
    assert "RSS: start" in finished.stdout


@functools.cache
def soak() -> dict[str, Any]:
    return runpy.run_path(str(ROOT / "scripts" / "soak.py"), run_name="soak_script")


@pytest.mark.parametrize(
    "flags",
    [
        ["--rate", "0"],
        ["--rate", "-3"],
        ["--concurrency", "0"],
        ["--minutes", "0"],
        ["--minutes", "-1"],
        ["--minutes", "nan"],
        ["--minutes", "inf"],
        ["--sample-s", "0"],
        ["--report", "/nonexistent-dir/r.json"],
        ["--faults", "1.5"],
        ["--hangups", "-0.1"],
        ["--faults", "nan"],
        ["--memory-max-messages", "-1"],
        ["--memory-max-messages", "many"],
    ],
)
def test_a_run_that_cannot_be_honoured_is_a_usage_error(flags, capsys):
    with pytest.raises(SystemExit) as exited:
        soak()["parse_args"](flags)
    assert exited.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_a_report_in_an_existing_directory_is_accepted(tmp_path):
    args = soak()["parse_args"](["--report", str(tmp_path / "r.json"), "--minutes", "0.5"])
    assert args.report == tmp_path / "r.json" and args.minutes == 0.5


def summary(latencies: list[float]) -> dict[str, Any]:
    args = soak()["parse_args"]([])
    samples = [{"t_s": 0.0, "rss_mb": 100.0, "turns": 0}, {"t_s": 1.0, "rss_mb": 101.0, "turns": 3}]
    outcomes = Counter(ok=len(latencies), upstream_error=1)
    return soak()["summarise"](outcomes, latencies, samples, args, 1.0)


def test_latency_of_a_few_ok_turns_is_their_own(capsys):
    report = summary([0.1, 0.2, 0.3])
    assert report["latency_p50_ms"] == 200.0
    assert report["latency_p95_ms"] == pytest.approx(290.0)
    soak()["print_report"](report)
    assert "p50 200.0 ms, p95 290.0 ms" in capsys.readouterr().out


def test_latency_without_an_ok_turn_is_not_a_number(capsys):
    report = summary([])
    assert report["latency_p50_ms"] is None and report["latency_p95_ms"] is None
    soak()["print_report"](report)
    assert "p50 n/a, p95 n/a" in capsys.readouterr().out


def test_a_server_that_dies_starting_is_quoted_from_its_log(tmp_path):
    # The server refuses the setting at once; its log is in a directory the caller removes.
    with (
        pytest.raises(RuntimeError, match="MEMORY_MAX_MESSAGES") as raised,
        soak()["server_process"](
            "postgresql://x:pw@127.0.0.1:9/db", "http://127.0.0.1:9/v1", tmp_path,
            memory_max_messages=-1,
        ),
    ):  # fmt: skip
        pass
    assert str(tmp_path) not in str(raised.value)


def test_the_quoted_log_hides_passwords(tmp_path):
    log = tmp_path / "server.log"
    lines = [f"line {n}" for n in range(50)] + ["cannot connect to postgresql://x:pw@db:5432/a"]
    log.write_text("\n".join(lines), encoding="utf-8")
    message = str(soak()["server_exited"](log))
    assert "x:***@db:5432" in message and "pw" not in message
    assert "line 49" in message and "line 30" not in message  # only the end
