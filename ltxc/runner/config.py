"""The run config, owned by the runner: TOML -> `extends` -> `--set` -> JSON Schema -> frozen attrs sections
that the runner takes as they are, with derived defaults filled. Each default is written once, here (the
schema states the same numbers and a test holds them equal).

An empty run config is the embedded default. Rules the schema can't express (steps *or* epochs, warmup
shorter than the run, a full export only from a full fine-tune) are reported like schema errors,
`FILE:LINE: key.path: message`; a `--set` item's place reads `--set:N`, the N-th item.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import attrs
from attrs import frozen

from ltxc.document import KeyPath, Loaded, load_document
from ltxc.document.convert import drop_none, make_converter
from ltxc.errors import ConfigError, Problem, dotted

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA = "run.schema.json"
# `data.media` naming the sample set that ltxc makes itself, rather than a folder.
SYNTHETIC_MEDIA = "builtin:synthetic"
DEFAULT_NAME = "default"
DEFAULT_STEPS = 200
SET_ORIGIN = "--set"
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")
converter = make_converter()


@frozen
class RunSection:
    """`[run]`: name, plan, output directory, seed, parent config."""

    name: str | None = None
    plan: str | None = None
    output: str | None = None
    seed: int = 0
    extends: str | None = None


@frozen
class DataSection:
    """`[data]`: the cache (and media to fill it from) and how batches are loaded."""

    cache: str | None = None
    media: str | None = None
    batch_size: int = 1
    workers: int = 0
    pin_memory: bool = True


@frozen
class TrainSection:
    """`[train]`: mode, length (steps or epochs) and what each step does."""

    mode: Literal["lora", "full"] = "lora"
    steps: int | None = None
    epochs: int | None = None
    grad_accum: int = 1
    grad_clip: float = 1.0
    cfg_dropout: float = 0.1
    activation_checkpointing: Literal["auto", "on", "off"] = "auto"
    base: Literal["as_loaded", "nf4", "int8"] = "as_loaded"
    block_swap: int = 0
    fused_optimizer_step: bool = False
    audio: bool = False
    video: bool = True
    audio_loss_weight: float = 1.0
    audio_cfg_dropout: float | None = None  # the streams' own text ([streams] text) on its own coin; None: the video's
    # the spec's [inputs] by name (e.g. a distilled guidance scale); a shared {} default is safe: the class is frozen
    inputs: dict[str, float] = {}  # noqa: RUF008


@frozen
class LoraSection:
    """`[lora]`: overrides of the spec's LoRA settings (None keeps the spec's)."""

    rank: int | None = None
    alpha: float | None = None
    targets: tuple[str, ...] | None = None


@frozen
class OptimizerSection:
    """`[optimizer]`: AdamW, its 8-bit-state form, or bf16 weights with stochastic rounding."""

    name: Literal["adamw", "adamw_8bit", "adamw_bf16"] = "adamw"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    eps: float = 1e-8
    fused: Literal["auto", True, False] = "auto"


@frozen
class ScheduleSection:
    """`[schedule]`: warmup, then a constant, cosine or linear learning rate."""

    kind: Literal["constant", "cosine", "linear"] = "constant"
    warmup: int = 0
    min_lr_ratio: float = 0.0


@frozen
class CheckpointSection:
    """`[checkpoint]`: cadence, retention, resume."""

    every: int = 100
    keep: int = 3
    resume: str = "auto"


@frozen
class LogSection:
    """`[log]`: metrics cadence and sinks."""

    every: int = 1
    jsonl: bool = True
    tensorboard: bool = True
    progress: bool = True


@frozen
class ParallelSection:
    """`[parallel]`: HSDP replica groups, precision, CPU offload and the memory each rank may use."""

    replicate: int = 1
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    cpu_offload: bool = False
    device_memory_gib: float | None = None


@frozen
class ExportSection:
    """`[export]`: what is written at the end of the run."""

    lora_diffusers: bool = True
    lora_comfyui: bool = True
    full: bool | None = None


@frozen
class ValidationSection:
    """`[validation]`: videos sampled from the live model during training."""

    prompts: tuple[str, ...] = ()
    negative_prompt: str | None = None
    every: int = 0
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    images: tuple[str, ...] = ()
    decode: Literal["background", "device"] = "background"


@frozen
class TaskSection:
    """`[tasks.<name>]`: how often a sample trains the spec's task `<name>` instead of text-to-video."""

    probability: float = 0.0


