"""Exports: a LoRA for diffusers and for ComfyUI, a fully fine-tuned transformer as a diffusers directory.

diffusers: `Pipeline.save_lora_weights` with the adapter config as metadata, so `load_lora_weights` rebuilds
the same rank and alpha (without it diffusers assumes alpha = rank, and any other alpha loads wrongly scaled).

ComfyUI: the "generic" format its LoRA loader accepts for any diffusion model (comfy/lora.py,
`model_lora_keys_unet` maps "diffusion_model.<module>" to the model's weight; comfy/weight_adapter/lora.py
reads "<key>.lora_B.weight" / "<key>.lora_A.weight" and "<key>.alpha", and scales B·A by alpha / rank).
The module names are the diffusers model's own; with a 0-d alpha per module the scale is exact.

Task metadata: a run that trains a spec task with `lora_metadata` (an IC-LoRA's `reference_downscale_factor`)
writes those keys, evaluated with the task's appended condition, into both files' safetensors metadata, where
diffusers' and ComfyUI's users (and the model's own pipelines) read them.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import save_file

from ltxc.components import DTYPES, resolve_class
from ltxc.fileio import atomic_write, atomic_write_json
from ltxc.plan import Plan
from ltxc.runner.config import ExportSection
from ltxc.runner.lora import lora_scale, lora_state_dict
from ltxc.runner.run_dir import COMFYUI_LORA, DIFFUSERS_LORA, LORA, TRANSFORMER

COMFYUI_PREFIX = "diffusion_model."
WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' names, so `from_pretrained(dir)` finds them
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


def export_lora(
    lora_state: Mapping[str, torch.Tensor],
    out_dir: Path,
    *,
    pipeline_reference: str,
    config: LoraConfig,
    diffusers_format: bool = True,
    comfyui: bool = True,
    comfyui_names: Mapping[str, str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write the LoRA in the formats asked for; return {"diffusers": path, "comfyui": path}. `metadata`: extra
    safetensors metadata for both files (see `task_metadata`)."""
    extra = dict(metadata or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu").contiguous() for key, value in lora_state.items()}
    if not state:
        raise ValueError("no LoRA weights to export (did the targets match no module?)")
    written: dict[str, Path] = {}
    if diffusers_format:
        pipeline = resolve_class(pipeline_reference)
        if not hasattr(pipeline, "save_lora_weights"):
            raise ValueError(f"{pipeline_reference} cannot save LoRA weights (it has no save_lora_weights)")
        metadata = config.to_dict()
        # the exact modules this state holds: loaders build the same adapter, exclusion rules no longer needed
        metadata["target_modules"] = sorted({key.rsplit(".lora_", 1)[0] for key in state})
        metadata["exclude_modules"] = None
        # diffusers writes straight into the directory: write into a temp one, then move the file in whole
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora-") as tmp:
            pipeline.save_lora_weights(tmp, transformer_lora_layers=state, transformer_lora_adapter_metadata=metadata)
            if extra:
                _add_metadata(Path(tmp) / DIFFUSERS_LORA, extra)
            os.replace(Path(tmp) / DIFFUSERS_LORA, out_dir / DIFFUSERS_LORA)
        written["diffusers"] = out_dir / DIFFUSERS_LORA
    if comfyui:
        comfy = to_comfyui(state, config, comfyui_names)
        rank = int(next(v for k, v in state.items() if k.endswith(".lora_A.weight")).shape[0])
        info = {"format": "pt", "ss_network_dim": str(rank), "ss_network_alpha": str(config.lora_alpha), **extra}
        written["comfyui"] = atomic_write(out_dir / COMFYUI_LORA, lambda tmp: save_file(comfy, tmp, metadata=info))
    return written


def _add_metadata(path: Path, extra: Mapping[str, str]) -> None:
    """Rewrite a safetensors file with `extra` added to its metadata (a key it already has is an error)."""
    with safe_open(path, framework="pt") as handle:
        header = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (a handle, not a dict)
    clash = sorted(set(header) & set(extra))
    if clash:
        raise ValueError(
            f"{path.name} already has metadata {', '.join(clash)}; a task's lora_metadata cannot replace it"
        )
    save_file(tensors, path, metadata={**header, **extra})


def trained_tasks(config: Any) -> tuple[str, ...]:
    """The spec tasks a run config trains: `[tasks.<name>]` with a probability above 0 (none for a config without
    a tasks section)."""
    tasks = getattr(config, "tasks", None) or {}
    trained = []
    for name, section in tasks.items():
        probability = (
            section.get("probability", 0) if isinstance(section, Mapping) else getattr(section, "probability", 0)
        )
        if probability and probability > 0:
            trained.append(name)
    return tuple(sorted(trained))


def task_metadata(plan: Plan, tasks: Iterable[str]) -> dict[str, str]:
    """The `lora_metadata` of the trained `tasks` the plan has, evaluated (reference.downscale: the task's appended
    condition's, else 1), as safetensors metadata strings; two tasks may not give one key different values."""
    out: dict[str, str] = {}
    owner: dict[str, str] = {}
    for name in tasks:
        task = plan.tasks.get(name)
        if task is None:
            continue
        appended = next((c for c in task.conditions.values() if c.place == "append"), None)
        env = {"reference.downscale": appended.downscale if appended is not None else 1}
        for key, expr in task.lora_metadata.items():
            value = _metadata_text(expr(env))
            if key in out and out[key] != value:
                raise ValueError(
                    f"tasks {owner[key]!r} and {name!r} write LoRA metadata {key!r} as {out[key]!r} and {value!r}"
                )
            out[key], owner[key] = value, name
    return out


def _metadata_text(value: Any) -> str:
    """A metadata value as text: integers as integers ("2", never "2.0": readers parse them with int())."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def rename_parts(name: str, renames: Mapping[str, str]) -> str:
    """Replace whole dot-separated runs of `name` by `renames` (longest first, each part at most once)."""
    parts = name.split(".")
    out: list[str] = []
    keys = sorted(((k.split("."), v) for k, v in renames.items()), key=lambda kv: -len(kv[0]))
    i = 0
    while i < len(parts):
        for key, value in keys:
            if parts[i : i + len(key)] == key:
                out.append(value)
                i += len(key)
                break
        else:
            out.append(parts[i])
            i += 1
    return ".".join(out)


def to_comfyui(
    lora_state: Mapping[str, torch.Tensor], config: LoraConfig, renames: Mapping[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """peft's LoRA state (`<module>.lora_A.weight`, ...) in ComfyUI's keys, with a 0-d alpha per module.

    `renames` maps diffusers module-name parts to the original checkpoint's, which ComfyUI loads by.
    """
    renames = renames or {}
    if config.use_dora:
        raise ValueError("DoRA adapters have no ComfyUI export here; train a plain LoRA")
    out: dict[str, torch.Tensor] = {}
    for key, value in lora_state.items():
        if not key.endswith(_LORA_SUFFIXES):
            raise ValueError(f"{key}: only lora_A/lora_B weights have a ComfyUI form (no LoRA biases or extras)")
        suffix = ".lora_A.weight" if key.endswith(".lora_A.weight") else ".lora_B.weight"
        module = rename_parts(key.removesuffix(suffix), renames)
        out[COMFYUI_PREFIX + module + suffix] = value.contiguous()
        if suffix == ".lora_A.weight":
            rank = value.shape[0]
            # ComfyUI scales by alpha / rank, so this alpha reproduces peft's scale (also under rsLoRA)
            out[f"{COMFYUI_PREFIX}{module}.alpha"] = torch.tensor(lora_scale(config, rank) * rank, dtype=torch.float32)
    return out


def from_comfyui(
    state: Mapping[str, torch.Tensor], renames: Mapping[str, str] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The inverse of `to_comfyui`: peft-named LoRA weights, and each module's alpha."""
    back = {v: k for k, v in (renames or {}).items()}
    weights: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    for key, value in state.items():
        if not key.startswith(COMFYUI_PREFIX):
            raise ValueError(f"{key}: not a ComfyUI diffusion-model LoRA key (expected {COMFYUI_PREFIX}...)")
        name = key.removeprefix(COMFYUI_PREFIX)
        if name.endswith(".alpha"):
            alphas[rename_parts(name.removesuffix(".alpha"), back)] = float(value.item())
        elif name.endswith(_LORA_SUFFIXES):
            suffix = name[name.rindex(".lora_") :]
            weights[rename_parts(name.removesuffix(suffix), back) + suffix] = value
        else:
            raise ValueError(f"{key}: unexpected key in a LoRA file")
    return weights, alphas


def export_full(
    transformer: torch.nn.Module,
    out_dir: Path,
    *,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
) -> Path:
    """Write a diffusers model directory (config.json + safetensors) that `Class.from_pretrained` loads.

    `state_dict` replaces the module's own (pass the gathered full weights of a sharded model);
    `dtype` casts floating weights (e.g. back to the spec's bf16 after fp32 master weights).
    """
    from huggingface_hub import split_torch_state_dict_into_shards

    out_dir = Path(out_dir)
    state = dict(state_dict if state_dict is not None else transformer.state_dict())
    if any(".lora_" in key or ".base_layer." in key for key in state):
        raise ValueError("the transformer carries a LoRA adapter: export the LoRA, or fuse it first")
    for key, value in state.items():
        value = value.detach()
        if hasattr(value, "full_tensor"):  # a DTensor: callers should gather first, but don't write shards
            value = value.full_tensor()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.to("cpu").contiguous()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        transformer.save_config(tmp)  # the same config.json diffusers' save_pretrained writes
        pattern = WEIGHTS.replace(".safetensors", "{suffix}.safetensors")
        split = split_torch_state_dict_into_shards(state, filename_pattern=pattern, max_shard_size=max_shard_size)
        for filename, names in split.filename_to_tensors.items():
            save_file({name: state[name] for name in names}, tmp / filename, metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
            atomic_write_json(tmp / WEIGHTS_INDEX, index)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)  # readers see the old directory or the whole new one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_trained(
    plan: Plan,
    model: torch.nn.Module,
    lora: LoraConfig | None,
    export: ExportSection,
    out: Path,
    *,
    is_main: bool,
    tasks: Iterable[str] = (),
) -> dict[str, str]:
    """The exports `export` asks for under `out` (a run's `export/`); every rank calls it (gathering is collective).

    `lora` is the LoRA config, or None for a full fine-tune; only the main rank writes files. `tasks`: the spec tasks
    the run trained (`trained_tasks(config)`), whose `lora_metadata` the LoRA files carry.
    """
    written: dict[str, Path] = {}
    if lora is not None:
        written = _export_lora(plan, model, lora, export, out, is_main=is_main, tasks=tuple(tasks))
    elif export.full:
        state = _full_state_dict(model)
        if is_main:
            dtype = DTYPES[plan.recipes[plan.transformer_role].dtype]  # back to the spec's dtype from fp32 masters
            written[TRANSFORMER] = export_full(model, out / TRANSFORMER, state_dict=state, dtype=dtype)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # nobody leaves before the files exist
    return {kind: str(path) for kind, path in written.items()}


