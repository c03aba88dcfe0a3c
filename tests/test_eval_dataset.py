"""The eval dataset: the shipped file, line-numbered errors, filters, idempotent writing."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lang_agent.evaluation.dataset import (
    CATEGORIES,
    DatasetError,
    EvalCase,
    load_cases,
    select_cases,
    write_cases,
)
from lang_agent.evaluation.evaluate import DEFAULT_DATASET
from lang_agent.evaluation.langsmith_sync import _upload
from lang_agent.evaluation.xiaozhi_cases import cases as defined_cases
from lang_agent.evaluation.xiaozhi_cases import write_dataset
from lang_agent.settings import ROOT
from lang_agent.tools.device_catalog import TOOLS
from lang_agent.tools.mcp_names import sanitize_tool_name

GOOD = '{"id": "a", "category": "chitchat", "lang": "en", "input": "hi", "route": "chat"}'


def test_the_shipped_dataset_loads_and_covers_everything():
    cases = load_cases(DEFAULT_DATASET)
    assert len(cases) >= 80
    assert {c.lang for c in cases} == {"zh", "en"}
    assert {c.category for c in cases} == set(CATEGORIES)
    tags = {t for c in cases for t in c.tags}
    assert {"volume", "brightness", "theme", "lamp", "led", "battery", "status"} <= tags
    assert any(c.turns and len(c.turns) > 1 for c in cases)
    assert sum(c.expects_no_tools for c in cases) >= 20
    assert all(c.answer.has_text_checks or c.answer.reference for c in cases if c.route)


def test_the_shipped_dataset_is_what_make_eval_dataset_writes():
    assert [c.to_line() for c in load_cases(DEFAULT_DATASET)] == [
        c.to_line() for c in defined_cases()
    ], "configs/eval/xiaozhi.jsonl is stale: run python scripts/make_eval_dataset.py"


def test_expected_tools_exist_under_their_model_names():
    offered = {sanitize_tool_name(t.name) for t in TOOLS if not t.user_only}
    offered |= {"calculator", "current_time"}
    for case in load_cases(DEFAULT_DATASET):
        for expectation in case.tools or []:
            assert set(expectation.names) <= offered, case.id
        assert set(case.allowed_tools) <= offered, case.id


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON (nested too deeply)"),  # was a RecursionError
        ("[1, 2]", "a case must be a JSON object"),
        ('{"id": "b", "category": "chitchat", "lang": "en"}', "exactly one of `input` or `turns`"),
        (
            '{"id": "b", "category": "weather", "lang": "en", "input": "x"}',
            "(case 'b'): category:",
        ),
        (
            '{"id": "b", "category": "calc", "lang": "en", "input": "x", '
            '"tools": [{"name": "calculator", "args": {"expression": {"approx": 3}}}]}',
            "argument 'expression': unknown rule",
        ),
        (
            '{"id": "b", "category": "calc", "lang": "en", "input": "x", "colour": 1}',
            "colour: Extra inputs are not permitted",
        ),
        (GOOD, "duplicate case id 'a' (first on line 1)"),
    ],
)
def test_bad_lines_name_the_file_and_line(tmp_path, line, message):
    path = tmp_path / "cases.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_cases(path)
    assert str(caught.value).startswith(f"{path}:3")
    assert message in str(caught.value)


def test_a_missing_file_is_a_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        load_cases(tmp_path / "nope.jsonl")


def test_a_file_that_is_not_utf8_is_a_dataset_error(tmp_path):
    path = tmp_path / "binary.jsonl"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        load_cases(path)


def test_unicode_line_separators_in_a_case_do_not_split_it(tmp_path):
    # str.splitlines() ended a line at each: a hand-added case with one made the file unreadable.
    path = tmp_path / "cases.jsonl"
    text = "one\u2028two\u2029three\x85four"
    raw = GOOD.replace('"hi"', json.dumps(text, ensure_ascii=False))
    other = GOOD.replace('"a"', '"b"')
    path.write_bytes(f"{raw}\r\n{other}\r\n".encode())
    first, second = load_cases(path)
    assert first.input == text and second.id == "b"
    write_cases(path, cases=[first])
    assert path.read_text(encoding="utf-8").count("\n") == 2
    assert "\u2028" not in path.read_text(encoding="utf-8")  # written escaped, for any reader
    assert [c.input for c in load_cases(path)] == [text, "hi"]


def test_filters():
    cases = load_cases(DEFAULT_DATASET)
    assert select_cases(cases, expression="") == cases
    device = select_cases(cases, expression="category=device")
    assert device and all(c.category == "device" for c in device)
    both = select_cases(cases, expression="lang=en, tag=volume")
    assert all(c.lang == "en" or "volume" in c.tags for c in both)
    assert [c.id for c in select_cases(cases, expression="vol-set-50")] == ["vol-set-50-zh"]
    assert {c.id for c in select_cases(cases, expression="id=calc-*-en")} <= {c.id for c in cases}
    with pytest.raises(DatasetError, match="unknown filter key"):
        select_cases(cases, expression="colour=red")


def test_writing_is_idempotent_and_keyed_by_id(tmp_path):
    path = tmp_path / "eval" / "xiaozhi.jsonl"
    first = write_dataset(path)
    content = path.read_bytes()
    assert first.added == len(defined_cases()) and first.updated == 0
    again = write_dataset(path)
    assert path.read_bytes() == content
    assert again.added == 0 and again.unchanged == first.added
    # A hand-added case is kept; a changed case is replaced in place, not duplicated.
    extra = EvalCase.model_validate(json.loads(GOOD))
    changed = defined_cases()[0].model_copy(update={"note": "edited"})
    summary = write_cases(path, cases=[changed, extra])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert (summary.added, summary.updated, summary.kept) == (1, 1, first.added - 1)
    assert len(lines) == first.added + 1 and '"note": "edited"' in lines[0]
    restored = write_dataset(path)
    assert restored.updated == 1 and len(load_cases(path)) == first.added + 1
    pruned = write_dataset(path, prune=True)
    assert pruned.removed == 1 and path.read_bytes() == content


def test_a_written_dataset_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    # Written through mkstemp, it became 0600 whatever it had been.
    case = EvalCase.model_validate(json.loads(GOOD))
    old_umask = os.umask(0o027)
    try:
        write_cases(tmp_path / "new.jsonl", cases=[case])
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE((tmp_path / "new.jsonl").stat().st_mode) == 0o640
    shared = tmp_path / "shared.jsonl"
    shared.write_text("", encoding="utf-8")
    shared.chmod(0o664)
    write_cases(shared, cases=[case])
    assert stat.S_IMODE(shared.stat().st_mode) == 0o664 and load_cases(shared) == [case]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.jsonl", "shared.jsonl"]


def test_make_eval_dataset_script_is_idempotent(tmp_path):
    out = tmp_path / "set.jsonl"
    command = [sys.executable, str(ROOT / "scripts" / "make_eval_dataset.py"), "--out", str(out)]
    env = {"PATH": "/usr/bin:/bin", "LANGSMITH_API_KEY": ""}
    for expected in ("added", "unchanged"):
        result = subprocess.run(
            [*command, "--no-langsmith"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert f"{len(defined_cases())} {expected}" in result.stdout
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(defined_cases())


class FakeLangSmith:
    """The few langsmith.Client methods the upload uses, in memory (no network)."""

    def __init__(self) -> None:
        self.examples: dict[str, SimpleNamespace] = {}
        self.datasets: set[str] = set()
        self.updates = 0

    def has_dataset(self, *, dataset_name: str) -> bool:
        return dataset_name in self.datasets

    def create_dataset(self, name: str, **_: object) -> SimpleNamespace:
        self.datasets.add(name)
        return SimpleNamespace(id=name)

    def read_dataset(self, *, dataset_name: str) -> SimpleNamespace:
        return SimpleNamespace(id=dataset_name)

    def list_examples(self, *, dataset_id: str) -> list[SimpleNamespace]:
        return list(self.examples.values())

    def create_examples(self, *, dataset_id: str, examples: list[dict]) -> None:
        for example in examples:
            # LangSmith adds metadata of its own; the upload must not see that as a change.
            metadata = example["metadata"] | {"dataset_split": ["base"]}
            key = str(len(self.examples))
            self.examples[key] = SimpleNamespace(
                id=key, inputs=example["inputs"], outputs=example["outputs"], metadata=metadata
            )

    def update_example(self, example_id: str, **values: object) -> None:
        self.updates += 1
        for name, value in values.items():
            setattr(self.examples[example_id], name, value)


def test_langsmith_upload_is_keyed_by_case_id():
    client = FakeLangSmith()
    cases = defined_cases()
    _, first = _upload(client, cases, name="xiaozhi")
    assert first == {"created": len(cases), "updated": 0, "unchanged": 0}
    _, again = _upload(client, cases, name="xiaozhi")
    assert again == {"created": 0, "updated": 0, "unchanged": len(cases)}
    changed = [cases[0].model_copy(update={"route": "chat"}), *cases[1:]]
    _, third = _upload(client, changed, name="xiaozhi")
    assert third["updated"] == 1 and len(client.examples) == len(cases)
