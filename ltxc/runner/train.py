"""The one training loop, as named steps: set up (data, model, optimiser, LR schedule, resume), then per step
`train_step`, logging, validation and checkpoints; at the end a checkpoint, the exports and the loss curve."""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from attrs import frozen

from ltxc.adapter import Adapter
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.block_swap import check_levers
from ltxc.runner.checkpoint import read_meta, save_checkpoint
from ltxc.runner.config import RunConfig
from ltxc.runner.data import load_data, total_steps
from ltxc.runner.distributed import Distributed, init_distributed
from ltxc.runner.export import export_trained, trained_tasks
from ltxc.runner.fused_step import FusedStep
from ltxc.runner.metrics import MetricsLogger, peak_memory_mb, plot_loss_curve
from ltxc.runner.model import build_model
from ltxc.runner.optim import make_lr_schedule, make_optimizer
from ltxc.runner.resume import check_resumable, resume, resume_source, run_meta
from ltxc.runner.run_dir import RunDir
from ltxc.runner.step import Training, train_step
from ltxc.runner.step_log import StepLog
from ltxc.runner.validation import Validator


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@frozen
class TrainResult:
    """What a run did and where it left things."""

    steps_done: int
    total_steps: int
    losses: tuple[float, ...]
    checkpoint: Path | None
    exports: dict[str, str]
    loss_curve: Path | None
    seconds: float
    peak_memory_mb: float


def train(plan: Plan, config: RunConfig, *, device: str | None = None, stop_after: int | None = None) -> TrainResult:
    """Train `plan` as `config` says; resumable; the same code for 1 CPU or N GPUs.

    `device` overrides the automatic choice (a GPU per local rank, else the CPU); `stop_after` stops (with a
    checkpoint) after that many steps of this call.
    """
    with warnings.catch_warnings():
        # FSDP2 warns that a root output is a view; the loop never modifies outputs in place.
        warnings.filterwarnings("ignore", message=".*returned a view tensor.*", category=UserWarning)
        return _train(plan, config, device, stop_after)


def _train(plan: Plan, config: RunConfig, device: str | None, stop_after: int | None) -> TrainResult:
    began = time.monotonic()
    info = init_distributed(device)
    run = RunDir.of(config)
    # set up: data, model, optimiser, LR schedule, then continue the checkpoint the config names (if any)
    data = load_data(plan, config, info)
    total = total_steps(config.train, data.batches_per_epoch)
    meta = run_meta(config, plan.hash, total, info.world_size)
    checkpoint = resume_source(config.checkpoint, run)  # the last good state, also one in another run directory
    if checkpoint is not None:  # refuse before building the model: at 20 B parameters that takes minutes
        check_resumable(checkpoint, read_meta(checkpoint), meta, config, info.world_size)
    check_levers(config, info.world_size)
    # validation prompts are encoded (and the text encoder freed) before the transformer reaches the device
    validator = _validator(plan, config, info, run, None, data.fps)
    model, lora, dtype = build_model(plan, config, info)
    if validator is not None:
        validator.compute_dtype = dtype
    optimizer = make_optimizer(model.parameters(), config.optimizer, info.device)
    fused = FusedStep(model, optimizer) if config.train.fused_optimizer_step else None
    lr_schedule = make_lr_schedule(optimizer, total, config.schedule)
    start = 0 if checkpoint is None else resume(checkpoint, model, optimizer, lr_schedule, config, info)
    data.seek(start, config.train.grad_accum)
    adapter = Adapter(plan, inputs=config.train.inputs)  # the run config's [inputs] values, e.g. a guidance scale
    t = Training(plan, config, info, model, optimizer, lr_schedule, data, iter(data.loader), adapter, dtype, fused)
    # train: steps start..end of total (stop_after ends this call early, with a checkpoint)
    end = total if stop_after is None else min(total, start + stop_after)
    log = StepLog(_metrics_logger(run, config, info.is_main), config, info, start=start, end=end, total=total)
    losses: list[float] = []
    for step in range(start, end):
        result = train_step(t, step)
        if not math.isfinite(result.loss):
            log.close()  # flush the sinks before the run stops
            raise _diverged(result.loss, step + 1, checkpoint)
        losses.append(result.loss)
        done = step + 1
        log.step(done, result)
        if validator is not None and validator.due(done, done == total):
            validator.run(model, done, log.metrics)
        if _checkpoint_due(config, done, end):
            checkpoint = _save(t, run, done, meta)
    if validator is not None:
        validator.finish(log.metrics)  # the last background decode, logged before the sinks close
    log.close()
    # finish: the last checkpoint, the exports once the whole run is done, the loss curve
    if end > start:
        checkpoint = _save(t, run, end, meta)
    exports = (
        export_trained(plan, model, lora, config.export, run.export, is_main=info.is_main, tasks=trained_tasks(config))
        if end == total > start
        else {}
    )
    return TrainResult(
        steps_done=end - start,
        total_steps=total,
        losses=tuple(losses),
        checkpoint=checkpoint,
        exports=exports,
        loss_curve=plot_loss_curve(run.metrics, run.loss_curve) if info.is_main and run.metrics.exists() else None,
        seconds=time.monotonic() - began,
        peak_memory_mb=peak_memory_mb(info.device),
    )


def _validator(
    plan: Plan, config: RunConfig, info: Distributed, run: RunDir, compute_dtype: torch.dtype | None, fps: float
) -> Validator | None:
    """The validation sampler when prompts are configured (only then are the VAE and text encoder built)."""
    if not config.validation.prompts:
        return None
    return Validator(plan, config.validation, info, run, compute_dtype, fps)


def _checkpoint_due(config: RunConfig, done: int, end: int) -> bool:
    """Every `checkpoint.every` steps, except at the end of this call (saved after the loop either way)."""
    every = config.checkpoint.every
    return bool(every) and done % every == 0 and done != end


def _metrics_logger(run: RunDir, config: RunConfig, is_main: bool) -> MetricsLogger:
    """The JSONL and TensorBoard sinks, on the main rank only."""
    return MetricsLogger(run.root, jsonl=config.log.jsonl, tensorboard=config.log.tensorboard, enabled=is_main)


def _save(t: Training, run: RunDir, step: int, meta: dict[str, Any]) -> Path:
    """A checkpoint of `step` (collective), keeping the newest `checkpoint.keep`."""
    return save_checkpoint(run, step, t.model, t.optimizer, t.lr_schedule, meta, keep=t.config.checkpoint.keep,
                           trainable_only=t.config.train.mode == "lora", dist_info=t.info)  # fmt: skip


def _diverged(loss: float, step: int, last_checkpoint: Path | None) -> TrainingDiverged:
    """The error that stops a run whose loss is not finite, naming where to go back to."""
    where = f"last good checkpoint: {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
    return TrainingDiverged(f"loss is {loss} at step {step}; stopping ({where}); lower the LR?")
