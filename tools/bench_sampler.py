"""ltxc's sampler vs diffusers' LTXPipeline on the same tiny-but-not-trivial model: time ratio and max |Δ|.

A child of the tiny LTX-Video spec with a bigger transformer (4 layers, 8 heads × 32) generates at the same
size, steps, guidance and seed through both; the runs alternate (after one warm-up each) so drift in the
machine's speed hits both alike. Prints each run's wall and CPU time, the medians and minima with their
ratios (ltxc / diffusers, goal ≤ 1.0), and the max |Δ| of the frames and the final latents.

Run: python tools/bench_sampler.py [--size 17x128x128] [--steps 20] [--guidance 3] [--repeats 10]
                                   [--device cpu] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import LTXPipeline

from ltxc.compiler import compile_spec
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "ltx.toml"
TRANSFORMER = (
    "{ in_channels = 128, out_channels = 128, patch_size = 1, patch_size_t = 1, num_attention_heads = 8, "
    "attention_head_dim = 32, cross_attention_dim = 256, num_layers = 4, caption_channels = 32 }"
)


def bench_spec(directory: Path) -> Path:
    """The child spec: the tiny spec with a bigger transformer."""
    path = directory / "ltx-bench.toml"
    path.write_text(
        f'[model]\nname = "ltx-video-bench"\nextends = "{TINY.as_posix()}"\n\n'
        f"[components.transformer]\nconfig = {TRANSFORMER}\n"
    )
    return path


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


def main() -> None:
    """Time both, alternating, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    frames, height, width = (int(v) for v in args.size.lower().split("x"))
    prompt = "a red ball bounces across a wooden floor, soft daylight"

    with tempfile.TemporaryDirectory() as tmp:
        plan = compile_spec(load_spec(bench_spec(Path(tmp))))
    components = plan.components()
    roles = ("scheduler", "vae", "text_encoder", "tokenizer", "transformer")
    pipe = LTXPipeline(**{role: components[role] for role in roles}).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    sampler = Sampler(plan, components, args.device)
    s = plan.spec.sampler
    size = {"frames": frames, "height": height, "width": width}

    def ours() -> object:
        return sampler([prompt], **size, steps=args.steps, guidance=args.guidance, seed=args.seed)

    def theirs(output_type: str = "np") -> object:
        return pipe(
            prompt=[prompt],
            negative_prompt=s.negative_prompt,
            num_frames=frames,
            height=height,
            width=width,
            frame_rate=int(s.fps),
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=torch.Generator().manual_seed(args.seed),
            decode_timestep=s.decode_timestep,
            decode_noise_scale=s.decode_noise_scale,
            max_sequence_length=plan.spec.text.max_length,
            output_type=output_type,
        ).frames

    params = sum(p.numel() for p in components["transformer"].parameters())
    tokens = plan.geometry.tokens(frames, height, width)
    print(f"model      {plan.name}: transformer {params / 1e6:.2f} M parameters, {tokens} tokens per sample")
    print(
        f"run        {args.size} (frames x height x width), {args.steps} steps, guidance {args.guidance:g}, "
        f"{args.device}, {torch.get_num_threads()} threads, {args.repeats} alternating repeats after a warm-up"
    )
    ours(), theirs()  # warm-up: first-call allocations and lazy component builds
    times: dict[str, list[tuple[float, float]]] = {"ltxc": [], "diffusers": []}
    for i in range(args.repeats):
        *ours_time, generation = timed(ours, args.device)
        *their_time, reference = timed(theirs, args.device)
        times["ltxc"].append(tuple(ours_time))
        times["diffusers"].append(tuple(their_time))
        print(
            f"repeat {i:<3} ltxc {ours_time[0]:.3f} s (cpu {ours_time[1]:.3f} s)   "
            f"diffusers {their_time[0]:.3f} s (cpu {their_time[1]:.3f} s)"
        )
    frames_delta = (generation.video - torch.from_numpy(np.asarray(reference))).abs().max().item()
    latents_delta = (plan.geometry.pack(generation.latents) - theirs("latent").cpu()).abs().max().item()
    for clock, column in (("wall", 0), ("cpu", 1)):
        for name, stat in (("median", statistics.median), ("min", min)):  # min: the least disturbed run
            a = stat(t[column] for t in times["ltxc"])
            b = stat(t[column] for t in times["diffusers"])
            print(f"{clock + ' ' + name:<11} ltxc {a:.3f} s   diffusers {b:.3f} s   ratio {a / b:.3f} (goal <= 1.0)")
    print(f"max |Δ|    frames {frames_delta:.3e}   latents {latents_delta:.3e}")


if __name__ == "__main__":
    main()
