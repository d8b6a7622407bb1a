"""The adapter: a cached batch + noise level -> the transformer's keyword arguments, and back.

The same compiled `[transformer.call]` mapping serves training and sampling, so the two can never see
different RoPE scaling, timestep scale or packing. The names it may read differ in only two places, both
stated in the spec: `timestep` (the scheduler's own when sampling) and `training`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ltxc.conditions import TokenConditions, no_conditions
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.spec.expr import Expr

Text = Mapping[str, torch.Tensor]

# The names `Adapter.environment` gives every call expression. Besides these it gives the geometry numbers,
# `text.<name>` for each text tensor and `<stream>.latents` / `.joint` / `.sigma` for each stream; the compiler
# checks expressions against exactly this vocabulary (`ltxc.compiler.call_names`). Each `[inputs.<name>]` entry adds
# `input.<name>`: float32 [B] filled with its training or sampling value.
CALL_NAMES = frozenset(
    {
        "latents",
        "sigma",
        "timestep",
        "training",
        "latent.frames",
        "latent.height",
        "latent.width",
        "pixel.frames",
        "pixel.height",
        "pixel.width",
        "fps",
        "batch_size",
        # a task's conditions (zeros / 0 when none): 1 on conditioned tokens, the appended reference's latent grid
        "condition.mask",
        "reference.frames",
        "reference.height",
        "reference.width",
        "reference.downscale",
    }
)


class Adapter:
    """Builds transformer inputs from latents [B, C, F, H, W], σ [B] and text; unpacks the predictions."""

    def __init__(self, plan: Plan, inputs: Mapping[str, float] | None = None) -> None:
        self.plan = plan
        self.geometry = plan.geometry
        # `[inputs]` values that replace the spec's in every call (the run config's for training, generate's flags)
        self.inputs = checked_inputs(plan, inputs)

    def input_values(self, training: bool, inputs: Mapping[str, float] | None = None) -> dict[str, float]:
        """Each `[inputs]` entry's value: `inputs` (a call's), else the adapter's, else the spec's train or sample."""
        spec = {name: (entry.train if training else entry.sample) for name, entry in self.plan.inputs.items()}
        return {**spec, **self.inputs, **checked_inputs(self.plan, inputs)}

    def environment(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text: Text,
        fps: float,
        *,
        timestep: torch.Tensor | None = None,
        streams: Mapping[str, torch.Tensor] | None = None,
        training: bool = True,
        compute_dtype: torch.dtype | None = None,
        grid: tuple[int, int, int] | None = None,
        conditions: TokenConditions | None = None,
        stream_sigmas: Mapping[str, torch.Tensor] | None = None,
        inputs: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """The names a call expression may read, for this batch.

        `latents` are [B, C, F, H, W], or already in the transformer's layout when `grid` gives their latent
        (frames, height, width), as the sampler keeps them (with any appended condition tokens after the
        target's). `timestep` defaults to the spec's `[flow] timestep` of σ; a stream not given gets its zero
        dummy; `conditions` (none: text-to-video) give `condition.mask` and `reference.*`, repeated to the batch;
        `<stream>.sigma` is the stream's own σ [B] from `stream_sigmas` (joint training, independent σ), else σ.
        `input.<name>` is float32 [B]: `inputs`' value, else the adapter's, else the spec's (training's or sampling's).
        """
        b = latents.shape[0]
        f, h, w = grid if grid is not None else latents.shape[2:]
        if compute_dtype is not None:  # σ stays float32: a bf16 timestep rounds 512..1024 to steps of 4
            latents = latents.to(compute_dtype)
            text = {k: v.to(compute_dtype) if v.is_floating_point() else v for k, v in text.items()}
        sigma = sigma.to(torch.float32)
        if timestep is None:
            timestep = self.plan.timestep({**self.plan.constants, "sigma": sigma})
        s = self.geometry.spatial_compression
        env: dict[str, Any] = {
            **self.plan.constants,
            "latents": latents if grid is not None else self.geometry.pack(latents),
            "sigma": sigma,
            "timestep": timestep,
            "training": training,
            **{f"text.{name}": text.get(name) for name in self.plan.text_names},
            "latent.frames": f,
            "latent.height": h,
            "latent.width": w,
            "pixel.frames": self.geometry.pixel_frames(f),
            "pixel.height": h * s,
            "pixel.width": w * s,
            "fps": float(fps),
            "batch_size": b,
        }
        env.update(_condition_names(conditions, env["latents"], b))
        for name, value in self.input_values(training, inputs).items():
            env[f"input.{name}"] = torch.full((b,), float(value), dtype=torch.float32, device=latents.device)
        given = streams or {}
        for name in self.plan.streams:
            value = given.get(name)
            env[f"{name}.joint"] = value is not None  # denoised alongside the video, not a dummy
            if value is None:
                value = self.dummy_stream(name, env, latents)
            env[f"{name}.latents"] = value.to(latents.dtype)
            own = (stream_sigmas or {}).get(name)
            env[f"{name}.sigma"] = sigma if own is None else own.to(sigma.device, torch.float32)
        return env

    def dummy_stream(self, name: str, env: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor:
        """The zero input a stream gets in training, in the transformer's layout."""
        stream = self.plan.streams[name]
        shape = [int(n) for n in stream.dummy(env)]
        zeros = torch.zeros((env["batch_size"], *shape), dtype=like.dtype, device=like.device)
        return stream.pack({"x": zeros})

    def noise_shape(self, name: str, env: Mapping[str, Any]) -> list[int]:
        """A stream's per-sample noise shape when it is sampled jointly."""
        return [int(n) for n in self.plan.streams[name].noise(env)]

    def model_kwargs(
        self,
        env: Mapping[str, Any],
        overrides: Mapping[str, Expr] | None = None,
        call: Mapping[str, Expr] | None = None,
    ) -> dict[str, Any]:
        """Evaluate the call mapping (`call`, e.g. a task's, else the spec's; with a perturbation's overrides)."""
        calls = {**(self.plan.call if call is None else call), **(overrides or {})}
        return {key: expr(env) for key, expr in calls.items()}

    def outputs(
        self,
        transformer: torch.nn.Module,
        env: Mapping[str, Any],
        overrides: Mapping[str, Expr] | None = None,
        call: Mapping[str, Expr] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the transformer: (video prediction float32 [B, C, F, H, W], {stream: prediction float32})."""
        video, streams = self.raw_outputs(transformer, env, overrides, call)
        f, h, w = env["latent.frames"], env["latent.height"], env["latent.width"]
        streams = {name: value.to(torch.float32) for name, value in streams.items()}
        return self.geometry.unpack(video, f, h, w).to(torch.float32), streams

    def raw_outputs(
        self,
        transformer: torch.nn.Module,
        env: Mapping[str, Any],
        overrides: Mapping[str, Expr] | None = None,
        call: Mapping[str, Expr] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run the transformer: its predictions as it returns them (layout and dtype), the video's and each stream's."""
        return self.run(transformer, self.model_kwargs(env, overrides, call))

    def run(
        self, transformer: torch.nn.Module, kwargs: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The transformer on evaluated keyword arguments: (video prediction, {stream: prediction}), as returned."""
        result = transformer(**kwargs, return_dict=False)
        return result[self.plan.transformer_output], {name: result[s.output] for name, s in self.plan.streams.items()}

    def predict(
        self,
        transformer: torch.nn.Module,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        text: Text,
        fps: float,
        compute_dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        """Training's call: the video prediction as float32 [B, C, F, H, W] (streams get their dummies)."""
        env = self.environment(latents, sigma, text, fps, compute_dtype=compute_dtype)
        return self.outputs(transformer, env)[0]


def checked_inputs(plan: Plan, inputs: Mapping[str, float] | None) -> dict[str, float]:
    """`inputs` as floats; a UserError naming the spec's `[inputs]` for a name it lacks."""
    unknown = sorted(set(inputs or {}) - set(plan.inputs))
    if unknown:
        have = ", ".join(sorted(plan.inputs)) or "none"
        raise UserError(f"spec {plan.name!r} has no input {', '.join(map(repr, unknown))} (its [inputs]: {have})")
    return {name: float(value) for name, value in (inputs or {}).items()}


def _condition_names(conditions: TokenConditions | None, packed: torch.Tensor, batch: int) -> dict[str, Any]:
    """`condition.mask` and `reference.*` for a pass on `batch` samples of `packed` latents."""
    if conditions is None:
        tokens = packed.shape[1] if packed.ndim == 3 else math.prod(packed.shape[2:])
        conditions = no_conditions(batch, tokens, packed.device)
    conditions = conditions.repeated(batch)
    f, h, w = conditions.reference_grid
    return {
        "condition.mask": conditions.mask.to(packed.device),
        "reference.frames": f,
        "reference.height": h,
        "reference.width": w,
        "reference.downscale": conditions.downscale,
    }


def dropout_decisions(generators: list[torch.Generator], probability: float) -> torch.Tensor:
    """One independent coin per sample (bool [B]): True where the caption is dropped."""
    return torch.tensor([torch.rand((), generator=g).item() < probability for g in generators], dtype=torch.bool)


def cfg_dropout(text: Text, null: Text, drop: torch.Tensor) -> dict[str, torch.Tensor]:
    """Replace every text tensor of the samples where `drop` [B] is true by the cached null conditioning.

    Per sample, with the same "no text" the sampler uses for the negative branch — not one coin flip for
    the batch, and not zeroed embeddings.
    """
    keep = ~drop.to(torch.bool)
    out = {}
    for name, tensor in text.items():
        shape = (-1,) + (1,) * (tensor.ndim - 1)
        keep_here = keep.to(tensor.device).view(shape)
        out[name] = torch.where(keep_here, tensor, null[name].to(tensor).expand_as(tensor))
    return out
