"""FSDP2 + activation checkpointing, applied in the order that matters."""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
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
) -> torch.nn.Module:
    """Activation checkpointing per block -> `fully_shard` per block -> `fully_shard` on the root.

    Checkpointing goes first so FSDP's hooks wrap the checkpointed forward (the recomputation then sees
    gathered parameters); blocks are sharded before the root so each block is its own all-gather unit and
    the root only holds what no block owns (embeddings, norms, heads).
    """
    blocks = blocks_of(model, block_paths)
    if activation_checkpointing:
        for block in blocks:
            checkpoint_block(block)
    if mesh.size() == 1 and param_dtype is None:
        # One process in full precision: sharding over a group of one only adds copies (all-gather in,
        # reduce-scatter out) to every block, every step. Checkpoints (DCP) reshard either way.
        return model
    mixed = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    for block in blocks:
        fully_shard(block, mesh=mesh, **({"mp_policy": mixed} if mixed else {}))
    # The root does not cast its inputs: the timestep must reach the model in float32.
    root = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, **({"mp_policy": root} if param_dtype else {}))
    return model
