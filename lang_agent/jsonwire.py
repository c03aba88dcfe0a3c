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
import re
from typing import Any

import orjson

# A `\u0000` escape, but not `\\u0000`: that is an escaped backslash, then the text u0000.
_NUL_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")
_SURROGATE = re.compile("[\ud800-\udfff]")


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


def jsonb_dumps(value: Any) -> bytes:
    """UTF-8 JSON for a Postgres jsonb parameter (psycopg's `Jsonb(value, dumps=jsonb_dumps)`):
    unknown types as their str(), and what Postgres cannot store in any form as U+FFFD: NUL
    (jsonb refuses \\u0000) and lone surrogates (they have no UTF-8, and jsonb refuses them
    escaped)."""
    try:
        data = orjson.dumps(value, default=str)
    except TypeError:  # orjson refuses lone surrogates, non-string keys, integers over 64 bits
        text = json.dumps(value, ensure_ascii=False, default=str)
        data = _SURROGATE.sub("\ufffd", text).encode()
    return _NUL_ESCAPE.sub(rb"\1\\ufffd", data) if b"\\u0000" in data else data
