"""The sampler: prompts -> video, through the same compiled call mapping the adapter uses in training.

Each step mirrors the spec's reference pipeline, so `ltxc verify` can hold the two equal, bit for bit in float32
and bf16: the initial noise is drawn with diffusers' `randn_tensor` from `torch.Generator().manual_seed(seed)`
and kept in the transformer's layout from then on (packed once, unpacked once before the decode, so the CFG
batch is a contiguous `cat` of packed latents and a batch-1 pass a strided view, as in the pipelines), in float32
or the dtype `[sampler] latent_dtype` names (a float32 draw cast to bf16 equals a bf16 draw); the
scheduler gets the spec's σ rule and shift; CFG runs batched or as separate passes in the spec's order, guided
in float32 or the model's dtype; the decode runs the spec's ordered steps, its noise drawn from the same
generator after the initial noise (`latent_decode`). An image conditions the run with the spec's task that takes one
(`[tasks.<name>]`): its clean latents are encoded and mixed in before the first step and kept through every step
(`condition_sampling`), through the task's call mapping; a reference video, with the task that takes a video, adds
its clean tokens after the target's (`appended_sampling`).
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from attrs import field, frozen
from torch import Tensor
from tqdm import tqdm

from ltxc.adapter import Adapter
from ltxc.appended_sampling import appended_condition, start_appended
from ltxc.components import module_dtype
from ltxc.condition_sampling import (
    SamplingConditions,
    advance,
    check_image,
    check_task,
    clean_latents,
    condition_for,
    start_latents,
)
from ltxc.errors import UserError
from ltxc.geometry import LatentShape
from ltxc.guidance import Guide, Step, Text, cfg_passes, input_recorder, traced_keywords
from ltxc.initial_noise import stream_noise, video_noise
from ltxc.latent_decode import decode_latents
from ltxc.plan import VIDEO, CompiledCondition, Plan
from ltxc.processor import Processor
from ltxc.sampling_args import prompt_list, size_or_default
from ltxc.sampling_run import SamplingRun, resolve_run
from ltxc.schedule import set_schedule
from ltxc.stream_decode import Sound, decode_sound

__all__ = ["Generation", "Sampler", "Trace", "size_or_default"]

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
    task: str | None = None  # the conditioned task that ran (e.g. the one taking an image), None for text-to-video
    # with decode=False: the final latents as the decode takes them (their dtype, on the CPU) and the generator's
    # state where the decode's draws begin, so `decode_latents` can run later, elsewhere, with the same noise
    undecoded: Tensor | None = None
    decode_state: Tensor | None = None
    audio: Tensor | None = None  # the decoded stream's waveform [B, channels, samples] float32 on the CPU, or None
    sample_rate: int | None = None  # its rate (Hz); None without a waveform
    inputs: dict[str, float] = field(factory=dict)  # each `[inputs]` value the transformer got (given or the spec's)
    undecoded_streams: dict[str, Tensor] | None = None  # with decode=False: the joint streams' final latents (CPU)


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
        sound: bool = True,
    ) -> None:
        self.plan = plan
        self.sound = sound  # decode the spec's sound stream (`stream_decode`) when a call decodes
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
        image: Tensor | None = None,
        task: str | None = None,
        reference: Tensor | None = None,
        reference_strength: float = 1.0,
        inputs: Mapping[str, float] | None = None,
    ) -> Generation:
        """Generate one video per prompt; every unset argument comes from the spec's `[sampler]`.

        `image`: pixels [B or 1, 3, H, W] float32 in [-1, 1] at the generation size (a still, or a video's first
        frame; `condition_sampling.image_pixels` makes them from uint8 RGB): the run is the spec's task that takes
        an image (`task` names it when several do), its condition's tokens clean at every step.

        `reference`: pixels [B or 1, 3, F, H / d, W / d] float32 in [-1, 1] (F frames at the generation size / d,
        d the condition's `downscale`; `appended_sampling.video_pixels` makes them): the spec's task that takes a
        video, its tokens after the target's at mask `reference_strength` (1: clean, timestep 0, every step).

        `trace` (else the constructor's) is called with each stage's tensor: `text.<name>` and
        `negative_text.<name>` (as the transformer gets them), `sigmas`, `timesteps`, `noise.<stream>` (the initial
        latents: the noise, with a task's clean tokens in place), at the first step `input.<keyword>.<role>` (each
        keyword whose call expression reads σ, the timestep or a task's condition names, as the transformer gets
        it), `prediction.<stream>.<role>` (role: uncond, cond or a perturbation's name; float32) and
        `step1.<stream>`, then `final.<stream>` and `frames`; latents in the transformer's layout (appended tokens
        included, but not in `final`). `inputs` replace `[inputs]` sampling values (e.g. a distilled guidance).
        """
        prompts = prompt_list(prompts)
        run = self._resolve(negative_prompt, frames, height, width, fps, steps, guidance, guidance_rescale, inputs)
        trace = trace or self.trace
        text, negative = self._prompt_text(prompts, run.negative)
        dtype = self.compute_dtype or self._role_dtype(self.plan.input_role)
        _emit_text(trace, text, negative, dtype)
        generator = torch.Generator().manual_seed(seed)  # CPU: the same noise on every device
        given = {kind: value for kind, value in (("image", image), ("video", reference)) if value is not None}
        latents, conditions = self._start(len(prompts), run, given, task, dtype, generator, reference_strength)
        latents[VIDEO] = latents[VIDEO].to(self._latent_dtype())  # drawn in float32: equal to a draw in this dtype
        appended = 0 if conditions is None else conditions.appended_cells  # a resolution shift counts them
        timesteps, sigmas = self._schedule(run.steps, run.shape, appended)
        packed = conditions is not None and conditions.task.noise == "packed"
        latents.update(stream_noise(self.adapter, latents[VIDEO], run.shape, sigmas, text, run.fps, generator, packed))
        _emit(trace, {"sigmas": sigmas, "timesteps": timesteps, **_named("noise", latents)})
        final = self._denoise(latents, text, negative, timesteps, sigmas, run, dtype, progress, trace, conditions)
        if conditions is not None:
            final[VIDEO] = conditions.target(final[VIDEO])
        _emit(trace, _named("final", final))
        grid = self.plan.geometry.unpack(final[VIDEO], run.shape.frames, run.shape.height, run.shape.width)
        video, sound = self._decode_all(grid, final, generator, trace) if decode else (None, None)
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
            task=None if conditions is None else conditions.task.name,
            undecoded=None if decode else grid.cpu(), decode_state=None if decode else generator.get_state(),
            undecoded_streams=None if decode else {name: x.cpu() for name, x in final.items() if name != VIDEO},
            audio=None if sound is None else sound.waveform,
            sample_rate=None if sound is None else sound.sample_rate,
            inputs=self.adapter.input_values(False, run.inputs),
        )  # fmt: skip

    def _resolve(self, *settings: Any) -> SamplingRun:
        """`sampling_run.resolve_run` on this sampler's plan: the call's settings in its order, each given or else the
        spec's `[sampler]` default."""
        return resolve_run(self.plan, *settings)

    def _prompt_text(self, prompts: list[str], negative: str | None) -> tuple[Text, Text | None]:
        """(the prompts' text, the negative prompt's text once per prompt when CFG runs, else None)."""
        text = self._encode(prompts)
        return text, None if negative is None else self._encode([negative] * len(prompts))

    def _latent_dtype(self) -> torch.dtype:
        """The dtype the latents keep through the loop: `[sampler] latent_dtype`'s role's, else float32."""
        role = self.plan.latent_role
        return torch.float32 if role is None else self._role_dtype(role)

    def _role_dtype(self, role: str) -> torch.dtype:
        """The dtype a component computes in, as diffusers' `ModelMixin.dtype` answers it."""
        if role in self.role_dtypes:
            return self.role_dtypes[role]
        return module_dtype(self.transformer if role == self.plan.transformer_role else self.components[role])

    def _start(
        self,
        batch: int,
        run: SamplingRun,
        inputs: Mapping[str, Tensor],
        task: str | None,
        dtype: torch.dtype,
        generator: torch.Generator,
        strength: float = 1.0,
    ) -> tuple[dict[str, Tensor], SamplingConditions | None]:
        """The video's initial latents in the transformer's layout (a task's clean tokens in place or appended) and
        the task's conditions (None for text-to-video). An input is encoded before the noise is drawn, as the
        pipelines do."""
        if not inputs:
            if task is not None:
                raise UserError(f"task {task!r} conditions on an input: give an image or a reference video")
            return {VIDEO: self.plan.geometry.pack(video_noise(batch, run.shape, generator, self.device))}, None
        kind = "video" if "video" in inputs else "image"
        chosen = self.plan.task(task) if task is not None else self.plan.task_for(kind)
        check_task(chosen, inputs, self.plan.geometry.layout)
        if (appended := appended_condition(chosen)) is not None:
            encode = lambda pixels: self._clean(appended, pixels, dtype, generator)  # noqa: E731
            size = (run.frames, run.height, run.width)
            return start_appended(self.plan.geometry, chosen, appended, inputs["video"], encode, size, batch,
                                  run.shape.tokens, generator, self.device, strength)  # fmt: skip
        check_image(inputs["image"], batch, run.height, run.width)
        condition = condition_for(chosen, "image")
        clean = {condition.name: self._clean(condition, inputs["image"].unsqueeze(2), dtype, generator)}
        noise = video_noise(batch, run.shape, generator, self.device)
        packed, conditions = start_latents(self.plan.geometry, chosen, clean, noise)
        return {VIDEO: packed}, conditions

    def _clean(
        self, condition: CompiledCondition, pixels: Tensor, dtype: torch.dtype, generator: torch.Generator
    ) -> Tensor:
        """A condition's input [B, 3, F, H, W] -> its clean latents, normalised with the condition's own normaliser
        (the pipelines normalise an input without the VAE's scaling factor)."""
        normaliser = self.plan.normaliser(self.components, spec=condition.normalise)
        return clean_latents(self.processor.vae, pixels, condition, dtype, normaliser, generator)

    def _denoise(
        self,
        latents: dict[str, Tensor],
        text: Text,
        negative: Text | None,
        timesteps: Tensor,
        sigmas: Tensor,
        run: SamplingRun,
        dtype: torch.dtype,
        progress: bool,
        trace: Trace | None,
        conditions: SamplingConditions | None = None,
    ) -> dict[str, Tensor]:
        """The denoising loop over the video and the joint streams (transformer layout); their final latents."""
        # each joint stream is stepped by its own copy of the scheduler, as the reference pipelines do
        schedulers = {name: self.scheduler if name == VIDEO else copy.deepcopy(self.scheduler) for name in latents}
        transformer = self.transformer
        guide = Guide(self.plan, run.guidance, run.rescale, run.cfg)
        passes = cfg_passes(text, negative, self.settings.cfg, self.settings.cfg_order)
        grid = (run.shape.frames, run.shape.height, run.shape.width)
        call = self.plan.call if conditions is None else conditions.call
        tokens = None if conditions is None else conditions.tokens
        blend = None if conditions is None else conditions.x0_hook
        was_training = transformer.training
        transformer.eval()  # a live training model may come in training mode; it goes back to it below
        bar = tqdm(total=len(timesteps), desc="sample", unit="step", file=sys.stderr, disable=not progress)
        try:
            for i, t in enumerate(timesteps):
                record = input_recorder(trace, traced_keywords(call)) if trace is not None and i == 0 else None
                step = Step(self.adapter, transformer, latents, sigmas[i], t, run.fps, dtype, grid,
                            conditions=tokens, call=call, record=record, inputs=run.inputs)  # fmt: skip
                predictions = step.predictions(passes, text, guide, self.settings.guidance_dtype)
                if trace is not None and i == 0:
                    for role, values in predictions.items():
                        _emit(trace, {f"prediction.{n}.{role}": v.float() for n, v in values.items()})
                latents = {  # the video first, then the streams in name order; a task's blend and held tokens
                    name: advance(schedulers[name], t, guide.combine({role: p[name] for role, p in predictions.items()},
                                  x, sigmas[i], name, blend if name == VIDEO else None), x,
                                  conditions if name == VIDEO else None)
                    for name, x in latents.items()
                }  # fmt: skip
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

    def _schedule(self, steps: int, shape: LatentShape, appended: int = 0) -> tuple[Tensor, Tensor]:
        """Set the scheduler's timesteps with the spec's σ rule and shift (a resolution shift counting `appended`
        tokens of a task's appended condition too); return (timesteps, σ)."""
        return set_schedule(self.settings, self.scheduler, steps, shape, self.device, appended)

    def _decode_all(
        self, grid: Tensor, final: Mapping[str, Tensor], generator: torch.Generator, trace: Trace | None
    ) -> tuple[Tensor, Sound | None]:
        """The frames, then the spec's sound (when it decodes one and `sound` is on); traced as `frames` and
        `decode.<stream>` (the latents as the sound VAE's decode takes them)."""
        video = self._decode(grid, generator)
        sound = decode_sound(self.plan, self.components, final, self._role_dtype) if self.sound else None
        _emit(trace, {"frames": video, **({} if sound is None else {f"decode.{sound.stream}": sound.latents})})
        return video, sound

    def _decode(self, latents: Tensor, generator: torch.Generator) -> Tensor:
        """Normalised latents -> frames [B, F, H, W, 3] in [0, 1], by `[sampler] decode`'s steps in order."""
        return decode_latents(self.plan, self.processor.vae, self.normaliser, latents, generator, self._role_dtype)


def _named(prefix: str, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{name}": value for name, value in tensors.items()}


def _emit_text(trace: Trace | None, text: Text, negative: Text | None, dtype: torch.dtype) -> None:
    """Trace the prompts' and the negative prompt's text tensors as the transformer gets them (in `dtype`)."""
    for prefix, tensors in (("text", text), ("negative_text", negative or {})):
        _emit(trace, {f"{prefix}.{n}": v.to(dtype) if v.is_floating_point() else v for n, v in tensors.items()})


def _emit(trace: Trace | None, tensors: Mapping[str, Tensor]) -> None:
    """Hand each stage's tensor to the trace, when there is one."""
    if trace is not None:
        for name, value in tensors.items():
            trace(name, value)
