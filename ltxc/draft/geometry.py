"""[geometry] and [latent]: compression, patches and frame rule from the pipeline's `__init__` arithmetic evaluated
on the checkpoint's configs, latent channels from the VAE, and where the normalisation statistics live."""

from __future__ import annotations

import re

from ltxc.draft.context import Context
from ltxc.draft.document import Document
from ltxc.draft.source import source_of


def _read(context: Context, pattern: str) -> tuple[object, str, str] | None:
    """(value, note, todo) of the first `__init__` attribute matching a pattern."""
    found = context.attribute(pattern)
    if found is None:
        return None
    attribute, value, from_config = found
    if from_config:
        return value, f"{attribute.cite}, on the checkpoint's configs", ""
    if context.checkpoint is not None:
        return value, "", f"the pipeline's value without a loaded component ({attribute.cite}); check the checkpoint"
    return value, f"the pipeline's default without a loaded component ({attribute.cite})", ""


def draft_geometry(context: Context, document: Document) -> dict[str, object]:
    """Write [geometry]; return the numbers later sections need."""
    pipeline = context.pipeline
    section = document.section("geometry")
    channels = _latent_channels(context)
    section.set("latent_channels", *channels)
    spatial = _read(context, r"^vae(?=.*spatial)(?=.*(compression|scale))|^vae_scale_factor$")
    section.set("spatial_compression", *(spatial or (None, "", f"pixels per latent cell ({pipeline.init.cite()})")))
    video = "num_frames" in pipeline.params
    temporal = _read(context, r"^vae(?=.*temporal)(?=.*(compression|scale))")
    if temporal is None and not video:
        temporal = (1, f"{pipeline.name}.__call__ takes no num_frames: one frame per sample", "")
    section.set("temporal_compression", *(temporal or (None, "", f"frames per latent frame ({pipeline.init.cite()})")))
    t = temporal[0] if temporal else None
    frames_line = pipeline.find(r"num_frames - 1\) //") or pipeline.params.get("num_frames", pipeline.call.cite())
    if video and isinstance(t, int):
        section.set(
            "frames", {"multiple": t, "offset": 1}, note=f"(frames - 1) // {t} + 1 latent frames, {frames_line}"
        )
    elif not video:
        section.set("frames", {"multiple": 1, "offset": 1, "max": 1}, note="an image pipeline: one frame per sample")
    else:
        section.set("frames", {"multiple": 1, "offset": 1}, todo=f"the frame rule ({frames_line})")
    patch = _patch(context)
    s = spatial[0] if spatial else None
    rule = pipeline.find(r"height % ") or pipeline.call.cite()
    if isinstance(s, int) and patch[0] is not None:
        section.set("resolution_multiple", s * patch[0][1], note=f"spatial compression x patch; check_inputs {rule}")
    else:
        section.set("resolution_multiple", None, todo=f"the pixel rule in check_inputs ({rule})")
    section.set("patch", *patch)
    packs = getattr(pipeline.cls, "_pack_latents", None)
    layout = "tokens" if packs is not None else "grid"
    why = (
        "the pipeline packs tokens itself (_pack_latents)" if packs else "no _pack_latents: the 5-D latents as they are"
    )
    section.set("layout", layout, note=why)
    return {"spatial": s, "temporal": t, "patch": patch[0], "video": video}


def _latent_channels(context: Context) -> tuple[object, str, str]:
    match = re.search(r"num_channels_latents = self\.(\w+)\.config\.(\w+)(?: // (\d+))?", context.pipeline.call.text)
    if match and (found := context.setting(match.group(1), match.group(2))) and isinstance(found[0], int):
        value = found[0] // int(match.group(3) or 1)
        where = context.pipeline.call.find(r"num_channels_latents = self")
        todo = "" if context.checkpoint else f"from the class's default; the checkpoint's config decides ({where})"
        return value, f"{where}, {found[1]}", todo
    for key in ("latent_channels", "z_dim"):
        found = context.setting("vae", key)
        if found is not None and isinstance(found[0], int):
            where = context.pipeline.call.find("num_channels_latents") or context.pipeline.call.cite()
            todo = "" if context.checkpoint else f"the class's default; the checkpoint's VAE config decides ({where})"
            return found[0], found[1], todo
    return None, "", f"the VAE's latent channels ({context.pipeline.find('num_channels_latents')})"


