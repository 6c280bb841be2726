"""Built-in tools an agent can be given by name.

A tool that raises becomes a failed tool result the model sees (`ToolFailed`), so the
run goes on as the model decides instead of failing.
"""

import ast
import functools
import inspect
import operator
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

from pydantic_ai import RunContext, Tool
from pydantic_ai.exceptions import ModelRetry, ToolFailed

P = ParamSpec("P")
R = TypeVar("R")

# An expression longer than this, or a power above this, is refused: the calculator must
# not be a way to burn the server's CPU or memory.
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 1000
MAX_RESULT_BITS = 100_000


@dataclass(frozen=True, kw_only=True)
class RunDeps:
    """What a tool may reach of the run it serves: recording progress on it."""

    report_progress: Callable[[float, str], Awaitable[None]]


class CalculatorError(ValueError):
    """An expression the calculator does not evaluate."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}


def evaluate(expression: str) -> int | float:
    """Evaluates arithmetic: numbers, + - * / // % ** and parentheses, nothing else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    return _value(tree.body)


def _value(node: ast.expr) -> int | float:
    value = node.value if isinstance(node, ast.Constant) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        result: int | float = _UNARY[type(node.op)](_value(node.operand))
        return result
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        if isinstance(node.op, ast.Pow) and isinstance(right, int) and right < 0 and left == 0:
            raise ZeroDivisionError("zero cannot be raised to a negative power")
        combined: int | float = _BINARY[type(node.op)](left, right)
        if isinstance(combined, complex):
            raise CalculatorError("the result is not a real number")
        return combined
    raise CalculatorError(
        f"only numbers and + - * / // % ** ( ) are allowed, not {ast.unparse(node)!r}"
    )


def _check_power(base: int | float, exponent: int | float) -> None:
    if abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponents above {MAX_EXPONENT} are refused")
    if isinstance(base, int) and abs(base) > 1 and base.bit_length() * exponent > MAX_RESULT_BITS:
        raise CalculatorError("the result would be too large")


def calculator(expression: str) -> int | float:
    """Evaluates an arithmetic expression (numbers, + - * / // % ** and parentheses)."""
    return evaluate(expression)


def current_time() -> str:
    """The current date and time in UTC, ISO 8601."""
    return datetime.now(UTC).isoformat()


async def report_progress(ctx: RunContext[RunDeps], percent: float, note: str = "") -> str:
    """Reports how far the task is, from 0 to 100 percent, with a short note."""
    await ctx.deps.report_progress(percent, note)
    return "recorded"


def failures_to_model(function: Callable[P, R]) -> Callable[P, R]:
    """A tool whose errors the model sees as a failed call, rather than ending the run."""
    if _is_async(function):

        @functools.wraps(function)
        async def guarded_async(*args: P.args, **kwargs: P.kwargs) -> Any:
            try:
                return await function(*args, **kwargs)  # type: ignore[misc]
            except (ModelRetry, ToolFailed):
                raise
            except Exception as error:
                raise ToolFailed(_error_text(error)) from error

        return guarded_async  # type: ignore[return-value]

    @functools.wraps(function)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except (ModelRetry, ToolFailed):
            raise
        except Exception as error:
            raise ToolFailed(_error_text(error)) from error

    return guarded


def _is_async(function: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(function)


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


BUILTIN_TOOLS: dict[str, Tool[RunDeps]] = {
    "calculator": Tool(failures_to_model(calculator), takes_ctx=False, name="calculator"),
    "current_time": Tool(failures_to_model(current_time), takes_ctx=False, name="current_time"),
    "report_progress": Tool(
        failures_to_model(report_progress), takes_ctx=True, name="report_progress"
    ),
}
"""Every built-in tool, by the name an agent definition uses."""
