"""An image family through every command (issue 15 item 3): the tiny FLUX.1-dev spec (specs/tiny/flux-1.toml: random
weights, the real geometry; one frame per sample) through compile, preprocess, train (LoRA and full), generate and
export, through the CLI in-process, with diffusers' FluxPipeline as the oracle.

Covers:
- `ltxc compile` lists one valid frame count and image sizes (no invalid 121-frame rows);
- `ltxc run preprocess` on a folder of images of two aspect ratios and a video: the video becomes its first frame,
  images land in two buckets, and each record's text (T5 sequence and CLIP's pooled [D] vector, no length axis)
  equals FluxPipeline.encode_prompt's for its caption (float32, bit-equal); batches of 2 come from one bucket;
- `ltxc run train` with no media on an image spec makes images, not clips;
- LoRA (100 steps at lr 3e-3, batch 2) and full fine-tune: finite losses, the LoRA's falls (to 0.87 of its start);
  exact resume (a stopped and resumed full run gives the uninterrupted run's losses bit for bit);
  `train.inputs.guidance` reaches the transformer (another value changes the losses; the spec's training value
  changes nothing) and an unknown input is a FILE:LINE error;
- the resolution shift draws σ for the packed token count, not the latent cells;
- `ltxc run generate` writes a PNG (the default for an image spec), `--input guidance=V` changes the image (and is
  recorded in a .safetensors output's metadata), .mp4 is refused in one line; a LoRA checkpoint and its export
  generate the same frames;
- the LoRA export (no ComfyUI file: ComfyUI reads diffusers-named Flux LoRAs) targets the single blocks, loads with
  FluxPipeline.load_lora_weights, and the pipeline's latents then equal ltxc's sampler with the training
  checkpoint (float32, max |Δ| = 0; and on the bf16 twin with the export), while they differ from the base model's;
- FLUX.1-schnell's tiny twin (no [inputs]): compile, 2 LoRA steps on the built-in image set, a PNG from the export.

Run: `pytest -q tests/test_flux_commands.py` (CPU, tiny models, nothing downloaded; 30-60 s on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import torch
from conftest import SPECS, isolated_process_group
from safetensors import safe_open
from safetensors.torch import load_file

from ltxc.cli import main
from ltxc.compiler import load_plan
from ltxc.media.synthetic import write_image, write_video
from ltxc.plan import Plan
from ltxc.runner.metrics import read_metrics

TINY_FLUX = SPECS / "tiny" / "flux-1.toml"
TINY_SCHNELL = SPECS / "tiny" / "flux-1-schnell.toml"
WIDE, TALL = (96, 64), (64, 96)  # stored sizes: the 3:2 and 2:3 buckets of the tiny spec's 48x32 budget
LORA_STEPS, FULL_STEPS = 100, 6
PROMPT = "a red square"
PLAN = Path("plan") / "plan.json"  # relative to the module's working directory


def cli(*args: str, code: int = 0) -> str:
    """`ltxc ARGS` in-process (outside a function-scoped capsys); asserts the exit code, returns stdout + stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        got = main(list(args))
    text = out.getvalue() + err.getvalue()
    assert got == code, f"ltxc {' '.join(args)} exited {got}:\n{text}"
    return text


def train_args(run: str, *sets: str) -> list[str]:
    quiet = ("log.progress=false", "log.tensorboard=false", "data.cache=cache", "data.pin_memory=false")
    return ["run", "train", "--plan", str(PLAN), "--set", f"run.output={run}",
            *(arg for item in (*quiet, *sets) for arg in ("--set", item))]  # fmt: skip


