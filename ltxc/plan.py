"""The compiled plan: the resolved spec, its hash, and the objects built from it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from attrs import frozen

from ltxc.components import ComponentRecipe, Components
from ltxc.errors import UserError
from ltxc.fileio import atomic_write_json
from ltxc.geometry import Geometry
from ltxc.normalise import Identity, MeanStd, Normaliser, ShiftScale
from ltxc.spec import Spec
from ltxc.spec import types as spec_types
from ltxc.spec.expr import Expr

PLAN_FORMAT = 1
# The video's key among the latents a sampling step denoises; the compiler reserves it, so no
# `[streams.<name>]` entry can take it.
VIDEO = "video"


@frozen
class CompiledStream:
    """A `[streams.<name>]` entry with its expressions compiled."""

    name: str
    noise: Expr  # per-sample noise shape when sampling jointly
    dummy: Expr  # per-sample shape of the zero input in training
    pack: Expr  # `x` as drawn -> the transformer's layout
    output: int
    sample: str  # "joint" or "dummy"
    guidance: float | None = None  # its own CFG scale, else the sampler's
    sigma: str = "shared"  # joint training: "shared" (the video's σ) or "independent" (its own draw and shift)
    modules: tuple[str, ...] = ()  # parameter-name parts of its branch and the cross-modal modules
    text: tuple[str, ...] = ()  # the text tensors only it reads (train.audio_cfg_dropout drops them on its own coin)
    source: spec_types.AudioSourceSpec | None = None  # preprocessing: how a clip's sound becomes its latents
    decode: spec_types.StreamDecodeSpec | None = None  # generation: how its final latents become a waveform
    unpack: Expr | None = None  # decode.unpack, compiled (of `x`)


@frozen
class CompiledPerturbation:
    """A `[[sampler.perturbations]]` guidance term with its expressions compiled."""

    name: str
    scale: float
    weight: Expr  # of `scale`
    call: dict[str, Expr]  # transformer keyword overrides for the perturbed pass


@frozen
class CompiledCondition:
    """A `[tasks.<task>.conditions.<name>]` entry with its defaults resolved from `[latent]`."""

    name: str
    input: str  # "image" or "video"
    place: str  # "frames" or "append"
    frames: tuple[int, int]  # place = "frames": latent frames [start, end)
    encode: str  # "mode" or "sample"
    normalise: spec_types.NormaliserSpec
    keep: str  # "skip" or "blend"
    loss: bool
    downscale: int
    reference_input: spec_types.ReferenceInputSpec | None = None
    reference_extra: dict[str, Expr] = attrs.field(factory=dict)  # reference_input.extra, compiled (of `strength`)
    encode_dtype: str = "prompt"  # sampling: "prompt" (to float32, then normalised) or "vae" (normalised, then cast)


@frozen
class CompiledTask:
    """A `[tasks.<name>]` entry: its conditions and the call mapping while it runs."""

    name: str
    conditions: dict[str, CompiledCondition]
    call: dict[str, Expr]  # the spec's [transformer.call] with the task's entries over it
    description: str = ""
    reference: str | None = None
    reference_args: dict[str, Expr] = attrs.field(factory=dict)  # [model] reference_args, then the task's
    lora_metadata: dict[str, Expr] = attrs.field(factory=dict)
    noise: str = "grid"  # sampling's initial noise: "grid" (each stream's own shape, then packed) or "packed"

    def condition(self, input_kind: str) -> CompiledCondition | None:
        """The condition fed by `input_kind` ("image" or "video"), if the task has one."""
        return next((c for c in self.conditions.values() if c.input == input_kind), None)


@frozen
class Plan:
    """What `ltxc compile` produces and every `ltxc run` command executes."""

    spec: Spec
    data: dict[str, Any]  # the resolved spec as plain data (defaults filled, extends merged)
    hash: str
    sources: tuple[str, ...]  # the spec files merged into it, root ancestor first
    geometry: Geometry
    recipes: dict[str, ComponentRecipe]
    call: dict[str, Expr]  # [transformer.call]: keyword -> compiled expression
    loss_weight: Expr
    constants: dict[str, int]  # geometry numbers every expression may read
    timestep: Expr  # [flow] timestep: the `timestep` name in training, from sigma
    # The settings the compiled objects read (they never read `spec`): how captions become text (the
    # processor), how pixels become latents (processor, normaliser), and the generation defaults (sampler).
    text: spec_types.TextSpec
    latent: spec_types.LatentSpec
    sampler: spec_types.SamplerSpec
    text_names: tuple[str, ...] = ("embeds", "mask")  # the text conditioning's tensors
    text_stage: dict[str, Expr] | None = None  # [text.stage] call mapping
    streams: dict[str, CompiledStream] = attrs.field(factory=dict)
    perturbations: tuple[CompiledPerturbation, ...] = ()
    reference_args: dict[str, Expr] = attrs.field(factory=dict)
    transformer_output: int = 0  # [transformer] output: which element of the return tuple is the video
    # Compiled settings the runner reads (it never reads `spec`): the objective, LoRA defaults, what to
    # shard and freeze, the transformer's role, and where the text stage runs.
    flow: spec_types.FlowSpec = attrs.field(factory=spec_types.FlowSpec)
    lora: spec_types.LoraSpec = attrs.field(factory=spec_types.LoraSpec)
    blocks: tuple[str, ...] = ()  # [parallel] blocks: the units FSDP2 shards and activation checkpointing wraps
    frozen: tuple[str, ...] = ()  # [parallel] frozen: parameter-name parts that never train
    transformer_role: str = "transformer"
    # [sampler] input_dtype and decode, resolved: the role whose dtype the transformer's inputs take, and the
    # decode's ordered steps ("denormalise", "cast:<role>", "noise")
    input_role: str = "transformer"
    latent_role: str | None = None  # [sampler] latent_dtype: the role whose dtype the sampler's latents take
    inputs: dict[str, spec_types.InputSpec] = attrs.field(factory=dict)  # [inputs]: named scalar inputs
    decode: tuple[str, ...] = ("denormalise", "cast:vae", "noise")
    reference: str | None = None  # the diffusers pipeline class the exports and `verify` use
    stage_in_training: bool = False  # the cache stops before [text.stage]: training runs the stage itself
    null_text: str = "empty_prompt"  # [text] null_conditioning: what "no text" is for CFG dropout
    tasks: dict[str, CompiledTask] = attrs.field(factory=dict)  # [tasks]: conditioned tasks besides text-to-video

    def task(self, name: str) -> CompiledTask:
        """The task called `name`; a UserError naming the spec's tasks when it has none by that name."""
        if name not in self.tasks:
            have = ", ".join(sorted(self.tasks)) or "none"
            raise UserError(f"spec {self.name!r} has no task {name!r} (its [tasks]: {have})")
        return self.tasks[name]

    def task_for(self, input_kind: str) -> CompiledTask:
        """The one task fed by an input kind ("image": `--image`, "video": `--reference`); a UserError otherwise."""
        found = [t for t in self.tasks.values() if t.condition(input_kind) is not None]
        if len(found) != 1:
            what = "no task takes" if not found else f"{len(found)} tasks take ({', '.join(t.name for t in found)})"
            article = "an" if input_kind[:1] in ("a", "e", "i", "o", "u") else "a"
            raise UserError(f"spec {self.name!r}: {what} {article} {input_kind!r} input; see its [tasks]")
        return found[0]

    @property
    def name(self) -> str:
        """The model's name."""
        return self.spec.model.name

    def components(self) -> Components:
        """A fresh lazy component set (nothing is built until asked for)."""
        return Components(self.recipes)

    def normaliser(self, components: Mapping[str, Any], spec: spec_types.NormaliserSpec | None = None) -> Normaliser:
        """The latent normaliser (or `spec`'s, e.g. a condition's), reading VAE statistics from `components`."""
        norm = self.latent.normalise if spec is None else spec
        if isinstance(norm, spec_types.MeanStdSpec):
            mean = _statistic(norm.mean, components)
            std = _statistic(norm.std, components)
            return MeanStd(mean, std, float(_read(norm.scaling_factor, components)), norm.denormalise)
        if isinstance(norm, spec_types.ShiftScaleSpec):
            return ShiftScale(float(_read(norm.shift, components)), float(_read(norm.scale, components)))
        return Identity()

    def to_json(self) -> dict[str, Any]:
        """The plan file's content."""
        return {"ltxc_plan": PLAN_FORMAT, "hash": self.hash, "sources": list(self.sources), "spec": self.data}

    def save(self, directory: str | Path) -> Path:
        """Write `plan.json` into `directory` atomically; return its path."""
        return atomic_write_json(Path(directory) / "plan.json", self.to_json())


