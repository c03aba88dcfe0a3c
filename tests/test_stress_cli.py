"""The stress tool's command line (lang_agent/bench/cli.py): flags refused before anything
starts, a --target checked before it is measured, what a run records and how it exits."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest

from lang_agent.bench import cli
from lang_agent.cli_common import FAILURE, OK, STARTUP_FAILURE
from tests.conftest import TEST_KEY


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(flags)
    cli.check_arguments(parser, args)
    return args


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--duration", "nan"], "--duration: must be a finite number above 0, not nan"),
        (["--duration", "inf"], "--duration: must be a finite number above 0, not inf"),
        (["--workers", "0"], "--workers: must be at least 1, not 0"),
        (["--turns-per-thread", "-2"], "--turns-per-thread: must be at least 1, not -2"),
        (["--ramp", "nan"], "--ramp must be 0 or more, not nan"),
        (["--ramp", "inf"], "--ramp must be 0 or more, not inf"),
        (["--fronts", "OpenAI"], "expected front ends from dashscope, openai"),
        (["--fronts", ""], "expected front ends from dashscope, openai"),
        (["--profile", "slow"], "invalid choice: 'slow'"),
        (["--scenario", "voice", "--target", "http://127.0.0.1:1"], "--target measures"),
        (["--scenario", "all", "--target", "http://127.0.0.1:1"], "--target measures"),
        (["--key", "k"], "--key is the key of --target"),
        (["--target", "https://example.com"], "--target must be a plain http:// URL"),
        *(  # each started Postgres and the server, then ended in a traceback
            (["--sim-url", url], "--sim-url: expected an http(s) URL")
            for url in ("notaurl", "ftp://sim/v1", "http://", "http://[::1/v1", "http://h:0/v1")
        ),
        *(  # a typo was ignored by the server; a bad value stopped it, the reason in its log
            (["--server-env", item], f"--server-env: {message}")
            for item, message in (
                ("SPECULATVE_CHAT=false", "unknown setting SPECULATVE_CHAT"),
                ("SPECULATIVE_CHAT", "expected NAME=VALUE, not 'SPECULATIVE_CHAT'"),
                ("SPECULATIVE_CHAT=maybe", "SPECULATIVE_CHAT: Input should be a valid boolean"),
                ("TIMEZONE=Mars/Base", "TIMEZONE: unknown time zone 'Mars/Base'"),
                ("PROXY_ROUTES=[{", "not JSON"),
            )
        ),
        *(  # CONN_STR= ran the server on a Postgres of its own: a traceback (no `turns` table)
            (
                ["--server-env", item],
                f"--server-env {item.partition('=')[0].upper()}: the tool sets it",
            )
            for item in (
                "CONN_STR=",
                "database_url=postgresql://x@h/db",
                "SIM_URL=http://h/v1",
                "FAST_AUTH_KEYS=k",
            )
        ),
        *(
            (["--target", "http://127.0.0.1:1", *flag], f"{flag[0]} configures the servers")
            for flag in (
                ["--workers", "2"],
                ["--server-env", "SPECULATIVE_CHAT=false"],
                ["--profile", "fast"],
                ["--py-spy", "10"],
            )
        ),
    ],
)
def test_a_flag_that_cannot_work_is_a_usage_error(capsys, flags, message) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*flags)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_a_server_setting_is_named_in_any_case_or_by_its_alias() -> None:
    args = parse("--server-env", "speculative_chat=false", "--server-env", "Timezone=UTC")
    assert args.server_env == ["SPECULATIVE_CHAT=false", "TIMEZONE=UTC"]
    # A rule between settings is the server's to apply to all of them, not one checked here
    # against the defaults (HOST=0.0.0.0 wants FAST_AUTH_KEYS, which may come next).
    assert parse("--server-env", "HOST=0.0.0.0").server_env == ["HOST=0.0.0.0"]


def test_a_key_refused_is_not_repeated(capsys) -> None:
    with pytest.raises(SystemExit):
        parse("--server-env", 'PROXY_ROUTES=[{"upstream": "ftp://x", "key": "sk-live-secret"}]')
    err = capsys.readouterr().err
    assert "PROXY_ROUTES.0.UPSTREAM: 'ftp://x' is neither" in err
    assert "sk-live-secret" not in err


def test_front_ends_may_be_listed_with_spaces() -> None:
    assert parse("--fronts", "openai, dashscope").fronts == ["dashscope", "openai"]
    assert parse("--fronts", "openai,").fronts == ["openai"]  # as --levels 1,10, does
    assert [m.label for m in cli.modes(parse("--fronts", " openai ", "--streams", "plain"))] == [
        "openai non-stream"
    ]


def test_the_record_keeps_no_key_and_no_password() -> None:
    args = parse(
        "--target", "http://127.0.0.1:8588", "--key", "sk-live-secret",
        "--conn-str", "postgresql://agent:hunter2@db:5432/agent", "--out", "/tmp/out",
        "--sim-url", "https://sim:hunter2@127.0.0.1:8599/v1",
    )  # fmt: skip
    argv = cli.recorded_argv(args)
    assert "sk-live-secret" not in json.dumps(argv) and "hunter2" not in json.dumps(argv)
    assert argv["key"] == "***"
    assert argv["conn_str"] == "postgresql://agent:***@db:5432/agent"
    assert argv["target"] == "http://127.0.0.1:8588" and argv["out"] == "/tmp/out"
    assert argv["sim_url"] == "https://sim:***@127.0.0.1:8599/v1"
    own = cli.recorded_argv(
        parse("--server-env", "OPENAI_API_KEY=sk-other", "--server-env", "SPECULATIVE_CHAT=false")
    )
    assert own["server_env"] == ["OPENAI_API_KEY=***", "SPECULATIVE_CHAT=false"]


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


async def test_an_unreachable_target_stops_the_run_before_it_starts(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    target = f"http://127.0.0.1:{await _closed_port()}"
    args = parse("--target", target, "--levels", "1", "--duration", "1", "--out", str(out))
    assert await cli.main(args) == STARTUP_FAILURE
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"--target {target}: no answer from /health")
    assert not out.exists()  # no stack, no results


async def test_an_out_folder_that_cannot_be_made_stops_the_run_before_it_starts(
    tmp_path, capsys
) -> None:
    (tmp_path / "a-file").write_text("")
    out = tmp_path / "a-file" / "run"
    assert await cli.main(parse("--levels", "1", "--duration", "1", "--out", str(out))) == (
        STARTUP_FAILURE
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"--out {out}: cannot make the folder (Not a directory)"


@pytest.fixture
def bench_server(live_server):
    return live_server()


def _run_against(url: str, out: Path, *, key: str) -> argparse.Namespace:
    return parse(
        "--target", url, "--key", key, "--levels", "1", "--duration", "0.5",
        "--fronts", "openai", "--streams", "plain", "--out", str(out),
    )  # fmt: skip


async def test_a_target_run_starts_nothing_and_says_what_it_cannot_measure(
    bench_server, tmp_path
) -> None:
    out = tmp_path / "out"
    assert await cli.main(_run_against(bench_server.url, out, key=TEST_KEY)) == OK
    # no embedded Postgres, no simulator: the target uses neither
    assert not (out / "stack" / "pg").exists() and not (out / "stack" / "sim.log").exists()
    report = (out / "report.md").read_text()
    assert "Overhead needs --sim-url" in report and "engine overhead needs --conn-str" in report
    results = (out / "results.json").read_text()
    assert TEST_KEY not in report and TEST_KEY not in results
    assert json.loads(results)["simulator_profile"] is None


async def test_a_run_where_every_request_failed_does_not_exit_0(bench_server, tmp_path) -> None:
    out = tmp_path / "out"
    assert await cli.main(_run_against(bench_server.url, out, key="wrong-key")) == FAILURE
    assert "Failures: " in (out / "report.md").read_text()
