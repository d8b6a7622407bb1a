"""Conditioned tasks in training: the run config's `[tasks.<name>] probability` over the spec's `[tasks.<name>]`.

A sample trains at most one task; the rest train text-to-video. Which one is drawn from the sample's own
generator after its σ, noise and dropout draws, so those are unchanged and a run without tasks is bit-identical
to text-to-video. A task with an appended condition (an IC-LoRA reference) changes the sequence length, so it is
drawn once per micro-batch, from a generator keyed on (seed, step, micro-batch) alone: every rank agrees. Each
task's probability is a sample's chance of training it (the per-sample draw is scaled by the micro-batches no
appended task took).

A conditioned token gets its clean latents in the condition's normaliser, as sampling encodes the input (a frames
condition's are the clip's own latents, converted; an appended reference's are cached so) and, through the task's
call mapping reading `condition.mask`, timestep 0; unless its condition says `loss = true` it stays out of the loss,
which is then each sample's mean over its other tokens. Appended tokens follow the target's, clean, and never enter
the loss. A sample the drawn task does not fit (an image, whose one latent frame it would hold) trains
text-to-video.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from attrs import frozen
from torch import Tensor

from ltxc.adapter import Adapter, Text
from ltxc.conditions import TokenConditions, frame_mask, packed_mask
from ltxc.document import KeyPath, Loaded
from ltxc.errors import ConfigError, UserError
from ltxc.normalise import Normaliser
from ltxc.plan import CompiledCondition, CompiledTask, Plan
from ltxc.runner.config import RunConfig
from ltxc.runner.seeds import derived_seed

# The batch key of an appended condition's latents [B, C, F_r, H_r, W_r]: a cache of pairs holds them normalised as
# the condition says, as sampling encodes a reference (`cache.json` has a `reference` entry then).
REFERENCE_LATENTS = "reference_latents"
REFERENCE_HEADER = "reference"
# The sample-position part of a micro-batch's own draw (sample positions are 0 and up).
BATCH_DRAW = -1


@frozen
class ActiveTask:
    """A task the run trains, and how often."""

    task: CompiledTask
    probability: float

    @property
    def appended(self) -> CompiledCondition | None:
        """Its appended condition, if it has one (then it is drawn per micro-batch)."""
        return appended_condition(self.task)


def appended_condition(task: CompiledTask) -> CompiledCondition | None:
    """A task's appended condition (place = "append"), if it has one."""
    return next((c for c in task.conditions.values() if c.place == "append"), None)


@frozen(eq=False)
class TaskInputs:
    """One micro-batch's transformer input under its tasks."""

    latents: Tensor  # [B, C, F, H, W]; with appended tokens: the transformer's layout, target's tokens first
    grid: tuple[int, int, int] | None  # the target's latent grid when `latents` are packed (appended tokens)
    conditions: TokenConditions
    call: dict[str, Any]  # the task's call mapping (compiled expressions)
    keep: Tensor  # [B, 1, F, H, W] float32: 1 where the target's latents enter the loss


@frozen(eq=False)
class _Conversion:
    """Latents normalised as `[latent]` says -> as a condition's normaliser says (the scale sampling encodes at)."""

    latent: Normaliser
    condition: Normaliser

    def __call__(self, latents: Tensor) -> Tensor:
        return self.condition.normalise(self.latent.denormalise(latents))


