"""Reading a request body: size limit, JSON parsing and validation, all as InvalidRequest."""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from lang_agent.errors import InvalidRequest, PayloadTooLarge

Model = TypeVar("Model", bound=BaseModel)
# A \uD800-\uDFFF escape: JSON lets a lone one through, and its text cannot be encoded again
# (to the model, to Postgres), so the turn would fail half-way.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


async def read_body(request: Request, *, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


# pydantic names the member of a union it tried in the location (`thread_id.str`,
# `content.list[TextPart]`); a client knows the field, not our type names.
_UNION_MEMBER = re.compile(r"^(?:str|int|float|bool|none|dict|list|.*\[.*\])$")


def _location(error: dict[str, Any]) -> str:
    parts = (str(part) for part in error.get("loc", ()))
    return ".".join(part for part in parts if not _UNION_MEMBER.match(part)) or "body"


async def parse_json(request: Request, model: type[Model], *, limit: int) -> Model:
    raw = await read_body(request, limit=limit)
    try:
        # Strict UTF-8 (a BOM allowed): json.loads(bytes) would let encoded surrogates through.
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest("the request body is not valid UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"invalid JSON at line {exc.lineno} column {exc.colno}") from exc
    except RecursionError as exc:
        raise InvalidRequest("the JSON body is nested too deeply") from exc
    except ValueError as exc:  # Python's cap on an integer's digits (4300)
        raise InvalidRequest("the JSON body holds a number with too many digits") from exc
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise InvalidRequest("the request body holds a lone UTF-16 surrogate") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _location(first)
        raise InvalidRequest(f"{where}: {first['msg']}", param=where) from exc
