"""The calculator evaluates arithmetic safely and refuses everything else with a clear message."""

import pytest

from lang_agent.tools.calculator import CalculatorError, calculate


@pytest.mark.parametrize(
    ("expression", "result"),
    [
        ("1+2*3", "7"),
        ("(3+5)*2^3", "64"),
        ("10/4", "2.5"),
        ("7 // 2", "3"),
        ("10 % 3", "1"),
        ("50%", "0.5"),
        ("200 * 15%", "30"),
        ("-3.5 × 2", "-7"),
        ("（1＋2）÷ 3", "1"),
        ("2**0.5", "1.414213562"),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_arithmetic(expression, result):
    assert calculate(expression) == result


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("__import__('os').system('id')", "only numbers"),
        ("open('/etc/passwd')", "only numbers"),
        ("y + 1", "only numbers"),
        ("[1, 2]", "not a valid"),
        ("1 if 1 else 2", "only numbers"),
        ("True + 1", "only numbers"),
        ("1/0", "division by zero"),
        ("9**9**9", "too large"),
        ("10**100000", "too large"),
        ("1e308 * 10", "too large"),
        ("(-8) ** 0.5", "not a real number"),
        ("1 +", "not a valid"),
        ("", "empty"),
        ("(" * 150 + "1" + ")" * 150, "longer than"),
        ("-" * 100 + "1", "nested too deeply"),
    ],
)
def test_refusals_are_clear(expression, reason):
    with pytest.raises(CalculatorError, match=reason):
        calculate(expression)
