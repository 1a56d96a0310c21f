"""Set definitions as filters over manifest columns (`data.filter_a: "score >= 0.8"`), so that a
study needs a manifest and two expressions, not custom code.

The text is parsed with Python's `ast` and only a small whitelist of node types is accepted:
comparisons, `and`/`or`/`not`, parentheses, numbers, quoted strings, `true`/`false`, lists of
literals after `in`, and column names. Nothing is ever evaluated by Python: the accepted tree is
turned into plain closures, so `__import__('os')`, attributes, subscripts, calls and lambdas are
refused before any row is read.

Cells are compared the way a manifest reads (CSV cells are text): against a number the cell is
read as a number, against a quoted string as text, against `true`/`false` as a truth value; a
bare column is a truth value (`clip_correct and not resnet_correct`). A cell that is empty or
not a number never matches a numeric comparison (as SQL's NULL), so `score != 0.5` skips rows
without a score.

>>> keep = compile_filter("score >= 0.8 and label in ['cat', 'dog']", ["score", "label"])
>>> keep({"score": "0.85", "label": "cat"}), keep({"score": "0.5", "label": "cat"})
(True, False)
>>> compile_filter("0.2 <= score < 0.8", ["score"])({"score": 0.3})
True
>>> both = compile_filter("clip_correct and not resnet_correct", ["clip_correct", "resnet_correct"])
>>> both({"clip_correct": "True", "resnet_correct": "False"})
True
>>> compile_filter("score != 0.5", ["score"])({"score": ""})
False
>>> compile_filter("__import__('os')", ["score"])
Traceback (most recent call last):
...
visdiff.errors.ConfigError: filter '__import__('os')': function calls are not allowed; write comparisons of columns (available: score)
>>> compile_filter("scre > 1", ["score", "label"])
Traceback (most recent call last):
...
visdiff.errors.ConfigError: filter 'scre > 1': unknown column 'scre' (did you mean 'score'?); available: score, label
"""

from __future__ import annotations

import ast
import difflib
import math
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from visdiff.errors import ConfigError, InputError

MAX_FILTER_CHARS = 2000  # a set definition, not a program; also bounds the parser's recursion
MAX_LISTED_COLUMNS = 12
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0", ""})
LITERAL_BOOLS = {"true": True, "false": False, "True": True, "False": False}

Row = Mapping[str, Any]
Getter = Callable[[Row], Any]
Predicate = Callable[[Row], bool]

_ORDER_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_EQUALITY_OPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}

# Node types with a dedicated refusal, so the message says what was written.
_REFUSED: dict[type, str] = {
    ast.Call: "function calls are not allowed",
    ast.Attribute: "attribute access (a.b) is not allowed",
    ast.Subscript: "subscripts (a[b]) are not allowed",
    ast.Lambda: "lambda is not allowed",
    ast.BinOp: "arithmetic is not allowed",
    ast.IfExp: "'x if c else y' is not allowed",
    ast.NamedExpr: "':=' is not allowed",
    ast.Starred: "'*' is not allowed",
    ast.Dict: "dicts are not allowed",
    ast.Set: "sets are not allowed; write a list after 'in'",
    ast.ListComp: "comprehensions are not allowed",
    ast.GeneratorExp: "comprehensions are not allowed",
    ast.JoinedStr: "f-strings are not allowed",
}


class _Invalid(Exception):
    """What is wrong with the expression; turned into the one-line ConfigError."""


@dataclass(frozen=True)
class _Column:
    name: str


@dataclass(frozen=True)
class _Literal:
    value: float | str | bool


_Operand = _Column | _Literal


@dataclass(frozen=True)
class RowFilter:
    """A compiled filter: call it on a row (a mapping of column name to cell) for True/False."""

    text: str
    columns: tuple[str, ...]  # the columns the expression reads
    predicate: Predicate

    def __call__(self, row: Row) -> bool:
        return self.predicate(row)


