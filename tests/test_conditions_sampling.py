"""Image-to-video sampling: `ltxc verify SPEC --task i2v` is bit-equal to the task's reference pipeline (float32 and
bf16), the conditioned first latent frame stays the image's latents through every step, a task call that does not
zero the conditioned timestep fails verify at that stage, and `ltxc run generate --image` writes a video or fails
in one line.

Run: `pytest -q tests/test_conditions_sampling.py` (CPU, tiny models, 9x64x96, 2 steps, no downloads).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, TINY_WAN, run_cli
from safetensors import safe_open

from ltxc.compiler import compile_spec
from ltxc.condition_sampling import image_pixels
from ltxc.errors import UserError
from ltxc.media.synthetic import pattern, write_corrupt, write_image, write_video
from ltxc.media.write import read_frames_file
from ltxc.plan import Plan
from ltxc.sampler import Sampler
from ltxc.spec import load_spec

SMALL = {"frames": 9, "height": 64, "width": 96, "steps": 2}
CLI_SMALL = ("--frames", "9", "--height", "64", "--width", "96", "--steps", "2")
ROW = re.compile(r"^  ([\w.]+)\s+(?:max \|Δ\| = (\S+)|skipped|-)\s+(ok|FAIL)\b", re.M)
PROMPT = "a red square moving left to right on a black background"


def differences(out: str) -> dict[str, float]:
    """{row: max |Δ|} from verify's output (skipped rows have none)."""
    return {m[1]: float(m[2]) for m in ROW.finditer(out) if m[2] is not None}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("spec", [TINY_LTX, TINY_LTX2], ids=["ltx", "ltx-2.3"])
