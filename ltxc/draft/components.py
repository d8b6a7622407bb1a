"""[model] and [components.*]: roles from the pipeline's `__init__`, classes from model_index.json or the type
hints, where the weights are, and each module's dtype as the pipeline's docstring example loads it."""

from __future__ import annotations

import importlib
import inspect

from ltxc.draft.context import Context, import_class
from ltxc.draft.document import Document
from ltxc.draft.pipeline import Role

# ltxc's own default role names (spec sections name these unless told otherwise): an optional role of one of
# these names is drafted; other optional roles (image encoders, a second expert, helpers) are only listed.
CORE_ROLES = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def kind_of(cls: type) -> str | None:
    """The kind ("module", "tokenizer" or "scheduler") of a component class; None for anything else (processors)."""
    import torch

    if issubclass(cls, torch.nn.Module):
        return "module"
    names = {base.__name__ for base in inspect.getmro(cls)}
    if "PreTrainedTokenizerBase" in names:
        return "tokenizer"
    if "SchedulerMixin" in names or ("ConfigMixin" in names and cls.__module__.startswith("diffusers.schedulers")):
        return "scheduler"
    return None


def class_name(cls: type) -> str:
    """How a spec names a class: "library:Name" where the library exports it, else "library.module:Name"."""
    library = cls.__module__.split(".")[0]
    exported = getattr(importlib.import_module(library), cls.__name__, None)
    return f"{library}:{cls.__name__}" if exported is cls else f"{cls.__module__}:{cls.__name__}"


def drafted_roles(context: Context) -> tuple[list[Role], list[Role]]:
    """The roles the spec gets and the optional ones it leaves out."""
    index = context.checkpoint.index if context.checkpoint else None
    kept, left = [], []
    for role in context.pipeline.roles:
        listed = index is not None and context.checkpoint.role_class(role.name) is not None
        wanted = not role.optional or (role.name in CORE_ROLES and (index is None or listed))
        if index is not None and role.optional and not listed:
            wanted = False
        (kept if wanted else left).append(role)
    return kept, left


def draft_components(context: Context, document: Document, name: str) -> None:
    """Write [model] and one [components.<role>] per drafted role; fill context.classes."""
    pipeline = context.pipeline
    model = document.section("model")
    model.set("name", name, note="the --out file's name; change it freely")
    model.set("description", f"drafted from diffusers:{pipeline.name}",
              todo=f"say what model and checkpoint this is ({pipeline.init.cite()})")  # fmt: skip
    model.set("reference", f"diffusers:{pipeline.name}", note=f"class read: {pipeline.init.cite()}")
    kept, left = drafted_roles(context)
    pretrained, pretrained_note, pretrained_todo = _pretrained(context)
    whole_dtype = pipeline.example(rf"{pipeline.name}\.from_pretrained\(.*torch_dtype=torch\.(\w+)")
    for role in kept:
        cls, note, todo = _role_class(context, role)
        kind = kind_of(cls) if cls is not None else None
        if cls is not None and kind is None:
            left.append(role)
            continue
        if cls is not None:
            context.classes[role.name] = cls
        section = document.section(f"components.{role.name}")
        section.set("class", _spelled(context, role.name, cls), note=note, todo=todo)
        if kind == "tokenizer" and not role.name.startswith("tokenizer"):
            section.set("kind", "tokenizer")
        section.set("pretrained", pretrained, note=pretrained_note, todo=pretrained_todo)
        section.set("subfolder", role.name)
        if kind == "module":
            section.set("dtype", *_dtype(context, role.name, whole_dtype))
    if left:
        listing = ", ".join(f"{r.name} ({r.cite})" for r in left)
        document.section("model").comment = f"Roles not drafted (optional in {pipeline.name}): {listing}"


def _spelled(context: Context, role: str, cls: type | None) -> str | None:
    """The class as model_index.json spells it where that name is the same class (an alias), else class_name."""
    if cls is None:
        return None
    entry = context.checkpoint.role_class(role) if context.checkpoint is not None else None
    library = entry[0] if entry is not None else ""
    if library in ("diffusers", "transformers") and getattr(importlib.import_module(library), entry[1], None) is cls:
        return f"{library}:{entry[1]}"
    return class_name(cls)


def _role_class(context: Context, role: Role) -> tuple[type | None, str, str]:
    """The class of a role: the checkpoint's model_index.json, else a docstring reassignment, else the hint."""
    if context.checkpoint is not None and (entry := context.checkpoint.role_class(role.name)):
        cls = import_class(entry[0], entry[1], role.classes)
        if cls is not None:
            return cls, "model_index.json", ""
        return None, "", f"model_index.json names {entry}, which is not importable from diffusers/transformers"
    swapped = context.pipeline.example(rf"\.{role.name}\s*=\s*(\w+)\.from_(?:config|pretrained)\(")
    if swapped is not None:
        cls = import_class("diffusers", swapped[0].group(1)) or import_class("transformers", swapped[0].group(1))
        if cls is not None:
            hint = " | ".join(c.__name__ for c in role.classes)
            return cls, f"the docstring example sets it ({swapped[1]}); the type hint says {hint}", ""
    cls = role.classes[0]
    if len(role.classes) > 1:
        others = ", ".join(c.__name__ for c in role.classes[1:])
        return cls, "", f"the type hint allows {others} too ({role.cite}); the checkpoint's model_index.json decides"
    if kind_of(cls) is None and cls.__name__.startswith("Auto"):
        return None, "", f"the type hint is {cls.__name__}, a factory ({role.cite}); name the checkpoint's class"
    return cls, f"type hint, {role.cite}", ""


def _pretrained(context: Context) -> tuple[str | None, str, str]:
    if context.hub_id:
        return context.hub_id, "", ""
    if context.checkpoint is not None:
        return context.checkpoint.name, "", ""
    pipeline = context.pipeline
    direct = pipeline.example(rf"{pipeline.name}\.from_pretrained\(\s*[\"']([^\"']+)[\"']")
    variable = pipeline.example(r"model_id\s*=\s*[\"']([^\"']+)[\"']")
    found = direct or variable
    if found is None:
        return None, "", f"the hub id or a local directory of the checkpoint (no example in {pipeline.module.cite()})"
    return found[0].group(1), "", f"the docstring example's checkpoint ({found[1]}); the one you train may differ"


def _dtype(context: Context, role: str, whole: tuple | None) -> tuple[str, str, str]:
    """The dtype the docstring example loads a module in, else the pipeline's, else bfloat16 (a TODO)."""
    own = context.pipeline.example(rf"subfolder=[\"']{role}[\"'].*torch_dtype=torch\.(\w+)")
    if own is not None:
        return own[0].group(1), f"the docstring example loads it so ({own[1]})", ""
    if whole is not None:
        return whole[0].group(1), f"the docstring example's dtype ({whole[1]})", ""
    return "bfloat16", "", "the dtype the model runs in (no docstring example loads it)"


def has_role_kind(context: Context, kind: str) -> list[str]:
    """The drafted roles of one kind, in the pipeline's order."""
    return [role for role, cls in context.classes.items() if kind_of(cls) == kind]


def is_text_model(cls: type) -> bool:
    """A transformers model (a text encoder), as opposed to the diffusers models."""
    return cls.__module__.startswith("transformers") and kind_of(cls) == "module"
