"""Validation videos with sound, and the spectrogram image (ltxc/runner/validation*.py, ltxc/audio/spectrogram.py).

Covers:
- `spectrogram_image`: uint8 RGB [128, STFT frames, 3] (or the size asked for), low tones at the bottom, not
  constant for a tone, black for digital silence;
- a joint (`train.audio = true`) run of the tiny LTX-2.3 spec with validation writes `prompt-0.mp4` with an AAC
  track as long as the video, `prompt-0.wav` and a contact sheet with a spectrogram strip, and logs
  `validation/prompt-0/spectrogram` to TensorBoard, in both decode modes ("device" and "background") with the same
  float waveform (compared before the AAC and 16-bit encodes) and the same images;
- a video-only spec (tiny LTX-Video) still writes silent validation videos and no spectrogram;
- generate's .png contact sheet of an audio spec carries the strip.

The vocoder built from config has zero STFT and mel bases: `sound_statistics` (from test_audio_generation) gives it
non-trivial ones, so the waveform is not trivially zero.

Run: `pytest -q tests/test_audio_validation.py` (CPU, tiny random weights; ~15 s on 2 cores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, run_cli
from test_audio_generation import sound_statistics  # noqa: F401  (a fixture)
from test_train import config

from ltxc.audio.spectrogram import BINS, spectrogram_image, window_size
from ltxc.compiler import compile_spec
from ltxc.media.synthetic import make_sample_dataset
from ltxc.media.write import read_frames_file
from ltxc.plan import Plan
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.runner import validation, validation_decode
from ltxc.runner.run_dir import RunDir
from ltxc.runner.train import train
from ltxc.spec import load_spec

pytestmark = pytest.mark.usefixtures("module_process_group")

ORIGINAL_WRITE = validation_decode.write_prompt
SMALL = {"frames": 9, "height": 64, "width": 64, "steps": 2}
PROMPT = "a drum hit in an empty hall"
LOG = {"tensorboard": True, "jsonl": False}  # no metrics.jsonl: no loss-curve plot (matplotlib) to wait for


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


# -- the image ------------------------------------------------------------------------------------------------


def test_spectrogram_image_shape_and_orientation() -> None:
    rate = 48000
    time = torch.arange(rate // 2, dtype=torch.float64) / rate
    low, high = (torch.sin(2 * torch.pi * f * time).float() for f in (200.0, 12000.0))
    frames = len(time) // (window_size(rate) // 4) + 1
    images = {name: spectrogram_image(torch.stack([x, x]), rate) for name, x in (("low", low), ("high", high))}
    for image in images.values():
        assert image.shape == (BINS, frames, 3) and image.dtype == np.uint8
        assert image.min() < image.max()  # not constant
    brightest = {name: int(image.sum(axis=(1, 2)).argmax()) for name, image in images.items()}
    assert brightest["low"] > BINS * 3 // 4 > BINS // 4 > brightest["high"]  # row 0 is the top: high frequencies
    assert spectrogram_image(low, rate, size=(40, 300)).shape == (40, 300, 3)  # mono [samples] too
    assert spectrogram_image(torch.zeros(2, 4800), rate).max() < 10  # silence is black, not the brightest colour
    with pytest.raises(ValueError, match="samples"):
        spectrogram_image(torch.zeros(2, 0), rate)


# -- validation during a joint run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 clips preprocessed by the tiny LTX-2.3 spec (silent clips: zero audio latents, masked, the default)."""
    media = tmp_path_factory.mktemp("media")
    make_sample_dataset(media, clips=2, images=0, seed=0)
    path = tmp_path_factory.mktemp("cache") / "cache"
    assert preprocess(plan, media, path, build_settings(plan), progress=False).total_cached == 2
    return path


