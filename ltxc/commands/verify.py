"""`ltxc verify`: prove a spec equal to its reference diffusers pipeline on the very same modules.

Both run with the same seed, prompt and size; the final latents and the decoded frames must agree within
a tolerance. The pipeline's own packing and normalisation helpers, where it has them, are checked against
the spec's geometry and normaliser too. Nothing here knows a model: the reference class, its components
and its call arguments are matched by name.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from attrs import frozen

from ltxc.compiler import compile_spec
from ltxc.components import resolve_class
from ltxc.document import Loaded
from ltxc.errors import UserError
from ltxc.normalise import MeanStd
from ltxc.plan import Plan
from ltxc.sampler import Sampler, size_or_default

DEFAULT_PROMPT = "a red ball bounces across a wooden floor, soft daylight"
DEFAULT_TOLERANCE = 1e-4
# Call arguments the comparison cannot run without; the rest are passed when the pipeline takes them.
REQUIRED_CALL = ("prompt", "height", "width", "num_frames", "num_inference_steps", "guidance_scale", "generator")


@frozen
class Check:
    """One comparison: its max |Δ| (None when skipped), whether it passed, and what it compared."""

    name: str
    max_abs: float | None
    ok: bool
    note: str = ""


@frozen
class Report:
    """Every check of one `verify` run."""

    title: str
    checks: tuple[Check, ...]
    notes: tuple[str, ...]
    tolerance: float

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(check.ok for check in self.checks)

    def format(self) -> str:
        """The lines `ltxc verify` prints."""
        lines = [self.title]
        for check in self.checks:
            value = "skipped" if check.max_abs is None else f"max |Δ| = {check.max_abs:.3e}"
            status = "ok" if check.ok else "FAIL"
            lines.append(f"  {check.name:<12} {value:<22} {status:<5} {check.note}".rstrip())
        lines += [f"  note: {note}" for note in self.notes]
        verdict = "PASS" if self.ok else "FAIL"
        lines.append(f"{verdict}: tolerance {self.tolerance:.0e} on every difference")
        return "\n".join(lines)


def verify(
    plan: Plan,
    *,
    prompt: str = DEFAULT_PROMPT,
    frames: int | None = None,
    height: int | None = None,
    width: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str | torch.device = "cpu",
) -> Report:
    """Run ltxc's sampler and the spec's reference pipeline on the same components; compare them."""
    s = plan.sampler
    if not plan.reference:
        raise UserError(f'spec {plan.name!r} names no reference pipeline: add [model] reference = "diffusers:Class"')
    from diffusers import DiffusionPipeline

    pipeline_class = resolve_class(plan.reference, DiffusionPipeline)
    components = plan.components()
    pipeline = build_reference(pipeline_class, components).to(device)
    pipeline.set_progress_bar_config(disable=True)
    checks = helper_checks(pipeline_class, plan, components, tolerance)

    steps = s.steps if steps is None else steps
    guidance = s.guidance if guidance is None else guidance
    frames, height, width = (
        size_or_default(frames, s.frames, "frames"),
        size_or_default(height, s.height, "height"),
        size_or_default(width, s.width, "width"),
    )
    plan.geometry.check(frames, height, width)  # a clear size error before anything runs
    # the reference's arguments first: a spec naming one it does not take fails before any sampling
    kwargs, notes = reference_call(pipeline_class, plan, prompt, frames, height, width, steps, guidance)
    sampler = Sampler(plan, components, device)
    started = time.perf_counter()
    with _components_must_fit("ltxc's sampler"):
        ours = sampler([prompt], frames=frames, height=height, width=width, steps=steps, guidance=guidance, seed=seed)
    ours_s = time.perf_counter() - started

    started = time.perf_counter()
    with _components_must_fit(f"the reference {pipeline_class.__name__}"):
        their_frames, their_latents = _run_reference(pipeline, kwargs, seed)
    theirs_s = time.perf_counter() - started
    notes.append(f"time: ltxc {ours_s:.2f} s, reference {theirs_s:.2f} s")

    our_latents = plan.geometry.pack(ours.latents)  # the layout the pipeline keeps its latents in
    checks += [
        _compare("latents", our_latents, their_latents, tolerance, "final latents, transformer layout"),
        _compare("frames", ours.video, their_frames, tolerance, "decoded frames in [0, 1]"),
    ]
    size = f"{ours.frames}x{ours.height}x{ours.width}"
    title = (
        f"verify {plan.name} against {plan.reference}: {size} (frames x height x width), {steps} steps, "
        f"guidance {guidance:g}, seed {seed}, {torch.device(device)}"
    )
    return Report(title, tuple(checks), tuple(notes), tolerance)


def build_reference(pipeline_class: type, components: Mapping[str, Any]) -> Any:
    """The reference pipeline on the very same component objects, passed by their role names."""
    kwargs = {}
    roles = list(components)  # not `name in components`: a Mapping's `in` would build (load) the component
    for name, param in _parameters(pipeline_class.__init__).items():
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
) -> tuple[dict[str, Any], list[str]]:
    """The pipeline's call arguments for the same run, matched to its signature by name; notes on what it lacks."""
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
    extra = {key: expr(names) for key, expr in plan.reference_args.items()}
    accepted = _parameters(pipeline_class.__call__)
    unknown = [key for key in extra if key not in accepted]
    if unknown:
        raise UserError(
            f"[model] reference_args names {', '.join(unknown)}, which {pipeline_class.__name__}.__call__ does not take"
        )
    wanted.update(extra)
    missing = [name for name in REQUIRED_CALL if name not in accepted]
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


