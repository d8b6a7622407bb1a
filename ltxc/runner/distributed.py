"""Process-group setup: torchrun (any number of ranks, nodes) or a single plain process."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from attrs import frozen
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

_SELF_MADE = False  # whether this process set up its own one-rank group environment


@frozen
class Distributed:
    """Who this process is and where it computes."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, exports and checkpoint metadata."""
        return self.rank == 0


def init_distributed(device: str | None = None) -> Distributed:
    """Join torchrun's process group, or make a one-process group (FSDP2 needs one either way).

    NCCL on GPU, gloo on CPU.
    """
    global _SELF_MADE
    if "RANK" not in os.environ or (_SELF_MADE and not dist.is_initialized()):
        # a plain `ltxc run train`: a group of one (the env says so to code that reads it; the port is
        # only a placeholder for it, the group itself uses an in-memory store)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        _SELF_MADE = True
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        if _SELF_MADE:  # one process: an in-memory store, so no TCP port can be taken by someone else meanwhile
            dist.init_process_group(backend, store=dist.HashStore(), rank=rank, world_size=world)
        else:
            dist.init_process_group(backend, rank=rank, world_size=world)
    return Distributed(rank, world, local, target)


def device_mesh(info: Distributed, replicate: int = 1) -> DeviceMesh:
    """1-D shard mesh, or 2-D (replicate, shard) for HSDP."""
    if replicate <= 1:
        return init_device_mesh(info.device.type, (info.world_size,), mesh_dim_names=("shard",))
    if info.world_size % replicate:
        raise ValueError(f"parallel.replicate = {replicate} does not divide the world size {info.world_size}")
    shape = (replicate, info.world_size // replicate)
    return init_device_mesh(info.device.type, shape, mesh_dim_names=("replicate", "shard"))


def barrier() -> None:
    """Wait for every rank."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def shutdown() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
