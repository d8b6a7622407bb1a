"""Frames around a VAE that takes images: ltxc keeps [B, C, F, H, W]; an image VAE (`[latent] vae_input = "image"`)
takes [B, C, H, W], so the frames are folded into the batch before it and unfolded after."""

from __future__ import annotations

from torch import Tensor


def to_vae(x: Tensor, vae_input: str | None) -> Tensor:
    """[B, C, F, H, W] -> what the VAE takes: unchanged for a video VAE, [B*F, C, H, W] for an image VAE."""
    if vae_input != "image":
        return x
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def from_vae(x: Tensor, batch: int, vae_input: str | None) -> Tensor:
    """The VAE's output back to [B, C, F, H, W] (the inverse of `to_vae` for a batch of `batch` samples)."""
    if vae_input != "image":
        return x
    bf, c, h, w = x.shape
    return x.reshape(batch, bf // batch, c, h, w).permute(0, 2, 1, 3, 4)
