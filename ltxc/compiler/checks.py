"""The weightless checks: geometry rules, roles, normaliser statistics, text lengths, the reference class.

Each appends `Problem`s located at the spec key they are about, so `ltxc compile` reports them all at once.
"""

from __future__ import annotations

from typing import Any

from ltxc.components import ComponentError, resolve_class
from ltxc.document import Locator
from ltxc.errors import Problem
from ltxc.geometry import FrameRule, Geometry
from ltxc.spec.types import MeanStdSpec, ShiftScaleSpec, Spec


def checked_geometry(spec: Spec, locator: Locator, problems: list[Problem]) -> Geometry:
    """The spec's `Geometry`, with a problem for every rule that cannot hold."""
    g = spec.geometry
    rule = FrameRule(g.frames.multiple, g.frames.offset, g.frames.max)
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
    if g.frames.max is not None and g.frames.max < rule.minimum:
        problems.append(
            locator.problem(
                (*where, "frames", "max"),
                f"{g.frames.max} is below the smallest valid count ({rule.minimum}); raise it or lower the offset",
            )
        )
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


def check_roles(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """Every role a section names has its `[components.<role>]` table."""
    roles = {
        ("latent", "vae"): spec.latent.vae,
        ("text", "encoder"): spec.text.encoder,
        ("text", "tokenizer"): spec.text.tokenizer,
        ("transformer", "component"): spec.transformer.component,
        ("sampler", "scheduler"): spec.sampler.scheduler,
    }
    if spec.text.stage is not None:
        roles[("text", "stage", "component")] = spec.text.stage.component
    for name, extra in (spec.text.encoders or {}).items():
        roles[("text", "encoders", name, "encoder")] = extra.encoder
        roles[("text", "encoders", name, "tokenizer")] = extra.tokenizer
    if spec.sampler.latent_dtype is not None:
        roles[("sampler", "latent_dtype")] = spec.sampler.latent_dtype
    for path, role in roles.items():
        if role not in spec.components:
            problems.append(
                locator.problem(path, f"no [components.{role}] in this spec (it has: {', '.join(spec.components)})")
            )


def check_text_encoders(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """A further encoder's name is not a `[text.stage]` output (both would be the text tensor of that name)."""
    outputs = set(spec.text.stage.outputs) if spec.text.stage is not None else set()
    for name in spec.text.encoders or {}:
        if name in outputs:
            problems.append(
                locator.problem(
                    ("text", "encoders", name), f"[text.stage] outputs a text tensor {name!r} too; rename one of them"
                )
            )


def check_normaliser(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """Literal statistics have one value per latent channel; references name a component of the spec."""
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


def decode_steps(spec: Spec) -> tuple[str, ...]:
    """`[sampler] decode`, else the default: denormalise, cast to the VAE's dtype, then the decode noise."""
    return spec.sampler.decode or ("denormalise", f"cast:{spec.latent.vae}", "noise")


def check_sampler(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """`[sampler]`: input_dtype names a role; the decode casts to roles, denormalises once, mixes noise at most once."""
    s = spec.sampler
    roles = ", ".join(spec.components)
    if s.input_dtype is not None and s.input_dtype not in spec.components:
        problems.append(
            locator.problem(
                ("sampler", "input_dtype"), f"no [components.{s.input_dtype}] in this spec (it has: {roles})"
            )
        )
    if s.decode is None:
        return
    where = ("sampler", "decode")
    for step in s.decode:
        role = step.removeprefix("cast:")
        if step.startswith("cast:") and role not in spec.components:
            problems.append(locator.problem(where, f"{step!r}: no [components.{role}] in this spec (it has: {roles})"))
    if s.decode.count("denormalise") != 1:
        problems.append(
            locator.problem(where, f"has 'denormalise' {s.decode.count('denormalise')} times; it must be there once")
        )
    if s.decode.count("noise") > 1:
        problems.append(locator.problem(where, f"has 'noise' {s.decode.count('noise')} times; at most once"))


def check_text_lengths(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """Both text lengths are multiples of `text.length_multiple`; the problem names the nearest ones."""
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


def check_reference(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """`[model] reference`, when set, names a diffusers pipeline class."""
    if not spec.model.reference:
        return
    from diffusers import DiffusionPipeline  # only specs with a reference pay for importing diffusers

    try:
        resolve_class(spec.model.reference, DiffusionPipeline)
    except ComponentError as exc:
        problems.append(locator.problem(("model", "reference"), str(exc)))


def check_audio_sources(spec: Spec, locator: Locator, problems: list[Problem]) -> None:
    """`[streams.<name>.source]`: its roles and statistic references name components; literal statistics have
    one value per packed feature (channels x mel bins); the STFT window fits the FFT; the filterbank the rate."""
    for name, stream in spec.streams.items():
        source = stream.source
        if source is None:
            continue
        where = ("streams", name, "source")
        features = source.latent_shape[0] * source.latent_shape[1]
        refs = {("vae",): source.vae, ("normalise", "mean"): source.normalise.mean}
        refs[("normalise", "std")] = source.normalise.std
        for path, value in refs.items():
            if isinstance(value, tuple) and len(value) != features:
                problems.append(
                    locator.problem((*where, *path), f"has {len(value)} values; a packed token has {features}")
                )
            elif isinstance(value, str) and value.split(".")[0] not in spec.components:
                problems.append(locator.problem((*where, *path), f"{value!r} names no component of this spec"))
        mel = source.mel
        if (mel.win_length or mel.n_fft) > mel.n_fft:
            problems.append(locator.problem((*where, "mel", "win_length"), f"exceeds n_fft ({mel.n_fft})"))
        if not mel.f_min < mel.f_max <= source.waveform.sample_rate / 2:
            problems.append(
                locator.problem((*where, "mel", "f_max"), "must lie above f_min and at most half the sample rate")
            )
