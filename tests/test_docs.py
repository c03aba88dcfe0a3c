"""The docs match the code: README's configuration table, .env.example, and every local link.

After changing a setting: `UPDATE_DOCS=1 python -m pytest tests/test_docs.py` rewrites both.
"""

from __future__ import annotations

import os
import re

from click.testing import CliRunner

from lang_agent.cli import main
from lang_agent.settings import ROOT, Settings

BEGIN, END = "<!-- config-table:begin -->\n", "<!-- config-table:end -->"
REGENERATE = "regenerate both with `UPDATE_DOCS=1 python -m pytest tests/test_docs.py`"
TWO_COMMANDS = (
    'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && lang-agent serve',
    '. .venv/bin/activate && pip install -q -e ".[test]" && python -m pytest -q',
)
DOCS = ("README.md", "docs/architecture.md", "docs/operations.md")


def generated(kind: str) -> str:
    result = CliRunner().invoke(main, ["config", kind])
    assert result.exit_code == 0, result.output
    return result.output


def test_readme_config_table_is_generated_from_settings():
    path = ROOT / "README.md"
    readme = path.read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    head, rest = readme.split(BEGIN, 1)
    table, tail = rest.split(END, 1)
    if os.environ.get("UPDATE_DOCS") == "1":
        table = generated("markdown")
        path.write_text(head + BEGIN + table + END + tail, encoding="utf-8")
    assert table == generated("markdown"), f"README's configuration table is stale; {REGENERATE}"


def test_every_setting_is_in_the_table():
    table = generated("markdown")
    for name in Settings.model_fields:
        assert f"| `{name.upper()}` |" in table


def test_env_example_is_generated_from_settings():
    path = ROOT / ".env.example"
    if os.environ.get("UPDATE_DOCS") == "1":
        path.write_text(generated("env"), encoding="utf-8")
    assert path.read_text(encoding="utf-8") == generated("env"), (
        f".env.example is stale; {REGENERATE}"
    )


def test_readme_keeps_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in TWO_COMMANDS:
        assert command in readme


def test_local_links_and_paths_resolve():
    for doc in DOCS:
        path = ROOT / doc
        text = path.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith(("http://", "https://")):
                assert (path.parent / target).exists(), f"{doc}: broken link {target}"
        for named in re.findall(r"`((?:docs|scripts|configs)/[\w./-]+\.\w+)`", text):
            assert (ROOT / named).exists(), f"{doc}: {named} does not exist"
