"""Eval cases: the case model, JSONL loading with line-numbered errors, and idempotent writing.

A dataset is a JSONL file (configs/eval/*.jsonl), one case per line, keyed by `id`:

    {"id": "vol-set-zh", "category": "device", "lang": "zh", "input": "把音量调到50",
     "route": "tool",
     "tools": [{"name": "self_audio_speaker_set_volume", "args": {"volume": 50}}],
     "allowed_tools": ["self_get_device_status"],
     "answer": {"contains_any": ["50", "五十"]}, "tags": ["volume"]}

- `input` is one utterance; `turns` is a list of utterances sent in order on one thread.
  Only the last turn is scored: earlier turns set up memory and device state.
- `route`: the route the router should choose (chat or tool); omitted = not checked.
- `tools`: the calls the scored turn must make, by model-facing name (a name, or a list of
  acceptable alternatives) with argument rules (see `checks`). `[]` means "must call no
  tool"; omitted means "tool calls are not checked". Calls to `allowed_tools` (a status
  lookup before a relative change) are neither required nor counted against precision.
- `answer`: checks on the spoken answer (`contains`, `contains_any`, `not_contains`, all case
  folded) and an optional `reference` answer for the LLM judge.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lang_agent.evaluation.checks import validate_rule

Category = Literal["device", "calc", "time", "chitchat", "missing_tool", "memory", "asr"]
CATEGORIES: tuple[str, ...] = get_args(Category)


# What json.dumps leaves raw with ensure_ascii=False that Unicode (str.splitlines, editors)
# takes for a line break: escaped, a case is one line to every reader. JSON has these only
# inside strings, where the escape means the same character.
_LINE_BREAKS_ESCAPED = str.maketrans({c: f"\\u{ord(c):04x}" for c in "\x85\u2028\u2029"})


class DatasetError(ValueError):
    """A dataset file that cannot be used; the message names the file and line."""


class ToolExpectation(BaseModel):
    """One call the scored turn must make: a tool (or alternatives) and argument rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | list[str]
    args: dict[str, Any] = Field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name,) if isinstance(self.name, str) else tuple(self.name)

    @field_validator("name")
    @classmethod
    def _names_given(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError("name must be a tool name or a non-empty list of names")
        return value

    @field_validator("args")
    @classmethod
    def _rules_valid(cls, value: dict[str, Any]) -> dict[str, Any]:
        for arg, rule in value.items():
            try:
                validate_rule(rule)
            except ValueError as exc:
                raise ValueError(f"argument {arg!r}: {exc}") from None
        return value


class AnswerChecks(BaseModel):
    """Checks on the spoken answer; all text checks are case folded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    contains: list[str] = Field(default_factory=list)  # every one must appear
    contains_any: list[str] = Field(default_factory=list)  # at least one must appear
    not_contains: list[str] = Field(default_factory=list)  # none may appear
    reference: str | None = None  # a good answer, for the optional LLM judge

    @property
    def has_text_checks(self) -> bool:
        return bool(self.contains or self.contains_any or self.not_contains)


class EvalCase(BaseModel):
    """One eval case; see the module docstring for the meaning of each field."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
    category: Category
    lang: Literal["zh", "en"]
    input: str | None = None
    turns: list[str] | None = None
    route: Literal["chat", "tool"] | None = None
    tools: list[ToolExpectation] | None = None
    allowed_tools: list[str] = Field(default_factory=list)
    answer: AnswerChecks = Field(default_factory=AnswerChecks)
    tags: list[str] = Field(default_factory=list)
    note: str = ""

    @model_validator(mode="after")
    def _one_input(self) -> EvalCase:
        if (self.input is None) == (self.turns is None):
            raise ValueError("give exactly one of `input` or `turns`")
        texts = [self.input] if self.input is not None else list(self.turns or [])
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError("`input` / `turns` must be non-empty text")
        return self

    @property
    def user_turns(self) -> list[str]:
        """The utterances in order; the last one is scored."""
        return [self.input] if self.input is not None else list(self.turns or [])

    @property
    def expects_no_tools(self) -> bool:
        return self.tools is not None and not self.tools

    def to_line(self) -> str:
        """The case as one JSONL line, defaults left out, keys in field order."""
        data = self.model_dump(mode="json", exclude_defaults=True)
        line = json.dumps(data, ensure_ascii=False, separators=(", ", ": "))
        return line.translate(_LINE_BREAKS_ESCAPED)


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "case"
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_line(text: str, *, where: str) -> EvalCase:
    """One JSONL line as a case; DatasetError naming `where` (file:line) otherwise."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:  # the decoder recurses per level: `[` * 100000 exhausts the stack
        raise DatasetError(f"{where}: not valid JSON (nested too deeply)") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{where}: a case must be a JSON object")
    try:
        return EvalCase.model_validate(raw)
    except ValidationError as exc:
        case_id = raw.get("id")
        named = f" (case {case_id!r})" if isinstance(case_id, str) else ""
        raise DatasetError(f"{where}{named}: {_describe(exc)}") from None


def load_cases(path: Path | str) -> list[EvalCase]:
    """Every case in a JSONL file, in file order. Blank lines are skipped; a bad line or a
    duplicate id raises DatasetError naming the file and line number."""
    path = Path(path)
    try:
        # JSONL lines end at "\n" (text mode reads "\r\n" as one); splitlines() would also
        # end one at a U+2028 inside a case's text.
        lines = path.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the dataset ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    cases: list[EvalCase] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        case = parse_line(line, where=f"{path}:{number}")
        if case.id in seen:
            raise DatasetError(
                f"{path}:{number}: duplicate case id {case.id!r} (first on line {seen[case.id]})"
            )
        seen[case.id] = number
        cases.append(case)
    return cases


@dataclass(frozen=True)
class WriteSummary:
    """What `write_cases` did to the file."""

    added: int
    updated: int
    unchanged: int
    kept: int  # cases in the file that the new set does not name (left as they were)
    removed: int  # the same, when pruned

    def __str__(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.kept} kept, {self.removed} removed"
        )


def write_cases(
    path: Path | str, *, cases: Iterable[EvalCase], prune: bool = False
) -> WriteSummary:
    """Merge `cases` into the JSONL file by id: new ids are appended, known ids replaced in
    place, other cases kept (or dropped with `prune`). Writing the same cases twice leaves
    the file byte-identical. The file is replaced atomically; DatasetError when it cannot be."""
    path = Path(path)
    existing = load_cases(path) if path.exists() else []
    incoming: dict[str, EvalCase] = {}
    for case in cases:
        if case.id in incoming:
            raise DatasetError(f"duplicate case id {case.id!r} in the cases to write")
        incoming[case.id] = case
    out: list[EvalCase] = []
    added = updated = unchanged = kept = removed = 0
    for old in existing:
        new = incoming.pop(old.id, None)
        if new is None:
            if prune:
                removed += 1
                continue
            kept += 1
            out.append(old)
        elif new.to_line() == old.to_line():
            unchanged += 1
            out.append(old)
        else:
            updated += 1
            out.append(new)
    added = len(incoming)
    out.extend(incoming.values())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _replace(path, text="".join(case.to_line() + "\n" for case in out))
    except OSError as exc:
        raise DatasetError(f"{path}: cannot write the dataset ({exc})") from None
    return WriteSummary(added, updated, unchanged, kept, removed)


def _replace(path: Path, *, text: str) -> None:
    """Write `path` atomically, through a file beside it. The file keeps the mode of the one
    it replaces, and a new one gets the umask's, as open() gives it: mkstemp's 0600 hid a
    shared dataset from the group."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("x", encoding="utf-8") as handle:
            if path.exists():
                os.fchmod(handle.fileno(), stat.S_IMODE(path.stat().st_mode))
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def select_cases(cases: list[EvalCase], *, expression: str | None) -> list[EvalCase]:
    """The cases a `--filter` names. Comma-separated terms, any of which may match:
    `category=device`, `lang=en`, `tag=volume`, `id=vol-*`, or a bare id glob or substring."""
    if not expression or not expression.strip():
        return list(cases)
    terms = [t.strip() for t in expression.split(",") if t.strip()]

    def matches(case: EvalCase, term: str) -> bool:
        key, sep, value = term.partition("=")
        if not sep:
            key, value = "id", term if any(c in term for c in "*?[") else f"*{term}*"
        values = {
            "id": [case.id],
            "category": [case.category],
            "lang": [case.lang],
            "tag": case.tags,
            "route": [case.route or ""],
        }.get(key.strip())
        if values is None:
            raise DatasetError(f"unknown filter key {key!r}: use id, category, lang, tag, route")
        return any(fnmatchcase(v, value.strip()) for v in values)

    return [case for case in cases if any(matches(case, term) for term in terms)]
