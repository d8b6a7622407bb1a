"""A sampler call's initial noise: the video's, then every jointly sampled stream's, in the pipelines' draw order.

Drawn with diffusers' `randn_tensor` from the sampler's CPU generator, float32, so every device gets the same
noise as the reference pipelines; a task's clean latents are mixed into the video's afterwards
(`condition_sampling.start_latents`). A task with appended tokens draws the whole packed sequence at once instead
(`sequence_noise`, mixed by `appended_sampling.appended_start`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor

from ltxc.adapter import Adapter
from ltxc.geometry import LatentShape


def video_noise(batch: int, shape: LatentShape, generator: torch.Generator, device: torch.device) -> Tensor:
    """The video's initial noise [B, C, F', H', W'] float32."""
    size = (batch, shape.channels, shape.frames, shape.height, shape.width)
    return randn_tensor(size, generator=generator, device=device, dtype=torch.float32)


def sequence_noise(batch: int, tokens: int, features: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """A whole token sequence's initial noise [B, S, C] float32, drawn in the transformer's layout (as the
    pipelines with appended condition tokens draw it, after encoding the condition)."""
    return randn_tensor((batch, tokens, features), generator=generator, device=device, dtype=torch.float32)


def stream_noise(
    adapter: Adapter,
    latents: Tensor,
    shape: LatentShape,
    sigmas: Tensor,
    text: Mapping[str, Tensor],
    fps: float,
    generator: torch.Generator,
    packed: bool = False,
) -> dict[str, Tensor]:
    """The initial noise of every jointly sampled stream (e.g. audio), drawn in name order after the video's, packed.

    Each is drawn in its own noise shape and then packed, or with `packed` (a task's `noise = "packed"`) drawn in
    the packed shape at once (the same count of numbers, in the transformer's order).
    """
    batch = latents.shape[0]
    grid = (shape.frames, shape.height, shape.width)
    probe = adapter.environment(latents, sigmas[:1].expand(batch), text, fps, training=False, grid=grid)
    streams: dict[str, Tensor] = {}
    for name in sorted(adapter.plan.streams):
        stream = adapter.plan.streams[name]
        if stream.sample != "joint":
            continue
        noise_shape = (batch, *adapter.noise_shape(name, probe))
        if packed:
            shape = stream.pack({"x": torch.empty(noise_shape, device="meta")}).shape
            streams[name] = randn_tensor(shape, generator=generator, device=latents.device, dtype=torch.float32)
            continue
        noise = randn_tensor(noise_shape, generator=generator, device=latents.device, dtype=torch.float32)
        streams[name] = stream.pack({"x": noise})
    return streams
