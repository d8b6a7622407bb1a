"""The runner's step time against a bare PyTorch loop doing the same maths on the same model and batches.

What it measures: one training step of `ltxc.runner.train.train` (full fine-tune, one process: FSDP2 over a
group of one, the stateful data loader, the adapter's call mapping, metrics) against a plain loop with
none of that: the same transformer (same seeded init), the same cached batches in the same order, the
same σ and noise draws, the same keyword arguments, MSE against (noise − x0), backward,
`clip_grad_norm_`, AdamW. The goal is runner / bare ≤ 1.03.

The transformer is an LTX-Video geometry transformer bigger than the tiny spec's (by default 6 layers,
8 heads × 64, ~28M parameters), written as a child spec of `specs/tiny/ltx.toml` in a temp dir, so that
compute, not Python, dominates a step; the cache is a few synthetic clips at one resolution (by default
384x384, 9 frames -> 2 x 12 x 12 = 288 latent tokens).

How: one `train()` call per round, its metrics logger wrapped so that after each runner step (timed from
the end of the previous hook to the end of the runner's own logging: data, forward, backward, clipping,
optimiser, metrics — nothing of startup, preprocessing, checkpointing or export) one bare step runs and
is timed. The two paths alternate step by step, so load from anything else on the machine falls on both
alike. The first `--warmup` steps of each are left out. Before timing, the bare loop's keyword arguments
are checked against the adapter's, and each round checks that both paths' first losses agree.

Run (takes a few minutes on a 2-core CPU):

    python tools/bench_runner_step.py [--layers 6] [--heads 8] [--head-dim 64] [--resolution 384x384]
                                      [--batch 1] [--steps 10] [--warmup 3] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import ltxc.runner.train as runner
from ltxc.adapter import Adapter
from ltxc.compiler import compile_spec
from ltxc.data.batch_sampler import BucketBatchSampler
from ltxc.data.dataset import CacheDataset, collate
from ltxc.flow import sample_sigmas
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.runner.config import (
    CheckpointSection,
    DataSection,
    ExportSection,
    LogSection,
    OptimizerSection,
    RunConfig,
    RunSection,
    TrainSection,
)
from ltxc.runner.metrics import MetricsLogger
from ltxc.runner.seeds import derived_seed
from ltxc.spec import load_spec

TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "ltx.toml"
SEED = 0
LR = 1e-5


def child_spec(directory: Path, layers: int, heads: int, head_dim: int) -> Path:
    """A child of the tiny spec with a bigger transformer (the tiny text encoder's 32-wide embeddings)."""
    config = {
        "in_channels": 128,
        "out_channels": 128,
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "cross_attention_dim": heads * head_dim,  # LTX's cross-attention works at the inner width
        "num_layers": layers,
        "caption_channels": 32,
    }
    body = ", ".join(f"{key} = {json.dumps(value)}" for key, value in config.items())
    path = directory / "bench.toml"
    path.write_text(
        f'[model]\nname = "ltx-video-bench"\nextends = {json.dumps(TINY.as_posix())}\n\n'
        f"[components.transformer]\nconfig = {{ {body} }}\n",
        encoding="utf-8",
    )
    return path


def make_cache(plan: Plan, root: Path, clips: int, resolution: str, frames: int) -> Path:
    """A few synthetic clips, all in one bucket (one resolution, one frame count)."""
    make_sample_dataset(root / "media", clips=clips, images=0, seed=SEED)
    settings = build_settings(plan, resolution=resolution, max_frames=frames, frame_counts=[frames])
    report = preprocess(plan, root / "media", root / "cache", settings, progress=False)
    if report.total_cached != clips or len(report.buckets) != 1:
        raise SystemExit(f"expected {clips} clips in one bucket, got {report.buckets}")
    return root / "cache"


# -- the bare loop -----------------------------------------------------------------------------------


def cached_batches(cache: Path, batch: int, count: int) -> tuple[list[dict[str, Any]], float]:
    """The first `count` batches the runner's sampler hands out (one rank), loaded up front; and the fps."""
    dataset = CacheDataset(cache)
    order = iter(BucketBatchSampler(dataset.buckets(), batch, seed=SEED))
    batches = [collate([dataset[i] for i in next(order)]) for _ in range(count)]
    return batches, float(dataset.header["settings"]["fps"])


def bare_kwargs(plan: Plan, x_t: torch.Tensor, sigma: torch.Tensor, batch: dict[str, Any], fps: float):  # type: ignore[no-untyped-def]
    """LTX-Video's call, written out: tokens [B, F*H*W, C], timestep σ·1000, RoPE scaled as at inference."""
    b, c, f, h, w = x_t.shape
    k = plan.constants
    return {
        "hidden_states": x_t.permute(0, 2, 3, 4, 1).reshape(b, f * h * w, c),
        "encoder_hidden_states": batch["text_embeds"],
        "encoder_attention_mask": batch["text_mask"],
        "timestep": (sigma * 1000).float(),
        "num_frames": f,
        "height": h,
        "width": w,
        "rope_interpolation_scale": [
            k["temporal_compression"] / fps,
            k["spatial_compression"],
            k["spatial_compression"],
        ],
    }


def check_kwargs(plan: Plan, batches: list[dict[str, Any]], fps: float) -> None:
    """The bare loop's keyword arguments are exactly the adapter's."""
    batch = batches[0]
    x0 = batch["latents"].float()
    sigma = torch.full((x0.shape[0],), 0.3)
    ours = bare_kwargs(plan, x0, sigma, batch, fps)
    env = Adapter(plan).environment(x0, sigma, {"embeds": batch["text_embeds"], "mask": batch["text_mask"]}, fps)
    theirs = Adapter(plan).model_kwargs(env)
    if ours.keys() != theirs.keys():
        raise SystemExit(f"bare kwargs {sorted(ours)} != adapter kwargs {sorted(theirs)}")
    for key, value in ours.items():
        same = torch.equal(value, theirs[key]) if torch.is_tensor(value) else value == theirs[key]
        if not same:
            raise SystemExit(f"bare kwarg {key!r} differs from the adapter's")


class BareLoop:
    """Plain PyTorch: the transformer, the pre-loaded batches, AdamW. No FSDP, no loader, no adapter."""

    def __init__(self, plan: Plan, batches: list[dict[str, Any]], fps: float) -> None:
        self.plan, self.batches, self.fps = plan, batches, fps
        self.model = plan.components()[plan.transformer_role]  # the same seeded init, float32
        self.model.requires_grad_(True).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8,
                                           weight_decay=0.0)  # fmt: skip
        self.losses: list[float] = []

    def step(self, step: int) -> None:
        """Training step `step` (0-based): the runner's σ and noise for it, MSE to noise - x0, clip, AdamW."""
        batch = self.batches[step]
        x0 = batch["latents"].float()
        b, _, f, h, w = x0.shape
        # the runner's per-sample seeds, so both paths draw the same σ and noise
        gens = [torch.Generator().manual_seed(derived_seed(SEED, step, 0, i)) for i in range(b)]
        sigma = torch.cat([sample_sigmas(self.plan.flow, 1, f * h * w, g) for g in gens])
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g) for g in gens])
        s = sigma.view(-1, 1, 1, 1, 1)
        self.optimizer.zero_grad(set_to_none=True)
        out = self.model(**bare_kwargs(self.plan, (1 - s) * x0 + s * noise, sigma, batch, self.fps),
                         return_dict=False)[0]  # fmt: skip
        prediction = out.reshape(b, f, h, w, -1).permute(0, 4, 1, 2, 3)
        loss = (prediction - (noise - x0)).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.losses.append(loss.item())