class Written:
    """Records what `write_prompt` is given, whichever mode decodes: (index, frames, waveform, rate)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor | None, int | None]] = []

        def record(video: torch.Tensor, audio: Any, folder: Path, index: int, fps: float) -> Any:
            waveform, rate = audio if audio is not None else (None, None)
            self.calls.append((index, video.clone(), None if waveform is None else waveform.clone(), rate))
            return ORIGINAL_WRITE(video, audio, folder, index, fps)

        for module in (validation, validation_decode):
            monkeypatch.setattr(module, "write_prompt", record)


def tensorboard_images(run: Path) -> dict[str, list[Any]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def joint_run(plan: Plan, cache: Path, run: Path, decode: str, monkeypatch: pytest.MonkeyPatch) -> Written:
    written = Written(monkeypatch)
    check = {"prompts": (PROMPT,), "every": 0, "decode": decode, "guidance": 3.0, **SMALL}
    train(plan, config(run, cache, train={"audio": True, "steps": 1}, validation=check, log=LOG))
    return written


@pytest.mark.usefixtures("sound_statistics")
def test_joint_run_validation_has_sound_in_both_decode_modes(
    plan: Plan, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = {mode: joint_run(plan, cache, tmp_path / mode, mode, monkeypatch) for mode in ("device", "background")}
    device, background = runs["device"].calls, runs["background"].calls
    assert len(device) == len(background) == 1
    (_, frames_d, sound_d, rate_d), (_, frames_b, sound_b, rate_b) = device[0], background[0]
    assert sound_d is not None and sound_b is not None and rate_d == rate_b == 48000
    assert sound_d.shape[0] == 2 and sound_d.abs().max() > 0
    assert torch.equal(sound_d, sound_b)  # the lossless float waveform, before AAC / 16-bit PCM
    assert torch.equal(frames_d, frames_b)
    images = {}
    for mode in runs:
        folder = RunDir(tmp_path / mode).validation(1)
        assert sorted(p.name for p in folder.iterdir()) == ["prompt-0.mp4", "prompt-0.png", "prompt-0.wav"]
        with av.open(str(folder / "prompt-0.mp4")) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert audio.codec_context.name == "aac" and audio.channels == 2
            duration = float(video.duration * video.time_base)
            assert abs(float(audio.duration * audio.time_base) - duration) <= 1024 / audio.rate
        sheet, _ = read_frames_file(folder / "prompt-0.png")
        assert sheet.shape[1:3] == (3 * 64 + 2 * 2 + 2 + 64, 3 * 64 + 2 * 2)  # 3x3 frames, separator, 64-px strip
        images[mode] = tensorboard_images(tmp_path / mode)
        assert set(images[mode]) == {"validation/prompt-0", "validation/prompt-0/spectrogram"}
        assert [event.step for event in images[mode]["validation/prompt-0/spectrogram"]] == [1]
        spectrogram = images[mode]["validation/prompt-0/spectrogram"][0]
        assert spectrogram.height == BINS and spectrogram.width == sound_d.shape[1] // (window_size(48000) // 4) + 1
    for tag, events in images["device"].items():
        assert [e.encoded_image_string for e in events] == [e.encoded_image_string for e in images["background"][tag]]


def test_a_video_only_spec_writes_silent_validation_videos(tmp_path: Path) -> None:
    from ltxc.runner.distributed import Distributed
    from ltxc.runner.validation import Validator

    video_only = compile_spec(load_spec(TINY_LTX))
    info = Distributed(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    check = {"prompts": (PROMPT,), "decode": "background", **SMALL}
    cfg = config(tmp_path / "run", tmp_path, validation=check)
    validator = Validator(video_only, cfg.validation, info, RunDir.of(cfg), None, 25.0)
    logged: dict[str, Any] = {}
    recorder = type("Recorder", (), {"log_image": lambda self, tag, image, step: logged.__setitem__(tag, image)})()
    validator.run(video_only.components()[video_only.transformer_role], 1, recorder)
    files = validator.finish(recorder)
    assert sorted(p.name for p in files) == ["prompt-0.mp4", "prompt-0.png"]
    with av.open(str(files[0])) as container:
        assert not container.streams.audio
    assert set(logged) == {"validation/prompt-0"}
    assert logged["validation/prompt-0"].shape == (3 * 64 + 2 * 2, 3 * 64 + 2 * 2, 3)  # no strip


def test_generate_png_carries_the_spectrogram_strip(
    plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = plan.save(tmp_path)
    out = tmp_path / "sheet.png"
    code, _, err = run_cli(capsys, "run", "generate", "--plan", str(plan_file), "--prompt", PROMPT, "--output",
                           str(out), "--frames", "9", "--height", "64", "--width", "64", "--steps", "2")  # fmt: skip
    assert code == 0, err
    sheet, _ = read_frames_file(out)
    assert sheet.shape[1:3] == (3 * 64 + 2 * 2 + 2 + 64, 3 * 64 + 2 * 2)


def test_a_one_frame_validation_sample_is_its_png_alone(tmp_path: Path) -> None:
    """An image model's validation sample (one frame, no sound) is written as its PNG, not as a one-frame mp4 too;
    a clip (two frames) keeps its mp4."""
    frames = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(0))
    image, _ = validation_decode.write_prompt(frames[:1], None, tmp_path, 0, fps=24.0)
    clip, _ = validation_decode.write_prompt(frames, None, tmp_path, 1, fps=24.0)
    assert [p.name for p in image] == ["prompt-0.png"]
    assert [p.name for p in clip] == ["prompt-1.mp4", "prompt-1.png"]
    still, _ = read_frames_file(tmp_path / "prompt-0.png")
    assert np.array_equal(still[0], np.round(frames[0].numpy() * 255).astype(np.uint8))
