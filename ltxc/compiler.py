"""compile_spec: a loaded spec -> a `Plan`. The one place that maps spec kinds to implementations.

Every check that needs no weights happens here, so a bad spec fails at `ltxc compile` with
`FILE:LINE: key.path: message`, not an hour into a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ltxc.components import (
    ComponentError,
    ComponentRecipe,
    default_kind,
    resolve_class,
    resolve_component_class,
)
from ltxc.components import unknown_config_keys as _unknown_config_keys
from ltxc.document import Loaded, Locator, validate_data
from ltxc.errors import ConfigError, Problem, UserError
from ltxc.geometry import FrameRule, Geometry
from ltxc.ops import op_table
from ltxc.plan import PLAN_FORMAT, CompiledPerturbation, CompiledStream, Plan
from ltxc.spec import spec_from_dict, spec_to_dict
from ltxc.spec.expr import Expr, ExprError, compile_expr
from ltxc.spec.types import ComponentSpec, MeanStdSpec, ShiftScaleSpec, Spec

# Names a `[transformer.call]` expression may read (besides the geometry numbers, the text outputs and the
# streams, which depend on the spec).
CALL_NAMES = frozenset(
    {
        "latents",
        "sigma",
        "timestep",
        "training",
        "latent.frames",
        "latent.height",
        "latent.width",
        "pixel.frames",
        "pixel.height",
        "pixel.width",
        "fps",
        "batch_size",
    }
)
LOSS_WEIGHT_NAMES = frozenset({"sigma"})
STAGE_NAMES = frozenset({"text.embeds", "text.mask", "padding_side"})
REFERENCE_NAMES = frozenset({"guidance", "guidance_rescale", "steps", "fps"})
RESERVED_STREAM_NAMES = frozenset({"text", "latent", "pixel", "latents", "sigma", "timestep", "x"})


def text_names(spec: Spec) -> tuple[str, ...]:
    """The text conditioning's tensor names: embeds and mask, plus any `[text.stage]` outputs."""
    names = ["embeds", "mask"]
    if spec.text.stage is not None:
        names += [n for n in spec.text.stage.outputs if n not in names]
    return tuple(names)


def call_names(spec: Spec, numbers: Mapping[str, int]) -> frozenset[str]:
    """Every name a `[transformer.call]` expression of this spec may read."""
    text = {f"text.{name}" for name in text_names(spec)}
    streams = {f"{name}.{part}" for name in spec.streams for part in ("latents", "joint")}
    return CALL_NAMES | text | streams | numbers.keys()


def geometry_numbers(geometry: Geometry) -> dict[str, int]:
    """The geometry constants every expression may read."""
    pt, ph, pw = geometry.patch
    return {
        "latent_channels": geometry.latent_channels,
        "spatial_compression": geometry.spatial_compression,
        "temporal_compression": geometry.temporal_compression,
        "resolution_multiple": geometry.resolution_multiple,
        "patch_t": pt,
        "patch_h": ph,
        "patch_w": pw,
    }


