"""The sampler: prompts -> video, through the same compiled call mapping the adapter uses in training.

Each step mirrors the spec's reference pipeline, so `ltxc verify` can hold the two equal, bit for bit in float32
and bf16: the initial noise is drawn with diffusers' `randn_tensor` from `torch.Generator().manual_seed(seed)`
and kept in the transformer's layout from then on (packed once, unpacked once before the decode, so the CFG
batch is a contiguous `cat` of packed latents and a batch-1 pass a strided view, as in the pipelines); the
scheduler gets the spec's σ rule and shift; CFG runs batched or as separate passes in the spec's order, guided
in float32 or the model's dtype; the decode runs the spec's ordered steps, its noise drawn from the same
generator after the initial noise.
"""

from __future__ import annotations

import copy
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from attrs import frozen
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from tqdm import tqdm

from ltxc.adapter import Adapter
from ltxc.components import module_dtype
from ltxc.errors import UserError
from ltxc.flow import resolution_mu
from ltxc.geometry import LatentShape
from ltxc.guidance import Guide, Step, Text, cfg_passes
from ltxc.plan import VIDEO, Plan
from ltxc.processor import Processor
from ltxc.spec.types import ResolutionShiftSpec

# Called with (stage name, tensor) at each stage of one sampler call, when given (see `Sampler.__call__`).
Trace = Callable[[str, Tensor], None]


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


@frozen
class _Run:
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


