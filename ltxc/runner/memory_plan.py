"""The memory plan: what one rank of a run will hold, computed on the meta device before anything is loaded.

Parameter, gradient and optimiser bytes are exact bookkeeping of the tensors the runner allocates (tests hold
them equal to allocated tensor bytes on small models); the gathered unit, the swap buffers and the runtime
overhead follow FSDP2's and the block swapper's layouts; activations are an estimate (see `activation_bytes`).
"""

from __future__ import annotations

import math
import os
from collections import Counter

import torch
from attrs import frozen

from ltxc.errors import UserError
from ltxc.plan import Plan
from ltxc.runner.config import RunConfig
from ltxc.runner.memory_meta import meta_module, meta_transformer
from ltxc.runner.parallelize import blocks_of
from ltxc.runner.quantise import NF4_BLOCK, NF4_SCALER_BLOCK, check_base, nf4_fits

GIB = 2**30
ADAM8_MIN, ADAM8_BLOCK, ADAM8_QMAP = 4096, 256, 256  # torchao AdamW8bit: 8-bit state at >= 4096 elements
ACTIVATION_FACTOR = 17  # saved tensors of tokens x width per block (34 bytes/elem at 2 bytes, flash attention)
OVERHEAD = GIB  # CUDA context, kernels' workspaces, allocator slack: a stated constant, not measured here
BIG_MODEL_PARAMS = 100_000_000  # as runner/model.py: "auto" activation checkpointing above this size


@frozen
class ParamBytes:
    """One rank's share of the transformer: bytes by storage dtype on the device, and on the host."""

    device: dict[str, int]
    host: int
    grads: int
    optimizer: int
    quantised: int  # weights stored quantised
    trainable: int  # trainable elements (whole model)
    total: int  # elements (whole model)


@frozen
class MemoryPlan:
    """Per-rank bytes of a run and where they go; `lines()` is what `--dry-run` prints."""

    world: int
    shard: int
    config_origin: str
    params: ParamBytes
    gathered: int
    gathered_note: str
    validation: int
    validation_note: str
    activations: int
    activation_note: str
    limit_gib: float | None
    limit_note: str

    @property
    def total(self) -> int:
        p = self.params
        parts = (sum(p.device.values()), p.grads, p.optimizer, self.gathered, self.validation, self.activations)
        return sum(parts) + OVERHEAD

    def fits(self) -> bool | None:
        """None when there is no limit to hold the total against."""
        return None if self.limit_gib is None else self.total <= self.limit_gib * GIB

    def verdict(self) -> str:
        """The last line: `fits: X GiB of Y GiB per rank`, `does not fit: ...`, or the total alone."""
        total = f"{self.total / GIB:.1f} GiB"
        if self.limit_gib is None:
            return f"total: {total} per rank (no GPU and no parallel.device_memory_gib: nothing to check against)"
        return f"{'fits' if self.fits() else 'does not fit'}: {total} of {self.limit_gib:.1f} GiB per rank"

    def lines(self) -> list[str]:
        p = self.params
        dtypes = ", ".join(f"{_gib(b)} {d}" for d, b in sorted(p.device.items())) or "none"
        out = [
            f"memory plan: {self.world} rank(s), parameters sharded {self.shard} ways; config {self.config_origin}",
            f"  parameters      {_gib(sum(p.device.values()))}  ({dtypes}; {p.total / 1e9:.2f} B elements, "
            f"{p.trainable / 1e6:.1f} M trainable, {p.quantised} weights quantised)",
        ]
        if p.host:
            out.append(f"  on the host     {_gib(p.host)}  (swapped blocks / CPU offload: host memory, not counted)")
        out += [
            f"  gradients       {_gib(p.grads)}",
            f"  optimizer       {_gib(p.optimizer)}",
            f"  gathered/swap   {_gib(self.gathered)}  ({self.gathered_note})",
            f"  validation      {_gib(self.validation)}  ({self.validation_note})",
            f"  activations     {_gib(self.activations)}  (estimate: {self.activation_note})",
            f"  runtime         {_gib(OVERHEAD)}  (CUDA context, workspaces, allocator slack: a stated constant)",
            f"  total           {_gib(self.total)}  ({self.limit_note})",
            self.verdict(),
        ]
        return out


def _gib(n: int) -> str:
    return f"{n / GIB:7.2f} GiB"


