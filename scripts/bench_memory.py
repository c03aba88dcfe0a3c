"""A thread's memory, written at the end of one turn and read at the start of the next.

    python scripts/bench_memory.py                     # 20, 100 and 200 messages, 200 turns each
    python scripts/bench_memory.py --sizes 200 --turns 500

It starts an embedded Postgres and, for each size, times what the agent's checkpointer
(`PooledSaver`) does with a thread's memory on every turn: the checkpoint write at the end
(`aput`), then the next turn's read, which rides on the thread's lease (`latest_query`), and
`load_latest`. Rounds alternate between a saver that hands a long memory it wrote to the next
read (`WrittenMemory`) and one that decodes every read, so a machine whose speed drifts
(docs/performance.md) moves both alike. Prints the medians of wall and CPU ms per turn, for
the write and the read together and for the read alone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.base import empty_checkpoint

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lang_agent import loop  # noqa: E402
from lang_agent.bench.harness import scratch_dir  # noqa: E402
from lang_agent.bench.stack import Stack  # noqa: E402
from lang_agent.bench.workload import CHAT_TEXT  # noqa: E402
from lang_agent.checkpointer import PooledSaver, install_loop_executor  # noqa: E402
from lang_agent.cli_common import positive_int  # noqa: E402
from lang_agent.pool import Database  # noqa: E402

ANSWER = "好的，明天北京晴，最高气温十二度，最低零下三度，北风三级，出门记得多穿一件外套。"
ROUNDS = 6


def sizes(text: str) -> list[int]:
    """--sizes: even counts, since a turn writes its memory after the answer: questions and
    answers in pairs."""
    counts = [positive_int(part) for part in text.split(",")]
    if any(count % 2 for count in counts):
        raise argparse.ArgumentTypeError(f"expected even counts of messages, not {text!r}")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=sizes, default="20,100,200", help="messages in memory")
    parser.add_argument("--turns", type=positive_int, default=200, help="turns per round")
    return parser.parse_args(argv)


def memory(size: int) -> list:
    """A voice thread's memory as the agent keeps it: questions, and answers with usage."""
    messages = []
    for i in range(size // 2):
        messages.append(HumanMessage(f"{CHAT_TEXT}（第{i}轮）", id=str(uuid.uuid4())))
        messages.append(
            AIMessage(
                ANSWER,
                id=str(uuid.uuid4()),
                usage_metadata={"input_tokens": 180 + 40 * i, "output_tokens": 37,
                                "total_tokens": 217 + 40 * i,
                                "input_token_details": {"cache_read": 0}},
                response_metadata={"model": "qwen-plus", "finish_reason": "stop"},
            )
        )  # fmt: skip
    return messages


async def turns(db: Database, saver: PooledSaver, messages: list, count: int) -> list[float]:
    """`count` turns' memory write and read on one thread: [wall, CPU, read wall, read CPU]
    in ms per turn. The memory stays the same: each turn saves it as a new checkpoint."""
    thread = f"bench-memory-{uuid.uuid4().hex[:8]}"
    config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
    wall = cpu = read_wall = read_cpu = 0.0
    for _ in range(count):
        checkpoint = empty_checkpoint()
        checkpoint["channel_values"] = {"messages": messages}
        checkpoint["channel_versions"] = {"messages": "1"}
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await saver.aput(config, checkpoint, {"source": "loop", "step": 1}, {"messages": "1"})
        wall1, cpu1 = time.perf_counter(), time.process_time()
        async with db.connection() as conn, conn.cursor(binary=True) as cur:
            await cur.execute(*saver.latest_query(thread))
            row = await cur.fetchone()
        latest = await saver.load_latest(thread, row)
        wall2, cpu2 = time.perf_counter(), time.process_time()
        wall, cpu = wall + wall2 - wall0, cpu + cpu2 - cpu0
        read_wall, read_cpu = read_wall + wall2 - wall1, read_cpu + cpu2 - cpu1
    assert len(latest.checkpoint["channel_values"]["messages"]) == len(messages)
    return [value * 1000 / count for value in (wall, cpu, read_wall, read_cpu)]


async def bench(dsn: str, *, sizes: list[int], count: int) -> None:
    install_loop_executor()
    db = Database(dsn, max_size=2)
    await db.open()
    try:
        savers = {keep: PooledSaver(db.pool) for keep in (True, False)}
        await savers[True].setup()
        savers[False].serde.written.max_bytes = 0  # keeps nothing: decodes every read
        print("messages  blob kB  kept  write+read wall / CPU ms  read wall / CPU ms")
        for size in sizes:
            messages = memory(size)
            blob_kb = len(savers[True].serde.dumps_typed(messages)[1]) / 1024
            runs: dict[bool, list[list[float]]] = {True: [], False: []}
            for round_number in range(ROUNDS):
                for keep in (True, False) if round_number % 2 == 0 else (False, True):
                    runs[keep].append(await turns(db, savers[keep], messages, count))
            for keep in (True, False):
                wall, cpu, read_wall, read_cpu = (
                    statistics.median(run[i] for run in runs[keep]) for i in range(4)
                )
                print(f"{size:8d}  {blob_kb:7.1f}  {'yes' if keep else 'no':>4s}  "
                      f"{wall:10.2f} / {cpu:5.2f}           {read_wall:6.2f} / {read_cpu:5.2f}",
                      flush=True)  # fmt: skip
    finally:
        await db.close()


def main() -> None:
    args = parse_args()
    with Stack(scratch_dir("bench-memory-")) as stack:
        loop.run(bench(stack.postgres(), sizes=args.sizes, count=args.turns))


if __name__ == "__main__":
    main()
