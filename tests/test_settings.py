"""Settings: secure defaults, the CONN_STR alias, and keys that stay secret."""

import pytest
from pydantic import ValidationError

from lang_agent.settings import Settings


def test_refuses_open_bind_without_keys():
    with pytest.raises(ValidationError, match="FAST_AUTH_KEYS"):
        Settings(_env_file=None, host="0.0.0.0")
    assert Settings(_env_file=None, host="0.0.0.0", fast_auth_keys="k").host == "0.0.0.0"
    assert Settings(_env_file=None, host="::1").host == "::1"


def test_keys_are_split_and_never_shown(monkeypatch):
    monkeypatch.setenv("FAST_AUTH_KEYS", " k1 , k2 ,,")
    settings = Settings(_env_file=None)
    assert settings.auth_keys == ["k1", "k2"]
    assert "k1" not in repr(settings)


@pytest.mark.parametrize("name", ["CONN_STR", "DATABASE_URL"])
def test_conn_str_aliases(monkeypatch, name):
    monkeypatch.setenv(name, "postgresql://u:secret@db/x")
    settings = Settings(_env_file=None)
    assert settings.conn_str.get_secret_value() == "postgresql://u:secret@db/x"
    assert "secret" not in repr(settings)


def test_a_repeat_window_of_no_characters_is_refused(monkeypatch):
    """The repeat detector divides by it: zero would fail every streamed call, not the start."""
    monkeypatch.setenv("REPEAT_MIN_LENGTH", "0")
    with pytest.raises(ValidationError, match="repeat_min_length"):
        Settings(_env_file=None)
