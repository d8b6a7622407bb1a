"""Flow matching: noise levels, noising, the velocity target and the weighted loss, all in float32.

x_t = (1 - σ)·x0 + σ·ε and the model predicts ε - x0. σ comes from the spec's `[flow]`: a base
distribution (uniform or logit-normal), a shift s (σ' = sσ / (1 + (s - 1)σ), fixed or interpolated in
the token count as the schedulers do at inference), and optionally a fraction of plain uniform draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ltxc.spec.expr import Expr
from ltxc.spec.types import (
    FixedShiftSpec,
    FlowSpec,
    LogitNormalSigmaSpec,
    NoShiftSpec,
    ResolutionShiftSpec,
    ShiftSpec,
    UniformSigmaSpec,
)

# σ is kept strictly inside (0, 1): 0 or 1 exactly would make weights like 1/σ or logit(σ) infinite.
# float32 eps (2^-23): 1 - eps is exact in float32, and for uniform σ the clamp moves about one draw in five million.
_EPS = float(torch.finfo(torch.float32).eps)


def resolution_mu(shift: ResolutionShiftSpec, tokens: int) -> float:
    """mu for `tokens`: linear through (base_seq_len, base_shift) and (max_seq_len, max_shift), extrapolated."""
    if shift.max_seq_len == shift.base_seq_len:
        raise ValueError(f"resolution shift needs base_seq_len != max_seq_len (both are {shift.base_seq_len})")
    # The same arithmetic, in the same order, as diffusers' calculate_shift, so mu matches it bit for bit.
    slope = (shift.max_shift - shift.base_shift) / (shift.max_seq_len - shift.base_seq_len)
    intercept = shift.base_shift - slope * shift.base_seq_len
    return tokens * slope + intercept


def shift_value(shift: ShiftSpec, tokens: int) -> float:
    """The shift s for a sample of `tokens` tokens: 1 for none, the value for fixed, exp(mu) for resolution."""
    if isinstance(shift, NoShiftSpec):
        return 1.0
    if isinstance(shift, FixedShiftSpec):
        return float(shift.value)
    if isinstance(shift, ResolutionShiftSpec):
        return math.exp(resolution_mu(shift, tokens))
    raise TypeError(f"unknown shift {shift!r}")


def apply_shift(sigma: Tensor, s: float) -> Tensor:
    """σ' = sσ / (1 + (s - 1)σ): a monotone map of [0, 1] onto itself (s > 1 pushes σ towards 1)."""
    if s <= 0:
        raise ValueError(f"shift must be positive, got {s}")
    sigma = _at_least_float32(sigma)
    # sσ / (sσ + (1 - σ)) is the same map, written so rounding keeps 0 -> 0, 1 -> 1 and never exceeds 1.
    scaled = s * sigma
    return scaled / (scaled + (1 - sigma))


