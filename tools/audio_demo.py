"""The audio-video demo: train LTX-2.3's geometry jointly (`train.audio = true`) on 4 clips that each have their
own caption and their own tone, generate from each training caption with sound, and rank the 4 training clips by
the distance of the generated *audio* latents to each clip's cached audio latents.

The clips are the video demo's set (`make_sample_dataset(distinct=True)`: own colour, background and direction,
96x64) with a mono AAC track (`sound=True`): a sine at the colour's `TONES` frequency (250 Hz to 5.3 kHz), so a
caption names one picture and one sound. The spec is `child_spec`'s: the tiny LTX-2.3 spec with both streams 128
wide (the shipped tiny one cannot place its output in most latent directions: see there). Training runs as a user
would (`python -m ltxc run train --plan PLAN --set data.media=media --set train.audio=true` in WORKDIR:
preprocessing caches the audio latents beside the video latents, then a full fine-tune of both streams); `--set`
changes any run-config key. Then, for each caption, it samples with `--guidance 1` as the video demo does (the
spec's audio guidance and its STG / modality perturbations as `ltxc run generate` applies them; `--plain` samples
without them: 1.06-1.13 after 400 steps), decodes the video and the sound (the random audio VAE and vocoder: the
waveform means nothing) and compares the final audio latents (packed [L, 128], normalised: the cache's space; the
sampler's `final.audio` trace) with each clip's cached `audio_latents`. The video latents' rank is printed beside
it. The control: the spec's untrained weights, same prompts and seed.

Run: python tools/audio_demo.py [--workdir DIR] [--seed 0] [--plain] [--mp4] [--set KEY=VALUE ...]
     (2-7 minutes on a 2-core CPU, with load, most of it training; 400 steps ranked every caption's clip first,
     other/own 1.21-1.40; 1000 steps: 1.25-1.52; the untrained weights: 0.99-1.00)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from ltxc.commands.generate import load_transformer, plan_for
from ltxc.commands.train import SAMPLE_CLIPS, SAMPLE_SIZE
from ltxc.compiler import compile_spec
from ltxc.data.dataset import CacheDataset
from ltxc.media.synthetic import make_sample_dataset
from ltxc.plan import Plan
from ltxc.runner.checkpoint import latest_checkpoint
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

RUN = "audio"
SETTINGS = {"train.steps": "400", "train.cfg_dropout": "0.1"}  # over the run defaults; --set overrides them
TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "ltx-2.3.toml"
# --plain: no audio CFG and no perturbations, so guidance 1 samples the conditional prediction alone
PLAIN = '\n[streams.audio]\nguidance = 1.0\n\n[[sampler.perturbations]]\nname = "stg"\nscale = 0.0\n' \
        'call = { spatio_temporal_guidance_blocks = "[1]" }\n\n[[sampler.perturbations]]\nname = "modality"\n' \
        'scale = 1.0\nweight = "scale - 1"\ncall = { isolate_modalities = "True" }\n'  # fmt: skip


def child_spec(directory: Path, name: str, *, layers: int = 2, heads: int = 4, head_dim: int = 32,
               audio_head_dim: int | None = None) -> Path:  # fmt: skip
    """A child of the tiny LTX-2.3 spec: video `heads` x `head_dim` wide, audio `heads` x `audio_head_dim` (default
    the same), the connectors' outputs as wide (they feed the cross-attentions: `use_prompt_embeddings = false`).

    The shipped tiny transformer is 32 wide (video) and 16 wide (audio): its output projection maps that width
    back to 128 latent features, so the velocity it predicts spans only 32 (16) of a token's 128 directions and
    the other directions keep their starting noise, whatever it learns: no caption can then land on its clip.
    At 128 wide (4 x 32, 2.2M parameters) nothing is cut off.
    """
    width, audio_width = heads * head_dim, heads * (audio_head_dim or head_dim)
    transformer = (f"num_layers = {layers}, num_attention_heads = {heads}, attention_head_dim = {head_dim}, "
                   f"cross_attention_dim = {width}, audio_num_attention_heads = {heads}, "
                   f"audio_attention_head_dim = {audio_head_dim or head_dim}, "
                   f"audio_cross_attention_dim = {audio_width}")  # fmt: skip
    connectors = (f"video_connector_num_attention_heads = {heads}, video_connector_attention_head_dim = {head_dim}, "
                  f"audio_connector_num_attention_heads = {heads}, "
                  f"audio_connector_attention_head_dim = {audio_head_dim or head_dim}, "
                  f"video_hidden_dim = {width}, audio_hidden_dim = {audio_width}")  # fmt: skip
    spec = directory / f"{name}.toml"
    spec.write_text(f'[model]\nname = "{name}"\nextends = "{TINY.as_posix()}"\n\n'
                    f"[components.transformer]\nconfig = {{ {transformer} }}\n\n"
                    f"[components.connectors]\nconfig = {{ {connectors} }}\n", encoding="utf-8")  # fmt: skip
    return spec


def demo_plans(workdir: Path) -> tuple[Path, Plan]:
    """(the demo's spec compiled to WORKDIR/plan/plan.json, its --plain twin: no audio CFG, no perturbations)."""
    spec = child_spec(workdir, "ltx-2.3-tiny-wide")
    plain = workdir / "ltx-2.3-tiny-wide-plain.toml"
    plain.write_text(f'[model]\nname = "ltx-2.3-tiny-wide-plain"\nextends = "{spec.name}"\n{PLAIN}', encoding="utf-8")
    return compile_spec(load_spec(spec)).save(workdir / "plan"), compile_spec(load_spec(plain))


def make_media(workdir: Path) -> Path:
    """The 4 caption- and tone-distinct clips in WORKDIR/media (kept when already there)."""
    media = workdir / "media"
    if not media.exists():
        make_sample_dataset(media, clips=SAMPLE_CLIPS, images=0, seed=0, distinct=True, size=SAMPLE_SIZE, sound=True)
    return media


def train(workdir: Path, plan: Path, media: Path, extra: list[str], in_process: bool = False) -> float:
    """`ltxc run train` of both streams on the clips, as a user runs it (a fresh interpreter; `in_process`: the same
    argv through `ltxc.cli.main` in this process, which the tests use to skip the cold imports); its wall seconds."""
    began = time.monotonic()
    given = {**SETTINGS, **dict(item.split("=", 1) for item in extra)}
    sets = [f"run.name={RUN}", f"data.media={media}", "train.audio=true", "log.progress=false", "log.tensorboard=false"]
    sets += [f"{key}={value}" for key, value in given.items()]
    argv = ["run", "train", "--plan", str(plan), *(x for s in sets for x in ("--set", s))]
    if in_process:
        from ltxc.cli import main

        here = Path.cwd()
        os.chdir(workdir)
        try:
            code = main(argv)
        finally:
            os.chdir(here)
        if code != 0:
            sys.exit(f"ltxc run train exited {code}")
        return time.monotonic() - began
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    done = subprocess.run([sys.executable, "-m", "ltxc", *argv], cwd=workdir, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    print(done.stdout)
    return time.monotonic() - began


def rank(generated: torch.Tensor, cached: dict[str, torch.Tensor], own: str) -> tuple[int, float, float]:
    """(rank of `own` by mean squared distance, its distance, nearest other / own)."""
    distances = {caption: float(((generated - c) ** 2).mean()) for caption, c in cached.items()}
    nearest_other = min(d for caption, d in distances.items() if caption != own)
    order = sorted(distances, key=distances.get)  # type: ignore[arg-type]
    return order.index(own) + 1, distances[own], nearest_other / max(distances[own], 1e-12)


def sample(sampler: Sampler, caption: str, seed: int, decode: bool = True) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """(final audio latents [L, 128] as the cache holds them, video latents, the decoded waveform's shape, () when
    not decoded) for `caption`."""
    seen: dict[str, torch.Tensor] = {}
    result = sampler([caption], guidance=1.0, seed=seed, decode=decode, trace=lambda name, x: seen.__setitem__(name, x))
    if "final.audio" not in seen or (decode and result.audio is None):
        sys.exit("the spec samples or decodes no audio stream: nothing to rank")
    return (
        seen["final.audio"][0].float().cpu(),
        result.latents[0],
        () if result.audio is None else tuple(result.audio[0].shape),
    )


def demo(workdir: Path, seed: int, plain: bool, extra: list[str], mp4: bool = False,
         decode: bool = True, in_process: bool = False) -> list[dict[str, object]]:  # fmt: skip
    """Train (unless WORKDIR has a checkpoint) and rank; one row per (weights, caption). `decode=False` skips the
    video and sound decode (the ranking reads latents only)."""
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / "runs" / RUN
    plan_json, plain_plan = demo_plans(workdir)
    media = make_media(workdir)
    seconds = 0.0 if latest_checkpoint(run) is not None else train(workdir, plan_json, media, extra, in_process)
    checkpoint = latest_checkpoint(run)
    dataset = CacheDataset(run / "cache")
    samples = [dataset[i] for i in range(len(dataset.records))]
    captions = [record["caption"] for record in dataset.records]
    audio = {c: s["audio_latents"].float() for c, s in zip(captions, samples, strict=True)}
    video = {c: s["latents"].float() for c, s in zip(captions, samples, strict=True)}
    plan = plan_for(checkpoint, None)  # the run's own plan; --plain samples the same modules with its twin's
    rows: list[dict[str, object]] = []
    for name, weights in (("trained", checkpoint), ("untrained", None)):
        components = plan.components()
        transformer = load_transformer(plan, components, weights)
        sampler = Sampler(plain_plan if plain else plan, components, transformer=transformer)
        for number, caption in enumerate(captions):
            generated, latents, waveform = sample(sampler, caption, seed, decode)
            audio_rank, distance, ratio = rank(generated, audio, caption)
            video_rank, _, video_ratio = rank(latents, video, caption)
            rows.append({"weights": name, "caption": caption, "rank": audio_rank, "distance": distance,
                         "ratio": ratio, "video_rank": video_rank, "video_ratio": video_ratio,
                         "waveform": waveform, "seconds": seconds})  # fmt: skip
            if mp4 and name == "trained":
                write_clip(sampler, caption, seed, workdir / f"audio-demo-{number}.mp4")
    return rows


def write_clip(sampler: Sampler, caption: str, seed: int, path: Path) -> None:
    """The generation as an mp4 with its AAC track, as `ltxc run generate` writes it."""
    from ltxc.media.write import write_frames

    result = sampler([caption], guidance=1.0, seed=seed)
    assert result.video is not None and result.audio is not None
    write_frames(result.video[0], path, fps=result.fps, audio=result.audio[0], sample_rate=result.sample_rate)


def format_rows(rows: list[dict[str, object]]) -> str:
    """The demo's table."""
    total = len({row["caption"] for row in rows})
    lines = [f"trained in {rows[0]['seconds']:.0f} s; audio-latent distance (mean squared) to the {total} cached clips",
             f"{'caption':60s} {'weights':9s} audio rank  other/own  video rank  other/own  waveform"]  # fmt: skip
    for row in rows:
        lines.append(f"{str(row['caption'])[:60]:60s} {row['weights']:9s} {row['rank']:5d}/{total} "
                     f"{row['ratio']:10.2f} {row['video_rank']:6d}/{total} {row['video_ratio']:10.2f}  "
                     f"{row['waveform']}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to train (default: a new temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--plain", action="store_true", help="sample without audio CFG and perturbations")
    parser.add_argument("--mp4", action="store_true", help="also write WORKDIR/audio-demo-N.mp4 (with sound)")
    parser.add_argument("--set", action="append", default=[], help="a further run-config item for the training")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltxc-audio-"))
    print(format_rows(demo(workdir, args.seed, args.plain, args.set, args.mp4)))


if __name__ == "__main__":
    main()
