"""One typed Settings object, read from the environment, `.env` and CLI flags."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"

Role = Literal["router", "chat", "tool", "chatty"]
ROLES: tuple[Role, ...] = ("router", "chat", "tool", "chatty")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Settings(BaseSettings):
    """Everything configurable: field `conn_str` = env var `CONN_STR` = flag `--conn-str`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", populate_by_name=True
    )

    # --- network and auth
    host: str = Field("127.0.0.1", description="Address the agent API binds to.")
    port: int = Field(8588, description="Port of the agent API (OpenAI and DashScope paths).")
    viewer_port: int = Field(8590, description="Port of the conversation viewer.")
    fast_auth_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated API keys clients send as `Authorization: Bearer <key>`. "
        "Empty: loopback only.",
    )
    max_body_bytes: int = Field(2_000_000, description="Largest accepted request body, bytes.")
    max_messages: int = Field(2000, description="Most messages accepted in one request.")

    # --- storage
    conn_str: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CONN_STR", "DATABASE_URL", "conn_str"),
        description="Postgres DSN. Empty: an embedded Postgres in `data_dir`.",
    )
    data_dir: Path = Field(Path(".lang-agent"), description="Where the embedded Postgres lives.")
    db_pool_size: int = Field(20, description="Largest Postgres pool for turns and memory.")

    # --- model providers
    llm_provider: Literal["auto", "sim", "ali", "moonshot", "openai"] = Field(
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
    max_tokens: int = Field(1024, description="Completion token budget per model call.")
    llm_timeout_s: float = Field(20.0, description="Idle-read timeout of one model call, seconds.")
    llm_retries: int = Field(2, description="Retries of a model call that fails before any token.")

    # --- the turn
    route_fallback: Literal["chat", "tool"] = Field(
        "chat", description="Route taken when the router's decision cannot be parsed."
    )
    router_history: int = Field(6, description="Recent messages the router sees.")
    max_tool_steps: int = Field(4, description="Most model→tool rounds in one turn.")
    tool_timeout_s: float = Field(30.0, description="Default timeout of one tool call, seconds.")
    filler: bool = Field(True, description="Stream filler speech while tools run (streams only).")
    filler_delay_ms: int = Field(
        300, description="Start filler only if the tool path has not answered within this."
    )
    turn_timeout_s: float = Field(25.0, description="Budget of one whole turn, seconds.")
    busy_thread: Literal["wait", "reject"] = Field(
        "wait", description="A second request on a busy thread waits, or is refused with 409."
    )
    busy_wait_s: float = Field(30.0, description="Longest wait for a busy thread, seconds.")

    # --- files
    prompts_dir: Path = Field(CONFIGS / "route_sys_prompts", description="System prompt files.")
    models_file: Path = Field(CONFIGS / "models.json", description="Context windows and prices.")
    mcp_config: Path = Field(CONFIGS / "mcp_config.json", description="MCP server connections.")
    profiles_file: Path = Field(
        CONFIGS / "profiles.json", description="Named pipeline profiles (DashScope app_id)."
    )
    default_profile: str = Field("default", description="Profile used for unknown app ids.")

    log_level: str = Field("INFO", description="Python logging level.")

    @model_validator(mode="after")
    def _refuse_open_bind_without_keys(self) -> Settings:
        if not self.auth_keys and not is_loopback(self.host):
            raise ValueError(
                f"refusing to listen on {self.host} without FAST_AUTH_KEYS: set FAST_AUTH_KEYS "
                "or bind 127.0.0.1"
            )
        return self

    @property
    def auth_keys(self) -> list[str]:
        raw = self.fast_auth_keys.get_secret_value()
        return [k.strip() for k in raw.split(",") if k.strip()]