def plan_memory(
    plan: Plan, config: RunConfig, *, world: int | None = None, bucket: tuple[int, int, int] | None = None
) -> MemoryPlan:
    """The per-rank plan of `config` on `plan` at `world` ranks (default: torchrun's WORLD_SIZE, else 1)."""
    from ltxc.runner.block_swap import check_levers

    world = world or int(os.environ.get("WORLD_SIZE", "1"))
    check_levers(config, world)
    check_base(config.train.base, config.train.mode, world, config.parallel.cpu_offload)
    shard = max(1, world // max(1, config.parallel.replicate))
    model, origin = meta_transformer(plan, config)
    blocks = blocks_of(model, plan.blocks)
    params = parameter_bytes(model, config, shard, blocks)
    gathered, gathered_note = gathered_bytes(config, shard, blocks)
    validation, validation_note = validation_bytes(plan, config)
    bucket = bucket or largest_bucket(plan, config)
    activations, activation_note = activation_bytes(model, config, blocks, plan, bucket)
    limit, limit_note = device_limit(config)
    return MemoryPlan(
        world, shard, origin, params, gathered, gathered_note, validation, validation_note, activations,
        activation_note, limit, limit_note,
    )  # fmt: skip


def parameter_bytes(model: torch.nn.Module, config: RunConfig, shard: int, blocks: list[torch.nn.Module]) -> ParamBytes:
    """Each parameter as the run stores it on this rank: quantised or not, sharded, swapped or offloaded."""
    swap = config.train.block_swap  # the last N blocks' frozen weights live in CPU memory
    swapped = (
        {id(p) for b in blocks[len(blocks) - swap :] for p in b.parameters() if not p.requires_grad} if swap else set()
    )
    quantisable = quantisable_weights(model, config.train.base, shard)
    device: Counter[str] = Counter()
    host = grads = optimizer = trainable = total = 0
    for param in model.parameters():
        total += param.numel()
        numel = local_numel(param, shard)
        if id(param) in quantisable:
            stored, dtype = quantised_bytes(numel, param, config.train.base), config.train.base
        else:
            stored, dtype = numel * param.element_size(), _dtype_name(param.dtype)
        if id(param) in swapped or config.parallel.cpu_offload:
            host += stored
        else:
            device[dtype] += stored
        if param.requires_grad:
            trainable += param.numel()
            grads += numel * param.element_size()
            optimizer += optimizer_state_bytes(numel, param.element_size(), config.optimizer.name)
    if config.train.fused_optimizer_step:  # each gradient is freed as soon as its parameter has stepped
        grads = max((p.numel() * p.element_size() for p in model.parameters() if p.requires_grad), default=0)
    if config.parallel.cpu_offload:
        host, grads, optimizer = host + grads + optimizer, 0, 0
    return ParamBytes(dict(device), host, grads, optimizer, len(quantisable), trainable, total)


def local_numel(param: torch.Tensor, shard: int) -> int:
    """Elements rank 0 holds under FSDP2 (dim-0 chunks of ceil(dim0 / shard) rows; rank 0's is the largest)."""
    if shard == 1 or param.dim() == 0:
        return param.numel()
    rows = math.ceil(param.shape[0] / shard)
    return min(rows, param.shape[0]) * (param.numel() // param.shape[0])


def quantisable_weights(model: torch.nn.Module, base: str, shard: int = 1) -> set[int]:
    """The weights `quantise_base` stores quantised: frozen `nn.Linear` weights (peft's base layers included);
    for NF4 those whose shards hold whole blocks (`quantise.nf4_fits`), for int8 every one."""
    if base == "as_loaded":
        return set()
    found = set()
    for module in model.modules():
        if type(module) is not torch.nn.Linear or module.weight.requires_grad:
            continue
        if module.weight.is_floating_point() and (base == "int8" or nf4_fits(module.weight, shard)):
            found.add(id(module.weight))
    return found


def quantised_bytes(numel: int, param: torch.Tensor, base: str) -> int:
    """The inner tensors `quantise.tensor_bytes` counts. torchao's NF4Tensor: 4-bit codes, an int8 scale per
    64 values, a scale per 256 scales, the scales' mean and the 16-entry code table, in the weight's dtype.
    int8 weight-only: int8 codes, a float32 scale and an int8 zero point per output row (one process: unsharded)."""
    if base == "int8":
        return numel + 5 * param.shape[0]
    size = param.element_size()
    return numel // 2 + numel // NF4_BLOCK + size * (numel // (NF4_BLOCK * NF4_SCALER_BLOCK)) + 17 * size


def optimizer_state_bytes(numel: int, element_size: int, name: str) -> int:
    """Two moments and a float32 step count per tensor. AdamW: moments in the parameter's dtype; AdamW8bit
    (torchao): 8-bit codes + a float32 scale per 256 + a 256-entry float32 map each, for tensors of >= 4096
    elements (and a multiple of 256), else the parameter's dtype; adamw_bf16: bf16 moments."""
    step = 4
    if name == "adamw_8bit" and numel >= ADAM8_MIN and numel % ADAM8_BLOCK == 0:
        return 2 * (numel + 4 * (numel // ADAM8_BLOCK) + 4 * ADAM8_QMAP) + step
    return 2 * numel * element_size + step


def compute_size(config: RunConfig) -> int:
    """Bytes per element the transformer computes in on the target GPU (bf16 unless precision = fp32)."""
    return 4 if config.parallel.precision == "fp32" else 2


def gathered_bytes(config: RunConfig, shard: int, blocks: list[torch.nn.Module]) -> tuple[int, str]:
    """Whole blocks on the device beyond the shards. Block swapping: one swapped block's frozen weights at a
    time. FSDP2: the largest unit gathered at the compute dtype, twice (computing + prefetched). One process is
    not wrapped (as `parallelize`) in float32, with a quantised base, with block swapping or the fused step."""
    if not blocks:
        return 0, "no blocks"
    if config.train.block_swap:
        largest = max(_block_bytes(b, config, frozen_only=True) for b in blocks)
        return largest, f"{config.train.block_swap} blocks swapped in one at a time: {largest / GIB:.2f} GiB each"
    unwrapped = (
        config.parallel.precision == "fp32" or config.train.base != "as_loaded" or config.train.fused_optimizer_step
    )
    if shard == 1 and unwrapped and not config.parallel.cpu_offload:
        return 0, "one process, not wrapped by FSDP2: nothing gathered"
    largest = max(_block_bytes(b, config) for b in blocks)
    return 2 * largest, f"largest FSDP2 unit {largest / GIB:.2f} GiB gathered, x2 with prefetch"


def _block_bytes(block: torch.nn.Module, config: RunConfig, frozen_only: bool = False) -> int:
    """A block's bytes on the device: its frozen weights as stored (`frozen_only`, a swapped block), or the whole
    block as FSDP2 gathers it (at the compute dtype; float32-kept frozen weights and NF4 weights as they are)."""
    quantisable, size = quantisable_weights(block, config.train.base), compute_size(config)
    total = 0
    for p in block.parameters():
        if id(p) in quantisable:
            total += quantised_bytes(p.numel(), p, config.train.base)
        elif not p.requires_grad:
            total += p.numel() * (p.element_size() if frozen_only or p.dtype == torch.float32 else size)
        elif not frozen_only:
            total += p.numel() * size
    return total


def validation_bytes(plan: Plan, config: RunConfig) -> tuple[int, str]:
    """The decoders on the training device for validation, when prompts are set: the VAE (and each sound stream's
    VAE and vocoder) to decode in line (`validation.decode = "device"`), or the VAE alone to encode validation
    images (their text is encoded once, before training, so the text encoder never sits beside the transformer)."""
    if not config.validation.prompts:
        return 0, "no validation prompts"
    if config.validation.decode == "background" and not config.validation.images:
        return 0, "decoded on the CPU in the background (validation.decode)"
    roles = [plan.latent.vae]
    if config.validation.decode == "device":
        sound = [s.decode for s in plan.streams.values() if s.decode is not None]
        roles += [role for decode in sound for role in (decode.vae, decode.vocoder)]
    roles = [role for role in dict.fromkeys(roles) if role in plan.recipes]
    if not roles:
        return 0, "no VAE in the spec"
    total = 0
    for role in roles:
        try:
            module, _ = meta_module(plan.recipes[role])
        except UserError as exc:  # no published config for it: say so rather than guess
            return 0, f"{role} not counted: {exc}"
        total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total, f"the weights of {', '.join(roles)} (decode workspace not counted)"


def largest_bucket(plan: Plan, config: RunConfig) -> tuple[int, int, int]:
    """(frames, height, width) of the largest bucket (in tokens): the cache's, else the one that `run train`
    would preprocess `data.media` into (the spec's defaults)."""
    from ltxc.data.cache import Cache
    from ltxc.preprocess.settings import build_settings

    header = Cache(str(config.data.cache)).header()
    settings = (header or {}).get("settings")
    if settings:
        frames, sizes = settings["frame_buckets"], [tuple(r) for r in settings["resolutions"]]
    else:
        built = build_settings(plan)
        frames, sizes = built.frame_buckets, built.resolutions
    shapes = [(f, h, w) for f in frames for h, w in sizes]
    return max(shapes, key=lambda s: plan.geometry.tokens(*s))


def activation_bytes(
    model: torch.nn.Module, config: RunConfig, blocks: list[torch.nn.Module], plan: Plan, bucket: tuple[int, int, int]
) -> tuple[int, str]:
    """An estimate (to be calibrated on a GPU): per block, ACTIVATION_FACTOR tensors of tokens x width at the
    compute dtype are saved (Korthikanti et al.'s 34 bytes per token and width at 2 bytes, with flash
    attention); with checkpointing, each block keeps only its input and one block is recomputed at a time.
    A run that trains other streams (`train.audio`) adds each stream's tokens at its branch's width."""
    tokens = plan.geometry.tokens(*bucket) * config.data.batch_size
    width = block_width(blocks[0]) if blocks else 0
    streams = stream_activations(plan, config, blocks, bucket)
    unit = (tokens * width + sum(n * w for _, n, w in streams)) * compute_size(config)
    checkpointed = config.train.activation_checkpointing == "on" or (
        config.train.activation_checkpointing == "auto"
        and sum(p.numel() for p in model.parameters()) >= BIG_MODEL_PARAMS
    )
    full = len(blocks) * ACTIVATION_FACTOR * unit
    kept = len(blocks) * unit + ACTIVATION_FACTOR * unit
    frames, height, width_px = bucket
    extra = "".join(f" + {name} {n} tokens x width {w}" for name, n, w in streams)
    note = (
        f"{width_px}x{height}x{frames} x batch {config.data.batch_size} = {tokens} tokens x width {width}{extra}; "
        f"{full / GIB:.1f} GiB without checkpointing, {kept / GIB:.1f} GiB with; checkpointing "
        f"{'on' if checkpointed else 'off'}"
    )
    return (kept if checkpointed else full), note


def stream_activations(
    plan: Plan, config: RunConfig, blocks: list[torch.nn.Module], bucket: tuple[int, int, int]
) -> list[tuple[str, int, int]]:
    """(name, tokens for the batch, branch width) of each stream a `train.audio` run feeds with real latents.

    The tokens are the stream's packed noise shape at the bucket's frames and the spec's sampler fps (the cached
    clips' own rates may differ a little); the width is that of the block's linear layers inside the stream's
    `modules` that are not cross-modal (the largest by weights). A video-only run feeds a one-token dummy: 0."""
    if not config.train.audio or not blocks:
        return []
    frames, height, width = bucket
    env = {
        **plan.constants,
        "pixel.frames": frames,
        "pixel.height": height,
        "pixel.width": width,
        "fps": float(plan.sampler.fps),
    }
    out = []
    for stream in plan.streams.values():
        shape = [1, *(int(n) for n in stream.noise(env))]
        packed = stream.pack({"x": torch.empty(shape, device="meta")})
        tokens = int(packed.shape[1]) * config.data.batch_size
        # its own branch is the first of its `modules` (the cross-modal parts come after it)
        width = block_width(blocks[0], stream.modules[0]) if stream.modules else 0
        out.append((stream.name, tokens, width))
    return out


def block_width(block: torch.nn.Module, prefix: str = "") -> int:
    """The model width inside a block: the input width of its linear layers that hold the most weights; with
    `prefix`, of those under modules whose names start with it (a stream's own branch, e.g. "audio": audio_attn1,
    audio_ff)."""
    widths: Counter[int] = Counter()
    for name, module in block.named_modules():
        if isinstance(module, torch.nn.Linear) and name.startswith(prefix):
            widths[module.in_features] += module.weight.numel()
    return widths.most_common(1)[0][0] if widths else 0


def device_limit(config: RunConfig) -> tuple[float | None, str]:
    """Y of the last line: the GPU's free memory, else `parallel.device_memory_gib`, else None."""
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(int(os.environ.get("LOCAL_RANK", "0")))  # this rank's GPU
        return free / GIB, "held against this GPU's free memory"
    if config.parallel.device_memory_gib is not None:
        return float(config.parallel.device_memory_gib), "held against parallel.device_memory_gib"
    return None, "no limit known"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def format_plan(memory: MemoryPlan) -> str:
    return "\n".join(memory.lines())