@frozen
class RunConfig:
    """A whole run config. From `load_run_config`, derived defaults are filled: `run.name`, `run.output`,
    `data.cache` and `export.full` are set, and exactly one of `train.steps` / `train.epochs` is."""

    run: RunSection = RunSection()
    data: DataSection = DataSection()
    train: TrainSection = TrainSection()
    lora: LoraSection = LoraSection()
    optimizer: OptimizerSection = OptimizerSection()
    schedule: ScheduleSection = ScheduleSection()
    checkpoint: CheckpointSection = CheckpointSection()
    log: LogSection = LogSection()
    parallel: ParallelSection = ParallelSection()
    export: ExportSection = ExportSection()
    validation: ValidationSection = ValidationSection()
    tasks: dict[str, TaskSection] = attrs.field(factory=dict)

    def global_batch(self, world_size: int) -> int:
        """Samples per optimiser step on `world_size` ranks: ranks x data.batch_size x train.grad_accum."""
        return world_size * self.data.batch_size * self.train.grad_accum


def load_run_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Loaded:
    """Load a run config (None: the embedded default) with `--set` items on top; `.value` is a `RunConfig`."""
    parsed = parse_overrides(overrides)
    for number, (key, value) in enumerate(parsed.items(), start=1):
        if key == ("run", "extends") or (key == ("run",) and isinstance(value, dict) and "extends" in value):
            message = "cannot be set with --set (parents are read before overrides apply); write it in the file"
            raise ConfigError([Problem(SET_ORIGIN, number, "run.extends", message)])
    if path is None:
        path = embedded_default()
    loaded = load_document(
        path,
        SCHEMA,
        run_config_from_dict,
        extends_key=("run", "extends"),
        overrides=parsed,
        # `schedule.kind` is a setting, not a tagged union: a child switching to cosine keeps the warmup.
        replace_on_kind_change=False,
    )
    return _finish(loaded, _name_from_file(Path(path)))


def embedded_default() -> Path:
    """`specs/runs/default.toml`: what `ltxc run train` runs with no --config (shipped in the package)."""
    packaged = resources.files("ltxc") / "specs" / "runs" / "default.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "specs" / "runs" / "default.toml"


def parse_overrides(items: Sequence[str]) -> dict[KeyPath, Any]:
    """`["train.steps=50", "run.name=foo"]` -> {("train", "steps"): 50, ("run", "name"): "foo"}.

    Each value is read as a TOML value (50, 3e-5, true, ["to_q"], "quoted"), else taken as a bare string.
    A malformed item, or a key given twice (or inside another given key), is a `ConfigError` at `--set:N`.
    """
    parsed: dict[KeyPath, Any] = {}
    given: dict[KeyPath, int] = {}
    problems: list[Problem] = []
    for number, item in enumerate(items, start=1):
        key_text, eq, value_text = item.partition("=")
        key = tuple(part.strip() for part in key_text.split("."))
        if not eq:
            problems.append(Problem(SET_ORIGIN, number, "", f"{item!r} is not KEY=VALUE (e.g. --set train.steps=50)"))
            continue
        if not all(_KEY_PART.match(part) for part in key):
            message = f"{item!r} has no valid key before '=' (a dotted key like train.steps, e.g. train.steps=50)"
            problems.append(Problem(SET_ORIGIN, number, "", message))
            continue
        clash = next((n for k, n in given.items() if k[: len(key)] == key or key[: len(k)] == k), None)
        if clash is not None:
            problems.append(
                Problem(SET_ORIGIN, number, dotted(key), f"already set by --set item {clash} ({items[clash - 1]!r})")
            )
            continue
        parsed[key] = _toml_value(value_text.strip())
        given[key] = number
    if problems:
        raise ConfigError(problems)
    return parsed


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Structure validated run-config data (no derived defaults filled; `load_run_config` fills them)."""
    return converter.structure(data, RunConfig)


def run_config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain TOML/JSON-able data (e.g. to record in the run directory); unset keys dropped."""
    return drop_none(converter.unstructure(config))


def _toml_value(text: str) -> Any:
    try:
        document = tomllib.loads(f"value = {text}")
    except tomllib.TOMLDecodeError:
        return text
    # "1\nother = 2" parses, but as two keys: it was never one value.
    return document["value"] if list(document) == ["value"] else text


def _name_from_file(path: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).lstrip("._-")
    return name or DEFAULT_NAME


