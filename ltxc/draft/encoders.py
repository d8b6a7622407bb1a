"""Which text encoder gives which text tensor, when a pipeline has several: read from the helper methods that
call each encoder and the variables encode_prompt assigns their results to."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from ltxc.draft.pipeline import Pipeline


@dataclass(frozen=True)
class EncoderUse:
    """One text encoder: its role, the variable its output lands in, the helper that calls it, and its text."""

    role: str
    variable: str
    helper: str
    text: str
    cite: str


def encoder_uses(pipeline: Pipeline, encoders: list[str]) -> list[EncoderUse]:
    """Each encoder's helper method and the variable encode_prompt stores its output in."""
    module = pipeline.module
    tree = ast.parse(module.text)
    helpers: dict[str, tuple[str, str, str]] = {}  # helper name -> (role, text, citation)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            text = ast.get_source_segment(module.text, node) or ""
            called = [r for r in encoders if re.search(rf"self\.{r}\(", text)]
            if len(called) == 1:
                helpers[node.name] = (called[0], text, module.cite(node.lineno - 1))
    uses = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        if isinstance(func, ast.Attribute) and func.attr in helpers:
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            names += [e.id for t in node.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)]
            role, text, cite = helpers[func.attr]
            uses.extend(EncoderUse(role, name, func.attr, text, cite) for name in names[:1])
    return uses


def primary_and_pooled(uses: list[EncoderUse]) -> tuple[EncoderUse | None, EncoderUse | None]:
    """The encoder whose output is `prompt_embeds` and the one whose output is a pooled vector."""
    primary = next((u for u in uses if u.variable == "prompt_embeds"), None)
    pooled = next((u for u in uses if "pooled" in u.variable and (primary is None or u.role != primary.role)), None)
    return primary, pooled
