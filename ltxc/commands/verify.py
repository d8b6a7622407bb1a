"""`ltxc verify`: prove a spec equal to its reference diffusers pipeline on the very same modules.

Both run with the same seed, prompt and size; every stage must agree within a tolerance: the text the transformer
gets, the σ schedule and timesteps, the initial noise, the first prediction of each role (unconditional,
conditional, each perturbation), the latents after step 1, the final latents and the decoded frames (and sound,
as the sound VAE's decode gets it and as the waveform, when the spec decodes a stream: stream_decode). A FAIL
names the first stage that departs. The pipeline's own packing and normalisation helpers, where it has them, are
checked against the spec's geometry and normaliser too. Nothing here knows a model: the reference class, its
components and its call arguments are matched by name (verify_reference), the stages by the spec's call mapping
and `[sampler]` CFG settings (verify_stages). With `--task`, the task's call mapping and reference pipeline, on the
same synthetic condition inputs (verify_task).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from attrs import frozen

from ltxc.appended_sampling import appended_condition
from ltxc.commands.verify_reference import (
    DEFAULT_TOLERANCE,
    ReferenceRun,
    build_reference,
    helper_checks,
    reference_call,
    run_reference,
)
from ltxc.commands.verify_report import Check, Report, compare, skipped
from ltxc.commands.verify_settings import shift_notes, with_dtype
from ltxc.commands.verify_stages import recorded_keywords, stage_rows
from ltxc.commands.verify_task import TaskInputs, task_inputs, task_names, task_view
from ltxc.compiler import compile_spec
from ltxc.components import resolve_class
from ltxc.document import Loaded
from ltxc.errors import UserError
from ltxc.plan import VIDEO, Plan
from ltxc.sampler import Generation, Sampler, size_or_default
from ltxc.stream_decode import decoded_stream

__all__ = ["DEFAULT_PROMPT", "Check", "Report", "build_reference", "helper_checks", "reference_call", "verify"]

DEFAULT_PROMPT = "a red ball bounces across a wooden floor, soft daylight"


@frozen
class _Settings:
    """One verify run's generation settings, each as given or else the spec's default."""

    prompt: str
    frames: int
    height: int
    width: int
    steps: int
    guidance: float
    seed: int


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
    dtype: str | None = None,
    task: str | None = None,
    strength: float = 1.0,
) -> Report:
    """Run ltxc's sampler and the spec's reference pipeline on the same components; compare them stage by stage.

    `task` names a `[tasks.<name>]` entry: both run it, with its reference pipeline and the same condition inputs
    (a video's at `strength`).
    """
    chosen = None if task is None else plan.task(task)  # an unknown task: one line naming the spec's tasks
    notes: list[str] = []
    if dtype is not None:
        plan, note = with_dtype(plan, dtype)
        notes.append(note)
    sampler_plan = plan  # the sampler finds the task in it; the comparison reads the task's view
    if chosen is not None:
        plan = task_view(plan, chosen)  # the task's call mapping, reference and reference_args
    if not plan.reference:
        raise UserError(f'spec {plan.name!r} names no reference pipeline: add [model] reference = "diffusers:Class"')
    from diffusers import DiffusionPipeline

    s = plan.sampler
    pipeline_class = resolve_class(plan.reference, DiffusionPipeline)
    components = plan.components()
    pipeline = build_reference(pipeline_class, components).to(device)
    pipeline.set_progress_bar_config(disable=True)
    run = _settings(plan, prompt, frames, height, width, steps, guidance, seed)
    inputs = TaskInputs({}, {}, [])
    if chosen is not None:
        inputs = task_inputs(chosen, run.height, run.width, run.frames, strength)
    # the reference's arguments first: a spec naming one it does not take fails before any sampling
    where = "[model]" if chosen is None else f"[model] or [tasks.{chosen.name}]"
    kwargs, call_notes = reference_call(
        pipeline_class, plan, prompt, run.frames, run.height, run.width, run.steps, run.guidance, where,
        task_names(chosen),
    )  # fmt: skip
    kwargs.update(inputs.theirs)
    notes += inputs.notes + call_notes + shift_notes(plan, components[s.scheduler])
    checks = helper_checks(pipeline_class, plan, components, tolerance)
    traced: dict[str, torch.Tensor] = {}
    sampler = Sampler(sampler_plan, components, device)
    started = time.perf_counter()
    with _components_must_fit("ltxc's sampler"):
        ours = _sample(sampler, run, traced, task, inputs.ours)
    ours_s, started = time.perf_counter() - started, time.perf_counter()
    with _components_must_fit(f"the reference {pipeline_class.__name__}"):
        sound = decoded_stream(plan)
        sound_vae = None if sound is None or sound.decode is None else components[sound.decode.vae]
        reference = run_reference(pipeline, kwargs, seed, components[plan.transformer_role], recorded_keywords(plan),
                                  sound_vae)  # fmt: skip
    notes.append(f"time: ltxc {ours_s:.2f} s, reference {time.perf_counter() - started:.2f} s")
    rows, stage_notes = stage_rows(plan, traced, reference, tolerance)
    appended = chosen is not None and appended_condition(chosen) is not None
    checks += rows + _final_rows(plan, traced, ours, reference, tolerance, appended)
    title = (
        f"verify {plan.name}{'' if task is None else f' task {task}'} against {plan.reference}: "
        f"{ours.frames}x{ours.height}x{ours.width} (frames x height "
        f"x width), {run.steps} steps, guidance {run.guidance:g}, seed {seed}, {torch.device(device)}"
        + (f", {dtype}" if dtype else "")
    )
    return Report(title, tuple(checks), tuple(notes + stage_notes), tolerance)


def _settings(
    plan: Plan,
    prompt: str,
    frames: int | None,
    height: int | None,
    width: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int,
) -> _Settings:
    """The run's settings, each as given or else the spec's; a clear size error before anything runs."""
    s = plan.sampler
    run = _Settings(
        prompt,
        size_or_default(frames, s.frames, "frames"),
        size_or_default(height, s.height, "height"),
        size_or_default(width, s.width, "width"),
        s.steps if steps is None else steps,
        s.guidance if guidance is None else guidance,
        seed,
    )
    plan.geometry.check(run.frames, run.height, run.width)
    return run


def _sample(
    sampler: Sampler,
    run: _Settings,
    traced: dict[str, torch.Tensor],
    task: str | None = None,
    inputs: Mapping[str, Any] | None = None,
) -> Generation:
    """ltxc's generation (of `task`, with its condition `inputs`), every traced stage recorded into `traced` (a copy
    on the CPU)."""

    def trace(name: str, tensor: torch.Tensor) -> None:
        traced[name] = tensor.detach().to("cpu", copy=True)

    return sampler(
        [run.prompt],
        frames=run.frames,
        height=run.height,
        width=run.width,
        steps=run.steps,
        guidance=run.guidance,
        seed=run.seed,
        trace=trace,
        task=task,
        **(inputs or {}),
    )


def _final_rows(
    plan: Plan,
    traced: dict[str, torch.Tensor],
    ours: Generation,
    reference: ReferenceRun,
    tolerance: float,
    appended: bool = False,
) -> list[Check]:
    """The final latents (the video's in the pipeline's layout; the reference hands out no other stream's) and
    the decoded frames. With a task's `appended` tokens, the reference's final latents (its whole sequence) are
    cut to the target's tokens, as the pipeline cuts them before the decode."""
    final = traced.get(f"final.{VIDEO}")
    latents = final if final is not None else plan.geometry.pack(ours.latents)  # the pipeline's layout
    theirs, note = reference.latents, "final latents, transformer layout"
    if appended and theirs.ndim == 3 and latents.ndim == 3:
        theirs, note = theirs[:, : latents.shape[1]], f"{note}, the target's tokens (appended ones left out)"
    rows = [compare("latents", latents, theirs, tolerance, note, True)]
    others = sorted(
        name.removeprefix("final.") for name in traced if name.startswith("final.") and name != f"final.{VIDEO}"
    )
    decoded = decoded_stream(plan)
    rows += [
        skipped(f"latents.{name}", f"the reference hands out no final {name} latents"
                + (f" (see {name}.latents)" if decoded is not None and decoded.name == name else ""))
        for name in others
    ]  # fmt: skip
    rows.append(compare("frames", ours.video, reference.frames, tolerance, "decoded frames in [0, 1]", True))
    return rows + _sound_rows(plan, traced, ours, reference, tolerance)


def _sound_rows(
    plan: Plan, traced: dict[str, torch.Tensor], ours: Generation, reference: ReferenceRun, tolerance: float
) -> list[Check]:
    """The decoded stream, when the spec decodes one: its latents as the VAE's decode got them (denormalised,
    unpacked, cast) and the waveform the reference hands out."""
    stream = decoded_stream(plan)
    if stream is None:
        return []
    label = f"{stream.name}.latents"
    mine, theirs = traced.get(f"decode.{stream.name}"), reference.sound_latents
    rows = [
        compare(label, mine, theirs, tolerance, "as the VAE's decode got them", True)
        if theirs is not None
        else skipped(label, "the reference's VAE decoded nothing")
    ]
    label = f"{stream.name}.waveform"
    if reference.audio is None:
        return [*rows, skipped(label, "the reference hands out no sound")]
    rate = f"{ours.sample_rate} Hz" if ours.sample_rate else "no rate"
    return [*rows, compare(label, ours.audio, reference.audio, tolerance, f"decoded waveform, {rate}", True)]


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
    dtype: str | None = None,
    task: str | None = None,
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
        dtype=dtype,
        task=task,
    )
    print(report.format())
    return 0 if report.ok else 1