@attrs.frozen
class Flux:
    """The module's working directory after compile, preprocess, and a LoRA and a full training run."""

    root: Path
    plan: Plan
    compiled: str  # `ltxc compile`'s output
    summaries: dict[str, str]  # mode -> the `run train` output


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flux]:
    """compile -> a folder of 5 images (3 wide, 2 tall) and a wide video -> `ltxc run preprocess` -> LoRA and full
    training on that one cache (batch 2), from the module's own working directory with relative paths."""
    root = tmp_path_factory.mktemp("flux")
    with isolated_process_group(), pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        compiled = cli("compile", str(TINY_FLUX), "--out", str(PLAN.parent))
        media = Path("media")
        media.mkdir()
        for index, (name, size) in enumerate(
            [("wide-a", WIDE), ("wide-b", WIDE), ("wide-c", WIDE), ("tall-a", TALL), ("tall-b", TALL)]
        ):
            write_image(media / f"{name}.png", index, size)
            (media / f"{name}.txt").write_text(f"{name.replace('-', ' ')} image\n", encoding="utf-8")
        write_video(media / "clip.mp4", frames=12, fps=24, size=WIDE)
        (media / "clip.txt").write_text(f"{PROMPT}\n", encoding="utf-8")
        cli("run", "preprocess", "--data", "media", "--cache", "cache", "--plan", str(PLAN))
        summaries = {
            "lora": cli(
                *train_args(
                    "runs/lora",
                    "train.mode=lora",
                    f"train.steps={LORA_STEPS}",
                    "data.batch_size=2",
                    "optimizer.lr=3e-3",
                    "checkpoint.every=0",
                )
            ),
            "full": cli(
                *train_args(
                    "runs/full",
                    "train.mode=full",
                    f"train.steps={FULL_STEPS}",
                    "data.batch_size=2",
                    "checkpoint.every=3",
                )
            ),
        }
        yield Flux(root, load_plan(root / PLAN), compiled, summaries)


def records(cache: Path) -> dict[str, dict[str, Any]]:
    lines = (cache / "manifest.jsonl").read_text().splitlines()
    return {record["source"]: record for record in map(json.loads, lines)}


# -- compile, preprocess, batches ----------------------------------------------------------------------------


def test_compile_shows_image_sizes(flux: Flux) -> None:
    assert "frames     exactly 1: 1\n" in flux.compiled
    assert "768x512x1 -> [16, 1, 64, 96], 1,536 tokens" in flux.compiled  # 2x2-packed tokens
    assert "invalid" not in flux.compiled


def test_preprocess_caches_images_in_two_buckets_with_the_pipelines_text(flux: Flux) -> None:
    from diffusers import FluxPipeline

    from ltxc.commands.verify_reference import build_reference

    cache = flux.root / "cache"
    found = records(cache)
    assert {source: record["bucket"] for source, record in found.items()} == {
        "wide-a.png": "48x32x1", "wide-b.png": "48x32x1", "wide-c.png": "48x32x1", "clip.mp4": "48x32x1",
        "tall-a.png": "32x48x1", "tall-b.png": "32x48x1",
    }  # fmt: skip
    clip = found["clip.mp4"]  # a video given to an image spec: its first frame
    assert (clip["kind"], clip["frames"], clip["source_frames"], clip["latent_shape"]) == (
        "video",
        1,
        [0],
        [16, 1, 4, 6],
    )
    header = json.loads((cache / "cache.json").read_text())
    assert header["tensors"]["text_pooled"] == "text conditioning 'pooled' [D]"

    pipeline = build_reference(FluxPipeline, flux.plan.components())
    with torch.no_grad():  # as preprocessing encodes (with autograd on, attention takes another kernel)
        encoded = {
            r["caption"]: pipeline.encode_prompt(r["caption"], None, max_sequence_length=32) for r in found.values()
        }
        null_embeds, null_pooled, _ = pipeline.encode_prompt("", None, max_sequence_length=32)
    for record in found.values():
        tensors = load_file(cache / record["file"])
        assert tensors["text_pooled"].shape == (32,)  # CLIP's hidden size, no length axis
        embeds, pooled, _ = encoded[record["caption"]]
        assert torch.equal(tensors["text_embeds"], embeds[0]) and torch.equal(tensors["text_pooled"], pooled[0])
    null = load_file(cache / "null.safetensors")
    assert torch.equal(null["text_pooled"], null_pooled[0]) and torch.equal(null["text_embeds"], null_embeds[0])


def test_batches_of_two_come_from_one_bucket(flux: Flux) -> None:
    from ltxc.data.dataset import CacheDataset
    from ltxc.data.loader import make_loader

    loader = make_loader(CacheDataset(flux.root / "cache"), 2, rank=0, world_size=1, seed=0)
    batches = [batch for batch, _ in zip(loader, range(8), strict=False)]
    shapes = {"48x32x1": (2, 16, 1, 4, 6), "32x48x1": (2, 16, 1, 6, 4)}
    for batch in batches:
        (bucket,) = set(batch["bucket"])
        assert tuple(batch["latents"].shape) == shapes[bucket]
        assert tuple(batch["text_pooled"].shape) == (2, 32) and tuple(batch["text_embeds"].shape) == (2, 32, 32)
    assert {batch["bucket"][0] for batch in batches} == set(shapes)


