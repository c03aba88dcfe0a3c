"""configs/profiles.json: the shipped file loads, and a mistake in one is named, not ignored."""

from __future__ import annotations

import json

import pytest

from lang_agent.agent.profiles import load_profiles
from lang_agent.settings import ROOT


def test_the_shipped_profiles_load():
    profiles = load_profiles(ROOT / "configs" / "profiles.json")
    assert profiles["tool_node"].filler is False and profiles["default"].filler is True


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ({"filler": "false"}, "filler must be true or false, not 'false'"),  # was read as true
        ({"filer": False}, "unknown filer"),
        ({"models": {"chta": "ali:qwen-max"}}, "unknown role chta"),
        ({"models": {"chat": 1}}, "models must map role to model name"),
        # Ran on the default provider (the simulator without keys) as the model "qwne:…".
        (
            {"models": {"chat": "qwne:qwen-max"}},
            r"chat: unknown provider 'qwne' in 'qwne:qwen-max' \(known: sim, ali, moonshot,",
        ),
    ],
)
def test_a_mistake_in_a_profile_is_named(tmp_path, spec, words):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"default": spec}), encoding="utf-8")
    with pytest.raises(ValueError, match=words) as caught:
        load_profiles(path)
    assert str(caught.value).startswith(f"{path}: profile 'default': ")