def compile_filter(text: str, columns: Sequence[str], *, key: str = "filter") -> RowFilter:
    """Parse `text` into a row predicate over `columns`; ConfigError (one line naming `key`, the
    expression, what is wrong and the available columns) for anything outside the grammar."""
    columns = [str(c) for c in columns]
    shown = _column_list(columns)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{key} is empty; write a condition such as 'score >= 0.8' ({shown})")
    if len(text) > MAX_FILTER_CHARS:
        raise ConfigError(f"{key} is longer than {MAX_FILTER_CHARS} characters; shorten it")
    # A YAML block may spread the expression over lines; messages stay on one line.
    text = text.replace("\r", " ").replace("\n", " ").replace("\t", " ").strip()
    where = f"{key} '{text}'"
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        hint = "; use == to compare" if _looks_like_assignment(text) else ""
        raise ConfigError(f"{where}: not a valid expression ({exc.msg}){hint} ({shown})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ConfigError(f"{where}: too deeply nested or not parsable; simplify it") from None
    used: set[str] = set()
    try:
        predicate = _Compiler(columns, used).condition(tree.body)
    except _Invalid as exc:
        text_ = str(exc)
        tail = "" if "available:" in text_ else f" ({shown})"
        raise ConfigError(f"{where}: {text_}{tail}") from None
    except RecursionError:
        raise ConfigError(f"{where}: too deeply nested; simplify it") from None
    ordered = tuple(c for c in columns if c in used)
    return RowFilter(text, ordered, predicate)


def _column_list(columns: Sequence[str]) -> str:
    listed = ", ".join(columns[:MAX_LISTED_COLUMNS]) or "none"
    more = len(columns) - MAX_LISTED_COLUMNS
    return f"available: {listed}" + (f" (+{more} more)" if more > 0 else "")


def _looks_like_assignment(text: str) -> bool:
    stripped = text.replace("==", "").replace("<=", "").replace(">=", "").replace("!=", "")
    return "=" in stripped


class _Compiler:
    """Whitelisted AST -> closures. Every method raises _Invalid on anything unexpected."""

    def __init__(self, columns: Sequence[str], used: set[str]) -> None:
        self.columns = list(columns)
        self.known = set(columns)
        self.used = used

    # -- conditions (things that are true or false) --------------------------------------------
    def condition(self, node: ast.AST) -> Predicate:
        self._refuse(node)
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda row: all(p(row) for p in parts)
            return lambda row: any(p(row) for p in parts)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.condition(node.operand)
            return lambda row: not inner(row)
        if isinstance(node, ast.Compare):
            return self._compare(node)
        operand = self.operand(node)
        if isinstance(operand, _Column):
            name = operand.name
            return lambda row: truth(row.get(name), name)
        if isinstance(operand.value, bool):
            constant = operand.value
            return lambda row: constant
        raise _Invalid(f"{operand.value!r} alone is not a condition; compare it with a column")

    def _compare(self, node: ast.Compare) -> Predicate:
        checks: list[Predicate] = []
        left = self.operand(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            if isinstance(op, ast.In | ast.NotIn):
                options = self._options(right_node)
                check = _membership(left, options, negate=isinstance(op, ast.NotIn))
                right: _Operand | None = None
            else:
                right = self.operand(right_node)
                check = _comparison(left, op, right)
            checks.append(check)
            if right is None:  # `a in [..] < b` is not a chain anyone means
                if len(node.ops) > 1:
                    raise _Invalid("'in [...]' cannot be chained; join conditions with 'and'")
                break
            left = right
        if len(checks) == 1:
            return checks[0]
        return lambda row: all(c(row) for c in checks)

    def _options(self, node: ast.AST) -> list[_Literal]:
        self._refuse(node)
        if not isinstance(node, ast.List | ast.Tuple):
            raise _Invalid("'in' needs a list of values, e.g. label in ['cat', 'dog']")
        options = [self.operand(element) for element in node.elts]
        if not all(isinstance(o, _Literal) for o in options):
            raise _Invalid("a list after 'in' may hold only numbers, quoted strings, true/false")
        return options  # type: ignore[return-value]

    # -- operands (columns and literals) ------------------------------------------------------
    def operand(self, node: ast.AST) -> _Operand:
        self._refuse(node)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return _Literal(value)
            if isinstance(value, int | float):
                return _Literal(float(value))
            if isinstance(value, str):
                return _Literal(value)
            raise _Invalid(f"the literal {value!r} is not allowed; use numbers or quoted strings")
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = self.operand(node.operand)
            if isinstance(inner, _Literal) and isinstance(inner.value, float):
                sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
                return _Literal(sign * inner.value)
            raise _Invalid("a sign (-, +) may only precede a number")
        if isinstance(node, ast.Name):
            if node.id in LITERAL_BOOLS:
                return _Literal(LITERAL_BOOLS[node.id])
            if node.id not in self.known:
                close = difflib.get_close_matches(node.id, self.columns, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise _Invalid(f"unknown column '{node.id}'{hint}; {_column_list(self.columns)}")
            self.used.add(node.id)
            return _Column(node.id)
        if isinstance(node, ast.Compare | ast.BoolOp | ast.UnaryOp):
            raise _Invalid("a condition cannot be compared; join conditions with and/or")
        raise _Invalid(f"'{type(node).__name__}' is not part of the filter language")

    @staticmethod
    def _refuse(node: ast.AST) -> None:
        for kind, why in _REFUSED.items():
            if isinstance(node, kind):
                raise _Invalid(why + "; write comparisons of columns")


# -- cell semantics --------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    try:
        import pandas as pd

        return value is pd.NA or value is pd.NaT
    except ImportError:  # pragma: no cover - pandas is a dependency
        return False


def as_number(value: Any) -> float | None:
    """A cell as a number, or None when it is empty or not a number.

    >>> as_number("0.85"), as_number(" 3 "), as_number(""), as_number("n/a"), as_number(True)
    (0.85, 3.0, None, None, 1.0)
    """
    if _missing(value):
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return None if math.isnan(number) else number


def as_text(value: Any) -> str:
    """A cell as text; empty for a missing cell."""
    return "" if _missing(value) else str(value)


def truth(value: Any, column: str) -> bool:
    """A cell as a truth value: booleans, numbers (0 is false), and the words true/false,
    yes/no, t/f, y/n, 1/0 (any case; empty is false). Other text is an InputError naming the
    column, since guessing would silently change a set.

    >>> truth("True", "c"), truth("no", "c"), truth(2, "c"), truth(None, "c")
    (True, False, True, False)
    """
    if _missing(value):
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    try:
        return float(word) != 0
    except ValueError:
        raise InputError(
            f"manifest column '{column}' holds {str(value)!r}, not a truth value (true/false, "
            f"yes/no, 1/0); compare it instead, e.g. {column} == {str(value)!r}"
        ) from None


def _getter(operand: _Operand) -> Getter:
    if isinstance(operand, _Column):
        name = operand.name
        return lambda row: row.get(name)
    constant = operand.value
    return lambda row: constant


def _kind(left: _Operand, right: _Operand) -> str:
    """How a comparison reads its cells: 'bool', 'number', 'text' or 'auto' (two columns)."""
    for side in (left, right):
        if isinstance(side, _Literal) and isinstance(side.value, bool):
            return "bool"
    for side in (left, right):
        if isinstance(side, _Literal) and isinstance(side.value, float):
            return "number"
    for side in (left, right):
        if isinstance(side, _Literal):
            return "text"
    return "auto"


def _comparison(left: _Operand, op: ast.cmpop, right: _Operand) -> Predicate:
    kind = _kind(left, right)
    if type(op) in _EQUALITY_OPS:
        compare = _EQUALITY_OPS[type(op)]
    elif type(op) in _ORDER_OPS:
        if kind == "bool":
            raise _Invalid("true/false can only be compared with == or !=")
        compare = _ORDER_OPS[type(op)]
    else:
        raise _Invalid(f"the operator '{type(op).__name__}' is not allowed; use == != < <= > >=")
    if isinstance(left, _Literal) and isinstance(right, _Literal):
        raise _Invalid("compares two values; at least one side must be a column")
    get_left, get_right = _getter(left), _getter(right)
    name = left.name if isinstance(left, _Column) else right.name  # type: ignore[union-attr]

    if kind == "bool":
        return lambda row: compare(truth(get_left(row), name), truth(get_right(row), name))
    if kind == "number":

        def numeric(row: Row) -> bool:
            a, b = as_number(get_left(row)), as_number(get_right(row))
            return a is not None and b is not None and compare(a, b)

        return numeric
    if kind == "text":
        return lambda row: compare(as_text(get_left(row)), as_text(get_right(row)))

    def either(row: Row) -> bool:  # two columns: numbers when both cells are numbers
        a_cell, b_cell = get_left(row), get_right(row)
        a, b = as_number(a_cell), as_number(b_cell)
        if a is not None and b is not None:
            return compare(a, b)
        return compare(as_text(a_cell), as_text(b_cell))

    return either


def _membership(left: _Operand, options: list[_Literal], *, negate: bool) -> Predicate:
    if not isinstance(left, _Column):
        raise _Invalid("the left side of 'in' must be a column")
    if negate:  # all of `!=`: a missing cell matches neither `in` nor `not in`
        checks = [_comparison(left, ast.NotEq(), option) for option in options]
        return lambda row: all(c(row) for c in checks)
    checks = [_comparison(left, ast.Eq(), option) for option in options]
    return lambda row: any(c(row) for c in checks)
