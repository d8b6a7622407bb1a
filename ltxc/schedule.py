"""The sampler's σ schedule: the scheduler's timesteps set with the spec's σ rule and shift, as the pipelines do."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ltxc.errors import UserError
from ltxc.flow import resolution_mu
from ltxc.geometry import LatentShape
from ltxc.spec.types import ResolutionShiftSpec, SamplerSpec


def set_schedule(
    settings: SamplerSpec,
    scheduler: Any,
    steps: int,
    shape: LatentShape,
    device: torch.device,
    appended: int = 0,
) -> tuple[Tensor, Tensor]:
    """Set the scheduler's timesteps with the spec's σ rule and shift; return (timesteps, σ).

    A resolution shift counts the whole sequence the transformer denoises, as the pipelines count it
    (`latents.shape[1]`): the target's tokens (latent cells over the patch), plus `appended` tokens of a task's
    appended condition.
    """
    accepted = inspect.signature(scheduler.set_timesteps).parameters
    kwargs: dict[str, Any] = {"device": device}
    if settings.sigmas == "linspace":
        if "sigmas" not in accepted:
            raise UserError(f"[sampler] sigmas = 'linspace', but {type(scheduler).__name__} takes no custom sigmas")
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
    else:
        kwargs["num_inference_steps"] = steps
    if isinstance(settings.shift, ResolutionShiftSpec):
        # The packed sequence's length, as the pipelines count it (after patching), with any appended tokens.
        kwargs["mu"] = resolution_mu(settings.shift, shape.tokens + appended)
    scheduler.set_timesteps(**kwargs)
    if not torch.isfinite(torch.as_tensor(scheduler.sigmas)).all():
        # e.g. one step with a `shift_terminal` scheduler: diffusers stretches σ by 0/0 (the pipeline gets NaN too)
        raise UserError(
            f"{steps} sampling step(s) give NaN noise levels with {type(scheduler).__name__} (shift_terminal "
            f"{scheduler.config.get('shift_terminal')}); use more steps (--steps 2 or more)"
        )
    if hasattr(scheduler, "set_begin_index"):  # as the pipelines do: step i is index i, even with repeats
        scheduler.set_begin_index(0)
    return scheduler.timesteps, scheduler.sigmas
