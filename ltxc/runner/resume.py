"""Resuming: which checkpoint a run continues from, what a checkpoint records about the run that made it, and
the refusals when this run would not continue that run (another mode, LR schedule, seed, global batch or
trained streams)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ltxc.errors import UserError
from ltxc.runner.checkpoint import latest_checkpoint, load_checkpoint
from ltxc.runner.config import CheckpointSection, RunConfig, TrainSection
from ltxc.runner.distributed import Distributed
from ltxc.runner.run_dir import RunDir

RESUME_AUTO, RESUME_NEVER = "auto", "never"
START_OVER = "or --resume never (or another run.name) starts a new run"


def resume_source(checkpoint: CheckpointSection, run: RunDir) -> Path | None:
    """The checkpoint `checkpoint.resume` names: none, this run's latest, another run's latest, or a path."""
    if checkpoint.resume == RESUME_NEVER:
        return None
    if checkpoint.resume == RESUME_AUTO:
        return latest_checkpoint(run.root)
    path = Path(checkpoint.resume)
    if RunDir(path).checkpoints.is_dir():  # a run directory: its latest checkpoint
        found = latest_checkpoint(path)
        if found is None:
            raise UserError(f"--resume {path}: that run has no complete checkpoint")
        return found
    if not path.is_dir():
        raise UserError(f"--resume {path}: no such checkpoint directory")
    return path


def run_meta(config: RunConfig, plan_hash: str, total_steps: int, world_size: int) -> dict[str, Any]:
    """What a checkpoint records about its run (beside the step and the LR schedule's state); a resume must
    match it."""
    return {
        "total_steps": total_steps,
        "mode": config.train.mode,
        "seed": config.run.seed,
        "spec_hash": plan_hash,
        "global_batch": config.global_batch(world_size),
        "grad_accum": config.train.grad_accum,
        "streams": "+".join(s for s, on in (("video", config.train.video), ("audio", config.train.audio)) if on),
    }


def resume(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    lr_schedule: Any,
    config: RunConfig,
    info: Distributed,
) -> int:
    """Restore a checkpoint that `check_resumable` accepted; return its step."""
    meta = load_checkpoint(path, model, optimizer, lr_schedule, trainable_only=config.train.mode == "lora")
    start = int(meta["step"])
    if info.is_main:
        print(f"resumed from {path} at step {start}", file=sys.stderr)
    return start


def check_resumable(
    path: Path, recorded: dict[str, Any], now: dict[str, Any], config: RunConfig, world_size: int
) -> None:
    """Refuse, in one line, a checkpoint this run would not continue; warn about another version of the spec."""
    problem = (
        _mode_problem(recorded, now)
        or _batch_problem(recorded, now, world_size)
        or _seed_problem(recorded, now)
        or _steps_problem(recorded, now, config.train)
        or _streams_problem(recorded, now)
    )
    if problem:
        raise UserError(f"{path} {problem}")
    if recorded.get("spec_hash", now["spec_hash"]) != now["spec_hash"]:  # a spec edited mid-run is legal
        print(
            f"warning: {path} was trained from another version of the spec (plan hash "
            f"{str(recorded['spec_hash'])[:12]}, this plan is {now['spec_hash'][:12]}); continuing with this plan",
            file=sys.stderr,
        )


def _recorded(recorded: dict[str, Any], now: dict[str, Any], key: str) -> Any:
    """The checkpoint's value of `key`; this run's where an older checkpoint did not record it."""
    return recorded.get(key, now[key])


def _mode_problem(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    mode = _recorded(recorded, now, "mode")
    if mode == now["mode"]:
        return None
    return (
        f"is a {mode} checkpoint and this run trains {now['mode']}: pass --resume never (or another run.name) "
        f"to start a new run, or set train.mode={mode} to continue it"
    )


def _batch_problem(recorded: dict[str, Any], now: dict[str, Any], world_size: int) -> str | None:
    # The sampler cuts global batches of batch size x ranks per micro-batch, so grad_accum must match too.
    batch, accum = int(_recorded(recorded, now, "global_batch")), int(_recorded(recorded, now, "grad_accum"))
    if (batch, accum) == (now["global_batch"], now["grad_accum"]):
        return None
    per_rank, rest = divmod(batch, accum * world_size)
    fix = (
        f"--set data.batch_size={per_rank} --set train.grad_accum={accum} continues it on {world_size} rank(s)"
        if per_rank and not rest
        else f"a number of ranks dividing {batch // accum}, with train.grad_accum={accum}, continues it"
    )
    return (
        f"was trained with a global batch of {batch} (ranks x data.batch_size x train.grad_accum, grad_accum "
        f"{accum}), this run has {now['global_batch']} (grad_accum {now['grad_accum']}): the data order would "
        f"not continue; {fix}, {START_OVER}"
    )


def _streams_problem(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    trained = str(_recorded(recorded, now, "streams"))
    if trained == now["streams"]:
        return None
    video, audio = ("true" if s in trained.split("+") else "false" for s in ("video", "audio"))
    return (
        f"trained the streams {trained} and this run trains {now['streams']}: other modules would train; "
        f"--set train.audio={audio} --set train.video={video} continues it, {START_OVER}"
    )


def _seed_problem(recorded: dict[str, Any], now: dict[str, Any]) -> str | None:
    seed = _recorded(recorded, now, "seed")
    if seed == now["seed"]:
        return None
    return (
        f"was trained with run.seed {seed} and this run has {now['seed']}: its data order and noise would not "
        f"continue; --set run.seed={seed} continues it, {START_OVER}"
    )


def _steps_problem(recorded: dict[str, Any], now: dict[str, Any], train: TrainSection) -> str | None:
    total = _recorded(recorded, now, "total_steps")
    if total == now["total_steps"]:
        return None
    this = (
        f"train.steps = {train.steps}"
        if train.steps is not None
        else f"train.epochs = {train.epochs}, {now['total_steps']} steps"
    )
    return (
        f"was trained on an LR schedule of {total} steps and this run has {this}: the schedule would not "
        f"continue; --set train.steps={total} continues the recorded schedule, {START_OVER}"
    )
