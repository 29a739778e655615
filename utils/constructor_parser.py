"""Safe parsing of constructor expressions such as ``"Quad_L2Net_ConfCFS(mchan=6)"``.

Official R2D2 checkpoints store the network as a Python expression
(``checkpoint['net']``) that the reference code runs through ``eval``. Here the string
is parsed with :mod:`ast` and accepted only when it is a single call of a whitelisted
name with keyword arguments whose names are whitelisted and whose values are plain
literals (numbers, booleans, strings, ``None``). Nothing is ever evaluated, so a
malicious checkpoint cannot run code.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping

from utils.errors import UserError

Literal = int | float | bool | str | None


def _literal(node: ast.expr, where: str) -> Literal:
    """Value of a literal node (a constant, or a negated number), else
    :class:`UserError`."""
    if isinstance(node, ast.Constant) and (
        node.value is None or isinstance(node.value, (bool, int, float, str))
    ):
        return node.value
    if (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, (ast.USub, ast.UAdd))
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float))
        and not isinstance(node.operand.value, bool)
    ):
        value = node.operand.value
        return -value if isinstance(node.op, ast.USub) else value
    raise UserError(f"{where}: only plain literal values are allowed")


def parse_constructor(
    expression: str, allowed: Mapping[str, Iterable[str]]
) -> tuple[str, dict[str, Literal]]:
    """Parse ``Name(key=value, ...)`` against a whitelist, without evaluating anything.

    Args:
        expression: the constructor string, e.g. ``"Fast_Quad_L2Net_ConfCFS()"``.
        allowed: whitelist mapping each accepted callable name to its accepted keyword
            names.

    Returns:
        ``(name, kwargs)`` with literal keyword values.

    Raises:
        UserError: naming the expression and what is wrong (not a call, unknown name or
            keyword, positional argument, ``**kwargs``, non-literal value, syntax
            error).

    Example:
        >>> parse_constructor("Net(dim=64)", {"Net": ["dim"]})
        ('Net', {'dim': 64})
    """
    if not isinstance(expression, str):
        raise UserError(
            f"constructor must be a string, got {type(expression).__name__}"
        )
    shown = expression if len(expression) <= 80 else expression[:77] + "..."
    where = f"constructor {shown!r}"
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise UserError(f"{where}: not a valid expression ({err.msg})") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise UserError(f"{where}: expected a call like Name(key=value)")
    name = call.func.id
    if name not in allowed:
        raise UserError(
            f"{where}: {name!r} is not an accepted network "
            f"(accepted: {', '.join(sorted(allowed))})"
        )
    if call.args:
        raise UserError(f"{where}: positional arguments are not accepted")
    accepted_keys = set(allowed[name])
    kwargs: dict[str, Literal] = {}
    for keyword in call.keywords:
        if keyword.arg is None:
            raise UserError(f"{where}: '**' arguments are not accepted")
        if keyword.arg not in accepted_keys:
            raise UserError(
                f"{where}: keyword {keyword.arg!r} is not accepted for {name} "
                f"(accepted: {', '.join(sorted(accepted_keys))})"
            )
        kwargs[keyword.arg] = _literal(keyword.value, f"{where}, {keyword.arg}")
    return name, kwargs
