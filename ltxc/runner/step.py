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
from attrs import field, frozen

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
from ltxc.runner.streams import StreamInputs, TrainingStreams
from ltxc.runner.tasks import TaskInputs, TrainingTasks, predict, predict_streams


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
    stream_losses: dict[str, float] = field(factory=dict)  # `train.audio`: each term of the loss ("video", ...)


@frozen
class Draws:
    """A micro-batch's random draws, each sample's from its own generator (keyed by its global position)."""

    sigma: torch.Tensor  # [B] float32
    noise: torch.Tensor  # [B, C, F, H, W] float32
    drop: torch.Tensor  # [B] bool: the caption is dropped (CFG dropout)
    tasks: tuple[CompiledTask | None, ...]  # the task each sample trains (None: text-to-video)
    # `train.audio`: per stream (noise [B, L, D], its own σ [B] or None: the video's), drawn after the rest
    streams: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(factory=dict)
    # `train.audio_cfg_dropout`: the streams' own text is dropped where this [B] bool is true (None: where `drop` is)
    stream_drop: torch.Tensor | None = None


@frozen
class _Micro:
    loss: torch.Tensor
    sigma: torch.Tensor
    sample_losses: torch.Tensor
    data_seconds: float
    compute_seconds: float
    terms: dict[str, torch.Tensor] = field(factory=dict)


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
    names = micros[0].terms.keys()
    terms = {n: all_reduce_mean(sum(m.terms[n] for m in micros) / grad_accum).item() for n in names}
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
        stream_losses=terms,
    )


def _accumulate(t: Training, step: int, micro: int) -> _Micro:
    """One micro-batch: draw σ, noise, dropout, tasks (and the streams' noise) per sample, predict, weighted MSE
    (plus the streams' terms), backward (grads add up)."""
    began = time.monotonic()
    batch = next(t.batches)
    fetched = time.monotonic()
    device = t.info.device
    x0 = batch["latents"].to(device, torch.float32, non_blocking=True)
    first = t.info.rank * x0.shape[0]  # this rank's first sample in the global batch
    streams = t.data.streams if t.data.streams is not None and t.data.streams.on else None
    shapes = None if streams is None else streams.shapes(batch)
    draws = draw_micro(t.plan, t.config, t.data.tasks, step, micro, first, tuple(x0.shape), streams, shapes)
    sigma, noise = draws.sigma.to(device), draws.noise.to(device)
    text = t.data.text(batch, draws.drop, draws.stream_drop)
    noisy = noisy_latents(x0, noise, sigma)
    task = t.data.tasks.inputs(batch, x0, noisy, draws.tasks)  # None: every sample is text-to-video
    joint = None if streams is None else streams.inputs(batch, draws.streams, sigma)
    with unsharded_autocast(t.model, t.compute_dtype, device):  # a no-op unless a lever left it unwrapped on a GPU
        prediction, others = _predict(t, noisy, sigma, text, task, joint)
    weights = loss_weights(t.plan.loss_weight, sigma, t.plan.constants)
    loss, sample_losses = flow_loss(prediction, flow_target(x0, noise), weights, None if task is None else task.keep)
    terms: dict[str, torch.Tensor] = {}
    if streams is not None and joint is not None:
        loss, terms = streams.loss(loss, others, joint)
    # a fused step would apply a non-finite loss's gradients inside the backward: skip it (the run stops)
    if t.fused is None or bool(torch.isfinite(loss)):
        (loss / t.config.train.grad_accum).backward()  # each backward() sums grads, so normalise here
    swap = block_swap_of(t.model)
    if swap is not None:
        swap.settle()  # the first swapped block's weights go back to the CPU once the backward is done
    seconds = (fetched - began, time.monotonic() - fetched)
    return _Micro(loss.detach(), sigma.detach(), sample_losses.detach(), *seconds, terms)


def _predict(
    t: Training,
    noisy: torch.Tensor,
    sigma: torch.Tensor,
    text: dict[str, torch.Tensor],
    task: TaskInputs | None,
    joint: StreamInputs | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The video prediction float32 [B, C, F, H, W] and each jointly trained stream's (none in a video-only run)."""
    fps, dtype = t.data.fps, t.compute_dtype
    if joint is None:  # video only: the streams get their dummies
        if task is None:
            return t.adapter.predict(t.model, noisy, sigma, text, fps, compute_dtype=dtype), {}
        return predict(t.adapter, t.model, task, sigma, text, fps, dtype), {}
    streams, stream_sigmas = joint.noisy, joint.sigma
    if task is None:
        env = t.adapter.environment(noisy, sigma, text, fps, compute_dtype=dtype, streams=streams,
                                    stream_sigmas=stream_sigmas)  # fmt: skip
        return t.adapter.outputs(t.model, env)
    return predict_streams(t.adapter, t.model, task, sigma, text, fps, dtype, streams, stream_sigmas)


def draw_micro(
    plan: Plan,
    config: RunConfig,
    tasks: TrainingTasks,
    step: int,
    micro: int,
    first: int,
    shape: tuple[int, ...],
    streams: TrainingStreams | None = None,
    stream_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Draws:
    """The draws of micro-batch `micro` of `step` for the samples at global positions first.. of latents `shape`
    [B, C, F, H, W]: per sample σ, noise, the dropout coin, the task coin, then (`streams`, of per-sample
    `stream_shapes`) each stream's noise and own σ, in that order from its generator (so without tasks and streams
    every draw is text-to-video's)."""
    b = shape[0]
    tokens = plan.geometry.grid_tokens(*shape[2:])  # packed tokens: the sequence length the sampler shifts by
    seed = config.run.seed
    gens = [torch.Generator().manual_seed(derived_seed(seed, step, micro, first + i)) for i in range(b)]
    sigma = torch.cat([sample_sigmas(plan.flow, 1, tokens, g) for g in gens])
    noise = torch.stack([torch.randn(shape[1:], generator=g) for g in gens])
    drop = dropout_decisions(gens, config.train.cfg_dropout)
    drawn = tasks.draw(gens, seed, step, micro, shape[2])
    joint = {} if streams is None or not streams.on else streams.draw(gens, stream_shapes or {})
    rate = config.train.audio_cfg_dropout
    stream_drop = dropout_decisions(gens, rate) if joint and rate is not None else None  # last: nothing else moves
    return Draws(sigma, noise, drop, drawn, joint, stream_drop)


def _clip(model: torch.nn.Module, max_norm: float) -> float:
    """Clip the gradient norm (0: no clipping) and return the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
    return float(norm)
