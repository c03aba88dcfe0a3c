"""Shared pieces of the commands and scripts: exit codes, flag types, Settings, running one."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar, get_origin

import click
from dotenv import dotenv_values
from pydantic import AliasChoices, ValidationError
from pydantic_settings import SettingsError

from lang_agent.settings import NOT_AN_HTTP_URL, Settings, is_http_url, settings_error

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


def print_error(message: str) -> None:
    """A command's or a script's own error, on stderr in click's shape (`Error: …`), so every
    command and script starts its error lines alike."""
    click.ClickException(message).show()


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


def confirmed(question: str, *, yes: bool) -> bool:
    """--yes, or the user's answer to `question`, which may be piped in. With none (stdin not
    a terminal and empty, as under cron) click said only "Aborted!"."""
    if yes:
        return True
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        if sys.stdin.isatty():  # Ctrl-C or Ctrl-D at the prompt
            raise
        click.echo()  # ends the prompt's line, as click does before "Aborted!"
        raise click.ClickException("no terminal to confirm on: pass --yes") from None


@contextlib.contextmanager
def start_failures(what: str) -> Iterator[None]:
    """Starting `what`: an OSError (a port in use, an address not ours) is one line, exit 3."""
    try:
        yield
    except OSError as exc:
        print_error(f"cannot start {what}: {exc}")
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
    """An http(s) URL with a host, as a base URL setting must be."""
    if not is_http_url(text):
        raise argparse.ArgumentTypeError(NOT_AN_HTTP_URL)
    return text


def setting_value(name: str) -> Callable[[str], Any]:
    """An argparse type taking what the setting `name` takes, its own validators included: a
    script that passes a flag on to the server it starts refuses at once what that server
    would refuse only once started."""
    validator = Settings.__pydantic_validator__
    # A list setting comes from the environment as JSON, as pydantic-settings reads it.
    as_json = get_origin(Settings.model_fields[name].annotation) in (list, dict)

    def check(text: str) -> Any:
        try:
            value = json.loads(text) if as_json else text
            # Checked on the defaults, so neither the environment nor .env is read.
            checked = validator.validate_assignment(Settings.model_construct(), name, value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not JSON ({exc.msg}) ({name.upper()})") from None
        except ValidationError as exc:
            if not any(error["loc"] for error in exc.errors()):
                # Only a rule between settings failed, judged against the defaults (HOST=0.0.0.0
                # wants FAST_AUTH_KEYS): the value passed its own; Settings built from all of
                # them applies the rule.
                return value
            # Not repeated: the value may hold a key (PROXY_ROUTES).
            raise argparse.ArgumentTypeError(settings_error(exc)) from None
        return getattr(checked, name)

    check.__name__ = name
    return check


def _env_names() -> dict[str, str]:
    """Each setting by the names the environment gives it (lower case): CONN_STR and
    DATABASE_URL both name conn_str."""
    names = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = alias.choices if isinstance(alias, AliasChoices) else [name]
        names.update({choice.lower(): name for choice in choices if isinstance(choice, str)})
    return names


def setting_named(name: str) -> str | None:
    """The setting an environment variable name gives (any case, or an alias), or None."""
    return _env_names().get(name.lower())


def server_setting(text: str) -> str:
    """NAME=VALUE for the environment of a server a script starts: NAME a setting (any case),
    VALUE one it takes. A typo was ignored by the server, a bad value stopped it with the
    reason in its log only. Returned as NAME=VALUE with NAME in upper case."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    setting = setting_named(name)
    if setting is None:
        raise argparse.ArgumentTypeError(f"unknown setting {name.upper()}")
    setting_value(setting)(value)
    return f"{name.upper()}={value}"


def env_file_settings(path: Path) -> dict[str, Any]:
    """The settings a .env-style file sets, by field name, each value checked as its setting
    checks it; a blank value leaves the setting alone, as in `.env`. pydantic-settings ignores
    a name it does not know, so a typo (SPECULATVE_CHAT=false) ran the default unnoticed.
    Raises ValueError naming the file and every unknown name, or the first value refused."""
    try:
        lines = dotenv_values(path, encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    names = _env_names()
    unknown = [key for key in lines if key.lower() not in names]
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    values = {}
    for key, text in lines.items():
        if text:
            try:
                values[names[key.lower()]] = setting_value(names[key.lower()])(text)
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f"{path}: {exc}") from None
    return values


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
