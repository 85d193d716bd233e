"""Tools the model may call during generation (see `lmforge.engine`): name -> function(text) -> text.

The calculator evaluates arithmetic without `eval`: the text is parsed with `ast` and only a
whitelist of nodes is walked (numbers, + - * / // % **, unary +/-, parentheses). The work is
bounded: at most MAX_CHARS characters, exponents up to MAX_EXPONENT in size, and every
intermediate result at most MAX_MAGNITUDE in size. Anything else, including division by zero,
returns a short "error: ..." string, which is what the model reads; it never raises.
"""

from __future__ import annotations

import ast
import math
import operator
import warnings

MAX_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 10 ** 30

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(Exception):
    pass


def _check(x: int | float) -> int | float:
    if isinstance(x, complex):
        raise CalcError("complex result")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalcError("result too large")
    if abs(x) > MAX_MAGNITUDE:
        raise CalcError("result too large")
    return x


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if type(node.value) not in (int, float):  # bool is an int subclass: excluded by `type`
            raise CalcError(f"unsupported value {node.value!r}")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalcError(f"exponent too large (at most {MAX_EXPONENT})")
        return _check(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise CalcError("unsupported operator ^ (use ** for powers)")
    raise CalcError(f"unsupported syntax ({type(node).__name__})")


def format_number(x: int | float) -> str:
    """Integers as integers (also 6/3 -> "2"); other floats with up to 6 decimals ("2.5", "0.333333")."""
    if isinstance(x, int):
        return str(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if abs(x) >= 1e15 or abs(x) < 1e-4:
        return f"{x:.6g}"
    text = f"{x:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression; returns the result, or "error: ..." (never raises)."""
    expression = expression.strip()
    if len(expression) > MAX_CHARS:
        return f"error: expression too long (at most {MAX_CHARS} characters)"
    if not expression:
        return "error: empty expression"
    try:
        with warnings.catch_warnings():  # "3x4" makes Python warn about an invalid decimal literal
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression, mode="eval")
    except (SyntaxError, ValueError):
        return "error: invalid expression"
    try:
        return format_number(_eval(tree))
    except ZeroDivisionError:
        return "error: division by zero"
    except OverflowError:
        return "error: result too large"
    except (CalcError, RecursionError, TypeError) as e:
        return f"error: {e}" if isinstance(e, CalcError) else "error: invalid expression"


TOOLS = {"calculator": calculator}
