"""The optimiser step fused into the backward pass (`train.fused_optimizer_step = true`).

Each trainable parameter steps as soon as its gradient is accumulated (`register_post_accumulate_grad_hook`), and
its gradient is freed at once, so a full fine-tune never holds a whole model's gradients: at most the ones of
the ops in flight. This is the fused backward pass musubi-tuner uses for its one-GPU full fine-tune of a 19 B
video transformer (Adafactor, 57.4 GB at 832x480x49; /work/shared/research/peers-2026-11.md §4.1) and
PyTorch's tutorial "How to save memory by fusing the optimizer step into the backward pass".

It keeps the run's one optimiser (its state dict, checkpoints, resume and LR schedule are unchanged): the hook
points each parameter group at just this parameter for one `step()`, so every parameter takes exactly the update
the normal step gives it (per-parameter AdamW maths; bit-equal on the CPU, where AdamW runs per tensor).

What it cannot do, refused by `check_fused_step`: clip by the global gradient norm (all gradients are needed
before any step), accumulate over micro-batches (the first micro-batch would step), or run under FSDP2 (which
reduce-scatters gradients after the backward, outside the hook). The norm is still measured: each gradient's
norm is kept, and their norm is the step's `grad_norm` (as `clip_grad_norm_` computes it).
"""

from __future__ import annotations

from typing import Any

import torch

from ltxc.errors import UserError


class FusedStep:
    """Hooks that step `optimizer` per parameter inside the backward and free each gradient."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.norms: list[torch.Tensor] = []
        self.enabled = True  # off: gradients accumulate as usual (nothing steps)
        self.steps = 0  # parameter steps taken, for tests
        self._group = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        self._handles: list[Any] = []
        for param in model.parameters():
            if param.requires_grad and id(param) in self._group:
                self._handles.append(param.register_post_accumulate_grad_hook(self._step))

    def begin(self) -> None:
        """Before a step's backward: forget the last step's gradient norms."""
        self.norms.clear()

    def grad_norm(self) -> float:
        """The global gradient norm of the last backward (the norm of the per-parameter norms)."""
        if not self.norms:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack(self.norms), 2.0))

    def remove(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _step(self, param: torch.Tensor) -> None:
        if not self.enabled or param.grad is None:
            return
        self.norms.append(torch.linalg.vector_norm(param.grad.detach(), 2.0))
        group = self._group[id(param)]
        groups, params = self.optimizer.param_groups, group["params"]
        self.optimizer.param_groups, group["params"] = [group], [param]  # one step of exactly this parameter
        try:
            self.optimizer.step()
        finally:
            self.optimizer.param_groups, group["params"] = groups, params
        param.grad = None
        self.steps += 1


def check_fused_step(enabled: bool, *, world_size: int, grad_accum: int, grad_clip: float) -> None:
    """The settings the fused step cannot honour, each refused in one line."""
    if not enabled:
        return
    if grad_clip > 0:
        raise UserError(
            f"train.fused_optimizer_step needs train.grad_clip = 0 (got {grad_clip:g}): each parameter steps as "
            "soon as its gradient exists, before the global gradient norm that clipping divides by is known"
        )
    if grad_accum > 1:
        raise UserError(
            f"train.fused_optimizer_step needs train.grad_accum = 1 (got {grad_accum}): the first micro-batch's "
            "backward would already step the optimizer"
        )
    if world_size > 1:
        raise UserError(
            f"train.fused_optimizer_step needs one process (got {world_size}): FSDP2 reduces gradients after the "
            "backward, outside the per-parameter hook"
        )
