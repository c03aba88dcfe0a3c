"""The `--predicate` language (MoonPalace's), compiled to parameterised SQL over an allow-list.

    expr    := and ('||' and)*            and := unary ('&&' unary)*
    unary   := '(' expr ')' | field op value
    field   := name ('.' (name | int | 'quoted key'))*   e.g. response_body.choices.-1.index
    op      := == != > >= < <= ~ !~ % !% @ !@
    value   := 'text' | "text" | number | true | false | null | '[' value (',' value)* ']'

`~` is a case-insensitive contains; `*` marks a prefix or suffix match ('x*', '*x') and is the
only wildcard. `%` is a POSIX regular expression. `@ [a, b]` is IN. `!=` is IS DISTINCT FROM.
`tags` is a set, so its operators ask about one tag at a time: `tags == 'x'` has tag x, `!=` has
not, `@ [a, b]` has any of them, `~` has one that contains the text (as `~` does elsewhere) and
`%` one that matches the regular expression; `!@ !~ !%` negate. Order operators do not apply.
Names come from FIELDS only and become `psycopg.sql.Identifier`s; every literal and JSON path is
a bound parameter, so nothing a user types can change the query beyond its filter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from psycopg import sql

Kind = Literal["text", "int", "float", "bool", "time", "json", "uuid", "tags"]

FIELDS: dict[str, tuple[str, Kind]] = {
    name: (name, kind)
    for kind, names in {
        "int": "id status_code prompt_tokens completion_tokens cached_tokens reasoning_tokens "
        "total_tokens",
        "float": "server_timing_ms ttfb_ms ttft_ms ttft_reasoning_ms latency_ms tpot_ms cost",
        "text": "source thread_id turn_id node method url model status error response_sse "
        "client_request_id upstream_request_id chatcmpl_id finish_reason category",
        "bool": "stream",
        "time": "created_at finished_at",
        "json": "request_header request_body client_request_body response_header "
        "response_body flags",
        "uuid": "call_id",
        "tags": "tags",
    }.items()
    for name in names.split()
}
ALIASES = {
    "chatcmpl": "chatcmpl_id",
    "moonshot_id": "chatcmpl_id",
    "request_id": "upstream_request_id",
    "requestid": "upstream_request_id",
    "moonshot_request_id": "upstream_request_id",
    "requested_at": "created_at",
    "latency": "latency_ms",
    "ttft": "ttft_ms",
    "response_ttft": "ttft_ms",
    "response_status_code": "status_code",
    "thread": "thread_id",
    "turn": "turn_id",
}
OPERATORS = ("==", "!=", ">=", "<=", ">", "<", "!~", "!%", "!@", "~", "%", "@")
_ORDER = {"==": "=", ">": ">", ">=": ">=", "<": "<", "<=": "<="}
_TOKEN = re.compile(
    r"""\s*(?:
      (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<num>-?\d+(?:\.\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|>=|<=|!~|!%|!@|&&|\|\||[><~%@()\[\],.])
    )""",
    re.X,
)
_NUMBER_SQL = sql.SQL(
    "CASE WHEN jsonb_typeof({c} #> %s::text[]) = 'number' THEN ({c} #>> %s::text[])::numeric END"
)
# `tags` is NOT NULL (default '{}'), so these are never NULL and NOT needs no coalesce.
_TAGS_ANY_SQL = "{} && %s::text[]"
_TAGS_LIKE_SQL = "EXISTS (SELECT 1 FROM unnest({}) AS tag WHERE tag ILIKE %s)"
_TAGS_REGEX_SQL = "EXISTS (SELECT 1 FROM unnest({}) AS tag WHERE tag ~ %s)"


class PredicateError(ValueError):
    """The predicate is not valid; the message says where."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match:
            raise PredicateError(f"unexpected {text[pos:].strip()[:10]!r} at {pos}")
        kind = match.lastgroup or ""
        out.append(_Tok(kind, match.group(kind), match.start(kind)))
        pos = match.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(
        r"\\(.)", lambda m: m.group(1) if m.group(1) in "'\"\\" else m.group(0), token[1:-1]
    )


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.params: list[Any] = []

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise PredicateError(f"expected {text!r} at the end" if text else "unexpected end")
        if text is not None and tok.text != text:
            raise PredicateError(f"expected {text!r} at {tok.pos}, found {tok.text!r}")
        self.i += 1
        return tok

    def parse(self) -> sql.Composable:
        if not self.toks:
            raise PredicateError("empty predicate")
        result = self.expr()
        if self.peek() is not None:
            tok = self.peek()
            raise PredicateError(f"unexpected {tok.text!r} at {tok.pos}")
        return result

    def expr(self) -> sql.Composable:
        parts = [self.conj()]
        while (tok := self.peek()) is not None and tok.text == "||":
            self.take()
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" OR ").join(parts))

    def conj(self) -> sql.Composable:
        parts = [self.unary()]
        while (tok := self.peek()) is not None and tok.text == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else sql.SQL("({})").format(sql.SQL(" AND ").join(parts))

    def unary(self) -> sql.Composable:
        tok = self.peek()
        if tok is not None and tok.text == "(":
            self.take("(")
            inner = self.expr()
            self.take(")")
            return sql.SQL("({})").format(inner)
        return self.comparison()

    def field(self) -> tuple[str, Kind, list[str]]:
        tok = self.take()
        if tok.kind != "name":
            raise PredicateError(f"expected a field name at {tok.pos}, found {tok.text!r}")
        name = ALIASES.get(tok.text, tok.text)
        if name not in FIELDS:
            raise PredicateError(f"unknown field {tok.text!r}; fields: {', '.join(sorted(FIELDS))}")
        column, kind = FIELDS[name]
        path: list[str] = []
        while (nxt := self.peek()) is not None and nxt.text == ".":
            self.take(".")
            seg = self.take()
            if seg.kind not in ("name", "num", "str") or "." in seg.text:
                raise PredicateError(f"bad path segment {seg.text!r} at {seg.pos}")
            path.append(_unquote(seg.text) if seg.kind == "str" else seg.text)
        if path and kind != "json":
            raise PredicateError(f"field {name!r} has no sub-fields")
        return column, kind, path

    def value(self) -> Any:
        tok = self.take()
        if tok.kind == "str":
            return _unquote(tok.text)
        if tok.kind == "num":
            return float(tok.text) if "." in tok.text else int(tok.text)
        if tok.kind == "name" and tok.text.lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[tok.text.lower()]
        raise PredicateError(f"expected a value at {tok.pos}, found {tok.text!r}")

    def values(self) -> list[Any]:
        self.take("[")
        items = [self.value()]
        while (tok := self.peek()) is not None and tok.text == ",":
            self.take(",")
            items.append(self.value())
        self.take("]")
        if any(v is None for v in items):
            raise PredicateError("null cannot be in a list")
        return items

    def comparison(self) -> sql.Composable:
        column, kind, path = self.field()
        tok = self.take()
        if tok.text not in OPERATORS:
            raise PredicateError(f"expected an operator at {tok.pos}, found {tok.text!r}")
        op = tok.text
        value = self.values() if op in ("@", "!@") else self.value()
        return _Compiler(self.params).compare(column, kind, path, op, value)


