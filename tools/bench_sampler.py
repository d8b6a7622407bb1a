"""ltxc's sampler vs each family's diffusers pipeline on the same tiny-but-not-trivial model: time ratio and max |Δ|.

For each family (LTX-Video, LTX-2.3, Wan 2.1), the tiny spec with a bigger transformer (LTX-Video and Wan: 4
layers of 8 heads × 32; LTX-2.3: 8 layers at the tiny width, which must equal its connectors' text width) generates
at the same size, steps, guidance and seed through ltxc's sampler and through the spec's reference pipeline built
on the very same components, in float32 and at the real specs' dtypes ("bf16": each module at the dtype
specs/<family>.toml gives it, e.g. Wan's VAE stays float32). The runs alternate (ltxc, diffusers, ltxc, ... after
one warm-up each) so drift in the machine's speed hits both alike. Prints each run's wall and CPU time, then per
family and dtype the medians with their ratio (ltxc / diffusers, goal <= 1.02) and the max |Δ| of the final
latents and the frames, and a Markdown table for the README.

Run: python tools/bench_sampler.py [--families ltx,ltx-2.3,wan-2.1] [--dtypes float32,bf16] [--size 17x128x128]
                                   [--steps 20] [--repeats 10] [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from ltxc.commands.verify import build_reference, reference_call
from ltxc.compiler import compile_spec
from ltxc.components import resolve_class
from ltxc.plan import Plan
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

SPECS = Path(__file__).resolve().parents[1] / "specs"
FAMILIES = ("ltx", "ltx-2.3", "wan-2.1")
# What grows in each tiny transformer: 4 layers of 8 heads × 32 (inner width 256), where the family allows it.
SCALE: dict[str, dict[str, Any]] = {
    "ltx": {"num_layers": 4, "num_attention_heads": 8, "attention_head_dim": 32, "cross_attention_dim": 256},
    # LTX-2.3's inner width must equal the connectors' text width (32 in the tiny spec): more layers only
    "ltx-2.3": {"num_layers": 8},
    "wan-2.1": {"num_layers": 4, "num_attention_heads": 8, "attention_head_dim": 32, "ffn_dim": 1024},
}
PROMPT = "a red ball bounces across a wooden floor, soft daylight"


def bench_plan(family: str, dtypes: str) -> Plan:
    """The tiny plan with the bigger transformer; modules in float32, or at the real spec's dtypes ("bf16")."""
    tiny = compile_spec(load_spec(SPECS / "tiny" / f"{family}.toml"))
    real = compile_spec(load_spec(SPECS / f"{family}.toml")).recipes  # compiling loads nothing
    recipes = {}
    for role, recipe in tiny.recipes.items():
        if recipe.kind == "module":
            recipe = attrs.evolve(recipe, dtype="float32" if dtypes == "float32" else real[role].dtype)
        if role == tiny.transformer_role:
            recipe = attrs.evolve(recipe, config={**(recipe.config or {}), **SCALE[family]})
        recipes[role] = recipe
    return attrs.evolve(tiny, recipes=recipes)


