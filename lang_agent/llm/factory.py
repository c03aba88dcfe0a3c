"""The model factory: one chat model per role (router, chat, tool, chatty), driven by settings."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx2
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from lang_agent.capture.record import redact_url
from lang_agent.settings import HOSTED_PROVIDERS, PROVIDERS, ROLES, Role, Settings

logger = logging.getLogger(__name__)

DEFAULT_MODELS: dict[str, dict[Role, str]] = {
    "sim": {"router": "sim-router", "chat": "sim-chat", "tool": "sim-tool", "chatty": "sim-chatty"},
    "ali": {
        "router": "qwen-flash",
        "chat": "qwen-plus",
        "tool": "qwen-plus",
        "chatty": "qwen-flash",
    },
    "moonshot": {
        "router": "moonshot-v1-8k",
        "chat": "kimi-k2-0905-preview",
        "tool": "kimi-k2-0905-preview",
        "chatty": "moonshot-v1-8k",
    },
    "openai": {
        "router": "gpt-4o-mini",
        "chat": "gpt-4o-mini",
        "tool": "gpt-4o-mini",
        "chatty": "gpt-4o-mini",
    },
}


@dataclass(frozen=True)
class ModelSpec:
    role: Role
    provider: str
    model: str
    base_url: str
    api_key: SecretStr | None

    def __str__(self) -> str:
        # Shown in /health (open without a key), the start-up log and doctor: a base URL may
        # carry a gateway's credentials (https://user:pw@host, ?key=…), which stay out.
        return f"{self.provider}:{self.model} @ {redact_url(self.base_url)}"

    @property
    def lacks_key(self) -> bool:
        return self.provider != "sim" and self.api_key is None


def reasoning_off(spec: ModelSpec) -> dict[str, Any]:
    """Request fields that turn a model's reasoning off. Voice wants none, and a thinking
    model refuses the router's forced tool choice (capture/lint.py checks both). Qwen3's open
    models think unless `enable_thinking` is false, kimi-k2.5 unless `thinking` is disabled."""
    if spec.provider == "ali":
        return {"enable_thinking": False}
    if spec.provider == "moonshot" and spec.model.startswith("kimi-k2.5"):
        return {"thinking": {"type": "disabled"}}
    return {}


def default_provider(settings: Settings) -> str:
    if settings.llm_provider != "auto":
        return settings.llm_provider
    if settings.ali_api_key:
        return "ali"
    if settings.moonshot_api_key:
        return "moonshot"
    if settings.openai_api_key:
        return "openai"
    return "sim"


def parse_model(text: str, *, default: str) -> tuple[str, str]:
    """`provider:name` or bare `name` → (provider, name)."""
    provider, sep, name = text.partition(":")
    if sep and provider in PROVIDERS:
        return provider, name
    return default, text


def resolve_specs(
    settings: Settings, *, sim_url: str | None, overrides: dict[str, str] | None = None
) -> dict[Role, ModelSpec]:
    """Which provider, model and endpoint each role uses."""
    fallback = default_provider(settings)
    endpoints: dict[str, tuple[str | None, SecretStr | None]] = {
        "sim": (sim_url, SecretStr("sim")),
        **{name: settings.provider_endpoint(name) for name in HOSTED_PROVIDERS},
    }
    specs: dict[Role, ModelSpec] = {}
    for role in ROLES:
        configured = (overrides or {}).get(role) or getattr(settings, f"{role}_model")
        if configured:
            provider, model = parse_model(configured, default=fallback)
        else:
            provider, model = fallback, DEFAULT_MODELS[fallback][role]
        base_url, key = endpoints[provider]
        specs[role] = ModelSpec(role, provider, model, base_url or "", key)
    return specs


def simulated_roles(settings: Settings) -> list[Role]:
    """The roles whose model is the simulator's."""
    specs = resolve_specs(settings, sim_url=None)
    return [role for role, spec in specs.items() if spec.provider == "sim"]


def uses_sim(settings: Settings, *, models: Iterable[str] = ()) -> bool:
    """Whether a role, the fallback model or one of `models` (the profiles') needs the sim."""
    fallback = default_provider(settings)
    named = [*models, settings.fallback_model] if settings.fallback_model else list(models)
    return bool(simulated_roles(settings)) or any(
        parse_model(model, default=fallback)[0] == "sim" for model in named
    )


def simulated_notice(settings: Settings, *, where: str) -> str:
    """The start-up warning naming whose answers the simulator at `where` makes up, for
    settings where something uses it. A key beside a `sim:` role is no keyless start, so the
    line names the simulated roles rather than blaming a missing key."""
    simulated = simulated_roles(settings)
    if not simulated:
        return f"the `sim:` models of profiles or FALLBACK_MODEL are SIMULATED by {where}"
    if len(simulated) < len(ROLES):
        real = [role for role in ROLES if role not in simulated]
        names = ", ".join(simulated)
        subject = f"role {names} is" if len(simulated) == 1 else f"roles {names} are"
        uses = "uses a real model" if len(real) == 1 else "use real models"
        return f"{subject} SIMULATED by {where}; {', '.join(real)} {uses}"
    if any(settings.provider_endpoint(name)[1] for name in HOSTED_PROVIDERS):
        return f"answers are SIMULATED by {where}: every role's model is sim"
    return (
        f"no provider API key set: answers are SIMULATED by {where} "
        "(set ALI_API_KEY, MOONSHOT_API_KEY or OPENAI_API_KEY for real models)"
    )


class ModelFactory:
    """The model specs per role, the upstream transport the calls go through (capturing, in
    the server), and a ChatOpenAI per role on it for the callers that want one."""

    def __init__(
        self, settings: Settings, *, transport: httpx2.AsyncBaseTransport, sim_url: str | None
    ) -> None:
        self.settings = settings
        self.transport = transport
        self.timeouts = httpx2.Timeout(settings.llm_timeout_s, connect=5.0)
        self.http_client = httpx2.AsyncClient(transport=transport, timeout=self.timeouts)
        self.sim_url = sim_url
        self.specs = resolve_specs(settings, sim_url=sim_url)
        self._cache: dict[tuple[Role, ModelSpec], ChatOpenAI] = {}
        for spec in self.specs.values():
            if spec.lacks_key:
                logger.warning("role %s uses %s but no API key is set", spec.role, spec)

    async def aclose(self) -> None:
        """Close the client and with it the transport."""
        await self.http_client.aclose()

    def spec(self, role: Role, *, model: str | None = None) -> ModelSpec:
        if model is None:
            return self.specs[role]
        return resolve_specs(self.settings, sim_url=self.sim_url, overrides={role: model})[role]

    def fallback_spec(self, role: Role) -> ModelSpec | None:
        """Where the role's calls go when they fail before their first token (FALLBACK_MODEL)."""
        if not self.settings.fallback_model:
            return None
        return self.spec(role, model=self.settings.fallback_model)

    def model(self, role: Role, *, model: str | None = None) -> ChatOpenAI:
        spec = self.spec(role, model=model)
        key = (role, spec)
        if key not in self._cache:
            self._cache[key] = self._build(spec)
        return self._cache[key]

    def _build(self, spec: ModelSpec) -> ChatOpenAI:
        extra_body = reasoning_off(spec)
        return ChatOpenAI(
            model=spec.model,
            base_url=spec.base_url,
            api_key=spec.api_key or SecretStr("missing"),
            http_async_client=self.http_client,
            streaming=True,
            stream_usage=True,
            max_retries=self.settings.llm_retries,
            max_tokens=self.settings.max_tokens,
            timeout=self.timeouts,
            extra_body=extra_body or None,
            tags=[spec.role],
        )
