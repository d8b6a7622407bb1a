"""Guidance: one denoising step's transformer passes by role, and their predictions -> the guided velocity.

The passes: the CFG branches batched or separate in the spec's order (`[sampler] cfg`, `cfg_order`), then each
perturbation (`[[sampler.perturbations]]`). The combination: CFG, the perturbation terms and rescaling, each in
velocity or clean-latent (x0) space, with a stream's own guidance scale where it sets one, in float32 or the
model's dtype (`[sampler] guidance_dtype`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from ltxc.adapter import Adapter
from ltxc.conditions import TokenConditions
from ltxc.plan import VIDEO, Plan
from ltxc.spec.expr import Expr

Text = dict[str, Tensor]
# Called with (the roles of a pass's batch, in order; the transformer's evaluated keyword arguments) before it runs.
InputRecorder = Callable[[tuple[str, ...], Mapping[str, Any]], None]
# The call names that carry a step's noise level: a keyword whose expression reads one is traced as `input.<keyword>`.
NOISE_LEVEL = frozenset({"sigma", "timestep"})
# The call names a task's conditions set: a keyword whose expression reads one is traced too (e.g. the positions of
# appended tokens).
CONDITION_NAMES = frozenset(
    {"condition.mask", "reference.frames", "reference.height", "reference.width", "reference.downscale"}
)


class Guide:
    """Combines one step's predictions as the spec's `[sampler]` says: CFG and perturbation terms."""

    def __init__(self, plan: Plan, guidance: float, rescale: float, cfg: bool) -> None:
        self.space = plan.sampler.guidance_space
        self.guidance, self.rescale, self.cfg = guidance, rescale, cfg
        self.weights = {p.name: float(p.weight({"scale": p.scale})) for p in plan.perturbations}
        self.active_terms = [p for p in plan.perturbations if self.weights[p.name] != 0]
        self.stream_guidance = {n: s.guidance for n, s in plan.streams.items() if s.guidance is not None}

    def __call__(
        self, prediction: Tensor, perturbed: Mapping[str, Tensor], sample: Tensor, sigma: Tensor, stream: str = VIDEO
    ) -> Tensor:
        """The guided velocity for one stream (or the video); `prediction` is [uncond; cond] when CFG runs."""
        roles = dict(zip(("uncond", "cond"), prediction.chunk(2), strict=True)) if self.cfg else {"cond": prediction}
        return self.combine({**roles, **perturbed}, sample, sigma, stream)

    def combine(
        self,
        predictions: Mapping[str, Tensor],
        sample: Tensor,
        sigma: Tensor,
        stream: str = VIDEO,
        x0_hook: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The guided velocity from the predictions by role: `cond`, `uncond` (when CFG runs), each active term's given.

        Computed in the predictions' dtype (float32, or the model's under `[sampler] guidance_dtype = "model"`).
        `x0_hook` (a task's blend with its clean latents) maps the guided clean-latent prediction x - σ·v before it
        becomes a velocity again.
        """
        guided = self._guided(predictions, sample, sigma, stream)
        if x0_hook is None:
            return guided if self.space == "velocity" else (sample - guided) / sigma
        x0 = guided if self.space == "x0" else sample - guided * sigma
        return (sample - x0_hook(x0)) / sigma

    def _guided(self, predictions: Mapping[str, Tensor], sample: Tensor, sigma: Tensor, stream: str) -> Tensor:
        """The guided prediction in the guidance space: a velocity, or clean latents (x0)."""
        guidance = self.stream_guidance.get(stream, self.guidance)
        cond = predictions["cond"]
        perturbed = {t.name: predictions[t.name] for t in self.active_terms if t.name in predictions}
        if self.space == "velocity":
            guided = predictions["uncond"] + guidance * (cond - predictions["uncond"]) if self.cfg else cond
            for name, value in perturbed.items():
                guided = guided + self.weights[name] * (cond - value)
            return _rescale(guided, cond, self.rescale) if (self.cfg and self.rescale > 0) else guided
        # "x0": every prediction becomes clean latents x - σ·v, the terms are deltas from the conditional one
        to_x0 = lambda v: sample - v * sigma  # noqa: E731
        guided = cond_x0 = to_x0(cond)
        if self.cfg:
            guided = cond_x0 + (guidance - 1) * (cond_x0 - to_x0(predictions["uncond"]))
        for name, value in perturbed.items():
            guided = guided + self.weights[name] * (cond_x0 - to_x0(value))
        if self.rescale > 0:
            guided = _rescale(guided, cond_x0, self.rescale)
        return guided


def cfg_passes(
    text: Text, negative: Text | None, mode: str, order: Sequence[str]
) -> list[tuple[tuple[str, ...], Text]]:
    """The CFG branches' passes: (the roles in its batch, its text), as `[sampler] cfg` and `cfg_order` say."""
    if negative is None:
        return [(("cond",), text)]
    by_role = {"cond": text, "uncond": negative}
    if mode == "separate":
        return [((role,), by_role[role]) for role in order]
    return [(tuple(order), {name: torch.cat([by_role[role][name] for role in order]) for name in text})]