class TrainingTasks:
    """The run's tasks: the draws, and a micro-batch's conditioned transformer input."""

    def __init__(self, plan: Plan, active: Sequence[ActiveTask], conversions: Mapping[tuple[str, str], Any]) -> None:
        self.geometry = plan.geometry
        self.per_batch = tuple(a for a in active if a.appended is not None)
        self.per_sample = tuple(a for a in active if a.appended is None)
        self.conversions = dict(conversions)

    @property
    def on(self) -> bool:
        """Whether any task trains (else every draw and input is text-to-video's)."""
        return bool(self.per_batch or self.per_sample)

    def draw(
        self, generators: Sequence[torch.Generator], seed: int, step: int, micro: int, frames: int
    ) -> tuple[Any, ...]:
        """The task each sample of `frames` latent frames trains (None: text-to-video): one coin from each sample's
        generator, and one per micro-batch for appended tasks from a generator keyed on (seed, step, micro-batch).
        A sample the drawn task does not fit (its conditions would hold every latent frame, as of an image, or
        none) trains text-to-video."""
        if not self.on:
            return (None,) * len(generators)
        whole = None
        if self.per_batch:
            batch = torch.Generator().manual_seed(derived_seed(seed, step, micro, BATCH_DRAW))
            whole = _pick(self.per_batch, torch.rand((), generator=batch).item(), 1.0)
        rest = 1.0 - sum(a.probability for a in self.per_batch)  # a sample's chance its micro-batch has none
        drawn = []
        for g in generators:
            coin = torch.rand((), generator=g).item() if self.per_sample else 1.0
            drawn.append(whole if whole is not None else _pick(self.per_sample, coin, rest))
        return tuple(task if task is not None and _fits(task, frames) else None for task in drawn)

    def inputs(self, batch: Mapping[str, Any], x0: Tensor, noisy: Tensor, drawn: Sequence[Any]) -> TaskInputs | None:
        """The micro-batch's input when any sample trains a task (None: text-to-video): conditioned latent frames
        replaced by their clean latents (x_t·(1 - mask) + clean·mask), any appended reference after the target."""
        if self.per_batch and REFERENCE_LATENTS not in batch:
            names = ", ".join(f"tasks.{a.task.name}.probability" for a in self.per_batch)
            raise UserError(
                f"{names} > 0 trains a task with an appended reference, but the cache has no reference latents "
                f"(batch key {REFERENCE_LATENTS!r}): preprocess the data with its references, or set it to 0"
            )
        tasks = {task.name: task for task in drawn if task is not None}
        if not tasks:
            return None
        b, grid = x0.shape[0], tuple(x0.shape[2:])
        latents, mask, keep = noisy, torch.zeros_like(x0[:, :1]), torch.ones_like(x0[:, :1])
        for name, task in tasks.items():
            rows = torch.tensor([t is not None and t.name == name for t in drawn], dtype=torch.float32)
            rows = rows.to(x0.device).view(b, 1, 1, 1, 1)
            for condition in task.conditions.values():
                if condition.place != "frames":
                    continue
                m = frame_mask(b, grid, condition.frames).to(x0.device) * rows  # type: ignore[arg-type]
                latents = latents * (1 - m) + self._clean(task, condition, x0) * m
                mask = torch.maximum(mask, m)
                if not condition.loss:
                    keep = keep * (1 - m)
        task = next(iter(tasks.values()))  # one call mapping per micro-batch (checked at set-up)
        tokens = packed_mask(self.geometry, mask)
        appended = appended_condition(task)
        if appended is None:
            return TaskInputs(latents, None, TokenConditions(mask=tokens), task.call, keep)
        return self._appended(batch, task, appended, latents, tokens, keep)

    def _appended(
        self,
        batch: Mapping[str, Any],
        task: CompiledTask,
        condition: CompiledCondition,
        latents: Tensor,
        tokens: Tensor,
        keep: Tensor,
    ) -> TaskInputs:
        """The target's tokens, then the reference's (clean, mask 1)."""
        reference = batch[REFERENCE_LATENTS].to(latents.device, torch.float32)
        f, h, w = latents.shape[2:]
        fr, hr, wr = reference.shape[2:]
        if reference.shape[:2] != latents.shape[:2] or (hr * condition.downscale, wr * condition.downscale) != (h, w):
            raise UserError(
                f"task {task.name!r}: reference latents {tuple(reference.shape)} do not fit the target's "
                f"{tuple(latents.shape)} at downscale {condition.downscale}: preprocess the references again"
            )
        packed = torch.cat([self.geometry.pack(latents), self.geometry.pack(reference)], dim=1)
        appended = packed.shape[1] - tokens.shape[1]
        mask = torch.cat([tokens, torch.ones(tokens.shape[0], appended, device=tokens.device)], dim=1)
        conditions = TokenConditions(
            mask=mask, appended=appended, reference_grid=(fr, hr, wr), downscale=condition.downscale
        )
        return TaskInputs(packed, (f, h, w), conditions, task.call, keep)

    def check_cache(self, header: Mapping[str, Any], cache: Any) -> None:
        """Refuse, before the model is built, a cache without the references an appended task trains on."""
        for active in self.per_batch:
            condition, key = active.appended, f"tasks.{active.task.name}.probability"
            reference = header.get(REFERENCE_HEADER)
            if reference is None:
                raise UserError(
                    f"{key} > 0 trains a task with an appended reference, but {cache} holds no references: "
                    "preprocess a dataset of pairs (a metadata file with a 'reference' column), or set it to 0"
                )
            if condition is not None and reference.get("downscale") != condition.downscale:
                raise UserError(
                    f"{key}: {cache} holds references at 1/{reference.get('downscale')} of the target's size, "
                    f"the task's condition {condition.name!r} takes 1/{condition.downscale}: preprocess again"
                )

    def _clean(self, task: CompiledTask, condition: CompiledCondition, latents: Tensor) -> Tensor:
        convert = self.conversions.get((task.name, condition.name))
        return latents.float() if convert is None else convert(latents.float())


