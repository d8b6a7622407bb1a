"""What sound costs: training step time joint (`train.audio = true`) vs video-only, and preprocessing throughput with
and without the audio stream, on the same clips.

(a) Training. Two LTX-2.3-geometry transformers: the tiny spec's (`specs/tiny/ltx-2.3.toml`, 2 layers, 32 / 16 wide)
and a mid-size child of it written to a temp dir, as `tools/bench_runner_step.py` does for LTX-Video (by default 4
layers, video 8 heads x 64 = 512 wide, audio 8 x 32 = 256 wide: LTX-2.3's 2:1 ratio; the connectors give the
cross-attentions those widths). Each runs `ltxc.runner.train.train` (full fine-tune, one process) on one cache of
clips with sound: video-only, then joint, then video-only, ... (`--rounds` pairs), so load from anything else on the
machine falls on both alike. A step is timed from the end of the previous step's metrics to the end of its own (data,
forward, backward, clipping, optimiser, metrics); the first `--warmup` steps of each call are left out.

(b) Preprocessing. `preprocess()` of the same clips into a fresh cache with the spec as shipped (video latents,
text, and the audio: decode, resample, mel, audio VAE) and with the spec's `[streams.audio.source]` removed (the
cache a spec without sound makes), alternating, `--rounds` each; clips/s over the whole call (models loaded once per
call, as a `ltxc run preprocess` does).

Run (a few minutes on a 2-core CPU):

    python tools/bench_audio.py [--size 256x256] [--frames 25] [--clips 4] [--steps 4] [--warmup 2] [--rounds 6]
                                [--prep-rounds 2] [--layers 4] [--heads 8] [--head-dim 64] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import torch

import ltxc.runner.train as runner
from ltxc.compiler import compile_spec
from ltxc.media.synthetic import COLORS, TONES, write_video
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
from ltxc.spec import load_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from audio_demo import TINY, child_spec  # the demo's child-spec writer: both streams' widths

SEED = 0


def make_media(directory: Path, clips: int, size: tuple[int, int], frames: int) -> Path:
    """`clips` clips of `frames` frames at 24 fps with a tone each (AAC mono 16 kHz), each with a caption."""
    directory.mkdir(parents=True, exist_ok=True)
    colors = list(COLORS)
    for number in range(clips):
        color = colors[number % len(colors)]
        path = write_video(directory / f"clip_{number:03d}.mp4", frames=frames, fps=24, size=size, audio=True,
                           tone=TONES[color])  # fmt: skip
        path.with_suffix(".txt").write_text(f"clip {number}: a {color} square with a {TONES[color]:.0f} Hz tone\n")
    return directory


def without_sound(plan: Plan) -> Plan:
    """`plan` with no `[streams.*.source]`: preprocessing then caches no audio (the streams stay for the call)."""
    return attrs.evolve(plan, streams={k: attrs.evolve(s, source=None) for k, s in plan.streams.items()})


def settings_for(plan: Plan, size: tuple[int, int], frames: int) -> Any:
    return build_settings(plan, resolution=f"{size[0]}x{size[1]}", max_frames=frames, frame_counts=[frames])


def bench_preprocess(plan: Plan, media: Path, root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds per whole `preprocess()` call, with and without the audio, alternating."""
    times: dict[str, list[float]] = {"with audio": [], "video only": []}
    for number in range(args.prep_rounds):
        for label, chosen in (("with audio", plan), ("video only", without_sound(plan))):
            began = time.perf_counter()
            report = preprocess(chosen, media, root / f"pre-{label[0]}-{number}", settings_for(chosen, args.size,
                                args.frames), progress=False)  # fmt: skip
            times[label].append(time.perf_counter() - began)
            if report.total_cached != args.clips:
                raise SystemExit(f"{label}: cached {report.total_cached} of {args.clips} clips")
    return times


class StepTimer(MetricsLogger):
    """The runner's logger, noting the time between the ends of consecutive steps' metrics."""

    times: list[float]
    last = 0.0

    def log(self, step: int, values: Any) -> None:
        super().log(step, values)
        now = time.perf_counter()
        StepTimer.times.append(now - StepTimer.last)
        StepTimer.last = now


def train_steps(plan: Plan, cache: Path, run_dir: Path, audio: bool, args: argparse.Namespace) -> list[float]:
    """One `train()` call (video-only or joint); its step times after the warmup."""
    StepTimer.times, StepTimer.last = [], time.perf_counter()
    config = RunConfig(
        run=RunSection(output=str(run_dir), seed=SEED),
        data=DataSection(cache=str(cache), batch_size=1),
        train=TrainSection(
            mode="full", steps=args.warmup + args.steps, cfg_dropout=0.1, audio=audio, activation_checkpointing="off"
        ),
        optimizer=OptimizerSection(lr=1e-5),
        checkpoint=CheckpointSection(every=0, keep=1, resume="never"),
        log=LogSection(progress=False, tensorboard=False),
        export=ExportSection(lora_diffusers=False, lora_comfyui=False, full=False),
    )
    runner.MetricsLogger = StepTimer  # type: ignore[misc]  # the loop looks the class up at call time
    try:
        runner.train(plan, config)
    finally:
        runner.MetricsLogger = MetricsLogger  # type: ignore[misc]
    return StepTimer.times[args.warmup :]


