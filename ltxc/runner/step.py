"""One optimiser step: accumulate the flow-matching loss over micro-batches, clip, step the optimiser and the
LR schedule. Every random draw is keyed by (seed, step, micro-batch, global sample position), or for a draw per
micro-batch by (seed, step, micro-batch) alone, so a step is the same however the global batch is split across
ranks, and across a resume."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import torch
from attrs import frozen

from ltxc.adapter import Adapter, dropout_decisions
from ltxc.flow import flow_loss, flow_target, loss_weights, noisy_latents, sample_sigmas
from ltxc.plan import CompiledTask, Plan
from ltxc.runner.block_swap import block_swap_of
from ltxc.runner.config import RunConfig
from ltxc.runner.data import TrainData
from ltxc.runner.distributed import Distributed, all_reduce_mean
from ltxc.runner.fused_step import FusedStep
from ltxc.runner.parallelize import unsharded_autocast
from ltxc.runner.seeds import derived_seed
from ltxc.runner.tasks import TrainingTasks, predict


@frozen
class Training:
    """The live objects a step works on."""

    plan: Plan
    config: RunConfig
    info: Distributed
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_schedule: torch.optim.lr_scheduler.LRScheduler
    data: TrainData
    batches: Iterator[dict[str, Any]]  # one iterator of the (infinite) loader for the whole run
    adapter: Adapter
    compute_dtype: torch.dtype | None  # the root does not cast its inputs (the timestep stays fp32)
    fused: FusedStep | None = None  # `train.fused_optimizer_step`: the optimiser steps inside the backward


@frozen
class StepResult:
    """What one step did: its global loss (the optimiser did not step if it is not finite) and its metrics."""

    loss: float
    grad_norm: float
    lr: float  # the LR this step used
    sigmas: torch.Tensor  # [samples this rank saw]
    sample_losses: torch.Tensor  # [samples this rank saw]
    data_seconds: float  # waiting for batches
    compute_seconds: float


@frozen
class Draws:
    """A micro-batch's random draws, each sample's from its own generator (keyed by its global position)."""

    sigma: torch.Tensor  # [B] float32
    noise: torch.Tensor  # [B, C, F, H, W] float32
    drop: torch.Tensor  # [B] bool: the caption is dropped (CFG dropout)
    tasks: tuple[CompiledTask | None, ...]  # the task each sample trains (None: text-to-video)


@frozen
class _Micro:
    loss: torch.Tensor
    sigma: torch.Tensor
    sample_losses: torch.Tensor
    data_seconds: float
    compute_seconds: float


def train_step(t: Training, step: int) -> StepResult:
    """Step `step` (0-based): grad_accum micro-batches, clip, then the optimiser and LR schedule step."""
    grad_accum = t.config.train.grad_accum
    torch.manual_seed(derived_seed(t.config.run.seed, step, t.info.rank))  # any global-RNG use is reproducible
    t.optimizer.zero_grad(set_to_none=True)
    if t.fused is not None:
        t.fused.begin()
    micros = []
    for micro in range(grad_accum):
        micros.append(_accumulate(t, step, micro))
    step_loss = sum((m.loss / grad_accum for m in micros), torch.zeros((), device=t.info.device))
    # fused: every parameter already stepped inside the backward (one process, no clipping: checked at set-up)
    grad_norm = _clip(t.model, t.config.train.grad_clip) if t.fused is None else t.fused.grad_norm()
    loss = all_reduce_mean(step_loss).item()
    lr = t.lr_schedule.get_last_lr()[0]  # the LR this step uses, read before the schedule moves on
    if math.isfinite(loss):  # a diverged step changes nothing: the caller stops at the last good state
        if t.fused is None:
            t.optimizer.step()
        t.lr_schedule.step()
    return StepResult(
        loss=loss,
        grad_norm=grad_norm,
        lr=lr,
        sigmas=torch.cat([m.sigma for m in micros]),
        sample_losses=torch.cat([m.sample_losses for m in micros]),
        data_seconds=sum(m.data_seconds for m in micros),
        compute_seconds=sum(m.compute_seconds for m in micros),
    )


def _accumulate(t: Training, step: int, micro: int) -> _Micro:
    """One micro-batch: draw σ, noise, dropout and tasks per sample, predict, weighted MSE, backward (grads add up)."""
    began = time.monotonic()
    batch = next(t.batches)
    fetched = time.monotonic()
    device = t.info.device
    x0 = batch["latents"].to(device, torch.float32, non_blocking=True)
    first = t.info.rank * x0.shape[0]  # this rank's first sample in the global batch
    draws = draw_micro(t.plan, t.config, t.data.tasks, step, micro, first, tuple(x0.shape))
    sigma, noise = draws.sigma.to(device), draws.noise.to(device)
    text = t.data.text(batch, draws.drop)
    noisy = noisy_latents(x0, noise, sigma)
    task = t.data.tasks.inputs(batch, x0, noisy, draws.tasks)  # None: every sample is text-to-video
    with unsharded_autocast(t.model, t.compute_dtype, device):  # a no-op unless a lever left it unwrapped on a GPU
        if task is None:
            prediction = t.adapter.predict(t.model, noisy, sigma, text, t.data.fps, compute_dtype=t.compute_dtype)
        else:
            prediction = predict(t.adapter, t.model, task, sigma, text, t.data.fps, t.compute_dtype)
    weights = loss_weights(t.plan.loss_weight, sigma, t.plan.constants)
    loss, sample_losses = flow_loss(prediction, flow_target(x0, noise), weights, None if task is None else task.keep)
    # a fused step would apply a non-finite loss's gradients inside the backward: skip it (the run stops)
    if t.fused is None or bool(torch.isfinite(loss)):
        (loss / t.config.train.grad_accum).backward()  # each backward() sums grads, so normalise here
    swap = block_swap_of(t.model)
    if swap is not None:
        swap.settle()  # the first swapped block's weights go back to the CPU once the backward is done
    return _Micro(loss.detach(), sigma.detach(), sample_losses.detach(), fetched - began, time.monotonic() - fetched)


def draw_micro(
    plan: Plan, config: RunConfig, tasks: TrainingTasks, step: int, micro: int, first: int, shape: tuple[int, ...]
) -> Draws:
    """The draws of micro-batch `micro` of `step` for the samples at global positions first.. of latents `shape`
    [B, C, F, H, W]: per sample σ, noise, the dropout coin, then the task coin, in that order from its generator
    (so without tasks every draw is text-to-video's)."""
    b = shape[0]
    tokens = math.prod(shape[2:])  # latent F*H*W: the sequence length the reference sampler shifts by
    seed = config.run.seed
    gens = [torch.Generator().manual_seed(derived_seed(seed, step, micro, first + i)) for i in range(b)]
    sigma = torch.cat([sample_sigmas(plan.flow, 1, tokens, g) for g in gens])
    noise = torch.stack([torch.randn(shape[1:], generator=g) for g in gens])
    drop = dropout_decisions(gens, config.train.cfg_dropout)
    return Draws(sigma, noise, drop, tasks.draw(gens, seed, step, micro, shape[2]))


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradient norm (0: no clipping) and return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
    return float(norm)
