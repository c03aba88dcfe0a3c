"""scripts/eval.py as a user runs it: a bad dataset, option or start-up is one `eval:` line and
exit 2 (1 is --fail-under's), and the diff compares metrics only with a run on the same cases."""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lang_agent.settings import ROOT
from tests.conftest import TEST_KEY
from tests.support import script_env

TWO_CASES = "id=calc-times-en,id=chat-hello-zh"


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def eval_main() -> Callable[[list[str]], int]:
    return runpy.run_path(str(ROOT / "scripts" / "eval.py"), run_name="eval_script")["main"]


@pytest.fixture
def run_eval(eval_main, pg_dsn, simulator, empty_mcp_config, tmp_path, monkeypatch, capsys):
    """main(argv) in this process, settings from the environment of a throwaway install."""
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {
        "CONN_STR": pg_dsn,
        "SIM_URL": simulator.base_url,
        "LLM_PROVIDER": "sim",
        "MCP_CONFIG": str(empty_mcp_config),
        "DATA_DIR": str(tmp_path / "data"),
        "FAST_AUTH_KEYS": TEST_KEY,
    }.items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> Ran:
        code = eval_main(["--out", str(tmp_path / "results"), *args])
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def change_shown(out: str, label: str) -> str:
    """The end of a headline row: its change since the previous run, or its counts if none."""
    return next(line for line in out.splitlines() if line.startswith(f"  {label}")).split()[-1]


def assert_refused(ran: Ran, message: str) -> None:
    """Exit 2 and exactly one `Error:` line, naming the problem."""
    assert ran.code == 2, ran
    said = [line for line in ran.err.splitlines() if line.startswith("Error: ")]
    assert len(said) == 1 and message in said[0], ran.err
    assert "Traceback" not in ran.err


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"binary.jsonl": b"\xff\xfe\x00bad"}, ["--dataset", "binary.jsonl"], "not UTF-8"),
        ({"list.json": b"[1]"}, ["--config", "list.json"], "must be an object"),
        ({"bad.json": b"{"}, ["--config", "bad.json"], "bad.json: not a JSON config"),
        ({}, ["--config", "k.env.typo"], "k.env.typo: no such config file"),
        (  # pydantic-settings ignored them: the run went on with the defaults
            {"typo.env": b"SPECULATVE_CHAT=false\nLLM_PROVIDER=sim\nFOO=1\n"},
            ["--config", "typo.env"],
            "typo.env: unknown setting(s) SPECULATVE_CHAT, FOO",
        ),
        (
            {"bad.env": b"speculative_chat=maybe\n"},
            ["--config", "bad.env"],
            "bad.env: SPECULATIVE_CHAT: Input should be a valid boolean",
        ),
        ({"latin1.env": b"CHAT_MODEL=caf\xe9\n"}, ["--config", "latin1.env"], "not UTF-8 text"),
        ({}, ["--set", "db_timeout_s=0"], "DB_TIMEOUT_S: Input should be greater than 0"),
        # Named as in .env (any case, an alias): such names were "unknown" here alone.
        ({}, ["--set", "DB_TIMEOUT_S=0"], "DB_TIMEOUT_S: Input should be greater than 0"),
        ({"c.json": b'{"DB_TIMEOUT_S": 0}'}, ["--config", "c.json"], "DB_TIMEOUT_S: Input should"),
        ({}, ["--set", "DATABASE_URL=nodsn"], "not a valid Postgres DSN"),
        ({}, ["--set", "SPECULATVE_CHAT=1"], "unknown setting(s): SPECULATVE_CHAT"),
        (
            {"p.json": b'{"x": 1}'},
            ["--set", "profiles_file=p.json", "--profile", "x"],
            "p.json: profile 'x' must be an object",
        ),
    ],
)
def test_bad_datasets_and_configs_are_refused(run_eval, tmp_path, files, args, message):
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    assert_refused(run_eval(*args, "--filter", TWO_CASES), message)


def test_an_env_config_wins_over_the_environment(run_eval, tmp_path):
    # Any case, and a rule between settings (HOST wants FAST_AUTH_KEYS) is judged on the file's
    # values, not the defaults; a blank value leaves its setting alone. The environment's
    # MCP_CONFIG won over the file's when the file was pydantic-settings' env file.
    (tmp_path / "k.env").write_text(
        "mcp_config=nowhere.json\nHOST=0.0.0.0\nFAST_AUTH_KEYS=k\nCHAT_MODEL=\n", encoding="utf-8"
    )
    ran = run_eval("--config", "k.env", "--filter", TWO_CASES)
    assert_refused(ran, "nowhere.json: cannot read the MCP config")


