"""jsonwire answers as the standard library does: with orjson where it can, json where not."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lang_agent.jsonwire import dumpb, dumps, jsonb_dumps, loads

# Any text, lone surrogates included; integers that fit 64 bits (past that, see below).
text = st.text(st.characters(exclude_categories=()))
finite = st.floats(allow_nan=False, allow_infinity=False)
integers = st.integers(-(2**63), 2**64 - 1)
values = st.recursive(
    st.none() | st.booleans() | integers | text | finite,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@given(values)
def test_loads_agrees_with_the_standard_library(value):
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False)):
        assert loads(text) == json.loads(text)


@given(values)
def test_dumps_round_trips_and_keeps_non_ascii(value):
    assert json.loads(dumps(value)) == value
    assert json.loads(dumpb(value)) == json.loads(dumps(value))
    assert "\\u4f60" not in dumps({"text": "你好"}) and "你好" in dumps({"text": "你好"})


def test_what_orjson_refuses_is_answered_as_before():
    assert loads('{"a": NaN}')["a"] != loads('{"a": NaN}')["a"]  # NaN, as json.loads reads it
    assert loads('"\\ud83d"') == "\ud83d"  # half an emoji, as some upstreams split one
    assert dumps({1: "x"}) == '{"1":"x"}'
    assert dumps([math.nan, math.inf]) == "[null,null]"  # JSON has no NaN
    assert dumps({"n": 2**70}) == '{"n":1180591620717411303424}'
    assert loads("[-9223372036854775809]") == [-9223372036854775809.0]  # the one difference
    assert dumps("\ud83d") == '"\ud83d"'
    assert dumpb("\ud83d") == b'"\\ud83d"'  # bytes must be UTF-8: escaped


@pytest.mark.parametrize("bad", [b"{", b"", b'{"a":1}x', b'"\xff"', "{'a': 1}"])
def test_not_json_is_a_value_error(bad):
    with pytest.raises(ValueError):
        loads(bad)


def test_jsonb_dumps_is_what_postgres_jsonb_takes():
    text = jsonb_dumps({"nul": "a\x00b", "when": object.__new__(_Stamp)}).decode()
    assert "\\u0000" not in text
    assert json.loads(text) == {"nul": "a\ufffdb", "when": "stamp"}
    assert json.loads(jsonb_dumps({"half": "\ud83d", 3: "x"})) == {"half": "\ufffd", "3": "x"}
    assert json.loads(jsonb_dumps("a\\u0000b")) == "a\\u0000b"  # text, not an escape


@given(values)
def test_jsonb_dumps_keeps_everything_postgres_can_store(value):
    data = jsonb_dumps(value)
    assert json.loads(data.decode()) == _storable(value)  # UTF-8: no lone surrogate


def _storable(value):
    """The value as Postgres jsonb keeps it: NUL and lone surrogates become U+FFFD."""
    if isinstance(value, str):
        return "".join("\ufffd" if c == "\x00" or "\ud800" <= c <= "\udfff" else c for c in value)
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


class _Stamp:
    def __str__(self) -> str:
        return "stamp"
