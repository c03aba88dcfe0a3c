"""Shared pieces of the `lang-agent` commands: exit codes and building Settings from flags."""

from __future__ import annotations

import click
from pydantic import ValidationError

from lang_agent.settings import Settings, settings_error

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
    except ValidationError as exc:
        raise click.ClickException(settings_error(exc)) from exc
