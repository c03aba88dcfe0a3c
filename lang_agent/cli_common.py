"""Shared pieces of the commands and scripts: exit codes, flag types, Settings, running one."""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

import click
from pydantic import TypeAdapter, ValidationError
from pydantic_settings import SettingsError

from lang_agent.settings import Settings, settings_error

T = TypeVar("T")

# Named exit codes, as uvicorn does.
OK = 0
FAILURE = 1
STARTUP_FAILURE = 3

# A TCP port, 0 for any free one: an int would let 70000 through, and the OS take it mod 65536.
PORT = click.IntRange(0, 65535)

CONN_STR_OPTION = click.option(
    "--conn-str", default=None, help="Postgres DSN [env CONN_STR; embedded]."
)


def settings_from(**flags: object) -> Settings:
    """Settings from env/.env with the flags that were given on top; a clear exit on bad values."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except (ValidationError, SettingsError) as exc:
        raise click.ClickException(settings_error(exc)) from exc


def run_command(command: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine until done or stopped; a user error (CommandError, or a bad
    --predicate) becomes one line and exit code 1."""
    from lang_agent import loop
    from lang_agent.capture.predicate import PredicateError
    from lang_agent.db import CommandError

    try:
        return loop.run_until_stopped(command)
    except (CommandError, PredicateError) as exc:
        raise click.ClickException(str(exc)) from exc


@contextlib.contextmanager
def start_failures(what: str) -> Iterator[None]:
    """Starting `what`: an OSError (a port in use, an address not ours) is one line, exit 3."""
    try:
        yield
    except OSError as exc:
        click.echo(f"cannot start {what}: {exc}", err=True)
        sys.exit(STARTUP_FAILURE)


# argparse types for the scripts: a flag no run can honour is a usage error (exit 2) before
# anything starts.


def positive_int(text: str) -> int:
    """A count of at least 1: 0 rounds or calls leave nothing to divide by or take a median of."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0. `not value > 0` refuses NaN too: a run of NaN minutes sends
    nothing and passes, an infinite one never ends."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def http_url(text: str) -> str:
    """An http(s) URL with a host. The message does not repeat the text: a URL may hold a
    password."""
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed [IPv6 bracket, a port out of range
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError("expected an http(s) URL, e.g. http://127.0.0.1:8599/v1")
    return text


def setting_value(name: str) -> Callable[[str], Any]:
    """An argparse type taking what the setting `name` takes: a script that passes a flag on
    to the server it starts refuses at once what that server would refuse only once started."""
    field = Settings.model_fields[name]
    adapter = TypeAdapter(Annotated[field.annotation, *field.metadata])

    def check(text: str) -> Any:
        try:
            return adapter.validate_python(text)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"]
            raise argparse.ArgumentTypeError(f"{reason}, not {text!r} ({name.upper()})") from None

    check.__name__ = name
    return check


def share(text: str) -> float:
    """A fraction from 0 to 1 (of turns given a fault, of streams cut, of cases to pass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not 0 <= value <= 1:  # NaN fails this too
        # A percentage is the likely slip: 80 meant as 80%.
        hint = f" ({value:g}% is {value / 100:g})" if 1 < value <= 100 else ""
        raise argparse.ArgumentTypeError(f"must be a share from 0 to 1, not {text}{hint}")
    return value


class Checked(click.ParamType):
    """One of the checks above (or any function that raises ValueError) as a click type, so
    the scripts and the `lang-agent` commands refuse a value with the same words."""

    def __init__(self, check: Callable[[str], Any], *, name: str | None = None) -> None:
        self.check = check
        self.name = name or check.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):  # a default, already converted
            return value
        try:
            return self.check(value)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            self.fail(str(exc), param, ctx)
