"""Eval checks: argument rules, tool-call matching and answer checks, as pure functions.

An argument rule is either a plain JSON value, matched exactly (numbers by value, so 50 ==
50.0; strings exactly), or an object with one kind of rule:

- `{"min": 75, "max": 90}`: a number in the range, both ends included (either may be left out);
- `{"one_of": ["dark", "night"]}`: equal to one of the values;
- `{"any": true}`: present, any value;
- `{"evaluates_to": 13}`: an arithmetic expression whose value is 13 (the calculator's own
  safe parser, so "3+5*2" and "3 + 5 × 2" both pass);
- `{"exact": {...}}`: equal to this value, for values that are themselves objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lang_agent.tools.calculator import CalculatorError, calculate

if TYPE_CHECKING:
    from lang_agent.evaluation.dataset import AnswerChecks, ToolExpectation

RULE_KEYS = ({"min", "max"}, {"one_of"}, {"any"}, {"evaluates_to"}, {"exact"})


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_rule(rule: Any) -> None:
    """Raise ValueError when `rule` is an object that is not a known rule."""
    if not isinstance(rule, dict):
        return
    keys = set(rule)
    if not keys or not any(keys <= allowed for allowed in RULE_KEYS):
        raise ValueError(
            f"unknown rule {sorted(keys)}: use a plain value, {{min,max}}, one_of, any, "
            "evaluates_to or exact"
        )
    if keys <= {"min", "max"} and not all(_number(rule[k]) for k in keys):
        raise ValueError("min and max must be numbers")
    if "one_of" in keys and not (isinstance(rule["one_of"], list) and rule["one_of"]):
        raise ValueError("one_of must be a non-empty list")
    if "any" in keys and rule["any"] is not True:
        raise ValueError("any must be true")
    if "evaluates_to" in keys and not _number(rule["evaluates_to"]):
        raise ValueError("evaluates_to must be a number")


def _equal(expected: Any, actual: Any) -> bool:
    if _number(expected) and _number(actual):
        return math.isclose(expected, actual, rel_tol=0, abs_tol=1e-9)
    if type(expected) is not type(actual):
        return False
    if isinstance(expected, dict):
        return expected.keys() == actual.keys() and all(
            _equal(v, actual[k]) for k, v in expected.items()
        )
    if isinstance(expected, list):
        return len(expected) == len(actual) and all(map(_equal, expected, actual))
    return bool(expected == actual)


def _evaluates_to(expression: Any, target: float) -> bool:
    if _number(expression):
        return math.isclose(expression, target, rel_tol=1e-9, abs_tol=1e-9)
    if not isinstance(expression, str):
        return False
    try:
        value = float(calculate(expression))
    except (CalculatorError, ValueError):
        return False
    return math.isclose(value, target, rel_tol=1e-9, abs_tol=1e-9)


def arg_matches(rule: Any, *, present: bool, value: Any) -> bool:
    """Whether an argument (`present`, `value`) satisfies `rule`."""
    if not isinstance(rule, dict):
        return present and _equal(rule, value)
    if not present:
        return False
    if "any" in rule:
        return True
    if "exact" in rule:
        return _equal(rule["exact"], value)
    if "one_of" in rule:
        return any(_equal(option, value) for option in rule["one_of"])
    if "evaluates_to" in rule:
        return _evaluates_to(value, float(rule["evaluates_to"]))
    if not _number(value):
        return False
    low, high = rule.get("min", -math.inf), rule.get("max", math.inf)
    return bool(low <= value <= high)


def args_match(rules: Mapping[str, Any], *, args: Mapping[str, Any]) -> bool:
    """Every ruled argument passes; arguments without a rule are not looked at."""
    return all(
        arg_matches(rule, present=name in args, value=args.get(name))
        for name, rule in rules.items()
    )


@dataclass(frozen=True)
class Call:
    """A tool call the turn made."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolScore:
    """How the calls of one turn compare with the expected ones.

    Tool selection is judged on names: an expectation is a true positive when any call has
    one of its names, a false negative otherwise; a false positive is a distinct called name
    that no expectation and no `allowed_tools` entry names. Arguments are judged on the
    true positives that have argument rules: one of the calls with that name must pass them.
    """

    true_pos: int = 0
    false_pos: int = 0
    false_neg: int = 0
    args_checked: int = 0
    args_ok: int = 0
    missing: tuple[str, ...] = ()  # expectations not met (their first name)
    unexpected: tuple[str, ...] = ()  # called names that were not expected
    bad_args: tuple[str, ...] = ()  # expectations whose calls all failed the rules

    @property
    def ok(self) -> bool:
        return not (self.false_pos or self.false_neg) and self.args_ok == self.args_checked


def score_calls(
    expected: Iterable[ToolExpectation], *, calls: Iterable[Call], allowed: Iterable[str] = ()
) -> ToolScore:
    """Compare a turn's calls with the expectations; see ToolScore for the rules."""
    calls = list(calls)
    expected = list(expected)
    covered = set(allowed)
    tp = fn = checked = good = 0
    missing: list[str] = []
    bad: list[str] = []
    for expectation in expected:
        covered.update(expectation.names)
        candidates = [c for c in calls if c.name in expectation.names]
        if not candidates:
            fn += 1
            missing.append(expectation.names[0])
            continue
        tp += 1
        if expectation.args:
            checked += 1
            if any(args_match(expectation.args, args=c.args) for c in candidates):
                good += 1
            else:
                bad.append(expectation.names[0])
    unexpected = sorted({c.name for c in calls} - covered)
    return ToolScore(
        true_pos=tp,
        false_pos=len(unexpected),
        false_neg=fn,
        args_checked=checked,
        args_ok=good,
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        bad_args=tuple(bad),
    )


def check_answer(checks: AnswerChecks, *, text: str) -> list[str]:
    """The answer checks `text` fails, as short messages (empty: all passed)."""
    folded = text.casefold()
    failures = [f"missing {s!r}" for s in checks.contains if s.casefold() not in folded]
    if checks.contains_any and not any(s.casefold() in folded for s in checks.contains_any):
        failures.append(f"none of {checks.contains_any!r}")
    failures.extend(f"contains {s!r}" for s in checks.not_contains if s.casefold() in folded)
    return failures
