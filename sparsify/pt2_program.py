"""The parts of a ``torch.export`` program (``models/<name>.json``) that torch turns into running code.

Why this exists: the program is JSON, but ``torch.export.load`` and ``ExportedProgram.module()`` do more
than read it. Measured on torch 2.15 (``torch/_export/serde/serialize.py``, ``torch/export/_unlift.py``):

* every ``expr_str`` (a symbolic size) goes to ``sympy.sympify``, which runs Python's ``eval`` on it —
  ``"__import__('os').system(...)"`` runs while the file is *loaded*;
* ``guards_code`` strings are pasted into Python source and ``exec``-ed by ``ExportedProgram.module()``;
* a node's ``target`` is looked up as any attribute of ``torch``, ``operator`` or ``math`` and called when
  the module runs (``sparsify export`` runs it to trace it): ``torch.load`` or ``torch.hub.load`` would do;
* a ``collections.defaultdict`` in an input spec imports a module named in the file and calls a function
  from it.

`check_program` allows only what ``torch.export.export`` writes for a plain model: operator targets that
are registered torch operators (``torch.ops.<namespace>.<op>[.<overload>]``), a short list of
``operator`` / ``math`` / ``torch.sym_*`` functions, symbolic expressions built from SymPy's number,
arithmetic and comparison classes over symbols like ``s0`` (checked on Python's syntax tree: no
attribute, subscript, lambda or other name), no guards code and no ``defaultdict`` specs. Anything else
is refused naming the member and the value.
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any

import torch

__all__ = ["ProgramRefusedError", "check_program"]


class ProgramRefusedError(ValueError):
    """A program that holds something torch would run as Python code."""


_OPERATOR_FUNCTIONS = frozenset({
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "truth",
})
_MATH_FUNCTIONS = frozenset({"ceil", "floor", "trunc", "sqrt", "exp", "log", "log2", "log10", "sin", "cos",
                             "tan", "tanh", "fabs", "pow"})
_TORCH_FUNCTIONS = frozenset({"sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite", "sym_sqrt",
                              "sym_sum", "_sym_sqrt", "sym_fresh_size"})
_OPS = re.compile(r"torch\.ops\.([A-Za-z_]\w*)\.([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
_EXTENSION = re.compile(r"#\w+:[\w.]+")

# What sympify may call: SymPy's number, arithmetic, logic and comparison classes, and the functions torch's
# deserializer passes it (torch.utils._sympy.functions).
_SYMPY_FUNCTIONS = frozenset({
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Mod", "Max", "Min", "Abs", "floor",
    "ceiling", "sqrt", "exp", "log", "sign", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality",
    "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "And", "Or", "Not", "Xor", "Piecewise",
    "ExprCondPair", "ITE", "Tuple",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity",
})
_SYMPY_CONSTANTS = frozenset({"oo", "zoo", "nan", "true", "false", "True", "False", "None", "pi", "E"})
_SYMBOL = re.compile(r"[a-z]{1,8}\d+")  # s0, u3, zuf0, ps1: the symbols torch names
_SYMBOL_STRING = re.compile(r"[A-Za-z0-9_.+\-]{0,64}")
_KEYWORD = re.compile(r"[a-z][a-z_]{0,30}")  # SymPy assumptions (positive=True) and Float's precision=
_EXPRESSION_NODES = (
    ast.Expression, ast.Call, ast.Name, ast.Constant, ast.UnaryOp, ast.BinOp, ast.BoolOp, ast.Compare,
    ast.keyword, ast.Tuple, ast.Load, ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)
MAX_EXPRESSION_CHARS = 10_000


def _target_error(target: str) -> str | None:
    """Why ``target`` is refused, or ``None`` when it is a registered torch operator or a listed function."""
    module, _, name = target.partition(".")
    if module == "_operator":
        return None if name in _OPERATOR_FUNCTIONS else "not one of the operator functions torch.export writes"
    if module == "math":
        return None if name in _MATH_FUNCTIONS else "not one of the math functions torch.export writes"
    if _EXTENSION.fullmatch(target):
        return None  # looked up in torch's registry of extension handlers only
    match = _OPS.fullmatch(target)
    if match is None:
        if module == "torch" and name in _TORCH_FUNCTIONS:
            return None
        return "not a torch operator (torch.ops.<namespace>.<op>): torch would call it when the program runs"
    namespace, op, overload = match.groups()
    try:
        found: Any = getattr(getattr(getattr(torch.ops, namespace), op), overload) if overload else \
            getattr(getattr(torch.ops, namespace), op)
    except (AttributeError, RuntimeError):
        return "no such torch operator is registered"
    if not isinstance(found, (torch._ops.OpOverload, torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
        return f"resolves to a {type(found).__name__}, not a torch operator"
    return None


def _expression_error(text: str) -> str | None:
    """Why ``text`` (given to ``sympy.sympify``, i.e. to ``eval``) is refused, or ``None``."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return f"{len(text)} characters (at most {MAX_EXPRESSION_CHARS})"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "not an expression"
    for node in ast.walk(tree):
        if not isinstance(node, _EXPRESSION_NODES):
            return f"{type(node).__name__} is not allowed in a symbolic size"
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _SYMPY_FUNCTIONS:
                return f"calls {ast.unparse(node.func)!r}, not one of SymPy's number or arithmetic classes"
        elif isinstance(node, ast.Name):
            if node.id not in _SYMPY_FUNCTIONS and node.id not in _SYMPY_CONSTANTS and not _SYMBOL.fullmatch(node.id):
                return f"names {node.id!r}, not a size symbol (like s0) or a SymPy class"
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _SYMBOL_STRING.fullmatch(node.value):
                return f"holds the string {node.value!r}"
            if not isinstance(node.value, (str, int, float, bool, type(None))):
                return f"holds a {type(node.value).__name__} constant"
        elif isinstance(node, ast.keyword) and (node.arg is None or not _KEYWORD.fullmatch(node.arg)):
            return f"passes the keyword {node.arg!r}"
    return None


def _treespec_error(text: str) -> str | None:
    """Why an input / output spec is refused: a ``defaultdict`` imports and calls what the file names."""
    try:
        spec = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON"
    stack = [spec]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if item.get("type") == "collections.defaultdict":
                return "a collections.defaultdict (torch imports and calls its default factory from the file)"
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def check_program(document: Any, member: str = "") -> None:
    """Refuse a program (parsed JSON) holding anything torch would run as Python code (module docstring).

    ``member`` (e.g. ``"models/model.json: "``) starts every message."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, list):
            stack.extend((value, f"{where}[{i}]") for i, value in enumerate(item))
            continue
        if isinstance(item, str):
            if "\r" in item:
                raise ProgramRefusedError(f"{member}{where} holds a carriage return (a line break in generated code)")
            continue
        if not isinstance(item, dict):
            continue
        for key, value in item.items():
            path = f"{where}.{key}" if where else str(key)
            error: str | None = None
            if key in ("target", "as_operator") and isinstance(value, str):
                error = _target_error(value)
            elif key == "expr_str" and isinstance(value, str):
                error = _expression_error(value)
            elif key in ("in_spec", "out_spec") and isinstance(value, str):
                error = _treespec_error(value)
            elif key == "guards_code" and value:
                error = ("holds Python code, which ExportedProgram.module() executes; only programs without guards "
                         "are read")
            if error is not None:
                raise ProgramRefusedError(f"{member}{path} = {str(value)[:120]!r} is refused: {error}")
            stack.append((value, path))
