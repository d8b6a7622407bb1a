"""The run directory's layout: every file and folder name a run writes, and the one typed reader of `run.json`.

```
<run>/run.json                      the run config (with derived defaults) and the plan it trained
<run>/media/                        the synthetic sample set, when the run made one
<run>/cache/                        the default latent cache
<run>/checkpoints/step-NNNNNNNN/    DCP shards + meta.json; `checkpoints/latest` names the newest
<run>/export/lora/                  pytorch_lora_weights.safetensors (diffusers), comfyui_lora.safetensors
<run>/export/transformer/           a full fine-tune as a diffusers model directory
<run>/metrics.jsonl, loss.png       metrics, one JSON line per logged step, and the loss curve
<run>/tensorboard/                  the same metrics (and validation contact sheets) for TensorBoard
<run>/validation/step-NNNNNNNN/     validation videos and contact sheets
```
Nothing else in ltxc types these names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cattrs
from attrs import frozen

from ltxc.errors import UserError
from ltxc.fileio import atomic_write_json
from ltxc.runner.config import RunConfig, run_config_from_dict, run_config_to_dict

RUN_RECORD = "run.json"
MEDIA = "media"
CACHE = "cache"
CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"
EXPORT = "export"
LORA = "lora"
TRANSFORMER = "transformer"
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"  # the name `load_lora_weights(dir)` looks for first
COMFYUI_LORA = "comfyui_lora.safetensors"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
LOSS_CURVE = "loss.png"
VALIDATION = "validation"


STEP_PREFIX = "step-"


def step_name(step: int) -> str:
    """`step-00000400`: how checkpoints, exports and validation folders name a step."""
    return f"{STEP_PREFIX}{step:08d}"


@frozen
class RunDir:
    """Paths inside one run's output directory."""

    root: Path

    @classmethod
    def of(cls, config: RunConfig) -> RunDir:
        """The run directory a loaded run config writes to (`run.output`)."""
        if config.run.output is None:
            raise ValueError("run.output is unset: load the run config with load_run_config")
        return cls(Path(config.run.output))

    @property
    def record(self) -> Path:
        """`run.json`."""
        return self.root / RUN_RECORD

    @property
    def media(self) -> Path:
        """Where the synthetic sample set is made."""
        return self.root / MEDIA

    @property
    def checkpoints(self) -> Path:
        """The checkpoints folder."""
        return self.root / CHECKPOINTS

    def checkpoint(self, step: int) -> Path:
        """The checkpoint of `step`."""
        return self.checkpoints / step_name(step)

    @property
    def export(self) -> Path:
        """The end-of-run exports."""
        return self.root / EXPORT

    def export_of(self, step: int) -> Path:
        """Where `ltxc run export` writes a checkpoint's exports by default."""
        return self.root / f"{EXPORT}-{step_name(step)}"

    @property
    def metrics(self) -> Path:
        """The metrics log."""
        return self.root / METRICS

    @property
    def tensorboard(self) -> Path:
        """The TensorBoard event folder."""
        return self.root / TENSORBOARD

    @property
    def loss_curve(self) -> Path:
        """The loss curve image."""
        return self.root / LOSS_CURVE

    def validation(self, step: int) -> Path:
        """The validation samples of `step`."""
        return self.root / VALIDATION / step_name(step)


def run_dir_of_checkpoint(checkpoint: Path) -> RunDir:
    """The run a training checkpoint belongs to (`<run>/checkpoints/step-N`)."""
    return RunDir(checkpoint.parent.parent)


def is_training_checkpoint(path: Path) -> bool:
    """Whether `path` is a complete training checkpoint (it has its meta.json)."""
    return (path / META).is_file()


def lora_file(directory: Path) -> Path | None:
    """The diffusers LoRA file in an export, its `lora/` folder or a run's `export/lora/`, if any."""
    for candidate in (directory, directory / LORA, directory / EXPORT / LORA):
        if (candidate / DIFFUSERS_LORA).is_file():
            return candidate / DIFFUSERS_LORA
    return None


def transformer_dir(directory: Path) -> Path | None:
    """A full-weights transformer directory (config.json) in an export or a run, if any."""
    for candidate in (directory, directory / TRANSFORMER, directory / EXPORT / TRANSFORMER):
        if (candidate / "config.json").is_file():
            return candidate
    return None


@frozen
class RunRecord:
    """`run.json`, typed: the run config the run trained with and its plan (as `plan.json` holds it)."""

    config: RunConfig
    plan: dict[str, Any]

    @property
    def plan_hash(self) -> str:
        """The plan's content hash."""
        return str(self.plan.get("hash"))


def write_record(run: RunDir, config: RunConfig, plan_json: dict[str, Any]) -> Path:
    """Write `run.json` atomically."""
    return atomic_write_json(run.record, {"config": run_config_to_dict(config), "plan": plan_json})


def read_record(run: RunDir) -> RunRecord:
    """Read `run.json`; a clear error when the directory is not a run."""
    path = run.record
    if not path.is_file():
        raise UserError(f"{run.root}: not an ltxc run directory (no {RUN_RECORD}); pass the run's output directory")
    try:
        content = json.loads(path.read_text())
        return RunRecord(run_config_from_dict(content["config"]), content["plan"])
    except (OSError, ValueError, KeyError, TypeError, cattrs.BaseValidationError) as exc:
        raise UserError(f"{path}: cannot read the run record ({exc}); is it from another ltxc version?") from None
