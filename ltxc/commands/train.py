"""`ltxc run train`: run config + plan -> (preprocess if needed) -> the runner -> a summary."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from ltxc.commands.plans import resolve_plan
from ltxc.data.cache import MANIFEST, REJECTED
from ltxc.document import Loaded
from ltxc.errors import ConfigError, UserError
from ltxc.plan import Plan
from ltxc.runner.config import SYNTHETIC_MEDIA, RunConfig, load_run_config
from ltxc.runner.run_dir import RunDir, write_record
from ltxc.runner.train import TrainResult, train

# The embedded default's synthetic set: 4 clips that differ in colour, background and direction (so each caption
# names one clip), all stored at the tiny spec's sampler size (96x64: one bucket, the shape `ltxc run generate`
# samples by default), so the demo can check that generating a training caption lands on that caption's clip.
SAMPLE_CLIPS, SAMPLE_IMAGES, SAMPLE_SIZE = 4, 0, (96, 64)


def run_train(
    *,
    config: Path | None,
    overrides: Sequence[str],
    plan_path: Path | None,
    resume: str | None,
    device: str | None,
    stop_after: int | None,
    dry_run: bool = False,
    ignore_memory_plan: bool = False,
) -> int:
    """The whole command; returns the exit code."""
    from ltxc.runner.distributed import init_distributed, shutdown
    from ltxc.runner.tasks import check_tasks

    loaded = load_run_config(config, overrides)
    run_config: RunConfig = loaded.value
    plan = resolve_plan(plan_path or run_config.run.plan)
    check_tasks(plan, loaded)  # FILE:LINE for a task or validation image the plan cannot train
    check_inputs(plan, loaded)
    if dry_run:
        print(_memory_plan(plan, run_config))
        return 0
    if _on_gpu(device):
        check_memory_plan(plan, run_config, ignore=ignore_memory_plan)
    run = RunDir.of(run_config)
    info = init_distributed(device)  # first: preprocessing below shares this process group
    try:
        if not (Path(str(run_config.data.cache)) / MANIFEST).exists():
            _fill_cache(plan, run_config, run, info.is_main)
        if info.is_main:
            write_record(run, run_config, plan.to_json())  # as configured: --resume is this invocation's
        result = train(plan, with_resume(run_config, resume), device=device, stop_after=stop_after)
    finally:
        shutdown()
    if info.is_main:
        print(format_summary(result, run.root))
    return 0


def check_inputs(plan: Plan, loaded: Loaded) -> None:
    """Refuse, as `FILE:LINE: train.inputs.<name>: message`, an input the spec's `[inputs]` does not declare."""
    have = ", ".join(sorted(plan.inputs)) or "none"
    unknown = [name for name in loaded.value.train.inputs if name not in plan.inputs]
    if unknown:
        raise ConfigError(
            loaded.locator.problem(
                ("train", "inputs", name),
                f"spec {plan.name!r} has no input {name!r} (its [inputs]: {have}); remove it or name one of those",
            )
            for name in unknown
        )


def _memory_plan(plan: Plan, run_config: RunConfig) -> str:
    from ltxc.runner.memory_plan import format_plan, plan_memory

    return format_plan(plan_memory(plan, run_config))


def _on_gpu(device: str | None) -> bool:
    import torch

    return (device or "cuda").startswith("cuda") and torch.cuda.is_available()


def check_memory_plan(plan: Plan, run_config: RunConfig, *, ignore: bool) -> None:
    """Before a GPU run: print the plan (rank 0) and refuse, in its last line, when it does not fit."""
    from ltxc.runner.memory_plan import plan_memory

    memory = plan_memory(plan, run_config)
    if int(os.environ.get("RANK", "0")) == 0:
        print("\n".join(memory.lines()), file=sys.stderr)
    if memory.fits() is False and not ignore:
        raise UserError(f"{memory.verdict()} (--ignore-memory-plan tries anyway)")


def with_resume(config: RunConfig, resume: str | None) -> RunConfig:
    """`config` with `--resume` (when given) in place of `checkpoint.resume`."""
    if not resume:
        return config
    return attrs.evolve(config, checkpoint=attrs.evolve(config.checkpoint, resume=resume))


def sample_counts(plan: Plan) -> tuple[int, int]:
    """(clips, images) of the synthetic set: clips for a video model, as many images for one that takes one frame."""
    if plan.geometry.frame_rule.largest == 1:
        return 0, SAMPLE_CLIPS + SAMPLE_IMAGES
    return SAMPLE_CLIPS, SAMPLE_IMAGES


def _fill_cache(plan: Plan, run_config: RunConfig, run: RunDir, is_main: bool) -> None:
    """Preprocess `data.media` into the cache (the synthetic sample set for the embedded default)."""
    from ltxc.media.synthetic import make_sample_dataset
    from ltxc.preprocess.run import format_report, preprocess
    from ltxc.preprocess.settings import build_settings
    from ltxc.runner.distributed import barrier

    media, cache = run_config.data.media, Path(str(run_config.data.cache))
    if not media:
        raise UserError(
            f"no cache at {cache}: run `ltxc run preprocess --data DIR --cache {cache}` first, "
            "or set data.media to a folder to preprocess"
        )
    folder = Path(media)
    if media == SYNTHETIC_MEDIA:
        folder = run.media
        if is_main and not folder.exists():
            print(f"making the synthetic sample set in {folder}", file=sys.stderr)
            clips, images = sample_counts(plan)
            # a run that trains sound gets clips with sound: each its own tone (the audio demo's set)
            make_sample_dataset(folder, clips=clips, images=images, seed=0, distinct=True, size=SAMPLE_SIZE,
                                sound=run_config.train.audio)  # fmt: skip
        barrier()
    if is_main:
        print(f"preprocessing {folder} into {cache}", file=sys.stderr)
    report = preprocess(plan, folder, cache, build_settings(plan), progress=run_config.log.progress)
    if is_main:
        print(format_report(report, cache), file=sys.stderr)
    if report.total_cached == 0:
        raise UserError(f"nothing could be cached from {folder}: see {cache / REJECTED}")


def format_summary(result: TrainResult, run_dir: Path) -> str:
    """The end-of-run summary."""
    losses = result.losses
    lines = [f"run        {run_dir}"]
    if losses:
        head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
        first, last = sum(head) / len(head), sum(tail) / len(tail)
        lines.append(f"steps      {result.steps_done} this run ({result.total_steps} in total), "
                     f"{result.steps_done / max(result.seconds, 1e-9):.2f} steps/s")  # fmt: skip
        lines.append(f"loss       {first:.4f} (first 10%) -> {last:.4f} (last 10%)")
    else:
        lines.append(f"steps      nothing to do: already at step {result.total_steps}")
    lines.append(f"memory     peak {result.peak_memory_mb:.0f} MiB")
    if result.checkpoint:
        lines.append(f"checkpoint {result.checkpoint}")
    for kind, path in result.exports.items():
        lines.append(f"export     {kind}: {path}")
    if result.loss_curve:
        lines.append(f"loss curve {result.loss_curve}")
    return "\n".join(lines)
