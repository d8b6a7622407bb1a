"""`ltxc run generate`: prompts -> videos, from the spec's weights, a training checkpoint or an export; with
`--image`, the spec's task that takes an image; with `--reference`, the spec's task that takes a video (its tokens
appended to the target's)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ltxc.commands.generate_output import output_for, parse_inputs
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.run_dir import (
    DIFFUSERS_LORA,
    META,
    RunRecord,
    is_training_checkpoint,
    lora_file,
    read_record,
    run_dir_of_checkpoint,
    transformer_dir,
)


def checkpoint_record(checkpoint: Path | None) -> RunRecord | None:
    """The run record of a training checkpoint's run, read once; None for no checkpoint, an export, or no run.json."""
    if checkpoint is None or not is_training_checkpoint(checkpoint):
        return None
    run = run_dir_of_checkpoint(checkpoint)
    return read_record(run) if run.record.exists() else None


def load_transformer(
    plan: Plan,
    components: Mapping[str, Any],
    checkpoint: Path | None,
    lora_scale: float = 1.0,
    record: RunRecord | None = None,
) -> torch.nn.Module:
    """The transformer to sample with: the spec's, or with a checkpoint's / an export's weights applied.

    `record` is the training checkpoint's run record when the caller has read it already.
    """
    role = plan.transformer_role
    transformer = components[role]
    if checkpoint is None:
        return transformer
    if is_training_checkpoint(checkpoint):
        record = record or checkpoint_record(checkpoint)
        transformer = _from_training_checkpoint(plan, transformer, checkpoint, record)
    elif (lora := lora_file(checkpoint)) is not None:
        transformer.load_lora_adapter(str(lora.parent), weight_name=lora.name, prefix="transformer",
                                      adapter_name="default")  # fmt: skip
    elif (full := transformer_dir(checkpoint)) is not None:
        from ltxc.components import DTYPES

        # the spec's dtype, as from_pretrained applies it (the first parameter may be a keep-in-fp32 one)
        transformer = plan.recipes[role].cls.from_pretrained(str(full), torch_dtype=DTYPES[plan.recipes[role].dtype])
    else:
        raise UserError(
            f"--checkpoint {checkpoint}: neither a training checkpoint ({META}), a LoRA export ({DIFFUSERS_LORA}) "
            "nor a transformer directory (config.json)"
        )
    if lora_scale != 1.0:
        if not getattr(transformer, "peft_config", None):
            raise UserError("--lora-scale needs a LoRA checkpoint or export")
        transformer.set_adapters(["default"], weights=[lora_scale])
    return transformer.eval()


def _from_training_checkpoint(
    plan: Plan, transformer: torch.nn.Module, checkpoint: Path, record: RunRecord | None
) -> torch.nn.Module:
    from ltxc.runner.checkpoint import load_weights
    from ltxc.runner.lora import add_lora, run_lora_config

    run = run_dir_of_checkpoint(checkpoint)
    if record is None:
        raise UserError(f"--checkpoint {checkpoint}: no {run.record.name} in {run.root} to say how it was trained")
    if record.plan_hash != plan.hash:
        raise UserError(f"--checkpoint {checkpoint} was trained with another spec; pass --plan {run.record} "
                        "or omit --plan (the run's own plan is used)")  # fmt: skip
    lora = record.config.train.mode == "lora"
    if lora:
        add_lora(transformer, run_lora_config(record.config, plan))
    load_weights(checkpoint, transformer, trainable_only=lora)
    return transformer


def plan_for(checkpoint: Path | None, plan_path: Path | None, record: RunRecord | None = None) -> Plan:
    """A training checkpoint carries its run's plan; otherwise --plan / .ltxc/plan.json / the embedded default."""
    from ltxc.commands.plans import resolve_plan
    from ltxc.compiler import plan_from_json

    if plan_path is None and checkpoint is not None:
        record = record or checkpoint_record(checkpoint)
        if record is not None:
            return plan_from_json(record.plan, str(run_dir_of_checkpoint(checkpoint).record))
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


def image_input(plan: Plan, image: Path, frames: int | None, height: int | None, width: int | None) -> torch.Tensor:
    """`--image` as pixels [1, 3, H, W] in [-1, 1] at the generation size; one clear line when it cannot be."""
    from ltxc.condition_sampling import image_pixels
    from ltxc.media import MediaError, read_image
    from ltxc.sampler import size_or_default

    task = plan.task_for("image")  # a spec without an image task says so before the file is read
    s = plan.sampler
    frames, height, width = (size_or_default(frames, s.frames, "frames"), size_or_default(height, s.height, "height"),
                             size_or_default(width, s.width, "width"))  # fmt: skip
    plan.geometry.check(frames, height, width)
    try:
        rgb = read_image(image, (width, height))
    except MediaError as exc:
        raise UserError(f"--image {image}: {exc}") from None
    print(f"image-to-video (task {task.name}): {image} at {width}x{height}", file=sys.stderr)
    return image_pixels(rgb)


