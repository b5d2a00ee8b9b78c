"""SparseML's ``eval(...)`` recipe variables, evaluated without Python's ``eval``.

SparseML recipes may compute values from their own top-level variables::

    num_epochs: 3
    quantization_epochs: 2
    quantization_start_epoch: eval(num_epochs - quantization_epochs)
    ...
    - !MagnitudePruningModifier
      end_epoch: eval(pruning_end_epoch)

The rules are SparseML's (``sparseml.optim.helpers.evaluate_recipe_yaml_str_equations``):

* variables are the top-level keys that do not contain ``modifiers``; numbers are values, ``eval(...)``
  strings are evaluated in any order until none is left (a cycle or an unknown name is an error),
  any other value (a string, a list) is a *non-numeric* variable: ``eval(name)`` returns it as is;
* in a staged recipe (top-level keys holding mappings with ``*modifiers*`` keys) each stage's own
  variables come first, then the top-level ones;
* every ``eval(...)`` string inside the modifier groups is then replaced by its value.

An expression is parsed with `ast` and only these nodes are allowed: numbers, names of the recipe's
variables, ``+ - * / // % **``, unary ``+ -``, parentheses, and calls of ``abs``, ``float``, ``int``,
``min``, ``max``, ``round`` — SparseML's ``restricted_eval`` whitelist. Anything else (attributes,
subscripts, strings, lambdas, comprehensions) is an error naming the expression. Results are bounded:
an integer power whose result would exceed 2⁶⁴, any float overflow, an expression over 500 characters
or 200 nodes is refused, so an expression cannot hang or exhaust memory.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from ...safe_io import SourceError, Tagged, YamlList, YamlMap, line_of

__all__ = ["evaluate_expression", "evaluate_recipe", "is_eval_string", "override_variables"]

MAX_EXPRESSION_CHARS = 500
MAX_EXPRESSION_NODES = 200
_INT_LIMIT = 2**64

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "float": float, "int": int, "min": min, "max": max, "round": round,
}


class _Unknown(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


def is_eval_string(value: Any) -> bool:
    """SparseML's test: a string that starts with ``eval(`` and ends with ``)``."""
    return isinstance(value, str) and value.strip().startswith("eval(") and value.strip().endswith(")")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bounded(value: Any, expression: str) -> Any:
    if isinstance(value, bool) or not _number(value):
        raise ValueError(f"eval({expression}) does not give a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"eval({expression}) overflows")
    if isinstance(value, int) and abs(value) > _INT_LIMIT:
        raise ValueError(f"eval({expression}) is too large (more than 2**64)")
    return value


def _power(base: Any, exponent: Any, expression: str) -> Any:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1 \
            and exponent * math.log2(abs(base)) > 64:
        raise ValueError(f"eval({expression}) is too large (more than 2**64)")
    try:
        result = base**exponent
    except (OverflowError, ZeroDivisionError) as exc:
        raise ValueError(f"eval({expression}) cannot be computed: {exc}") from exc
    if isinstance(result, complex):
        raise ValueError(f"eval({expression}) is not a real number")
    return result


def _evaluate(node: ast.AST, variables: Mapping[str, Any], expression: str) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, variables, expression)
    if isinstance(node, ast.Constant) and _number(node.value):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in variables:
            raise _Unknown(node.id)
        return variables[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _bounded(_evaluate(node.left, variables, expression), expression)
        right = _bounded(_evaluate(node.right, variables, expression), expression)
        if isinstance(node.op, ast.Pow):
            return _bounded(_power(left, right, expression), expression)
        try:
            return _bounded(_BINARY[type(node.op)](left, right), expression)
        except (ZeroDivisionError, OverflowError) as exc:
            raise ValueError(f"eval({expression}) cannot be computed: {exc}") from exc
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_bounded(_evaluate(node.operand, variables, expression), expression))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS:
        args = [_bounded(_evaluate(arg, variables, expression), expression) for arg in node.args]
        if node.keywords:
            raise ValueError(f"eval({expression}): keyword arguments are not allowed")
        try:
            return _bounded(_FUNCTIONS[node.func.id](*args), expression)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"eval({expression}): {node.func.id}() failed: {exc}") from exc
    allowed = "numbers, recipe variables, + - * / // % **, parentheses, abs/float/int/min/max/round"
    raise ValueError(f"eval({expression}): {type(node).__name__} is not allowed (allowed: {allowed})")


def evaluate_expression(expression: str, variables: Mapping[str, Any]) -> Any:
    """Evaluate one expression (the text inside ``eval(...)``) over ``variables``; see the module docs.

    A bare variable name returns that variable whatever its type (SparseML's rule for non-numeric
    variables such as ``mask_type: unstructured``). Raises ``ValueError`` naming the expression, or
    ``KeyError`` naming an unknown variable.
    """
    expression = expression.strip()
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"eval(...) of {len(expression)} characters is refused (at most {MAX_EXPRESSION_CHARS})")
    if expression.isidentifier() and expression in variables:
        return variables[expression]
    try:
        tree = ast.parse(expression, mode="eval")
    except (SyntaxError, RecursionError, ValueError) as exc:
        raise ValueError(f"eval({expression}) is not a valid expression") from exc
    if sum(1 for _ in ast.walk(tree)) > MAX_EXPRESSION_NODES:
        raise ValueError(f"eval({expression}) is refused: more than {MAX_EXPRESSION_NODES} syntax nodes")
    numeric = {k: v for k, v in variables.items() if _number(v)}
    try:
        return _evaluate(tree, numeric, expression)
    except _Unknown as exc:
        kind = "a non-numeric" if exc.name in variables else "an undefined"
        raise KeyError(f"eval({expression}) uses {kind} variable {exc.name!r}") from None