# -- the runner, with a bare step after each of its steps ---------------------------------------------


class InterleavingLogger(MetricsLogger):
    """The runner's logger (one record per step), timing the runner's step and then running a bare step.

    The runner's step k is the time from the end of this hook at step k-1 to the end of its own logging at
    step k; the bare step runs outside that window. So the two paths alternate step by step and share
    whatever else the machine is doing at the time.
    """

    bare: BareLoop
    runner_times: list[float]
    bare_times: list[float]
    runner_losses: list[float]
    resumed_at = 0.0

    def log(self, step: int, values: Any) -> None:
        super().log(step, values)
        cls = InterleavingLogger
        runner_done = time.perf_counter()
        cls.runner_times.append(runner_done - cls.resumed_at)
        cls.runner_losses.append(float(values["loss"]))
        cls.bare.step(step - 1)
        bare_done = time.perf_counter()
        cls.bare_times.append(bare_done - runner_done)
        cls.resumed_at = time.perf_counter()


def round_of(plan: Plan, cache: Path, batches: list[dict[str, Any]], fps: float, run_dir: Path,
             args: argparse.Namespace) -> tuple[list[float], list[float], float, float]:  # fmt: skip
    """One `train()` call with the bare loop interleaved: (runner step times, bare step times, first
    losses), warmup steps left out."""
    cls = InterleavingLogger
    cls.bare = BareLoop(plan, batches, fps)
    cls.runner_times, cls.bare_times, cls.runner_losses = [], [], []
    cls.resumed_at = time.perf_counter()  # step 1 also carries startup: it is a warmup step
    config = RunConfig(
        run=RunSection(output=str(run_dir), seed=SEED),
        data=DataSection(cache=str(cache), batch_size=args.batch),
        train=TrainSection(
            mode="full", steps=args.warmup + args.steps, grad_clip=1.0, cfg_dropout=0.0, activation_checkpointing="off"
        ),
        optimizer=OptimizerSection(lr=LR),
        checkpoint=CheckpointSection(every=0, keep=1, resume="never"),  # only the final checkpoint
        log=LogSection(progress=False),
        export=ExportSection(lora_diffusers=False, lora_comfyui=False, full=False),
    )
    runner.MetricsLogger = InterleavingLogger  # type: ignore[misc]  # the loop looks the class up at call time
    try:
        runner.train(plan, config)
    finally:
        runner.MetricsLogger = MetricsLogger  # type: ignore[misc]
    w = args.warmup
    return cls.runner_times[w:], cls.bare_times[w:], cls.runner_losses[0], cls.bare.losses[0]


