"""scripts/make_eval_dataset.py: a bad setting, an unwritable file and a failed LangSmith upload
each end with one line on stderr and a named exit code, never a traceback or key material."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from lang_agent.evaluation.dataset import load_cases
from lang_agent.settings import ROOT
from tests.support import answering, raw_server

SCRIPT = ROOT / "scripts" / "make_eval_dataset.py"
KEY = "lsv2-not-a-real-key"
REFUSED = (
    b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n"
    b'Content-Length: 26\r\n\r\n{"detail":"Invalid token"}'
)


def script_command(out: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The script's argv and a clean environment (no .env is read: tests run it in tmp);
    PYTHONPATH is kept, as it may name the checkout under test."""
    kept = ("PATH", "HOME", "LANG", "PYTHONPATH")
    env = {key: os.environ[key] for key in kept if key in os.environ}
    return [sys.executable, str(SCRIPT), "--out", str(out), *args], env


def test_a_bad_setting_is_one_line(tmp_path: Path):
    argv, env = script_command(tmp_path / "ds.jsonl")
    result = subprocess.run(
        argv, capture_output=True, text=True, cwd=tmp_path, env={**env, "MCP_PING_S": "0"}
    )
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("Error: MCP_PING_S: ")
    assert not (tmp_path / "ds.jsonl").exists()


def test_an_out_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path):
    # A traceback and exit 1, which the script's help gives to a failed upload.
    (tmp_path / "afile").write_text("", encoding="utf-8")
    out = tmp_path / "afile" / "ds.jsonl"
    argv, env = script_command(out, "--no-langsmith")
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: {out}: cannot write the dataset ([Errno 17] File exists: '{tmp_path / 'afile'}')"
    ]


def test_no_langsmith_reads_no_setting(tmp_path: Path):
    argv, env = script_command(tmp_path / "ds.jsonl", "--no-langsmith")
    env.update(MCP_PING_S="0", LANGSMITH_API_KEY=KEY)
    result = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert load_cases(tmp_path / "ds.jsonl")


async def test_a_failed_upload_is_one_line_and_keeps_the_file(tmp_path: Path):
    out = tmp_path / "ds.jsonl"
    argv, env = script_command(out)
    async with raw_server(answering(*[REFUSED] * 20)) as (url, _):
        endpoint = f"http://{urlsplit(url).netloc}"
        env.update(LANGSMITH_API_KEY=KEY, LANGSMITH_ENDPOINT=endpoint)
        # A child process on this loop: the refusing server must keep answering meanwhile.
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 1
    assert stderr.decode().splitlines() == [
        f"Error: upload to LangSmith failed: LangSmithAuthError from {endpoint}"
    ]
    assert KEY[:4] not in (stdout + stderr).decode()
    assert load_cases(out)
