"""The names each kind of expression may read: the vocabularies the compiler checks expressions against."""

from __future__ import annotations

from collections.abc import Mapping

from ltxc.adapter import CALL_NAMES
from ltxc.geometry import Geometry
from ltxc.plan import VIDEO
from ltxc.spec.types import Spec

LOSS_WEIGHT_NAMES = frozenset({"sigma"})
STAGE_NAMES = frozenset({"text.embeds", "text.mask", "padding_side"})
REFERENCE_NAMES = frozenset({"guidance", "guidance_rescale", "steps", "fps"})
# A stream's names (`<stream>.latents`) must not shadow a call name's prefix, `x` (its pack input), or the
# sampler's key for the video.
RESERVED_STREAM_NAMES = frozenset({"text", "latent", "pixel", "latents", "sigma", "timestep", "x", VIDEO})


def text_names(spec: Spec) -> tuple[str, ...]:
    """The text conditioning's tensor names: embeds and mask, plus any `[text.stage]` outputs."""
    names = ["embeds", "mask"]
    if spec.text.stage is not None:
        names += [n for n in spec.text.stage.outputs if n not in names]
    names += [n for n in sorted(spec.text.encoders or {}) if n not in names]  # further encoders' outputs
    return tuple(names)


def input_names(spec: Spec) -> frozenset[str]:
    """`input.<name>` for every `[inputs]` entry."""
    return frozenset(f"input.{name}" for name in spec.inputs or {})


def stream_names(spec: Spec) -> frozenset[str]:
    """`<stream>.latents`, `<stream>.joint` and `<stream>.sigma` for every `[streams]` entry."""
    return frozenset(f"{name}.{part}" for name in spec.streams for part in ("latents", "joint", "sigma"))


def call_names(spec: Spec, numbers: Mapping[str, int]) -> frozenset[str]:
    """Every name a `[transformer.call]` expression of this spec may read (what the adapter's environment has)."""
    text = {f"text.{name}" for name in text_names(spec)}
    return CALL_NAMES | text | stream_names(spec) | input_names(spec) | numbers.keys()


def reference_names(spec: Spec) -> frozenset[str]:
    """The names `[model] reference_args` may read: the sampler's settings, perturbation scales, stream guidance."""
    perturbations = {p.name for p in spec.sampler.perturbations}
    return REFERENCE_NAMES | perturbations | {f"{s}.guidance" for s in spec.streams} | input_names(spec)


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
