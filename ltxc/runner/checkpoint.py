"""Checkpoints with torch.distributed.checkpoint: trainable weights, optimiser, schedule, step, data position.

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

from ltxc.errors import UserError
from ltxc.fileio import atomic_write_json, atomic_write_text
from ltxc.runner.distributed import Distributed, barrier

CHECKPOINTS = "checkpoints"
LATEST = "latest"
META = "meta.json"


def _options(trainable_only: bool) -> StateDictOptions:
    # LoRA runs save only what trains: the frozen base is the spec's weights and is rebuilt from them.
    # Loading such a state must then not demand the frozen keys (strict=False); every saved key is still
    # one the model has, since the state was made by get_model_state_dict on the same model.
    return StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a run's checkpoints live."""
    return run_dir / CHECKPOINTS


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    meta: dict[str, Any],
    *,
    keep: int,
    trainable_only: bool,
    dist_info: Distributed,
) -> Path:
    """Save (collectively, every rank calls it) and return the checkpoint directory."""
    root = checkpoints_dir(run_dir)
    final = root / f"step-{step:08d}"
    tmp = root / f".step-{step:08d}.tmp"
    if dist_info.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    options = _options(trainable_only)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optim": get_optimizer_state_dict(model, optimizer, options=options),
    }
    dcp.save(state, checkpoint_id=str(tmp))
    barrier()
    if dist_info.is_main:
        atomic_write_json(tmp / META, {**meta, "step": step, "world_size": dist_info.world_size,
                                       "scheduler": scheduler.state_dict()})  # fmt: skip
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(root / LATEST, final.name + "\n")
        for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, if any."""
    root = checkpoints_dir(run_dir)
    pointer = root / LATEST
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / META).exists():
            return candidate
    complete = sorted(p for p in root.glob("step-*") if (p / META).exists())
    return complete[-1] if complete else None


def read_meta(path: Path) -> dict[str, Any]:
    """A checkpoint's metadata (step, mode, spec hash, batch layout, schedule state)."""
    meta_path = path / META
    if not meta_path.exists():
        raise UserError(f"{path}: not a complete ltxc checkpoint (no {META}); pass another --resume path")
    return json.loads(meta_path.read_text())


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, *, trainable_only: bool
) -> dict[str, Any]:
    """Restore weights, optimiser and schedule in place (collectively); return the checkpoint's metadata."""
    meta = read_meta(path)
    options = _options(trainable_only)
    state = {
        "model": get_model_state_dict(model, options=options),
        "optim": get_optimizer_state_dict(model, optimizer, options=options),
    }
    dcp.load(state, checkpoint_id=str(path))
    set_model_state_dict(model, state["model"], options=options)
    set_optimizer_state_dict(model, optimizer, state["optim"], options=options)
    scheduler.load_state_dict(meta["scheduler"])
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