@frozen(eq=False)
class Step:
    """One denoising step's transformer passes on the current latents (transformer layout) of every stream."""

    adapter: Adapter
    transformer: torch.nn.Module
    current: dict[str, Tensor]
    sigma: Tensor
    timestep: Tensor
    fps: float
    dtype: torch.dtype
    grid: tuple[int, int, int]  # the video's latent frames, height, width
    conditions: TokenConditions | None = None  # a task's conditioned tokens (none: text-to-video)
    call: Mapping[str, Expr] | None = None  # the call mapping (a task's), else the spec's
    record: InputRecorder | None = None  # sees each pass's keyword arguments (verify's trace)
    inputs: Mapping[str, float] | None = None  # `[inputs]` values given for this call (the rest: the spec's)

    def predictions(
        self, passes: list[tuple[tuple[str, ...], Text]], text: Text, guide: Guide, guidance_dtype: str
    ) -> dict[str, dict[str, Tensor]]:
        """{role: {stream: prediction}}: each CFG pass (split by role), then each active perturbation in spec order.

        Float32 under `guidance_dtype = "float32"`, else as the transformer returns them.
        """
        roles: dict[str, dict[str, Tensor]] = {}
        for names, pass_text in passes:
            out = self.run(pass_text, len(names), roles=names)
            for k, role in enumerate(names):
                roles[role] = {n: v.chunk(len(names))[k] if len(names) > 1 else v for n, v in out.items()}
        # each perturbation: the positive prompt once more, with its call overrides
        roles.update({term.name: self.run(text, 1, term.call, (term.name,)) for term in guide.active_terms})
        if guidance_dtype == "float32":
            roles = {role: {n: v.float() for n, v in values.items()} for role, values in roles.items()}
        return roles

    def run(self, text: Text, copies: int, overrides: Any = None, roles: tuple[str, ...] = ()) -> dict[str, Tensor]:
        """One pass on `copies` stacked copies of the current latents (text already stacked to match)."""
        # a batch of copies is a contiguous `cat` of the packed latents; one copy is the latents as they are
        inputs = {name: torch.cat([x] * copies) if copies > 1 else x for name, x in self.current.items()}
        size = next(iter(inputs.values())).shape[0]
        # σ and the scheduler's own timestep: the call mapping picks what the model takes
        env = self.adapter.environment(
            inputs.pop(VIDEO),
            self.sigma.expand(size),
            text,
            self.fps,
            timestep=self.timestep.expand(size),
            streams=inputs,
            training=False,
            compute_dtype=self.dtype,
            grid=self.grid,
            conditions=self.conditions,  # repeated to the pass's batch as `cat`s, as the pipelines repeat the mask
            inputs=self.inputs,
        )
        kwargs = self.adapter.model_kwargs(env, overrides, self.call)
        if self.record is not None:
            self.record(roles, kwargs)
        video, others = self.adapter.run(self.transformer, kwargs)
        return {VIDEO: video, **{name: others[name] for name in inputs}}


def _rescale(guided: Tensor, cond: Tensor, factor: float) -> Tensor:
    """Pull the guided prediction's std towards the conditional one's (arXiv 2305.08891, section 3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


def noise_level_keywords(call: Mapping[str, Expr]) -> list[str]:
    """The transformer keywords whose call expression reads the step's noise level (σ or the timestep), in order."""
    return [key for key, expr in call.items() if expr.names & NOISE_LEVEL]


def traced_keywords(call: Mapping[str, Expr]) -> list[str]:
    """The keywords traced as `input.<keyword>`: those reading the noise level, a task's condition names or an
    `[inputs]` value (`input.<name>`)."""
    return [key for key, expr in call.items() if expr.names & (NOISE_LEVEL | CONDITION_NAMES) or _reads_input(expr)]


def _reads_input(expr: Expr) -> bool:
    return any(name.startswith("input.") for name in expr.names)


def input_recorder(trace: Callable[[str, Tensor], None], keywords: Sequence[str]) -> InputRecorder:
    """Trace each pass's noise-level inputs as `input.<keyword>.<role>` (a batched pass split by role)."""

    def record(roles: tuple[str, ...], kwargs: Mapping[str, Any]) -> None:
        for key in keywords:
            value = kwargs.get(key)
            if not torch.is_tensor(value):
                continue
            split = len(roles) > 1 and value.ndim > 0 and value.shape[0] % len(roles) == 0
            for role, part in zip(roles, value.chunk(len(roles)) if split else [value] * len(roles), strict=True):
                trace(f"input.{key}.{role}", part)

    return record
