"""Checkpoints with torch.distributed.checkpoint: trainable weights and optimiser state (DCP shards), and in
`meta.json` the step, the LR schedule's state and what the run recorded about itself (see runner/resume.py).
The data position is not stored: it is a function of the step (runner/data.py).

Written into a temp directory and renamed into place, so a crash never leaves a checkpoint that looks
complete; `latest` names the newest; only the last K are kept. DCP reshards on load, so a checkpoint saved
with N ranks resumes with M.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

from ltxc.errors import UserError
from ltxc.fileio import atomic_write_json, atomic_write_text
from ltxc.runner.distributed import Distributed, barrier
from ltxc.runner.run_dir import LATEST, META, STEP_PREFIX, RunDir


def _options(trainable_only: bool) -> StateDictOptions:
    # LoRA runs save only what trains: the frozen base is the spec's weights and is rebuilt from them.
    # Loading such a state must then not demand the frozen keys (strict=False); every saved key is still
    # one the model has, since the state was made by get_model_state_dict on the same model.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def save_checkpoint(
    run: RunDir,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: Any,
    meta: dict[str, Any],
    *,
    keep: int,
    trainable_only: bool,
    dist_info: Distributed,
) -> Path:
    """Save (collectively, every rank calls it) and return the checkpoint directory."""
    root = run.checkpoints
    final = run.checkpoint(step)
    tmp = root / f".{final.name}.tmp"
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    options = _options(trainable_only)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optim": plain_optimizer_state(get_optimizer_state_dict(model, optimizer, options=options)),
    }
    dcp.save(state, checkpoint_id=str(tmp))
    barrier()
    if dist_info.is_main:
        atomic_write_json(tmp / META, {**meta, "step": step, "world_size": dist_info.world_size,
                                       "scheduler": lr_schedule.state_dict()})  # fmt: skip
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, final.name + "\n")
        for old in sorted(p for p in root.glob(f"{STEP_PREFIX}*") if p.is_dir())[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def _is_8bit(value: Any) -> bool:
    local = value.to_local() if isinstance(value, DTensor) else value
    return type(local).__name__ == "OptimState8bit"


def _like(value: Any, local: torch.Tensor) -> torch.Tensor:
    """`local` laid out as `value` is: a DTensor shard with its placements, or the plain tensor."""
    if not isinstance(value, DTensor):
        return local
    return DTensor.from_local(local, value.device_mesh, value.placements, run_check=False, shape=value.shape,
                              stride=value.stride())  # fmt: skip


def _split_8bit(key: str, value: Any) -> dict[str, Any]:
    """One optimizer state entry, with an 8-bit moment (torchao's `OptimState8bit`, or a DTensor shard of one) as
    two plain tensors shaped like its parameter: its codes (`key`) and each element's block scale (`key_scale`)."""
    if not _is_8bit(value):
        return {key: value}
    local = value.to_local() if isinstance(value, DTensor) else value
    scales = local.scale.repeat_interleave(local.block_size).view(local.shape)
    return {key: _like(value, local.codes), f"{key}{SCALE}": _like(value, scales)}


SCALE = "_scale"  # the suffix of an 8-bit moment's per-element block scale in a checkpoint


def plain_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """The optimizer state dict with each 8-bit moment as plain tensors, for DCP: it pickles torchao's tensor
    subclass, which it then refuses to load (weights-only unpickling), and a float32 copy of the moment would not
    give back the same 8 bits (a block's scale is not always recoverable from its values). Codes and per-element
    scales are shaped like the parameter, so DCP reshards them as it reshards the parameter."""
    out = {}
    for name, values in state.get("state", {}).items():
        out[name] = {k: v for key, value in values.items() for k, v in _split_8bit(key, value).items()}
    return {**state, "state": out}


def requantise_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After loading: each 8-bit moment, held as codes and per-element scales, back into torchao's 8-bit form,
    bit for bit where this layout quantises it (else as float32, the values it stands for)."""
    from torchao.optim.subclass_8bit import get_qmap_signed, get_qmap_unsigned

    new_buffer = getattr(optimizer, "_new_buffer", None)
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, signed in (("exp_avg", True), ("exp_avg_sq", False), ("max_exp_avg_sq", False)):
                if f"{key}{SCALE}" not in state:
                    continue
                codes, scales = state[key], state.pop(f"{key}{SCALE}")
                codes = (codes.to_local() if isinstance(codes, DTensor) else codes).to(torch.uint8)
                scales = scales.to_local() if isinstance(scales, DTensor) else scales
                qmap = torch.tensor(get_qmap_signed() if signed else get_qmap_unsigned(), device=codes.device)
                values = qmap[codes.long()] * scales.to(torch.float32)  # what the moment stands for
                fresh = new_buffer(param, signed) if new_buffer is not None else None
                local = fresh.to_local() if isinstance(fresh, DTensor) else fresh
                if fresh is None or not _is_8bit(fresh):
                    state[key] = _like(param, values)
                    continue
                blocks = scales.reshape(-1, local.block_size)
                if torch.equal(blocks, blocks[:, :1].expand_as(blocks)):  # the saved blocks are this shard's
                    local.codes.copy_(codes)
                    local.scale.copy_(blocks[:, 0])
                else:  # resharded across block boundaries: quantised again from the values
                    local.copy_(values)
                state[key] = fresh


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    root = RunDir(run_dir).checkpoints
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / META).exists():
            return candidate
    complete = sorted(p for p in root.glob(f"{STEP_PREFIX}*") if (p / META).exists())
    return complete[-1] if complete else None


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata (step, mode, seed, total steps, spec hash, batch layout, LR schedule state)."""
    meta_path = path / META
    if not meta_path.exists():
        raise UserError(f"{path}: not a complete ltxc checkpoint (no {META}); pass another --resume path")
    return json.loads(meta_path.read_text())


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_schedule: Any, *, trainable_only: bool
) -> dict[str, Any]:
    """Restore weights, optimiser and LR schedule in place (collectively); return the checkpoint's metadata."""
    meta = read_meta(path)
    options = _options(trainable_only)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optim": plain_optimizer_state(get_optimizer_state_dict(model, optimizer, options=options)),
    }
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optim"], options=options)
    requantise_optimizer_state(optimizer)
    lr_schedule.load_state_dict(meta["scheduler"])
    return meta


def load_weights(path: Path, model: torch.nn.Module, *, trainable_only: bool) -> dict[str, Any]:
    """Restore only the model weights of a checkpoint (for exports); return its metadata."""
    meta_path = path / META
    if not meta_path.exists():
        raise UserError(f"{path}: not a complete ltxc checkpoint (no {META})")
    options = _options(trainable_only)
    state = {"model": get_model_state_dict(model, options=options)}
    with warnings.catch_warnings():  # outside a process group DCP loads in this process, as wanted
        warnings.filterwarnings("ignore", message=".*assuming the intent is to load in a single process.*")
        dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=options)
    return json.loads(meta_path.read_text())
