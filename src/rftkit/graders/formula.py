"""A small, safe arithmetic language for the `multi` grader's `calculate_output`.

Never `eval`: a tokenizer and a recursive-descent parser turn the formula into a tree of
closures once, when the grader is built, so a typo is a config error before any model
loads and grading only evaluates closures.

    >>> f = parse("0.5 * accuracy + 0.5 * max(style, 0.2)", names=["accuracy", "style"])
    >>> f({"accuracy": 1.0, "style": 0.0})
    0.6

Grammar (lowest binding first; `^` is power and right-associative, and binds tighter
than unary minus, so `-2^2 = -4` and `2^3^2 = 2^9 = 512`, as in mathematics and Python):

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/') unary)*
    unary := ('-' | '+') unary | power
    power := atom ('^' unary)?
    atom  := NUMBER | NAME | NAME '(' expr (',' expr)* ')' | '(' expr ')'

Functions: `min max` (one or more arguments), `abs floor ceil exp sqrt log` (one; `log`
is the natural log). A name followed by `(` is a function call, any other name a
variable, so a sub-grader may even be called `max`.

A formula has at most MAX_LENGTH characters and MAX_DEPTH levels of nesting (parentheses,
calls, signs, powers), so neither the parser nor the evaluation can run out of stack.

Errors, with OpenAI's flags: a formula that does not parse is a ValueError
`calculate_output: formula_parse_error: unexpected ')' at column 7` (columns count from 1);
a variable that names no sub-grader is `invalid_variable_error`. A maths error while
grading (division by zero, log of 0, sqrt of a negative, overflow, a NaN result) raises
`FormulaError`; the `multi` grader reports it as `other_error` (OpenAI's flag for a failure
outside the named kinds: the formula parsed, so it is not a `formula_parse_error`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

Values = Mapping[str, float]
Node = Callable[[Values], float]

PARSE_ERROR = "formula_parse_error"
VARIABLE_ERROR = "invalid_variable_error"
MAX_LENGTH = 10_000  # characters of a formula
MAX_DEPTH = 100  # nested parentheses, calls, signs and powers: the parser and the closures recurse this deep

_TOKEN_RE = re.compile(
    r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>[-+*/^(),]))"
)
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class FormulaError(ArithmeticError):
    """A maths error while evaluating a parsed formula; the message says which operation."""


def _div(a: float, b: float) -> float:
    if b == 0:
        raise FormulaError(f"division by zero ({a!r} / 0)")
    return a / b


def _pow(a: float, b: float) -> float:
    # math.pow, not **: `(-8) ** (1/3)` is a complex number in Python; math.pow raises instead.
    try:
        return math.pow(a, b)
    except (ValueError, ZeroDivisionError):
        raise FormulaError(f"{a!r} ^ {b!r} is undefined") from None


def _log(x: float) -> float:
    if x <= 0:
        raise FormulaError(f"log of {x!r}")
    return math.log(x)


def _sqrt(x: float) -> float:
    if x < 0:
        raise FormulaError(f"sqrt of {x!r}")
    return math.sqrt(x)


BINARY: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
    "^": _pow,
}

# name -> (function of a list of arguments, fewest arguments, most arguments or None)
FUNCTIONS: dict[str, tuple[Callable[[list[float]], float], int, int | None]] = {
    "min": (min, 1, None),
    "max": (max, 1, None),
    "abs": (lambda a: abs(a[0]), 1, 1),
    "floor": (lambda a: float(math.floor(a[0])), 1, 1),
    "ceil": (lambda a: float(math.ceil(a[0])), 1, 1),
    "exp": (lambda a: math.exp(a[0]), 1, 1),
    "sqrt": (lambda a: _sqrt(a[0]), 1, 1),
    "log": (lambda a: _log(a[0]), 1, 1),
}


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "name" | "op" | "end"
    text: str
    column: int  # 1-based


def tokenize(source: str, field: str = "calculate_output") -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(source, pos)
        if match is None or match.lastgroup is None:
            column = pos + len(source[pos:]) - len(source[pos:].lstrip()) + 1
            raise ValueError(f"{field}: {PARSE_ERROR}: unexpected character {source[column - 1]!r} at column {column}")
        kind = match.lastgroup
        tokens.append(_Token(kind, match.group(kind), match.start(kind) + 1))
        pos = match.end()
    tokens.append(_Token("end", "", len(source) + 1))
    return tokens


class _Parser:
    def __init__(self, source: str, names: set[str] | None, field: str):
        self.tokens, self.pos = tokenize(source, field), 0
        self.names, self.field = names, field
        self.variables: set[str] = set()
        self.depth = 0

    def nest(self) -> None:
        """One level deeper (a parenthesis, a call, a sign, a power); a formula past MAX_DEPTH is refused."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(self.peek(), f"nested more than {MAX_DEPTH} levels deep")

    def error(self, token: _Token, what: str = "", hint: str = "") -> ValueError:
        found = "end of formula" if token.kind == "end" else repr(token.text)
        return ValueError(f"{self.field}: {PARSE_ERROR}: {what or 'unexpected ' + found} at column {token.column}"
                          + (f"; {hint}" if hint else ""))

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self, text: str | None = None) -> _Token:
        token = self.tokens[self.pos]
        if text is not None and token.text != text:
            raise self.error(token, f"expected {text!r} but found "
                             f"{'end of formula' if token.kind == 'end' else repr(token.text)}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expr()
        if self.peek().kind != "end":
            raise self.error(self.peek())
        return node

    def _left_assoc(self, ops: str, operand: Callable[[], Node]) -> Node:
        first, rest = operand(), []
        while self.peek().kind == "op" and self.peek().text in ops:
            fn = BINARY[self.take().text]
            rest.append((fn, operand()))
        if not rest:
            return first

        def chain(v: Values) -> float:  # a loop, not nested closures: `1+1+...+1` stays flat
            value = first(v)
            for fn, right in rest:
                value = fn(value, right(v))
            return value

        return chain

    def expr(self) -> Node:
        return self._left_assoc("+-", self.term)

    def term(self) -> Node:
        return self._left_assoc("*/", self.unary)

    def unary(self) -> Node:
        if self.peek().kind == "op" and self.peek().text in "+-":
            sign = self.take().text
            self.nest()
            operand = self.unary()
            self.depth -= 1
            return operand if sign == "+" else (lambda v: -operand(v))
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek().kind == "op" and self.peek().text == "^":
            self.take()
            self.nest()
            exponent = self.unary()  # right side recurses through unary: right-assoc, and 2^-1 works
            self.depth -= 1
            return lambda v: _pow(base(v), exponent(v))
        return base

    def atom(self) -> Node:
        token = self.take()
        if token.kind == "number":
            value = float(token.text)
            return lambda v: value
        if token.kind == "name" and self.peek().text == "(":
            return self.call(token)
        if token.kind == "name":
            if self.names is not None and token.text not in self.names:
                raise ValueError(f"{self.field}: {VARIABLE_ERROR}: unknown variable {token.text!r} at column "
                                 f"{token.column}; valid names: {sorted(self.names)}")
            self.variables.add(token.text)
            return lambda v, name=token.text: v[name]
        if token.text == "(":
            self.nest()
            node = self.expr()
            self.take(")")
            self.depth -= 1
            return node
        raise self.error(token)

    def call(self, name: _Token) -> Node:
        if name.text not in FUNCTIONS:
            raise self.error(name, f"unknown function {name.text!r}", f"valid functions: {sorted(FUNCTIONS)}")
        fn, fewest, most = FUNCTIONS[name.text]
        self.take("(")
        self.nest()
        args = [self.expr()]
        while self.peek().text == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        self.depth -= 1
        if len(args) < fewest or (most is not None and len(args) > most):
            wanted = f"{fewest} or more" if most is None else str(most)
            raise self.error(name, f"{name.text}() takes {wanted} argument(s), got {len(args)}")
        return lambda v: fn([a(v) for a in args])


@dataclass(frozen=True)
class Formula:
    source: str
    variables: frozenset[str]  # the names the formula reads
    _node: Node

    def __call__(self, values: Values) -> float:
        """The formula's value; FormulaError on a maths error or a non-finite result."""
        try:
            result = float(self._node(values))
        except OverflowError:
            raise FormulaError("overflow") from None
        except ValueError as exc:  # e.g. floor(nan) from a NaN input
            raise FormulaError(str(exc)) from None
        if not math.isfinite(result):
            raise FormulaError(f"result is {result!r}")
        return result


def parse(source: str, names: Iterable[str] | None = None, field: str = "calculate_output") -> Formula:
    """Parse `source` once; with `names`, any other variable is an `invalid_variable_error`."""
    if not isinstance(source, str):
        raise ValueError(f"{field}: must be a string formula (got {type(source).__name__})")
    if not source.strip():
        raise ValueError(f"{field}: {PARSE_ERROR}: empty formula")
    if len(source) > MAX_LENGTH:
        raise ValueError(f"{field}: {PARSE_ERROR}: the formula has {len(source)} characters (at most {MAX_LENGTH})")
    parser = _Parser(source, set(names) if names is not None else None, field)
    node = parser.parse()
    return Formula(source, frozenset(parser.variables), node)
