"""The expression compiler (`ltxc.spec.expr.compile_expr`): what it computes, what it records, what it refuses.

Covers arithmetic, lists/tuples, dotted vocabulary names, op calls with positional and keyword
arguments; `Expr.names` / `Expr.ops` bookkeeping; every disallowed construct raising `ExprError`;
'did you mean' suggestions; syntax errors; bare op names; a source scan proving nothing in `ltxc/`
calls `eval`/`exec`; and a hypothesis property that random integer arithmetic evaluates exactly as
Python does.

Run: `pytest -q tests/test_expr.py`
"""

from __future__ import annotations

import ast
import math
import operator
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.spec.expr import MAX_DEPTH, Expr, ExprError, compile_expr

NAMES = frozenset({"sigma", "fps", "text.embeds", "text.mask", "latent.frames", "latent.height", "spatial_compression"})
ENV = {
    "sigma": 0.25,
    "fps": 25,
    "text.embeds": "EMB",
    "text.mask": "MASK",
    "latent.frames": 3,
    "latent.height": 16,
    "spatial_compression": 32,
}


def _scale(value, factor=2, offset=0):
    return value * factor + offset


OPS = {"scale": _scale, "pair": lambda a, b: (a, b), "max": max, "floor": math.floor}


def run(source: str, env: dict | None = None) -> object:
    return compile_expr(source, NAMES, OPS)(ENV if env is None else env)


# --- values ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("-(3 - 5)", 2),
        ("+4", 4),
        ("1.5e3", 1500.0),
        ("'tokens'", "tokens"),
        ("True", True),
        ("None", None),
        ("sigma * 1000", 250.0),
        ("latent.frames * latent.height", 48),
        ("spatial_compression / fps", 32 / 25),
        ("text.embeds", "EMB"),
        ("[1, latent.frames, 2 + 3]", [1, 3, 5]),
        ("(1, fps)", (1, 25)),
        ("()", ()),
        ("[]", []),
        ("[[1], (2, [3])]", [[1], (2, [3])]),
        ("[8 / fps, spatial_compression, spatial_compression]", [8 / 25, 32, 32]),
        ("scale(3)", 6),
        ("scale(3, 10)", 30),
        ("scale(3, offset=1)", 7),
        ("scale(latent.frames, factor=latent.height, offset=-1)", 47),
        ("pair(text.embeds, text.mask)", ("EMB", "MASK")),
        ("max(1, latent.frames, 2)", 3),
        ("floor(sigma * 10) + 1", 3),
        ("scale(scale(1))", 4),
    ],
)
def test_values(source, expected):
    value = run(source)
    assert value == expected
    assert type(value) is type(expected)


def test_environment_is_read_at_call_time():
    expr = compile_expr("sigma * 1000", NAMES, OPS)
    assert expr({"sigma": 0.5}) == 500.0
    assert expr({"sigma": 0.1}) == pytest.approx(100.0)


def test_names_and_ops_record_what_is_used():
    expr = compile_expr("[scale(latent.frames, offset=sigma), max(fps, 1), text.mask]", NAMES, OPS)
    assert isinstance(expr, Expr)
    assert expr.names == frozenset({"latent.frames", "sigma", "fps", "text.mask"})
    assert expr.ops == frozenset({"scale", "max"})
    assert expr.source == "[scale(latent.frames, offset=sigma), max(fps, 1), text.mask]"


def test_constant_expression_uses_nothing():
    expr = compile_expr("2 * (3 + 4)", NAMES, OPS)
    assert expr.names == frozenset()
    assert expr.ops == frozenset()
    assert expr({}) == 14


def test_is_static():
    expr = compile_expr("spatial_compression / fps", NAMES, OPS)
    assert expr.is_static({"spatial_compression", "fps"})
    assert not expr.is_static({"spatial_compression"})
    assert not compile_expr("sigma", NAMES, OPS).is_static({"fps"})


def test_names_outside_the_expression_are_not_readable():
    """The closure reads exactly the names it compiled, from the env it is given."""
    expr = compile_expr("latent.frames", NAMES, OPS)
    with pytest.raises(KeyError):
        expr({"sigma": 1})


# --- refusals --------------------------------------------------------------------------------------------

