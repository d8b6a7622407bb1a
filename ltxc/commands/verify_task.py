"""`ltxc verify --task`: the plan as a task runs it, and the same synthetic inputs for ltxc and the reference.

While a task runs, its call mapping replaces the spec's, its reference pipeline the model's, and its
reference arguments extend the model's; verify then compares the same stages as for text-to-video. Each
condition's input is made here, deterministically, at exactly the size the task takes it (so the pipeline's resize
is a no-op): an image is the synthetic test pattern at the generation size, handed to ltxc as pixels and to the
reference as a PIL image; a video is the pattern's first frames at the generation size / the condition's
`downscale`, handed to ltxc as pixels and to the reference as a list of PIL frames, wrapped as the condition's
`reference_input` says (`wrap`, `keyword`, `extra` of `strength`, `in_list`).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
from attrs import frozen

from ltxc.appended_sampling import appended_condition, video_pixels
from ltxc.condition_sampling import image_pixels
from ltxc.errors import UserError
from ltxc.plan import CompiledCondition, CompiledTask, Plan


@frozen(eq=False)
class TaskInputs:
    """One verify run's condition inputs: ltxc's keyword arguments and the reference's."""

    ours: dict[str, Any]  # the sampler's keyword (e.g. "image", "reference") -> its input
    theirs: dict[str, Any]  # the reference's call keyword -> its input
    notes: list[str]


def task_view(plan: Plan, task: CompiledTask) -> Plan:
    """The plan as the task runs it: the task's call mapping, reference pipeline and reference arguments."""
    if not task.reference:
        raise UserError(f'[tasks.{task.name}] names no reference pipeline: add reference = "diffusers:Class"')
    return attrs.evolve(plan, call=task.call, reference=task.reference, reference_args=task.reference_args)


def task_names(task: CompiledTask | None) -> dict[str, Any]:
    """The names a task's reference_args may read besides the model's: its appended condition's downscale."""
    if task is None:
        return {}
    appended = appended_condition(task)
    return {"reference.downscale": 1 if appended is None else appended.downscale}


def task_inputs(task: CompiledTask, height: int, width: int, frames: int = 1, strength: float = 1.0) -> TaskInputs:
    """The task's condition inputs for both sides (a video's at `strength`); a clear error for a condition verify
    cannot feed."""
    from PIL import Image

    from ltxc.media.synthetic import pattern

    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    notes = []
    for condition in task.conditions.values():
        given = condition.reference_input
        if given is None:
            raise UserError(
                f"[tasks.{task.name}.conditions.{condition.name}] has no reference_input: verify cannot say which "
                "argument of the reference pipeline takes it"
            )
        if condition.input == "image":
            rgb = pattern(0, width, height)  # the same pixels for both: a gradient, a coloured square, a gray tile
            ours["image"] = image_pixels(rgb)
            value: Any = Image.fromarray(rgb)
            what = (
                f"a synthetic {width}x{height} image (latent frames [{condition.frames[0]}, {condition.frames[1]}), "
                f"encode {condition.encode}, keep {condition.keep})"
            )
        else:
            h, w = height // condition.downscale, width // condition.downscale
            clip = np.stack([pattern(i, w, h) for i in range(frames)])  # the square moves, the tile counts frames
            ours["reference"], ours["reference_strength"] = video_pixels(clip), strength
            value = [Image.fromarray(frame) for frame in clip]
            what = (
                f"a synthetic {frames}-frame {w}x{h} video (downscale {condition.downscale}, strength {strength:g}, "
                f"encode {condition.encode}, keep {condition.keep})"
            )
        wrapped = _wrapped(task, condition, value, strength)
        theirs[given.argument] = [wrapped] if given.in_list else wrapped
        wrap = "" if given.wrap is None else f" (in {given.wrap.rpartition(':')[2]})"
        notes.append(f"task {task.name}: condition {condition.name!r} gets {what}; the reference gets it as "
                     f"{given.argument}{wrap}")  # fmt: skip
    return TaskInputs(ours, theirs, notes)


def _wrapped(task: CompiledTask, condition: CompiledCondition, value: Any, strength: float) -> Any:
    """The input as the reference pipeline takes it: as is, or in the condition's `wrap` class (its `keyword`, and
    the `extra` keywords evaluated with `strength`)."""
    given = condition.reference_input
    if given is None or given.wrap is None:
        return value
    from ltxc.components import ComponentError, resolve_class

    try:
        cls = resolve_class(given.wrap)
    except ComponentError as exc:
        raise UserError(f"[tasks.{task.name}.conditions.{condition.name}] reference_input.wrap: {exc}") from None
    extra = {key: expr({"strength": strength}) for key, expr in condition.reference_extra.items()}
    return cls(**{given.keyword: value, **extra})
