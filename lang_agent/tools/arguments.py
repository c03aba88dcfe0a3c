"""A model's tool arguments typed as the tool's schema says: "50" for an integer becomes 50."""

from __future__ import annotations

import math
import re
from typing import Any

_INTEGER = re.compile(r"[+-]?\d{1,18}")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLEANS = {"true": True, "false": False}


def typed_arguments(schema: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """`arguments` with each top-level string whose property is an integer, number or boolean
    (and not also a string) read as one, when it reads cleanly. Models now and then quote a
    number, and device firmware checks types strictly (xiaozhi answers "Missing valid
    argument"). Anything else is left for the tool to judge."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return arguments
    typed = dict(arguments)
    for name, value in arguments.items():
        spec = properties.get(name)
        if isinstance(value, str) and isinstance(spec, dict):
            kinds = spec.get("type")
            kinds = {kinds} if isinstance(kinds, str) else set(kinds or ())
            if "string" not in kinds:
                typed[name] = _read(value, kinds)
    return typed


def _read(value: str, kinds: set[str]) -> Any:
    text = value.strip()
    if kinds & {"integer", "number"} and _INTEGER.fullmatch(text):
        return int(text)
    if "number" in kinds and _NUMBER.fullmatch(text) and math.isfinite(float(text)):
        return float(text)
    if "boolean" in kinds and text.lower() in _BOOLEANS:
        return _BOOLEANS[text.lower()]
    return value
