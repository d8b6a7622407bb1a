"""The run's transformer on the meta device, as training would hold it: no weights, no GPU, no network.

Its config comes from, in order: a local `pretrained` directory's own `config.json`; the published config that
travels with the project, `specs/configs/<hub id>/<subfolder>/config.json` (copied from the checkpoints' config
or diffusers' conversion scripts); a spec's inline config. Then the run's precision policy is applied as the
runner applies it: frozen parameters keep their loaded dtype (the class's keep-in-float32 modules stay
float32), trainable parameters get float32 master weights (bf16 with `adamw_bf16`), a LoRA is added through
peft, and the spec's frozen parts never train (the runner's `_make_trainable` and `master_weights`).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ltxc.components import DTYPES, ComponentRecipe
from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig

CONFIG_FILE = "config.json"


def configs_root() -> Path:
    """`specs/configs`: shipped in the package, else the checkout's."""
    packaged = resources.files("ltxc") / "specs" / "configs"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "specs" / "configs"


def module_config(recipe: ComponentRecipe) -> tuple[dict[str, Any], str]:
    """The component's config and where it came from (a local directory wins over the shipped copy)."""
    if recipe.source == "config":
        return dict(recipe.config or {}), "the spec's inline config"
    candidates = []
    local = Path(str(recipe.pretrained))
    if local.is_dir():
        candidates.append(local / (recipe.subfolder or "") / CONFIG_FILE)
    candidates.append(configs_root() / str(recipe.pretrained) / (recipe.subfolder or "") / CONFIG_FILE)
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text()), str(path)
    raise UserError(
        f"no config for {recipe.role} ({recipe.pretrained}, {recipe.subfolder or 'no subfolder'}): the memory plan "
        f"needs a local directory with its {CONFIG_FILE} or a published copy at {candidates[-1]}"
    )


def meta_module(recipe: ComponentRecipe) -> tuple[torch.nn.Module, str]:
    """The component built on the meta device at its spec dtype, keep-in-float32 modules in float32."""
    config, origin = module_config(recipe)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    cls = recipe.cls
    from transformers import PreTrainedModel

    with torch.device("meta"):
        if issubclass(cls, PreTrainedModel):
            module = cls(cls.config_class(**config))
        elif hasattr(cls, "from_config"):
            module = cls.from_config(config)
        else:
            module = cls(**config)
    as_loaded_dtypes(module, DTYPES[recipe.dtype])
    return module.eval(), origin


def as_loaded_dtypes(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Floating parameters and buffers at `dtype`, except in the class's keep-in-float32 modules (matched by
    whole dotted name parts, as diffusers' loader matches them)."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        target = torch.float32 if any(part in keep for part in name.split(".")) else dtype
        tensor.data = tensor.data.to(target)


def meta_transformer(plan: Plan, config: RunConfig) -> tuple[torch.nn.Module, str]:
    """The run's trainable transformer on meta, through the runner's own steps (`build_model`): the refusals,
    what trains (LoRA added, frozen parts frozen), then the master weights. Quantisation is counted, not
    applied (`memory_plan.quantised_bytes`). Returns it and where its config came from."""
    from ltxc.runner.model import _make_trainable, check_optimizer, master_weights
    from ltxc.runner.quantise import check_base

    check_base(config.train.base, config.train.mode)
    check_optimizer(config)
    model, origin = meta_module(plan.recipes[plan.transformer_role])
    with torch.device("meta"):  # the adapters too: their random init is free on meta
        _make_trainable(model, plan, config)
    master_weights(model, config)
    return model, origin
