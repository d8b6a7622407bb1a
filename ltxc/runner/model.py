"""The trainable transformer: frozen parts frozen, LoRA added, float32 masters for what trains only, the
frozen base as loaded or quantised, sharded."""

from __future__ import annotations

import sys

import torch
from peft import LoraConfig

from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.block_swap import cpu_device_if, place_model
from ltxc.runner.config import RunConfig
from ltxc.runner.distributed import Distributed, device_mesh
from ltxc.runner.lora import add_lora, run_lora_config
from ltxc.runner.parallelize import kept_in_float32, parallelize
from ltxc.runner.quantise import check_base, count_quantised, quantise_base, tensor_bytes
from ltxc.runner.seeds import LORA_INIT, derived_seed
from ltxc.runner.streams import parameter_trains

BIG_MODEL_PARAMS = 100_000_000  # "auto" activation checkpointing turns on above this size


def build_model(
    plan: Plan, config: RunConfig, info: Distributed
) -> tuple[torch.nn.Module, LoraConfig | None, torch.dtype | None]:
    """The trainable transformer, its LoRA config (None for a full fine-tune), and the dtype it computes in
    under mixed precision (None: float32 throughout).

    In named steps (the memory plan follows the same ones): freeze (`_make_trainable`), master weights
    (`master_weights`: only what trains is float32), quantise the frozen base (`quantise_base`), shard.
    """
    check_base(config.train.base, config.train.mode, info.world_size, config.parallel.cpu_offload)
    check_optimizer(config)
    model = plan.components()[plan.transformer_role]
    lora = _make_trainable(model, plan, config)
    master_weights(model, config)
    report = quantise_base(model, config.train.base, shards=info.world_size)
    if report is not None and info.is_main:
        print(report.line(), file=sys.stderr)
    param_dtype = compute_dtype(config.parallel.precision, info.device, model)
    # the training device; with block swapping the swapped blocks' frozen weights stay in CPU memory, and under
    # FSDP2's CPU offload everything starts on the CPU
    place_model(model, plan.blocks, config.train.block_swap, cpu_device_if(config.parallel.cpu_offload, info.device))
    parallelize(
        model,
        plan.blocks,
        device_mesh(info, config.parallel.replicate),
        param_dtype=_sharding_dtype(param_dtype, model, info),
        activation_checkpointing=_activation_checkpointing(model, config.train.activation_checkpointing),
        cpu_offload=config.parallel.cpu_offload,
        unsharded=config.train.block_swap > 0 or config.train.fused_optimizer_step,
    )
    model.train()
    local, total = _parameter_bytes(model)
    print(f"rank {info.rank}/{info.world_size}: holds {local / 2**20:.2f} MiB of {total / 2**20:.2f} MiB of "
          f"transformer parameters", file=sys.stderr)  # fmt: skip
    return model, lora, param_dtype


def _sharding_dtype(param_dtype: torch.dtype | None, model: torch.nn.Module, info: Distributed) -> torch.dtype | None:
    """The mixed-precision dtype FSDP2 casts to; None on one process with a quantised base, which is then not
    wrapped at all: torch 2.13's FSDP2 copies only the first of a tensor subclass's all-gather inputs on a group of
    one (NF4 has three), and int8 weight-only tensors have no FSDP2 hooks. Unwrapped, the base computes in its own
    dtype (the adapter casts the inputs to it) and peft casts each LoRA's input to the LoRA's float32."""
    return None if info.world_size == 1 and count_quantised(model) else param_dtype


def check_optimizer(config: RunConfig) -> None:
    """Refuse an optimizer the training mode cannot use."""
    if config.optimizer.name == "adamw_bf16" and config.train.mode != "full":
        raise UserError('optimizer.name = "adamw_bf16" trains bf16 weights and needs train.mode = "full" (a LoRA\'s '
                        'adapters are small and train in float32); use "adamw" or "adamw_8bit"')  # fmt: skip


def master_weights(model: torch.nn.Module, config: RunConfig) -> None:
    """Only what trains gets a float32 master copy; frozen parameters stay as loaded (bf16 stays bf16; modules
    the class keeps in float32 stay float32). `parallel.precision = "fp32"` asks for float32 throughout, so
    there every weight is upcast. Under `optimizer.name = "adamw_bf16"` the trained weights stay bf16 (its
    stochastic rounding stands in for the master copy), except modules the class keeps in float32."""
    if config.parallel.precision == "fp32":
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                tensor.data = tensor.data.to(torch.float32)
        return
    if config.optimizer.name == "adamw_bf16":
        kept = {id(p) for module in kept_in_float32(model) for p in module.parameters()}
        for param in model.parameters():
            if param.requires_grad and param.is_floating_point() and id(param) not in kept:
                param.data = param.data.to(torch.bfloat16)
        return
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.to(torch.float32)


def compute_dtype(precision: str, device: torch.device, model: torch.nn.Module | None = None) -> torch.dtype | None:
    """bf16 when asked for, or "auto" on a GPU; under "auto" on the CPU, the dtype of the model's weights below
    float32 if it holds any (a frozen bf16 base), else None (float32)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if precision == "auto" and model is not None:
        low = [p.dtype for p in model.parameters() if p.is_floating_point() and p.dtype != torch.float32]
        return low[0] if low else None
    return None


def _make_trainable(model: torch.nn.Module, plan: Plan, config: RunConfig) -> LoraConfig | None:
    """Full: every weight trains; LoRA: only the adapter's. Frozen parts never train, except the modules of the
    streams a `train.audio` run trains (and with `train.video = false` only those). Returns the LoRA config."""
    model.requires_grad_(config.train.mode == "full")
    lora = None
    if config.train.mode == "lora":
        lora = run_lora_config(config, plan)
        with torch.random.fork_rng(devices=[]):  # the LoRA's random init comes from the run's seed alone
            torch.manual_seed(derived_seed(config.run.seed, LORA_INIT))
            add_lora(model, lora)
    for name, param in model.named_parameters():
        if not parameter_trains(name, plan, config):
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
        held = tensor_bytes(shard)  # NF4: its packed bytes, not numel x its nominal dtype
        local += held
        total += held * param.numel() // shard.numel() if shard.numel() else param.numel() * param.element_size()
    return local, total
