"""AdamW (float32, 8-bit state, or bf16 weights) and the learning-rate schedule, from the run config's
`[optimizer]` and `[schedule]` as they are."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from ltxc.runner.config import OptimizerSection, ScheduleSection


def make_optimizer(
    params: Iterable[torch.nn.Parameter], optimizer: OptimizerSection, device: torch.device
) -> torch.optim.Optimizer:
    """The `[optimizer] name` over the trainable parameters: torch's AdamW (fused kernels on GPU when asked for
    or "auto"), torchao's AdamW8bit (8-bit moments), or torchao's AdamW on bf16 weights with stochastic rounding.

    torchao's optimizers work on FSDP2 shards (DTensor): each rank quantises its own shard's moments.
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters: check the training mode and the LoRA targets")
    common = {"lr": optimizer.lr, "betas": tuple(optimizer.betas), "weight_decay": optimizer.weight_decay,
              "eps": optimizer.eps}  # fmt: skip
    if optimizer.name == "adamw_8bit":
        return torchao_optim().AdamW8bit(params, **common, block_size=STATE_BLOCK)
    if optimizer.name == "adamw_bf16":
        # bf16 weights and moments; each update is rounded stochastically into bf16, so updates smaller than
        # the weight's bf16 step still move it on average (round-to-nearest would drop them). Measured on the
        # tiny demo spec (specs/tiny), full fine-tune, 50 steps, lr 1e-3, 4 clips, one CPU process: mean loss of the
        # first / last 10% of steps 2.1231 -> 1.2686 with float32 AdamW, 2.1237 -> 1.2691 with this (+0.04%).
        return torchao_optim()._AdamW(params, **common, bf16_stochastic_round=True)
    fused = (device.type == "cuda") if optimizer.fused == "auto" else bool(optimizer.fused)
    return torch.optim.AdamW(params, **common, fused=fused or None)  # type: ignore[arg-type]


STATE_BLOCK = 256  # AdamW8bit's block size: values sharing one scale
STATE_MIN = 4096  # AdamW8bit keeps float32 moments for (local) tensors smaller than this, as bitsandbytes does


def quantised_states(optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """(moments held in 8 bits, moments held as plain tensors) of an optimizer that has stepped."""
    packed = plain = 0
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                value = state[key]
                local = value.to_local() if hasattr(value, "to_local") else value
                quantised = type(local).__name__ == "OptimState8bit"
                packed, plain = packed + quantised, plain + (not quantised)
    return packed, plain


def torchao_optim():  # type: ignore[no-untyped-def]
    """`torchao.optim`, imported on first use (what torchao logs on a CPU build is filtered in `ltxc/__init__.py`)."""
    import torchao.optim

    return torchao.optim


def lr_factor(step: int, total: int, schedule: ScheduleSection) -> float:
    """Multiplier of the base LR at `step` (0-based): linear warmup, then constant/cosine/linear decay."""
    if schedule.warmup and step < schedule.warmup:
        return (step + 1) / schedule.warmup
    if schedule.kind == "constant":
        return 1.0
    span = max(1, total - schedule.warmup)
    progress = min(1.0, (step - schedule.warmup) / span)
    floor = schedule.min_lr_ratio
    if schedule.kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def make_lr_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, schedule: ScheduleSection
) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule: a LambdaLR following `lr_factor` over `total_steps`."""
    return _Schedule(optimizer, lambda step: lr_factor(step, total_steps, schedule))


class _Schedule(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR that records its LRs as floats, also for an optimizer that keeps each group's LR as a tensor
    (torchao's): the state goes into a checkpoint's JSON, and a resumed run computes its LRs as the uninterrupted
    run did (from the same float base LRs)."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambda: Any) -> None:
        super().__init__(optimizer, lr_lambda)
        self.base_lrs = [float(lr) for lr in self.base_lrs]

    def get_last_lr(self) -> list[float]:
        return [float(lr) for lr in self._last_lr]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["base_lrs"] = [float(lr) for lr in state["base_lrs"]]
        state["_last_lr"] = [float(lr) for lr in state["_last_lr"]]
        return state
