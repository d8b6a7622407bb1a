"""Latent normalisers: what sits between the VAE's latents and the transformer's."""

from __future__ import annotations

from typing import Protocol

import torch
from attrs import frozen


class Normaliser(Protocol):
    """Maps VAE latents [B, C, ...] to the transformer's latent space and back."""

    def normalise(self, latents: torch.Tensor) -> torch.Tensor: ...
    def denormalise(self, latents: torch.Tensor) -> torch.Tensor: ...


def _per_channel(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a [C] statistic over [B, C, ...] in `like`'s dtype and device."""
    shape = [1, -1] + [1] * (like.ndim - 2)
    return values.reshape(shape).to(like.device, like.dtype)


@frozen
class MeanStd:
    """(z - mean) * scaling_factor / std, per channel; back by the form a reference pipeline computes."""

    mean: torch.Tensor
    std: torch.Tensor
    scaling_factor: float = 1.0
    # "multiply": x * std / scaling_factor + mean; "divide_reciprocal": x / (scaling_factor / std) + mean
    form: str = "multiply"

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents -> model latents."""
        mean, std = _per_channel(self.mean, latents), _per_channel(self.std, latents)
        return (latents - mean) * self.scaling_factor / std

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents -> VAE latents."""
        mean, std = _per_channel(self.mean, latents), _per_channel(self.std, latents)
        if self.form == "divide_reciprocal":  # the reciprocal rounds in the latents' dtype first
            return latents / (self.scaling_factor / std) + mean
        return latents * std / self.scaling_factor + mean


@frozen
class ShiftScale:
    """(z - shift) * scale."""

    shift: float
    scale: float

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE latents -> model latents."""
        return (latents - self.shift) * self.scale

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Model latents -> VAE latents."""
        return latents / self.scale + self.shift


@frozen
class Identity:
    """No normalisation."""

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Unchanged."""
        return latents

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """Unchanged."""
        return latents
