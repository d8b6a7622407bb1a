"""The image-to-video demo: train the embedded default with `tasks.i2v.probability = 0.5`, then generate from each
training clip's first frame and rank the 4 training clips by latent distance.

Trains as a user would (`python -m ltxc run train --set tasks.i2v.probability=0.5` in WORKDIR: the embedded
default's synthetic 4-clip set and full fine-tune) for 800 steps with `train.cfg_dropout = 0.5`: the image alone is
learned from the samples whose caption was dropped, and at the default's 0.1 and 400 steps there are about 80 of
them (the image alone then ranked its clip first for 1 of 4 clips); `--set` changes any run-config key. The plan
is a child of the tiny LTX-Video spec whose i2v condition encodes the image with the posterior's mode
(`encode = "mode"`, as the cache encodes the clips; the sampled image latent then equals the clip's cached first
latent frame to 1e-14): the spec's `"sample"` (the pipeline's) draws from the tiny random VAE's posterior, whose
std is about 1 against latents of std 0.27, so the given frame would be mostly noise (`--encode sample` shows it).
Then, for each clip, it samples with guidance 1 from the clip's first frame (read from its file as `--image` reads
it) and
  - an empty prompt (the image alone must say which clip it is), and
  - the clip's caption (image and text),
and, as controls, the same model from the caption without an image (text-to-video), and the spec's untrained
weights from the image with an empty prompt. Distances are mean squared over the *generated* latent frames only
(1..; latent frame 0 is the given image's), so the given frame cannot make the ranking; the whole-clip rank is
printed beside it.

Run: python tools/i2v_demo.py [--workdir DIR] [--seed 0] [--encode mode|sample] [--set KEY=VALUE ...]
     (~2.5 minutes on a 2-core CPU, most of it training)
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
from ltxc.compiler import compile_spec
from ltxc.data.dataset import CacheDataset
from ltxc.runner.checkpoint import latest_checkpoint
from ltxc.runner.validation import read_image
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

RUN = "i2v"
SETTINGS = {"train.steps": "800", "train.cfg_dropout": "0.5"}  # over the embedded default; --set overrides them
TINY = Path(__file__).resolve().parents[1] / "specs" / "tiny" / "ltx.toml"


def demo_plan(workdir: Path, encode: str) -> Path:
    """The tiny spec with the i2v image encoded by `encode`, compiled to WORKDIR/plan/plan.json."""
    spec = workdir / "i2v-demo.toml"
    spec.write_text(f'[model]\nname = "ltx-video-tiny-i2v-{encode}"\nextends = "{TINY.as_posix()}"\n\n'
                    f'[tasks.i2v.conditions.image]\nencode = "{encode}"\n', encoding="utf-8")  # fmt: skip
    return compile_spec(load_spec(spec)).save(workdir / "plan")


def train(workdir: Path, plan: Path, extra: list[str]) -> float:
    """`ltxc run train` of the embedded default with image-to-video at p = 0.5; its wall seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    began = time.monotonic()
    given = {**SETTINGS, **dict(item.split("=", 1) for item in extra)}
    sets = [f"run.name={RUN}", "tasks.i2v.probability=0.5", "log.progress=false", "log.tensorboard=false"]
    sets += [f"{key}={value}" for key, value in given.items()]
    command = [sys.executable, "-m", "ltxc", "run", "train", "--plan", str(plan)]
    done = subprocess.run([*command, *(x for s in sets for x in ("--set", s))],
                          cwd=workdir, env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        sys.exit(done.stderr)
    print(done.stdout)
    return time.monotonic() - began


def ranks(latents: torch.Tensor, cached: dict[str, torch.Tensor], own: str) -> tuple[int, float, float, int]:
    """(rank of `own` on generated frames, its distance there, nearest other / own, rank on the whole clip)."""
    generated = {caption: float(((latents[:, 1:] - c[:, 1:]) ** 2).mean()) for caption, c in cached.items()}
    whole = {caption: float(((latents - c) ** 2).mean()) for caption, c in cached.items()}
    order = sorted(generated, key=generated.get)  # type: ignore[arg-type]
    nearest_other = min(d for caption, d in generated.items() if caption != own)
    whole_rank = sorted(whole, key=whole.get).index(own) + 1  # type: ignore[arg-type]
    return order.index(own) + 1, generated[own], nearest_other / generated[own], whole_rank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where to train (default: a new temporary directory)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    parser.add_argument("--encode", choices=("mode", "sample"), default="mode", help="how the image is encoded")
    parser.add_argument("--set", action="append", default=[], help="a further run-config item for the training")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ltxc-i2v-"))
    workdir.mkdir(parents=True, exist_ok=True)
    run = workdir / "runs" / RUN
    plan_json = demo_plan(workdir, args.encode)
    seconds = 0.0 if latest_checkpoint(run) is not None else train(workdir, plan_json, args.set)
    checkpoint = latest_checkpoint(run)
    dataset = CacheDataset(run / "cache")
    cached = {record["caption"]: dataset[i]["latents"].float() for i, record in enumerate(dataset.records)}
    clips = sorted(run.glob("media/*.mp4"))
    plan = plan_for(checkpoint, None)
    settings = plan.sampler
    samplers = {}
    for name, weights in (("trained", checkpoint), ("untrained", None)):
        components = plan.components()
        samplers[name] = Sampler(plan, components, transformer=load_transformer(plan, components, weights))
    print(f"trained in {seconds:.0f} s; distances over generated latent frames 1.. (whole clip: its rank)")
    print(f"{'clip':44s} {'weights':9s} {'input':14s} rank  distance  other/own  whole-rank")
    for clip in clips:
        caption = clip.with_suffix(".txt").read_text(encoding="utf-8").strip()
        image = read_image(str(clip), settings.height, settings.width)
        for name, prompt, given, label in (
            ("trained", "", image, "image"),
            ("trained", caption, image, "image+caption"),
            ("trained", caption, None, "caption"),
            ("untrained", "", image, "image"),
        ):
            result = samplers[name]([prompt], guidance=1.0, seed=args.seed, image=given, decode=False)
            rank, distance, ratio, whole = ranks(result.latents[0], cached, caption)
            print(f"{caption[:44]:44s} {name:9s} {label:14s} {rank:2d}/{len(cached)} {distance:9.4f} {ratio:9.2f}"
                  f"  {whole:2d}/{len(cached)}")  # fmt: skip


if __name__ == "__main__":
    main()
