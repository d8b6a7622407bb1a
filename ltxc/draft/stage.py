"""[text.stage]: a frozen module the pipeline runs on the text encoder's output before the transformer, read from
the `__call__` line that calls it (its arguments by the module's `forward` names, its results by variable name)."""

from __future__ import annotations

import ast
import inspect
import textwrap

from ltxc.draft.components import is_text_model, kind_of
from ltxc.draft.context import Context
from ltxc.draft.document import Document

# What a pipeline's own variable holds, for the stage's inputs.
_INPUTS = {"prompt_embeds": "text.embeds", "prompt_attention_mask": "text.mask"}


def _output_name(variable: str) -> str:
    """connector_audio_prompt_embeds -> audio_embeds; connector_attention_mask -> mask."""
    name = variable.split("_", 1)[1] if "_" in variable else variable
    return name.replace("prompt_", "").replace("attention_mask", "mask")


def draft_stage(context: Context, document: Document) -> dict[str, str]:
    """Write [text.stage] when `__call__` runs a module on the prompt embeddings; return variable -> text name."""
    call = context.pipeline.call
    tree = ast.parse(textwrap.dedent(call.text))
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func, target = node.value.func, node.targets[0]
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self"):
            continue
        cls = context.classes.get(func.attr)
        if cls is None or func.attr == "transformer" or kind_of(cls) != "module" or is_text_model(cls):
            continue
        mapping = _arguments(cls, node.value)
        if mapping is None or not isinstance(target, ast.Tuple):
            continue
        outputs = {e.id: _output_name(e.id) for e in target.elts if isinstance(e, ast.Name)}
        where = call.cite(node.lineno - 1)
        section = document.section("text.stage", comment=f"{func.attr} runs on the encoder's output ({where})")
        section.set("component", func.attr)
        section.set("call", mapping)
        section.set("outputs", list(outputs.values()))
        document.section("text").set("cache", "after_stage", note="ltxc caches the stage's compact output")
        return {variable: f"text.{name}" for variable, name in outputs.items()}
    return {}


def _arguments(cls: type, call: ast.Call) -> dict[str, str] | None:
    """The call's arguments by the module's forward names, as text names (None if one is not the prompt's)."""
    params = [p for p in inspect.signature(cls.forward).parameters if p != "self"]
    mapping = {}
    named = list(zip(params, call.args, strict=False)) + [(k.arg, k.value) for k in call.keywords if k.arg]
    for name, value in named:
        text = ast.unparse(value)
        if text in _INPUTS:
            mapping[name] = _INPUTS[text]
        elif "padding_side" in text:
            mapping[name] = "padding_side"
        else:
            return None
    return mapping if "text.embeds" in mapping.values() else None
