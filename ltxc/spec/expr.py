"""The expression compiler: a spec string -> a closure over a closed vocabulary.

Expressions are parsed with `ast` and every node is checked against a short allowlist: constants,
vocabulary names (dotted, like `text.embeds`), arithmetic, lists/tuples and calls to named ops. Anything
else — attribute access outside the vocabulary, subscripts, lambdas, comprehensions, calls to anything
that is not an op — is an `ExprError`. Nothing is ever passed to `eval` or `exec`.
"""

from __future__ import annotations

import ast
import difflib
import operator
from collections.abc import Callable, Collection, Mapping
from typing import Any

from attrs import frozen

Env = Mapping[str, Any]
Closure = Callable[[Env], Any]

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: lambda base, exponent: _bounded_pow(base, exponent),
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_CONSTANT_TYPES = (bool, int, float, str, type(None))


class ExprError(ValueError):
    """An expression uses something outside the vocabulary or the allowed constructs."""


MAX_EXPONENT = 64
# An explicit nesting limit: relying on RecursionError alone makes the answer depend on the interpreter's
# recursion limit, which libraries raise at import time (a 1,500-term sum compiled on one run, failed on another).
MAX_DEPTH = 200


def _bounded_pow(base: Any, exponent: Any) -> Any:
    # `9 ** 9 ** 9` would hang the compiler's summary; no spec needs exponents this large.
    if isinstance(exponent, (int, float)) and abs(exponent) > MAX_EXPONENT:
        raise ExprError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    return operator.pow(base, exponent)


@frozen
class Expr:
    """A compiled expression: call it with an environment holding its `names`."""

    source: str
    names: frozenset[str]
    ops: frozenset[str]
    closure: Closure

    def __call__(self, env: Env) -> Any:
        return self.closure(env)

    def is_static(self, known: Collection[str]) -> bool:
        """True when every name it reads is in `known` (so it can be evaluated ahead of time)."""
        return self.names <= set(known)


def compile_expr(source: str, names: Collection[str], ops: Mapping[str, Callable[..., Any]]) -> Expr:
    """Compile `source` into an `Expr` that may read `names` and call `ops`; raise `ExprError` otherwise."""
    builder = _Builder(frozenset(names), ops)
    try:
        tree = ast.parse(source.strip(), mode="eval")
        closure = builder.build(tree.body)
    except SyntaxError as exc:
        raise ExprError(f"not a valid expression ({exc.msg}): {source!r}") from None
    except (RecursionError, MemoryError):
        raise ExprError("expression is too deeply nested") from None
    return Expr(source, frozenset(builder.used_names), frozenset(builder.used_ops), closure)


class _Builder:
    def __init__(self, names: frozenset[str], ops: Mapping[str, Callable[..., Any]]) -> None:
        self.names = names
        self.ops = ops
        self.used_names: set[str] = set()
        self.used_ops: set[str] = set()
        self.depth = 0

    def build(self, node: ast.expr) -> Closure:
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ExprError(f"expression is too deeply nested (more than {MAX_DEPTH} levels)")
            return self._build(node)
        finally:
            self.depth -= 1

    def _build(self, node: ast.expr) -> Closure:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, _CONSTANT_TYPES):
                raise ExprError(f"constant {node.value!r} is not allowed")
            value = node.value
            return lambda env: value
        if isinstance(node, (ast.Name, ast.Attribute)):
            return self._name(node)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            fn, left, right = _BINARY[type(node.op)], self.build(node.left), self.build(node.right)
            return lambda env: fn(left(env), right(env))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            unary, operand = _UNARY[type(node.op)], self.build(node.operand)
            return lambda env: unary(operand(env))
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.build(element) for element in node.elts]
            make = list if isinstance(node, ast.List) else tuple
            return lambda env: make(item(env) for item in items)
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ExprError(f"{_describe(node)} is not allowed in a spec expression")

    def _name(self, node: ast.Name | ast.Attribute) -> Closure:
        name = _dotted(node)
        if name is None:
            raise ExprError("attribute access is only allowed on vocabulary names like `text.embeds`")
        if name not in self.names:
            if name in self.ops:
                raise ExprError(f"{name!r} is an op: call it, e.g. {name}(...)")
            raise ExprError(f"unknown name {name!r}{_suggest(name, self.names)}")
        self.used_names.add(name)
        return lambda env: env[name]

    def _call(self, node: ast.Call) -> Closure:
        if not isinstance(node.func, ast.Name):
            raise ExprError("only named ops can be called")
        op_name = node.func.id
        if op_name not in self.ops:
            raise ExprError(f"unknown op {op_name!r}{_suggest(op_name, self.ops)}")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise ExprError(f"{op_name}(...): *args and **kwargs are not allowed")
        fn = self.ops[op_name]
        self.used_ops.add(op_name)
        args = [self.build(a) for a in node.args]
        kwargs = {k.arg: self.build(k.value) for k in node.keywords if k.arg is not None}
        return lambda env: fn(*(a(env) for a in args), **{k: v(env) for k, v in kwargs.items()})


def _dotted(node: ast.expr) -> str | None:
    """`text.embeds` -> "text.embeds"; None when the base is not a plain name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _suggest(name: str, known: Collection[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(sorted(known))})"


def _describe(node: ast.AST) -> str:
    return {
        ast.Subscript: "a subscript",
        ast.Lambda: "a lambda",
        ast.ListComp: "a comprehension",
        ast.SetComp: "a comprehension",
        ast.DictComp: "a comprehension",
        ast.GeneratorExp: "a generator expression",
        ast.Compare: "a comparison",
        ast.BoolOp: "a boolean operator",
        ast.IfExp: "a conditional expression",
        ast.Dict: "a dict",
        ast.Set: "a set",
        ast.JoinedStr: "an f-string",
        ast.NamedExpr: "an assignment expression",
        ast.Await: "await",
        ast.Yield: "yield",
        ast.Starred: "a starred expression",
    }.get(type(node), f"`{type(node).__name__}`")