def predict(
    adapter: Adapter,
    model: torch.nn.Module,
    inputs: TaskInputs,
    sigma: Tensor,
    text: Text,
    fps: float,
    compute_dtype: torch.dtype | None = None,
) -> Tensor:
    """The target's prediction, float32 [B, C, F, H, W], from a pass with the task's call mapping and conditions
    (appended tokens' predictions dropped)."""
    return predict_streams(adapter, model, inputs, sigma, text, fps, compute_dtype)[0]


def predict_streams(
    adapter: Adapter,
    model: torch.nn.Module,
    inputs: TaskInputs,
    sigma: Tensor,
    text: Text,
    fps: float,
    compute_dtype: torch.dtype | None = None,
    streams: Mapping[str, Tensor] | None = None,
    stream_sigmas: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """`predict`, with the streams trained jointly (`streams`: their noisy latents, `stream_sigmas`: their own σ)
    and every stream's prediction as float32."""
    env = adapter.environment(
        inputs.latents, sigma, text, fps, compute_dtype=compute_dtype, grid=inputs.grid, conditions=inputs.conditions,
        streams=streams, stream_sigmas=stream_sigmas,
    )  # fmt: skip
    if inputs.grid is None:
        return adapter.outputs(model, env, inputs.call)
    video, others = adapter.raw_outputs(model, env, inputs.call)
    target = video[:, : video.shape[1] - inputs.conditions.appended]
    others = {name: value.to(torch.float32) for name, value in others.items()}
    return adapter.geometry.unpack(target, *inputs.grid).to(torch.float32), others


def _fits(task: CompiledTask, frames: int) -> bool:
    """Whether a sample of `frames` latent frames can train the task: its frames conditions leave some frame to
    denoise, and hold at least one (unless it appends a reference)."""
    held = {i for c in task.conditions.values() if c.place == "frames" for i in range(*c.frames)} & set(range(frames))
    return len(held) < frames and (bool(held) or appended_condition(task) is not None)


def _pick(active: Sequence[ActiveTask], coin: float, scale: float) -> CompiledTask | None:
    """The task whose share of [0, 1) (its probability / scale, in order) holds `coin`, else None."""
    if scale <= 0:
        return None
    edge = 0.0
    for a in active:
        edge += a.probability / scale
        if coin < edge:
            return a.task
    return None


def training_tasks(plan: Plan, config: RunConfig) -> TrainingTasks:
    """The run's tasks, with the VAE statistics a condition's normaliser needs read once (on the CPU; the VAE is
    then dropped); a UserError naming the run-config key when a task does not fit the plan."""
    problems = task_problems(plan, config)
    if problems:
        raise UserError("\n".join(f"run config: {'.'.join(map(str, key))}: {message}" for key, message in problems))
    active = [
        ActiveTask(plan.tasks[name], section.probability)
        for name, section in sorted(config.tasks.items())
        if section.probability > 0
    ]
    return TrainingTasks(plan, active, _conversions(plan, active))


def _conversions(plan: Plan, active: Sequence[ActiveTask]) -> dict[tuple[str, str], _Conversion]:
    """(task, condition) -> its conversion, for the conditions normalised otherwise than `[latent]`."""
    needed = [
        (a.task, c)
        for a in active
        for c in a.task.conditions.values()
        if c.place == "frames" and c.normalise != plan.latent.normalise
    ]
    if not needed:
        return {}
    components = plan.components()  # only for the statistics: built on the CPU and dropped on return
    latent = plan.normaliser(components)
    return {(t.name, c.name): _Conversion(latent, plan.normaliser(components, c.normalise)) for t, c in needed}


def check_tasks(plan: Plan, loaded: Loaded) -> None:
    """Refuse, as `FILE:LINE: key: message`, a run config whose tasks or validation images the plan cannot
    train or sample (before any model is built)."""
    problems = task_problems(plan, loaded.value)
    if problems:
        raise ConfigError(loaded.locator.problem(key, message) for key, message in problems)


def task_problems(plan: Plan, config: RunConfig) -> list[tuple[KeyPath, str]]:
    """(run-config key, message) for each task setting the plan cannot train."""
    problems: list[tuple[KeyPath, str]] = []
    for name in config.tasks:
        try:
            plan.task(name)
        except UserError as error:  # the spec has no such task: the message names those it has
            problems.append((("tasks", name), str(error)))
    active = [(name, plan.tasks[name]) for name, s in config.tasks.items() if s.probability > 0 and name in plan.tasks]
    for name, task in active:
        appended = [c for c in task.conditions.values() if c.place == "append"]
        if plan.geometry.layout != "tokens":
            message = f"conditioned training needs the 'tokens' layout, the spec has {plan.geometry.layout!r}"
            problems.append((("tasks", name), message))
        elif len(appended) > 1:
            problems.append((("tasks", name), f"{len(appended)} appended conditions; training appends one reference"))
        elif appended and appended[0].loss:
            message = f"condition {appended[0].name!r} is appended with loss = true; appended tokens have no target"
            problems.append((("tasks", name), message))
    problems.extend(_mixed_calls(active, config))
    if config.validation.images:
        try:
            plan.task_for("image")
        except UserError as error:
            problems.append((("validation", "images"), str(error)))
    return problems


def _mixed_calls(active: Sequence[tuple[str, CompiledTask]], config: RunConfig) -> list[tuple[KeyPath, str]]:
    """Per-sample tasks share a micro-batch, whose one transformer pass takes one call mapping."""
    sampled = [(name, task) for name, task in active if appended_condition(task) is None]
    if config.data.batch_size == 1 or len(sampled) < 2:
        return []
    first, call = sampled[0][0], {k: e.source for k, e in sampled[0][1].call.items()}
    return [
        (("tasks", name, "probability"), f"task {name!r} calls the transformer otherwise than {first!r}, and a "
         f"micro-batch of data.batch_size {config.data.batch_size} takes one call: train them with batch size 1")
        for name, task in sampled[1:]
        if {k: e.source for k, e in task.call.items()} != call
    ]  # fmt: skip
