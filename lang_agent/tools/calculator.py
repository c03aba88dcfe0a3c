"""A safe arithmetic evaluator: an allow-list of AST nodes, bounded powers, no eval."""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

MAX_EXPRESSION_CHARS = 200
MAX_DEPTH = 40
MAX_RESULT_DIGITS = 1000  # refuse results (and powers) that would grow past this

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
# Spoken and typeset symbols mapped to Python's.
_TRANSLATE = str.maketrans(
    {
        "×": "*",
        "x": "*",
        "X": "*",
        "÷": "/",
        "^": "**",
        "（": "(",
        "）": ")",
        "＋": "+",
        "－": "-",
        "−": "-",
        "＊": "*",
        "／": "/",
        "，": "",
        ",": "",
        "＝": "",
        "=": "",
    }
)
# "50%" is a percentage unless a number or "(" follows, in which case % is modulo.
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*%(?!\s*[\d(.])")


class CalculatorError(ValueError):
    """The expression is not one the calculator accepts; the message says why."""


def _check_power(base: float, exponent: float) -> None:
    if abs(exponent) > 10_000:
        raise CalculatorError("exponent too large")
    if base not in (0, 1, -1) and exponent > 0:
        digits = exponent * math.log10(abs(base)) if base else 0
        if digits > MAX_RESULT_DIGITS:
            raise CalculatorError("result too large")


def _eval(node: ast.AST, depth: int) -> float:
    if depth > MAX_DEPTH:
        raise CalculatorError("expression nested too deeply")
    match node:
        case ast.Expression(body=body):
            return _eval(body, depth + 1)
        case ast.Constant(value=value) if isinstance(value, int | float) and not isinstance(
            value, bool
        ):
            if isinstance(value, float) and math.isinf(value):  # a literal like 1e999
                raise CalculatorError("number too large")
            return value
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY:
            a, b = _eval(left, depth + 1), _eval(right, depth + 1)
            if isinstance(op, ast.Pow):
                _check_power(a, b)
            if isinstance(op, ast.Div | ast.FloorDiv | ast.Mod) and b == 0:
                raise CalculatorError("division by zero")
            result = _BINARY[type(op)](a, b)
            if isinstance(result, complex):
                raise CalculatorError("the result is not a real number")
            if isinstance(result, float) and math.isinf(result):
                raise CalculatorError("result too large")
            if isinstance(result, int) and result.bit_length() > MAX_RESULT_DIGITS * 3.33:
                raise CalculatorError("result too large")
            return result
        case ast.UnaryOp(op=op, operand=operand) if type(op) in _UNARY:
            return _UNARY[type(op)](_eval(operand, depth + 1))
    raise CalculatorError("only numbers, + - * / // % ** and parentheses are allowed")


def _format(value: float) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.10g}"
    return str(value)


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression and return the result as text."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = _PERCENT.sub(r"(\1/100)", expression.translate(_TRANSLATE)).strip()
    if not text:
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise CalculatorError("not a valid arithmetic expression") from exc
    try:
        return _format(_eval(tree, 0))
    except ZeroDivisionError as exc:  # 0 ** -1
        raise CalculatorError("division by zero") from exc
    except (OverflowError, RecursionError) as exc:
        raise CalculatorError("result too large") from exc