def _finish(loaded: Loaded, default_name: str) -> Loaded:
    """Apply the cross-field rules and fill the derived defaults."""
    config: RunConfig = loaded.value
    locator = loaded.locator
    data = loaded.data
    problems: list[Problem] = []
    train = config.train
    if train.steps is not None and train.epochs is not None:
        dropped = _steps_or_epochs(loaded, problems)
        if dropped:
            data = {**data, "train": {k: v for k, v in data["train"].items() if k != dropped}}
            train = attrs.evolve(train, **{dropped: None})
    if train.steps is None and train.epochs is None:
        train = attrs.evolve(train, steps=DEFAULT_STEPS)
    warmup = config.schedule.warmup
    if train.steps is not None and 0 < train.steps <= warmup:
        message = f"{warmup} warmup steps leave none after warmup: train.steps is {train.steps}; lower the warmup"
        problems.append(locator.problem(("schedule", "warmup"), message))
    if config.export.full and train.mode != "full":
        message = (
            'only a full fine-tune (train.mode = "full") exports the whole transformer; a LoRA run exports its LoRA'
        )
        problems.append(locator.problem(("export", "full"), message))
    _task_rules(loaded, problems)
    if not train.video and not train.audio:
        message = "false trains no stream: set train.audio = true to train the audio side only"
        problems.append(locator.problem(("train", "video"), message))
    if train.audio_cfg_dropout is not None and not train.audio:
        message = "a rate of the audio's own needs train.audio = true (a video-only run drops all text together)"
        problems.append(locator.problem(("train", "audio_cfg_dropout"), message))
    if problems:
        raise ConfigError(problems)
    name = config.run.name or default_name
    output = config.run.output or f"runs/{name}"
    media = config.data.media
    if config.data.cache is None and media is None:
        media = SYNTHETIC_MEDIA  # nothing said where data comes from: the embedded default's sample set
    resolved = attrs.evolve(
        config,
        run=attrs.evolve(config.run, name=name, output=output),
        data=attrs.evolve(config.data, cache=config.data.cache or f"{output}/cache", media=media),
        train=train,
        export=attrs.evolve(
            config.export, full=train.mode == "full" if config.export.full is None else config.export.full
        ),
    )
    return attrs.evolve(loaded, value=resolved, data=data)


def _task_rules(loaded: Loaded, problems: list[Problem]) -> None:
    """A sample trains at most one task (the probabilities add up to at most 1); validation images pair with the
    prompts one to one."""
    config: RunConfig = loaded.value
    given = {name: task.probability for name, task in config.tasks.items() if task.probability > 0}
    if sum(given.values()) > 1:
        # reported at the probability written last, the one that tipped the sum over 1
        layer = {file: rank for rank, file in enumerate(loaded.files)}  # --set is after every file

        def written(name: str) -> tuple[int, int]:
            file, line = loaded.locator.where(("tasks", name, "probability"))
            return layer.get(file, len(layer)), line

        last = max(given, key=written)
        shares = ", ".join(f"{name} {p:g}" for name, p in sorted(given.items()))
        message = f"task probabilities add up to {sum(given.values()):g} ({shares}); a sample trains at most one task"
        problems.append(loaded.locator.problem(("tasks", last, "probability"), message))
    images, prompts = config.validation.images, config.validation.prompts
    if images and len(images) != len(prompts):
        message = f"{len(images)} images for {len(prompts)} prompts: validation.images gives one image per prompt"
        problems.append(loaded.locator.problem(("validation", "images"), message))


def _steps_or_epochs(loaded: Loaded, problems: list[Problem]) -> str | None:
    """Both set: an error within one file (or within --set); else the key from the earlier layer, to drop."""
    layer = {file: rank for rank, file in enumerate(loaded.files)}  # --set is after every file
    steps_at = loaded.locator.where(("train", "steps"))
    epochs_at = loaded.locator.where(("train", "epochs"))
    steps_rank, epochs_rank = layer.get(steps_at[0], len(layer)), layer.get(epochs_at[0], len(layer))
    if steps_rank != epochs_rank:
        return "steps" if steps_rank < epochs_rank else "epochs"
    later, earlier = ("epochs", steps_at) if epochs_at[1] >= steps_at[1] else ("steps", epochs_at)
    other = "steps" if later == "epochs" else "epochs"
    message = f"set train.steps or train.epochs, not both (train.{other} is set at {earlier[0]}:{earlier[1]})"
    problems.append(loaded.locator.problem(("train", later), message))
    return None


__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_STEPS",
    "SYNTHETIC_MEDIA",
    "CheckpointSection",
    "DataSection",
    "ExportSection",
    "LogSection",
    "LoraSection",
    "OptimizerSection",
    "ParallelSection",
    "RunConfig",
    "RunSection",
    "ScheduleSection",
    "TaskSection",
    "TrainSection",
    "load_run_config",
    "parse_overrides",
    "run_config_from_dict",
    "run_config_to_dict",
]
