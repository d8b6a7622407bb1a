"""LoRA through peft and diffusers' peft integration: the config, adding it, and reading its weights back."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from peft import LoraConfig, get_peft_model_state_dict

from ltxc.runner.streams import trained_modules

if TYPE_CHECKING:
    from ltxc.plan import Plan
    from ltxc.runner.config import RunConfig


def lora_config(
    targets: Sequence[str],
    rank: int,
    alpha: float,
    exclude: Sequence[str] = (),
    keep: Sequence[str] = (),
    within: Sequence[str] = (),
) -> LoraConfig:
    """A LoRA on the modules named (or ending in) `targets`, never on modules whose name contains an `exclude` part
    unless it also contains a `keep` part; with `within`, only on modules whose name contains one of its parts."""
    if not targets:
        raise ValueError("a LoRA needs at least one target module name (e.g. to_q, to_k, to_v, to_out.0)")
    if rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
    if alpha <= 0:
        raise ValueError(f"LoRA alpha must be positive, got {alpha}")
    # peft reads a string exclude_modules as a regex matched against the whole module name, so a
    # ".*(a|b).*" pattern expresses "contains a or b" without needing the model here.
    exclude = [part for part in exclude if not any(k in part for k in keep)]  # a name holding it holds a keep part
    excluded = f".*(?:{_any(exclude)}).*" if exclude else None
    if excluded and keep:  # "contains an exclude part and no keep part"
        excluded = f"(?!.*(?:{_any(keep)})){excluded}"
    # a string target is matched against the whole name too: "contains a `within` part, ends in a target"
    chosen: list[str] | str = f"(?=.*(?:{_any(within)}))(?:.*\\.)?(?:{_any(targets)})" if within else list(targets)
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=chosen,
        exclude_modules=excluded,
        init_lora_weights=True,  # A random, B zero: training starts exactly at the base model
    )


def run_lora_config(config: RunConfig, plan: Plan) -> LoraConfig:
    """The run's LoRA: each `[lora]` value of the run config, else the plan's default; never on frozen parts except
    the modules of the streams the run trains (`train.audio`), and only on those with `train.video = false`."""
    section, defaults = config.lora, plan.lora
    streams = trained_modules(plan, config)
    return lora_config(
        section.targets or defaults.targets,
        section.rank or defaults.rank,
        section.alpha or defaults.alpha,
        exclude=plan.frozen,
        keep=streams,
        within=() if config.train.video else streams,
    )


def _any(parts: Sequence[str]) -> str:
    """A regex alternation of the literal `parts`."""
    return "|".join(re.escape(part) for part in parts)


def add_lora(transformer: torch.nn.Module, config: LoraConfig) -> None:
    """Freeze every base weight, then add the adapter; only the (fp32) LoRA weights are trainable."""
    transformer.requires_grad_(False)
    transformer.add_adapter(config)  # diffusers' peft integration: the model keeps its class and its names
    for param in transformer.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            # fp32 LoRA weights even on a bf16 base: small updates would round away in bf16
            param.data = param.data.to(torch.float32)


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights with peft's adapter-free names (as diffusers saves them), full tensors on the CPU.

    Under FSDP2 every rank must call this: gathering a sharded weight is a collective.
    """
    state = get_peft_model_state_dict(transformer)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if hasattr(value, "full_tensor"):  # a DTensor shard: gather the whole weight
            value = value.full_tensor()
        out[key] = value.detach().to("cpu", copy=True).contiguous()
    return out


def lora_scale(config: LoraConfig, rank: int) -> float:
    """The factor peft multiplies B·A by for a module of this rank (alpha/rank, or alpha/√rank with rsLoRA)."""
    if config.rank_pattern or config.alpha_pattern:
        raise ValueError("per-module LoRA rank/alpha patterns are not supported by the exports")
    return config.lora_alpha / (rank**0.5 if config.use_rslora else rank)
