"""CPU per streamed model call through the agent's own client stack, on two upstream transports.

    python scripts/bench_model_call.py                  # 40 concurrent calls × 6 rounds each way
    python scripts/bench_model_call.py --calls 20 --rounds 3

It starts Postgres (embedded) and `lang-agent sim --profile original` as their own processes,
so this process's CPU is the client's alone: `chat_stream.stream_chat` with capture on
(`CapturingTransport`), the recorder writing every call. The same calls go through two
transports under the capture: `llm/http1.py`'s Http1Transport (what the agent uses) and
httpx2's stock AsyncHTTPTransport (httpcore2 and h11). Rounds alternate between the two, so
a machine whose speed drifts (docs/performance.md) moves both alike. Prints CPU ms per call,
per round and median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx2
from langchain_core.messages import HumanMessage

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lang_agent import loop  # noqa: E402
from lang_agent.bench.harness import scratch_dir  # noqa: E402
from lang_agent.bench.stack import Stack  # noqa: E402
from lang_agent.bench.workload import CHAT_TEXT, marker  # noqa: E402
from lang_agent.capture.transport import CapturingTransport  # noqa: E402
from lang_agent.cli_common import positive_int  # noqa: E402
from lang_agent.llm.chat_stream import Reply, request_body, stream_chat  # noqa: E402
from lang_agent.llm.http1 import UPSTREAM_LIMITS, Http1Transport  # noqa: E402
from lang_agent.llm.models_catalog import ModelCatalog  # noqa: E402
from lang_agent.service import open_service  # noqa: E402
from lang_agent.settings import Settings  # noqa: E402

TRANSPORTS = {
    "http1": Http1Transport,
    "httpcore2": lambda: httpx2.AsyncHTTPTransport(limits=UPSTREAM_LIMITS),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=positive_int, default=40, help="concurrent calls per round")
    parser.add_argument("--rounds", type=positive_int, default=6, help="rounds per backend")
    return parser.parse_args(argv)


async def bench(
    sim_url: str, dsn: str, *, workdir: Path, calls: int, rounds: int
) -> dict[str, list[float]]:
    (workdir / "mcp.json").write_text("{}")
    settings = Settings(
        sim_url=sim_url, llm_provider="sim", conn_str=dsn, mcp_config=workdir / "mcp.json",
        _env_file=None,
    )  # fmt: skip
    async with open_service(settings) as service:
        models = service.agent.deps.models
        spec = models.spec("chat")
        catalog = ModelCatalog.load(settings.models_file)
        clients = {
            name: CapturingTransport(transport(), recorder=service.recorder, catalog=catalog)
            for name, transport in TRANSPORTS.items()
        }

        async def call(client: CapturingTransport, number: int) -> int:
            messages = [HumanMessage(CHAT_TEXT + marker(number))]
            body = request_body(spec, messages, max_tokens=settings.max_tokens)
            pieces = 0
            stream = stream_chat(client, spec, body, Reply(), timeouts=models.timeouts, retries=0)
            async for _piece in stream:
                pieces += 1
            return pieces

        results: dict[str, list[float]] = {name: [] for name in clients}
        try:
            for client in clients.values():  # warm: connections open, code paths loaded
                await asyncio.gather(*(call(client, n) for n in range(calls)))
            for round_number in range(rounds):
                order = list(clients) if round_number % 2 == 0 else list(reversed(clients))
                for name in order:
                    started = time.process_time()
                    pieces = await asyncio.gather(*(call(clients[name], n) for n in range(calls)))
                    cpu_ms = (time.process_time() - started) * 1000 / calls
                    results[name].append(cpu_ms)
                    print(f"round {round_number + 1} {name:9s} {cpu_ms:6.2f} ms/call "
                          f"({pieces[0]} pieces)", flush=True)  # fmt: skip
        finally:
            for client in clients.values():
                await client.aclose()
    return results


def main() -> None:
    args = parse_args()
    with Stack(scratch_dir("bench-call-")) as stack:
        dsn = stack.postgres()
        sim = stack.simulator(profile="original")
        run = bench(sim.url, dsn, workdir=stack.workdir, calls=args.calls, rounds=args.rounds)
        results = loop.run(run)
    print("\nbackend  median CPU ms per call  (min … max)")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:9s}  {median:6.2f}  ({min(values):.2f} … {max(values):.2f})")
    ours, stock = (statistics.median(results[name]) for name in ("http1", "httpcore2"))
    print(f"http1 / httpcore2: {ours / stock:.2f}")


if __name__ == "__main__":
    main()