def _patch(context: Context) -> tuple[object, str, str]:
    packs = getattr(context.pipeline.cls, "_pack_latents", None)
    source = source_of(packs) if packs is not None else None
    literal = re.search(r"height // (\d+), \1, width // (\d+), \2", source.text) if source else None
    if source is not None and literal:
        size = int(literal.group(1))
        return [1, size, size], f"_pack_latents' {size}x{size} patches, {source.find('height // ')}", ""
    spatial = _read(context, r"^transformer(?=.*spatial)(?=.*patch)")
    temporal = _read(context, r"^transformer(?=.*temporal)(?=.*patch)")
    if spatial is not None:
        t = temporal[0] if temporal is not None else 1
        return [t, spatial[0], spatial[0]], spatial[1], spatial[2]
    found = context.setting("transformer", "patch_size")
    if found is None:
        return None, "", "the transformer's patch size [frames, height, width]"
    value, where = found
    if isinstance(value, (list, tuple)) and len(value) == 3:
        patch = list(value)
    elif isinstance(value, int):
        t = context.setting("transformer", "patch_size_t")
        patch = [t[0] if t and isinstance(t[0], int) else 1, value, value]
    else:
        return None, "", f"the transformer's patch size ({where}: {value!r})"
    packs = getattr(context.pipeline.cls, "_pack_latents", None)
    if packs is not None:
        line = context.pipeline.module.find(r"def _pack_latents")
        return patch, where, f"the pipeline packs latents itself ({line}): the patch may be the packing's"
    return patch, where, ""


def draft_latent(context: Context, document: Document) -> None:
    """Write [latent]: the posterior kind and the normaliser as the pipeline's decode reads it."""
    section = document.section("latent")
    if "num_frames" not in context.pipeline.params:
        section.set("vae_input", "image", note="an image pipeline: the VAE takes [B, C, H, W]")
    section.set("encode", "mode", note="the posterior mean; an image-to-X pipeline's retrieve_latents says which")
    text = context.pipeline.call.text + context.pipeline.module.text
    denorm = context.pipeline.module.find(r"def _denormalize_latents")
    if "self.vae.latents_mean" in context.pipeline.call.text:
        kind = {"kind": "mean_std", "mean": "vae.latents_mean", "std": "vae.latents_std"}
        where = context.pipeline.call.find(r"self\.vae\.latents_mean")
    elif "self.vae.config.latents_mean" in context.pipeline.call.text:
        kind = {"kind": "mean_std", "mean": "vae.config.latents_mean", "std": "vae.config.latents_std"}
        where = context.pipeline.call.find(r"self\.vae\.config\.latents_mean")
    elif "self.vae.config.shift_factor" in context.pipeline.call.text:
        where = context.pipeline.call.find(r"self\.vae\.config\.shift_factor")
        normalise = {"kind": "shift_scale", "shift": "vae.config.shift_factor", "scale": "vae.config.scaling_factor"}
        section.set("normalise", normalise, note=f"x / scaling_factor + shift_factor on decode, {where}")
        return
    else:
        section.set("normalise", None, todo=f"how the decode un-normalises latents ({context.pipeline.call.cite()})")
        return
    scaled = re.search(r"latents_std,\s*self\.vae\.config\.scaling_factor", context.pipeline.call.text)
    kind["scaling_factor"] = "vae.config.scaling_factor" if scaled else 1.0
    if re.search(r"latents \* latents_std / scaling_factor \+ latents_mean", text):
        kind["denormalise"] = "multiply"
        where = denorm or where
    elif re.search(r"1\.0 / torch\.tensor\(self\.vae\.config\.latents_std\)", text):
        kind["denormalise"] = "divide_reciprocal"
    section.set("normalise", kind, note=f"the decode: {where}")
