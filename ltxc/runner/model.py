"""The trainable transformer: fp32 master weights, frozen parts frozen, LoRA added, sharded."""

from __future__ import annotations

import sys

import torch
from peft import LoraConfig

from ltxc.plan import Plan
from ltxc.runner.config import RunConfig
from ltxc.runner.distributed import Distributed, device_mesh
from ltxc.runner.lora import add_lora, run_lora_config
from ltxc.runner.parallelize import parallelize
from ltxc.runner.seeds import LORA_INIT, derived_seed

BIG_MODEL_PARAMS = 100_000_000  # "auto" activation checkpointing turns on above this size


def build_model(
    plan: Plan, config: RunConfig, info: Distributed
) -> tuple[torch.nn.Module, LoraConfig | None, torch.dtype | None]:
    """The trainable transformer, its LoRA config (None for a full fine-tune), and the dtype it computes in
    under mixed precision (None: float32 throughout)."""
    model = plan.components()[plan.transformer_role]
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.to(torch.float32)  # master weights in fp32; FSDP's policy computes in bf16 on GPU
    lora = _make_trainable(model, plan, config)
    param_dtype = compute_dtype(config.parallel.precision, info.device)
    model.to(info.device)
    parallelize(
        model,
        plan.blocks,
        device_mesh(info, config.parallel.replicate),
        param_dtype=param_dtype,
        activation_checkpointing=_activation_checkpointing(model, config.train.activation_checkpointing),
    )
    model.train()
    local, total = _parameter_bytes(model)
    print(f"rank {info.rank}/{info.world_size}: holds {local / 2**20:.2f} MiB of {total / 2**20:.2f} MiB of "
          f"transformer parameters", file=sys.stderr)  # fmt: skip
    return model, lora, param_dtype


def compute_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 when asked for, or "auto" on a GPU; None (float32) otherwise."""
    return torch.bfloat16 if precision == "bf16" or (precision == "auto" and device.type == "cuda") else None


def _make_trainable(model: torch.nn.Module, plan: Plan, config: RunConfig) -> LoraConfig | None:
    """Full: every weight trains; LoRA: only the adapter's. Frozen parts never train. Returns the LoRA config."""
    model.requires_grad_(config.train.mode == "full")
    lora = None
    if config.train.mode == "lora":
        lora = run_lora_config(config, plan)
        with torch.random.fork_rng(devices=[]):  # the LoRA's random init comes from the run's seed alone
            torch.manual_seed(derived_seed(config.run.seed, LORA_INIT))
            add_lora(model, lora)
    for name, param in model.named_parameters():
        if any(part in name for part in plan.frozen):
            param.requires_grad_(False)  # e.g. branches the video-only objective never reaches
    return lora


def _activation_checkpointing(model: torch.nn.Module, setting: str) -> bool:
    """Whether to recompute activations: "on", "off", or "auto" (on for big transformers only)."""
    big = sum(p.numel() for p in model.parameters()) >= BIG_MODEL_PARAMS
    return setting == "on" or (setting == "auto" and big)


def _parameter_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of parameters this rank holds, bytes of the whole model) — sharding at a glance."""
    local = total = 0
    for param in model.parameters():
        shard = param.to_local() if hasattr(param, "to_local") else param
        local += shard.numel() * shard.element_size()
        total += param.numel() * param.element_size()
    return local, total
