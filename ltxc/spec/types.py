"""The spec as frozen attrs classes, and the one cattrs converter that builds them from validated data.

These classes are pure data: they name what a model is, never how to run it. The objects that do the
work (geometry, normalisers, components, the call mapping) are built *from* them in `ltxc.compiler`. Every
class here ends in `Spec`, so it is never mistaken for the runtime object of the same idea.
"""

from __future__ import annotations

from typing import Any, Literal

from attrs import field, frozen

from ltxc.document.convert import drop_none, key, make_converter
from ltxc.spec.audio_types import AudioSourceSpec

# A VAE statistic: "<role>.<buffer>", "<role>.config.<key>" or a literal list of numbers.
StatRef = str | tuple[float, ...]
# A number, or a reference to one on a component.
NumberRef = float | str


@frozen
class ModelSpec:
    """Identity of the model."""

    name: str
    description: str = ""
    extends: str | None = None
    reference: str | None = None
    reference_args: dict[str, str] = field(factory=dict)


@frozen
class ComponentSpec:
    """One `[components.<role>]` table."""

    cls: str = field(metadata=key("class"))
    kind: Literal["module", "tokenizer", "scheduler"] | None = None
    source: Literal["pretrained", "config"] | None = None
    pretrained: str | None = None
    subfolder: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    seed: int = 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


@frozen
class FrameRuleSpec:
    """Valid frame counts are `multiple * k + offset`, up to `max` when set (1 for image models)."""

    multiple: int
    offset: int
    max: int | None = None


@frozen
class GeometrySpec:
    """`[geometry]`: latent channels, compression, frame and resolution rules, patching."""

    latent_channels: int
    spatial_compression: int
    temporal_compression: int
    frames: FrameRuleSpec
    resolution_multiple: int
    patch: tuple[int, int, int] = (1, 1, 1)
    layout: Literal["tokens", "grid"] = "tokens"


@frozen
class MeanStdSpec:
    """(z - mean) * scaling_factor / std."""

    kind: Literal["mean_std"]
    mean: StatRef
    std: StatRef
    scaling_factor: NumberRef = 1.0
    denormalise: Literal["multiply", "divide_reciprocal"] = "multiply"


@frozen
class ShiftScaleSpec:
    """(z - shift) * scale."""

    kind: Literal["shift_scale"]
    shift: NumberRef
    scale: NumberRef


@frozen
class NoNormaliseSpec:
    """Identity."""

    kind: Literal["none"]


NormaliserSpec = MeanStdSpec | ShiftScaleSpec | NoNormaliseSpec


@frozen
class LatentSpec:
    """`[latent]`: VAE role, posterior mode or sample, normalisation."""

    normalise: NormaliserSpec
    vae: str = "vae"
    encode: Literal["mode", "sample"] = "mode"
    # "image": the VAE takes [B, C, H, W] (ltxc folds the frames into the batch around it); unset: 5-D video
    vae_input: Literal["video", "image"] | None = None


@frozen
class TextStageSpec:
    """`[text.stage]`: a frozen module that turns the encoder's output into the final text conditioning."""

    component: str
    call: dict[str, str]
    outputs: tuple[str, ...]


@frozen
class TextEncoderSpec:
    """`[text.encoders.<name>]`: a further text encoder whose output is the text tensor `<name>`."""

    encoder: str
    tokenizer: str
    max_length: int
    output: Literal["pooled", "last"] = "pooled"  # `pooler_output` [B, D], or the last hidden state [B, L, D]
    padding_side: Literal["right", "left"] = "right"
    add_special_tokens: bool = True
    encoder_mask: bool = False


@frozen
class TextSpec:
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
    stage: TextStageSpec | None = None
    cache: Literal["after_stage", "before_stage"] = "after_stage"
    encoders: dict[str, TextEncoderSpec] | None = None  # further encoders (unset: none), in name order


@frozen
class TransformerSpec:
    """`[transformer]`: the role, which output is the prediction, and the call mapping."""

    call: dict[str, str]
    component: str = "transformer"
    output: int = 0


@frozen
class UniformSigmaSpec:
    """sigma ~ U(0, 1)."""

    kind: Literal["uniform"]