def _inner(text: str) -> str:
    return text.strip()[len("eval("):-1]


def _resolve_variables(container: Mapping[str, Any], outer: Mapping[str, Any], path: str | None) -> dict[str, Any]:
    """Evaluate a recipe's (or a stage's) variables to a fixpoint, SparseML's way."""
    variables = dict(outer)
    pending = {key: value for key, value in container.items()
               if isinstance(key, str) and "modifiers" not in key and not _is_stage(value)}
    for key, value in pending.items():
        if not is_eval_string(value):
            variables[key] = value
    waiting = {key: value for key, value in pending.items() if is_eval_string(value)}
    while waiting:
        progress = False
        for key, text in list(waiting.items()):
            try:
                value = evaluate_expression(_inner(text), variables)
            except KeyError:
                continue
            except ValueError as exc:
                raise SourceError(str(exc), path, line_of(container, key)) from exc
            variables[key] = value
            del waiting[key]
            progress = True
        if not progress:
            key, text = next(iter(waiting.items()))
            try:
                evaluate_expression(_inner(text), variables)
            except KeyError as exc:
                reason = exc.args[0]
            else:  # pragma: no cover - progress would have been made
                reason = "cannot be evaluated"
            raise SourceError(f"variable {key}: {reason} (a cycle, or a name the recipe does not define)",
                              path, line_of(container, key))
    return variables


def _is_stage(value: Any) -> bool:
    return isinstance(value, Mapping) and any(isinstance(k, str) and "modifiers" in k for k in value)


def _substitute(value: Any, variables: Mapping[str, Any], path: str | None, line: int | None) -> Any:
    if is_eval_string(value):
        try:
            return evaluate_expression(_inner(value), variables)
        except (KeyError, ValueError) as exc:
            raise SourceError(str(exc.args[0]), path, line) from exc
    if isinstance(value, Tagged):
        return Tagged(value.tag, _substitute(value.value, variables, path, value.line), value.line)
    if isinstance(value, YamlMap):
        out = YamlMap()
        out.line, out.lines = value.line, dict(value.lines)
        for key, item in value.items():
            out[key] = _substitute(item, variables, path, value.lines.get(key, line))
        return out
    if isinstance(value, YamlList):
        out_list = YamlList(_substitute(item, variables, path, value.lines[i] if i < len(value.lines) else line)
                            for i, item in enumerate(value))
        out_list.line, out_list.lines = value.line, list(value.lines)
        return out_list
    if isinstance(value, dict):
        return {key: _substitute(item, variables, path, line) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, variables, path, line) for item in value]
    return value


def evaluate_recipe(data: Mapping[str, Any], path: str | None = None) -> Any:
    """The recipe with its variables resolved and every ``eval(...)`` in its modifier groups replaced.

    ``data`` is what `sparsify.safe_io.load_yaml` read; the result keeps its line numbers. Errors are
    `sparsify.safe_io.SourceError` naming the file, the line and the expression.
    """
    if not isinstance(data, Mapping):
        return data
    variables = _resolve_variables(data, {}, path)
    out = YamlMap()
    out.line = getattr(data, "line", None)
    out.lines = dict(getattr(data, "lines", {}))
    for key, value in data.items():
        line = line_of(data, key)
        if isinstance(key, str) and "modifiers" in key:
            out[key] = _substitute(value, variables, path, line)
        elif _is_stage(value):
            stage_vars = _resolve_variables(value, variables, path)
            stage = YamlMap()
            stage.line, stage.lines = getattr(value, "line", line), dict(getattr(value, "lines", {}))
            for stage_key, item in value.items():
                if isinstance(stage_key, str) and "modifiers" in stage_key:
                    stage[stage_key] = _substitute(item, stage_vars, path, line_of(value, stage_key))
                else:
                    stage[stage_key] = stage_vars.get(stage_key, item)
            out[key] = stage
        else:
            out[key] = variables.get(key, value)
    return out


def override_variables(data: Mapping[str, Any], variables: Mapping[str, Any], path: str | None) -> Mapping[str, Any]:
    """SparseML's ``recipe_variables``: replace existing top-level (or stage) variables; unknown ones are errors."""
    out = dict(data)
    for key, value in variables.items():
        found = False
        if key in out and not _is_group(key, out[key]):
            out[key] = value
            found = True
        for stage, item in list(out.items()):
            if isinstance(item, Mapping) and any(isinstance(k, str) and "modifiers" in k for k in item) and key in item:
                out[stage] = {**item, key: value}
                found = True
        if not found:
            raise SourceError(f"recipe_variables: {key!r} is not a variable of the recipe; a recipe variable must be "
                              f"set in the recipe to be overridden", path)
    return out


def _is_group(key: Any, value: Any) -> bool:
    return (isinstance(key, str) and "modifiers" in key) or isinstance(value, Tagged)
