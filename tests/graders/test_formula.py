"""calculate_output formulas by hand: precedence, associativity, functions, and errors with columns."""

import math

import pytest

from rftkit.graders.formula import FormulaError, parse

VALUES = {"a": 2.0, "b": 3.0, "acc_1": 0.5, "max": 10.0}


@pytest.mark.parametrize(
    "source,expected",
    [
        ("1 + 2 * 3", 7.0),  # * before +: 1 + 6
        ("(1 + 2) * 3", 9.0),
        ("10 - 4 - 3", 3.0),  # left-assoc: (10 - 4) - 3, not 10 - 1
        ("16 / 4 / 2", 2.0),  # left-assoc: (16 / 4) / 2, not 16 / 2
        ("2 ^ 3 ^ 2", 512.0),  # right-assoc: 2 ^ 9, not 8 ^ 2 = 64
        ("-2 ^ 2", -4.0),  # ^ binds tighter than unary minus: -(2^2)
        ("(-2) ^ 2", 4.0),
        ("2 ^ -1", 0.5),  # a signed exponent needs no parentheses
        ("--3", 3.0),
        ("-a * b", -6.0),  # (-2) * 3
        ("2 * 3 ^ 2", 18.0),  # 2 * 9
        ("a + b * acc_1", 3.5),  # 2 + 3 * 0.5
        ("0.5 * a + 0.5 * b", 2.5),  # 1 + 1.5
        ("1e-3 * 1000 + .5", 1.5),
        ("max(a, b, acc_1)", 3.0),  # variadic
        ("min(a)", 2.0),
        ("max + 1", 11.0),  # a variable may be called `max`: only `max(` is the function
        ("max(max, 1)", 10.0),
        ("abs(a - b)", 1.0),
        ("floor(2.7) + ceil(2.1)", 5.0),  # 2 + 3
        ("floor(-2.5)", -3.0),
        ("exp(0) + sqrt(16) + log(1)", 5.0),  # 1 + 4 + 0
        ("log(exp(2))", 2.0),
        ("sqrt(a ^ 2 + (b + 1) ^ 2)", math.sqrt(20.0)),  # sqrt(4 + 16)
    ],
)
def test_values_by_hand(source, expected):
    assert parse(source)(VALUES) == pytest.approx(expected)


def test_parsed_once_reads_only_its_variables():
    f = parse("0.7 * a + 0.3 * b", names=["a", "b", "c"])
    assert f.variables == {"a", "b"}
    assert f({"a": 1.0, "b": 0.0}) == pytest.approx(0.7)
    assert f({"a": 0.0, "b": 1.0}) == pytest.approx(0.3)


@pytest.mark.parametrize(
    "source,message",
    [
        ("(a + b))", "formula_parse_error: unexpected ')' at column 8"),
        ("a +", "formula_parse_error: unexpected end of formula at column 4"),
        ("a $ b", "formula_parse_error: unexpected character '$' at column 3"),
        ("a b", "formula_parse_error: unexpected 'b' at column 3"),
        ("(a + b", "formula_parse_error: expected ')' but found end of formula at column 7"),
        ("max()", "formula_parse_error: unexpected ')' at column 5"),
        ("max(a,)", "formula_parse_error: unexpected ')' at column 7"),
        ("a * foo(b)", "formula_parse_error: unknown function 'foo' at column 5; valid functions: ['abs', "),
        ("abs(a, b)", "formula_parse_error: abs() takes 1 argument(s), got 2 at column 1"),
        ("  ", "formula_parse_error: empty formula"),
        ("a + c", "invalid_variable_error: unknown variable 'c' at column 5; valid names: ['a', 'b']"),
    ],
)
def test_build_errors_name_the_flag_and_column(source, message):
    with pytest.raises(ValueError) as info:
        parse(source, names=["a", "b"])
    assert str(info.value).startswith("calculate_output: " + message)


def test_not_a_string():
    with pytest.raises(ValueError, match="calculate_output: must be a string formula"):
        parse(0.5)


@pytest.mark.parametrize(
    "source,message",
    [
        ("a / (b - 3)", "division by zero"),
        ("log(b - 3)", "log of 0.0"),
        ("sqrt(-a)", "sqrt of -2.0"),
        ("exp(1000)", "overflow"),  # math.exp raises OverflowError
        ("10 ^ 400", "overflow"),  # math.pow raises OverflowError
        ("1e308 * 10", "result is inf"),  # float * overflows silently to inf
        ("(-8) ^ (1 / 3)", "is undefined"),  # a complex number in Python, refused here
        ("0 ^ -1", "is undefined"),
    ],
)
def test_maths_errors_at_grading_time(source, message):
    f = parse(source, names=["a", "b"])  # parses fine: the problem only shows with these values
    with pytest.raises(FormulaError, match=message):
        f({"a": 2.0, "b": 3.0})


@pytest.mark.parametrize("source", ["(" * 5000 + "1" + ")" * 5000, "-" * 3000 + "1", "2^" * 3000 + "2",
                                    "max(" * 2000 + "1" + ")" * 2000, "1+" * 6000 + "1"])
def test_deep_or_long_formulas_are_parse_errors_not_recursion_errors(source):
    with pytest.raises(ValueError, match="formula_parse_error: (nested more than 100 levels|the formula has)"):
        parse(source)


def test_a_long_flat_sum_evaluates_without_deep_recursion():
    assert parse("1+" * 4999 + "1")({}) == 5000.0  # 9,999 characters, one level deep
