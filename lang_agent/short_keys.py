"""Client keys too short to be safe (FAST_AUTH_KEYS, VIEWER_KEYS): said at start-up and by
`lang-agent doctor`, naming a key by its place in the list, never by its text."""

from __future__ import annotations

from lang_agent.settings import Settings, split_keys

# A random key of 16 URL-safe characters is ~96 bits: out of reach of guessing over HTTP.
MIN_KEY_LENGTH = 16
NEW_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def short_keys_line(setting: str, keys: list[str]) -> str | None:
    """One line naming the keys of `setting` under MIN_KEY_LENGTH, or None if there are none."""
    places = [str(n) for n, key in enumerate(keys, 1) if len(key) < MIN_KEY_LENGTH]
    if not places:
        return None
    which = f"key {places[0]} of {len(keys)} is"
    if len(places) > 1:
        which = f"keys {', '.join(places)} of {len(keys)} are"
    return (
        f"{setting}: {which} shorter than {MIN_KEY_LENGTH} characters, easy to guess; make a "
        f"long random one: {NEW_KEY_HINT}"
    )


def short_keys_lines(settings: Settings) -> list[str]:
    """The lines for FAST_AUTH_KEYS and VIEWER_KEYS (the viewer's own keys, if it has any)."""
    lines = (
        short_keys_line("FAST_AUTH_KEYS", settings.auth_keys),
        short_keys_line("VIEWER_KEYS", split_keys(settings.viewer_keys)),
    )
    return [line for line in lines if line is not None]
