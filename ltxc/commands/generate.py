"""`ltxc run generate`: prompts -> videos, from the spec's weights, a training checkpoint or an export."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ltxc.errors import UserError
from ltxc.plan import Plan

LORA_FILE = "pytorch_lora_weights.safetensors"


def load_transformer(
    plan: Plan, components: Mapping[str, Any], checkpoint: Path | None, lora_scale: float = 1.0
) -> torch.nn.Module:
    """The transformer to sample with: the spec's, or with a checkpoint's / an export's weights applied."""
    role = plan.spec.transformer.component
    transformer = components[role]
    if checkpoint is None:
        return transformer
    if (checkpoint / "meta.json").exists():
        transformer = _from_training_checkpoint(plan, transformer, checkpoint)
    elif (lora := _lora_file(checkpoint)) is not None:
        transformer.load_lora_adapter(str(lora.parent), weight_name=lora.name, prefix="transformer",
                                      adapter_name="default")  # fmt: skip
    elif (full := _full_dir(checkpoint)) is not None:
        transformer = plan.recipes[role].cls.from_pretrained(
            str(full), torch_dtype=next(transformer.parameters()).dtype
        )
    else:
        raise UserError(
            f"--checkpoint {checkpoint}: neither a training checkpoint (meta.json), a LoRA export ({LORA_FILE}) "
            "nor a transformer directory (config.json)"
        )
    if lora_scale != 1.0:
        if not getattr(transformer, "peft_config", None):
            raise UserError("--lora-scale needs a LoRA checkpoint or export")
        transformer.set_adapters(["default"], weights=[lora_scale])
    return transformer.eval()


def _lora_file(directory: Path) -> Path | None:
    for candidate in (directory / LORA_FILE, directory / "lora" / LORA_FILE, directory / "export" / "lora" / LORA_FILE):
        if candidate.is_file():
            return candidate
    return None


def _full_dir(directory: Path) -> Path | None:
    for candidate in (directory, directory / "transformer", directory / "export" / "transformer"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _from_training_checkpoint(plan: Plan, transformer: torch.nn.Module, checkpoint: Path) -> torch.nn.Module:
    from ltxc.runner.checkpoint import load_weights
    from ltxc.runner.lora import add_lora, lora_config

    run_dir = checkpoint.parent.parent
    record_path = run_dir / "run.json"
    if not record_path.exists():
        raise UserError(f"--checkpoint {checkpoint}: no run.json in {run_dir} to say how it was trained")
    record = json.loads(record_path.read_text())
    if record["plan"]["hash"] != plan.hash:
        raise UserError(f"--checkpoint {checkpoint} was trained with another spec; pass --plan {record_path} "
                        "or omit --plan (the run's own plan is used)")  # fmt: skip
    config = record["config"]
    lora = config.get("train", {}).get("mode", "lora") == "lora"
    if lora:
        spec_lora = plan.spec.lora
        section = config.get("lora", {})
        add_lora(transformer, lora_config(section.get("targets") or spec_lora.targets,
                                          section.get("rank") or spec_lora.rank,
                                          section.get("alpha") or spec_lora.alpha,
                                          exclude=plan.spec.parallel.frozen))  # fmt: skip
    load_weights(checkpoint, transformer, trainable_only=lora)
    return transformer


def plan_for(checkpoint: Path | None, plan_path: Path | None) -> Plan:
    """A training checkpoint carries its run's plan; otherwise --plan / .ltxc/plan.json / the embedded default."""
    from ltxc.commands.plans import resolve_plan
    from ltxc.compiler import plan_from_json

    if plan_path is None and checkpoint is not None and (checkpoint / "meta.json").exists():
        record = checkpoint.parent.parent / "run.json"
        if record.exists():
            return plan_from_json(json.loads(record.read_text())["plan"], str(record))
    return resolve_plan(plan_path)


def cache_distances(latents: torch.Tensor, cache_dir: Path, prompt: str) -> list[tuple[float, str, bool]]:
    """Mean squared distance from generated latents to every cached sample of the same shape (closest first).

    Each row is (distance, caption, caption == prompt).
    """
    from ltxc.data.dataset import CacheDataset

    dataset = CacheDataset(cache_dir)
    rows = []
    for index, record in enumerate(dataset.records):
        if list(record["latent_shape"]) != list(latents.shape):
            continue
        cached = dataset[index]["latents"]
        rows.append((float(((latents - cached) ** 2).mean()), record["caption"], record["caption"] == prompt))
    return sorted(rows)


def format_distances(rows: Sequence[tuple[float, str, bool]]) -> list[str]:
    """The `--compare-cache` report: the ranked distances, then where the prompt's own sample ranks.

    The verdict is scale-free: the rank of the closest sample with the prompt's caption, and how much farther
    the closest sample with another caption is (nearest other / matching; > 1 means the caption's own clip is
    the nearest).
    """
    lines = [f"latent distance (mean squared) to the {len(rows)} cached samples of this shape, closest first "
             "(* = this caption):"]  # fmt: skip
    lines += [f"  {rank:2d}. {distance:9.4f}  {'*' if same else ' '} {caption}"
              for rank, (distance, caption, same) in enumerate(rows, start=1)]  # fmt: skip
    matching = [(rank, distance) for rank, (distance, _, same) in enumerate(rows, start=1) if same]
    others = [distance for distance, _, same in rows if not same]
    if not matching:
        lines.append("no cached sample of this shape has this caption: nothing to compare with")
    else:
        rank, distance = matching[0]
        verdict = f"this caption's sample: rank {rank} of {len(rows)}"
        if others:
            verdict += f"; nearest other / matching = {others[0] / max(distance, 1e-12):.2f}"
        lines.append(verdict)
    return lines


def output_paths(output: Path, count: int) -> list[Path]:
    """One file per prompt: OUTPUT itself for one prompt, OUTPUT-0, OUTPUT-1, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def run_generate(
    *,
    prompts: Sequence[str],
    negative_prompt: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    fps: float | None,
    steps: int | None,
    guidance: float | None,
    seed: int,
    checkpoint: Path | None,
    lora_scale: float,
    output: Path,
    plan_path: Path | None,
    device: str | None,
    compare_cache: Path | None = None,
) -> int:
    """The whole command; returns the exit code."""
    from ltxc.media.write import SUFFIXES, write_frames
    from ltxc.sampler import Sampler

    if not prompts:
        raise UserError("give at least one --prompt (or --prompts FILE)")
    if output.suffix.lower() not in SUFFIXES:
        raise UserError(f"--output {output}: use one of {', '.join(SUFFIXES)}")
    if checkpoint is not None and not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    plan = plan_for(checkpoint, plan_path)
    components = plan.components()
    transformer = load_transformer(plan, components, checkpoint, lora_scale).to(device)
    sampler = Sampler(plan, components, device=device, transformer=transformer)
    for prompt, path in zip(prompts, output_paths(output, len(prompts)), strict=True):
        result = sampler([prompt], negative_prompt=negative_prompt, frames=frames, height=height, width=width,
                         fps=fps, steps=steps, guidance=guidance, seed=seed, progress=True)  # fmt: skip
        written = write_frames(result.video[0], path, fps=result.fps)
        print(f"wrote {written} ({result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps, "
              f"seed {seed}): {prompt!r}")  # fmt: skip
        if compare_cache is not None:
            rows = cache_distances(result.latents[0].cpu(), compare_cache, prompt)
            if rows:
                print("\n".join(format_distances(rows)))
            else:
                print(f"no cached sample has this latent shape {list(result.latents.shape[1:])}", file=sys.stderr)
    return 0
