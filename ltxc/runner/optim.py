"""AdamW and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import torch
from attrs import frozen


@frozen
class OptimSettings:
    """AdamW hyper-parameters and the schedule."""

    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    fused: Literal["auto"] | bool = "auto"
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup: int = 0
    min_lr_ratio: float = 0.0


def make_optimizer(params: Iterable[torch.nn.Parameter], settings: OptimSettings, device: torch.device):
    """AdamW over the trainable parameters; fused kernels on GPU when asked for or "auto"."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check the training mode and the LoRA targets")
    fused = (device.type == "cuda") if settings.fused == "auto" else bool(settings.fused)
    return torch.optim.AdamW(
        params,
        lr=settings.lr,
        betas=settings.betas,
        weight_decay=settings.weight_decay,
        eps=settings.eps,
        fused=fused or None,
    )


def lr_factor(step: int, total: int, settings: OptimSettings) -> float:
    """Multiplier of the base LR at `step` (0-based): linear warmup, then constant/cosine/linear decay."""
    if settings.warmup and step < settings.warmup:
        return (step + 1) / settings.warmup
    if settings.schedule == "constant":
        return 1.0
    span = max(1, total - settings.warmup)
    progress = min(1.0, (step - settings.warmup) / span)
    floor = settings.min_lr_ratio
    if settings.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, settings: OptimSettings):
    """A LambdaLR following `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps, settings))
