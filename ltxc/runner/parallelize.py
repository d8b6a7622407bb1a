"""FSDP2 + activation checkpointing, applied in the order that matters."""

from __future__ import annotations

import contextlib
import functools
import operator
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint


def blocks_of(model: torch.nn.Module, paths: Sequence[str]) -> list[torch.nn.Module]:
    """The modules in the spec's block lists (`[parallel] blocks`), never guessed from module names."""
    found: list[torch.nn.Module] = []
    for path in paths:
        try:
            container = operator.attrgetter(path)(model)
        except AttributeError:
            raise ValueError(f"parallel.blocks: {type(model).__name__} has no attribute {path!r}") from None
        found.extend(container if isinstance(container, torch.nn.ModuleList) else [container])
    return found


def kept_in_float32(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The outermost submodules that hold parameters and that the model's class keeps in float32 when loaded
    at a lower dtype (diffusers' `_keep_in_fp32_modules`), matched by whole dotted name parts as diffusers'
    loader matches them. Parameters that the list names directly (not a module) are not among them."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if not name or not any(part in keep for part in name.split(".")):
            continue
        if any(name.startswith(outer + ".") for outer in found) or next(module.parameters(), None) is None:
            continue
        found[name] = module
    return list(found.values())


def checkpoint_block(block: torch.nn.Module) -> None:
    """Recompute this block's activations in backward instead of storing them.

    The forward is wrapped in place (no wrapper module), so parameter names — and with them LoRA keys,
    checkpoints and exports — stay exactly the model's own.
    """
    inner = block.forward

    @functools.wraps(inner)
    def forward(*args, **kwargs):  # type: ignore[no-untyped-def]
        if not torch.is_grad_enabled():
            return inner(*args, **kwargs)
        return checkpoint(inner, *args, use_reentrant=False, **kwargs)

    block.forward = forward  # type: ignore[method-assign]


def parallelize(
    model: torch.nn.Module,
    block_paths: Sequence[str],
    mesh: DeviceMesh,
    *,
    param_dtype: torch.dtype | None,
    activation_checkpointing: bool,
    cpu_offload: bool = False,
    unsharded: bool = False,
) -> torch.nn.Module:
    """Activation checkpointing per block -> `fully_shard` per block -> `fully_shard` on the root.

    Under mixed precision, the modules the model's class keeps in float32 are sharded first, each with a
    float32 policy, so training computes them as inference loads them.

    Checkpointing goes first so FSDP's hooks wrap the checkpointed forward (the recomputation then sees
    gathered parameters); blocks are sharded before the root so each block is its own all-gather unit and
    the root only holds what no block owns (embeddings, norms, heads).

    `cpu_offload`: FSDP2's `CPUOffloadPolicy` on every unit (sharded parameters, gradients and the optimiser
    step live in CPU memory; each unit is copied to the device for its forward and backward); it shards even a
    single process. `unsharded`: one process is never wrapped (block swapping and the fused optimiser step need
    the plain parameters); it then computes in its parameters' own dtypes.
    """
    blocks = blocks_of(model, block_paths)
    if activation_checkpointing:
        for block in blocks:
            checkpoint_block(block)
    if mesh.size() == 1 and (param_dtype is None or unsharded) and not cpu_offload:
        # One process in full precision: sharding over a group of one only adds copies (all-gather in,
        # reduce-scatter out) to every block, every step. Checkpoints (DCP) reshard either way.
        return model
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    # pinned host memory only where there is a GPU to copy to
    offload = {"offload_policy": CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda")} if cpu_offload else {}
    if mixed:
        # Inputs reach them as the parent gives them, as at inference; only their parameters stay float32.
        full = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32, cast_forward_inputs=False)
        for module in kept_in_float32(model):  # before their parent block, so they are their own unit
            fully_shard(module, mesh=mesh, mp_policy=full, **offload)
    for block in blocks:
        fully_shard(block, mesh=mesh, **({"mp_policy": mixed} if mixed else {}), **offload)
    # The root does not cast its inputs: the timestep must reach the model in float32.
    root = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, **({"mp_policy": root} if param_dtype else {}), **offload)
    if mixed:
        keep_frozen_kept_parameters_in_float32(model)
    return model


def unsharded_autocast(
    model: torch.nn.Module, compute_dtype: torch.dtype | None, device: torch.device
) -> contextlib.AbstractContextManager[None]:
    """Mixed precision for a model `parallelize` left unwrapped on a GPU (block swapping, the fused step): there no
    FSDP policy casts the float32 master weights, so autocast computes in `compute_dtype` instead. A no-op on the
    CPU, in float32, and for an FSDP2 model."""
    if compute_dtype is None or device.type != "cuda" or isinstance(model, FSDPModule):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=compute_dtype)  # type: ignore[return-value]


def keep_frozen_kept_parameters_in_float32(model: torch.nn.Module) -> list[str]:
    """Parameters the class keeps in float32 that are not inside a kept module (e.g. a bare scale-shift table)
    share their unit's policy; when frozen, exempt each from the unit's cast, so it computes in float32 as
    inference loads it. Returns their names.

    A trainable one cannot be exempted: FSDP2 reduce-scatters one gradient dtype per unit. It then computes in
    the unit's dtype (its float32 master weight is kept), and a warning names it. This reaches into FSDP2's
    per-parameter state (`FSDPParam.init_dtype_attrs`, run at its lazy init), guarded so a torch without it
    only warns.
    """
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    paths = {id(module): name for name, module in model.named_modules()}
    exempt, cast = [], []
    for module in model.modules():
        state = module._get_fsdp_state() if hasattr(module, "_get_fsdp_state") else None
        group = getattr(state, "_fsdp_param_group", None)
        for fsdp_param in getattr(group, "fsdp_params", ()):
            info = fsdp_param._module_info
            name = f"{paths[id(info.module)]}.{info.param_name}".lstrip(".")
            if not any(part in keep for part in name.split(".")) or group.mp_policy.param_dtype == torch.float32:
                continue
            if fsdp_param.sharded_param.requires_grad or not hasattr(fsdp_param, "init_dtype_attrs"):
                cast.append(name)
                continue
            fsdp_param.init_dtype_attrs = functools.partial(_without_cast, fsdp_param.init_dtype_attrs)
            exempt.append(name)
    if cast:
        named = ", ".join(cast[:4]) + (" ..." if len(cast) > 4 else "")
        warnings.warn(
            f"{len(cast)} trainable parameter(s) the model keeps in float32 compute in the mixed-precision dtype "
            f"under FSDP2 (one gradient dtype per sharded unit): {named}",
            stacklevel=2,
        )
    return exempt


def _without_cast(init_dtype_attrs: Callable[[MixedPrecisionPolicy], None], policy: MixedPrecisionPolicy) -> None:
    """FSDPParam's dtype set-up with no parameter cast (its gradients, if any, reduce as the unit's)."""
    init_dtype_attrs(MixedPrecisionPolicy(param_dtype=None, reduce_dtype=policy.reduce_dtype))
