"""[flow], [sampler], [parallel] and [lora]: the scheduler's shift settings, the call defaults, how the loop makes
its guidance branches, and the transformer's block lists."""

from __future__ import annotations

import re

from ltxc.draft.context import Context
from ltxc.draft.document import Document
from ltxc.draft.source import source_of


def _shift(context: Context) -> tuple[dict[str, object] | None, str, str]:
    """The scheduler's shift as a spec shift table, read from its config (or its class's defaults)."""
    found = {key: context.setting("scheduler", key) for key in (
        "use_dynamic_shifting", "base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift",
        "use_flow_sigmas", "flow_shift", "shift")}  # fmt: skip
    value = {key: item[0] for key, item in found.items() if item is not None}
    where = context.checkpoint.cite("scheduler") if context.checkpoint else "the scheduler class's defaults"
    line = context.pipeline.call.find(r"calculate_shift\(|retrieve_timesteps\(") or context.pipeline.call.cite()
    todo = "" if context.checkpoint else f"the checkpoint's scheduler config decides ({line})"
    if context.checkpoint is None and (fallback := _pipeline_shift(context)) is not None:
        return fallback, f"the pipeline's calculate_shift fallbacks, {line}", todo
    if value.get("use_dynamic_shifting"):
        keys = ("base_image_seq_len", "max_image_seq_len", "base_shift", "max_shift")
        if all(isinstance(value.get(k), (int, float)) for k in keys):
            table = {"kind": "resolution", "base_seq_len": value["base_image_seq_len"],
                     "max_seq_len": value["max_image_seq_len"], "base_shift": value["base_shift"],
                     "max_shift": value["max_shift"]}  # fmt: skip
            return table, f"use_dynamic_shifting, {where}", todo
    if value.get("use_flow_sigmas") and isinstance(value.get("flow_shift"), (int, float)):
        return {"kind": "fixed", "value": float(value["flow_shift"])}, f"flow_shift, {where}", todo
    if isinstance(value.get("shift"), (int, float)) and value["shift"] != 1.0:
        return {"kind": "fixed", "value": float(value["shift"])}, f"shift, {where}", todo
    if found:
        return {"kind": "none"}, f"no shift in {where}", todo
    return None, "", f"the scheduler's shift ({line})"


def _pipeline_shift(context: Context) -> dict[str, object] | None:
    """The resolution shift a pipeline computes with `scheduler.config.get(key, fallback)`, at its fallbacks."""
    pairs = dict(re.findall(r"self\.scheduler\.config\.get\(\s*\"(\w+)\",\s*([\d.]+)\)", context.pipeline.call.text))
    keys = {"base_seq_len": "base_image_seq_len", "max_seq_len": "max_image_seq_len", "base_shift": "base_shift",
            "max_shift": "max_shift"}  # fmt: skip
    if not all(name in pairs for name in keys.values()):
        return None
    table: dict[str, object] = {"kind": "resolution"}
    for key, name in keys.items():
        table[key] = int(pairs[name]) if "seq_len" in key else float(pairs[name])
    return table


def draft_flow(context: Context, document: Document, call_timestep: str | None) -> None:
    """Write [flow]: ltxc's training defaults, with the scheduler's own shift so training sees sampling's σ."""
    section = document.section("flow", comment="ltxc's training defaults; the shift is the scheduler's, so "
                                               "training draws the noise levels sampling visits")  # fmt: skip
    section.set("target", "velocity")
    section.set("sigma", {"kind": "logit_normal", "mean": 0.0, "std": 1.0})
    shift, note, todo = _shift(context)
    section.set("shift", shift, note=note, todo=todo)
    section.set("uniform_fraction", 0.1)
    section.set("loss_weight", "1")
    if call_timestep is not None and call_timestep.startswith("timestep"):
        section.set("timestep", "sigma * 1000", note="the scheduler's timestep, σ·1000, in training")


def draft_sampler(context: Context, document: Document, geometry: dict[str, object], inputs: set[str]) -> None:
    """Write [sampler] from the call defaults and the loop's source (`inputs`: arguments fed to the call)."""
    pipeline = context.pipeline
    section = document.section("sampler")
    section.set("scheduler", "scheduler")
    _default(context, section, "steps", "num_inference_steps")
    cfg = next((p for p in pipeline.params if p.endswith("cfg_scale") and p not in inputs), "guidance_scale")
    _default(context, section, "guidance", cfg if "guidance_scale" in inputs else "guidance_scale")
    rescale = pipeline.defaults.get("guidance_rescale")
    if isinstance(rescale, (int, float)) and rescale:
        _default(context, section, "guidance_rescale", "guidance_rescale")
    if geometry["video"]:
        _fps(context, section)
        _default(context, section, "frames", "num_frames")
    else:
        section.set("fps", 1.0, note="unused: images")
        section.set("frames", 1)
    for key in ("height", "width"):
        if not _default(context, section, key, key, todo_if_missing=False):
            _sample_size(context, section, key, geometry["spatial"])
    linspace = pipeline.call.find(r"np\.linspace\(1\.0, 1 / num_inference_steps")
    section.set("sigmas", "linspace" if linspace else "scheduler", note=linspace or "the scheduler's own sigmas")
    shift, note, todo = _shift(context)
    if linspace and shift is not None:
        section.set("shift", shift, note=note, todo=todo)
    if "decode_timestep" in pipeline.params:
        _default(context, section, "decode_timestep", "decode_timestep")
        where = pipeline.params["decode_timestep"]
        section.entries[-1].todo = f"a timestep-conditioned VAE decodes at the checkpoint's timestep ({where})"
    negative = pipeline.example(r"negative_prompt\s*=\s*\"([^\"]*)\"")
    if negative is not None:
        section.set("negative_prompt", negative[0].group(1), note=f"the docstring example's, {negative[1]}")
    else:
        section.set("negative_prompt", "", note='negative_prompt or ""')
    _default(context, section, "max_sequence_length", "max_sequence_length")
    _arithmetic(context, section)