DISALLOWED = {
    "attribute on a constant": "(1).real",
    "attribute on a vocabulary name": "text.embeds.shape",
    "dunder attribute": "sigma.__class__",
    "attribute chain to builtins": "().__class__.__bases__",
    "subscript": "text.embeds[0]",
    "slice": "text.embeds[1:]",
    "lambda": "lambda: 1",
    "lambda as op argument": "scale(lambda x: x)",
    "list comprehension": "[x for x in text.embeds]",
    "set comprehension": "{x for x in text.embeds}",
    "dict comprehension": "{x: 1 for x in text.embeds}",
    "generator expression": "max(x for x in text.embeds)",
    "call to open": "open('/etc/passwd')",
    "call to __import__": "__import__('os')",
    "__import__ chain": "__import__('os').system('true')",
    "call of a vocabulary name": "sigma(1)",
    "method call on an op": "scale.__call__(1)",
    "call through an attribute": "math.floor(1)",
    "call of a call": "scale(1)(2)",
    "comparison": "sigma < 1",
    "chained comparison": "0 < sigma < 1",
    "boolean operator": "sigma and fps",
    "bitwise operator": "fps | 1",
    "bit shift": "fps << 1",
    "inversion": "~fps",
    "matrix multiply": "fps @ fps",
    "conditional expression": "1 if sigma else 2",
    "f-string": "f'{sigma}'",
    "walrus": "(x := 1)",
    "starred argument": "scale(*text.embeds)",
    "starred in a list": "[*text.embeds]",
    "double-star kwargs": "scale(**text.embeds)",
    "dict display": "{'a': 1}",
    "set display": "{1, 2}",
    "bytes constant": "b'x'",
    "complex constant": "1j",
    "ellipsis": "...",
    "nested lambda in list": "[1, lambda: 2]",
    "subscript inside a call keyword": "scale(1, factor=text.embeds[0])",
    "await": "await sigma",
    "yield": "(yield sigma)",
}


@pytest.mark.parametrize("source", list(DISALLOWED.values()), ids=list(DISALLOWED))
def test_disallowed_constructs(source):
    with pytest.raises(ExprError) as info:
        compile_expr(source, NAMES, OPS)
    assert str(info.value).strip()


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("text.embeds[0]", "subscript"),
        ("lambda: 1", "lambda"),
        ("[x for x in text.embeds]", "comprehension"),
        ("max(x for x in text.embeds)", "generator"),
        ("sigma < 1", "comparison"),
        ("f'{sigma}'", "f-string"),
        ("(1).real", "attribute"),
        ("scale(*text.embeds)", "*args"),
        ("scale(**text.embeds)", "**kwargs"),
        ("math.floor(1)", "named ops"),
    ],
)
def test_refusals_say_what_is_wrong(source, fragment):
    with pytest.raises(ExprError, match=fragment.replace("*", r"\*")):
        compile_expr(source, NAMES, OPS)


def test_unknown_name_suggests_a_close_one():
    with pytest.raises(ExprError, match=r"unknown name 'sigmaa'; did you mean 'sigma'\?"):
        compile_expr("sigmaa * 1000", NAMES, OPS)


def test_unknown_dotted_name_suggests_a_close_one():
    with pytest.raises(ExprError, match=r"did you mean 'text\.embeds'\?"):
        compile_expr("text.embed", NAMES, OPS)


def test_unknown_name_without_a_close_match_lists_the_vocabulary():
    with pytest.raises(ExprError) as info:
        compile_expr("zzzzzz", NAMES, OPS)
    message = str(info.value)
    assert "zzzzzz" in message
    assert all(name in message for name in NAMES)


def test_unknown_op_suggests_a_close_one():
    with pytest.raises(ExprError, match=r"unknown op 'scal'; did you mean 'scale'\?"):
        compile_expr("scal(1)", NAMES, OPS)


@pytest.mark.parametrize("source", ["sigma *", "(1, ", "1 +* 2", "", "   ", "sigma = 1", "import os", "1; 2"])
def test_syntax_errors(source):
    with pytest.raises(ExprError, match="not a valid expression"):
        compile_expr(source, NAMES, OPS)


@pytest.mark.parametrize("source", ["scale", "scale + 1", "[scale]", "pair(scale, 1)"])
def test_bare_op_is_an_error(source):
    with pytest.raises(ExprError, match=r"'scale' is an op: call it"):
        compile_expr(source, NAMES, OPS)


def test_surrounding_whitespace_is_fine():
    assert run("  sigma * 4\n") == 1.0


@pytest.mark.parametrize(
    "source",
    ["1" + " + 1" * 3000, "-" * 3000 + "1", "(" * 3000 + "1" + ")" * 3000],
    ids=["3000 additions", "3000 negations", "3000 parentheses"],
)
def test_pathological_nesting_is_an_expr_error(source):
    """Deep nesting must end as an ExprError (a one-line spec error), never a RecursionError traceback. Which
    layer refuses it (Python's parser or the builder's recursion) depends on the construct and the Python version."""
    with pytest.raises(ExprError, match=r"too deeply nested|not a valid expression"):
        compile_expr(source, NAMES, OPS)


@pytest.mark.parametrize(
    ("source", "value"), [("1" + " + 1" * 100, 101), ("-" * 100 + "1", 1), ("(" * 50 + "1)" + ")" * 49, 1)]
)
def test_moderate_nesting_compiles(source, value):
    """Nesting a spec could plausibly hold is not refused."""
    assert compile_expr(source, NAMES, OPS)({}) == value


# --- no eval / exec anywhere in ltxc/ --------------------------------------------------------------------

_FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}