# -- the comparison ----------------------------------------------------------------------------------


def main() -> None:
    """Build, check, alternate the two paths for a few rounds, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--resolution", default="384x384", help="cache bucket WxH (multiples of 32)")
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="measured steps per path and round")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out at the start of each path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="intra-op CPU threads (default: torch's; 1 is steadier on a busy machine)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        plan = compile_spec(load_spec(child_spec(root, args.layers, args.heads, args.head_dim)))
        cache = make_cache(plan, root, args.clips, args.resolution, args.frames)
        batches, fps = cached_batches(cache, args.batch, args.warmup + args.steps)
        check_kwargs(plan, batches, fps)
        x0 = batches[0]["latents"]
        params = sum(p.numel() for p in plan.components()[plan.transformer_role].parameters())
        print(f"transformer {params / 1e6:.1f}M parameters; batch {args.batch} x {tuple(x0.shape[1:])} latents "
              f"= {x0[0, 0].numel()} tokens; {torch.get_num_threads()} threads", file=sys.stderr)  # fmt: skip

        rows, all_runner, all_bare = [], [], []
        for number in range(args.rounds):
            runner_times, bare_times, runner_loss, bare_loss = round_of(plan, cache, batches, fps,
                                                                        root / f"run-{number}", args)  # fmt: skip
            if abs(runner_loss - bare_loss) > 1e-5 * abs(bare_loss):
                raise SystemExit(f"first-step losses differ: runner {runner_loss}, bare {bare_loss}")
            all_runner += runner_times
            all_bare += bare_times
            rows.append((f"round {number + 1}", runner_times, bare_times))
        rows.append(("all rounds", all_runner, all_bare))

    print(f"first-step loss equal in both paths ({runner_loss:.6f}); {args.steps} steps per path and round "
          f"after {args.warmup} warmup steps, alternating runner and bare step by step")  # fmt: skip
    print(f"{'':<12} {'runner s':>9} {'bare s':>9} {'ratio':>7} {'paired':>7} {'min ratio':>9}")
    for label, r, b in rows:
        paired = statistics.median(x / y for x, y in zip(r, b, strict=True))
        med_r, med_b = statistics.median(r), statistics.median(b)
        print(f"{label:<12} {med_r:>9.4f} {med_b:>9.4f} {med_r / med_b:>7.3f} {paired:>7.3f} {min(r) / min(b):>9.3f}")
    print(
        "runner s, bare s: median step time; ratio: of the medians; paired: median of the step-by-step "
        "ratios; min ratio: of the fastest steps (the least disturbed by other load)"
    )


if __name__ == "__main__":
    main()