def spec_hash(data: Mapping[str, Any]) -> str:
    """Content hash of a resolved spec: canonical JSON, sha256."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def compile_spec(loaded: Loaded) -> Plan:
    """Check everything that can be checked without weights and build the plan."""
    spec: Spec = loaded.value
    locator = loaded.locator
    problems: list[Problem] = []

    geometry = _geometry(spec, locator, problems)
    recipes = _components(spec, locator, problems)
    _check_roles(spec, locator, problems)
    _check_normaliser(spec, locator, problems)
    _check_text_lengths(spec, locator, problems)
    numbers = geometry_numbers(geometry)
    ops = op_table(geometry)
    names = call_names(spec, numbers)
    call = _expressions(spec.transformer.call, ("transformer", "call"), names, ops, locator, problems)
    weight = _expressions(
        {"loss_weight": spec.flow.loss_weight, "timestep": spec.flow.timestep},
        ("flow",),
        LOSS_WEIGHT_NAMES | numbers.keys(),
        ops,
        locator,
        problems,
    )
    stage = _stage(spec, ops, locator, problems)
    streams = _streams(spec, names, ops, locator, problems)
    perturbations = _perturbations(spec, names, ops, locator, problems)
    reference_names = (
        REFERENCE_NAMES | {p.name for p in spec.sampler.perturbations} | {f"{s}.guidance" for s in spec.streams}
    )
    reference_args = _expressions(
        spec.model.reference_args, ("model", "reference_args"), reference_names, ops, locator, problems
    )
    if spec.model.reference:
        _check_reference(spec.model.reference, locator, problems)
    if problems:
        raise ConfigError(problems)

    data = _resolved_data(spec, recipes)
    return Plan(
        spec=spec,
        data=data,
        hash=spec_hash(data),
        sources=tuple(os.path.normpath(f) for f in loaded.files),
        geometry=geometry,
        recipes=recipes,
        call=call,
        loss_weight=weight["loss_weight"],
        constants=numbers,
        timestep=weight["timestep"],
        text_names=text_names(spec),
        text_stage=stage,
        streams=streams,
        perturbations=perturbations,
        reference_args=reference_args,
        flow=spec.flow,
        lora=spec.lora,
        blocks=spec.parallel.blocks,
        frozen=spec.parallel.frozen,
        transformer_role=spec.transformer.component,
        reference=spec.model.reference,
        stage_in_training=spec.text.stage is not None and spec.text.cache == "before_stage",
        null_text=spec.text.null_conditioning,
    )


def load_plan(path: str | Path) -> Plan:
    """Read a `plan.json` written by `ltxc compile` and compile it again (no TOML needed)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no plan here; run `ltxc compile SPEC` first (it writes .ltxc/plan.json)") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the plan ({exc}); run `ltxc compile SPEC` again") from None
    return plan_from_json(content, str(path))


def plan_from_json(content: Any, origin: str = "plan.json") -> Plan:
    """Rebuild a plan from the content of a `plan.json` (also how worker processes receive it)."""
    if not isinstance(content, dict) or content.get("ltxc_plan") != PLAN_FORMAT or "spec" not in content:
        raise UserError(f"{origin}: not an ltxc plan of format {PLAN_FORMAT}; run `ltxc compile SPEC` again")
    data = content["spec"]
    if spec_hash(data) != content.get("hash"):
        raise UserError(f"{origin}: the plan was edited after it was compiled (hash mismatch); edit the spec instead")
    locator = Locator({}, origin)
    loaded = validate_data(data, "spec.schema.json", spec_from_dict, locator, tuple(content.get("sources", ())))
    return compile_spec(loaded)


def _resolved_data(spec: Spec, recipes: Mapping[str, ComponentRecipe]) -> dict[str, Any]:
    """The spec as the plan stores it: defaults filled, `extends` merged away, one source per component."""
    data = spec_to_dict(spec)
    data["model"].pop("extends", None)  # merged already; the plan records the files instead
    unused = {"pretrained": ("config", "seed"), "config": ("pretrained", "subfolder", "revision")}
    for role, recipe in recipes.items():
        table = data["components"][role]
        table["source"] = recipe.source
        table["kind"] = recipe.kind
        for key in unused[recipe.source] + (() if recipe.kind == "module" else ("seed", "dtype")):
            table.pop(key, None)  # keys that do nothing stay out of the plan, and out of its hash
    return data


def _geometry(spec: Spec, locator: Locator, problems: list[Problem]) -> Geometry:
    g = spec.geometry
    rule = FrameRule(g.frames.multiple, g.frames.offset)
    geometry = Geometry(
        g.latent_channels,
        g.spatial_compression,
        g.temporal_compression,
        rule,
        g.resolution_multiple,
        g.patch,
        g.layout,
    )
    where = ("geometry",)
    if g.frames.offset >= g.frames.multiple and g.frames.multiple > 1:
        problems.append(locator.problem((*where, "frames", "offset"), "must be smaller than frames.multiple"))
    # Every valid frame count must map to a whole number of latent frames: (F - 1) / temporal_compression.
    if (rule.minimum - 1) % g.temporal_compression or g.frames.multiple % g.temporal_compression:
        problems.append(
            locator.problem(
                (*where, "frames"),
                f"valid counts {rule.describe()} do not map to whole latent frames with "
                f"temporal_compression = {g.temporal_compression} (latent frames = (F - 1) / temporal_compression + 1)",
            )
        )
    if g.resolution_multiple % g.spatial_compression:
        problems.append(
            locator.problem(
                (*where, "resolution_multiple"),
                f"must be a multiple of spatial_compression ({g.spatial_compression})",
            )
        )
    else:
        cells = g.resolution_multiple // g.spatial_compression
        if cells % g.patch[1] or cells % g.patch[2]:
            problems.append(
                locator.problem(
                    (*where, "patch"),
                    f"the resolution rule gives latent sizes in steps of {cells}, which patch {list(g.patch)} "
                    "does not divide; raise resolution_multiple",
                )
            )
    return geometry