def test_verify_i2v_is_bit_equal(spec: Path, dtype: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every stage of the conditioned run equals the task's reference pipeline, the per-token timestep included."""
    code, out, err = run_cli(capsys, "verify", str(spec), "--task", "i2v", "--dtype", dtype, "--steps", "2")
    print(out)
    assert code == 0, out + err
    assert " task i2v against diffusers:" in out.splitlines()[0] and "ImageToVideoPipeline" in out
    found = differences(out)
    for stage in ("noise", "input.timestep", "pred.uncond", "pred.cond", "step1", "latents", "frames"):
        assert found[stage] == 0, (stage, out)
    assert all(value == 0 for value in found.values()), out
    assert "[1, 12]" in out  # the timestep is per token: [batch, tokens]
    assert "synthetic 96x64 image" in out and "PASS" in out


def test_a_task_call_that_keeps_the_image_noisy_fails_at_the_timestep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A per-token timestep that forgets the mask: the initial latents agree, the timestep the transformer gets
    departs first, and everything after it."""
    spec = tmp_path / "no-mask.toml"
    spec.write_text(
        f'[model]\nname = "no-mask"\nextends = "{TINY_LTX.as_posix()}"\n\n[tasks.i2v.call]\n'
        'timestep = "unsqueeze(float32(sigma * 1000), -1) * (1 - 0 * condition.mask)"\n'
    )
    code, out, err = run_cli(capsys, "verify", str(spec), "--task", "i2v", "--steps", "2")
    print(out)
    assert code == 1, out + err
    found = differences(out)
    assert found["noise"] == 0 and found["timesteps"] == 0
    assert found["input.timestep"] > 100 and found["pred.cond"] > 1e-4 and found["latents"] > 1e-4
    last = out.strip().splitlines()[-1]
    assert last.startswith("first departing stage: input.timestep"), out


def test_an_unknown_task_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "verify", str(TINY_LTX), "--task", "nope")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no task 'nope'" in err and "i2v" in err


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX))


def test_the_first_latent_frame_stays_the_image_at_every_step(plan: Plan) -> None:
    """The image's latents (a posterior sample drawn first from the seed's generator, normalised without the scaling
    factor) sit on latent frame 0 in every transformer call and in the final latents; the other frames move."""
    components = plan.components()
    seen: list[torch.Tensor] = []
    handle = components["transformer"].register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["hidden_states"].detach().clone()), with_kwargs=True
    )
    pixels = image_pixels(pattern(0, 96, 64))
    try:
        result = Sampler(plan, components)(["a red ball"], **SMALL, seed=3, image=pixels, guidance=3.0)
    finally:
        handle.remove()
    vae = components["vae"]
    generator = torch.Generator().manual_seed(3)
    sample = vae.encode(pixels[:, :, None]).latent_dist.sample(generator).float()
    expected = (sample - vae.latents_mean.view(1, -1, 1, 1, 1)) / vae.latents_std.view(1, -1, 1, 1, 1)
    first = plan.geometry.pack(expected)  # [1, H'W', C]: frame 0's tokens
    tokens = first.shape[1]
    assert result.task == "i2v" and len(seen) == 2  # one batched CFG call per step
    for hidden in seen:
        for half in hidden.chunk(2):  # [uncond; cond]
            assert torch.equal(half[:, :tokens], first)
    assert torch.equal(result.latents[:, :, :1], expected)
    assert not torch.equal(seen[0][:, tokens:], seen[1][:, tokens:])  # the rest is denoised


def test_the_sampler_refuses_what_it_cannot_condition(plan: Plan) -> None:
    sampler = Sampler(plan, plan.components())
    with pytest.raises(UserError, match=r"the image must be pixels \[1 or 1, 3, 64, 96\]"):
        sampler(["a cat"], **SMALL, image=torch.zeros(1, 3, 32, 32))
    with pytest.raises(UserError, match="no task 'x2v'"):
        sampler(["a cat"], **SMALL, image=torch.zeros(1, 3, 64, 96), task="x2v")
    wan = compile_spec(load_spec(TINY_WAN))
    with pytest.raises(UserError, match="no task takes an 'image' input"):
        Sampler(wan, wan.components())(["a cat"], **SMALL, image=torch.zeros(1, 3, 64, 96))


def test_image_pixels_are_the_diffusers_preprocessing() -> None:
    from diffusers.video_processor import VideoProcessor
    from PIL import Image

    rgb = pattern(5, 96, 64)
    theirs = VideoProcessor(vae_scale_factor=32).preprocess(Image.fromarray(rgb), height=64, width=96)
    assert torch.equal(image_pixels(rgb), theirs)


def test_generate_with_an_image_writes_a_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A still (cover-resized and centre-cropped) and a video's first frame both condition the run; the image path
    is recorded with the other settings, and the first frame looks like the image."""
    still = write_image(tmp_path / "still.png", 0, (192, 128))  # 2x the generation size, same aspect
    clip = write_video(tmp_path / "clip.mp4", frames=3, size=(96, 64))
    out = tmp_path / "still.safetensors"
    code, stdout, err = run_cli(
        capsys, "run", "generate", "--prompt", PROMPT, "--image", str(still), "--output", str(out), *CLI_SMALL
    )
    assert code == 0, err
    assert f"image {still}" in stdout
    frames, _ = read_frames_file(out)
    with safe_open(str(out), framework="numpy") as handle:
        assert handle.metadata()["image"] == str(still) and handle.metadata()["seed"] == "0"
    assert frames.shape == (9, 64, 96, 3)
    code, _, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--image", str(clip), "--output",
                           str(tmp_path / "clip.mp4.mp4"), *CLI_SMALL)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "clip.mp4.mp4").stat().st_size > 0
    plain = tmp_path / "plain.safetensors"
    code, _, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--output", str(plain), *CLI_SMALL)
    assert code == 0, err
    target = pattern(0, 96, 64).astype(np.float32) / 255
    with_image, without = (np.abs(f[0] - target).mean() for f in (frames, read_frames_file(plain)[0]))
    assert with_image < without  # the tiny random VAE blurs it, but the image shows


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing.png", "not found"),
        (lambda d: write_corrupt(d / "corrupt.png"), "cannot open"),
        (lambda d: write_corrupt(d / "corrupt.mp4"), "cannot"),
        (lambda d: d / "ltx", "is a directory"),
    ],
    ids=["missing", "corrupt-still", "corrupt-video", "directory"],
)
def test_a_bad_image_is_one_line_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, needle: str
) -> None:
    code, _, _ = run_cli(capsys, "compile", str(TINY_LTX), "--out", str(tmp_path / "ltx"))
    assert code == 0
    image, out = make(tmp_path), tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "run", "generate", "--plan", str(tmp_path / "ltx" / "plan.json"),
                           "--prompt", PROMPT, "--image", str(image), "--output", str(out))  # fmt: skip
    assert code == 2 and "Traceback" not in err and not out.exists()
    assert len(err.strip().splitlines()) == 1 and f"--image {image}: " in err and needle in err, err


def test_a_spec_without_an_image_task_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, "compile", str(TINY_WAN), "--out", str(tmp_path / "wan"))
    assert code == 0
    still, out = write_image(tmp_path / "still.png", 0, (96, 64)), tmp_path / "out.mp4"
    code, _, err = run_cli(capsys, "run", "generate", "--plan", str(tmp_path / "wan" / "plan.json"),
                           "--prompt", PROMPT, "--image", str(still), "--output", str(out))  # fmt: skip
    assert code == 2 and not out.exists() and len(err.strip().splitlines()) == 1
    assert "no task takes an 'image' input" in err