class _Compiler:
    """One comparison → SQL; values go to `params` in placeholder order."""

    def __init__(self, params: list[Any]) -> None:
        self.params = params

    def bind(self, *values: Any) -> None:
        self.params.extend(values)

    def text_expr(self, column: str, kind: Kind, path: list[str]) -> sql.Composable:
        ident = sql.Identifier(column)
        if path:
            self.bind(path)
            return sql.SQL("({} #>> %s::text[])").format(ident)
        return ident if kind == "text" else sql.SQL("{}::text").format(ident)

    def compare(
        self, column: str, kind: Kind, path: list[str], op: str, value: Any
    ) -> sql.Composable:
        if kind == "tags" and value is not None:
            return self.tags(column, op, value)
        negate = op.startswith("!") and op != "!="
        if op in ("~", "!~", "%", "!%"):
            if not isinstance(value, str):
                raise PredicateError(f"{op} needs a text value")
            expr = self.text_expr(column, kind, path)
            if op in ("~", "!~"):
                self.bind(_like_pattern(value))
                template = "coalesce({}, '') NOT ILIKE %s" if negate else "{} ILIKE %s"
            else:
                self.bind(value)
                template = "coalesce({}, '') !~ %s" if negate else "{} ~ %s"
            return sql.SQL(template).format(expr)
        if value is None:
            if op not in ("==", "!="):
                raise PredicateError("null can only be compared with == or !=")
            return self.null_check(column, kind, path, is_null=op == "==")
        if op in ("@", "!@"):
            return self.membership(column, kind, path, value, negate=negate)
        left, cast = self.typed_expr(column, kind, path, value)
        self.bind(value if kind != "json" or not isinstance(value, bool) else str(value).lower())
        operator = "IS DISTINCT FROM" if op == "!=" else _ORDER[op]
        return sql.SQL("{} {} %s{}").format(left, sql.SQL(operator), sql.SQL(cast))

    def typed_expr(
        self, column: str, kind: Kind, path: list[str], value: Any
    ) -> tuple[sql.Composable, str]:
        ident = sql.Identifier(column)
        if kind == "json":
            if isinstance(value, bool):
                return self.text_expr(column, kind, path), ""
            if isinstance(value, int | float):
                self.bind(path, path)
                return sql.SQL("({})").format(_NUMBER_SQL.format(c=ident)), "::numeric"
            return self.text_expr(column, kind, path), ""
        expected = {
            "int": (int,),
            "float": (int, float),
            "bool": (bool,),
            "time": (str,),
            "text": (str,),
            "uuid": (str,),
        }[kind]
        if isinstance(value, bool) and kind != "bool" or not isinstance(value, expected):
            raise PredicateError(f"field {column!r} needs a {kind} value, got {value!r}")
        if kind == "uuid":
            return self.text_expr(column, kind, path), ""
        return ident, "::timestamptz" if kind == "time" else ""

    def tags(self, column: str, op: str, value: Any) -> sql.Composable:
        """A condition on the set of tags; see the module docstring."""
        if op not in ("==", "!=", "@", "!@", "~", "!~", "%", "!%"):
            raise PredicateError(f"tags take == != @ !@ ~ !~ % !%, not {op}")
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in values):
            raise PredicateError(f"field {column!r} needs text values, got {value!r}")
        if op in ("~", "!~"):
            self.bind(_like_pattern(value))
            template = _TAGS_LIKE_SQL
        elif op in ("%", "!%"):
            self.bind(value)
            template = _TAGS_REGEX_SQL
        else:  # == and @ alike: the tag, or any of the tags, is in the set
            self.bind(values)
            template = _TAGS_ANY_SQL
        condition = sql.SQL(template).format(sql.Identifier(column))
        return sql.SQL("NOT {}").format(condition) if op.startswith("!") else condition

    def null_check(
        self, column: str, kind: Kind, path: list[str], *, is_null: bool
    ) -> sql.Composable:
        ident = sql.Identifier(column)
        if path:
            self.bind(path)
            template = "coalesce(jsonb_typeof({} #> %s::text[]), 'null') {} 'null'"
            return sql.SQL(template).format(ident, sql.SQL("=" if is_null else "<>"))
        return sql.SQL("{} IS {}NULL").format(ident, sql.SQL("" if is_null else "NOT "))

    def membership(
        self, column: str, kind: Kind, path: list[str], values: list[Any], *, negate: bool
    ) -> sql.Composable:
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        if kind in ("int", "float") or (kind == "json" and numbers):
            if not numbers:
                raise PredicateError(f"field {column!r} needs numbers in the list")
            if kind == "json":
                self.bind(path, path)
                left = sql.SQL("({})").format(_NUMBER_SQL.format(c=sql.Identifier(column)))
            else:
                left = sql.Identifier(column)
            array_type = "::numeric[]"
        else:
            left = self.text_expr(column, kind, path)
            values = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            array_type = "::text[]"
        self.bind(values)
        template = "NOT coalesce({} = ANY(%s{}), false)" if negate else "{} = ANY(%s{})"
        return sql.SQL(template).format(left, sql.SQL(array_type))


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if "*" not in escaped:
        return f"%{escaped}%"
    return escaped.replace("*", "%")


def compile_predicate(text: str) -> tuple[sql.Composable, list[Any]]:
    """A predicate as (SQL condition, parameters); PredicateError when it is not valid."""
    parser = _Parser(text)
    condition = parser.parse()
    return condition, parser.params
