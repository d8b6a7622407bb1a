"""AdamW and the learning-rate schedule, from the run config's `[optimizer]` and `[schedule]` as they are."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from ltxc.runner.config import OptimizerSection, ScheduleSection


def make_optimizer(
    params: Iterable[torch.nn.Parameter], optimizer: OptimizerSection, device: torch.device
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; fused kernels on GPU when asked for or "auto"."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check the training mode and the LoRA targets")
    fused = (device.type == "cuda") if optimizer.fused == "auto" else bool(optimizer.fused)
    return torch.optim.AdamW(
        params,
        lr=optimizer.lr,
        betas=tuple(optimizer.betas),  # type: ignore[arg-type]
        weight_decay=optimizer.weight_decay,
        eps=optimizer.eps,
        fused=fused or None,
    )


def lr_factor(step: int, total: int, schedule: ScheduleSection) -> float:
    """Multiplier of the base LR at `step` (0-based): linear warmup, then constant/cosine/linear decay."""
    if schedule.warmup and step < schedule.warmup:
        return (step + 1) / schedule.warmup
    if schedule.kind == "constant":
        return 1.0
    span = max(1, total - schedule.warmup)
    progress = min(1.0, (step - schedule.warmup) / span)
    floor = schedule.min_lr_ratio
    if schedule.kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: ScheduleSection
) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule: a LambdaLR following `lr_factor` over `total_steps`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, schedule))