def _components(spec: Spec, locator: Locator, problems: list[Problem]) -> dict[str, ComponentRecipe]:
    recipes: dict[str, ComponentRecipe] = {}
    for role, component in spec.components.items():
        where = ("components", role)
        kind = component.kind or default_kind(role)
        try:
            cls = resolve_component_class(component.cls, kind)
        except ComponentError as exc:
            problems.append(locator.problem((*where, "class"), str(exc)))
            continue
        source = _source(component, where, locator, problems)
        if source is None:
            continue
        # Local paths were made absolute at load time; hub ids never are. A missing directory would
        # otherwise surface at build time as a confusing hub download error.
        if (
            source == "pretrained"
            and os.path.isabs(component.pretrained or "")
            and not os.path.isdir(component.pretrained or "")
        ):
            problems.append(locator.problem((*where, "pretrained"), f"{component.pretrained} is not a directory"))
            continue
        if source == "config" and kind != "tokenizer":
            unknown = _unknown_config_keys(cls, component.config or {})
            if unknown:
                problems.extend(
                    locator.problem((*where, "config", key), f"{cls.__name__} has no config key {key!r}")
                    for key in unknown
                )
                continue
        recipes[role] = ComponentRecipe(
            role=role,
            reference=component.cls,
            cls=cls,
            kind=kind,
            source=source,
            pretrained=component.pretrained,
            subfolder=component.subfolder,
            revision=component.revision,
            config=component.config,
            seed=component.seed,
            dtype=component.dtype,
        )
    return recipes


def _source(component: ComponentSpec, where: tuple[str, ...], locator: Locator, problems: list[Problem]) -> str | None:
    has_pretrained, has_config = component.pretrained is not None, component.config is not None
    if component.source == "pretrained" and not has_pretrained:
        problems.append(locator.problem((*where, "pretrained"), 'source = "pretrained" but no pretrained is set'))
        return None
    if component.source == "config" and not has_config:
        problems.append(locator.problem((*where, "config"), 'source = "config" but no config table is set'))
        return None
    if component.source:
        return component.source
    if has_pretrained and has_config:
        problems.append(
            locator.problem(where, 'both pretrained and config are set; say which to use with source = "..."')
        )
        return None
    if not (has_pretrained or has_config):
        problems.append(locator.problem(where, "set pretrained (a directory or hub id) or an inline config table"))
        return None
    return "pretrained" if has_pretrained else "config"


