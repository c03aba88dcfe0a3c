"""The soak script, shortened for CI: it runs a real server process under steady mixed load
(faults and hang-ups included) for about 20 s, and reports turns, outcomes and memory.

The long run (an hour of moderate use compressed into a few minutes) is documented in
docs/reliability.md: `python scripts/soak.py --minutes 5 --rate 12`."""

from __future__ import annotations

import json
import subprocess
import sys

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
