"""What drafting works from: the pipeline read from its class, the checkpoint's configs when local, and the
class each role resolves to; plus reading a class's constructor defaults and the pipeline's `__init__` arithmetic."""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass, field

from ltxc.draft.checkpoint import Checkpoint
from ltxc.draft.pipeline import Attribute, Pipeline


class Unreadable(Exception):
    """An expression needs something that is not in a config (a module's computed attribute, a tensor)."""


@dataclass
class Context:
    """The inputs of every drafting step."""

    pipeline: Pipeline
    checkpoint: Checkpoint | None
    hub_id: str | None
    classes: dict[str, type] = field(default_factory=dict)  # role -> the class the spec names

    def config(self, role: str) -> dict[str, object]:
        """The checkpoint's config of a role, empty when drafting from the class alone."""
        return self.checkpoint.config(role) if self.checkpoint else {}

    def setting(self, role: str, key: str) -> tuple[object, str] | None:
        """A role's setting and where it came from: the checkpoint's config, else the class's default."""
        config = self.config(role)
        if key in config:
            return config[key], f"{self.checkpoint.cite(role)}" if self.checkpoint else ""
        cls = self.classes.get(role)
        if cls is not None:
            default = class_default(cls, key)
            if default is not inspect.Parameter.empty:
                return default, f"{cls.__name__}'s default"
        return None

    def attribute(self, pattern: str) -> tuple[Attribute, object, bool] | None:
        """The first `__init__` attribute whose name matches a regex: it, its value and whether read from configs."""
        import re

        for name, attribute in self.pipeline.attributes.items():
            if re.search(pattern, name):
                try:
                    return attribute, evaluate(attribute.expr, self), True
                except Unreadable:
                    if attribute.fallback is not None:
                        return attribute, attribute.fallback, False
        return None


def class_default(cls: type, key: str) -> object:
    """A constructor parameter's default (inspect.Parameter.empty where it has none)."""
    try:
        parameter = inspect.signature(cls.__init__).parameters.get(key)
    except (TypeError, ValueError):
        return inspect.Parameter.empty
    if parameter is None:
        return inspect.Parameter.empty
    default = parameter.default
    return list(default) if isinstance(default, tuple) else default


def import_class(library: str, name: str, hints: tuple[type, ...] = ()) -> type | None:
    """A class by library and name: a type hint's class of that name, else the library's export, else None."""
    for hint in hints:
        if hint.__name__ == name:
            return hint
    if library not in ("diffusers", "transformers"):
        return None
    module = importlib.import_module(library)
    found = getattr(module, name, None)
    return found if inspect.isclass(found) else None


def evaluate(node: ast.expr, context: Context, names: dict[str, object] | None = None) -> object:
    """Evaluate `__init__` arithmetic over `self.<role>.config.<key>` and `self.<role>.<key>` with the configs
    (and, inside a component's own `__init__`, over its constructor arguments `names`)."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and names is not None and node.id in names:
        return names[node.id]
    if isinstance(node, ast.Attribute):
        return _component_value(node, context)
    if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1:
        left = evaluate(node.test.left, context, names)
        if isinstance(node.test.ops[0], (ast.Is, ast.IsNot)):
            truth = (left is None) == isinstance(node.test.ops[0], ast.Is)
            return evaluate(node.body if truth else node.orelse, context, names)
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left, context, names), evaluate(node.right, context, names)
        operators = {ast.Add: "__add__", ast.Sub: "__sub__", ast.Mult: "__mul__", ast.FloorDiv: "__floordiv__",
                     ast.Pow: "__pow__", ast.Div: "__truediv__"}  # fmt: skip
        name = operators.get(type(node.op))
        if name is None or not isinstance(left, (int, float)) or not isinstance(right, (int, float)):
            raise Unreadable
        return getattr(left, name)(right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and len(node.args) == 1:
        value = evaluate(node.args[0], context, names)
        if node.func.id in ("len", "sum") and isinstance(value, (list, tuple)):
            return len(value) if node.func.id == "len" else sum(value)
    raise Unreadable


def _component_value(node: ast.Attribute, context: Context) -> object:
    path = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        path.insert(0, current.attr)
        current = current.value
    if not (isinstance(current, ast.Name) and current.id == "self") or len(path) < 2:
        raise Unreadable
    role, key = path[0], path[-1]
    if (len(path) == 3 and path[1] != "config") or len(path) > 3 or context.checkpoint is None:
        raise Unreadable
    cls = context.classes.get(role)
    config = context.config(role)
    if config.get(key) is not None:
        return config[key]
    if cls is None:
        raise Unreadable
    if len(path) == 2:
        return _computed_attribute(cls, key, context, config)
    default = class_default(cls, key)
    if default is inspect.Parameter.empty or default is None:
        raise Unreadable
    return default  # the checkpoint's config leaves the key at the class's default


def _computed_attribute(cls: type, key: str, context: Context, config: dict[str, object]) -> object:
    """`self.<key>` as the component's own `__init__` computes it from its constructor arguments."""
    from ltxc.draft.source import source_of

    source = source_of(cls.__init__)
    if source is None:
        raise Unreadable
    names = {p: class_default(cls, p) for p in inspect.signature(cls.__init__).parameters}
    names.update(config)
    for node in ast.walk(source.tree()):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Attribute) and target.attr == key and isinstance(target.value, ast.Name):
                return evaluate(node.value, context, names)
    raise Unreadable
