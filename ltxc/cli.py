"""The `ltxc` command: argparse front end. User errors print one clear line each and exit 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ltxc.errors import UserError

DEFAULT_PLAN_DIR = Path(".ltxc")


def _size(text: str) -> tuple[int, int, int]:
    try:
        w, h, f = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHTxFRAMES (e.g. 768x512x121)") from None
    return w, h, f


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ltxc", description="Fine-tune video diffusion transformers from model specs."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    compile_cmd = commands.add_parser("compile", help="validate and compile a spec; print a summary; write the plan")
    compile_cmd.add_argument("spec", type=Path, help="a model spec (TOML), e.g. specs/tiny/ltx.toml")
    compile_cmd.add_argument(
        "--out", type=Path, default=DEFAULT_PLAN_DIR, help="directory for plan.json (default .ltxc)"
    )
    compile_cmd.add_argument(
        "--size",
        type=_size,
        action="append",
        metavar="WxHxF",
        help="a pixel size to show shapes for (repeatable)",
    )
    _add_verify(commands)
    _add_draft(commands)
    run = commands.add_parser("run", help="run a plan: preprocess, train, generate, export")
    run_commands = run.add_subparsers(dest="run_command", required=True, metavar="JOB")
    _add_preprocess(run_commands)
    _add_train(run_commands)
    _add_generate(run_commands)
    export = run_commands.add_parser("export", help="export a run's checkpoint (LoRA: diffusers + ComfyUI; full)")
    export.add_argument("--run", type=Path, required=True, help="the run's output directory (holds run.json)")
    export.add_argument("--checkpoint", type=Path, help="a checkpoint directory (default: the run's latest)")
    export.add_argument("--out", type=Path, help="where to write (default: RUN/export-step-NNNNNNNN)")
    export.add_argument("--device", help="cpu or cuda")
    return parser


def _add_train(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train (LoRA or full) from a cache; with no arguments, the embedded tiny default",
        description="Train a plan on a latent cache with FSDP2 (torchrun for several processes). With no "
        "--config: the embedded default (tiny model, synthetic sample set, preprocessed first if needed).",
    )
    p.add_argument("--config", type=Path, help="a run config TOML (see specs/runs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a run-config key")
    p.add_argument("--plan", type=Path, help="plan.json (default: run.plan, .ltxc/plan.json, the embedded default)")
    p.add_argument("--resume", help="'auto' (default), 'never', a checkpoint directory or a run directory")
    p.add_argument("--device", help="cpu or cuda (default: cuda:LOCAL_RANK if available)")
    p.add_argument("--stop-after", type=int, help="stop after this many steps of this invocation (checkpointed)")
    p.add_argument("--dry-run", action="store_true", help="print the per-rank memory plan and exit (no training)")
    p.add_argument(
        "--ignore-memory-plan", action="store_true", help="train on a GPU even when the memory plan does not fit"
    )


def _add_preprocess(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "preprocess",
        help="encode a folder of videos/images + captions into a resumable latent cache",
        description="Encode videos and images with captions into a latent cache (resumable; bad inputs are "
        "skipped and listed in rejected.jsonl).",
    )
    p.add_argument("--data", type=Path, required=True, help="folder of media with .txt captions, or with metadata")
    p.add_argument("--cache", type=Path, required=True, help="cache directory (created; resumed if it exists)")
    p.add_argument("--plan", type=Path, help="plan.json (default .ltxc/plan.json, else the embedded tiny default)")
    p.add_argument("--metadata", type=Path, help="a metadata.jsonl / metadata.csv (default: one inside --data)")
    p.add_argument("--path-key", default="path", help="metadata key/column of the media path (default: path)")
    p.add_argument("--caption-key", default="caption", help="metadata key/column of the caption (default: caption)")
    p.add_argument(
        "--missing-caption",
        choices=["skip", "filename", "empty"],
        default="skip",
        help="a missing, empty or non-UTF-8 caption: skip the sample, use the file name, or use '' (default: skip)",
    )
    p.add_argument(
        "--missing-audio",
        choices=["drop", "silence", "mask"],
        default="mask",
        help="a clip without sound when the spec declares an audio source: drop it, encode silence, or cache zeros "
        "with audio_mask 0 so training leaves its audio out of the loss (default: mask; docs/audio.md)",
    )
    p.add_argument("--fps", type=float, help="take frames at this rate (default: the spec's fps)")
    p.add_argument("--start", type=float, default=0.0, help="first frame time in seconds (default 0)")
    p.add_argument("--max-frames", type=int, help="most frames per clip (default: the spec's default frame count)")
    p.add_argument(
        "--frame-buckets", type=_int_list, help="allowed frame counts, e.g. 9,17,33 (default: every valid count)"
    )
    p.add_argument(
        "--frames-policy",
        choices=["skip", "pad"],
        default="skip",
        help="a clip shorter than the fewest frames: skip it, or pad by repeating its last frame (recorded)",
    )
    p.add_argument(
        "--low-fps",
        choices=["repeat", "skip"],
        default="repeat",
        help="a clip slower than --fps: keep real time by repeating source frames (recorded), or skip it",
    )
    p.add_argument("--resolution", help="force one bucket WxH (e.g. 768x512; must obey the resolution rule)")
    p.add_argument("--pixels", type=int, help="pixel budget per frame for the aspect buckets (default: spec W*H)")
    p.add_argument("--aspects", type=_float_list, help="bucket aspect ratios W/H, e.g. 1,1.5,0.667")
    p.add_argument("--tiling", choices=["auto", "on", "off"], default="auto", help="tiled VAE encode (default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for posterior sampling when the spec samples")
    p.add_argument("--workers", type=int, default=1, help="encoding processes (spawned; one model copy each)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available; LOCAL_RANK under torchrun)")
    p.add_argument("--overwrite", action="store_true", help="rebuild a cache made with another spec or settings")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any input was rejected")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _float_list(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _preprocess(args: argparse.Namespace) -> int:
    from ltxc.commands.preprocess import run_preprocess

    return run_preprocess(
        data=args.data,
        cache=args.cache,
        plan_path=args.plan,
        metadata=args.metadata,
        path_key=args.path_key,
        caption_key=args.caption_key,
        missing_caption=args.missing_caption,
        missing_audio=args.missing_audio,
        fps=args.fps,
        start=args.start,
        max_frames=args.max_frames,
        frame_buckets=args.frame_buckets,
        frames_policy=args.frames_policy,
        low_fps=args.low_fps,
        resolution=args.resolution,
        pixels=args.pixels,
        aspects=args.aspects,
        tiling=args.tiling,
        seed=args.seed,
        workers=args.workers,
        device=args.device,
        overwrite=args.overwrite,
        strict=args.strict,
    )


def _train(args: argparse.Namespace) -> int:
    from ltxc.commands.train import run_train

    return run_train(
        config=args.config,
        overrides=args.set,
        plan_path=args.plan,
        resume=args.resume,
        device=args.device,
        stop_after=args.stop_after,
        dry_run=args.dry_run,
        ignore_memory_plan=args.ignore_memory_plan,
    )


def _add_generate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("generate", help="sample videos from the spec's weights, a checkpoint or an export")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", type=Path, help="a text file with one prompt per line")
    p.add_argument("--negative-prompt", help="negative prompt for CFG (default: the spec's)")
    p.add_argument("--frames", type=int, help="frame count (default: the spec's; must obey the frame rule)")
    p.add_argument("--height", type=int, help="height in pixels (default: the spec's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the spec's)")
    p.add_argument("--fps", type=float, help="frame rate (default: the spec's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the spec's)")
    p.add_argument("--guidance", type=float, help="CFG scale (default: the spec's; 1 disables CFG)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initial noise (drawn as diffusers draws it)")
    p.add_argument("--checkpoint", type=Path, help="a training checkpoint or an export directory (LoRA or full)")
    p.add_argument("--lora-scale", type=float, default=1.0, help="scale of a LoRA checkpoint or export")
    p.add_argument("--output", type=Path, help="out.mp4 / .gif / .png (frame or contact sheet) / "
                   ".safetensors (raw frames); an .mp4 gets the generated sound as an AAC track (trimmed or padded "
                   "to the video's length) when the spec decodes sound ([streams.<name>.decode]); an image model "
                   "(one frame) writes .png or .safetensors; default (or no suffix): generated.png for an image "
                   "model, generated.mp4 otherwise")  # fmt: skip
    p.add_argument("--input", action="append", default=[], metavar="NAME=VALUE", help="a value for one of the "
                   "spec's [inputs] (e.g. --input guidance=4.0, a distilled guidance scale; default: its sample "
                   "value)")  # fmt: skip
    p.add_argument("--audio-out", type=Path, help="also write the generated sound as 16-bit .wav at the vocoder's rate "
                   "(several prompts: NAME-0.wav, NAME-1.wav, ...); the spec must decode sound")  # fmt: skip
    p.add_argument("--plan", type=Path, help="plan.json (default: the checkpoint's run, .ltxc/plan.json, embedded)")
    p.add_argument("--device", help="cpu or cuda")
    p.add_argument("--compare-cache", type=Path, help="print the latent distance to each cached sample (demo)")
    p.add_argument(
        "--image",
        type=Path,
        help="image-to-video: a still (PNG, JPEG, ...) or a video whose first frame becomes the first frame, resized "
        "to cover the generation size and centre-cropped (the spec's task that takes an image)",
    )
    p.add_argument(
        "--reference",
        type=Path,
        help="a reference video for the spec's task that takes a video (its tokens follow the target's, clean): "
        "its first frames at the generation's frame rate, as many as the generation has, resized to cover the "
        "generation size / the condition's downscale and centre-cropped",
    )
    p.add_argument(
        "--reference-strength",
        type=float,
        default=1.0,
        help="how clean the reference's tokens are kept: 1 (default) clean at timestep 0 through every step, "
        "below 1 partly noised (timestep t * (1 - strength))",
    )


def _generate(args: argparse.Namespace) -> int:
    from ltxc.commands.generate import run_generate

    return run_generate(
        prompts=args.prompt,
        prompts_file=args.prompts,
        negative_prompt=args.negative_prompt,
        frames=args.frames,
        height=args.height,
        width=args.width,
        fps=args.fps,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        checkpoint=args.checkpoint,
        lora_scale=args.lora_scale,
        output=args.output,
        plan_path=args.plan,
        device=args.device,
        compare_cache=args.compare_cache,
        image=args.image,
        reference=args.reference,
        reference_strength=args.reference_strength,
        audio_out=args.audio_out,
        named_inputs=args.input,
    )


def _export(args: argparse.Namespace) -> int:
    from ltxc.commands.export import run_export

    return run_export(run_dir=args.run, checkpoint=args.checkpoint, out=args.out, device=args.device)


def _add_verify(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "verify",
        help="prove a spec equal to its reference diffusers pipeline on the same weights and seed",
        description="Build the spec's components and its [model] reference pipeline on the very same modules, "
        "generate with both (same seed, prompt, size) and print the max |Δ| of the latents and frames; also "
        "check packing and normalisation against the pipeline's own helpers. Exit 0 only within --tolerance.",
    )
    p.add_argument("spec", type=Path, help="a model spec (TOML), e.g. specs/tiny/ltx.toml")
    p.add_argument("--frames", type=int, help="frame count (default: the spec's [sampler] frames)")
    p.add_argument("--height", type=int, help="height in pixels (default: the spec's)")
    p.add_argument("--width", type=int, help="width in pixels (default: the spec's)")
    p.add_argument("--steps", type=int, help="denoising steps (default: the spec's)")
    p.add_argument("--guidance", type=float, help="CFG scale; 1 disables CFG (default: the spec's)")
    p.add_argument("--seed", type=int, default=0, help="seed for both runs (default 0)")
    p.add_argument("--prompt", help="the prompt for both runs")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted max |Δ| (default 1e-4)")
    p.add_argument("--device", help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=("bfloat16", "float32", "float16"),
        help="build the spec's module components at this dtype, as loading builds them; a role the root spec "
        "(the real spec a tiny one extends, or the spec itself) keeps in float32 stays float32 (e.g. a VAE that "
        "runs in float32), so every family verifies at its real precision with one flag (default: the spec's "
        "own dtypes)",
    )
    p.add_argument(
        "--task",
        help="verify a conditioned task of the spec (a [tasks.<name>] entry) against its reference pipeline, both "
        "given the same synthetic condition input (default: text-to-video)",
    )


def _verify(args: argparse.Namespace) -> int:
    from ltxc.spec import load_spec

    loaded = load_spec(args.spec)  # before importing torch: a bad spec fails in a fraction of a second
    from ltxc.commands.verify import run_verify

    return run_verify(
        loaded,
        prompt=args.prompt,
        frames=args.frames,
        height=args.height,
        width=args.width,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        tolerance=args.tolerance,
        device=args.device,
        dtype=args.dtype,
        task=args.task,
    )


def _add_draft(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "draft",
        help="draft a spec and its tiny twin from a diffusers pipeline (and its checkpoint's configs)",
        description="Read a diffusers pipeline class (roles, type hints, call defaults, source) and, with "
        "--pretrained, the checkpoint's model_index.json and configs; write a spec with a TODO naming the source "
        "line on every value it could not decide, and its tiny twin. Nothing is downloaded or instantiated.",
    )
    p.add_argument("--reference", required=True, help="the pipeline, as diffusers:<PipelineClass>")
    p.add_argument("--pretrained", help="a local diffusers-format directory (or a hub id already in the HF cache)")
    p.add_argument(
        "--hub-id", help="write this hub id as the components' pretrained (e.g. where the configs came from)"
    )
    p.add_argument("--out", type=Path, required=True, help="the spec to write, e.g. specs/my-model.toml")
    p.add_argument("--tiny", type=Path, help="the tiny twin to write (default: OUT's folder/tiny/OUT's name)")
    p.add_argument("--force", action="store_true", help="overwrite OUT and the tiny twin if they exist")


def _draft(args: argparse.Namespace) -> int:
    from ltxc.commands.draft import run_draft

    return run_draft(args.reference, args.pretrained, args.out, args.tiny, args.hub_id, force=args.force)


def _compile(args: argparse.Namespace) -> int:
    from ltxc.spec import load_spec

    loaded = load_spec(args.spec)  # before importing torch: a bad spec fails in a fraction of a second
    from ltxc.commands.compile import run_compile

    return run_compile(loaded, sizes=args.size, out=args.out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ltxc` console script and `python -m ltxc`."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return {"preprocess": _preprocess, "train": _train, "export": _export, "generate": _generate}[
                args.run_command
            ](args)
        return {"compile": _compile, "verify": _verify, "draft": _draft}[args.command](args)
    except UserError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ltxc compile ... | head` is not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep the interpreter from failing at exit
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
