"""Train a shipped spec's real transformer for a few steps on random latents; print s/step, peak memory and the
memory plan's prediction side by side.

The transformer is built from its config (the project's published copy, a local directory's own config, or the
spec's inline config: `ltxc.runner.memory_meta.module_config`) directly on the target device, under the spec's
dtype as the default dtype, as `from_pretrained` builds it (keep-in-float32 modules in float32). This is what
"meta, then `to_empty`, then init" would give, except that the class's own `__init__` initialises it, so buffers
computed there (RoPE tables) are right too; nothing is ever held in float32 on the CPU (unless `--device cpu`).
The run config (LoRA / full, `train.base`, `optimizer.name`, block swap, activation
checkpointing, the fused step) goes through the runner's own `build_model`, `make_optimizer` and levers.

Text conditioning is random, with the shapes the transformer sees: found by running the spec's text path on the
meta device when its configs are at hand (inline configs, or local directories), else given with
`--text NAME=LxD` (e.g. `--text embeds=1024x4096 --text mask=1024`).

The shipped specs' text encoders have no config in the project, so on a GPU pass their shapes (read from the
meta-built transformers: LTX-2.3 has no caption projection, its connectors give 4096 / 2048 wide streams):
  specs/ltx-2.3.toml   --text embeds=1024x4096 --text audio_embeds=1024x2048 --text mask=1024
  specs/ltx.toml       --text embeds=128x4096 --text mask=128
  specs/wan-2.1.toml   --text embeds=512x4096 --text mask=512

Run (GPU): python tools/gpu_bench.py --spec specs/ltx-2.3.toml --size 768x512x49 --steps 6 --mode lora \\
           --base nf4 --optimizer adamw_8bit --checkpointing on --block-swap 0 \\
           --text embeds=1024x4096 --text audio_embeds=1024x2048 --text mask=1024
Run (CPU check): python tools/gpu_bench.py --spec specs/tiny/ltx.toml --device cpu --size 64x32x9 --steps 2
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import torch

from ltxc.adapter import Adapter
from ltxc.compiler import compile_spec
from ltxc.components import DTYPES
from ltxc.flow import flow_loss, flow_target, loss_weights, noisy_latents, sample_sigmas
from ltxc.plan import Plan
from ltxc.runner.block_swap import block_swap_of, check_levers
from ltxc.runner.config import (
    DataSection,
    LoraSection,
    OptimizerSection,
    ParallelSection,
    RunConfig,
    RunSection,
    TrainSection,
    load_run_config,
)
from ltxc.runner.distributed import init_distributed
from ltxc.runner.fused_step import FusedStep
from ltxc.runner.memory_meta import as_loaded_dtypes, meta_module, module_config
from ltxc.runner.model import build_model
from ltxc.runner.optim import make_optimizer
from ltxc.runner.parallelize import unsharded_autocast
from ltxc.spec import load_spec

GIB = 2**30


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="a model spec (its transformer is built from its config)")
    p.add_argument("--config", help="a run config to start from (the flags below override it)")
    p.add_argument("--size", default="768x512x49", help="WxHxF in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=6, help="timed steps (after one warm-up step)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--mode", choices=["lora", "full"])
    p.add_argument("--base", choices=["as_loaded", "nf4", "int8"])
    p.add_argument("--optimizer", help="optimizer.name")
    p.add_argument("--rank", type=int, help="lora.rank")
    p.add_argument("--block-swap", type=int)
    p.add_argument("--checkpointing", choices=["auto", "on", "off"])
    p.add_argument("--fused", action="store_true", help="train.fused_optimizer_step (sets grad_clip = 0)")
    p.add_argument("--text", action="append", default=[], help="NAME=LxD[xD2...] random text tensor shape")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run config: --config's (or the defaults), then each flag given."""
    base = (
        load_run_config(args.config).value
        if args.config
        else RunConfig(
            run=RunSection(output="gpu-bench"), data=DataSection(cache="gpu-bench-cache"), train=TrainSection(steps=1)
        )
    )
    train: dict[str, Any] = {k: v for k, v in {"mode": args.mode, "base": args.base, "block_swap": args.block_swap,
                             "activation_checkpointing": args.checkpointing}.items() if v is not None}  # fmt: skip
    if args.fused:
        train.update(fused_optimizer_step=True, grad_clip=0.0, grad_accum=1)
    optimizer = {"name": args.optimizer} if args.optimizer else {}
    lora = {"rank": args.rank} if args.rank else {}
    return attrs.evolve(
        base,
        train=attrs.evolve(base.train, **train),
        optimizer=attrs.evolve(base.optimizer or OptimizerSection(), **optimizer),
        lora=attrs.evolve(base.lora or LoraSection(), **lora),
        parallel=base.parallel or ParallelSection(),
    )


