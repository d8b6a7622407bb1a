"""`ltxc run train`: run config + plan -> (preprocess if needed) -> the runner -> a summary."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from ltxc.commands.plans import resolve_plan
from ltxc.errors import UserError
from ltxc.fileio import atomic_write_json
from ltxc.runner.config import SYNTHETIC_MEDIA, RunConfig, load_run_config, run_config_to_dict
from ltxc.runner.optim import OptimSettings
from ltxc.runner.train import TrainResult, TrainSettings, train
from ltxc.runner.validation import ValidationSettings

# The embedded default's synthetic set: 4 clips that differ in colour, background and direction (so each caption
# names one clip), all stored at the tiny spec's sampler size (96x64: one bucket, the shape `ltxc run generate`
# samples by default), so the demo can check that generating a training caption lands on that caption's clip.
SAMPLE_CLIPS, SAMPLE_IMAGES, SAMPLE_SIZE = 4, 0, (96, 64)


def settings_from(config: RunConfig, plan_lora: tuple[int, float], *, resume: str | None, device: str | None,
                  stop_after: int | None) -> TrainSettings:  # fmt: skip
    """The runner's settings from a run config (the runner never sees TOML)."""
    rank, alpha = plan_lora
    return TrainSettings(
        run_dir=Path(config.run.output or "runs/default"),
        cache=Path(config.data.cache or "runs/default/cache"),
        mode=config.train.mode,
        steps=config.train.steps,
        epochs=config.train.epochs,
        batch_size=config.data.batch_size,
        grad_accum=config.train.grad_accum,
        grad_clip=config.train.grad_clip,
        cfg_dropout=config.train.cfg_dropout,
        seed=config.run.seed,
        activation_checkpointing=config.train.activation_checkpointing,
        optim=OptimSettings(
            lr=config.optimizer.lr,
            betas=tuple(config.optimizer.betas),  # type: ignore[arg-type]
            weight_decay=config.optimizer.weight_decay,
            eps=config.optimizer.eps,
            fused=config.optimizer.fused,
            schedule=config.schedule.kind,
            warmup=config.schedule.warmup,
            min_lr_ratio=config.schedule.min_lr_ratio,
        ),
        lora_rank=config.lora.rank or rank,
        lora_alpha=config.lora.alpha or alpha,
        lora_targets=tuple(config.lora.targets or ()),
        checkpoint_every=config.checkpoint.every,
        keep=config.checkpoint.keep,
        resume=resume or config.checkpoint.resume,
        log_every=config.log.every,
        jsonl=config.log.jsonl,
        tensorboard=config.log.tensorboard,
        progress=config.log.progress,
        replicate=config.parallel.replicate,
        precision=config.parallel.precision,
        export_lora_diffusers=config.export.lora_diffusers,
        export_lora_comfyui=config.export.lora_comfyui,
        export_full=bool(config.export.full),
        loader_workers=config.data.workers,
        pin_memory=config.data.pin_memory,
        device=device,
        stop_after=stop_after,
        validation=ValidationSettings(
            prompts=tuple(config.validation.prompts),
            negative_prompt=config.validation.negative_prompt,
            every=config.validation.every,
            frames=config.validation.frames,
            height=config.validation.height,
            width=config.validation.width,
            steps=config.validation.steps,
            guidance=config.validation.guidance,
            seed=config.validation.seed,
        ),
    )