def bench_training(plan: Plan, cache: Path, root: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Step times video-only and joint, one call of each per round, alternating; "paired": each round's ratio of
    medians (the two calls of a round ran back to back, under about the same load)."""
    times: dict[str, list[float]] = {"video only": [], "joint": [], "paired": []}
    for number in range(args.rounds):
        medians = {}
        for label, audio in (("video only", False), ("joint", True)):
            steps = train_steps(plan, cache, root / f"run-{label[0]}-{number}", audio, args)
            times[label] += steps
            medians[label] = statistics.median(steps)
        times["paired"].append(medians["joint"] / medians["video only"])
    return times


def parameters(plan: Plan) -> float:
    return sum(p.numel() for p in plan.components()[plan.transformer_role].parameters()) / 1e6


def main() -> None:
    """Make the clips, measure preprocessing and both models' training, print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256x256", help="clip and cache size WxH (multiples of 32)")
    parser.add_argument("--frames", type=int, default=25, help="frames per clip and sample (8n+1)")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per train() call")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out at the start of each call")
    parser.add_argument("--rounds", type=int, default=6, help="training: alternations of the two paths")
    parser.add_argument("--prep-rounds", type=int, default=2, help="preprocessing: alternations of the two paths")
    parser.add_argument("--layers", type=int, default=4, help="mid-size model: layers")
    parser.add_argument("--heads", type=int, default=8, help="mid-size model: heads (video and audio)")
    parser.add_argument("--head-dim", type=int, default=64, help="mid-size model: video head dim (audio: half)")
    parser.add_argument("--threads", type=int, help="intra-op CPU threads (default: torch's)")
    args = parser.parse_args()
    args.size = tuple(int(x) for x in args.size.split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tiny = compile_spec(load_spec(TINY))
        mid_spec = child_spec(root, "ltx-2.3-bench-mid", layers=args.layers, heads=args.heads,
                              head_dim=args.head_dim, audio_head_dim=args.head_dim // 2)  # fmt: skip
        mid = compile_spec(load_spec(mid_spec))
        media = make_media(root / "media", args.clips, args.size, args.frames)
        prep = bench_preprocess(tiny, media, root, args)
        # a cache is tied to its spec's hash: the mid model gets its own (the same clips, VAE and text encoder)
        preprocess(mid, media, root / "pre-mid", settings_for(mid, args.size, args.frames), progress=False)
        models = (("tiny", tiny, root / "pre-w-0"), ("mid", mid, root / "pre-mid"))
        rows = [
            (name, parameters(plan), bench_training(plan, cache, root / name, args)) for name, plan, cache in models
        ]

    print(f"{args.clips} clips {args.size[0]}x{args.size[1]}x{args.frames} at 24 fps with a mono AAC tone; "
          f"{torch.get_num_threads()} threads; {args.rounds} training / {args.prep_rounds} preprocessing rounds "
          f"alternating the two paths, {args.steps} steps per call after {args.warmup} left out")  # fmt: skip
    print(f"{'training (s/step, median)':<30} {'params':>8} {'video only':>11} {'joint':>8} {'joint/video':>12} "
          f"{'paired':>7} {'min ratio':>10}")  # fmt: skip
    for name, millions, times in rows:
        video, joint = statistics.median(times["video only"]), statistics.median(times["joint"])
        fastest = min(times["joint"]) / min(times["video only"])
        paired = statistics.median(times["paired"])
        print(f"{name:<30} {millions:>7.1f}M {video:>11.4f} {joint:>8.4f} {joint / video:>12.3f} {paired:>7.3f} "
              f"{fastest:>10.3f}")  # fmt: skip
    with_audio, video_only = statistics.median(prep["with audio"]), statistics.median(prep["video only"])
    print(f"{'preprocessing (clips/s, median)':<39} {'video only':>11} {'with audio':>11} {'audio/video':>12} "
          f"{'':>7} {'min ratio':>10}")  # fmt: skip
    fastest = min(prep["with audio"]) / min(prep["video only"])
    print(f"{'tiny spec (VAE, text, audio VAE)':<39} {args.clips / video_only:>11.2f} {args.clips / with_audio:>11.2f} "
          f"{with_audio / video_only:>12.3f} {'':>7} {fastest:>10.3f}")  # fmt: skip
    print(
        "joint/video: joint step time over video-only (medians); paired: median over rounds of each round's ratio; "
        "audio/video: preprocessing seconds with audio over without (medians); min ratio: of the fastest steps / "
        "calls (the least disturbed by other load)"
    )


if __name__ == "__main__":
    main()
