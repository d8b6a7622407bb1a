"""The sampler: prompts -> video, through the same compiled call mapping the adapter uses in training.

Each step mirrors the spec's reference pipeline, so `ltxc verify` can hold the two equal: the initial noise
is drawn with diffusers' `randn_tensor` from `torch.Generator().manual_seed(seed)`, the scheduler gets the
spec's σ rule and shift, CFG runs the negative branch first in one batch, and the decode noise comes from
the same generator after the initial noise.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from attrs import frozen
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm import tqdm

from ltxc.adapter import Adapter
from ltxc.errors import UserError
from ltxc.flow import resolution_mu
from ltxc.geometry import LatentShape
from ltxc.plan import Plan
from ltxc.processor import Processor
from ltxc.spec.types import ResolutionShiftSpec


@frozen(eq=False)
class Generation:
    """What one sampler call returns."""

    latents: Tensor  # final normalised latents [B, C, F', H', W'], float32, on the CPU
    video: Tensor | None  # decoded frames [B, F, H, W, 3], float32 in [0, 1], on the CPU; None with decode=False
    seed: int
    prompts: tuple[str, ...]
    negative_prompt: str | None  # None when guidance <= 1 (no negative branch ran)
    frames: int
    height: int
    width: int
    fps: float
    steps: int
    guidance: float


class Sampler:
    """Generates videos from prompts with a plan's components (and optionally another transformer)."""

    def __init__(
        self,
        plan: Plan,
        components: Mapping[str, Any],
        device: str | torch.device = "cpu",
        transformer: torch.nn.Module | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> None:
        self.plan = plan
        self.settings = plan.spec.sampler
        self.device = torch.device(device)
        self.components = components
        self.adapter = Adapter(plan)
        # The preprocessing text path, at the sampler's sequence length (the spec defaults it to text.max_length).
        self.processor = Processor(_text_plan(plan), components, self.device)
        self._transformer = transformer
        self._normaliser: Any = None
        self.compute_dtype = compute_dtype

    @property
    def transformer(self) -> torch.nn.Module:
        """The transformer given at construction, else the spec's (moved to the device on first use)."""
        if self._transformer is None:
            self._transformer = self.components[self.plan.spec.transformer.component].to(self.device)
        return self._transformer

    @property
    def scheduler(self) -> Any:
        """The spec's scheduler component."""
        return self.components[self.settings.scheduler]

    @property
    def normaliser(self) -> Any:
        """The spec's latent normaliser."""
        if self._normaliser is None:
            self._normaliser = self.plan.normaliser(self.components)
        return self._normaliser

    @torch.no_grad()
    def __call__(
        self,
        prompts: Sequence[str],
        *,
        negative_prompt: str | None = None,
        frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        fps: float | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        guidance_rescale: float | None = None,
        seed: int = 0,
        decode: bool = True,
        progress: bool = False,
    ) -> Generation:
        """Generate one video per prompt; every unset argument comes from the spec's `[sampler]`."""
        s = self.settings
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise UserError("no prompts to generate from")
        frames, height, width = (
            size_or_default(frames, s.frames, "frames"),
            size_or_default(height, s.height, "height"),
            size_or_default(width, s.width, "width"),
        )
        shape = self.plan.geometry.latent_shape(frames, height, width)  # a clear ShapeError, never a silent floor
        fps = float(s.fps if fps is None else fps)
        steps = s.steps if steps is None else steps
        if steps < 1:
            raise UserError(f"steps must be at least 1, got {steps}")
        guidance = float(s.guidance if guidance is None else guidance)
        rescale = float(s.guidance_rescale if guidance_rescale is None else guidance_rescale)
        # as the pipelines decide it: the negative branch runs when any jointly sampled stream is guided
        joint = [st for st in self.plan.streams.values() if st.sample == "joint"]
        cfg = guidance > 1.0 or any((st.guidance if st.guidance is not None else guidance) > 1.0 for st in joint)
        negative = (s.negative_prompt if negative_prompt is None else negative_prompt) if cfg else None

        batch = len(prompts)
        text = self._encode(list(prompts))
        if negative is not None:  # one batch, negative branch first, as the reference pipelines run it
            negative_text = self._encode([negative] * batch)
            both = {name: torch.cat([negative_text[name], text[name]]) for name in text}
        else:
            both = text

        generator = torch.Generator().manual_seed(seed)  # CPU: the same noise on every device
        latents = randn_tensor(
            (batch, shape.channels, shape.frames, shape.height, shape.width),
            generator=generator,
            device=self.device,
            dtype=torch.float32,
        )
        timesteps, sigmas = self._schedule(steps, shape)
        # other streams (e.g. audio) sampled jointly: noise drawn after the video's, in name order, each
        # stepped by its own copy of the scheduler as the reference pipelines do
        probe = self.adapter.environment(latents, sigmas[:1].expand(batch), text, fps, training=False)
        streams: dict[str, Tensor] = {}
        stream_schedulers: dict[str, Any] = {}
        for name in sorted(self.plan.streams):
            spec = self.plan.streams[name]
            if spec.sample != "joint":
                continue
            noise_shape = (batch, *self.adapter.noise_shape(name, probe))
            noise = randn_tensor(noise_shape, generator=generator, device=self.device, dtype=torch.float32)
            streams[name] = spec.pack({"x": noise})
            stream_schedulers[name] = copy.deepcopy(self.scheduler)

        transformer, scheduler = self.transformer, self.scheduler
        # the pipelines cast latents and text to the model's dtype; a sharded model computes in its
        # mixed-precision dtype, which its (fp32 master) parameters don't show, so the runner passes it
        dtype = self.compute_dtype or next(transformer.parameters()).dtype
        guide = _Guide(self.plan, guidance, rescale, cfg)
        was_training = transformer.training
        transformer.eval()  # a live training model may come in training mode; it goes back to it below
        bar = tqdm(total=len(timesteps), desc="sample", unit="step", file=sys.stderr, disable=not progress)
        try:
            for i, t in enumerate(timesteps):
                current = {"": latents, **streams}  # "" is the video; the rest are joint streams
                step = _Step(self.adapter, transformer, current, sigmas[i], t, fps, dtype)
                predictions = step.run(both, 2) if cfg else step.run(text, 1)  # [negative; positive] in one batch
                # each perturbation: the positive prompt once more, with its call overrides
                perturbed = {term.name: step.run(text, 1, term.call) for term in guide.active_terms}
                for name, x in current.items():
                    terms = {term: values[name] for term, values in perturbed.items()}
                    guided = guide(predictions[name], terms, x, sigmas[i], name)
                    step_scheduler = scheduler if name == "" else stream_schedulers[name]
                    stepped = step_scheduler.step(guided, t, x, return_dict=False)[0]
                    if name == "":
                        latents = stepped
                    else:
                        streams[name] = stepped
                bar.update()
        finally:
            bar.close()
            transformer.train(was_training)

        video = self._decode(latents, generator) if decode else None
        return Generation(
            latents=latents.float().cpu(),
            video=video,
            seed=seed,
            prompts=tuple(prompts),
            negative_prompt=negative,
            frames=frames,
            height=height,
            width=width,
            fps=fps,
            steps=steps,
            guidance=guidance,
        )

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        return {name: t.to(self.device) for name, t in self.processor.conditioning(prompts).items()}

    def _schedule(self, steps: int, shape: LatentShape) -> tuple[Tensor, Tensor]:
        """Set the scheduler's timesteps with the spec's σ rule and shift; return (timesteps, σ)."""
        s, scheduler = self.settings, self.scheduler
        accepted = inspect.signature(scheduler.set_timesteps).parameters
        kwargs: dict[str, Any] = {"device": self.device}
        if s.sigmas == "linspace":
            if "sigmas" not in accepted:
                raise UserError(f"[sampler] sigmas = 'linspace', but {type(scheduler).__name__} takes no custom sigmas")
            kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps)
        else:
            kwargs["num_inference_steps"] = steps
        if isinstance(s.shift, ResolutionShiftSpec):
            # The latent grid's size, as the pipelines count it (before patching).
            kwargs["mu"] = resolution_mu(s.shift, shape.frames * shape.height * shape.width)
        scheduler.set_timesteps(**kwargs)
        if hasattr(scheduler, "set_begin_index"):  # as the pipelines do: step i is index i, even with repeats
            scheduler.set_begin_index(0)
        return scheduler.timesteps, scheduler.sigmas

    def _decode(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        """Normalised latents -> frames [B, F, H, W, 3] in [0, 1] (timestep-conditioned when the VAE is)."""
        vae = self.processor.vae
        z = self.normaliser.denormalise(latents).to(vae.dtype)
        s = self.settings
        if _config_flag(vae, "timestep_conditioning"):
            batch = z.shape[0]
            # Drawn after the initial noise from the same generator, as the reference pipeline draws it.
            noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            scale = s.decode_timestep if s.decode_noise_scale is None else s.decode_noise_scale
            timestep = torch.tensor([s.decode_timestep] * batch, device=z.device, dtype=z.dtype)
            scale_t = torch.tensor([scale] * batch, device=z.device, dtype=z.dtype)[:, None, None, None, None]
            z = (1 - scale_t) * z + scale_t * noise
            video = vae.decode(z, timestep, return_dict=False)[0]
        else:
            video = vae.decode(z, return_dict=False)[0]
        # [B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] in [0, 1], clamped before the float cast like diffusers
        return (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).float().cpu()


@frozen(eq=False)
class _Step:
    """One denoising step's transformer passes: the current latents of the video ("") and the joint streams."""

    adapter: Adapter
    transformer: torch.nn.Module
    current: dict[str, Tensor]
    sigma: Tensor
    timestep: Tensor
    fps: float
    dtype: torch.dtype

    def run(self, text: dict[str, Tensor], copies: int, overrides: Any = None) -> dict[str, Tensor]:
        """One pass on `copies` stacked copies of the current latents (text already stacked to match)."""
        inputs = {name: torch.cat([x] * copies) for name, x in self.current.items()}
        size = next(iter(inputs.values())).shape[0]
        # σ and the scheduler's own timestep: the call mapping picks what the model takes
        env = self.adapter.environment(
            inputs.pop(""),
            self.sigma.expand(size),
            text,
            self.fps,
            timestep=self.timestep.expand(size),
            streams=inputs,
            training=False,
            compute_dtype=self.dtype,
        )
        video, others = self.adapter.outputs(self.transformer, env, overrides)
        return {"": video, **{name: others[name] for name in inputs}}


class _Guide:
    """Combines one step's predictions as the spec's `[sampler]` says: CFG and perturbation terms."""

    def __init__(self, plan: Plan, guidance: float, rescale: float, cfg: bool) -> None:
        self.space = plan.spec.sampler.guidance_space
        self.guidance, self.rescale, self.cfg = guidance, rescale, cfg
        self.weights = {p.name: float(p.weight({"scale": p.scale})) for p in plan.perturbations}
        self.active_terms = [p for p in plan.perturbations if self.weights[p.name] != 0]
        self.stream_guidance = {n: s.guidance for n, s in plan.streams.items() if s.guidance is not None}

    def __call__(
        self, prediction: Tensor, perturbed: Mapping[str, Tensor], sample: Tensor, sigma: Tensor, stream: str = ""
    ) -> Tensor:
        """The guided velocity for one stream ("" is the video); `prediction` is [uncond; cond] when CFG runs."""
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


def size_or_default(value: int | None, default: int | None, name: str) -> int:
    """`value`, else the spec's default; a clear error when neither is set."""
    if value is None:
        value = default
    if value is None:
        raise UserError(f"no {name} given and the spec's [sampler] has no default {name}")
    return int(value)


def _config_flag(module: Any, key: str) -> bool:
    """A boolean from a module's config (a diffusers FrozenDict or a transformers config); False if absent."""
    config = getattr(module, "config", None)
    value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
    return bool(value)


def _rescale(guided: Tensor, cond: Tensor, factor: float) -> Tensor:
    """Pull the guided prediction's std towards the conditional one's (arXiv 2305.08891, section 3.4)."""
    dims = list(range(1, cond.ndim))
    rescaled = guided * (cond.std(dim=dims, keepdim=True) / guided.std(dim=dims, keepdim=True))
    return factor * rescaled + (1 - factor) * guided


def _text_plan(plan: Plan) -> Plan:
    """`plan` with the text length set to `[sampler] max_sequence_length` when that is given."""
    length = plan.spec.sampler.max_sequence_length
    if length is None or length == plan.spec.text.max_length:
        return plan
    text = attrs.evolve(plan.spec.text, max_length=length)
    return attrs.evolve(plan, spec=attrs.evolve(plan.spec, text=text))
