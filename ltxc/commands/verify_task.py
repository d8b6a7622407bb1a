"""`ltxc verify --task`: the plan as a task runs it, and the same synthetic inputs for ltxc and the reference.

While a task runs, its call mapping replaces the spec's, its reference pipeline the model's, and its
reference arguments extend the model's; verify then compares the same stages as for text-to-video. Each
condition's input is made here, deterministically: an image is the synthetic test pattern at exactly the
generation size, handed to ltxc as pixels and to the reference as a PIL image (so the pipeline's resize is a no-op).
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import frozen
from torch import Tensor

from ltxc.condition_sampling import image_pixels
from ltxc.errors import UserError
from ltxc.plan import CompiledTask, Plan


@frozen(eq=False)
class TaskInputs:
    """One verify run's condition inputs: ltxc's keyword arguments and the reference's."""

    ours: dict[str, Tensor]  # the sampler's keyword (e.g. "image") -> its input
    theirs: dict[str, Any]  # the reference's call keyword -> its input
    notes: list[str]


def task_view(plan: Plan, task: CompiledTask) -> Plan:
    """The plan as the task runs it: the task's call mapping, reference pipeline and reference arguments."""
    if not task.reference:
        raise UserError(f'[tasks.{task.name}] names no reference pipeline: add reference = "diffusers:Class"')
    return attrs.evolve(plan, call=task.call, reference=task.reference, reference_args=task.reference_args)


def task_inputs(task: CompiledTask, height: int, width: int) -> TaskInputs:
    """The task's condition inputs for both sides; a clear error for a condition verify cannot feed yet."""
    from PIL import Image

    from ltxc.media.synthetic import pattern

    ours: dict[str, Tensor] = {}
    theirs: dict[str, Any] = {}
    notes = []
    for condition in task.conditions.values():
        if condition.input != "image":
            raise UserError(
                f"task {task.name!r}: verify feeds image conditions so far; {condition.name!r} takes a "
                f"{condition.input!r} input"
            )
        given = condition.reference_input
        if given is None:
            raise UserError(
                f"[tasks.{task.name}.conditions.{condition.name}] has no reference_input: verify cannot say which "
                "argument of the reference pipeline takes it"
            )
        if given.wrap is not None:
            raise UserError(f"[tasks.{task.name}.conditions.{condition.name}] reference_input.wrap: not supported yet")
        rgb = pattern(0, width, height)  # the same pixels for both: a gradient, a coloured square, a gray tile
        ours["image"] = image_pixels(rgb)
        picture = Image.fromarray(rgb)
        theirs[given.argument] = [picture] if given.in_list else picture
        notes.append(
            f"task {task.name}: condition {condition.name!r} gets a synthetic {width}x{height} image (latent frames "
            f"[{condition.frames[0]}, {condition.frames[1]}), encode {condition.encode}, keep {condition.keep}); the "
            f"reference gets it as {given.argument}"
        )
    return TaskInputs(ours, theirs, notes)
