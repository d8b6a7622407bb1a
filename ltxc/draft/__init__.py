"""`ltxc draft`: a spec and its tiny twin drafted from a diffusers pipeline class and, when local, its checkpoint's
configs. Only the named pipeline and component classes are imported; nothing is instantiated or downloaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ltxc.draft.checkpoint import open_checkpoint
from ltxc.draft.components import draft_components
from ltxc.draft.conditioning import draft_inputs, draft_text, draft_transformer
from ltxc.draft.context import Context
from ltxc.draft.document import Document
from ltxc.draft.geometry import draft_geometry, draft_latent
from ltxc.draft.pipeline import read_pipeline, resolve_reference
from ltxc.draft.sampling import draft_decode, draft_flow, draft_lora, draft_parallel, draft_sampler
from ltxc.draft.stage import draft_stage


@dataclass
class Draft:
    """The drafted spec and what drafting worked from."""

    spec: Document
    context: Context


def draft_spec(reference: str, pretrained: str | None, out: Path, hub_id: str | None = None) -> Draft:
    """Read the pipeline (and checkpoint) and draft the spec's sections in the spec language's order."""
    cls = resolve_reference(reference)
    checkpoint = open_checkpoint(pretrained, out.parent) if pretrained else None
    if checkpoint is not None and checkpoint.index.get("_class_name") not in (None, cls.__name__):
        from ltxc.errors import UserError

        raise UserError(
            f"--pretrained {pretrained}: model_index.json is a {checkpoint.index['_class_name']} checkpoint, not "
            f"{cls.__name__}'s; pass --reference diffusers:{checkpoint.index['_class_name']} or another checkpoint"
        )
    context = Context(read_pipeline(cls), checkpoint, hub_id)
    source = f"configs of {checkpoint.name}" if checkpoint else "the pipeline class alone (no --pretrained)"
    document = Document(
        header=[
            f"Drafted by `ltxc draft` from diffusers:{cls.__name__} and {source}.",
            "Every `TODO:` names what could not be decided and the pipeline's source line to read; fill them, then",
            "`ltxc compile` and `ltxc verify` the tiny twin (docs/onboarding.md, Drafting a spec).",
        ]
    )
    draft_components(context, document, out.stem)
    geometry = draft_geometry(context, document)
    draft_latent(context, document)
    draft_text(context, document)
    staged = draft_stage(context, document)
    inputs = draft_inputs(context, document)
    draft_transformer(context, document, staged)
    call = next((k.text for k in context.pipeline.transformer_call if k.name == "timestep"), None)
    draft_flow(context, document, call)
    draft_sampler(context, document, geometry, inputs)
    draft_decode(context, document)
    draft_parallel(context, document)
    draft_lora(document)
    return Draft(document, context)
