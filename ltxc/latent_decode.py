"""The sampler's decode: normalised latents -> frames, by the spec's `[sampler] decode` steps in order.

As the reference pipelines decode: the steps (denormalise, casts to a role's dtype, the decode noise of a
timestep-conditioned VAE) in the spec's order, the noise drawn from the sampler's generator after everything the
denoising drew, then [-1, 1] -> [0, 1] clamped before the float cast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.vae_frames import from_vae, to_vae


def decode_latents(
    plan: Plan,
    vae: Any,
    normaliser: Any,
    latents: Tensor,
    generator: torch.Generator,
    role_dtype: Callable[[str], torch.dtype],
) -> Tensor:
    """Normalised latents [B, C, F', H', W'] -> frames [B, F, H, W, 3] in [0, 1], float32 on the CPU."""
    conditioned = config_flag(vae, "timestep_conditioning")
    z, timestep = latents, None
    for step in plan.decode:
        if step == "denormalise":
            z = normaliser.denormalise(z)
        elif step == "noise":
            if conditioned:
                z, timestep = decode_noise(plan, z, generator)
        else:  # "cast:<role>"
            z = z.to(role_dtype(step.removeprefix("cast:")))
    if conditioned and timestep is None:
        raise UserError("the VAE is timestep-conditioned, but [sampler] decode has no 'noise' step")
    vae_input, batch = plan.latent.vae_input, z.shape[0]
    z = to_vae(z, vae_input)  # an image VAE decodes each frame as an image
    video = vae.decode(z, timestep, return_dict=False)[0] if conditioned else vae.decode(z, return_dict=False)[0]
    video = from_vae(video, batch, vae_input)
    # [B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] in [0, 1], clamped before the float cast like diffusers
    return (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).float().cpu()


def decode_noise(plan: Plan, z: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(z mixed with the decode noise, the decode timestep), both in z's dtype, as the reference pipelines."""
    s, batch = plan.sampler, z.shape[0]
    # Drawn after the initial noise from the same generator, as the reference pipeline draws it.
    noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
    scale = s.decode_timestep if s.decode_noise_scale is None else s.decode_noise_scale
    timestep = torch.tensor([s.decode_timestep] * batch, device=z.device, dtype=z.dtype)
    scale_t = torch.tensor([scale] * batch, device=z.device, dtype=z.dtype)[:, None, None, None, None]
    return (1 - scale_t) * z + scale_t * noise, timestep


def config_flag(module: Any, key: str) -> bool:
    """A boolean from a module's config (a diffusers FrozenDict or a transformers config); False if absent."""
    config = getattr(module, "config", None)
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return bool(value)
