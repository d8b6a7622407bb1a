"""Block swapping (`train.block_swap = N`): the last N transformer blocks keep their frozen weights in CPU memory
and stream them to the training device for their forward and their backward, one block at a time.

The route musubi-tuner takes to fit a 19 B video transformer's LoRA training into 11-19 GB (its `ModelOffloader`,
`--blocks_to_swap`: the blocks at the end of the list live on the CPU and move in around their forward and
backward; see /work/shared/research/peers-2026-11.md §4.1). Here, as there, the *last* N blocks are swapped:
the forward ends with them and the backward starts with them, so the first block brought in for the backward is
the one the forward just used.

How it works, and why it is exact:
- Only frozen parameters (a LoRA's base) and buffers move. Each keeps one home copy on the CPU (pinned when the
  device is a GPU), and moving it in is `param.data = home.to(device)`; moving it out just points `param.data`
  back at the home copy: frozen weights never change, so nothing is copied back (host-to-device only).
  Trainable parameters (the adapters) stay on the device with their gradients and optimiser state.
- Forward: a pre-hook moves the block in, a post-hook moves it out.
- What the backward needs: autograd saves tensors for the backward, and a swapped block's ops save its weights
  (`linear` saves a transposed view of its weight), which would keep every device copy alive until the backward.
  So during a swapped block's forward a `saved_tensors_hooks` pair saves a weight (or a view of one) as a
  reference to its parameter plus the view's geometry, and the backward rebuilds the view from the weight as it is
  then (moved in again). A hook on each block output's gradient moves that block in before its backward; it moves
  out when the backward reaches the block before it (every block's outputs get the hook) or when `settle()` runs
  after `backward()`. With activation checkpointing nothing is saved inside the block; its recomputation runs
  inside the block's backward and finds the weights in place.
- The arithmetic is the same: the same tensors, values and devices at every op. On the CPU (device "cpu") the
  hooks still run and every move makes a real copy, so the tests see losses bit-identical to no swapping.

One process only: under FSDP2 a block's parameters are DTensor shards that FSDP itself gathers and frees.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch

from ltxc.errors import UserError
from ltxc.runner.parallelize import blocks_of

ATTRIBUTE = "ltxc_block_swap"  # where `place_model` leaves the model's BlockSwap


class BlockSwap:
    """The swapped blocks of one model, their home copies, and the hooks that stream them."""

    def __init__(self, blocks: Sequence[torch.nn.Module], swapped: int, device: torch.device) -> None:
        if swapped < 0 or swapped > len(blocks):
            raise UserError(f"train.block_swap = {swapped}: the model has {len(blocks)} blocks (use 0..{len(blocks)})")
        self.device = torch.device(device)
        self.blocks = list(blocks)
        self.swapped = self.blocks[len(blocks) - swapped :] if swapped else []
        self._ids = {id(block) for block in self.swapped}
        self.home: dict[int, list[tuple[Any, str, torch.Tensor]]] = {}
        self.moves_in = 0  # block moves to the device (forward and backward), for tests and logs
        self._in: set[int] = set()
        self._handles: list[Any] = []
        self._moved: dict[int, tuple[torch.nn.Module, torch.nn.Module, str]] = {}  # storage -> (block, owner, name)
        self._saving: dict[int, Any] = {}  # block -> its open saved_tensors_hooks context
        pin = self.device.type == "cuda"
        for block in self.swapped:
            self.home[id(block)] = list(_frozen_tensors(block, pin))
        if self.swapped and not any(self.home[id(b)] for b in self.swapped):
            raise UserError(
                "train.block_swap: the swapped blocks hold no frozen weights (a full fine-tune trains them all); "
                "block swapping is available for LoRA runs only"
            )

    @property
    def swapped_bytes(self) -> int:
        """Bytes of the frozen tensors kept in CPU memory (what block swapping takes off the device)."""
        return sum(t.numel() * t.element_size() for entries in self.home.values() for _, _, t in entries)

    def place(self, model: torch.nn.Module) -> None:
        """Move `model` to the device, except the swapped blocks' frozen tensors, which stay at home."""
        stay = {(id(owner), name) for entries in self.home.values() for owner, name, _ in entries}
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None and (id(module), name) not in stay and param.device != self.device:
                    param.data = param.data.to(self.device)
            for name, buffer in module._buffers.items():
                if buffer is not None and (id(module), name) not in stay:
                    module._buffers[name] = buffer.to(self.device)
        for block in self.swapped:
            self._move_out(block)

    def install(self) -> BlockSwap:
        """Register the forward and backward hooks on every block (the unswapped ones only move others out)."""
        for block in self.blocks:
            self._handles.append(block.register_forward_pre_hook(self._forward_pre))
            self._handles.append(block.register_forward_hook(self._forward_post))
        return self

    def remove(self) -> None:
        """Remove the hooks; the swapped weights stay at home."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def settle(self) -> None:
        """Move every swapped block out (after a backward: the first block's backward brought nothing after it)."""
        for block in self.swapped:
            if id(block) in self._in:
                self._move_out(block)

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _forward_pre(self, block: torch.nn.Module, args: Any) -> None:
        if id(block) in self._ids:
            self._move_in(block)
            if torch.is_grad_enabled():
                hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
                hooks.__enter__()
                self._saving[id(block)] = hooks

    def _forward_post(self, block: torch.nn.Module, args: Any, output: Any) -> None:
        if id(block) in self._ids:
            hooks = self._saving.pop(id(block), None)
            if hooks is not None:
                hooks.__exit__(None, None, None)
            self._move_out(block)
        if torch.is_grad_enabled():
            for tensor in _tensors(output):
                if tensor.requires_grad:
                    tensor.register_hook(lambda grad, block=block: self._backward_pre(block, grad))

    def _backward_pre(self, block: torch.nn.Module, grad: torch.Tensor) -> torch.Tensor:
        """Before `block`'s backward: the blocks after it are done with their weights; bring this one in."""
        for other in self.swapped:
            if other is not block and id(other) in self._in:
                self._move_out(other)
        if id(block) in self._ids:
            self._move_in(block)
        return grad

    def _pack(self, tensor: torch.Tensor) -> Any:
        """A saved tensor that lives in a swapped weight's device copy: keep where it is, not the copy."""
        if type(tensor) not in (torch.Tensor, torch.nn.Parameter) or tensor.device.type == "meta":
            return tensor
        found = self._moved.get(tensor.untyped_storage().data_ptr())
        if found is None or _current(found[1], found[2]).dtype != tensor.dtype:
            return tensor
        return _SavedView(found, tuple(tensor.shape), tensor.stride(), tensor.storage_offset())

    def _unpack(self, saved: Any) -> torch.Tensor:
        """The saved view, rebuilt on the weight as it is now (moved in for this block's backward)."""
        if not isinstance(saved, _SavedView):
            return saved
        block, owner, name = saved.where
        self._move_in(block)  # normally already in (its output's gradient hook ran first)
        return _current(owner, name).detach().as_strided(saved.shape, saved.stride, saved.offset)

    # -- moves -----------------------------------------------------------------------------------------------------
    def _move_in(self, block: torch.nn.Module) -> None:
        if id(block) in self._in:
            return
        for owner, name, home in self.home[id(block)]:
            # a real copy even CPU to CPU (so the tests exercise it); `.to` copies across devices (async from
            # pinned memory); NF4 tensors take no `copy=` argument, hence clone
            moved = home.clone() if self.device.type == "cpu" else home.to(self.device, non_blocking=True)
            _set(owner, name, moved)
            if type(moved) is torch.Tensor and moved.untyped_storage().data_ptr():
                self._moved[moved.untyped_storage().data_ptr()] = (block, owner, name)
        self._in.add(id(block))
        self.moves_in += 1

    def _move_out(self, block: torch.nn.Module) -> None:
        for owner, name, home in self.home[id(block)]:
            current = _current(owner, name)
            if type(current) is torch.Tensor:
                self._moved.pop(current.untyped_storage().data_ptr(), None)
            _set(owner, name, home)
        self._in.discard(id(block))


def _frozen_tensors(block: torch.nn.Module, pin: bool) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """(owning module, attribute name, home copy on the CPU) of each frozen parameter and buffer in `block`."""
    found = []
    for module in block.modules():
        for name, param in module._parameters.items():
            if param is not None and not param.requires_grad:
                found.append((module, name, _home(param.data, pin)))
        for name, buffer in module._buffers.items():
            if buffer is not None:
                found.append((module, name, _home(buffer, pin)))
    return found


def _home(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    home = tensor.detach().to("cpu")
    if pin:
        try:
            return home.pin_memory()  # page-locked: host-to-device copies run asynchronously
        except (RuntimeError, NotImplementedError):  # a tensor subclass without it (e.g. NF4) stays pageable
            return home
    return home


class _SavedView:
    """Where a saved tensor lives: a swapped weight (block, owning module, name) and the view's geometry."""

    def __init__(self, where: tuple[torch.nn.Module, torch.nn.Module, str], shape: tuple[int, ...],
                 stride: tuple[int, ...], offset: int) -> None:  # fmt: skip
        self.where, self.shape, self.stride, self.offset = where, shape, stride, offset


def _current(owner: torch.nn.Module, name: str) -> torch.Tensor:
    """A parameter's data or a buffer, as the module holds it now."""
    return owner._parameters[name].data if name in owner._parameters else owner._buffers[name]


def _set(owner: torch.nn.Module, name: str, tensor: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name].data = tensor  # the Parameter object (and what autograd saved) stays the same
    else:
        owner._buffers[name] = tensor


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def check_block_swap(swapped: int, *, world_size: int, mode: str, cpu_offload: bool) -> None:
    """The settings block swapping cannot work with, each refused in one line."""
    if swapped <= 0:
        return
    if world_size > 1:
        raise UserError(
            f"train.block_swap = {swapped} needs one process (got {world_size}): under FSDP2 each block's weights "
            "are shards that FSDP gathers itself; use parallel.cpu_offload = true for multi-GPU runs"
        )
    if cpu_offload:
        raise UserError("train.block_swap and parallel.cpu_offload both move weights to the CPU: choose one")
    if mode != "lora":
        raise UserError(
            f"train.block_swap = {swapped} is available for train.mode = 'lora' only (a full fine-tune's swapped "
            "blocks would need their gradients and optimizer state streamed too)"
        )


def place_model(model: torch.nn.Module, block_paths: Sequence[str], swapped: int, device: torch.device) -> None:
    """Move the model to the training device; with `swapped` > 0 keep the last `swapped` blocks' frozen tensors
    in CPU memory and install the hooks that stream them (the BlockSwap is left on the model, see `block_swap_of`)."""
    if swapped <= 0:
        model.to(device)
        return
    swap = BlockSwap(blocks_of(model, block_paths), swapped, device)
    swap.place(model)
    setattr(model, ATTRIBUTE, swap.install())
    print(f"block swap: the last {swapped} of {len(swap.blocks)} blocks keep {swap.swapped_bytes / 2**20:.2f} MiB of "
          f"frozen weights in CPU memory", file=sys.stderr)  # fmt: skip


def block_swap_of(model: torch.nn.Module) -> BlockSwap | None:
    """The model's BlockSwap, if `place_model` installed one."""
    return getattr(model, ATTRIBUTE, None)


def cpu_device_if(cpu: bool, device: torch.device) -> torch.device:
    """The CPU when `cpu` (FSDP2's CPU offload starts from CPU weights), else `device`."""
    return torch.device("cpu") if cpu else device


def check_levers(config: Any, world_size: int) -> None:
    """Refuse, before the model is built, the one-GPU levers in settings they cannot work with."""
    train = config.train
    check_block_swap(train.block_swap, world_size=world_size, mode=train.mode, cpu_offload=config.parallel.cpu_offload)
    from ltxc.runner.fused_step import check_fused_step

    check_fused_step(train.fused_optimizer_step, world_size=world_size, grad_accum=train.grad_accum,
                     grad_clip=train.grad_clip)  # fmt: skip
    if train.fused_optimizer_step and config.parallel.cpu_offload:
        raise UserError(
            "train.fused_optimizer_step and parallel.cpu_offload cannot go together: CPU offload shards the model "
            "with FSDP2, whose gradients bypass the per-parameter hook the fused step runs in"
        )
