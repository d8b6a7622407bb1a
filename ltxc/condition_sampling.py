"""A task's conditions in sampling: the inputs encoded to clean latents, the initial latents, the step that keeps
them clean.

Mirrors the reference pipelines' image-to-video path (diffusers 0.42.1 `LTXImageToVideoPipeline` and
`LTX2ImageToVideoPipeline`, `prepare_latents` and the denoising loop), so `ltxc verify --task` holds it bit-equal:
the pixels as `VideoProcessor.preprocess` makes them, cast to the prompt dtype, encoded one image at a time as a
1-frame video (the posterior's mode, or a sample drawn from the sampler's generator before the initial noise),
cast to float32 and normalised with the condition's normaliser; repeated over the latent frames and mixed with the
noise in the grid layout (`init * mask + noise * (1 - mask)`), then packed. At each step the scheduler steps only
the tokens no condition holds (`keep = "skip"`); the Euler step is elementwise, so stepping the same tokens in the
packed layout is the pipelines' step on latent frames 1.. of the unpacked one.

The latents a conditioned run denoises are the target's tokens, then any appended condition's (an IC-LoRA
reference, `place = "append"`) after them: `SamplingConditions.target` takes the target's back for the decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from attrs import frozen
from torch import Tensor

from ltxc.conditions import TokenConditions, frame_mask, packed_mask
from ltxc.errors import UserError
from ltxc.geometry import Geometry
from ltxc.plan import CompiledCondition, CompiledTask
from ltxc.spec.expr import Expr

# (velocity, sample) -> the scheduler's next sample, for the tokens it is given
SchedulerStep = Callable[[Tensor, Tensor], Tensor]


def image_pixels(rgb: np.ndarray) -> Tensor:
    """uint8 RGB [H, W, 3] (or [B, H, W, 3]) -> float32 [B, 3, H, W] in [-1, 1], as diffusers' image processor
    makes them (`np.array(pil).astype(float32) / 255`, then `2x - 1`)."""
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.shape[-1] != 3 or array.ndim not in (3, 4):
        raise ValueError(f"an image must be uint8 RGB [H, W, 3] or [B, H, W, 3], got {array.dtype} {list(array.shape)}")
    unit = (array if array.ndim == 4 else array[None]).astype(np.float32) / 255.0
    return 2.0 * torch.from_numpy(unit.transpose(0, 3, 1, 2)) - 1.0


def encode_images(vae: Any, pixels: Tensor, dtype: torch.dtype, encode: str, generator: torch.Generator) -> Tensor:
    """Pixels [B, 3, H, W] -> VAE latents [B, C, 1, H', W'] float32, one image at a time as a 1-frame video.

    The pixels are cast to `dtype` (the prompt's, as the pipelines cast them) and then to the VAE's (the same
    dtype in the reference pipelines); `encode = "sample"` draws from `generator`.
    """
    return encode_clips(vae, pixels.unsqueeze(2), dtype, encode, generator).to(torch.float32)


def encode_clips(vae: Any, pixels: Tensor, dtype: torch.dtype, encode: str, generator: torch.Generator) -> Tensor:
    """Pixels [B, 3, F, H, W] -> VAE latents [B, C, F', H', W'] in the VAE's dtype, one clip at a time.

    The pixels are cast to `dtype`, then to the VAE's; `encode = "sample"` draws from `generator`, "mode" draws
    nothing.
    """
    vae_dtype = getattr(vae, "dtype", dtype)
    device = next(vae.parameters()).device
    pixels = pixels.to(device=device, dtype=dtype)
    latents = []
    for clip in pixels:
        output = vae.encode(clip.unsqueeze(0).to(vae_dtype))
        if hasattr(output, "latent_dist"):
            dist = output.latent_dist
            latents.append(dist.mode() if encode == "mode" else dist.sample(generator))
        else:  # a VAE without a posterior hands out its latents
            latents.append(output.latents)
    return torch.cat(latents, dim=0)


def clean_latents(
    vae: Any,
    pixels: Tensor,
    condition: CompiledCondition,
    prompt_dtype: torch.dtype,
    normaliser: Any,
    generator: torch.Generator,
) -> Tensor:
    """A condition's input [B, 3, F, H, W] -> its normalised clean latents [B, C, F', H', W'] float32, at the
    condition's `encode_dtype`: "prompt" casts the pixels to the prompt's dtype (then the VAE's) and the latents to
    float32 before normalising; "vae" casts the pixels to the VAE's dtype and normalises in it, then casts."""
    if condition.encode_dtype == "vae":
        latents = encode_clips(vae, pixels, getattr(vae, "dtype", prompt_dtype), condition.encode, generator)
        return normaliser.normalise(latents).to(torch.float32)
    latents = encode_clips(vae, pixels, prompt_dtype, condition.encode, generator)
    return normaliser.normalise(latents.to(torch.float32))


@frozen(eq=False)
class SamplingConditions:
    """One sampler call's conditioned run: its task, the token conditions the adapter reads, what is stepped."""

    task: CompiledTask
    tokens: TokenConditions  # mask [B, S] over the target's tokens, then any appended ones; their clean latents
    target_tokens: int  # the first `target_tokens` of the S are the target's (decoded); the rest are appended
    held: Tensor  # [S] bool: the tokens the scheduler leaves as they are (keep = "skip")
    blend: Tensor | None = None  # [B, S] float32: how much of each token's x0 is the clean latents (keep = "blend")

    @property
    def call(self) -> Mapping[str, Expr]:
        """The task's call mapping (the spec's with the task's entries over it)."""
        return self.task.call

    def target(self, latents: Tensor) -> Tensor:
        """The target's tokens of latents in the transformer's layout (the appended ones dropped)."""
        return latents[:, : self.target_tokens]

    @property
    def appended_cells(self) -> int:
        """The latent cells of an appended condition (0 without one): a resolution shift counts them too."""
        f, h, w = self.tokens.reference_grid
        return f * h * w if self.tokens.appended else 0

    @property
    def x0_hook(self) -> Callable[[Tensor], Tensor] | None:
        """The blend of a step's guided x0 prediction with the clean latents (None: no condition blends)."""
        return None if self.blend is None else self.blended

    def blended(self, x0: Tensor) -> Tensor:
        """x0 [B, S, C] -> `(x0 * (1 - m) + clean * m)` in x0's dtype, m the blend weight: as the pipelines blend
        the denoised prediction before converting it back to a velocity, so a clean token's velocity is 0."""
        if self.blend is None or self.tokens.clean is None:
            return x0
        m = self.blend.to(x0.device).unsqueeze(-1)
        return (x0 * (1 - m) + self.tokens.clean.to(x0.device).float() * m).to(x0.dtype)

    def step(self, scheduler_step: SchedulerStep, velocity: Tensor, sample: Tensor) -> Tensor:
        """One scheduler step on the tokens no condition holds; the held ones are kept as they are."""
        if not bool(self.held.any()):
            return scheduler_step(velocity, sample)
        free = ~self.held.to(sample.device)
        stepped = scheduler_step(velocity[:, free], sample[:, free])
        out = sample.clone()
        out[:, free] = stepped.to(out.dtype)
        return out


# The (place, keep) pairs sampling supports, and a task may not mix frames and appended conditions.
SUPPORTED = frozenset({("frames", "skip"), ("append", "blend")})


def check_task(task: CompiledTask, inputs: Mapping[str, Tensor], layout: str) -> None:
    """A clear error unless the task can be sampled with these inputs (by input kind) in this layout."""
    for kind in inputs:
        if task.condition(kind) is None:
            raise UserError(f"task {task.name!r} takes no {kind!r} input")
    for condition in task.conditions.values():
        if condition.input not in inputs:
            raise UserError(
                f"task {task.name!r} needs the {condition.input!r} input of its condition {condition.name!r}"
            )
        if (condition.place, condition.keep) not in SUPPORTED:
            raise UserError(
                f"task {task.name!r}, condition {condition.name!r}: sampling supports place = 'frames' with "
                f"keep = 'skip' and place = 'append' with keep = 'blend' so far (got place = {condition.place!r}, "
                f"keep = {condition.keep!r})"
            )
    places = [c.place for c in task.conditions.values()]
    if "append" in places and len(places) > 1:
        raise UserError(
            f"task {task.name!r}: sampling supports one appended condition alone so far (it has {len(places)})"
        )
    if layout != "tokens":
        raise UserError(f"task {task.name!r}: conditioned sampling needs the 'tokens' layout, the spec has {layout!r}")


def start_latents(
    geometry: Geometry, task: CompiledTask, clean: Mapping[str, Tensor], noise: Tensor
) -> tuple[Tensor, SamplingConditions]:
    """The initial latents in the transformer's layout and the run's conditions.

    `clean` holds each condition's normalised clean latents [1 or B, C, F_c, H', W'] by name; `noise` is the
    video's initial noise [B, C, F', H', W'] float32. Each frames condition is repeated over the latent frames and
    mixed in on its frames (`init * mask + noise * (1 - mask)`, as the pipelines mix it).
    """
    batch, _, frames, height, width = noise.shape
    latents, mask = noise, None
    for name, condition in task.conditions.items():
        init = clean[name].repeat(1, 1, frames // clean[name].shape[2], 1, 1)
        here = frame_mask(batch, (frames, height, width), condition.frames).to(noise.device)
        latents = init * here + latents * (1 - here)
        mask = here if mask is None else torch.maximum(mask, here)
    if mask is None:
        mask = torch.zeros(batch, 1, frames, height, width, device=noise.device)
    packed = geometry.pack(latents)
    tokens = TokenConditions(mask=packed_mask(geometry, mask), clean=packed)
    held = tokens.mask[0] > 0  # every condition is a frames one with keep = "skip" (check_task)
    return packed, SamplingConditions(task, tokens, packed.shape[1], held)


def condition_for(task: CompiledTask, input_kind: str) -> CompiledCondition:
    """The task's condition fed by `input_kind`; a UserError when it has none."""
    condition = task.condition(input_kind)
    if condition is None:
        raise UserError(f"task {task.name!r} takes no {input_kind!r} input")
    return condition


def check_image(image: Tensor, batch: int, height: int, width: int) -> None:
    """A clear error unless `image` is pixels [1 or batch, 3, height, width]."""
    if image.ndim != 4 or tuple(image.shape[1:]) != (3, height, width) or image.shape[0] not in (1, batch):
        raise UserError(
            f"the image must be pixels [1 or {batch}, 3, {height}, {width}] (the generation size), "
            f"got {list(image.shape)}"
        )


def advance(
    scheduler: Any, t: Tensor, velocity: Tensor, sample: Tensor, conditions: SamplingConditions | None
) -> Tensor:
    """One scheduler step of a stream's latents; a task's held tokens (when given its conditions) stay as they are."""

    def step(v: Tensor, x: Tensor) -> Tensor:
        return scheduler.step(v, t, x, return_dict=False)[0]

    return step(velocity, sample) if conditions is None else conditions.step(step, velocity, sample)
