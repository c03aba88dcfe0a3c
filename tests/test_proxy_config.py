"""The proxy's configuration: its file, its routes (file, flag, env), checked and matched."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from lang_agent.capture.proxy import load_config_file
from lang_agent.capture.routes import Routes
from lang_agent.cli import main
from lang_agent.settings import Settings

QWEN = "https://dashscope.aliyuncs.com/compatible-mode/v1"


def settings(*routes: dict, **values: object) -> Settings:
    return Settings(
        _env_file=None, proxy_upstream="http://default/v1", proxy_routes=routes, **values
    )


def body(model: object) -> bytes:
    return json.dumps({"model": model, "messages": []}).encode()


def test_the_longest_prefix_wins_and_is_taken_off_the_path():
    routes = Routes.from_settings(
        settings(
            {"prefix": "/a", "upstream": "http://a/v1"},
            {"prefix": "/a/b", "upstream": "http://ab/v1"},
        )
    )
    assert routes.pick("/a/v1/chat/completions", b"") == (routes.routes[0], "/v1/chat/completions")
    assert routes.pick("/a/b/v1/models", b"") == (routes.routes[1], "/v1/models")
    assert routes.pick("/a", b"") == (routes.routes[0], "")
    # Only whole path segments: /ab is not under /a.
    assert routes.pick("/ab/v1/models", b"") == (routes.default, "/ab/v1/models")


def test_models_match_globs_in_order_and_a_prefix_comes_first():
    routes = Routes.from_settings(
        settings(
            {"name": "qwen", "models": ["qwen-*", "qwq-*"], "upstream": QWEN},
            {"name": "all-qwen", "models": ["qwen*"], "upstream": "http://other/v1"},
            {"name": "pinned", "prefix": "/k", "upstream": "http://k/v1"},
        )
    )
    qwen, _, pinned = routes.routes
    assert routes.pick("/v1/chat/completions", body("qwq-32b")) == (qwen, "/v1/chat/completions")
    assert routes.pick("/v1/chat/completions", body("qwen-plus"))[0] is qwen
    assert routes.pick("/k/v1/chat/completions", body("qwen-plus")) == (
        pinned,
        "/v1/chat/completions",
    )
    assert (
        routes.pick("/v1/chat/completions", body("Qwen-plus"))[0] is routes.default
    )  # case counts


@pytest.mark.parametrize("content", [b"", b"not json", b"[1, 2]", body(7), b'{"messages": []}'])
def test_a_call_without_a_model_name_goes_to_the_default(content):
    routes = Routes.from_settings(settings({"models": ["*"], "upstream": "http://any/v1"}))
    assert routes.pick("/v1/chat/completions", content)[0] is routes.default


def test_a_provider_name_brings_its_url_and_key_and_a_route_key_comes_first():
    routes = Routes.from_settings(
        settings(
            {"prefix": "/qwen", "upstream": "ali"},
            {"prefix": "/kimi", "upstream": "moonshot", "key": "sk-route"},
            {"prefix": "/open", "upstream": "openai"},
            ali_api_key="sk-ali",
            moonshot_api_key="sk-moonshot",
        )
    )
    qwen, kimi, open_ = routes.routes
    assert (qwen.base_url, qwen.key) == (QWEN, "sk-ali")
    assert (kimi.base_url, kimi.key) == ("https://api.moonshot.cn/v1", "sk-route")
    assert (open_.base_url, open_.key) == ("https://api.openai.com/v1", None)
    assert "sk-" not in qwen.describe() + kimi.describe()
    assert qwen.describe() == f"path /qwen/… -> {QWEN} with its own key"


def test_a_route_s_description_hides_a_password_in_its_url():
    (route,) = Routes.from_settings(
        settings({"models": ["m"], "upstream": "http://user:pw@host/v1"})
    ).routes
    assert "pw" not in route.describe() and route.describe().startswith("model m -> http://")


@pytest.mark.parametrize(
    ("route", "problem"),
    [
        ({"upstream": "http://a/v1"}, "a route needs a prefix, models, or both"),
        ({"prefix": "/a", "upstream": "ftp://a"}, "neither an http(s) base URL nor one of"),
        ({"prefix": "/a", "upstream": "dashscope"}, "neither an http(s) base URL nor one of"),
        ({"prefix": "a", "upstream": "ali"}, "must be a path such as /qwen"),
        ({"prefix": "/a/", "upstream": "ali"}, "must be a path such as /qwen"),
        ({"prefix": "/v1", "upstream": "ali"}, "would hide /v1, /metrics"),
        ({"prefix": "/metrics", "upstream": "ali"}, "would hide /v1, /metrics"),
        ({"models": [" "], "upstream": "ali"}, "a model pattern is blank"),
        ({"prefix": "/a", "upstream": "ali", "keys": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_route_is_refused_with_its_problem(route, problem):
    with pytest.raises(ValidationError, match=re.escape(problem)):
        settings(route)


def test_two_routes_may_not_share_a_prefix_or_a_name():
    with pytest.raises(ValidationError, match="share the prefix /a"):
        settings(
            {"prefix": "/a", "upstream": "ali"},
            {"prefix": "/a", "models": ["x"], "upstream": "ali", "name": "b"},
        )
    with pytest.raises(ValidationError, match="share the label q"):
        settings(
            {"name": "q", "prefix": "/a", "upstream": "ali"},
            {"name": "q", "prefix": "/b", "upstream": "ali"},
        )


def test_routes_from_the_environment_as_json(monkeypatch):
    monkeypatch.setenv("PROXY_ROUTES", json.dumps([{"prefix": "/qwen", "upstream": "ali"}]))
    assert Settings(_env_file=None).proxy_routes[0].prefix == "/qwen"


def test_routes_from_a_config_file(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[proxy]\nupstream = "http://u/v1"\n'
        '[[proxy.routes]]\nprefix = "/qwen"\nupstream = "ali"\n'
        '[[proxy.routes]]\nmodels = ["kimi-*"]\nupstream = "moonshot"\n'
    )
    values = load_config_file(config)
    assert values["proxy_routes"] == [
        {"prefix": "/qwen", "upstream": "ali"},
        {"models": ["kimi-*"], "upstream": "moonshot"},
    ]
    assert [r.label for r in Settings(_env_file=None, **values).proxy_routes] == ["/qwen", "kimi-*"]


@pytest.mark.parametrize(
    ("args", "code", "error"),
    [
        (["--route", "/qwen"], 2, "'/qwen' is not PREFIX=UPSTREAM or MODELS=UPSTREAM"),
        (["--route", "/qwen=qwen"], 1, "PROXY_ROUTES.0.UPSTREAM: 'qwen' is neither"),
        (["--route", "/a=ali", "--route", "/a=moonshot"], 1, "share the label /a"),
    ],
)
def test_proxy_start_refuses_a_bad_route_in_one_line(args, code, error):
    result = CliRunner().invoke(main, ["proxy", "start", "--port", "0", *args])
    assert result.exit_code == code
    assert error in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("name", "content", "error"),
    [
        ("bad.toml", b"port = \n", "bad.toml: Invalid value (at line 1, column 8)"),
        ("bad.json", b"[1]", "bad.json: settings must be a table (TOML) or an object (JSON)"),
        ("bad.toml", b"\xff", "bad.toml: 'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_proxy_start_refuses_an_unreadable_config_file_in_one_line(tmp_path, name, content, error):
    config = tmp_path / name
    config.write_bytes(content)
    result = CliRunner().invoke(main, ["proxy", "start", "--config", str(config)])
    assert result.exit_code == 1
    assert error in result.output and "Traceback" not in result.output