class Sampler:
    """Generates videos from prompts with a plan's components (and optionally another transformer)."""

    def __init__(
        self,
        plan: Plan,
        components: Mapping[str, Any],
        device: str | torch.device = "cpu",
        transformer: torch.nn.Module | None = None,
        compute_dtype: torch.dtype | None = None,
        trace: Trace | None = None,
    ) -> None:
        self.plan = plan
        self.settings = plan.sampler
        self.device = torch.device(device)
        self.components = components
        self.adapter = Adapter(plan)
        # The preprocessing text path, at the sampler's sequence length (the spec defaults it to text.max_length).
        self.processor = Processor(plan, components, self.device, max_length=plan.sampler.max_sequence_length)
        self._transformer = transformer
        self._normaliser: Any = None
        # prompts encoded ahead (a batch's prompts -> its text, as `_encode` returns it): used instead of the
        # text encoder, so a caller can encode once and free it (training's validation does)
        self.encoded: dict[tuple[str, ...], dict[str, Tensor]] = {}
        self.role_dtypes: dict[str, torch.dtype] = {}  # roles' dtypes read ahead (their modules may be freed)
        # the dtype the transformer's inputs are cast to; unset: `[sampler] input_dtype`'s component's dtype
        self.compute_dtype = compute_dtype
        self.trace = trace

    @property
    def transformer(self) -> torch.nn.Module:
        """The transformer given at construction, else the spec's (moved to the device on first use)."""
        if self._transformer is None:
            self._transformer = self.components[self.plan.transformer_role].to(self.device)
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
        trace: Trace | None = None,
    ) -> Generation:
        """Generate one video per prompt; every unset argument comes from the spec's `[sampler]`.

        `trace` (else the constructor's) is called with each stage's tensor: `text.<name>` and
        `negative_text.<name>` (as the transformer gets them), `sigmas`, `timesteps`, `noise.<stream>`, at the first
        step `prediction.<stream>.<role>` (role: uncond, cond or a perturbation's name; float32) and
        `step1.<stream>`, then `final.<stream>` and `frames`; latents in the transformer's layout.
        """
        prompts = _prompt_list(prompts)
        run = self._resolve(negative_prompt, frames, height, width, fps, steps, guidance, guidance_rescale)
        trace = trace or self.trace
        text, negative = self._prompt_text(prompts, run.negative)
        dtype = self.compute_dtype or self._role_dtype(self.plan.input_role)
        if trace is not None:
            for prefix, tensors in (("text", text), ("negative_text", negative or {})):
                for name, value in tensors.items():
                    trace(f"{prefix}.{name}", value.to(dtype) if value.is_floating_point() else value)
        generator = torch.Generator().manual_seed(seed)  # CPU: the same noise on every device
        noise = self._video_noise(len(prompts), run.shape, generator)
        timesteps, sigmas = self._schedule(run.steps, run.shape)
        latents = {VIDEO: self.plan.geometry.pack(noise)}  # the transformer's layout until the decode
        latents.update(self._stream_noise(latents[VIDEO], run.shape, sigmas, text, run.fps, generator))
        _emit(trace, {"sigmas": sigmas, "timesteps": timesteps, **_named("noise", latents)})
        final = self._denoise(latents, text, negative, timesteps, sigmas, run, dtype, progress, trace)
        _emit(trace, _named("final", final))
        grid = self.plan.geometry.unpack(final[VIDEO], run.shape.frames, run.shape.height, run.shape.width)
        video = self._decode(grid, generator) if decode else None
        if video is not None:
            _emit(trace, {"frames": video})
        return Generation(
            latents=grid.float().cpu(),
            video=video,
            seed=seed,
            prompts=tuple(prompts),
            negative_prompt=run.negative,
            frames=run.frames,
            height=run.height,
            width=run.width,
            fps=run.fps,
            steps=run.steps,
            guidance=run.guidance,
        )

    def _resolve(
        self,
        negative_prompt: str | None,
        frames: int | None,
        height: int | None,
        width: int | None,
        fps: float | None,
        steps: int | None,
        guidance: float | None,
        guidance_rescale: float | None,
    ) -> _Run:
        """One call's settings: each argument given, else the spec's `[sampler]` default."""
        s = self.settings
        frames, height, width = (
            size_or_default(frames, s.frames, "frames"),
            size_or_default(height, s.height, "height"),
            size_or_default(width, s.width, "width"),
        )
        shape = self.plan.geometry.latent_shape(frames, height, width)  # a clear ShapeError, never a silent floor
        steps = s.steps if steps is None else steps
        if steps < 1:
            raise UserError(f"steps must be at least 1, got {steps}")
        guidance = float(s.guidance if guidance is None else guidance)
        # as the pipelines decide it: the negative branch runs when any jointly sampled stream is guided
        joint = [st for st in self.plan.streams.values() if st.sample == "joint"]
        cfg = guidance > 1.0 or any((st.guidance if st.guidance is not None else guidance) > 1.0 for st in joint)
        return _Run(
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
        )

    def _prompt_text(self, prompts: list[str], negative: str | None) -> tuple[Text, Text | None]:
        """(the prompts' text, the negative prompt's text once per prompt when CFG runs, else None)."""
        text = self._encode(prompts)
        return text, None if negative is None else self._encode([negative] * len(prompts))

    def _role_dtype(self, role: str) -> torch.dtype:
        """The dtype a component computes in, as diffusers' `ModelMixin.dtype` answers it."""
        if role in self.role_dtypes:
            return self.role_dtypes[role]
        return module_dtype(self.transformer if role == self.plan.transformer_role else self.components[role])

    def _video_noise(self, batch: int, shape: LatentShape, generator: torch.Generator) -> Tensor:
        """The video's initial noise [B, C, F', H', W'], the first draw from the generator."""
        size = (batch, shape.channels, shape.frames, shape.height, shape.width)
        return randn_tensor(size, generator=generator, device=self.device, dtype=torch.float32)

    def _stream_noise(
        self,
        latents: Tensor,
        shape: LatentShape,
        sigmas: Tensor,
        text: Mapping[str, Tensor],
        fps: float,
        generator: torch.Generator,
    ) -> dict[str, Tensor]:
        """The initial noise of every jointly sampled stream (e.g. audio), drawn in name order, packed."""
        batch = latents.shape[0]
        grid = (shape.frames, shape.height, shape.width)
        probe = self.adapter.environment(latents, sigmas[:1].expand(batch), text, fps, training=False, grid=grid)
        streams: dict[str, Tensor] = {}
        for name in sorted(self.plan.streams):
            stream = self.plan.streams[name]
            if stream.sample != "joint":
                continue
            noise_shape = (batch, *self.adapter.noise_shape(name, probe))
            noise = randn_tensor(noise_shape, generator=generator, device=self.device, dtype=torch.float32)
            streams[name] = stream.pack({"x": noise})
        return streams

    def _denoise(
        self,
        latents: dict[str, Tensor],
        text: Text,
        negative: Text | None,
        timesteps: Tensor,
        sigmas: Tensor,
        run: _Run,
        dtype: torch.dtype,
        progress: bool,
        trace: Trace | None,
    ) -> dict[str, Tensor]:
        """The denoising loop over the video and the joint streams (transformer layout); their final latents."""
        # each joint stream is stepped by its own copy of the scheduler, as the reference pipelines do
        schedulers = {name: self.scheduler if name == VIDEO else copy.deepcopy(self.scheduler) for name in latents}
        transformer = self.transformer
        guide = Guide(self.plan, run.guidance, run.rescale, run.cfg)
        passes = cfg_passes(text, negative, self.settings.cfg, self.settings.cfg_order)
        grid = (run.shape.frames, run.shape.height, run.shape.width)
        was_training = transformer.training
        transformer.eval()  # a live training model may come in training mode; it goes back to it below
        bar = tqdm(total=len(timesteps), desc="sample", unit="step", file=sys.stderr, disable=not progress)
        try:
            for i, t in enumerate(timesteps):
                step = Step(self.adapter, transformer, latents, sigmas[i], t, run.fps, dtype, grid)
                predictions = step.predictions(passes, text, guide, self.settings.guidance_dtype)
                if trace is not None and i == 0:
                    for role, values in predictions.items():
                        _emit(trace, {f"prediction.{n}.{role}": v.float() for n, v in values.items()})
                latents = {  # the video first, then the streams in name order
                    name: schedulers[name].step(
                        guide.combine({role: p[name] for role, p in predictions.items()}, x, sigmas[i], name),
                        t,
                        x,
                        return_dict=False,
                    )[0]
                    for name, x in latents.items()
                }
                if i == 0:
                    _emit(trace, _named("step1", latents))
                bar.update()
        finally:
            bar.close()
            transformer.train(was_training)
        return latents

    def _encode(self, prompts: list[str]) -> dict[str, Tensor]:
        if tuple(prompts) in self.encoded:
            return {name: t.to(self.device) for name, t in self.encoded[tuple(prompts)].items()}
        return {name: t.to(self.device) for name, t in self.processor.transformer_text(prompts).items()}

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
        """Normalised latents -> frames [B, F, H, W, 3] in [0, 1], by `[sampler] decode`'s steps in order."""
        vae = self.processor.vae
        conditioned = _config_flag(vae, "timestep_conditioning")
        z, timestep = latents, None
        for step in self.plan.decode:
            if step == "denormalise":
                z = self.normaliser.denormalise(z)
            elif step == "noise":
                if conditioned:
                    z, timestep = self._decode_noise(z, generator)
            else:  # "cast:<role>"
                z = z.to(self._role_dtype(step.removeprefix("cast:")))
        if conditioned and timestep is None:
            raise UserError("the VAE is timestep-conditioned, but [sampler] decode has no 'noise' step")
        video = vae.decode(z, timestep, return_dict=False)[0] if conditioned else vae.decode(z, return_dict=False)[0]
        # [B, 3, F, H, W] in [-1, 1] -> [B, F, H, W, 3] in [0, 1], clamped before the float cast like diffusers
        return (video * 0.5 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1).float().cpu()

    def _decode_noise(self, z: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(z mixed with the decode noise, the decode timestep), both in z's dtype, as the reference pipelines."""
        s, batch = self.settings, z.shape[0]
        # Drawn after the initial noise from the same generator, as the reference pipeline draws it.
        noise = randn_tensor(z.shape, generator=generator, device=z.device, dtype=z.dtype)
        scale = s.decode_timestep if s.decode_noise_scale is None else s.decode_noise_scale
        timestep = torch.tensor([s.decode_timestep] * batch, device=z.device, dtype=z.dtype)
        scale_t = torch.tensor([scale] * batch, device=z.device, dtype=z.dtype)[:, None, None, None, None]
        return (1 - scale_t) * z + scale_t * noise, timestep


def _named(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{name}": value for name, value in tensors.items()}


def _emit(trace: Trace | None, tensors: Mapping[str, Tensor]) -> None:
    """Hand each stage's tensor to the trace, when there is one."""
    if trace is not None:
        for name, value in tensors.items():
            trace(name, value)


def _prompt_list(prompts: Sequence[str]) -> list[str]:
    """The prompts as a list (a lone string is one prompt); an error when there are none."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise UserError("no prompts to generate from")
    return list(prompts)


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
