"""The adapter: a cached batch + noise level -> the transformer's keyword arguments, and back.

The same compiled `[transformer.call]` mapping serves training and sampling, so the two can never see
different RoPE scaling, timestep scale or packing.
"""

from __future__ import annotations

from typing import Any

import torch

from ltxc.plan import Plan


class Adapter:
    """Builds transformer inputs from latents [B, C, F, H, W], σ [B] and text; unpacks the prediction."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.geometry = plan.geometry

    def environment(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        fps: float,
        text_pooled: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> dict[str, Any]:
        """The names a call expression may read, for this batch."""
        b, _, f, h, w = latents.shape
        if compute_dtype is not None:  # σ stays float32: a bf16 timestep rounds 512..1024 to steps of 4
            latents, text_embeds = latents.to(compute_dtype), text_embeds.to(compute_dtype)
        s = self.geometry.spatial_compression
        return {
            **self.plan.constants,
            "latents": self.geometry.pack(latents),
            "sigma": sigma.to(torch.float32),
            "text.embeds": text_embeds,
            "text.mask": text_mask,
            "text.pooled": text_pooled,
            "latent.frames": f,
            "latent.height": h,
            "latent.width": w,
            "pixel.frames": self.geometry.pixel_frames(f),
            "pixel.height": h * s,
            "pixel.width": w * s,
            "fps": float(fps),
            "batch_size": b,
        }

    def model_kwargs(self, env: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the call mapping."""
        return {key: expr(env) for key, expr in self.plan.call.items()}

    def predict(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text_embeds: torch.Tensor,
        text_mask: torch.Tensor,
        fps: float,
        text_pooled: torch.Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Run the transformer; return its prediction as float32 [B, C, F, H, W]."""
        env = self.environment(latents, sigma, text_embeds, text_mask, fps, text_pooled, compute_dtype)
        output = transformer(**self.model_kwargs(env), return_dict=False)[self.plan.spec.transformer.output]
        _, _, f, h, w = latents.shape
        return self.geometry.unpack(output, f, h, w).to(torch.float32)


def dropout_decisions(generators: list[torch.Generator], probability: float) -> torch.Tensor:
    """One independent coin per sample (bool [B]): True where the caption is dropped."""
    return torch.tensor([torch.rand((), generator=g).item() < probability for g in generators], dtype=torch.bool)


def cfg_dropout(
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    null_embeds: torch.Tensor,
    null_mask: torch.Tensor,
    drop: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the text of the samples where `drop` [B] is true by the cached null conditioning.

    Per sample, with the same "no text" the sampler uses for the negative branch — not one coin flip for
    the batch, and not zeroed embeddings.
    """
    keep = ~drop.to(torch.bool)
    shape = (-1,) + (1,) * (text_embeds.ndim - 1)
    embeds = torch.where(keep.view(shape), text_embeds, null_embeds.to(text_embeds).expand_as(text_embeds))
    mask = torch.where(keep.view(-1, 1), text_mask, null_mask.to(text_mask).expand_as(text_mask))
    return embeds, mask