def reference_input(
    plan: Plan,
    reference: Path,
    frames: int | None,
    height: int | None,
    width: int | None,
    fps: float | None,
    image: bool = False,
) -> torch.Tensor:
    """`--reference` as pixels [1, 3, F, H / d, W / d] in [-1, 1]: the generation's frame count at its fps, at its
    size / the condition's downscale (covered and centre-cropped); one clear line when it cannot be."""
    from ltxc.appended_sampling import input_size, video_pixels
    from ltxc.media import MediaError, read_clip
    from ltxc.sampler import size_or_default

    task = plan.task_for("video")  # a spec without a video task says so before the file is read
    condition = task.condition("video")
    if image and task.condition("image") is None:
        raise UserError(f"--image and --reference: the task that takes a video ({task.name}) takes no image")
    s = plan.sampler
    frames, height, width = (size_or_default(frames, s.frames, "frames"), size_or_default(height, s.height, "height"),
                             size_or_default(width, s.width, "width"))  # fmt: skip
    rate = float(s.fps if fps is None else fps)
    plan.geometry.check(frames, height, width)
    size = input_size(plan.geometry, condition, frames, height, width)  # type: ignore[arg-type]  # it has one
    try:
        rgb = read_clip(reference, frames, rate, (size[1], size[0]))
    except MediaError as exc:
        raise UserError(f"--reference {reference}: {exc}") from None
    print(f"task {task.name}: reference {reference}, {frames} frames at {rate:g} fps, {size[1]}x{size[0]}",
          file=sys.stderr)  # fmt: skip
    return video_pixels(rgb)


def output_paths(output: Path, count: int) -> list[Path]:
    """One file per prompt: OUTPUT itself for one prompt, OUTPUT-0, OUTPUT-1, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]


def read_prompts(path: Path) -> list[str]:
    """The prompts of a `--prompts` file: one per non-blank line."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--prompts {path}: cannot read ({exc})") from None


def run_generate(
    *,
    prompts: Sequence[str],
    prompts_file: Path | None = None,
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
    output: Path | None,
    plan_path: Path | None,
    device: str | None,
    compare_cache: Path | None = None,
    image: Path | None = None,
    reference: Path | None = None,
    reference_strength: float = 1.0,
    audio_out: Path | None = None,
    named_inputs: Sequence[str] = (),
) -> int:
    """The whole command; returns the exit code. `prompts_file` adds its prompts after `prompts`. An .mp4 gets
    the generated sound when the spec decodes any; `audio_out` (.wav) gets it alone. No `output` (or one without a
    suffix): the spec's kind of file (`generate_output.output_for`). `named_inputs`: `NAME=VALUE` items for the
    spec's [inputs]."""
    from ltxc.media.write import SUFFIXES, write_frames, write_wav
    from ltxc.sampler import Sampler
    from ltxc.stream_decode import decoded_stream

    if prompts_file is not None:
        prompts = [*prompts, *read_prompts(prompts_file)]
    if not prompts:
        raise UserError("give at least one --prompt (or --prompts FILE)")
    if output is not None and output.suffix and output.suffix.lower() not in SUFFIXES:
        raise UserError(f"--output {output}: use one of {', '.join(SUFFIXES)}")
    if checkpoint is not None and not checkpoint.exists():
        raise UserError(f"--checkpoint {checkpoint} does not exist")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = checkpoint_record(checkpoint)  # run.json, read once: it gives the plan and how the weights were trained
    plan = plan_for(checkpoint, plan_path, record)
    output, values = output_for(plan, output), parse_inputs(named_inputs, plan)
    if audio_out is not None and (audio_out.suffix.lower() != ".wav" or decoded_stream(plan) is None):
        why = "use a .wav path" if audio_out.suffix.lower() != ".wav" else f"spec {plan.name!r} decodes no sound"
        raise UserError(f"--audio-out {audio_out}: {why}")
    # the inputs first: a bad one (or a spec with no task for it) fails before any weights load, nothing written
    clip = None
    if reference is not None:
        clip = reference_input(plan, reference, frames, height, width, fps, image is not None)
    pixels = None if image is None else image_input(plan, image, frames, height, width)
    components = plan.components()
    transformer = load_transformer(plan, components, checkpoint, lora_scale, record).to(device)
    sampler = Sampler(plan, components, device=device, transformer=transformer)
    wavs = output_paths(audio_out, len(prompts)) if audio_out is not None else []
    for index, (prompt, path) in enumerate(zip(prompts, output_paths(output, len(prompts)), strict=True)):
        result = sampler([prompt], negative_prompt=negative_prompt, frames=frames, height=height, width=width,
                         fps=fps, steps=steps, guidance=guidance, seed=seed, progress=True, image=pixels,
                         reference=clip, reference_strength=reference_strength, inputs=values)  # fmt: skip
        inputs = {"image": image, "reference": reference}
        settings = {"prompt": prompt, "seed": str(seed), **{k: str(v) for k, v in inputs.items() if v is not None}}
        settings |= {f"input.{name}": f"{value:g}" for name, value in result.inputs.items()}  # given or the spec's
        if reference is not None:
            settings["reference_strength"] = f"{reference_strength:g}"
        sound = None if result.audio is None else result.audio[0]
        written = write_frames(result.video[0], path, fps=result.fps, metadata=settings, audio=sound,
                               sample_rate=result.sample_rate)  # fmt: skip
        if wavs and sound is not None and result.sample_rate:
            print(f"wrote {write_wav(sound, wavs[index], result.sample_rate)} ({result.sample_rate} Hz)")
        given = "".join(f", {k} {v}" for k, v in inputs.items() if v is not None)
        print(f"wrote {written} ({result.frames} frames, {result.width}x{result.height}, {result.fps:g} fps, "
              f"seed {seed}{given}): {prompt!r}")  # fmt: skip
        if compare_cache is not None:
            rows = cache_distances(result.latents[0].cpu(), compare_cache, prompt)
            if rows:
                print("\n".join(format_distances(rows)))
            else:
                print(f"no cached sample has this latent shape {list(result.latents.shape[1:])}", file=sys.stderr)
    return 0
