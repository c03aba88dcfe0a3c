"""Start-up says whose answers are simulated: every role's when no key is set, only the `sim:`
roles' beside a provider key, nothing when every role has a real model. (A simulator of one's
own, SIM_URL, is named in the role lines only.)"""

from __future__ import annotations

import logging

import pytest

from lang_agent.service import open_service

KEYS = ("ALI_API_KEY", "MOONSHOT_API_KEY", "OPENAI_API_KEY", "LLM_PROVIDER")
REAL = "https://api.openai.com/v1"


def _simulated_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "lang_agent.service" and "SIMULATED" in record.getMessage()
    ]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {},
            "no provider API key set: answers are SIMULATED by the built-in simulator at {url} "
            "(set ALI_API_KEY, MOONSHOT_API_KEY or OPENAI_API_KEY for real models)",
        ),
        (
            {"openai_api_key": "sk-test", "router_model": "sim:sim-router"},
            "role router is SIMULATED by the built-in simulator at {url}; "
            "chat, tool, chatty use real models",
        ),
        (
            {"ali_api_key": "sk-test", "chat_model": "sim:a", "chatty_model": "sim:b"},
            "roles chat, chatty are SIMULATED by the built-in simulator at {url}; "
            "router, tool use real models",
        ),
        (
            {"moonshot_api_key": "sk-test", "llm_provider": "sim", "tool_model": "moonshot:k"},
            "roles router, chat, chatty are SIMULATED by the built-in simulator at {url}; "
            "tool uses a real model",
        ),
        (
            {"openai_api_key": "sk-test", "llm_provider": "sim"},
            "answers are SIMULATED by the built-in simulator at {url}: every role's model is sim",
        ),
        ({"openai_api_key": "sk-test", "openai_base_url": REAL}, None),
    ],
)
async def test_start_up_names_the_roles_the_simulator_answers_for(
    make_settings, monkeypatch, caplog, overrides, expected
):
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    settings = make_settings(**{"sim_url": None, "llm_provider": "auto", **overrides})
    with caplog.at_level(logging.WARNING, logger="lang_agent.service"):
        async with open_service(settings) as service:
            url = service.agent.deps.models.sim_url
    assert _simulated_lines(caplog) == ([expected.format(url=url)] if expected else [])