@frozen
class LogitNormalSigmaSpec:
    """sigma = sigmoid(N(mean, std))."""

    kind: Literal["logit_normal"]
    mean: float = 0.0
    std: float = 1.0


SigmaDistributionSpec = UniformSigmaSpec | LogitNormalSigmaSpec


@frozen
class NoShiftSpec:
    """No shift."""

    kind: Literal["none"]


@frozen
class FixedShiftSpec:
    """A constant shift s."""

    kind: Literal["fixed"]
    value: float


@frozen
class ResolutionShiftSpec:
    """log s interpolated linearly in the token count."""

    kind: Literal["resolution"]
    base_seq_len: int
    max_seq_len: int
    base_shift: float
    max_shift: float


ShiftSpec = NoShiftSpec | FixedShiftSpec | ResolutionShiftSpec


@frozen
class FlowSpec:
    """`[flow]`: the training objective."""

    target: Literal["velocity"] = "velocity"
    sigma: SigmaDistributionSpec = UniformSigmaSpec(kind="uniform")
    shift: ShiftSpec = NoShiftSpec(kind="none")
    uniform_fraction: float = 0.0
    loss_weight: str = "1"
    timestep: str = "sigma * 1000"


@frozen
class StreamDecodeSpec:
    """`[streams.<name>.decode]`: the stream's final latents -> a waveform, as the reference pipeline decodes them:
    denormalised on the packed tokens (x * std + mean, in the latents' dtype), unpacked, cast to the VAE's dtype,
    the VAE's `decode`, then the vocoder."""

    vae: str  # the role whose `decode` takes the unpacked latents
    vocoder: str  # the role that turns the VAE's output into the waveform [B, channels, samples]
    unpack: str  # expression of `x` (the packed tokens): the VAE's layout, the inverse of the stream's `pack`
    mean: StatRef  # per packed feature
    std: StatRef
    sample_rate: NumberRef  # the waveform's rate, e.g. "vocoder.config.output_sampling_rate"


@frozen
class StreamSpec:
    """`[streams.<name>]`: another latent stream the transformer takes besides the video (e.g. audio)."""

    noise: str
    dummy: str
    output: int
    pack: str = "x"
    sample: Literal["joint", "dummy"] = "joint"
    guidance: float | None = None
    source: AudioSourceSpec | None = None  # how a clip's sound becomes this stream's cached latents
    sigma: Literal["shared", "independent"] = "shared"  # joint training: the video's σ, or its own draw and shift
    modules: tuple[str, ...] = ()  # parameter-name parts of its branch and the cross-modal modules
    text: tuple[str, ...] | None = None  # the text tensors only this stream reads (its own CFG dropout coin)
    decode: StreamDecodeSpec | None = None  # generation: how its final latents become a waveform


@frozen
class PerturbationSpec:
    """`[[sampler.perturbations]]`: a guidance term, prediction += weight * (cond - perturbed)."""

    name: str
    scale: float
    call: dict[str, str]
    weight: str = "scale"


@frozen
class SamplerSpec:
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
    shift: ShiftSpec = NoShiftSpec(kind="none")
    decode_timestep: float = 0.0
    decode_noise_scale: float | None = None
    negative_prompt: str = ""
    max_sequence_length: int | None = None
    guidance_space: Literal["velocity", "x0"] = "velocity"
    perturbations: tuple[PerturbationSpec, ...] = ()
    cfg: Literal["batched", "separate"] = "batched"
    cfg_order: tuple[Literal["uncond", "cond"], ...] = ("uncond", "cond")
    input_dtype: str | None = None  # a role; unset: the transformer's
    guidance_dtype: Literal["float32", "model"] = "float32"
    decode: tuple[str, ...] | None = None  # unset: denormalise, cast to the VAE, noise
    latent_dtype: str | None = None  # a role whose dtype the latents take through the loop; unset: float32


@frozen
class ParallelSpec:
    """`[parallel]`: block lists to shard and checkpoint; always-frozen parameter name parts."""

    blocks: tuple[str, ...]
    frozen: tuple[str, ...] = ()


@frozen
class LoraSpec:
    """`[lora]`: default LoRA targets, rank and alpha."""

    targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    rank: int = 32
    alpha: float = 32.0
    comfyui_names: dict[str, str] = field(factory=dict)
    comfyui: Literal["generic", "diffusers"] | None = None  # unset: "generic" (and the plan hash it always had)


