"""Opening and closing everything a running server needs, in order, on one AsyncExitStack."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from lang_agent.agent.profiles import load_profiles, profile_models, profile_specs
from lang_agent.agent.runner import Agent
from lang_agent.agent.state import AgentDeps, Profile
from lang_agent.agent.threads import ThreadLocks
from lang_agent.capture import CapturingTransport, Recorder
from lang_agent.capture.metrics import PREFIX, family_lines
from lang_agent.checkpointer import PooledSaver, install_loop_executor
from lang_agent.conversations import ConversationLog
from lang_agent.db import resolve_dsn
from lang_agent.llm.factory import ModelFactory, simulated_notice, uses_sim
from lang_agent.llm.http1 import Http1Transport
from lang_agent.llm.models_catalog import ModelCatalog
from lang_agent.llm.proxies import ProxyRoutes
from lang_agent.loop import freeze_start_up
from lang_agent.loop_lag import LoopLag
from lang_agent.pool import Database
from lang_agent.prompts import Prompts
from lang_agent.retention import retention_job
from lang_agent.settings import Settings
from lang_agent.tools.builtin import BuiltinTools, clock_values
from lang_agent.tools.mcp import MCPManager
from lang_agent.tools.registry import ToolRegistry

logger = logging.getLogger(__name__)

LEASE_GRACE_S = 30.0


@dataclass
class Service:
    """The running parts, shared by the front ends through `app.state.service`."""

    settings: Settings
    db: Database
    agent: Agent
    tools: ToolRegistry
    log: ConversationLog
    recorder: Recorder
    loop_lag: LoopLag
    extras: dict[str, Any] = field(default_factory=dict)

    async def health(self) -> dict[str, Any]:
        """`status` is `degraded` while the database does not answer: turns on a thread fail
        then, with 503 (turns without one still work)."""
        specs = self.agent.deps.models.specs
        return {
            **await self.db.health(),
            "turns_in_flight": self.agent.turns_running,
            "models": {role: str(spec) for role, spec in specs.items()},
            "tools": self.tools.health(),
            "conversation_log": {"written": self.log.written, "dropped": self.log.dropped},
            "capture": {
                "written": self.recorder.written,
                "dropped": self.recorder.dropped,
                "queued": self.recorder.queued,
                "queued_bytes": self.recorder.queued_bytes,
            },
        }

    def metrics_lines(self) -> list[str]:
        """The server's own families for /metrics, beside capture's."""
        running = {(): self.agent.turns_running}
        finished = {
            (("front_end", front_end), ("status", status)): count
            for (front_end, status), count in self.agent.finished.items()
        }
        return [
            *family_lines(f"{PREFIX}_turns_in_flight", "gauge", "Turns running now.", running),
            *family_lines(
                f"{PREFIX}_turns_total",
                "counter",
                "Ended turns by front end and status: ok, or the turn's error code.",
                finished,
            ),
            *self.loop_lag.lines(),
        ]


async def _start_simulator(stack: contextlib.AsyncExitStack, *, settings: Settings) -> str:
    from lang_agent.llm.sim import Simulator

    simulator = Simulator()
    base_url = await simulator.start(host="127.0.0.1", port=0)
    stack.push_async_callback(simulator.stop)
    logger.warning("%s", simulated_notice(settings, where=f"the built-in simulator at {base_url}"))
    return base_url


def _log_models(models: ModelFactory, profiles: dict[str, Profile]) -> None:
    """Where each role's calls go, and each profile's own: a profile's model without its
    provider's key would otherwise be found by its app's first turn failing."""
    for role, spec in models.specs.items():
        logger.info("role %s → %s", role, spec)
    for name, role, _model, spec in profile_specs(models, profiles):
        logger.info("profile %s: role %s → %s", name, role, spec)
        if spec.lacks_key:
            logger.warning("profile %s: role %s uses %s but no API key is set", name, role, spec)


@contextlib.asynccontextmanager
async def open_service(settings: Settings) -> AsyncIterator[Service]:
    async with contextlib.AsyncExitStack() as stack:
        loop_lag = await stack.enter_async_context(LoopLag().running())
        dsn, _embedded = await resolve_dsn(settings)
        db = Database(dsn, max_size=settings.db_pool_size, timeout=settings.db_timeout_s)
        await db.open()
        stack.push_async_callback(db.close)

        install_loop_executor()
        checkpointer = PooledSaver(db.pool)
        await checkpointer.setup()
        await stack.enter_async_context(retention_job(settings, db=db))

        profiles = load_profiles(settings.profiles_file, default=settings.default_profile)
        sim_url = settings.sim_url
        if sim_url is None and uses_sim(settings, models=profile_models(profiles)):
            sim_url = await _start_simulator(stack, settings=settings)

        catalog = ModelCatalog.load(settings.models_file)
        recorder = await stack.enter_async_context(Recorder.open(settings, dsn=dsn))
        models = ModelFactory(
            settings,
            transport=CapturingTransport(
                Http1Transport(proxies=ProxyRoutes.from_environment()),
                recorder=recorder,
                catalog=catalog,
            ),
            sim_url=sim_url,
        )
        stack.push_async_callback(models.aclose)

        zone = ZoneInfo(settings.timezone)
        tools = ToolRegistry([BuiltinTools(timezone=settings.timezone)])
        tools.add(await stack.enter_async_context(MCPManager.from_settings(settings)))
        deps = AgentDeps(
            settings=settings,
            models=models,
            tools=tools,
            prompts=Prompts.load(settings.prompts_dir),
            window=catalog.window,
            clock=lambda: clock_values(datetime.now(zone)),
        )
        log = await stack.enter_async_context(ConversationLog(db))
        locks = ThreadLocks(
            db,
            mode=settings.busy_thread,
            wait_s=settings.busy_wait_s,
            lease_ttl_s=settings.turn_timeout_s + LEASE_GRACE_S,
        )
        agent = Agent(
            deps,
            checkpointer=checkpointer,
            locks=locks,
            log=log,
            profiles=profiles,
        )
        stack.push_async_callback(agent.close)  # first at shutdown: turns end before the log
        _log_models(models, profiles)
        # Some 200,000 objects (the graph, pools too): a full collection over them paused every
        # turn for 120-180 ms, and now takes about 2 ms.
        freeze_start_up()
        stack.callback(gc.unfreeze)
        yield Service(
            settings=settings,
            db=db,
            agent=agent,
            tools=tools,
            log=log,
            recorder=recorder,
            loop_lag=loop_lag,
        )