def run_train(
    *,
    config: Path | None,
    overrides: Sequence[str],
    plan_path: Path | None,
    resume: str | None,
    device: str | None,
    stop_after: int | None,
) -> int:
    """The whole command; returns the exit code."""
    from ltxc.runner.distributed import init_distributed, shutdown

    run_config: RunConfig = load_run_config(config, overrides).value
    plan = resolve_plan(plan_path or run_config.run.plan)
    settings = settings_from(run_config, (plan.spec.lora.rank, plan.spec.lora.alpha), resume=resume, device=device,
                             stop_after=stop_after)  # fmt: skip
    info = init_distributed(device)  # first: preprocessing below shares this process group
    try:
        if not (settings.cache / "manifest.jsonl").exists():
            _fill_cache(plan, run_config, settings, info.is_main)
        if info.is_main:
            atomic_write_json(settings.run_dir / "run.json", {"config": run_config_to_dict(run_config),
                                                              "plan": plan.to_json()})  # fmt: skip
        result = train(plan, settings)
    finally:
        shutdown()
    if info.is_main:
        print(format_summary(result, settings))
    return 0


def _fill_cache(plan, run_config: RunConfig, settings: TrainSettings, is_main: bool) -> None:
    """Preprocess `data.media` into the cache (the synthetic sample set for the embedded default)."""
    from ltxc.media.synthetic import make_sample_dataset
    from ltxc.preprocess.run import format_report, preprocess
    from ltxc.preprocess.settings import build_settings
    from ltxc.runner.distributed import barrier

    media = run_config.data.media
    if not media:
        raise UserError(
            f"no cache at {settings.cache}: run `ltxc run preprocess --data DIR --cache {settings.cache}` first, "
            "or set data.media to a folder to preprocess"
        )
    folder = Path(media)
    if media == SYNTHETIC_MEDIA:
        folder = settings.run_dir / "media"
        if is_main and not folder.exists():
            print(f"making the synthetic sample set in {folder}", file=sys.stderr)
            make_sample_dataset(
                folder, clips=SAMPLE_CLIPS, images=SAMPLE_IMAGES, seed=0, distinct=True, size=SAMPLE_SIZE
            )
        barrier()
    if is_main:
        print(f"preprocessing {folder} into {settings.cache}", file=sys.stderr)
    report = preprocess(plan, folder, settings.cache, build_settings(plan), progress=settings.progress)
    if is_main:
        print(format_report(report, settings.cache), file=sys.stderr)
    if report.total_cached == 0:
        raise UserError(f"nothing could be cached from {folder}: see {settings.cache}/rejected.jsonl")


def format_summary(result: TrainResult, settings: TrainSettings) -> str:
    """The end-of-run summary."""
    losses = result.losses
    lines = [f"run        {settings.run_dir}"]
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


def run_export(*, run_dir: Path, checkpoint: Path | None, out: Path | None, device: str | None) -> int:
    """`ltxc run export`: write the exports of any checkpoint of a run, on demand."""
    import json

    from ltxc.compiler import plan_from_json
    from ltxc.runner.checkpoint import latest_checkpoint, load_weights
    from ltxc.runner.config import run_config_from_dict
    from ltxc.runner.distributed import init_distributed, shutdown
    from ltxc.runner.export import export_trained
    from ltxc.runner.train import build_model

    record_path = run_dir / "run.json"
    if not record_path.exists():
        raise UserError(f"{run_dir}: not an ltxc run directory (no run.json); pass the run's output directory")
    record = json.loads(record_path.read_text())
    plan = plan_from_json(record["plan"], str(record_path))
    run_config = run_config_from_dict(record["config"])
    settings = settings_from(run_config, (plan.spec.lora.rank, plan.spec.lora.alpha), resume=None, device=device,
                             stop_after=None)  # fmt: skip
    settings = attrs.evolve(settings, run_dir=run_dir)
    source = checkpoint or latest_checkpoint(run_dir)
    if source is None:
        raise UserError(f"{run_dir}: no complete checkpoint to export")
    info = init_distributed(device)
    try:
        model, lora, _ = build_model(plan, settings, info)
        meta = load_weights(source, model, trainable_only=settings.mode == "lora")
        target = out or run_dir / f"export-step-{int(meta['step']):08d}"
        exports = export_trained(plan, model, lora, settings, info, out=target)
    finally:
        shutdown()
    if info.is_main:
        for kind, path in exports.items():
            print(f"export     {kind}: {path}")
    return 0
