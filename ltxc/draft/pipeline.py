"""What a diffusers pipeline class says about its model, read without instantiating it: its component roles and
their type hints, its call defaults, its `__init__` attributes, its transformer call and its docstring example."""

from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import re
import textwrap
import typing
from dataclasses import dataclass, field

from ltxc.draft.source import Source, module_source, source_of
from ltxc.errors import UserError


@dataclass(frozen=True)
class Role:
    """One `__init__` parameter that is a component: its name, the classes its type hint allows, where it is."""

    name: str
    classes: tuple[type, ...]
    optional: bool
    cite: str


@dataclass(frozen=True)
class Attribute:
    """`self.<name> = <expr> if <component present> else <fallback>` in `__init__`."""

    name: str
    expr: ast.expr
    fallback: object
    cite: str


@dataclass(frozen=True)
class Keyword:
    """One keyword of the transformer call in `__call__`: its name, the expression passed, where it is."""

    name: str
    text: str
    cite: str


@dataclass
class Pipeline:
    """Everything read from the pipeline class."""

    cls: type
    roles: list[Role]
    defaults: dict[str, object]
    params: dict[str, str]
    attributes: dict[str, Attribute]
    transformer_call: list[Keyword]
    init: Source
    call: Source
    module: Source
    examples: list[tuple[str, str]] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The class name."""
        return self.cls.__name__

    def find(self, pattern: str) -> str | None:
        """The first line of `__call__`, else of the module, matching a pattern (a citation), or None."""
        return self.call.find(pattern) or self.module.find(pattern)

    def example(self, pattern: str) -> tuple[re.Match[str], str] | None:
        """The first docstring-example line (`>>> ...`) matching a pattern: the match and its citation."""
        for line, cite in self.examples:
            match = re.search(pattern, line)
            if match:
                return match, cite
        return None


def resolve_reference(reference: str) -> type:
    """The pipeline class named by "diffusers:<Pipeline>", or a UserError saying what to write instead."""
    library, _, name = reference.partition(":")
    if library != "diffusers" or not name:
        raise UserError(f"--reference {reference!r}: write it as diffusers:<PipelineClass>")
    diffusers = importlib.import_module("diffusers")
    cls = getattr(diffusers, name, None) if not name.startswith("_") else None
    if cls is None:
        known = [n for n in dir(diffusers) if n.endswith("Pipeline")]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else " (diffusers exports its pipelines by class name)"
        raise UserError(f"--reference {reference!r}: diffusers has no class {name!r}{hint}")
    base = diffusers.DiffusionPipeline
    if not (inspect.isclass(cls) and issubclass(cls, base)) or cls is base:
        raise UserError(
            f"--reference {reference!r}: {name} is not a diffusers pipeline (a DiffusionPipeline "
            "subclass); name the pipeline that generates with the model"
        )
    return cls


def read_pipeline(cls: type) -> Pipeline:
    """Read a pipeline class: roles, call defaults, `__init__` attributes, the transformer call, examples."""
    init, call, module = source_of(cls.__init__), source_of(inspect.unwrap(cls.__call__)), module_source(cls)
    if init is None or call is None or module is None:
        raise UserError(f"diffusers:{cls.__name__}: its source is not installed, so it cannot be read")
    signature = inspect.signature(cls.__call__)
    defaults = {
        name: p.default
        for name, p in signature.parameters.items()
        if p.default is not inspect.Parameter.empty and p.default is not None
    }
    params = {name: call.find(rf"^\s*{name}\s*:") or call.cite() for name in signature.parameters}
    return Pipeline(
        cls=cls,
        roles=_roles(cls, init),
        defaults=defaults,
        params=params,
        attributes=_attributes(init),
        transformer_call=_transformer_call(call),
        init=init,
        call=call,
        module=module,
        examples=[(line, module.cite(i)) for i, line in enumerate(module.text.splitlines()) if ">>>" in line],
    )


def _roles(cls: type, init: Source) -> list[Role]:
    roles = []
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self":
            continue
        members = typing.get_args(param.annotation) or (param.annotation,)
        classes = tuple(m for m in members if inspect.isclass(m) and _is_library_class(m))
        if not classes:
            continue  # a setting (a float, a bool), not a component
        optional = param.default is None or type(None) in members
        roles.append(Role(name, classes, optional, init.find(rf"^\s*{name}\s*:") or init.cite()))
    return roles


def _is_library_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("diffusers", "transformers")


def _attributes(init: Source) -> dict[str, Attribute]:
    found = {}
    for node in ast.walk(init.tree()):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"):
            continue
        value, fallback = node.value, None
        if isinstance(value, ast.IfExp):
            value, fallback = value.body, _literal(value.orelse)
        found[target.attr] = Attribute(target.attr, value, fallback, init.cite(node.lineno - 1))
    return found


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _transformer_call(call: Source) -> list[Keyword]:
    """The first call in `__call__` passing hidden_states= with return_dict=False: the denoiser's call."""
    text = textwrap.dedent(call.text)
    calls = [
        node
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.Call) and {"hidden_states", "return_dict"} <= {k.arg for k in node.keywords}
    ]
    if not calls:
        return []
    first = min(calls, key=lambda node: node.lineno)
    return [
        Keyword(k.arg, ast.get_source_segment(text, k.value) or "", call.cite(k.lineno - 1))
        for k in first.keywords
        if k.arg is not None and k.arg not in ("return_dict", "attention_kwargs", "joint_attention_kwargs")
    ]
