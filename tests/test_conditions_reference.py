"""Sampling with an appended reference video (the LTX-2.3 spec's `ic_lora` task): `ltxc verify SPEC --task ic_lora`
is bit-equal to diffusers' LTX2InContextPipeline (float32, bf16, a half-size reference), the reference's tokens stay
exactly its clean latents through every step, a task call that offsets the reference's positions or forgets to zero
its timestep fails verify at that input, the condition's `encode_dtype` is the pipeline's order of cast and
normalisation, and `ltxc run generate --reference` writes a video or fails in one line.

Run: `pytest -q tests/test_conditions_reference.py` (CPU, tiny models, 9x64x96 (and 9x128x192), 2-3 steps).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN, run_cli
from safetensors import safe_open

import ltxc.condition_sampling
from ltxc.appended_sampling import video_pixels
from ltxc.commands.verify_settings import with_dtype
from ltxc.compiler import compile_spec
from ltxc.condition_sampling import clean_latents
from ltxc.errors import ConfigError, UserError
from ltxc.media.synthetic import pattern, write_corrupt, write_image, write_video
from ltxc.media.write import read_frames_file
from ltxc.plan import Plan
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

SMALL = {"frames": 9, "height": 64, "width": 96, "steps": 2}
CLI_SMALL = ("--frames", "9", "--height", "64", "--width", "96", "--steps", "2")
ROW = re.compile(r"^  ([\w.]+)\s+(?:max \|Δ\| = (\S+)|skipped|-)\s+(ok|FAIL)\b", re.M)
PROMPT = "a red square moving left to right on a black background"
TARGET_TOKENS = 2 * 2 * 3  # 9x64x96: latent frames x rows x columns


def differences(out: str) -> dict[str, float]:
    """{row: max |Δ|} from verify's output (skipped rows have none)."""
    return {m[1]: float(m[2]) for m in ROW.finditer(out) if m[2] is not None}


def child(tmp_path: Path, name: str, body: str) -> Path:
    """A spec extending the tiny LTX-2.3 one with `body`."""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(f'[model]\nname = "{name}"\nextends = "{TINY_LTX2.as_posix()}"\n\n{body}')
    return spec


HALF = "[tasks.ic_lora.conditions.reference]\ndownscale = 2\n"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_verify_ic_lora_is_bit_equal(dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every stage equals the pipeline's: the packed noise over target + reference, μ counting both, the per-token
    timestep, the reference's positions, each prediction, the blend, the final target latents and frames."""
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX2), "--task", "ic_lora", "--dtype", dtype, "--steps", "2")
    print(out)
    assert code == 0, out + err
    assert " task ic_lora against diffusers:LTX2InContextPipeline" in out.splitlines()[0]
    found = differences(out)
    for stage in ("sigmas", "noise", "noise.audio", "input.timestep", "input.video_coords", "input.audio_sigma",
                  "pred.uncond", "pred.cond", "pred.stg", "pred.modality", "step1", "latents", "frames"):  # fmt: skip
        assert found[stage] == 0, (stage, out)
    assert all(value == 0 for value in found.values()), out
    assert "[1, 24, 128]" in out  # the sequence: 12 target tokens, then 12 reference tokens
    assert "[1, 3, 24, 2]" in out and "[1, 12, 128]" in out  # positions of both; the final latents: the target's
    assert "synthetic 9-frame 96x64 video" in out and "PASS" in out


def test_verify_a_half_size_reference_is_bit_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """downscale = 2: a 96x64 reference for a 192x128 target, its rows and columns x 2 in the positions, the
    pipeline's reference_downscale_factor read from the condition (`reference.downscale`)."""
    spec = child(tmp_path, "ic-half", HALF)
    code, out, err = run_cli(capsys, "verify", str(spec), "--task", "ic_lora", "--steps", "2", "--height", "128",
                             "--width", "192")  # fmt: skip
    print(out)
    assert code == 0, out + err
    found = differences(out)
    assert found and all(value == 0 for value in found.values()), out
    assert "9-frame 96x64 video (downscale 2" in out
    assert "[1, 60, 128]" in out  # 48 target tokens (2 x 4 x 6), then 12 of the reference (2 x 2 x 3)


def test_verify_at_a_reference_strength_below_one_is_bit_equal() -> None:
    """At strength 0.6 the reference is partly noised at the start, its timestep t * 0.4, its x0 a blend."""
    from ltxc.commands.verify import verify

    plan = compile_spec(load_spec(TINY_LTX2))
    report = verify(plan, steps=2, task="ic_lora", strength=0.6)
    assert report.ok, report.format()
    assert all(check.max_abs in (None, 0.0) for check in report.checks), report.format()
    assert "strength 0.6" in report.format()


