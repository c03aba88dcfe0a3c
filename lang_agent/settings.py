"""One typed Settings object, read from the environment, `.env` and CLI flags."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from lang_agent.agent.events import BusyPolicy

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

Role = Literal["router", "chat", "tool", "chatty"]
ROLES: tuple[Role, ...] = ("router", "chat", "tool", "chatty")
# A century: a longer retention (or an infinite one) is no date Python can compute; 0 is forever.
MAX_RETENTION_DAYS = 36500
Provider = Literal["sim", "ali", "moonshot", "openai"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
# Hosted providers: each has a <NAME>_BASE_URL and a <NAME>_API_KEY setting.
HOSTED_PROVIDERS = tuple(name for name in PROVIDERS if name != "sim")
# Paths the proxy answers itself or maps onto the default upstream: no route may take them.
_RESERVED_PREFIXES = ("/v1", "/metrics")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_http_url(text: str) -> bool:
    """An http(s) URL with a host (and a port, if any, other than 0): a base URL to call."""
    try:
        parts = urlsplit(text)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # an unclosed [IPv6 bracket, a port out of range
        return False


def model_name(text: str) -> str:
    """`[provider:]name` naming a known provider, if any. `qwne:qwen-max` was the model
    `qwne:qwen-max` of the default provider: the simulator, without keys, answered it. A name
    that holds `:` itself (llama3:8b) starts with its provider: openai:llama3:8b."""
    provider, sep, _ = text.partition(":")
    if sep and provider not in PROVIDERS:
        raise ValueError(
            f"unknown provider {provider!r} in {text!r} (known: {', '.join(PROVIDERS)}; a "
            "model name holding ':' starts with its provider, e.g. openai:llama3:8b)"
        )
    return text


# Not the URL itself: it may hold a password.
NOT_AN_HTTP_URL = "expected an http(s) URL with a host, e.g. http://127.0.0.1:8599/v1"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_SETTINGS_ERROR_FIELD = re.compile(r'field "(\w+)"')


def settings_error(exc: ValidationError | SettingsError) -> str:
    """Every problem of a ValidationError on one line, each under its setting's variable name;
    or the setting whose value is not even JSON (a SettingsError, from the environment)."""
    if isinstance(exc, SettingsError):
        field = _SETTINGS_ERROR_FIELD.search(str(exc))
        name = field.group(1).upper() if field else "a setting"
        return f"{name}: not valid JSON ({exc.__cause__})" if exc.__cause__ else str(exc)
    parts = []
    for error in exc.errors():
        name = ".".join(str(part) for part in error["loc"]).upper()
        # A validator's own ValueError says what to do; pydantic prefixes "Value error, ".
        message = str(error.get("ctx", {}).get("error") or error["msg"])
        parts.append(f"{name}: {message}" if name else message)
    return "; ".join(parts)


class ProxyRoute(BaseModel):
    """One more upstream of `lang-agent proxy start`, for calls under a path prefix (`/qwen`:
    the client's base_url ends in `/qwen/v1`) or for calls naming a model that matches one of
    `models` (glob patterns such as `qwen-*`). `upstream` is a base URL or a hosted provider's
    name (`ali`, `moonshot`, `openai`), which brings that provider's base URL and key."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    prefix: str | None = None
    models: list[str] = Field(default_factory=list)
    upstream: str
    key: SecretStr | None = None

    @field_validator("upstream")
    @classmethod
    def _upstream_is_a_url_or_provider(cls, value: str) -> str:
        if value in HOSTED_PROVIDERS or is_http_url(value):
            return value
        raise ValueError(
            f"{value!r} is neither an http(s) base URL nor one of {', '.join(HOSTED_PROVIDERS)}"
        )

    @field_validator("prefix")
    @classmethod
    def _prefix_is_a_path_of_its_own(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or value.endswith("/") or any(c in value for c in "?#% "):
            raise ValueError(f"prefix {value!r} must be a path such as /qwen (no trailing /)")
        if any(value == p or value.startswith(p + "/") for p in _RESERVED_PREFIXES):
            raise ValueError(f"prefix {value!r} would hide {', '.join(_RESERVED_PREFIXES)}")
        return value

    @field_validator("models")
    @classmethod
    def _patterns_are_not_blank(cls, value: list[str]) -> list[str]:
        if any(not pattern.strip() for pattern in value):
            raise ValueError("a model pattern is blank")
        return value

    @model_validator(mode="after")
    def _chosen_somehow(self) -> ProxyRoute:
        if self.prefix is None and not self.models:
            raise ValueError("a route needs a prefix, models, or both")
        return self

    @property
    def label(self) -> str:
        """Its name in logs: `name`, else the prefix, else the first model pattern."""
        return self.name or self.prefix or self.models[0]


class Settings(BaseSettings):
    """Everything configurable: field `conn_str` = env var `CONN_STR` = flag `--conn-str`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    # --- network and auth
    host: str = Field("127.0.0.1", description="Address the agent API binds to.")
    port: int = Field(
        8588, ge=0, le=65535, description="Port of the agent API (OpenAI and DashScope paths)."
    )
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Worker processes of server_dashscope.py and server_openai.py; each has its "
        "own socket on the port (SO_REUSEPORT), and one holding more than its share of kept-alive "
        "connections closes some as their answers end, so connections stay even.",
    )
    viewer_port: int = Field(8590, ge=0, le=65535, description="Port of the conversation viewer.")
    viewer_host: str = Field(
        "127.0.0.1",
        description="Address the viewer binds to; beyond loopback it needs VIEWER_KEYS or "
        "FAST_AUTH_KEYS.",
    )
    viewer_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated viewer login keys. Empty: FAST_AUTH_KEYS; both empty: "
        "loopback only.",
    )
    viewer_login_failures: int = Field(
        10,
        ge=1,
        description="Wrong viewer keys (at the login page or as a Bearer key) one client address "
        "may send within VIEWER_LOGIN_WINDOW_S; past them its logins and keys get 429 with "
        "Retry-After until that window has passed (a session cookie still works).",
    )
    viewer_login_window_s: float = Field(
        300.0, gt=0, description="The window of VIEWER_LOGIN_FAILURES, seconds from the first."
    )
    viewer_conn_str: SecretStr | None = Field(
        None,
        description="Postgres DSN of a read-only role for the viewer. Empty: the viewer makes "
        "a read-only role `lang_agent_viewer` with the main DSN.",
    )
    fast_auth_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys clients send as `Authorization: Bearer <key>`. "
        "Empty: loopback only.",
    )
    max_body_bytes: int = Field(
        2_000_000, ge=1, description="Largest accepted request body, bytes."
    )
    max_messages: int = Field(
        2000,
        ge=1,
        description="Most messages accepted in one request (DashScope keeps the newest instead).",
    )
    request_read_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a client may take to send one request, head and body, seconds, from "
        "its first byte (a new connection: from its opening); a slower one gets 408 and its "
        "connection is closed, so slow clients cannot hold connections (slowloris). The agent "
        "API and the viewer.",
    )

    dashscope_fallback_text: str = Field(
        "抱歉，我这边出了点问题，请稍后再试。",
        description="Spoken on DashScope streams when a turn fails (the model, the database, a "
        "timeout; once the speaker has started, any failure but a barge-in), so the speaker is "
        "not silent; the conversation log keeps it as the failed turn's last message, marked "
        "is_fallback.",
    )
    dashscope_busy_session: BusyPolicy = Field(
        "preempt",
        description="DashScope: what a request does on a busy session_id; as BUSY_THREAD. "
        "`preempt` is xiaozhi's barge-in: the user spoke again, so the old answer stops "
        "(no fallback is spoken) and the new one starts at once, unless the old answer is "
        "whole and being saved to memory: that is waited for.",
    )
    dashscope_fake_stream: bool = Field(
        False, description="DashScope: finish each turn first, then stream it in small pieces."
    )

    # --- storage
    conn_str: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CONN_STR", "DATABASE_URL", "conn_str"),
        description="Postgres DSN. Empty: an embedded Postgres in `data_dir`.",
    )
    data_dir: Path = Field(Path(".lang-agent"), description="Where the embedded Postgres lives.")
    db_pool_size: int = Field(20, ge=1, description="Largest Postgres pool for turns and memory.")
    db_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a Postgres connection, seconds; a turn or a viewer request "
        "that gets none (the database is down or restarting) fails with a clean, retryable 503.",
    )
    db_start_wait_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="How long start-up waits for a database that is still starting, seconds; "
        "then the server stops with one line.",
    )

    # --- model providers
    llm_provider: Literal["auto", Provider] = Field(
        "auto",
        description="Provider for model names without a `provider:` prefix. `auto`: ali if "
        "ALI_API_KEY, else moonshot if MOONSHOT_API_KEY, else openai if OPENAI_API_KEY, else sim.",
    )
    ali_api_key: SecretStr | None = Field(None, description="DashScope (Qwen) API key.")
    ali_base_url: str = Field(
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        description="DashScope OpenAI-compatible base URL.",
    )
    moonshot_api_key: SecretStr | None = Field(None, description="Moonshot (Kimi) API key.")
    moonshot_base_url: str = Field("https://api.moonshot.cn/v1", description="Moonshot base URL.")
    openai_api_key: SecretStr | None = Field(None, description="Key for any OpenAI-compatible API.")
    openai_base_url: str = Field(
        "https://api.openai.com/v1", description="Base URL of that OpenAI-compatible API."
    )
    sim_url: str | None = Field(
        None,
        description="Base URL of a running simulator (`lang-agent sim`). Empty: the server "
        "starts one in-process on a free loopback port when a role uses the sim.",
    )
    router_model: str | None = Field(None, description="Router model, `[provider:]name`.")
    chat_model: str | None = Field(None, description="Chat model, `[provider:]name`.")
    tool_model: str | None = Field(None, description="Tool model, `[provider:]name`.")
    chatty_model: str | None = Field(None, description="Filler model, `[provider:]name`.")
    fallback_model: str | None = Field(
        None,
        description="Model, `[provider:]name`, that answers for any role whose call fails "
        "before its first token once its retries are spent. Empty: no fallback.",
    )
    max_tokens: int = Field(1024, ge=1, description="Completion token budget per model call.")
    llm_timeout_s: float = Field(
        20.0, gt=0, description="Idle-read timeout of one model call, seconds."
    )
    llm_retries: int = Field(
        2, ge=0, description="Retries of a model call that fails before any token."
    )

    # --- the turn
    route_fallback: Literal["chat", "tool"] = Field(
        "chat", description="Route taken when the router's decision cannot be parsed."
    )
    router_history: int = Field(6, ge=1, description="Recent messages the router sees.")
    memory_max_messages: int = Field(
        200,
        ge=0,
        description="Messages a thread's memory keeps: the latest, whole turns. Older ones stay "
        "in the conversation log. 0: keep all.",
    )
    speculative_chat: bool = Field(
        True,
        description="Start the chat answer while the router decides; discarded on the tool "
        "route. Faster first text, a few wasted tokens per tool turn.",
    )
    stream_hold_ms: int = Field(
        50,
        ge=0,
        description="After an answer's first text, how long text short of a clause mark "
        "(，。！？ and the like) may wait for the rest of its clause, to go out in one frame: "
        "a third of the frames for the client to parse, and nothing later for a voice client, "
        "which speaks whole clauses. 0: a frame per model chunk.",
    )
    max_tool_steps: int = Field(4, ge=1, description="Most model→tool rounds in one turn.")
    tool_result_max_chars: int = Field(
        8000,
        ge=100,
        description="Longest tool result the tool model sees (and the log keeps), characters; "
        "a longer one is cut with a note saying so. At most a quarter of the tool model's "
        "context window is used either way.",
    )
    tool_timeout_s: float = Field(
        30.0, gt=0, description="Default timeout of one tool call, seconds."
    )
    filler: bool = Field(True, description="Stream filler speech while tools run (streams only).")
    filler_delay_ms: int = Field(
        0,
        ge=0,
        description="Wait this long on the tool route before filler starts; a tool path that "
        "answers sooner gets no filler (e.g. 300). 0: filler starts with the tool call.",
    )
    turn_timeout_s: float = Field(25.0, gt=0, description="Budget of one whole turn, seconds.")
    shutdown_grace_s: float = Field(
        10.0,
        ge=0,
        description="On SIGTERM, how long streams in flight may run on; a turn still running "
        "1 s before the end ends with a `shutting_down` error. New requests are refused at once.",
    )
    busy_thread: BusyPolicy = Field(
        "wait",
        description="A second request on a busy thread waits, is refused with 409 (`reject`), "
        "or ends the turn running there (`preempt`: it ends with `preempted`, 409) and runs "
        "next. Across worker processes, and for a turn whose answer is whole and being saved, "
        "`preempt` waits.",
    )
    busy_wait_s: float = Field(30.0, ge=0, description="Longest wait for a busy thread, seconds.")

    # --- files
    prompts_dir: Path = Field(CONFIGS / "route_sys_prompts", description="System prompt files.")
    models_file: Path = Field(CONFIGS / "models.json", description="Context windows and prices.")
    mcp_config: Path = Field(CONFIGS / "mcp_config.json", description="MCP server connections.")
    mcp_retry_s: float = Field(
        1.0, gt=0, description="First MCP reconnect delay; doubles per failure."
    )
    mcp_retry_max_s: float = Field(30.0, gt=0, description="Longest MCP reconnect delay, seconds.")
    mcp_connect_timeout_s: float = Field(
        10.0, gt=0, description="Budget to connect to one MCP server and list its tools, seconds."
    )
    mcp_ping_s: float = Field(15.0, gt=0, description="Ping interval that finds dead MCP sessions.")
    device_map: Path | None = Field(
        None,
        description='JSON file {"<thread_id>": "<device_id>", "*": "<fallback>"}: the device '
        "a thread's tool calls go to when the turn names none.",
    )
    profiles_file: Path = Field(
        CONFIGS / "profiles.json",
        description="Named pipeline profiles, picked by a DashScope app_id or an OpenAI `model`.",
    )
    default_profile: str = Field(
        "default",
        description="Profile for an app id (or OpenAI `model`) that names none: `default` (the "
        "settings as they are) or a profile of PROFILES_FILE.",
    )

    # --- capture (every model call recorded in llm_calls) and the standalone proxy
    capture: bool = Field(True, description="Record every model call in the llm_calls table.")
    capture_queue_size: int = Field(
        10000,
        ge=1,
        description="Capture rows waiting for the writer; beyond this they are dropped.",
    )
    capture_queue_mb: float = Field(
        32,
        gt=0,
        description="Request and response bodies of the capture rows waiting for the writer, "
        "MB; beyond this, as beyond CAPTURE_QUEUE_SIZE, rows are dropped.",
    )
    capture_batch_size: int = Field(
        200, ge=1, description="Most capture rows written in one batch."
    )
    capture_max_body_bytes: int = Field(
        1_000_000,
        ge=0,
        description="Request/response bytes kept per call; the rest is cut (flagged).",
    )
    redact_headers: str = Field(
        "",
        description="Extra comma-separated header names redacted in captures (Authorization, "
        "api-key style names, cookies, names ending in token, and any *secret*/*passw*/*auth* "
        "header always are).",
    )
    force_stream: bool = Field(
        False, description="Send non-stream chat calls upstream as streams; merge them back."
    )
    detect_repeat: bool = Field(
        False, description="Cut a looping stream and end it with finish_reason `repeat`."
    )
    repeat_threshold: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Repeat verdict when the share of new text in the recent output is below.",
    )
    repeat_min_length: int = Field(
        200, ge=1, description="Characters of recent output the repeat detector judges at once."
    )
    proxy_port: int = Field(
        9988, ge=0, le=65535, description="Port of `lang-agent proxy start` (127.0.0.1)."
    )
    proxy_upstream: str = Field(
        "https://api.moonshot.cn/v1",
        description="Base URL the proxy forwards to, but for calls that PROXY_ROUTES send "
        "elsewhere.",
    )
    proxy_key: SecretStr | None = Field(
        None, description="API key the proxy sends upstream instead of the client's."
    )
    proxy_routes: list[ProxyRoute] = Field(
        default_factory=list,
        description="More upstreams of the proxy, as a JSON list of routes, each chosen by "
        "path prefix or by model (docs/proxy.md).",
    )
    proxy_read_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Proxy idle-read timeout: longest silence inside a response, seconds.",
    )
    proxy_add_usage: bool = Field(
        True,
        description="Proxy: ask the upstream for the usage of a streamed chat call whose client "
        "did not (stream_options.include_usage), and take that usage chunk out of the client's "
        "stream, so every streamed call has tokens and cost.",
    )

    # --- retention (`lang-agent cleanup`, and the server's periodic job)
    keep_checkpoints: int = Field(
        20,
        ge=0,
        description="Checkpoints kept per thread (the latest); older ones are pruned. 0: keep all.",
    )
    log_retention_days: float = Field(
        0,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Conversation log (turns, messages) kept this many days. 0: forever.",
    )
    capture_retention_days: float = Field(
        30,
        ge=0,
        le=MAX_RETENTION_DAYS,
        description="Captured model calls (llm_calls) kept this many days. 0: forever.",
    )
    retention_interval_h: float = Field(
        0,
        ge=0,
        le=MAX_RETENTION_DAYS * 24,
        description="The server prunes by the rules above every this many hours. 0: never.",
    )

    # --- evaluation (scripts/eval.py, scripts/make_eval_dataset.py)
    eval_concurrency: int = Field(8, ge=1, description="Eval cases run at the same time.")
    judge_model: str | None = Field(
        None, description="LLM judge for eval answers, `[provider:]name`. Empty: no judge."
    )
    langsmith_api_key: SecretStr | None = Field(
        None, description="LangSmith key: eval datasets and experiments are uploaded with it."
    )

    timezone: str = Field(
        "Asia/Shanghai",
        description="Time zone of prompts, the clock tool and the dashboard's days; "
        "`lang-agent calls` shows times in it and reads a time without an offset in it.",
    )
    log_level: str = Field("INFO", description="Python logging level.")

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except UnicodeDecodeError:
            # python-dotenv reads .env as UTF-8 and raised from deep inside it: a traceback
            # at every command for a .env that Windows Notepad saved as UTF-16.
            env_file = values.get("_env_file", type(self).model_config.get("env_file"))
            raise SettingsError(
                f"{Path(str(env_file)).absolute()}: not UTF-8 text; save it as UTF-8"
            ) from None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ValueError, ZoneInfoNotFoundError):
            raise ValueError(
                f"unknown time zone {value!r}: an IANA name, e.g. Asia/Shanghai"
            ) from None
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in LOG_LEVELS:
            raise ValueError(f"unknown level {value!r}: one of {', '.join(LOG_LEVELS)}")
        return value.upper()

    @field_validator(
        "router_model", "chat_model", "tool_model", "chatty_model", "fallback_model", "judge_model"
    )
    @classmethod
    def _a_model_name(cls, value: str | None) -> str | None:
        return value if value is None else model_name(value)

    @field_validator(
        "ali_base_url", "moonshot_base_url", "openai_base_url", "sim_url", "proxy_upstream"
    )
    @classmethod
    def _an_http_url(cls, value: str | None) -> str | None:
        # ftp://x or a bare host name failed only at the first model call, as a connect error.
        if value is not None and not is_http_url(value):
            raise ValueError(NOT_AN_HTTP_URL)
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} is a file, not a directory")
        return value

    @field_validator("conn_str", "viewer_conn_str", mode="before")
    @classmethod
    def _blank_dsn_is_none(cls, value: object) -> object:
        """`--conn-str ''` means what an empty CONN_STR does: the embedded Postgres (libpq
        would take an empty DSN for its default local socket)."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _refuse_open_bind_without_keys(self) -> Settings:
        if not self.auth_keys and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without FAST_AUTH_KEYS: set FAST_AUTH_KEYS "
                "or bind 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _refuse_open_viewer_without_keys(self) -> Settings:
        if not self.viewer_auth_keys and not is_loopback(self.viewer_host):
            raise ValueError(
                f"refusing to serve the viewer on {self.viewer_host} without VIEWER_KEYS or "
                "FAST_AUTH_KEYS: set one or bind 127.0.0.1"
            )
        return self

    @model_validator(mode="after")
    def _proxy_routes_are_distinct(self) -> Settings:
        for attribute in ("label", "prefix"):
            seen = [getattr(r, attribute) for r in self.proxy_routes]
            twice = sorted({v for v in seen if v is not None and seen.count(v) > 1})
            if twice:
                raise ValueError(f"two proxy routes share the {attribute} {', '.join(twice)}")
        return self

    def provider_endpoint(self, provider: str) -> tuple[str, SecretStr | None]:
        """A hosted provider's base URL and key: ALI_BASE_URL and ALI_API_KEY for `ali`."""
        return getattr(self, f"{provider}_base_url"), getattr(self, f"{provider}_api_key")

    @property
    def viewer_auth_keys(self) -> list[str]:
        """The viewer's login keys: VIEWER_KEYS, else FAST_AUTH_KEYS."""
        return split_keys(self.viewer_keys) or self.auth_keys

    @property
    def auth_keys(self) -> list[str]:
        return split_keys(self.fast_auth_keys)


def split_keys(keys: SecretStr) -> list[str]:
    """A comma-separated key list, each key stripped, empty entries dropped."""
    return [k.strip() for k in keys.get_secret_value().split(",") if k.strip()]