def test_the_synthetic_set_is_images_for_an_image_spec(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    from ltxc.commands.train import SAMPLE_CLIPS, sample_counts

    assert sample_counts(flux.plan) == (0, SAMPLE_CLIPS)
    monkeypatch.chdir(flux.root)
    with isolated_process_group():  # no data.cache, no data.media: the built-in set, made and preprocessed
        cli("run", "train", "--plan", str(PLAN), "--set", "run.output=runs/synthetic", "--set", "train.steps=1",
            "--set", "log.progress=false", "--set", "log.tensorboard=false")  # fmt: skip
    media = sorted(path.suffix for path in (flux.root / "runs" / "synthetic" / "media").iterdir())
    assert media == [".jpg", ".jpg", ".png", ".png", ".txt", ".txt", ".txt", ".txt"]
    cached = records(flux.root / "runs" / "synthetic" / "cache").values()
    assert len(cached) == 4 and {(r["kind"], r["frames"]) for r in cached} == {("image", 1)}


# -- train ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_training_runs_finite_and_the_lora_learns(flux: Flux, mode: str) -> None:
    losses = [record["loss"] for record in read_metrics(flux.root / "runs" / mode / "metrics.jsonl")]
    assert len(losses) == (LORA_STEPS if mode == "lora" else FULL_STEPS) and all(map(math.isfinite, losses))
    if mode == "lora":
        first, last = statistics.mean(losses[:10]), statistics.mean(losses[-10:])
        print(f"flux lora: loss {first:.4f} -> {last:.4f} (ratio {last / first:.3f})")
        assert last / first < 0.95  # measured 0.873 (deterministic on CPU); a model that does not learn is ~1


def test_full_resume_is_exact(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full run checkpointed at step 3; stopping there and resuming gives the same 6 losses, bit for bit."""
    monkeypatch.chdir(flux.root)
    sets = ("train.mode=full", f"train.steps={FULL_STEPS}", "data.batch_size=2", "checkpoint.every=3")
    with isolated_process_group():
        cli(*train_args("runs/split", *sets), "--stop-after", "3")
        cli(*train_args("runs/split", *sets))
    split = [r["loss"] for r in read_metrics(flux.root / "runs" / "split" / "metrics.jsonl")]
    assert split == [r["loss"] for r in read_metrics(flux.root / "runs" / "full" / "metrics.jsonl")]


def test_the_guidance_input_comes_from_the_run_config(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(flux.root)

    def losses(run: str, *sets: str) -> list[float]:
        with isolated_process_group():
            cli(*train_args(run, "train.steps=2", "export.lora_diffusers=false", "export.lora_comfyui=false", *sets))
        return [r["loss"] for r in read_metrics(flux.root / run / "metrics.jsonl")]

    spec = losses("runs/inputs-spec")
    assert flux.plan.inputs["guidance"].train == 1.0
    assert losses("runs/inputs-1", "train.inputs.guidance=1.0") == spec  # the spec's training value
    assert losses("runs/inputs-8", "train.inputs.guidance=8.0") != spec
    with isolated_process_group():
        out = cli(*train_args("runs/inputs-bad", "train.inputs.scale=2.0"), code=2)
    assert "--set:6: train.inputs.scale: spec 'flux-1-dev-tiny' has no input 'scale' (its [inputs]: guidance)" in out


def test_the_resolution_shift_counts_packed_tokens(flux: Flux) -> None:
    from ltxc.flow import sample_sigmas
    from ltxc.runner.config import RunConfig
    from ltxc.runner.seeds import derived_seed
    from ltxc.runner.step import draw_micro
    from ltxc.runner.tasks import training_tasks

    shape = (1, 16, 1, 64, 64)  # 4096 latent cells, 1024 packed tokens (a 512x512 image)
    drawn = draw_micro(flux.plan, RunConfig(), training_tasks(flux.plan, RunConfig()), 0, 0, 0, shape).sigma

    def sigma(tokens: int) -> torch.Tensor:
        return sample_sigmas(flux.plan.flow, 1, tokens, torch.Generator().manual_seed(derived_seed(0, 0, 0, 0)))

    assert torch.equal(drawn, sigma(1024)) and not torch.equal(drawn, sigma(4096))


# -- generate ----------------------------------------------------------------------------------------------


def test_generate_writes_a_png_and_takes_inputs(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    from ltxc.media import read_image
    from ltxc.media.write import read_frames_file

    monkeypatch.chdir(flux.root)
    plan = ("--plan", str(PLAN))
    out = cli("run", "generate", "--prompt", PROMPT, *plan)  # no --output: generated.png for an image spec
    assert "wrote generated.png (1 frames, 48x32" in out
    assert read_image(flux.root / "generated.png", (48, 32)).shape == (32, 48, 3)
    frames = {}
    for name, extra in {"default": (), "3.5": ("--input", "guidance=3.5"), "8": ("--input", "guidance=8")}.items():
        cli("run", "generate", "--prompt", PROMPT, *plan, *extra, "--output", f"guidance-{name}.safetensors")
        frames[name], _ = read_frames_file(flux.root / f"guidance-{name}.safetensors")
    assert (frames["default"] == frames["3.5"]).all()  # the spec's sample value is 3.5
    with safe_open(str(flux.root / "guidance-8.safetensors"), framework="pt") as handle:
        assert handle.metadata()["input.guidance"] == "8"  # recorded beside the prompt and seed
    with safe_open(str(flux.root / "guidance-default.safetensors"), framework="pt") as handle:
        assert handle.metadata()["input.guidance"] == "3.5"
    assert (frames["default"] != frames["8"]).any()
    refused = cli("run", "generate", "--prompt", PROMPT, *plan, "--output", "out.mp4", code=2)
    assert "--output out.mp4: spec 'flux-1-dev-tiny' makes images" in refused and "use .png" in refused
    assert not (flux.root / "out.mp4").exists()
    unknown = cli("run", "generate", "--prompt", PROMPT, *plan, "--input", "scale=2", code=2)
    assert "has no input 'scale' (its [inputs]: guidance)" in unknown


def test_generate_from_the_lora_checkpoint_and_its_export_agree(flux: Flux, monkeypatch: pytest.MonkeyPatch) -> None:
    from ltxc.media.write import read_frames_file

    monkeypatch.chdir(flux.root)
    checkpoint = f"runs/lora/checkpoints/step-{LORA_STEPS:08d}"
    cli("run", "generate", "--prompt", PROMPT, "--checkpoint", checkpoint, "--output", "ckpt.safetensors")
    cli("run", "generate", "--prompt", PROMPT, "--checkpoint", "runs/lora/export/lora", "--plan", str(PLAN),
        "--output", "export.safetensors")  # fmt: skip
    (ckpt, _), (export, _) = (read_frames_file(flux.root / f"{n}.safetensors") for n in ("ckpt", "export"))
    assert float(abs(ckpt - export).max()) <= 1e-5


# -- export --------------------------------------------------------------------------------------------------


def pipeline_latents(pipeline: Any) -> torch.Tensor:
    """FluxPipeline's final latents for PROMPT at 48x32, 2 steps, seed 0 (what ltxc's sampler is compared with)."""
    return pipeline(prompt=[PROMPT], height=32, width=48, num_inference_steps=2, guidance_scale=3.5,
                    max_sequence_length=32, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images  # fmt: skip


def test_lora_export_loads_into_flux_pipeline_as_ltxc_loads_it(flux: Flux) -> None:
    from diffusers import FluxPipeline

    from ltxc.commands.generate import load_transformer
    from ltxc.commands.verify_reference import build_reference
    from ltxc.sampler import Sampler

    export = flux.root / "runs" / "lora" / "export" / "lora"
    modules = {key.split(".lora_")[0] for key in load_file(export / "pytorch_lora_weights.safetensors")}
    for single in ("proj_mlp", "proj_out", "norm.linear", "attn.to_q"):
        assert f"transformer.single_transformer_blocks.0.{single}" in modules

    plan = flux.plan
    pipeline = build_reference(FluxPipeline, plan.components())
    pipeline.set_progress_bar_config(disable=True)

    base = pipeline_latents(pipeline)
    pipeline.load_lora_weights(str(export))
    assert getattr(pipeline.transformer, "peft_config", None), "no adapter was loaded"
    with_lora = pipeline_latents(pipeline)
    components = plan.components()
    checkpoint = flux.root / "runs" / "lora" / "checkpoints" / f"step-{LORA_STEPS:08d}"
    sampler = Sampler(plan, components, transformer=load_transformer(plan, components, checkpoint))
    ours = plan.geometry.pack(sampler([PROMPT], height=32, width=48, steps=2, seed=0, decode=False).latents)
    changed, agree = (with_lora - base).abs().max().item(), (with_lora - ours).abs().max().item()
    print(f"flux LoRA export in FluxPipeline: latents max |Δ| vs base {changed:.3e}, vs ltxc's checkpoint {agree:.3e}")
    assert changed > 1e-3 and agree == 0.0


def test_no_comfyui_file_when_comfyui_reads_the_diffusers_lora(flux: Flux) -> None:
    """ComfyUI loads diffusers-named Flux LoRAs itself (its own Flux module names fuse q/k/v, so a renamed copy would
    be wrong): the spec says so ([lora] comfyui = "diffusers") and the export writes only the diffusers file."""
    assert flux.plan.lora.comfyui == "diffusers"
    export = flux.root / "runs" / "lora" / "export" / "lora"
    assert sorted(path.name for path in export.iterdir()) == ["pytorch_lora_weights.safetensors"]
    assert "lora_comfyui" not in flux.summaries["lora"]
    assert "ComfyUI loads this model's diffusers-format LoRA" in flux.summaries["lora"]


def test_schnell_compiles_trains_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLUX.1-schnell (no guidance input): compile, 2 LoRA steps on the built-in image set, a PNG from the export;
    an --input is refused."""
    if not TINY_SCHNELL.exists():
        pytest.skip("specs/tiny/flux-1-schnell.toml is not written yet")
    monkeypatch.chdir(tmp_path)
    cli("compile", str(TINY_SCHNELL), "--out", "plan")
    with isolated_process_group():
        sets = ("run.output=runs/s", "train.steps=2", "train.mode=lora", "log.progress=false", "log.tensorboard=false")
        cli("run", "train", "--plan", "plan/plan.json", *(arg for item in sets for arg in ("--set", item)))
    out = cli("run", "generate", "--prompt", PROMPT, "--plan", "plan/plan.json", "--checkpoint", "runs/s/export/lora",
              "--output", "s")  # fmt: skip
    assert "wrote s.png (1 frames" in out
    refused = cli("run", "generate", "--prompt", PROMPT, "--plan", "plan/plan.json", "--input", "guidance=2", code=2)
    assert "(its [inputs]: none)" in refused


def test_the_lora_export_in_a_bf16_flux_pipeline_equals_ltxc_in_bf16(flux: Flux, tmp_path: Path) -> None:
    """The same export on the bf16 twin (transformer, VAE and both text encoders in bf16): FluxPipeline with
    `load_lora_weights` and ltxc's sampler with the export give the same latents (peft keeps the LoRA in float32 on
    a bf16 base in both), and the LoRA still changes them."""
    from diffusers import FluxPipeline

    from ltxc.commands.generate import load_transformer
    from ltxc.commands.verify_reference import build_reference
    from ltxc.compiler import compile_spec
    from ltxc.sampler import Sampler
    from ltxc.spec import load_spec

    twin = tmp_path / "flux-bf16.toml"
    roles = ("transformer", "vae", "text_encoder", "text_encoder_2")
    twin.write_text(f'[model]\nname = "flux-bf16"\nextends = {json.dumps(TINY_FLUX.resolve().as_posix())}\n'
                    + "".join(f'\n[components.{role}]\ndtype = "bfloat16"\n' for role in roles))  # fmt: skip
    plan = compile_spec(load_spec(twin))
    export = flux.root / "runs" / "lora" / "export" / "lora"
    pipeline = build_reference(FluxPipeline, plan.components())
    pipeline.set_progress_bar_config(disable=True)

    base = pipeline_latents(pipeline)
    pipeline.load_lora_weights(str(export))
    with_lora = pipeline_latents(pipeline)
    assert with_lora.dtype == torch.bfloat16
    components = plan.components()
    sampler = Sampler(plan, components, transformer=load_transformer(plan, components, export))
    ours = plan.geometry.pack(sampler([PROMPT], height=32, width=48, steps=2, seed=0, decode=False).latents)
    changed, agree = (with_lora - base).abs().max().item(), (with_lora.float() - ours.float()).abs().max().item()
    print(f"bf16: latents max |Δ| vs base {changed:.3e}, vs ltxc {agree:.3e}")
    assert changed > 1e-3 and agree == 0.0