def _read(value: Any, components: Mapping[str, Any]) -> Any:
    """A literal, or "<role>.<attr>[.<key>...]" read from a component (mappings by key, objects by attribute)."""
    if not isinstance(value, str):
        return value
    role, *parts = value.split(".")
    current = components[role]
    for index, part in enumerate(parts):
        if isinstance(current, Mapping):
            if part not in current:
                raise UserError(f"{value!r}: {'.'.join([role, *parts[:index]])} has no key {part!r}")
            current = current[part]
            continue
        if isinstance(current, torch.nn.Module) and not _has_own_attribute(current, part):
            # diffusers would answer from the config with a deprecation warning: say which one is meant
            config = getattr(current, "config", None)
            hint = (
                f"; its config has one: write {'.'.join([role, *parts[:index], 'config', part])!r}"
                if isinstance(config, Mapping) and part in config
                else ""
            )
            raise UserError(f"{value!r}: {type(current).__name__} has no attribute or buffer {part!r}{hint}")
        current = getattr(current, part)
    return current


def _has_own_attribute(module: torch.nn.Module, name: str) -> bool:
    """A buffer, parameter, submodule, instance or class attribute — not diffusers' config fallback."""
    return (
        name in module._buffers
        or name in module._parameters
        or name in module._modules
        or name in vars(module)
        or hasattr(type(module), name)
    )


def _statistic(value: Any, components: Mapping[str, Any]) -> torch.Tensor:
    raw = _read(value, components)
    if isinstance(raw, torch.Tensor):
        return raw.detach().to(torch.float32, copy=True)  # a snapshot: later edits to the VAE don't leak in
    return torch.tensor(list(raw), dtype=torch.float32)
