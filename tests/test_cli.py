"""The `lang-agent` command's flags and start-up errors, each refused in one line."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from lang_agent.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["sim", "--port", "70000"],
        ["device-sim", "--port", "65536"],
        ["proxy", "start", "--port", "-1"],
        ["calls", "replay", "--id", "1", "--port", "99999"],
        ["serve", "--port", "70000"],
    ],
)
def test_a_port_out_of_range_is_a_usage_error(argv):
    # An int option let 70000 through, and the OS bound 70000 - 65536 = 4464 instead.
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "is not in the range 0<=x<=65535" in result.output


def test_a_negative_tool_delay_is_a_usage_error():
    result = CliRunner().invoke(main, ["device-sim", "--tool-delay-ms", "-5"])
    assert result.exit_code == 2
    assert "Invalid value for '--tool-delay-ms': -5 is not in the range x>=0" in result.output


def test_device_sim_on_a_port_in_use_is_one_line():
    # uvicorn's sys.exit inside the server's task group was an exception group's traceback.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["device-sim", "--port", str(port)])
    assert result.exit_code == 3
    where = f"127.0.0.1:{port}"
    assert result.stderr.startswith(f"Error: cannot start the device simulator on {where}: ")
    assert len(result.stderr.splitlines()) == 1, result.stderr
