"""`ltxc run generate` and validation videos: outputs decode back, and every way of loading trained weights
(the live model during training, a training checkpoint, a LoRA export) generates the same video.

Run: pytest tests/test_generate.py
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from conftest import run_cli

from ltxc.media.write import read_frames_file

PROMPT = "a red square moving left to right on a black background"
SMALL = ("--frames", "9", "--height", "64", "--width", "96", "--steps", "2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step LoRA run of the embedded default, with a validation video of PROMPT at the end."""
    import os

    from ltxc.cli import main

    root = tmp_path_factory.mktemp("gen")
    run = root / "run"
    before = os.getcwd()
    os.chdir(root)  # no stray .ltxc/plan.json: the embedded default
    try:
        code = main(["run", "train", "--set", f"run.output={run}", "--set", "train.steps=4",
                     "--set", "log.progress=false", "--set", f"validation.prompts=[\"{PROMPT}\"]",
                     "--set", "train.cfg_dropout=0.0", "--set", "train.mode=lora"])  # fmt: skip
    finally:
        os.chdir(before)
    assert code == 0
    return run


def test_mp4_gif_png_outputs_decode_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for suffix in (".mp4", ".gif", ".png", ".safetensors"):
        out = tmp_path / f"video{suffix}"
        code, stdout, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--output", str(out), *SMALL)
        assert code == 0, err
        assert str(out) in stdout
        if suffix == ".mp4":
            with av.open(str(out)) as container:
                stream = container.streams.video[0]
                frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
                assert float(stream.average_rate) == 25.0
            assert len(frames) == 9 and frames[0].shape == (64, 96, 3)
        elif suffix == ".gif":
            frames, fps = read_frames_file(out)
            assert frames.shape == (9, 64, 96, 3) and abs(fps - 25) < 1.5  # gif delays are in 1/100 s
        elif suffix == ".png":
            with av.open(str(out)) as container:
                sheet = next(container.decode(video=0)).to_ndarray(format="rgb24")
            assert sheet.shape[0] >= 64 and sheet.shape[1] >= 96 and sheet.size > 9 * 64 * 96 * 3 / 2
        else:
            frames, fps = read_frames_file(out)
            assert frames.shape == (9, 64, 96, 3) and fps == 25.0 and frames.dtype == np.float32


def test_generate_is_seeded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for seed in ("0", "0", "1"):
        out = tmp_path / f"s{len(outs)}.safetensors"
        code, _, err = run_cli(
            capsys, "run", "generate", "--prompt", PROMPT, "--seed", seed, "--output", str(out), *SMALL
        )
        assert code == 0, err
        outs.append(read_frames_file(out)[0])
    assert np.array_equal(outs[0], outs[1])
    assert not np.array_equal(outs[0], outs[2])


def generate(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> np.ndarray:
    code, _, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--output", str(out), *extra)
    assert code == 0, err
    return read_frames_file(out)[0]


def test_checkpoint_export_and_live_model_generate_the_same(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = generate(capsys, tmp_path / "base.safetensors")
    from_export = generate(capsys, tmp_path / "export.safetensors", "--checkpoint", str(trained / "export"))
    from_checkpoint = generate(capsys, tmp_path / "ckpt.safetensors", "--checkpoint",
                               str(trained / "checkpoints" / "step-00000004"))  # fmt: skip
    # the same weights, two ways of loading them: float rounding only (1.5e-6 seen on an AMD EPYC elsewhere), 1e-5
    assert np.abs(from_export - from_checkpoint).max() <= 1e-5
    assert np.abs(from_export - base).max() > 1e-4, "the LoRA must change the video"
    # the live model: the validation video sampled at the end of training (same prompt, seed and settings)
    live_png = trained / "validation" / "step-00000004" / "prompt-0.png"
    export_png = tmp_path / "export.png"
    generate(capsys, export_png, "--checkpoint", str(trained / "export"))
    live, _ = read_frames_file(live_png)
    exported, _ = read_frames_file(export_png)
    assert live.shape == exported.shape
    # PNG is lossless but 8-bit: frames less than 1/255 apart (float rounding) quantise at most 1 level apart
    assert np.abs(live.astype(int) - exported.astype(int)).max() <= 1


def test_lora_scale_zero_is_the_base_model(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = generate(capsys, tmp_path / "base.safetensors", *SMALL)
    off = generate(capsys, tmp_path / "off.safetensors", "--checkpoint", str(trained / "export"), "--lora-scale", "0",
                   *SMALL)  # fmt: skip
    on = generate(capsys, tmp_path / "on.safetensors", "--checkpoint", str(trained / "export"), *SMALL)
    assert np.abs(off - base).max() <= 1e-6
    assert np.abs(on - base).max() > 1e-4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--frames", "16"), "8n+1"),
        (("--height", "100"), "32"),
        (("--checkpoint", "/nonexistent/ckpt"), "does not exist"),
    ],
)
def test_bad_requests_are_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], needle: str
) -> None:
    code, _, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--output", str(tmp_path / "x.mp4"), *args)
    assert code == 2 and needle in err and "Traceback" not in err


def test_unknown_output_suffix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "generate", "--prompt", PROMPT, "--output", str(tmp_path / "x.avi"))
    assert code == 2 and ".mp4" in err
