"""`[tasks]` compiled: each task's conditions with `[latent]`'s defaults filled, its call mapping (the spec's with
the task's entries over it), its reference pipeline and arguments, and its LoRA metadata."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ltxc.compiler.expressions import expressions
from ltxc.compiler.names import call_names, reference_names
from ltxc.document import Locator
from ltxc.errors import Problem
from ltxc.plan import CompiledCondition, CompiledTask
from ltxc.spec.expr import Expr
from ltxc.spec.types import ConditionSpec, Spec, TaskSpec

Ops = Mapping[str, Callable[..., Any]]
# the names a task's lora_metadata and a reference input's extra keywords may read
METADATA_NAMES = frozenset({"reference.downscale"})
REFERENCE_INPUT_NAMES = frozenset({"strength"})
# what a task's reference_args may read besides [model] reference_args' names: its appended condition's downscale
# (1 without one), so the reference pipeline's own argument can follow the condition
TASK_REFERENCE_NAMES = frozenset({"reference.downscale"})


def compile_tasks(
    spec: Spec,
    numbers: Mapping[str, int],
    ops: Ops,
    base_call: dict[str, Expr],
    locator: Locator,
    problems: list[Problem],
) -> dict[str, CompiledTask]:
    """Every `[tasks.<name>]` compiled; a problem at the offending key for each that fails."""
    names = call_names(spec, numbers)
    compiled: dict[str, CompiledTask] = {}
    for name, task in spec.tasks.items():
        where = ("tasks", name)
        before = len(problems)
        conditions = {
            cname: _condition(spec, cname, condition, (*where, "conditions", cname), ops, locator, problems)
            for cname, condition in task.conditions.items()
        }
        _check_inputs(task, where, locator, problems)
        call = expressions(task.call, (*where, "call"), names, ops, locator, problems)
        args = expressions(
            task.reference_args,
            (*where, "reference_args"),
            reference_names(spec) | TASK_REFERENCE_NAMES,
            ops,
            locator,
            problems,
        )
        metadata = expressions(task.lora_metadata, (*where, "lora_metadata"), METADATA_NAMES, ops, locator, problems)
        _check_reference(task, (*where, "reference"), locator, problems)
        if task.noise != "packed" and any(c.place == "append" for c in task.conditions.values()):
            problems.append(
                locator.problem(
                    (*where, "noise"),
                    'a task with an appended condition (place = "append") draws its noise over the whole token '
                    'sequence: set noise = "packed"',
                )
            )
        if len(problems) > before:
            continue
        compiled[name] = CompiledTask(
            name=name,
            conditions=conditions,  # type: ignore[arg-type]  # every one compiled (no new problems)
            call={**base_call, **call},
            description=task.description,
            reference=task.reference,
            reference_args=args,
            lora_metadata=metadata,
            noise=task.noise,
        )
    return compiled


def _condition(
    spec: Spec,
    name: str,
    condition: ConditionSpec,
    where: tuple[str, ...],
    ops: Ops,
    locator: Locator,
    problems: list[Problem],
) -> CompiledCondition | None:
    """One condition with `[latent]`'s encode and normaliser as defaults; its ranges checked."""
    start, end = condition.frames
    if condition.place == "frames" and not start < end:
        problems.append(
            locator.problem((*where, "frames"), f"[{start}, {end}) is empty: the end must be past the start")
        )
    if condition.place == "frames" and condition.downscale != 1:
        problems.append(
            locator.problem((*where, "downscale"), 'only an appended condition (place = "append") can be downscaled')
        )
    extra: dict[str, Expr] = {}
    if condition.reference_input is not None:
        extra = expressions(
            condition.reference_input.extra,
            (*where, "reference_input", "extra"),
            REFERENCE_INPUT_NAMES,
            ops,
            locator,
            problems,
        )
    return CompiledCondition(
        name=name,
        input=condition.input,
        place=condition.place,
        frames=(start, end),
        encode=condition.encode or spec.latent.encode,
        normalise=condition.normalise or spec.latent.normalise,
        keep=condition.keep,
        loss=condition.loss,
        downscale=condition.downscale,
        reference_input=condition.reference_input,
        reference_extra=extra,
        encode_dtype=condition.encode_dtype,
    )


def _check_inputs(task: TaskSpec, where: tuple[str, ...], locator: Locator, problems: list[Problem]) -> None:
    """At most one condition per input kind: `--image` / `--reference` must know which condition they feed."""
    seen: dict[str, str] = {}
    for cname, condition in task.conditions.items():
        if condition.input in seen:
            problems.append(
                locator.problem(
                    (*where, "conditions", cname, "input"),
                    f"condition {seen[condition.input]!r} already takes the {condition.input!r} input",
                )
            )
        seen[condition.input] = cname


def _check_reference(task: TaskSpec, where: tuple[str, ...], locator: Locator, problems: list[Problem]) -> None:
    """A task's reference, when set, names a diffusers pipeline class."""
    if not task.reference:
        return
    from diffusers import DiffusionPipeline  # only specs with a reference pay for importing diffusers

    from ltxc.components import ComponentError, resolve_class

    try:
        resolve_class(task.reference, DiffusionPipeline)
    except ComponentError as exc:
        problems.append(locator.problem(where, str(exc)))