@frozen
class ReferenceInputSpec:
    """How a task's reference pipeline takes a condition's input (`ltxc verify --task`)."""

    argument: str  # its `__call__` keyword, e.g. "image" or "reference_conditions"
    wrap: str | None = None  # "module:Class" the input is wrapped in, e.g. diffusers' LTX2ReferenceCondition
    keyword: str = "frames"  # the keyword of `wrap` the input goes to
    in_list: bool = False  # the pipeline takes a list of them
    extra: dict[str, str] = field(factory=dict)  # further keywords of `wrap`, as expressions (e.g. strength)


@frozen
class ConditionSpec:
    """`[tasks.<task>.conditions.<name>]`: clean tokens a task adds to the target's, and how they are treated."""

    input: Literal["image", "video"]  # generation: `--image` / `--reference`; training: the clip's frame / the pair's
    place: Literal["frames", "append"]  # on latent frames [start, end) of the target, or extra tokens after it
    frames: tuple[int, int] = (0, 1)  # place = "frames": the latent-frame range [start, end)
    encode: Literal["mode", "sample"] | None = None  # the VAE posterior; unset: [latent] encode
    normalise: NormaliserSpec | None = None  # unset: [latent] normalise
    # sampling: pixels cast to the prompt's dtype and latents to float32 before normalising, or both in the VAE's
    encode_dtype: Literal["prompt", "vae"] = "prompt"
    keep: Literal["skip", "blend"] = "skip"  # sampling: the scheduler steps only the other tokens, or x0 is blended
    loss: bool = False  # conditioned tokens enter the loss
    downscale: int = 1  # place = "append": the input's size is the target's / downscale
    reference_input: ReferenceInputSpec | None = None


@frozen
class TaskSpec:
    """`[tasks.<name>]`: a conditioned task (image-to-video, IC-LoRA, ...) as data."""

    conditions: dict[str, ConditionSpec]
    description: str = ""
    call: dict[str, str] = field(factory=dict)  # [transformer.call] overrides while the task runs
    reference: str | None = None  # the diffusers pipeline `ltxc verify --task` compares against
    reference_args: dict[str, str] = field(factory=dict)
    lora_metadata: dict[str, str] = field(factory=dict)  # key -> expression, written into an exported LoRA
    noise: Literal["grid", "packed"] = "grid"  # sampling: each stream's noise drawn in its own shape, or packed


@frozen
class InputSpec:
    """`[inputs.<name>]`: a scalar the transformer takes (call name `input.<name>`, float32 [B])."""

    sample: float  # its value when sampling (`ltxc run generate` may override it)
    train: float  # its value in training (the run config may override it)
    description: str = ""


@frozen
class Spec:
    """A whole model spec."""

    model: ModelSpec
    components: dict[str, ComponentSpec]
    geometry: GeometrySpec
    latent: LatentSpec
    text: TextSpec
    transformer: TransformerSpec
    flow: FlowSpec
    sampler: SamplerSpec
    parallel: ParallelSpec
    lora: LoraSpec = LoraSpec()
    streams: dict[str, StreamSpec] = field(factory=dict)
    tasks: dict[str, TaskSpec] = field(factory=dict)
    inputs: dict[str, InputSpec] | None = None  # unset: none


_TAGGED_UNIONS: dict[Any, dict[str, type]] = {
    NormaliserSpec: {"mean_std": MeanStdSpec, "shift_scale": ShiftScaleSpec, "none": NoNormaliseSpec},
    SigmaDistributionSpec: {"uniform": UniformSigmaSpec, "logit_normal": LogitNormalSigmaSpec},
    ShiftSpec: {"none": NoShiftSpec, "fixed": FixedShiftSpec, "resolution": ResolutionShiftSpec},
}


converter = make_converter(_TAGGED_UNIONS, (StatRef, NumberRef))


def spec_from_dict(data: dict[str, Any]) -> Spec:
    """Structure validated spec data into a frozen `Spec` (unknown keys are errors)."""
    return converter.structure(data, Spec)


def spec_to_dict(spec: Spec) -> dict[str, Any]:
    """The spec as plain data with every default filled, dropping unset optional keys."""
    return drop_none(converter.unstructure(spec))