def sample_sigmas(
    flow: FlowSpec,
    batch: int,
    tokens: int,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> Tensor:
    """Per-sample σ ∈ (0, 1), float32 [batch], drawn as `flow` says for samples of `tokens` tokens."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    # Draw on the generator's device and move afterwards, so a CPU generator gives the same σ on any device.
    # Every call draws the same three streams whatever the settings, so the generator advances identically.
    draw = {"generator": generator, "device": generator.device, "dtype": torch.float32}
    base = _base_draw(flow, batch, draw)
    coins = torch.rand(batch, **draw)
    uniform = torch.rand(batch, **draw)
    sigma = apply_shift(base, shift_value(flow.shift, tokens))
    sigma = torch.where(coins < flow.uniform_fraction, uniform, sigma)
    return sigma.clamp_(_EPS, 1 - _EPS).to(device or generator.device)


def _base_draw(flow: FlowSpec, batch: int, draw: dict[str, Any]) -> Tensor:
    distribution = flow.sigma
    u = torch.rand(batch, **draw)
    if isinstance(distribution, UniformSigmaSpec):
        return u
    if isinstance(distribution, LogitNormalSigmaSpec):
        # The normal by inverse CDF of a uniform, not randn: randn consumes the generator differently from rand
        # (and differently per batch size), which would make later draws depend on the σ distribution.
        z = math.sqrt(2) * torch.erfinv(2 * u.double() - 1)
        return torch.sigmoid(z * distribution.std + distribution.mean).float()
    raise TypeError(f"unknown sigma distribution {distribution!r}")


def noisy_latents(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """x_t = (1 - σ)·x0 + σ·ε in float32, with σ [B] broadcast over every non-batch dimension."""
    if x0.shape != noise.shape:
        raise ValueError(f"latents {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    s = _per_sample(sigma, x0)
    return (1 - s) * x0.float() + s * noise.float()


def flow_target(x0: Tensor, noise: Tensor, target: str = "velocity") -> Tensor:
    """The regression target in float32: ε - x0 for "velocity" (d x_t / d σ)."""
    if target != "velocity":
        raise ValueError(f"unknown flow target {target!r} (known: 'velocity')")
    if x0.shape != noise.shape:
        raise ValueError(f"latents {tuple(x0.shape)} and noise {tuple(noise.shape)} differ in shape")
    return noise.float() - x0.float()


def loss_weights(weight_expr: Expr, sigma: Tensor, constants: Mapping[str, Any] | None = None) -> Tensor:
    """The spec's compiled loss weight at `sigma` as float32 [B] (a constant like "1" is broadcast)."""
    sigma = sigma.float()
    # The compiler lets the expression read the plan's geometry constants too; pass them when it does.
    value = weight_expr({**(constants or {}), "sigma": sigma})
    weights = torch.as_tensor(value, dtype=torch.float32, device=sigma.device)
    if weights.dim() == 0:
        return weights.expand(sigma.shape).clone()
    if weights.shape != sigma.shape:
        raise ValueError(
            f"loss_weight {weight_expr.source!r} has shape {tuple(weights.shape)}; expected {tuple(sigma.shape)}"
        )
    return weights


def flow_loss(prediction: Tensor, target: Tensor, weights: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(Σ_b w_b·l_b / B, l): l is each sample's float32 MSE averaged over its non-batch dimensions.

    With `keep` (broadcastable to the prediction, e.g. [B, 1, F, H, W]; nonzero where an element counts) each
    sample's MSE is the mean over the elements it keeps (0 if none), and the others get exactly zero gradient:
    a task's conditioned tokens, which are given, not predicted.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    batch = prediction.shape[0]
    if weights.shape != (batch,):
        raise ValueError(f"weights have shape {tuple(weights.shape)}; expected ({batch},)")
    difference = prediction.float() - target.float()
    if keep is None:
        per_sample = difference.square().reshape(batch, -1).mean(dim=1)
    else:
        kept = (keep != 0).expand_as(difference)
        # selected before squaring: the left-out elements' gradient is exactly 0, even where a prediction is not finite
        squared = torch.where(kept, difference, torch.zeros_like(difference)).square()
        per_sample = squared.reshape(batch, -1).sum(dim=1) / kept.reshape(batch, -1).sum(dim=1).clamp(min=1)
    # Divide by B, not by Σw: a weighting then changes each sample's share of the gradient, not its scale.
    loss = (weights.float() * per_sample).sum() / batch
    return loss, per_sample


def _per_sample(sigma: Tensor, like: Tensor) -> Tensor:
    """σ [B] as float32 shaped [B, 1, ...] to broadcast against `like`."""
    if sigma.dim() != 1 or sigma.shape[0] != like.shape[0]:
        raise ValueError(f"sigma must have shape ({like.shape[0]},), got {tuple(sigma.shape)}")
    return sigma.float().reshape(-1, *([1] * (like.dim() - 1)))


def _at_least_float32(x: Tensor) -> Tensor:
    # bf16 σ has 8 bits of mantissa: steps of 1/256 near 1, too coarse for noise levels.
    return x if x.dtype == torch.float64 else x.float()
