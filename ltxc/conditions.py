"""A task's conditions at run time: which tokens of a batch are clean, and their clean latents.

The spec says what a condition is (`[tasks.<task>.conditions.<name>]`, compiled to `CompiledCondition`); this
module holds one batch's answer in the transformer's layout, the target's tokens first and any appended ones
(an IC-LoRA reference) after them. The adapter reads it for the `condition.mask` and `reference.*` call names;
training masks the loss with it; the sampler keeps the conditioned tokens clean with it.
"""

from __future__ import annotations

import torch
from attrs import evolve, frozen
from torch import Tensor

from ltxc.geometry import Geometry


@frozen(eq=False)
class TokenConditions:
    """One batch's conditioned tokens (transformer layout): target tokens first, then `appended` ones."""

    mask: Tensor  # [B, S] float32: 1 where a token is conditioned (clean), 0 where it is denoised
    clean: Tensor | None = None  # [B, S, C]: the clean latents (read where `mask` is 1); None when nothing is
    appended: int = 0  # how many of the S tokens follow the target's (an appended reference)
    reference_grid: tuple[int, int, int] = (0, 0, 0)  # the appended reference's latent (frames, height, width)
    downscale: int = 1  # the appended reference's spatial size is the target's / downscale

    @property
    def batch(self) -> int:
        """The number of samples."""
        return self.mask.shape[0]

    def repeated(self, batch: int) -> TokenConditions:
        """The same conditions for a pass on `batch` stacked copies of the samples (a CFG batch), as `cat`s."""
        if batch == self.batch:
            return self
        if batch % self.batch:
            raise ValueError(f"a pass of {batch} samples is not whole copies of {self.batch} conditioned ones")
        copies = batch // self.batch
        clean = None if self.clean is None else torch.cat([self.clean] * copies)
        return evolve(self, mask=torch.cat([self.mask] * copies), clean=clean)

    def target_mask(self) -> Tensor:
        """[B, S_target]: the mask over the target's own tokens (the appended ones left out)."""
        return self.mask[:, : self.mask.shape[1] - self.appended]


def no_conditions(batch: int, tokens: int, device: torch.device | str = "cpu") -> TokenConditions:
    """Text-to-video: no token is conditioned."""
    return TokenConditions(mask=torch.zeros(batch, tokens, dtype=torch.float32, device=device))


def frame_mask(batch: int, grid: tuple[int, int, int], frames: tuple[int, int]) -> Tensor:
    """[B, 1, F, H, W] float32: 1 on latent frames [start, end) of a latent grid (clipped to it), 0 elsewhere."""
    f, h, w = grid
    mask = torch.zeros(batch, 1, f, h, w, dtype=torch.float32)
    mask[:, :, frames[0] : min(frames[1], f)] = 1.0
    return mask


def packed_mask(geometry: Geometry, mask: Tensor) -> Tensor:
    """A [B, 1, F, H, W] mask -> [B, S] in the transformer's token order (as the pipelines pack theirs)."""
    return geometry.pack(mask).squeeze(-1)
