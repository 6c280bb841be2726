"""The built-in calculator tool: arithmetic only, parsed with `ast`, never `eval`."""

import pytest

from threadlog.infra.agents.tools import CalculatorError, evaluate


def test_operators_follow_arithmetic_precedence() -> None:
    assert evaluate("2 + 3 * 4 - 6 / 3") == 12.0


def test_parentheses_group() -> None:
    assert evaluate("(2 + 3) * 7") == 35


def test_power_floor_division_and_modulo() -> None:
    assert (evaluate("2 ** 10"), evaluate("17 // 5"), evaluate("17 % 5")) == (1024, 3, 2)


def test_unary_minus_and_decimals() -> None:
    assert evaluate("-1.5 * -(2)") == 3.0


def test_division_by_zero_raises() -> None:
    with pytest.raises(ZeroDivisionError):
        evaluate("1 / (3 - 3)")


@pytest.mark.parametrize(
    "expression",
    ["__import__('os').system('true')", "x + 1", "abs(-1)", "(1).real", "'a' * 3", "[1] * 2"],
)
def test_anything_but_numbers_and_operators_is_refused(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


def test_booleans_are_not_numbers() -> None:
    with pytest.raises(CalculatorError):
        evaluate("True + 1")


def test_text_that_does_not_parse_is_refused() -> None:
    with pytest.raises(CalculatorError, match="not an arithmetic expression"):
        evaluate("2 +* 3")


def test_a_power_too_large_to_compute_cheaply_is_refused() -> None:
    with pytest.raises(CalculatorError):
        evaluate("(10 ** 1000) ** 1000")


def test_a_result_that_is_not_real_is_refused() -> None:
    with pytest.raises(CalculatorError):
        evaluate("(-8) ** 0.5")
