"""Tool-name sanitising for model APIs: xiaozhi-compatible names and description rewriting.

The rule (`reference/xiaozhi_device_tools.md` §5): every character outside `[A-Za-z0-9_-]`
becomes `_`, a name starting with a digit or `-` gets a `_` prefix, and names are cut to 64
characters. So `self.audio_speaker.set_volume` is `self_audio_speaker_set_volume`, the name
xiaozhi itself uses, and history sent by xiaozhi matches our tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sanitize_tool_name(name: str) -> str:
    """A name every model API accepts (OpenAI/Qwen `^[a-zA-Z0-9_-]{1,64}$`, Kimi too)."""
    safe = _UNSAFE.sub("_", name) or "_"
    if safe[0].isdigit() or safe[0] == "-":
        safe = "_" + safe
    return safe[:MAX_NAME]


def unique_name(wanted: str, taken: Iterable[str]) -> str:
    """`wanted`, or `wanted_2`, `wanted_3`… (kept within 64 characters) if it is taken."""
    used = set(taken)
    if wanted not in used:
        return wanted
    n = 2
    while True:
        suffix = f"_{n}"
        candidate = wanted[: MAX_NAME - len(suffix)] + suffix
        if candidate not in used:
            return candidate
        n += 1


def rewrite_description(text: str, names: Mapping[str, str]) -> str:
    """Replace each original tool name in `text` by its model-facing name, as xiaozhi does."""
    renames = {old: new for old, new in names.items() if old != new and old}
    if not renames or not text:
        return text
    # Longest first, so `self.lamp.turn_on_all` is not rewritten as `self.lamp.turn_on` + `_all`;
    # the lookarounds keep a name from matching inside a longer dotted identifier, while a
    # sentence's closing "." still ends a name.
    alternatives = "|".join(re.escape(old) for old in sorted(renames, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9_.-])(?:{alternatives})(?![A-Za-z0-9_-]|\.[A-Za-z0-9_])")
    return pattern.sub(lambda m: renames[m.group(0)], text)
