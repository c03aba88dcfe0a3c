"""Tool arguments typed by the tool's schema before they reach an MCP server."""

from __future__ import annotations

import pytest

from lang_agent.tools.arguments import typed_arguments

SCHEMA = {
    "type": "object",
    "properties": {
        "volume": {"type": "integer"},
        "ratio": {"type": "number"},
        "on": {"type": "boolean"},
        "name": {"type": "string"},
        "either": {"type": ["integer", "string"]},
        "loose": {},
    },
}


@pytest.mark.parametrize(
    ("given", "typed"),
    [
        ({"volume": "50"}, {"volume": 50}),
        ({"volume": " -3 "}, {"volume": -3}),
        ({"ratio": "0.5"}, {"ratio": 0.5}),
        ({"ratio": "7"}, {"ratio": 7}),
        ({"on": "True"}, {"on": True}),
        ({"on": "false"}, {"on": False}),
        # Left for the tool to judge: not clean, not wanted, or meant as text.
        ({"volume": "50%"}, {"volume": "50%"}),
        ({"volume": "5.5"}, {"volume": "5.5"}),
        ({"volume": "9" * 40}, {"volume": "9" * 40}),
        ({"ratio": "nan"}, {"ratio": "nan"}),
        ({"ratio": "1e999"}, {"ratio": "1e999"}),
        ({"on": "yes"}, {"on": "yes"}),
        ({"name": "50"}, {"name": "50"}),
        ({"either": "50"}, {"either": "50"}),
        ({"loose": "50"}, {"loose": "50"}),
        ({"unknown": "50"}, {"unknown": "50"}),
        ({"volume": 50}, {"volume": 50}),
    ],
)
def test_a_quoted_value_is_read_as_its_property_s_type(given, typed):
    assert typed_arguments(SCHEMA, given) == typed


def test_a_schema_without_properties_leaves_the_arguments_alone():
    assert typed_arguments({"type": "object"}, {"volume": "50"}) == {"volume": "50"}
    assert typed_arguments(None, {"volume": "50"}) == {"volume": "50"}
