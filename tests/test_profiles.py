"""configs/profiles.json: the shipped file loads, a mistake in one is named, not ignored, and
the models a profile names are ready (or said not to be) at start and in `doctor`."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import dashscope
import pytest
from dashscope import Application

from fastapi_server.serve import files_or_exit
from lang_agent.agent.profiles import load_profiles
from lang_agent.doctor import check_files, check_models
from lang_agent.settings import ROLES, ROOT
from tests.conftest import TEST_KEY


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


def profiles_file(tmp_path, profiles: dict) -> Path:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps(profiles), encoding="utf-8")
    return path


def test_a_profile_s_own_models_are_ready_or_named_at_start(
    live_server, simulator, tmp_path, caplog
):
    # The roles on a provider (the session's simulator, as if DashScope) and one app trying
    # models on `sim:`: no simulator was started for it, and each of its turns was a 502.
    path = profiles_file(
        tmp_path,
        {
            "try-out": {"models": {role: f"sim:sim-{role}" for role in ROLES}},
            "kitchen": {"models": {"chat": "moonshot:kimi-k2.5"}},
        },
    )
    caplog.set_level(logging.INFO)
    server = live_server(
        sim_url=None,
        llm_provider="ali",
        ali_api_key="sk-test",
        ali_base_url=simulator.base_url,
        profiles_file=path,
    )
    dashscope.base_http_api_url = f"{server.url}/api/"
    reply = Application.call(api_key=TEST_KEY, app_id="try-out", prompt="你好")
    assert reply.status_code == 200, reply.message
    assert {m["model_id"] for m in reply.usage["models"]} <= {f"sim-{r}" for r in ROLES}
    # A profile's model without its provider's key is said at start, as a role's is, not
    # found by its app's first turn failing.
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "profile kitchen: role chat uses moonshot:kimi-k2.5" in line and "no API key" in line
        for line in warned
    ), warned


async def test_doctor_checks_the_models_a_profile_gives_its_roles(make_settings, tmp_path):
    path = profiles_file(
        tmp_path,
        {"kitchen": {"models": {"chat": "moonshot:kimi-k2.5", "router": "sim:sim-router"}}},
    )
    checks = {c.name: c for c in await check_models(make_settings(profiles_file=path))}
    chat = checks["model kitchen/chat"]
    assert not chat.ok and "no MOONSHOT_API_KEY" in chat.detail
    assert checks["model kitchen/router"].ok and checks["model chat"].ok


def test_a_default_profile_that_is_not_one_stops_start_up_and_fails_doctor(make_settings, tmp_path):
    # DEFAULT_PROFILE=kid (for kids-speaker) passed doctor, and unknown app ids got the
    # built-in default instead of the product named.
    path = profiles_file(tmp_path, {"kids-speaker": {"filler": False}})
    settings = make_settings(profiles_file=path, default_profile="kid")
    words = f"DEFAULT_PROFILE 'kid' is not a profile of {path} (profiles: default, kids-speaker)"
    with pytest.raises(SystemExit):
        files_or_exit(settings)
    with pytest.raises(ValueError, match=re.escape(words)):
        load_profiles(path, default="kid")
    (bad,) = [c for c in check_files(settings) if not c.ok]
    assert bad.name == "profiles" and words in bad.detail and "DEFAULT_PROFILE" in bad.fix
    assert all(c.ok for c in check_files(make_settings(default_profile="tool_node")))


def test_a_profiles_path_that_cannot_be_read_stops_start_up_and_fails_doctor(
    make_settings, tmp_path
):
    # A directory (or a file without read permission) "loaded" as the default profile alone.
    settings = make_settings(profiles_file=tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path}: cannot be read (Is a directory)")):
        load_profiles(tmp_path)
    with pytest.raises(SystemExit):
        files_or_exit(settings)
    (bad,) = [c for c in check_files(settings) if not c.ok]
    assert bad.name == "profiles" and "cannot be read" in bad.detail