def _export_lora(
    plan: Plan,
    model: torch.nn.Module,
    lora: LoraConfig,
    export: ExportSection,
    out: Path,
    *,
    is_main: bool,
    tasks: tuple[str, ...] = (),
) -> dict[str, Path]:
    """The LoRA for diffusers (when the plan names a reference pipeline) and for ComfyUI, as `export` asks."""
    state = lora_state_dict(model)  # collective under FSDP2: every rank gathers
    if not is_main or not (export.lora_diffusers or export.lora_comfyui):
        return {}
    # [lora] comfyui = "diffusers": ComfyUI loads this model's diffusers-format LoRA itself (its own module names
    # differ from diffusers' beyond renames, e.g. fused q/k/v), so the diffusers file serves it and no other is written
    comfyui_reads_diffusers = plan.lora.comfyui == "diffusers"
    diffusers = export.lora_diffusers or (export.lora_comfyui and comfyui_reads_diffusers)
    if diffusers and plan.reference is None:
        print("no model.reference in the spec: skipping the diffusers LoRA export", file=sys.stderr)
    if export.lora_comfyui and comfyui_reads_diffusers:
        print("ComfyUI loads this model's diffusers-format LoRA ([lora] comfyui in the spec): no separate file",
              file=sys.stderr)  # fmt: skip
    paths = export_lora(
        state,
        out / LORA,
        pipeline_reference=plan.reference or "",
        config=lora,
        diffusers_format=diffusers and plan.reference is not None,
        comfyui=export.lora_comfyui and not comfyui_reads_diffusers,
        comfyui_names=plan.lora.comfyui_names,
        metadata=task_metadata(plan, tasks),
    )
    return {f"lora_{kind}": path for kind, path in paths.items()}


def _full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Whole, unsharded weights on rank 0's CPU (an empty dict elsewhere)."""
    if not torch.distributed.is_initialized():
        return dict(model.state_dict())
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
