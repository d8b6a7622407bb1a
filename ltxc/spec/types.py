"""The spec as frozen attrs classes, and the one cattrs converter that builds them from validated data.

These classes are pure data: they name what a model is, never how to run it. The objects that do the
work (geometry, normalisers, components, the call mapping) are built *from* them in `ltxc.compiler`.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import cattrs
from attrs import field, frozen
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

# A VAE statistic: "<role>.<buffer>", "<role>.config.<key>" or a literal list of numbers.
StatRef = str | tuple[float, ...]
# A number, or a reference to one on a component.
NumberRef = float | str


def _key(name: str) -> dict[str, str]:
    """Field metadata naming the TOML key when it is not a valid Python name."""
    return {"key": name}


@frozen
class Model:
    """Identity of the model."""

    name: str
    description: str = ""
    extends: str | None = None
    reference: str | None = None
    reference_args: dict[str, str] = field(factory=dict)


@frozen
class Component:
    """One `[components.<role>]` table."""

    cls: str = field(metadata=_key("class"))
    kind: Literal["module", "tokenizer", "scheduler"] | None = None
    source: Literal["pretrained", "config"] | None = None
    pretrained: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@frozen
class FrameRule:
    """Valid frame counts are `multiple * k + offset`."""

    multiple: int
    offset: int


@frozen
class GeometrySpec:
    """`[geometry]`: latent channels, compression, frame and resolution rules, patching."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frames: FrameRule
    resolution_multiple: int
    patch: tuple[int, int, int] = (1, 1, 1)
    layout: Literal["tokens", "grid"] = "tokens"


@frozen
class MeanStd:
    """(z - mean) * scaling_factor / std."""

    kind: Literal["mean_std"]
    mean: StatRef
    std: StatRef
    scaling_factor: NumberRef = 1.0


@frozen
class ShiftScale:
    """(z - shift) * scale."""

    kind: Literal["shift_scale"]
    shift: NumberRef
    scale: NumberRef


@frozen
class NoNormalise:
    """Identity."""

    kind: Literal["none"]


Normaliser = MeanStd | ShiftScale | NoNormalise


@frozen
class Latent:
    """`[latent]`: VAE role, posterior mode or sample, normalisation."""

    normalise: Normaliser
    vae: str = "vae"
    encode: Literal["mode", "sample"] = "mode"


@frozen
class TextStage:
    """`[text.stage]`: a frozen module that turns the encoder's output into the final text conditioning."""

    component: str
    call: dict[str, str]
    outputs: tuple[str, ...]


@frozen
class Text:
    """`[text]`: how a caption becomes conditioning."""

    max_length: int
    encoder: str = "text_encoder"
    tokenizer: str = "tokenizer"
    padding_side: Literal["right", "left"] = "right"
    add_special_tokens: bool = True
    hidden_states: Literal["last", "stack_all"] = "last"
    encoder_mask: bool = True
    null_conditioning: Literal["empty_prompt", "zeros"] = "empty_prompt"
    zero_padding: bool = False
    length_multiple: int = 1
    clean: tuple[Literal["strip", "collapse_whitespace", "unescape_html", "fix_text"], ...] = ()
    stage: TextStage | None = None
    cache: Literal["after_stage", "before_stage"] = "after_stage"


@frozen
class Transformer:
    """`[transformer]`: the role, which output is the prediction, and the call mapping."""

    call: dict[str, str]
    component: str = "transformer"
    output: int = 0


@frozen
class UniformSigma:
    """sigma ~ U(0, 1)."""

    kind: Literal["uniform"]


@frozen
class LogitNormalSigma:
    """sigma = sigmoid(N(mean, std))."""

    kind: Literal["logit_normal"]
    mean: float = 0.0
    std: float = 1.0


SigmaDistribution = UniformSigma | LogitNormalSigma


@frozen
class NoShift:
    """No shift."""

    kind: Literal["none"]


@frozen
class FixedShift:
    """A constant shift s."""

    kind: Literal["fixed"]
    value: float


@frozen
class ResolutionShift:
    """log s interpolated linearly in the token count."""

    kind: Literal["resolution"]
    base_seq_len: int
    max_seq_len: int
    base_shift: float
    max_shift: float