@pytest.mark.parametrize(
    "args",
    [["--limit", "-1"], ["--limit", "0"], ["--concurrency", "0"], ["--concurrency", "-2"]],
)
def test_counts_below_one_are_usage_errors(run_eval, capsys, args):
    with pytest.raises(SystemExit) as stopped:
        run_eval(*args, "--filter", TWO_CASES)
    assert stopped.value.code == 2
    assert f"argument {args[0]}: must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("rate", "message"),
    [
        ("80", "must be a share from 0 to 1, not 80 (80% is 0.8)"),  # every run failed
        ("nan", "must be a share from 0 to 1, not nan"),  # no run failed
        ("-1", "must be a share from 0 to 1, not -1"),
        ("1.5", "must be a share from 0 to 1, not 1.5 (1.5% is 0.015)"),
    ],
)
def test_fail_under_is_a_share_from_0_to_1(eval_main, capsys, rate, message):
    with pytest.raises(SystemExit) as stopped:
        eval_main(["--fail-under", rate])
    assert stopped.value.code == 2
    (said,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert said.endswith(f"argument --fail-under: {message}")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("PROMPTS_DIR=nowhere", "prompt file nowhere/route_prompt.txt is missing"),
        ("MCP_CONFIG=nowhere.json", "nowhere.json: cannot read the MCP config"),
        ("CONN_STR=postgresql://eval@127.0.0.1:1/eval", "cannot connect to postgresql://eval@"),
    ],
)
def test_an_agent_that_cannot_start_is_refused(run_eval, monkeypatch, tmp_path, setting, message):
    name, _, value = setting.partition("=")
    monkeypatch.setenv(name, value)
    assert_refused(run_eval("--filter", TWO_CASES), message)
    assert list((tmp_path / "results").iterdir()) == []  # no empty run left behind


def test_an_unusable_out_is_refused_before_any_case_runs(run_eval, tmp_path):
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    ran = run_eval("--filter", TWO_CASES, "--out", str(tmp_path / "afile"))
    assert_refused(ran, "cannot write results under")
    assert "cases ·" not in ran.err, "the progress bar shows that cases ran"


def test_metrics_compare_only_with_a_run_on_the_same_cases(run_eval, tmp_path):
    first = run_eval("--filter", TWO_CASES, "--limit", "1", "--no-progress")
    assert first.code == 0, first.err
    whole = run_eval("--filter", TWO_CASES, "--no-progress")
    assert whole.code == 0, whole.err
    assert "no comparable previous run" in whole.out and "(1 cases in both)" in whole.out
    assert change_shown(whole.out, "cases passed") == "2/2"
    again = run_eval("--filter", TWO_CASES, "--no-progress")
    runs = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert f"vs {runs[1]} (2 cases in both): 0 flipped" in again.out
    assert change_shown(again.out, "cases passed") == "(=)"
    other_filter = run_eval("--filter", "id=calc-times-en", "--no-progress")
    assert "no comparable previous run" in other_filter.out
    assert change_shown(other_filter.out, "cases passed") == "1/1"
    summary = json.loads((tmp_path / "results" / runs[0] / "summary.json").read_text())
    assert summary["run"]["limit"] == 1


def test_ctrl_c_is_one_line_exit_130_and_keeps_no_empty_run(
    pg_dsn, simulator, empty_mcp_config, tmp_path
):
    # It was a 38-line traceback, and left an empty run folder behind.
    env = script_env(
        pg_dsn=pg_dsn,
        sim_url=simulator.base_url,
        mcp_config=empty_mcp_config,
        data_dir=tmp_path / "data",
    )
    argv = [sys.executable, str(ROOT / "scripts" / "eval.py"), "--out", str(tmp_path / "r")]
    # Every case, one at a time: the run is still going when the first progress line shows.
    with subprocess.Popen(
        [*argv, "--concurrency", "1"], cwd=tmp_path, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as process:  # fmt: skip
        assert process.stderr is not None
        next(line for line in process.stderr if "cases ·" in line)
        process.send_signal(signal.SIGINT)
        said = [line for line in process.stderr if "cases ·" not in line]
        assert process.wait(60) == 130
    assert said == ["eval: interrupted; nothing of the run is kept\n"], said
    assert list((tmp_path / "r").iterdir()) == []


class _Refusing(BaseHTTPRequestHandler):
    """A LangSmith that refuses every call, as with a revoked key."""

    def _refuse(self) -> None:
        body = b'{"detail":"Invalid token"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, *_: object) -> None:
        pass


def test_a_refused_langsmith_upload_keeps_the_run_and_says_so_in_one_line(
    run_eval, monkeypatch, tmp_path, caplog
):
    # The upload came before the results were written: its traceback lost the whole run.
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2-not-a-real-key")
        monkeypatch.setenv("LANGSMITH_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        ran = run_eval("--filter", TWO_CASES, "--langsmith")
    finally:
        server.shutdown()
        server.server_close()
    assert ran.code == 0, ran.err
    (said,) = [r.getMessage() for r in caplog.records if r.name.startswith("lang_agent")]
    assert said == (
        "the run was not recorded in LangSmith: LangSmithAuthError from "
        f"http://127.0.0.1:{server.server_port}"
    )
    assert "Traceback" not in ran.err and "lsv2" not in ran.out + ran.err
    (run,) = (tmp_path / "results").iterdir()
    assert (run / "summary.json").is_file()