@contextmanager
def _components_must_fit(who: str) -> Iterator[None]:
    """A shape or dtype clash inside a model run is a spec problem: say so in one line."""
    try:
        yield
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"{who} failed inside a component: {first}; the spec's components do not fit together (check the "
            "inline configs, e.g. a transformer's text width against the text encoder's hidden size)"
        ) from exc


def _run_reference(pipeline: Any, kwargs: dict[str, Any], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames [B, F, H, W, 3], final latents in the pipeline's layout), in one run when it has step callbacks."""
    accepted = _parameters(type(pipeline).__call__)
    kwargs = {**kwargs, "generator": torch.Generator().manual_seed(seed)}
    if "callback_on_step_end" in accepted:
        captured: dict[str, torch.Tensor] = {}

        def capture(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            captured["latents"] = tensors["latents"].detach().clone()
            return tensors

        output = pipeline(
            **kwargs, output_type="np", callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"]
        )
        latents = captured["latents"]
    else:  # a second run for the latents: the same seed gives the same trajectory
        output = pipeline(**kwargs, output_type="np")
        kwargs["generator"] = torch.Generator().manual_seed(seed)
        latents = pipeline(**kwargs, output_type="latent").frames
    frames = torch.from_numpy(np.asarray(output.frames)).float()
    return frames, latents.float().cpu()


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
        for param_name, param in list(_parameters(function.__func__).items())[1:]:  # the first is the latents
            if param_name in names:
                kwargs[param_name] = names[param_name]
            elif param.default is inspect.Parameter.empty:
                unknown.append(param_name)
        if unknown:
            checks.append(Check(name, None, True, f"skipped: ltxc cannot supply {helper}'s {', '.join(unknown)}"))
            continue
        theirs = function.__func__(latents, **kwargs)
        checks.append(_compare(name, ours(), theirs, tolerance, f"{pipeline_class.__name__}.{helper}"))
    return checks


def _compare(name: str, ours: torch.Tensor | None, theirs: torch.Tensor, tolerance: float, note: str) -> Check:
    if ours is None:
        return Check(name, None, False, "ltxc produced nothing to compare")
    ours, theirs = ours.detach().float().cpu(), theirs.detach().float().cpu()
    if ours.shape != theirs.shape:
        return Check(name, None, False, f"shapes differ: ltxc {list(ours.shape)}, reference {list(theirs.shape)}")
    difference = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    ok = difference <= tolerance  # False for NaN
    return Check(name, difference, ok, f"{note} {list(ours.shape)}")


def _parameters(function: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """A callable's named parameters, without `self` and without *args/**kwargs."""
    params = inspect.signature(function).parameters
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: p for name, p in params.items() if name != "self" and p.kind not in skip}


def run_verify(
    loaded: Loaded,
    *,
    prompt: str | None,
    frames: int | None,
    height: int | None,
    width: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int,
    tolerance: float,
    device: str | None,
) -> int:
    """The whole `ltxc verify` on a spec the CLI loaded before importing torch; 0 only within the tolerance."""
    report = verify(
        compile_spec(loaded),
        prompt=prompt or DEFAULT_PROMPT,
        frames=frames,
        height=height,
        width=width,
        steps=steps,
        guidance=guidance,
        seed=seed,
        tolerance=tolerance,
        device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
    )
    print(report.format())
    return 0 if report.ok else 1