def _check_roles(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    roles = {
        ("latent", "vae"): spec.latent.vae,
        ("text", "encoder"): spec.text.encoder,
        ("text", "tokenizer"): spec.text.tokenizer,
        ("transformer", "component"): spec.transformer.component,
        ("sampler", "scheduler"): spec.sampler.scheduler,
    }
    if spec.text.stage is not None:
        roles[("text", "stage", "component")] = spec.text.stage.component
    for path, role in roles.items():
        if role not in spec.components:
            problems.append(
                locator.problem(path, f"no [components.{role}] in this spec (it has: {', '.join(spec.components)})")
            )


def _check_text_lengths(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    multiple = spec.text.length_multiple
    lengths = {
        ("text", "max_length"): spec.text.max_length,
        ("sampler", "max_sequence_length"): spec.sampler.max_sequence_length,
    }
    for path, length in lengths.items():
        if length is not None and length % multiple:
            below, above = length - length % multiple, length - length % multiple + multiple
            nearest = f"{below} or {above}" if below else f"{above}"
            problems.append(
                locator.problem(path, f"{length} is not a multiple of text.length_multiple ({multiple}); use {nearest}")
            )


def _stage(
    spec: Spec, ops: Mapping[str, Callable[..., Any]], locator: Locator, problems: list[Problem]
) -> dict[str, Expr] | None:
    stage = spec.text.stage
    if stage is None:
        if spec.text.cache == "before_stage":
            problems.append(locator.problem(("text", "cache"), '"before_stage" needs a [text.stage] table'))
        return None
    return _expressions(stage.call, ("text", "stage", "call"), STAGE_NAMES, ops, locator, problems)


def _streams(
    spec: Spec,
    names: frozenset[str],
    ops: Mapping[str, Callable[..., Any]],
    locator: Locator,
    problems: list[Problem],
) -> dict[str, CompiledStream]:
    shape_names = names - {f"{name}.{part}" for name in spec.streams for part in ("latents", "joint")}
    compiled: dict[str, CompiledStream] = {}
    outputs = {spec.transformer.output: ("transformer", "output")}
    for name, stream in spec.streams.items():
        where = ("streams", name)
        if name in RESERVED_STREAM_NAMES:
            problems.append(locator.problem(where, f"{name!r} is a reserved name; call the stream something else"))
            continue
        if stream.output in outputs:
            taken = ".".join(outputs[stream.output])
            problems.append(locator.problem((*where, "output"), f"output {stream.output} is already {taken}"))
        outputs[stream.output] = (*where, "output")
        shapes = _expressions(
            {"noise": stream.noise, "dummy": stream.dummy}, where, shape_names, ops, locator, problems
        )
        pack = _expressions({"pack": stream.pack}, where, frozenset({"x"}), ops, locator, problems)
        if len(shapes) == 2 and pack:
            compiled[name] = CompiledStream(
                name, shapes["noise"], shapes["dummy"], pack["pack"], stream.output, stream.sample, stream.guidance
            )
    return compiled


def _perturbations(
    spec: Spec,
    names: frozenset[str],
    ops: Mapping[str, Callable[..., Any]],
    locator: Locator,
    problems: list[Problem],
) -> tuple[CompiledPerturbation, ...]:
    compiled = []
    seen: set[str] = set()
    for index, term in enumerate(spec.sampler.perturbations):
        where = ("sampler", "perturbations", index)
        if term.name in seen:
            problems.append(locator.problem((*where, "name"), f"a perturbation named {term.name!r} comes earlier"))
        seen.add(term.name)
        call = _expressions(term.call, (*where, "call"), names, ops, locator, problems)
        weight = _expressions({"weight": term.weight}, where, frozenset({"scale"}), ops, locator, problems)
        if "weight" in weight:
            compiled.append(CompiledPerturbation(term.name, float(term.scale), weight["weight"], call))
    return tuple(compiled)


def _check_normaliser(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    norm = spec.latent.normalise
    fields: dict[str, Any] = {}
    if isinstance(norm, MeanStdSpec):
        fields = {"mean": norm.mean, "std": norm.std, "scaling_factor": norm.scaling_factor}
    elif isinstance(norm, ShiftScaleSpec):
        fields = {"shift": norm.shift, "scale": norm.scale}
    channels = spec.geometry.latent_channels
    for name, value in fields.items():
        if isinstance(value, tuple) and len(value) != channels:
            problems.append(
                locator.problem(
                    ("latent", "normalise", name), f"has {len(value)} values; geometry.latent_channels is {channels}"
                )
            )
        if isinstance(value, str) and value.split(".")[0] not in spec.components:
            problems.append(
                locator.problem(("latent", "normalise", name), f"{value!r} names no component of this spec")
            )


def _expressions(
    table: Mapping[str, str],
    where: tuple[str, ...],
    names: frozenset[str] | set[str],
    ops: Mapping[str, Callable[..., Any]],
    locator: Locator,
    problems: list[Problem],
) -> dict[str, Expr]:
    compiled: dict[str, Expr] = {}
    for key, source in table.items():
        try:
            compiled[key] = compile_expr(source, frozenset(names), ops)
        except ExprError as exc:
            problems.append(locator.problem((*where, key), str(exc)))
    return compiled


def _check_reference(reference: str, locator: Locator, problems: list[Problem]) -> None:
    from diffusers import DiffusionPipeline

    try:
        resolve_class(reference, DiffusionPipeline)
    except ComponentError as exc:
        problems.append(locator.problem(("model", "reference"), str(exc)))