def _python_sources() -> list[Path]:
    files = sorted((ROOT / "ltxc").rglob("*.py"))
    assert files, "no python sources found under ltxc/"
    return files


def test_no_eval_or_exec_in_ltxc():
    """AST scan (so docstrings that *mention* eval don't count): no call to eval/exec/compile/__import__
    by name, and no `.eval(...)`/`.exec(...)` with arguments (a torch module's `.eval()` takes none)."""
    offenders = []
    for path in _python_sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in _FORBIDDEN_BUILTINS:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {func.id}(...)")
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in {"eval", "exec"}
                and (node.args or node.keywords or (isinstance(func.value, ast.Name) and func.value.id == "builtins"))
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{func.attr}(...)")
            elif (
                isinstance(func, ast.Name)
                and func.id == "getattr"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in _FORBIDDEN_BUILTINS
            ):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: getattr(..., {node.args[1].value!r})")
    assert offenders == []


def test_the_eval_scan_would_catch_eval():
    """The scanner above is not vacuous: it flags these snippets and passes `model.eval()`."""
    bad = ["eval(x)", "exec('1')", "builtins.eval(x)", "__import__('os')", "compile(s, 'f', 'eval')"]
    for snippet in bad:
        call = ast.parse(snippet, mode="eval").body
        assert isinstance(call, ast.Call)
        func = call.func
        named = isinstance(func, ast.Name) and func.id in _FORBIDDEN_BUILTINS
        attr = isinstance(func, ast.Attribute) and func.attr in {"eval", "exec"}
        assert named or attr
    ok = ast.parse("model.eval()", mode="eval").body
    assert isinstance(ok.func, ast.Attribute) and not ok.args and not ok.keywords


# --- property: integer arithmetic agrees with Python -----------------------------------------------------

_BINOPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNOPS = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _trees() -> st.SearchStrategy[ast.expr]:
    leaves = st.integers(min_value=0, max_value=50).map(lambda v: ast.Constant(v))

    def extend(children: st.SearchStrategy[ast.expr]) -> st.SearchStrategy[ast.expr]:
        binary = st.builds(
            lambda op, left, right: ast.BinOp(left, op(), right), st.sampled_from(list(_BINOPS)), children, children
        )
        unary = st.builds(lambda op, operand: ast.UnaryOp(op(), operand), st.sampled_from(list(_UNOPS)), children)
        # Powers only with a small literal exponent, so values stay small and exact.
        power = st.builds(lambda base, exp: ast.BinOp(base, ast.Pow(), ast.Constant(exp)), children, st.integers(0, 3))
        return binary | unary | power

    return st.recursive(leaves, extend, max_leaves=12)


def _python_value(node: ast.expr) -> object:
    """What Python computes for the tree, with Python's own operators (the oracle)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        return _UNOPS[type(node.op)](_python_value(node.operand))
    assert isinstance(node, ast.BinOp)
    left, right = _python_value(node.left), _python_value(node.right)
    if isinstance(node.op, ast.Pow):
        return operator.pow(left, right)
    return _BINOPS[type(node.op)](left, right)


def _outcome(thunk) -> tuple[str, object]:
    try:
        value = thunk()
    except (ZeroDivisionError, OverflowError) as exc:
        return "raises", type(exc)
    if isinstance(value, float) and math.isnan(value):
        return "nan", float
    return "value", (type(value), value)


@settings(max_examples=300, deadline=None)
@given(_trees())
def test_integer_arithmetic_matches_python(tree):
    # ast.unparse writes the fewest parentheses that keep the tree's meaning, so this also checks precedence.
    source = ast.unparse(ast.fix_missing_locations(ast.Expression(tree)))
    expr = compile_expr(source, NAMES, OPS)
    assert expr.names == frozenset() and expr.ops == frozenset()
    assert _outcome(lambda: expr({})) == _outcome(lambda: _python_value(tree)), source


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-1000, 1000), max_size=6), st.booleans())
def test_lists_and_tuples_of_names_match_python(values, as_tuple):
    names = [f"v{i}" for i in range(len(values))]
    env = dict(zip(names, values, strict=True))
    body = ", ".join(f"{name} * 2 - 1" for name in names)
    source = f"({body}{',' if len(names) == 1 else ''})" if as_tuple else f"[{body}]"
    expected = [v * 2 - 1 for v in values]
    result = compile_expr(source, names, {})(env)
    assert result == (tuple(expected) if as_tuple else expected)


def test_nesting_limit_does_not_depend_on_the_recursion_limit():
    """The limit is the builder's own: a library that raises Python's recursion limit at import time (CI saw a
    1,500-term sum compile after torch's) must not turn a refused spec into an accepted one."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)
    try:
        with pytest.raises(ExprError, match=f"more than {MAX_DEPTH} levels"):
            compile_expr(" + ".join(["1"] * (MAX_DEPTH + 5)), NAMES, OPS)
    finally:
        sys.setrecursionlimit(before)