def timed(run: Callable[[], object], device: str) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result) of one call, synchronised on CUDA.

    CPU time is the steadier number on a shared machine: other processes' load stretches the wall clock.
    """
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def bench(family: str, dtypes: str, args: argparse.Namespace) -> dict[str, Any]:
    """Time one family at one dtype setting; print the runs; return the summary row."""
    from diffusers import DiffusionPipeline

    plan = bench_plan(family, dtypes)
    components = plan.components()
    pipeline_class = resolve_class(plan.reference, DiffusionPipeline)
    pipe = build_reference(pipeline_class, components).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    sampler = Sampler(plan, components, args.device)
    frames, height, width = (int(v) for v in args.size.lower().split("x"))
    kwargs, _ = reference_call(pipeline_class, plan, PROMPT, frames, height, width, args.steps, args.guidance)
    size = {"frames": frames, "height": height, "width": width}

    def ours() -> Any:
        return sampler([PROMPT], **size, steps=args.steps, guidance=args.guidance, seed=args.seed)

    def theirs(**extra: Any) -> Any:
        call = {**kwargs, "generator": torch.Generator().manual_seed(args.seed)}
        return pipe(**call, output_type="np", **extra)

    transformer = components[plan.transformer_role]
    params = sum(p.numel() for p in transformer.parameters())
    dtype_text = ", ".join(f"{r} {plan.recipes[r].dtype}" for r in plan.recipes if plan.recipes[r].kind == "module")
    print(f"\n== {family} {dtypes}: transformer {params / 1e6:.2f} M parameters, "
          f"{plan.geometry.tokens(frames, height, width)} tokens per sample; {dtype_text}")  # fmt: skip
    ours(), theirs()  # warm-up: first-call allocations
    times: dict[str, list[tuple[float, float]]] = {"ltxc": [], "diffusers": []}
    for i in range(args.repeats):
        *ours_time, _ = timed(ours, args.device)
        *their_time, _ = timed(theirs, args.device)
        times["ltxc"].append((ours_time[0], ours_time[1]))
        times["diffusers"].append((their_time[0], their_time[1]))
        print(f"repeat {i:<3} ltxc {ours_time[0]:.3f} s (cpu {ours_time[1]:.3f} s)   "
              f"diffusers {their_time[0]:.3f} s (cpu {their_time[1]:.3f} s)")  # fmt: skip
    return {"family": family, "dtypes": dtypes, "params": params, **_ratios(times), **_deltas(plan, ours, theirs)}


def _ratios(times: dict[str, list[tuple[float, float]]]) -> dict[str, float]:
    out = {}
    for clock, column in (("wall", 0), ("cpu", 1)):
        a = statistics.median(t[column] for t in times["ltxc"])
        b = statistics.median(t[column] for t in times["diffusers"])
        out |= {f"{clock}_ltxc": a, f"{clock}_diffusers": b, f"{clock}_ratio": a / b}
    return out


def _deltas(plan: Plan, ours: Callable[[], Any], theirs: Callable[..., Any]) -> dict[str, float]:
    """max |Δ| of the final latents (read through the step callback) and of the frames, one untimed run each."""
    captured: dict[str, torch.Tensor] = {}

    def capture(_pipe: Any, _step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        captured["latents"] = tensors["latents"].detach().float().cpu().clone()
        return tensors

    generation = ours()
    output = theirs(callback_on_step_end=capture, callback_on_step_end_tensor_inputs=["latents"])
    frames = (generation.video - torch.from_numpy(np.asarray(output.frames)).float()).abs().max().item()
    latents = (plan.geometry.pack(generation.latents) - captured["latents"]).abs().max().item()
    return {"latents_delta": latents, "frames_delta": frames}


def main() -> None:
    """Every family at every dtype setting, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--dtypes", default="float32,bf16", help="float32 and/or bf16 (the real specs' dtypes)")
    parser.add_argument("--size", default="17x128x128", help="FRAMESxHEIGHTxWIDTH")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.repeats < 10:
        parser.error("--repeats: at least 10 (the ratio is a median of alternating repeats)")
    print(f"run {args.size} (frames x height x width), {args.steps} steps, guidance {args.guidance:g}, {args.device}, "
          f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats after a warm-up")  # fmt: skip
    rows = [bench(f, d, args) for f in args.families.split(",") for d in args.dtypes.split(",")]
    print(
        "\n| family | dtypes | transformer | ltxc ÷ diffusers (median wall) | (median CPU) | max |Δ| latents / frames |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['dtypes']} | {r['params'] / 1e6:.2f} M | {r['wall_ratio']:.3f} "
              f"({r['wall_ltxc']:.3f} s / {r['wall_diffusers']:.3f} s) | {r['cpu_ratio']:.3f} | "
              f"{r['latents_delta']:.1e} / {r['frames_delta']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
