"""An appended condition in sampling: a second video's clean tokens after the target's (`place = "append"`).

Mirrors the reference pipeline's in-context path, so `ltxc verify --task` holds it bit-equal: the input video is
given at the target's size / the condition's `downscale` with the target's frame count, encoded as one clip
(`condition_sampling.clean_latents`, at the condition's `encode_dtype`), packed and broadcast over the batch; the
sequence is the target's tokens then the input's; the condition mask is 0 on the target and `strength` on the
input; the initial noise is one draw of the whole packed sequence, mixed as `noise * m + init * (1 - m)` with
`m = (1 - mask) * noise_scale` (the target starts as the noise, the input as its clean latents at strength 1);
each step's guided x0 prediction is blended with the clean latents (`keep = "blend"`) and every token is stepped,
so at strength 1 the input's tokens stay exactly clean. Before the decode the appended tokens are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ltxc.condition_sampling import SamplingConditions
from ltxc.conditions import TokenConditions
from ltxc.errors import UserError
from ltxc.geometry import Geometry
from ltxc.initial_noise import sequence_noise
from ltxc.plan import VIDEO, CompiledCondition, CompiledTask

NOISE_SCALE = 1.0  # the initial noise level of the target's tokens (σ_0 of the default schedule)


def video_pixels(rgb: np.ndarray) -> Tensor:
    """uint8 RGB frames [F, H, W, 3] (or [B, F, H, W, 3]) -> float32 [B, 3, F, H, W] in [-1, 1], as diffusers'
    video processor makes them from PIL frames (`x / 255`, then `2x - 1`)."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.shape[-1] != 3 or array.ndim not in (4, 5):
        raise ValueError(f"a video must be uint8 RGB [F, H, W, 3] or [B, F, H, W, 3], got {array.dtype} {array.shape}")
    unit = (array if array.ndim == 5 else array[None]).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(np.ascontiguousarray(unit.transpose(0, 4, 1, 2, 3))) - 1.0


def appended_condition(task: CompiledTask) -> CompiledCondition | None:
    """The task's appended condition (place = "append"), if it has one."""
    return next((c for c in task.conditions.values() if c.place == "append"), None)


def input_size(
    geometry: Geometry, condition: CompiledCondition, frames: int, height: int, width: int
) -> tuple[int, int]:
    """The (height, width) an appended condition's video takes for a frames x height x width generation: the
    target's / `downscale`; a clear error when that size breaks the spec's resolution rule."""
    d = condition.downscale
    size = (height // d, width // d)
    if height % d or width % d:
        raise UserError(
            f"condition {condition.name!r} (downscale {d}): the generation size {width}x{height} does not divide by {d}"
        )
    try:
        geometry.check(frames, *size)
    except UserError as exc:
        raise UserError(
            f"condition {condition.name!r}: its input's size {size[1]}x{size[0]} (the generation size "
            f"{width}x{height} / {d}) does not fit the spec: {exc}"
        ) from None
    return size


def check_video(video: Tensor, batch: int, frames: int, height: int, width: int, what: str = "the reference") -> None:
    """A clear error unless `video` is pixels [1 or batch, 3, frames, height, width]."""
    if video.ndim != 5 or tuple(video.shape[1:]) != (3, frames, height, width) or video.shape[0] not in (1, batch):
        raise UserError(
            f"{what} must be pixels [1 or {batch}, 3, {frames}, {height}, {width}] ({frames} frames at "
            f"{width}x{height}, the generation size / its condition's downscale), got {list(video.shape)}"
        )


def start_appended(
    geometry: Geometry,
    task: CompiledTask,
    condition: CompiledCondition,
    video: Tensor,
    encode: Callable[[Tensor], Tensor],
    size: tuple[int, int, int],
    batch: int,
    target_tokens: int,
    generator: torch.Generator,
    device: torch.device,
    strength: float = 1.0,
) -> tuple[dict[str, Tensor], SamplingConditions]:
    """A run of `batch` samples of a task with an appended condition: its video (pixels, checked against the
    generation's `size`, frames x height x width) encoded by `encode` to clean latents [1 or B, C, F_r, H_r, W_r]
    float32 and packed, then one noise draw over the target's `target_tokens` and its tokens; (initial latents,
    the run's conditions)."""
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"the reference strength must be in [0, 1] (1: clean at every step), got {strength:g}")
    frames, height, width = size
    input_height, input_width = input_size(geometry, condition, frames, height, width)
    check_video(video, batch, frames, input_height, input_width)
    clean = encode(video)
    packed = geometry.pack(clean)
    noise = sequence_noise(batch, target_tokens + packed.shape[1], packed.shape[2], generator, device)
    latents, conditions = appended_start(task, condition, packed, noise, tuple(clean.shape[2:]), strength)  # type: ignore[arg-type]
    return {VIDEO: latents}, conditions


def appended_start(
    task: CompiledTask,
    condition: CompiledCondition,
    clean: Tensor,
    noise: Tensor,
    grid: tuple[int, int, int],
    strength: float,
) -> tuple[Tensor, SamplingConditions]:
    """The initial latents [B, S_t + S_r, C] (target's tokens first) and the run's conditions.

    `clean` is the condition's packed clean latents [1 or B, S_r, C] float32, `noise` the whole sequence's
    initial noise [B, S_t + S_r, C] float32 (drawn after the encode), `grid` the input's latent (frames, height,
    width), `strength` the condition mask on its tokens (1: clean, at timestep 0).
    """
    batch, tokens, channels = noise.shape
    appended = clean.shape[1]
    target = tokens - appended
    clean = clean.to(noise.device).expand(batch, -1, -1)
    zeros = torch.zeros(batch, target, channels, dtype=noise.dtype, device=noise.device)
    init = torch.cat([zeros, clean], dim=1)
    mask = torch.cat(
        [
            torch.zeros(batch, target, dtype=torch.float32, device=noise.device),
            torch.full((batch, appended), float(strength), dtype=torch.float32, device=noise.device),
        ],
        dim=1,
    )
    m = (1.0 - mask.unsqueeze(-1)) * NOISE_SCALE
    latents = noise * m + init * (1 - m)
    conditions = TokenConditions(
        mask=mask, clean=init, appended=appended, reference_grid=grid, downscale=condition.downscale
    )
    held = torch.zeros(tokens, dtype=torch.bool, device=noise.device)  # keep = "blend": every token is stepped
    return latents, SamplingConditions(task, conditions, target, held, blend=mask)