Shift = NoShift | FixedShift | ResolutionShift


@frozen
class Flow:
    """`[flow]`: the training objective."""

    target: Literal["velocity"] = "velocity"
    sigma: SigmaDistribution = UniformSigma(kind="uniform")
    shift: Shift = NoShift(kind="none")
    uniform_fraction: float = 0.0
    loss_weight: str = "1"
    timestep: str = "sigma * 1000"


@frozen
class Stream:
    """`[streams.<name>]`: another latent stream the transformer takes besides the video (e.g. audio)."""

    noise: str
    dummy: str
    output: int
    pack: str = "x"
    sample: Literal["joint", "dummy"] = "joint"
    guidance: float | None = None


@frozen
class Perturbation:
    """`[[sampler.perturbations]]`: a guidance term, prediction += weight * (cond - perturbed)."""

    name: str
    scale: float
    call: dict[str, str]
    weight: str = "scale"


@frozen
class Sampler:
    """`[sampler]`: generation defaults."""

    scheduler: str = "scheduler"
    steps: int = 50
    guidance: float = 1.0
    guidance_rescale: float = 0.0
    fps: float = 24.0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    sigmas: Literal["linspace", "scheduler"] = "scheduler"
    shift: Shift = NoShift(kind="none")
    decode_timestep: float = 0.0
    decode_noise_scale: float | None = None
    negative_prompt: str = ""
    max_sequence_length: int | None = None
    guidance_space: Literal["velocity", "x0"] = "velocity"
    perturbations: tuple[Perturbation, ...] = ()


@frozen
class Parallel:
    """`[parallel]`: block lists to shard and checkpoint; always-frozen parameter name parts."""

    blocks: tuple[str, ...]
    frozen: tuple[str, ...] = ()


@frozen
class Lora:
    """`[lora]`: default LoRA targets, rank and alpha."""

    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    rank: int = 32
    alpha: float = 32.0
    comfyui_names: dict[str, str] = field(factory=dict)


@frozen
class Spec:
    """A whole model spec."""

    model: Model
    components: dict[str, Component]
    geometry: GeometrySpec
    latent: Latent
    text: Text
    transformer: Transformer
    flow: Flow
    sampler: Sampler
    parallel: Parallel
    lora: Lora = Lora()
    streams: dict[str, Stream] = field(factory=dict)


_TAGGED_UNIONS: dict[Any, dict[str, type]] = {
    Normaliser: {"mean_std": MeanStd, "shift_scale": ShiftScale, "none": NoNormalise},
    SigmaDistribution: {"uniform": UniformSigma, "logit_normal": LogitNormalSigma},
    Shift: {"none": NoShift, "fixed": FixedShift, "resolution": ResolutionShift},
}


def _structure_scalar_union(value: Any, type_: Any) -> Any:
    # The JSON Schema has already checked these values; lists become tuples so the spec stays frozen.
    return tuple(value) if isinstance(value, list) else value


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    for union, variants in _TAGGED_UNIONS.items():
        conv.register_structure_hook(
            union, lambda data, _t, variants=variants: conv.structure(data, variants[data["kind"]])
        )
    for union in (StatRef, NumberRef):
        conv.register_structure_hook(union, _structure_scalar_union)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], lambda data, _t: dict(data))

    def renames(cls: type) -> dict[str, Any]:
        return {f.name: override(rename=f.metadata["key"]) for f in attrs.fields(cls) if "key" in f.metadata}

    conv.register_structure_hook_factory(
        attrs.has,
        lambda cls: make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames(cls)),
    )
    conv.register_unstructure_hook_factory(
        attrs.has,
        lambda cls: make_dict_unstructure_fn(cls, conv, _cattrs_omit_if_default=False, **renames(cls)),
    )
    return conv


converter = _make_converter()


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Structure validated spec data into a frozen `Spec` (unknown keys are errors)."""
    return converter.structure(data, Spec)


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The spec as plain data with every default filled, dropping unset optional keys."""
    return _drop_none(converter.unstructure(spec))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value