def materialise(plan: Plan, device: torch.device) -> torch.nn.Module:
    """The transformer from its config, built straight on the device at the spec's dtype (the class's own init
    runs there), keep-in-float32 modules in float32: never a float32 copy on the CPU."""
    recipe = plan.recipes[plan.transformer_role]
    config, origin = module_config(recipe)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    print(f"transformer config: {origin}", file=sys.stderr)
    dtype, previous = DTYPES[recipe.dtype], torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)  # as diffusers' from_pretrained builds it
    try:
        with torch.device(device):
            model = recipe.cls.from_config(config) if hasattr(recipe.cls, "from_config") else recipe.cls(**config)
    finally:
        torch.set_default_dtype(previous)
    as_loaded_dtypes(model, dtype)
    return model.eval()


class _BenchPlan:
    """The plan, except that its transformer is the materialised one."""

    def __init__(self, plan: Plan, transformer: torch.nn.Module) -> None:
        self._plan, self._transformer = plan, transformer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._plan, name)

    def components(self) -> dict[str, torch.nn.Module]:
        return {self._plan.transformer_role: self._transformer}


def text_shapes(plan: Plan, given: list[str]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The text tensors the transformer sees: from --text, else the spec's text path run on the meta device."""
    if given:
        shapes = {}
        for item in given:
            name, _, dims = item.partition("=")
            sizes = tuple(int(d) for d in dims.split("x"))
            shapes[name] = (sizes, torch.bool if len(sizes) == 1 else torch.bfloat16)
        return shapes
    from ltxc.processor import Processor

    roles = [plan.text.encoder] + ([plan.text.stage.component] if plan.text.stage else [])
    try:
        components: dict[str, Any] = {role: meta_module(plan.recipes[role])[0] for role in roles}
    except Exception as exc:
        raise SystemExit(f"cannot build the text path on meta ({exc}); pass --text NAME=LxD for each of "
                         f"{', '.join(plan.text_names)}") from None  # fmt: skip
    components[plan.text.tokenizer] = _MetaTokenizer()
    try:
        text = Processor(plan, components, "meta").transformer_text([""])
    except Exception as exc:
        if not all(plan.recipes[role].source == "config" for role in [*roles, plan.text.tokenizer]):
            raise SystemExit(f"the text path does not run on meta ({exc}); pass --text NAME=LxD for each of "
                             f"{', '.join(plan.text_names)}") from None  # fmt: skip
        text = Processor(plan, plan.components(), "cpu").transformer_text([""])  # inline configs: tiny, real
    return {name: (tuple(t.shape[1:]), t.dtype) for name, t in text.items()}


class _MetaTokenizer:
    """Token ids of the right length, on no vocabulary (their values do not matter on meta)."""

    padding_side = "right"

    def __call__(self, captions: list[str], max_length: int, **kwargs: Any) -> Any:
        ids = torch.zeros(len(captions), max_length, dtype=torch.long)
        return argparse.Namespace(input_ids=ids, attention_mask=torch.ones_like(ids))


def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Build, train `args.steps` + 1 steps, and measure."""
    plan = compile_spec(load_spec(args.spec))
    config = run_config(args)
    info = init_distributed(args.device)
    check_levers(config, info.world_size)
    width, height, frames = (int(v) for v in args.size.split("x"))
    shape = plan.geometry.latent_shape(frames, height, width)
    texts = text_shapes(plan, args.text)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    began = time.monotonic()
    model, _, dtype = build_model(_BenchPlan(plan, materialise(plan, info.device)), config, info)  # type: ignore[arg-type]
    optimizer = make_optimizer(model.parameters(), config.optimizer, info.device)
    fused = FusedStep(model, optimizer) if config.train.fused_optimizer_step else None
    built = time.monotonic() - began
    adapter, gen = Adapter(plan), torch.Generator().manual_seed(0)
    times = []
    for step in range(args.steps + 1):
        _sync(info.device)
        start = time.monotonic()
        _one_step(plan, config, model, optimizer, fused, adapter, dtype, shape, texts, args.batch, gen, info.device)
        _sync(info.device)
        if step:  # the first step warms up (allocator, kernels, lazy inits)
            times.append(time.monotonic() - start)
    return {"plan": plan, "config": config, "seconds": statistics.median(times), "build": built,
            "peak": _peak_gib(info.device), "size": (frames, height, width)}  # fmt: skip


def _one_step(plan: Plan, config: RunConfig, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              fused: FusedStep | None, adapter: Adapter, dtype: torch.dtype | None, shape: Any,
              texts: dict[str, tuple[tuple[int, ...], torch.dtype]], batch: int, gen: torch.Generator,
              device: torch.device) -> None:  # fmt: skip
    """One optimiser step as the runner takes it (no accumulation), on random latents and text."""
    optimizer.zero_grad(set_to_none=True)
    x0 = torch.randn((batch, shape.channels, shape.frames, shape.height, shape.width), generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    sigma = sample_sigmas(plan.flow, batch, shape.tokens, gen).to(device)
    text = {name: (torch.ones(batch, *dims, dtype=torch.bool) if dt == torch.bool else
                   torch.randn(batch, *dims, generator=gen).to(dt)).to(device)
            for name, (dims, dt) in texts.items()}  # fmt: skip
    with unsharded_autocast(model, dtype, device):
        prediction = adapter.predict(model, noisy_latents(x0, noise, sigma), sigma, text, 25.0, compute_dtype=dtype)
    loss, _ = flow_loss(prediction, flow_target(x0, noise), loss_weights(plan.loss_weight, sigma, plan.constants))
    loss.backward()
    swap = block_swap_of(model)
    if swap is not None:
        swap.settle()
    if fused is None:
        if config.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                           config.train.grad_clip)  # fmt: skip
        optimizer.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_gib(device: torch.device) -> tuple[float, str]:
    """(peak, what it measures): allocated device memory on a GPU, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB, "max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, "peak RSS, libraries included"


def predicted(plan: Plan, config: RunConfig, size: tuple[int, int, int], batch: int) -> str:
    """The memory plan's total for this run, or why there is none."""
    try:
        from ltxc.runner.memory_plan import plan_memory
    except ImportError:
        return "n/a (no ltxc.runner.memory_plan)"
    try:
        config = attrs.evolve(config, data=attrs.evolve(config.data, batch_size=batch))
        memory = plan_memory(plan, config, world=1, bucket=size)
    except Exception as exc:
        return f"n/a ({type(exc).__name__}: {exc})"
    return f"{memory.total / GIB:.2f}"


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    args = parse_args(argv)
    result = bench(args)
    config, (peak, what) = result["config"], result["peak"]
    t = config.train
    frames, height, width = result["size"]
    print(f"spec {Path(args.spec).name}  {width}x{height}x{frames}  batch {args.batch}  device {args.device}")
    print(f"run  mode={t.mode} base={t.base} optimizer={config.optimizer.name} block_swap={t.block_swap} "
          f"checkpointing={t.activation_checkpointing} fused_step={t.fused_optimizer_step}")  # fmt: skip
    print(f"{'s/step':>8} {'peak GiB':>9} {'plan GiB':>9}  build s  (peak: {what})")
    plan_gib = predicted(result["plan"], config, result["size"], args.batch)
    print(f"{result['seconds']:>8.3f} {peak:>9.2f} {plan_gib:>9}  {result['build']:.1f}")


if __name__ == "__main__":
    main()