def _default(context: Context, section, key: str, param: str, todo_if_missing: bool = True) -> bool:
    pipeline = context.pipeline
    if param in pipeline.defaults and isinstance(pipeline.defaults[param], (int, float, str)):
        section.set(key, pipeline.defaults[param], note=f"{param}'s default, {pipeline.params[param]}")
        return True
    if todo_if_missing and param in pipeline.params:
        section.set(key, None, todo=f"{param} has no default ({pipeline.params[param]})")
    return False


def _fps(context: Context, section) -> None:
    if not _default(context, section, "fps", "frame_rate", todo_if_missing=False):
        found = context.pipeline.example(r"fps=(\d+)")
        if found is not None:
            section.set("fps", int(found[0].group(1)), note=f"the docstring example exports at it, {found[1]}")
        else:
            section.set(
                "fps", None, todo=f"the model's frame rate (the pipeline takes none: {context.pipeline.call.cite()})"
            )


def _sample_size(context: Context, section, key: str, spatial: object) -> None:
    size = context.pipeline.attributes.get("default_sample_size")
    if size is not None and isinstance(size.fallback or _constant(size), int) and isinstance(spatial, int):
        value = (size.fallback or _constant(size)) * spatial
        section.set(key, value, note=f"default_sample_size x VAE scale, {size.cite}")
    else:
        section.set(key, None, todo=f"the default {key} ({context.pipeline.params.get(key, '')})")


def _constant(attribute) -> object:
    import ast

    return attribute.expr.value if isinstance(attribute.expr, ast.Constant) else None


def _arithmetic(context: Context, section) -> None:
    """CFG batching, branch order, dtypes: what the loop's source shows plainly; the rest is left to ltxc's defaults."""
    call = context.pipeline.call
    batched = call.find(r"torch\.cat\(\[negative_prompt_embeds, prompt_embeds\]")
    separate = call.find(r"encoder_hidden_states=negative_prompt_embeds")
    if batched:
        section.set("cfg", "batched", note=batched)
        section.set("cfg_order", ["uncond", "cond"], note=batched)
    elif separate:
        section.set("cfg", "separate", note=separate)
        section.set("cfg_order", ["cond", "uncond"], note="the conditional call comes first")
    cast = call.find(r"\.to\(prompt_embeds\.dtype\)")
    if cast:
        section.set("input_dtype", "text_encoder", note=cast)
    elif (own := call.find(r"\.to\(transformer_dtype\)")) is not None:
        section.set("input_dtype", "transformer", note=own)
    upcast = call.find(r"noise_pred\w* = noise_pred\w*\.float\(\)")
    if upcast:
        section.set("guidance_dtype", "float32", note=upcast)
    else:
        section.set("guidance_dtype", "model", note="no upcast of the predictions before guidance in the loop")


def draft_decode(context: Context, document: Document) -> None:
    """[sampler] decode: the steps between the loop and `self.vae.decode(`, in the order the pipeline takes them."""
    lines = context.pipeline.call.text.splitlines()
    decodes = [i for i, line in enumerate(lines) if "self.vae.decode(" in line]
    if not decodes:
        return
    end = decodes[-1]
    indent = len(lines[end]) - len(lines[end].lstrip())
    start = end
    while start > 0:
        line = lines[start - 1]
        outer = line.strip() == "else:" and len(line) - len(line.lstrip()) < indent
        if outer or "output_type" in line:
            break
        start -= 1
    text = dict(document.section("text").entries_dict())
    encoder = text.get("encoder", "text_encoder")
    steps = []
    for line in lines[start:end]:
        code = line.strip()
        if not code.startswith("latents = "):
            continue
        if "_denormalize_latents(" in code or "latents_mean" in code or "shift_factor" in code:
            steps.append("denormalise")
        elif "self.vae.dtype" in code:
            steps.append("cast:vae")
        elif ".to(prompt_embeds.dtype)" in code:
            steps.append(f"cast:{encoder}")
        elif "decode_noise_scale * noise" in code:
            steps.append("noise")
    if steps.count("denormalise") == 1:
        where = f"{context.pipeline.call.cite(start)}-{end + context.pipeline.call.first_line}"
        document.section("sampler").set("decode", steps, note=f"the decode's steps in order, {where}")


def draft_parallel(context: Context, document: Document) -> None:
    """Write [parallel] blocks: the transformer's nn.ModuleList attributes of blocks."""
    cls = context.classes.get("transformer")
    source = source_of(cls.__init__) if cls is not None else None
    section = document.section("parallel")
    if source is None:
        section.set("blocks", None, todo=f"the transformer's block lists ({context.pipeline.init.cite()})")
        return
    names = re.findall(r"self\.(\w*blocks\w*)\s*=\s*nn\.ModuleList\(", source.text)
    where = source.find(r"= nn\.ModuleList\(") or source.cite()
    section.set("blocks", list(dict.fromkeys(names)) or None, note=where)
    if not names:
        section.entries[-1].todo = f"the transformer's block lists ({source.cite()})"


def draft_lora(document: Document) -> None:
    """Write [lora] with ltxc's usual attention targets."""
    section = document.section("lora", comment="ltxc's defaults: diffusers' attention projections")
    section.set("targets", ["to_q", "to_k", "to_v", "to_out.0"])
    section.set("rank", 32)
    section.set("alpha", 32)
