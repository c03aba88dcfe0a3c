"""A text flame summary of a py-spy `--format raw` recording (collapsed stacks).

    python -m lang_agent.bench.flame py-spy.txt [--top 25]

Prints the functions with the most samples on the stack (inclusive) and at its top (self),
each as a share of all samples, plus the hottest frames grouped by package.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

from lang_agent.settings import ROOT

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
# What a frame's file is named from, the first found: an installed package (a venv may sit
# inside the project), the standard library of any Python 3, the project wherever it is.
_ROOTS = (
    re.compile(r"site-packages/"),
    re.compile(r"lib/python3\.\d+/"),
    re.compile(re.escape(f"{ROOT}/")),
)
# The event loop's own frames sit under everything: left out of the inclusive list.
_PLUMBING = ("asyncio/", "selectors.py", "threading.py", "concurrent/", "contextlib.py",
             "fastapi_server/server_", "fastapi_server/serve.py")  # fmt: skip


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match["file"]
    for root in _ROOTS:
        found = root.search(path)
        if found:
            path = path[found.end() :]
            break
    return f"{match['func']} ({path})"


def _package(frame: str) -> str:
    short = _short(frame)
    inside = short[short.rfind("(") + 1 : -1]
    top = inside.split("/", 1)[0]
    return top.removesuffix(".py") or "?"


def summarise(lines: list[str], *, top: int = 25) -> str:
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        for name in {_short(f) for f in frames}:
            if not any(p in name for p in _PLUMBING):
                inclusive[name] += count
        own[_short(frames[-1])] += count
        packages[_package(frames[-1])] += count
    if not total:
        return "no samples"

    def block(title: str, counter: Counter[str]) -> list[str]:
        rows = [f"{title}", "", "| share | samples | function |", "|---:|---:|---|"]
        for name, count in counter.most_common(top):
            rows.append(f"| {100 * count / total:5.1f} % | {count} | `{name}` |")
        return rows

    out = [f"{total} samples (busy only)", ""]
    out += block("**Inclusive** (on the stack)", inclusive) + [""]
    out += block("**Self** (top of the stack)", own) + [""]
    out += block("**Self by package**", packages)
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    sys.stdout.write(summarise(args.path.read_text().splitlines(), top=args.top) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
