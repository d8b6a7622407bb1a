"""The sampler's stream decode: a jointly sampled stream's final latents -> a waveform, by `[streams.<name>.decode]`.

As the reference pipeline decodes its audio after the loop: the packed tokens denormalised (x * std + mean, the
statistics cast to the latents' dtype), unpacked by the spec's expression, cast to the VAE's dtype, the VAE's
`decode`, then the vocoder. Nothing here knows a model: the roles, the statistics and the unpack are the spec's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from ltxc.plan import CompiledStream, Plan, _read


@frozen(eq=False)
class Sound:
    """A stream decoded to sound."""

    stream: str
    latents: Tensor  # as the VAE's decode takes them (denormalised, unpacked, in its dtype)
    waveform: Tensor  # [B, channels, samples] float32, on the CPU
    sample_rate: int


def decoded_stream(plan: Plan) -> CompiledStream | None:
    """The first jointly sampled stream (in name order) whose spec says how to decode it, else None."""
    streams = [plan.streams[name] for name in sorted(plan.streams)]
    return next((s for s in streams if s.sample == "joint" and s.decode is not None and s.unpack is not None), None)


def decode_sound(
    plan: Plan, components: Mapping[str, Any], final: Mapping[str, Tensor], role_dtype: Callable[[str], torch.dtype]
) -> Sound | None:
    """The decoded stream's final packed latents -> its waveform; None when the spec declares no stream decode."""
    stream = decoded_stream(plan)
    if stream is None or stream.name not in final:
        return None
    spec, x = stream.decode, final[stream.name]
    assert spec is not None and stream.unpack is not None  # decoded_stream checked both
    mean, std = (_statistic(ref, components, x) for ref in (spec.mean, spec.std))
    z = stream.unpack({"x": denormalise(x, mean, std)})
    z = z.to(role_dtype(spec.vae))
    mel = components[spec.vae].to(x.device).decode(z, return_dict=False)[0]
    waveform = components[spec.vocoder].to(x.device)(mel)
    rate = int(_read(spec.sample_rate, components))
    return Sound(stream.name, z, waveform.float().cpu(), rate)


def denormalise(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Packed normalised tokens -> the VAE's latent values, as the reference pipeline orders it: x * std + mean."""
    return (x * std) + mean


def _statistic(ref: Any, components: Mapping[str, Any], like: Tensor) -> Tensor:
    """A statistic (a component's buffer or a list of numbers) in `like`'s dtype and device, as the pipeline casts
    its statistics to the latents'."""
    raw = _read(ref, components)
    value = raw if isinstance(raw, Tensor) else torch.tensor(list(raw), dtype=torch.float32)
    return value.to(like.device, like.dtype)
