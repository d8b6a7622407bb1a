"""The quantised frozen base of a LoRA run (`train.base`): NF4 through torchao, and the bytes a tensor holds.

NF4 (torchao's `NF4Tensor`) replaces the weight of each frozen `nn.Linear` whose size fits its blocks; the layer
keeps its class, so peft's LoRA wraps it as any other (`F.linear` on an `NF4Tensor` dispatches to torchao's
`linear_nf4`, which dequantises to the input's dtype, forward and backward). `NF4Tensor` carries FSDP2's
all-gather hooks, so a quantised weight is sharded and gathered in its 4-bit form.

int8 weight-only (torchao's `Int8WeightOnlyConfig`: an int8 weight with a float32 scale and int8 zero point per
output row; `F.linear` dequantises it, forward and backward) is where it composes: on one process, which is then
not wrapped by FSDP2 at all. Its tensors carry no FSDP2 all-gather hooks (only torchao's training-time int8
tensors do, and those train the weight), so several processes (or FSDP2's CPU offload) are refused: use nf4 there.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from attrs import frozen

from ltxc.errors import UserError

NF4_BLOCK = 64  # torchao's NF4 block size: values sharing one scale
NF4_SCALER_BLOCK = 256  # blocks whose scales are quantised together
NF4_UNIT = NF4_BLOCK * NF4_SCALER_BLOCK  # a weight's element count must be a multiple of this (per shard)


@frozen
class QuantReport:
    """What `quantise_base` did: how many frozen linear weights it quantised, and how many it left as loaded
    (sizes that do not fit the blocks, per shard), with the bytes before and after."""

    kind: str
    quantised: int
    skipped: int
    bytes_before: int
    bytes_after: int

    def line(self) -> str:
        """The one line a run prints about its quantised base."""
        return (f"{self.kind} base: quantised {self.quantised} frozen linear weights, left {self.skipped} as loaded "
                f"(sizes that do not fit its blocks); {self.bytes_before / 2**20:.2f} -> "
                f"{self.bytes_after / 2**20:.2f} MiB")  # fmt: skip


def check_base(base: str, mode: str, world: int = 1, cpu_offload: bool = False) -> None:
    """Refuse a `train.base` that cannot be honoured, naming the key and what to use instead."""
    if base == "as_loaded":
        return
    if mode != "lora":
        raise UserError(f'train.base = "{base}" quantises a frozen base and needs train.mode = "lora" (a full '
                        'fine-tune trains every weight); use train.base = "as_loaded"')  # fmt: skip
    if base == "int8" and (world > 1 or cpu_offload):
        where = f"{world} processes" if world > 1 else "parallel.cpu_offload"
        raise UserError(f'train.base = "int8" trains on one process only ({where} here): torchao\'s int8 weight-only '
                        'weights cannot be sharded by FSDP2 (no all-gather hooks); use train.base = "nf4"')  # fmt: skip


def nf4_fits(weight: torch.Tensor, shards: int) -> bool:
    """Whether `to_nf4` can quantise this weight and FSDP2 can split it into `shards` whole-block shards."""
    rows = weight.shape[0] if weight.dim() == 2 else 0
    return weight.dim() == 2 and rows % shards == 0 and weight.numel() % (NF4_UNIT * shards) == 0


def quantise_base(model: torch.nn.Module, kind: str, *, shards: int = 1) -> QuantReport | None:
    """Quantise the frozen weights of `model`'s linear layers in place (`kind` "nf4"; "as_loaded": nothing,
    None). Frozen biases, norms, embeddings and every trainable weight stay as they are. `shards`: the number
    of FSDP2 shards each weight is split into (every shard must hold whole blocks)."""
    if kind == "as_loaded":
        return None
    if kind == "int8":
        return _quantise_int8(model)
    if kind != "nf4":
        raise UserError(f'train.base = "{kind}" is not available; use "nf4", "int8" or "as_loaded"')
    to_nf4 = _nf4()
    quantised = skipped = before = after = 0
    for layer in _frozen_linears(model):
        weight = layer.weight
        before += tensor_bytes(weight)
        if not nf4_fits(weight, shards):
            skipped += 1
            after += tensor_bytes(weight)
            continue
        packed = to_nf4(weight.detach().contiguous(), NF4_BLOCK, NF4_SCALER_BLOCK)
        layer.weight = torch.nn.Parameter(packed, requires_grad=False)
        quantised += 1
        after += tensor_bytes(packed)
    return QuantReport(kind, quantised, skipped, before, after)


def _quantise_int8(model: torch.nn.Module) -> QuantReport:
    """Every frozen linear weight to torchao's int8 weight-only form (any 2-D size fits: one scale per row)."""
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    layers = set(_frozen_linears(model))
    before = sum(tensor_bytes(layer.weight) for layer in layers)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, _name: module in layers)
    for layer in layers:
        layer.weight.requires_grad_(False)
    after = sum(tensor_bytes(layer.weight) for layer in layers)
    return QuantReport("int8", sum(is_quantised(layer.weight) for layer in layers), 0, before, after)


def _frozen_linears(model: torch.nn.Module) -> Iterator[torch.nn.Linear]:
    """Every `nn.Linear` (peft's LoRA `base_layer`s included) whose weight does not train."""
    for module in model.modules():
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and module.weight.is_floating_point():
            yield module


def is_quantised(tensor: torch.Tensor) -> bool:
    """Whether `tensor` (or a DTensor's local shard) is a quantised base weight: NF4 or int8 weight-only."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return type(local).__name__ in ("NF4Tensor", "Int8Tensor")


def count_quantised(model: torch.nn.Module) -> int:
    """How many of `model`'s parameters are quantised base weights (NF4 or int8)."""
    return sum(is_quantised(p) for p in model.parameters())


def is_nf4(tensor: torch.Tensor) -> bool:
    """Whether `tensor` (or the local shard of a DTensor) is an `NF4Tensor`."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return type(local).__name__ == "NF4Tensor"


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes a tensor holds in memory: its local shard under FSDP2, and for a tensor subclass that packs
    its data (NF4) the sum of its inner tensors rather than numel × its nominal dtype's size."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    if hasattr(local, "__tensor_flatten__") and type(local) is not torch.nn.Parameter:
        names, _ = local.__tensor_flatten__()
        return sum(tensor_bytes(getattr(local, name)) for name in names)
    return local.numel() * local.element_size()


def _nf4():  # type: ignore[no-untyped-def]
    """torchao's `to_nf4` (imported on first use; what it logs on a CPU build is filtered in `ltxc/__init__.py`)."""
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    return to_nf4


def count_nf4(model: torch.nn.Module) -> int:
    """How many of `model`'s parameters are NF4 (for tests and the memory plan)."""
    return sum(1 for p in model.parameters() if is_nf4(p))
