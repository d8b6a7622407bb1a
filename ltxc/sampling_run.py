"""One sampler call's settings, each as given or else the spec's `[sampler]` default, checked before anything runs."""

from __future__ import annotations

from collections.abc import Mapping

from attrs import field, frozen

from ltxc.adapter import checked_inputs
from ltxc.errors import UserError
from ltxc.geometry import LatentShape
from ltxc.plan import Plan
from ltxc.sampling_args import size_or_default


@frozen
class SamplingRun:
    """One sampler call's settings, each as given or else the spec's default."""

    frames: int
    height: int
    width: int
    shape: LatentShape
    fps: float
    steps: int
    guidance: float
    rescale: float
    cfg: bool  # whether the negative branch runs
    negative: str | None  # the negative prompt when it does
    inputs: dict[str, float] = field(factory=dict)  # `[inputs]` values given for this call (the rest: the spec's)


def resolve_run(
    plan: Plan,
    negative_prompt: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    fps: float | None,
    steps: int | None,
    guidance: float | None,
    guidance_rescale: float | None,
    inputs: Mapping[str, float] | None = None,
) -> SamplingRun:
    """One call's settings: each argument given, else the spec's `[sampler]` default."""
    s = plan.sampler
    frames, height, width = (
        size_or_default(frames, s.frames, "frames"),
        size_or_default(height, s.height, "height"),
        size_or_default(width, s.width, "width"),
    )
    shape = plan.geometry.latent_shape(frames, height, width)  # a clear ShapeError, never a silent floor
    steps = s.steps if steps is None else steps
    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    guidance = float(s.guidance if guidance is None else guidance)
    # as the pipelines decide it: the negative branch runs when any jointly sampled stream is guided
    joint = [st for st in plan.streams.values() if st.sample == "joint"]
    cfg = guidance > 1.0 or any((st.guidance if st.guidance is not None else guidance) > 1.0 for st in joint)
    return SamplingRun(
        frames=frames,
        height=height,
        width=width,
        shape=shape,
        fps=float(s.fps if fps is None else fps),
        steps=steps,
        guidance=guidance,
        rescale=float(s.guidance_rescale if guidance_rescale is None else guidance_rescale),
        cfg=cfg,
        negative=(s.negative_prompt if negative_prompt is None else negative_prompt) if cfg else None,
        inputs=checked_inputs(plan, inputs),
    )