@pytest.mark.parametrize(
    ("name", "body", "height", "first"),
    [
        (
            "no-mask",
            '[tasks.ic_lora.call]\ntimestep = "unsqueeze(float32(sigma * 1000), -1) * (1 - 0 * condition.mask)"\n',
            "64",
            "input.timestep",
        ),
        (
            "no-scale",
            HALF + '\n[tasks.ic_lora.call]\nvideo_coords = "cat([pixel_boxes(latents, latent.frames, latent.height, '
            "latent.width, fps), pixel_boxes(latents, reference.frames, reference.height, reference.width, fps)]"
            ', 2)"\n',
            "128",
            "input.video_coords",
        ),
    ],
    ids=["timestep-not-zeroed", "positions-not-scaled"],
)
def test_a_broken_task_call_fails_verify_at_that_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, body: str, height: str, first: str
) -> None:
    """The initial latents agree; the broken input is the first stage to depart, then the predictions."""
    width = str(int(height) * 3 // 2)
    spec = child(tmp_path, name, body)
    code, out, err = run_cli(capsys, "verify", str(spec), "--task", "ic_lora", "--steps", "2", "--height", height,
                             "--width", width)  # fmt: skip
    print(out)
    assert code == 1, out + err
    found = differences(out)
    assert found["noise"] == 0 and found["sigmas"] == 0
    assert found[first] > 0 and found["pred.cond"] > 1e-4
    assert out.strip().splitlines()[-1].startswith(f"first departing stage: {first}"), out


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


def reference_clip(frames: int = 9, width: int = 96, height: int = 64) -> torch.Tensor:
    """The synthetic pattern's first frames as the sampler's pixels [1, 3, F, H, W]."""
    return video_pixels(np.stack([pattern(i, width, height) for i in range(frames)]))


def test_the_reference_tokens_stay_the_clean_reference_at_every_step(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reference's latents (the posterior's mode, normalised without the scaling factor, packed) follow the
    target's tokens in every transformer call of every step and after the last one; the target's tokens move."""
    components = plan.components()
    seen: list[torch.Tensor] = []
    handle = components["transformer"].register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["hidden_states"].detach().clone()), with_kwargs=True
    )
    last: list[torch.Tensor] = []
    target = ltxc.condition_sampling.SamplingConditions.target
    monkeypatch.setattr(
        ltxc.condition_sampling.SamplingConditions,
        "target",
        lambda self, x: (last.append(x.clone()), target(self, x))[1],
    )
    pixels = reference_clip()
    try:
        result = Sampler(plan, components)(["a red ball"], **{**SMALL, "steps": 3}, seed=3, reference=pixels)
    finally:
        handle.remove()
    vae = components["vae"]
    mode = vae.encode(pixels).latent_dist.mode()
    expected = plan.geometry.pack((mode - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1))
    assert result.task == "ic_lora" and result.latents.shape == (1, 128, 2, 2, 3)
    assert expected.shape == (1, 12, 128) and len(seen) == 3 * 3  # a CFG pass, then the STG and modality passes
    for hidden in seen:
        for part in hidden.split(1):
            assert part.shape == (1, 24, 128) and torch.equal(part[:, TARGET_TOKENS:], expected)
    assert torch.equal(last[0][:, TARGET_TOKENS:], expected)  # after the last step too
    assert not torch.equal(seen[0][:1, :TARGET_TOKENS], seen[3][:1, :TARGET_TOKENS])  # the target is denoised


def test_below_full_strength_the_reference_is_noised(plan: Plan) -> None:
    seen: list[torch.Tensor] = []
    components = plan.components()
    handle = components["transformer"].register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["timestep"].detach().clone()), with_kwargs=True
    )
    try:
        Sampler(plan, components)(["a red ball"], **SMALL, guidance=1.0, reference=reference_clip(),
                                  reference_strength=0.25)  # fmt: skip
    finally:
        handle.remove()
    first = seen[0][0]  # [24]: t on the target, t * (1 - 0.25) on the reference
    assert torch.equal(first[TARGET_TOKENS:], first[:TARGET_TOKENS] * 0.75)


def test_the_sampler_refuses_what_it_cannot_condition(plan: Plan) -> None:
    sampler = Sampler(plan, plan.components())
    with pytest.raises(UserError, match=r"pixels \[1 or 1, 3, 9, 64, 96\] \(9 frames at 96x64"):
        sampler(["a cat"], **SMALL, reference=reference_clip(frames=5))
    with pytest.raises(UserError, match=r"pixels \[1 or 1, 3, 9, 64, 96\]"):
        sampler(["a cat"], **SMALL, reference=reference_clip(width=64, height=32))
    with pytest.raises(UserError, match=r"strength must be in \[0, 1\] \(1: clean at every step\), got 1.5"):
        sampler(["a cat"], **SMALL, reference=reference_clip(), reference_strength=1.5)
    with pytest.raises(UserError, match="task 'ic_lora' takes no 'image' input"):
        sampler(["a cat"], **SMALL, reference=reference_clip(), image=torch.zeros(1, 3, 64, 96))
    ltx = compile_spec(load_spec(TINY_LTX))
    with pytest.raises(UserError, match="no task takes a 'video' input"):
        Sampler(ltx, ltx.components())(["a cat"], **SMALL, reference=reference_clip())


def test_a_downscale_the_size_cannot_take_is_one_line(tmp_path: Path) -> None:
    """A 96x64 generation at downscale 2 would take a 48x32 reference: off the 32-pixel rule."""
    half = compile_spec(load_spec(child(tmp_path, "ic-half", HALF)))
    with pytest.raises(UserError, match=r"input's size 48x32 \(the generation size 96x64 / 2\) does not fit"):
        Sampler(half, half.components())(["a cat"], **SMALL, reference=reference_clip(width=48, height=32))


def test_an_appended_task_must_draw_packed_noise(tmp_path: Path) -> None:
    spec = child(tmp_path, "grid-noise", '[tasks.ic_lora]\nnoise = "grid"\n')
    with pytest.raises(ConfigError, match=r"tasks\.ic_lora\.noise: .*set noise = \"packed\""):
        compile_spec(load_spec(spec))


@pytest.mark.parametrize("encode_dtype", ["vae", "prompt"])
def test_encode_dtype_is_the_pipelines_order_of_cast_and_normalisation(plan: Plan, encode_dtype: str) -> None:
    """In bf16 with non-trivial statistics (the tiny VAE's are 0 and 1, so verify cannot see the order), "vae"
    (normalised in the VAE's dtype, then cast) equals the pipeline's reference latents bit for bit; "prompt"
    (cast to float32, then normalised: the image-to-video pipelines' order) does not."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_ic_lora import LTX2InContextPipeline, LTX2ReferenceCondition
    from PIL import Image

    from ltxc.commands.verify_reference import build_reference

    bf16, _ = with_dtype(plan, "bfloat16")
    components = bf16.components()
    vae = components["vae"]
    generator = torch.Generator().manual_seed(0)
    vae.latents_mean.copy_(torch.randn(vae.latents_mean.shape, generator=generator))
    vae.latents_std.copy_(torch.rand(vae.latents_std.shape, generator=generator) + 0.5)
    pipeline = build_reference(LTX2InContextPipeline, components)
    clip = np.stack([pattern(i, 96, 64) for i in range(9)])
    condition = LTX2ReferenceCondition(frames=[Image.fromarray(frame) for frame in clip])
    theirs = pipeline._encode_reference_conditions([condition], 64, 96, 9, dtype=torch.float32, device="cpu")[0]
    ours_condition = attrs.evolve(bf16.tasks["ic_lora"].conditions["reference"], encode_dtype=encode_dtype)
    normaliser = bf16.normaliser(components, spec=ours_condition.normalise)
    ours = clean_latents(vae, video_pixels(clip), ours_condition, torch.bfloat16, normaliser, generator)
    assert torch.equal(bf16.geometry.pack(ours), theirs) == (encode_dtype == "vae")


def test_task_reference_args_read_the_conditions_downscale(tmp_path: Path) -> None:
    half = compile_spec(load_spec(child(tmp_path, "ic-half", HALF)))
    task = half.tasks["ic_lora"]
    assert task.conditions["reference"].downscale == 2 and task.noise == "packed"
    from ltxc.commands.verify_task import task_names

    assert task.reference_args["reference_downscale_factor"](task_names(task)) == 2


# -- ltxc run generate --reference ----------------------------------------------------------------------------------


def test_generate_with_a_reference_writes_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A longer, larger clip (same aspect) gives its first 9 frames at 24 fps, covered and cropped to the reference
    size; the reference and its strength are recorded with the other settings."""
    clip = write_video(tmp_path / "ref.mp4", frames=12, fps=24, size=(192, 128))
    code, _, _ = run_cli(capsys, "compile", str(TINY_LTX2), "--out", str(tmp_path / "ltx2"))
    assert code == 0
    out = tmp_path / "out.safetensors"
    code, stdout, err = run_cli(capsys, "run", "generate", "--plan", str(tmp_path / "ltx2" / "plan.json"),
                                "--prompt", PROMPT, "--reference", str(clip), "--reference-strength", "0.9",
                                "--output", str(out), *CLI_SMALL)  # fmt: skip
    assert code == 0, err
    assert f"reference {clip}" in stdout and "9 frames at 24 fps, 96x64" in err
    frames, _ = read_frames_file(out)
    assert frames.shape == (9, 64, 96, 3) and np.isfinite(frames).all()
    with safe_open(str(out), framework="numpy") as handle:
        metadata = handle.metadata()
    assert metadata["reference"] == str(clip) and metadata["reference_strength"] == "0.9" and metadata["seed"] == "0"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Plans of the tiny LTX-2.3 (an image and a video task), LTX-Video (an image task) and Wan (none) specs."""
    from ltxc.cli import main

    root = tmp_path_factory.mktemp("plans")
    for name, spec in (("ltx2", TINY_LTX2), ("ltx", TINY_LTX), ("wan", TINY_WAN)):
        assert main(["compile", str(spec), "--out", str(root / name)]) == 0
    return {name: root / name / "plan.json" for name in ("ltx2", "ltx", "wan")}


@pytest.mark.parametrize(
    ("plan_name", "make", "flag", "needle"),
    [
        ("ltx2", lambda d: d / "missing.mp4", "--reference", "--reference {}: not found"),
        ("ltx2", lambda d: write_corrupt(d / "corrupt.mp4"), "--reference", "--reference {}: cannot"),
        ("ltx2", lambda d: d, "--reference", "--reference {}: is a directory"),
        ("ltx2", lambda d: write_video(d / "short.mp4", frames=5, fps=24, size=(96, 64)), "--reference",
         "--reference {}: too short: it gives 5 frame(s) at 24 fps, the video takes 9"),
        ("ltx2", lambda d: write_image(d / "still.png", 0, (96, 64)), "--reference",
         "too short: it gives an image (1 frame), the video takes 9"),
        ("ltx", lambda d: write_video(d / "ref.mp4", frames=9, fps=24, size=(96, 64)), "--reference",
         "no task takes a 'video' input"),
        ("wan", lambda d: write_image(d / "still.png", 0, (96, 64)), "--image", "no task takes an 'image' input"),
    ],
    ids=["missing", "corrupt", "directory", "too-short", "an-image", "no-video-task", "no-image-task"],
)  # fmt: skip
def test_a_bad_input_is_one_line_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    compiled: dict[str, Path],
    plan_name: str,
    make: Any,
    flag: str,
    needle: str,
) -> None:
    given, out = make(tmp_path), tmp_path / "out.mp4"
    code, stdout, err = run_cli(capsys, "run", "generate", "--plan", str(compiled[plan_name]), "--prompt", PROMPT,
                                flag, str(given), "--output", str(out), *CLI_SMALL)  # fmt: skip
    assert code == 2 and "Traceback" not in err and not out.exists() and stdout == ""
    assert len(err.strip().splitlines()) == 1 and needle.format(given) in err, err


def test_an_image_and_a_reference_for_different_tasks_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compiled: dict[str, Path]
) -> None:
    clip = write_video(tmp_path / "ref.mp4", frames=9, fps=24, size=(96, 64))
    still = write_image(tmp_path / "a.png", 0, (96, 64))
    out = tmp_path / "out.mp4"
    given = ("--reference", str(clip), "--image", str(still))
    code, _, err = run_cli(capsys, "run", "generate", "--plan", str(compiled["ltx2"]), "--prompt", PROMPT, *given,
                           "--output", str(out), *CLI_SMALL)  # fmt: skip
    assert code == 2 and not out.exists() and len(err.strip().splitlines()) == 1
    assert "--image and --reference: the task that takes a video (ic_lora) takes no image" in err


def test_text_to_video_traces_no_new_inputs(plan: Plan) -> None:
    """Only keywords reading the noise level or a task's condition names are traced: the spec's own call (its
    positions read no condition name) keeps text-to-video's rows; the task's adds its positions."""
    from ltxc.guidance import noise_level_keywords, traced_keywords

    assert traced_keywords(plan.call) == noise_level_keywords(plan.call)
    assert "video_coords" in traced_keywords(plan.tasks["ic_lora"].call)
    assert traced_keywords(plan.tasks["i2v"].call) == noise_level_keywords(plan.tasks["i2v"].call)
