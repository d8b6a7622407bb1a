"""`ltxc verify`'s reference side: the pipeline on the very same modules, its call arguments, its static helpers,
and one hooked run that records what its transformer got and gave at the first step.

Nothing here knows a model: the reference class, its components and its call arguments are matched by name.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from attrs import define, field, frozen

from ltxc.commands.verify_report import Check, compare, parameters
from ltxc.errors import UserError
from ltxc.normalise import MeanStd
from ltxc.plan import Plan

DEFAULT_TOLERANCE = 1e-4
# Call arguments the comparison cannot run without; the rest are passed when the pipeline takes them.
REQUIRED_CALL = ("prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "generator")


def build_reference(pipeline_class: type, components: Mapping[str, Any]) -> Any:
    """The reference pipeline on the very same component objects, passed by their role names."""
    kwargs = {}
    roles = list(components)  # not `name in components`: a Mapping's `in` would build (load) the component
    for name, param in parameters(pipeline_class.__init__).items():
        if name in roles:
            try:
                kwargs[name] = components[name]
            except OSError as exc:  # weights not downloaded, no network, a wrong path: say which component
                raise UserError(f"cannot load the spec's {name!r} component: {exc}") from None
        elif param.default is inspect.Parameter.empty:
            raise UserError(
                f"the reference {pipeline_class.__name__} needs a {name!r} component, which the spec lacks "
                f"(it has {', '.join(roles)}); add [components.{name}]"
            )
    return pipeline_class(**kwargs)


def reference_call(
    pipeline_class: type,
    plan: Plan,
    prompt: str,
    frames: int,
    height: int,
    width: int,
    steps: int,
    guidance: float,
    where: str = "[model]",
    more_names: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The pipeline's call arguments for the same run, matched to its signature by name; notes on what it lacks.

    `plan.reference_args` are the spec's (a task's view adds the task's, which may read `more_names`, e.g. its
    condition's `reference.downscale`); `where` names their section in errors.
    """
    s = plan.sampler
    fps = int(s.fps) if float(s.fps).is_integer() else s.fps
    wanted: dict[str, Any] = {
        "prompt": [prompt],
        "negative_prompt": s.negative_prompt,
        "num_frames": frames,
        "height": height,
        "width": width,
        "frame_rate": fps,
        "fps": fps,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "guidance_rescale": s.guidance_rescale,
        "generator": None,  # a fresh one per run, see _run_reference
        "decode_timestep": s.decode_timestep,
        "decode_noise_scale": s.decode_noise_scale,
        "max_sequence_length": s.max_sequence_length or plan.text.max_length,
    }
    # the spec's own mapping for settings the reference takes under other names (a stream's guidance, ...)
    names = {"guidance": guidance, "guidance_rescale": s.guidance_rescale, "steps": steps, "fps": fps}
    names.update({p.name: p.scale for p in plan.perturbations})
    names.update(
        {f"{n}.guidance": st.guidance if st.guidance is not None else guidance for n, st in plan.streams.items()}
    )
    names.update({f"input.{n}": entry.sample for n, entry in plan.inputs.items()})
    names.update(more_names or {})
    extra = {key: expr(names) for key, expr in plan.reference_args.items()}
    accepted = parameters(pipeline_class.__call__)
    unknown = [key for key in extra if key not in accepted]
    if unknown:
        raise UserError(
            f"{where} reference_args names {', '.join(unknown)}, which {pipeline_class.__name__}.__call__ does not take"
        )
    wanted.update(extra)
    # an image model's pipeline (one frame per sample) takes no frame count
    images = plan.geometry.frame_rule.largest == 1
    missing = [name for name in REQUIRED_CALL if name not in accepted and not (images and name == "num_frames")]
    if missing:
        raise UserError(f"the reference {pipeline_class.__name__} takes no {', '.join(missing)}: it cannot be compared")
    kwargs = {name: value for name, value in wanted.items() if name in accepted}
    # settings the reference cannot take, named only where the spec sets them to something
    unused = [
        name
        for name, value in wanted.items()
        if name not in accepted and name not in ("fps", "frame_rate") and value not in (None, 0, 0.0, "")
    ]
    notes = [f"the reference takes no {', '.join(unused)}"] if unused else []
    if "frame_rate" not in accepted and "fps" not in accepted:
        notes.append("the reference takes no frame rate")
    return kwargs, notes


