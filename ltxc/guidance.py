"""Guidance: one denoising step's predictions -> the guided velocity, as the spec's `[sampler]` says.

CFG on [uncond; cond] predictions, the perturbation terms (`[[sampler.perturbations]]`), rescaling, each in
velocity or clean-latent (x0) space, with a stream's own guidance scale where it sets one.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from ltxc.plan import VIDEO, Plan


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
        guidance = self.stream_guidance.get(stream, self.guidance)
        if self.space == "velocity":
            if self.cfg:
                uncond, cond = prediction.chunk(2)
                guided = uncond + guidance * (cond - uncond)
            else:
                cond = guided = prediction
            for name, value in perturbed.items():
                guided = guided + self.weights[name] * (cond - value)
            return _rescale(guided, cond, self.rescale) if (self.cfg and self.rescale > 0) else guided
        # "x0": every prediction becomes clean latents x - σ·v, the terms are deltas from the conditional one
        to_x0 = lambda v: sample - v * sigma  # noqa: E731
        if self.cfg:
            uncond, cond = (to_x0(v) for v in prediction.chunk(2))
            guided = cond + (guidance - 1) * (cond - uncond)
        else:
            cond = guided = to_x0(prediction)
        for name, value in perturbed.items():
            guided = guided + self.weights[name] * (cond - to_x0(value))
        if self.rescale > 0:
            guided = _rescale(guided, cond, self.rescale)
        return (sample - guided) / sigma


def _rescale(guided: Tensor, cond: Tensor, factor: float) -> Tensor:
    """Pull the guided prediction's std towards the conditional one's (arXiv 2305.08891, section 3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided
