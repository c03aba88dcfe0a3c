"""JSON on the per-chunk paths (model streams, client frames, capture rows) with orjson.

orjson parses a stream chunk about four times and writes a frame about ten times faster than
the standard library, which matters when every one of a turn's ~40 streamed chunks is parsed
and written again (docs/performance.md). Where orjson refuses what the standard library
accepts (a lone UTF-16 surrogate, NaN, an integer over 64 bits to write, a non-string key) the
standard library answers instead, so what worked before still works. Two differences are left:
orjson reads an integer over 64 bits as a float, and writes NaN and infinities as null (the
standard library writes `NaN`, which is not JSON).
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (json.JSONDecodeError or UnicodeDecodeError) if it is not."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumpb(value: Any) -> bytes:
    """Compact UTF-8 JSON, non-ASCII as itself (no \\u escapes), except in what orjson
    refuses: that is escaped, since a lone surrogate has no UTF-8."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value, separators=(",", ":")).encode()


def dumps(value: Any) -> str:
    """Compact JSON text, non-ASCII as itself, lone surrogates too (text can hold them)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def jsonb_text(value: Any) -> str:
    """Text for a Postgres jsonb parameter: unknown types as their str(), and \\u0000, which
    jsonb refuses, as U+FFFD."""
    try:
        text = orjson.dumps(value, default=str).decode()
    except TypeError:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("\\u0000", "\\ufffd")