def helper_checks(
    pipeline_class: type, plan: Plan, components: Mapping[str, Any], tolerance: float = DEFAULT_TOLERANCE
) -> list[Check]:
    """Packing and normalisation against the pipeline's own static helpers, where it has them."""
    g = plan.geometry
    pt, ph, pw = g.patch
    f, h, w = 2 * pt, 3 * ph, 4 * pw  # a small non-square grid that every patch divides
    gen = torch.Generator().manual_seed(0)
    grid = torch.randn(2, g.latent_channels, f, h, w, generator=gen)
    tokens = torch.randn(g.pack(grid).shape, generator=gen)
    normaliser = plan.normaliser(components)
    names: dict[str, Any] = {"num_frames": f // pt, "height": h // ph, "width": w // pw, "patch_size_t": pt}
    if ph == pw:
        names["patch_size"] = ph
    if isinstance(normaliser, MeanStd):
        names.update(latents_mean=normaliser.mean, latents_std=normaliser.std, scaling_factor=normaliser.scaling_factor)
    cases: list[tuple[str, str, torch.Tensor, Callable[[], torch.Tensor]]] = [
        ("pack", "_pack_latents", grid, lambda: g.pack(grid)),
        ("unpack", "_unpack_latents", tokens, lambda: g.unpack(tokens, f, h, w)),
        ("normalise", "_normalize_latents", grid, lambda: normaliser.normalise(grid)),
        ("denormalise", "_denormalize_latents", grid, lambda: normaliser.denormalise(grid)),
    ]
    checks = []
    for name, helper, latents, ours in cases:
        function = inspect.getattr_static(pipeline_class, helper, None)
        if not isinstance(function, staticmethod):
            checks.append(Check(name, None, True, f"skipped: {pipeline_class.__name__} has no static {helper}"))
            continue
        kwargs: dict[str, Any] = {}
        unknown = []
        for param_name, param in list(parameters(function.__func__).items())[1:]:  # the first is the latents
            if param_name in names:
                kwargs[param_name] = names[param_name]
            elif param.default is inspect.Parameter.empty:
                unknown.append(param_name)
        if unknown:
            checks.append(Check(name, None, True, f"skipped: ltxc cannot supply {helper}'s {', '.join(unknown)}"))
            continue
        theirs = function.__func__(latents, **kwargs)
        checks.append(compare(name, ours(), theirs, tolerance, f"{pipeline_class.__name__}.{helper}"))
    return checks


@frozen(eq=False)
class Call:
    """One transformer call of the reference: the keyword inputs verify reads, and every output."""

    inputs: dict[str, torch.Tensor]
    outputs: tuple[torch.Tensor, ...]


@define(eq=False)
class ReferenceRun:
    """What the reference produced and, when it has step callbacks, what its transformer saw at the first step."""

    frames: torch.Tensor  # [B, F, H, W, 3] in [0, 1]
    latents: torch.Tensor  # final, in the pipeline's layout
    step1: torch.Tensor | None = None  # the latents after the first scheduler step
    calls: list[Call] = field(factory=list)  # the first step's transformer calls, in call order
    next_inputs: dict[str, torch.Tensor] | None = None  # the second step's first call
    sigmas: torch.Tensor | None = None
    timesteps: torch.Tensor | None = None
    audio: torch.Tensor | None = None  # the output's decoded sound (float32), when it hands one out
    sound_latents: torch.Tensor | None = None  # what the decoded stream's VAE `decode` got (`sound_role`'s)


@define(eq=False)
class _Recorder:
    """A forward hook on the transformer: every call of step 0, then the first call's inputs of step 1."""

    keywords: frozenset[str]
    run: ReferenceRun
    step: int = 0

    def __call__(self, _module: Any, _args: Any, kwargs: dict[str, Any], output: Any) -> None:
        if self.step == 0:
            self.run.calls.append(Call(self._inputs(kwargs), _outputs(output)))
        elif self.step == 1 and self.run.next_inputs is None:
            self.run.next_inputs = self._inputs(kwargs)

    def _inputs(self, kwargs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in kwargs.items() if k in self.keywords and torch.is_tensor(v)}


def _outputs(output: Any) -> tuple[torch.Tensor, ...]:
    values = output.to_tuple() if hasattr(output, "to_tuple") else output
    values = values if isinstance(values, (tuple, list)) else (values,)
    # every position kept, so `[transformer] output` and a stream's `output` index it as they index the model's
    return tuple(v.detach().clone() if torch.is_tensor(v) else torch.empty(0) for v in values)


def run_reference(
    pipeline: Any,
    kwargs: dict[str, Any],
    seed: int,
    transformer: torch.nn.Module,
    keywords: frozenset[str],
    sound_vae: Any = None,
) -> ReferenceRun:
    """Run the reference once (twice without step callbacks); record the first step's transformer calls, and
    what `sound_vae` (the decoded stream's VAE, when the spec decodes one) got to decode."""
    if sound_vae is None:
        return _run_reference(pipeline, kwargs, seed, transformer, keywords)
    got: list[torch.Tensor] = []
    original = sound_vae.decode

    def decode(z: torch.Tensor, *args: Any, **more: Any) -> Any:
        got.append(z.detach().to("cpu", copy=True))
        return original(z, *args, **more)

    sound_vae.decode = decode  # an instance attribute over the method, for this run only
    try:
        run = _run_reference(pipeline, kwargs, seed, transformer, keywords)
    finally:
        del sound_vae.decode
    run.sound_latents = got[-1] if got else None
    return run


def _run_reference(
    pipeline: Any, kwargs: dict[str, Any], seed: int, transformer: torch.nn.Module, keywords: frozenset[str]
) -> ReferenceRun:
    accepted = parameters(type(pipeline).__call__)
    kwargs = {**kwargs, "generator": torch.Generator().manual_seed(seed)}
    if "callback_on_step_end" not in accepted:  # a second run for the latents: the same seed, the same trajectory
        output = pipeline(**kwargs, output_type="np")
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        latents = pipeline(**kwargs, output_type="latent").frames
        return ReferenceRun(_frames(output), latents.float().cpu(), audio=_audio(output))
    run = ReferenceRun(torch.empty(0), torch.empty(0))
    recorder = _Recorder(keywords, run)
    captured: dict[str, torch.Tensor] = {}

    def capture(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        captured["latents"] = tensors["latents"].detach().clone()
        if step == 0:
            run.step1 = captured["latents"].float().cpu()
        recorder.step = step + 1
        return tensors

    handle = transformer.register_forward_hook(recorder, with_kwargs=True)
    try:
        output = pipeline(
            **kwargs, output_type="np", callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"]
        )
    finally:
        handle.remove()
    scheduler = getattr(pipeline, "scheduler", None)
    run.sigmas, run.timesteps = (_tensor(getattr(scheduler, name, None)) for name in ("sigmas", "timesteps"))
    run.frames, run.latents = _frames(output), captured["latents"].float().cpu()
    run.audio = _audio(output)
    return run


def _audio(output: Any) -> torch.Tensor | None:
    """The output's sound (e.g. LTX2PipelineOutput.audio), float32 on the CPU; None when it has none."""
    audio = getattr(output, "audio", None)
    if audio is None:
        return None
    return audio.detach().float().cpu() if torch.is_tensor(audio) else torch.from_numpy(np.asarray(audio)).float()


def _frames(output: Any) -> torch.Tensor:
    """The output's frames [B, F, H, W, 3]; an image pipeline's images [B, H, W, 3] as one frame each."""
    frames = getattr(output, "frames", None)
    if frames is None:
        return torch.from_numpy(np.asarray(output.images)).float().unsqueeze(1)
    return torch.from_numpy(np.asarray(frames)).float()


def _tensor(value: Any) -> torch.Tensor | None:
    """A scheduler's sigmas or timesteps as a CPU tensor of their own (a later set_timesteps cannot change it)."""
    if value is None:
        return None
    return value.detach().to("cpu", copy=True) if torch.is_tensor(value) else torch.as_tensor(np.asarray(value))
