"""Generation with sound: the spec's `[streams.audio.decode]` turns the jointly sampled audio into a waveform,
bit-equal to LTX2Pipeline's (verify's `audio.latents` and `audio.waveform` rows), and `ltxc run generate` writes
it as an mp4's AAC track and as .wav.

The tiny components are built from config, so their audio statistics are 0/1 and the vocoder's STFT and mel
bases zeros: that would hide a denormalise or cast in the wrong order. `sound_statistics` gives them non-trivial
values on the built components, before either side runs.

Run: pytest tests/test_audio_generation.py
"""

from __future__ import annotations

import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
import torch
from conftest import TINY_LTX, TINY_LTX2, run_cli

from ltxc.compiler import compile_spec
from ltxc.plan import Plan
from ltxc.spec import load_spec

SMALL = {"frames": 9, "height": 64, "width": 64, "steps": 2}
CLI_SMALL = ("--frames", "9", "--height", "64", "--width", "64", "--steps", "2")
PROMPT = "a drum hit in an empty hall"


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


def _give_statistics(role: str, module: Any) -> None:
    """Non-trivial buffers on a built audio VAE (latents_mean/std) and vocoder (STFT and mel bases), in place and
    in the module's own dtype, the same on every build."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "latents_mean":
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.5)
            elif leaf == "latents_std":
                buffer.copy_(torch.rand(buffer.shape, generator=gen) * 1.5 + 0.25)
            elif leaf == "mel_basis":
                buffer.copy_(torch.rand(buffer.shape, generator=gen) * 0.1)
            elif leaf == "forward_basis":
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.05)


@pytest.fixture
def sound_statistics(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every component set built during the test gives the audio VAE and the vocoder non-trivial buffers."""
    from ltxc.components import Components

    build = Components.__getitem__

    def getitem(self: Components, role: str) -> Any:
        fresh = role not in self._built
        module = build(self, role)
        if fresh and role in ("audio_vae", "vocoder"):
            _give_statistics(role, module)
        return module

    monkeypatch.setattr(Components, "__getitem__", getitem)
    yield


def _rows(report: Any) -> dict[str, Any]:
    return {check.name: check for check in report.checks}


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_verify_audio_rows_are_exact(plan: Plan, sound_statistics: None, dtype: str | None) -> None:
    from ltxc.commands.verify import verify

    report = verify(plan, tolerance=0.0, dtype=dtype, **SMALL)
    rows = _rows(report)
    assert report.ok, report.format()
    for name in ("audio.latents", "audio.waveform"):
        assert rows[name].max_abs == 0.0, report.format()
    assert "48000 Hz" in rows["audio.waveform"].note


def test_statistics_are_non_trivial(plan: Plan, sound_statistics: None) -> None:
    components = plan.components()
    vae, vocoder = components["audio_vae"], components["vocoder"]
    assert vae.latents_mean.abs().sum() > 0 and (vae.latents_std != 1).all()
    assert all(b.abs().sum() > 0 for n, b in vocoder.named_buffers() if n.endswith(("mel_basis", "forward_basis")))


def test_denormalise_in_the_wrong_order_fails_on_the_audio_rows(
    plan: Plan, sound_statistics: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ltxc import stream_decode
    from ltxc.commands.verify import verify

    monkeypatch.setattr(stream_decode, "denormalise", lambda x, mean, std: (x + mean) * std)
    report = verify(plan, tolerance=0.0, **SMALL)
    rows = _rows(report)
    assert not report.ok
    assert not rows["audio.latents"].ok and not rows["audio.waveform"].ok
    assert rows["frames"].ok and rows["latents"].ok  # only the sound departs
    assert "audio.latents" in report.format().splitlines()[-1]  # the first row that departs is named


def test_generation_has_its_waveform(plan: Plan, sound_statistics: None) -> None:
    from ltxc.sampler import Sampler

    result = Sampler(plan, plan.components())([PROMPT], seed=1, **SMALL)
    assert result.audio is not None and result.audio.dtype == torch.float32
    assert result.audio.shape[:2] == (1, 2) and result.sample_rate == 48000
    assert torch.isfinite(result.audio).all() and result.audio.abs().max() > 0
    quiet = Sampler(plan, plan.components(), sound=False)([PROMPT], seed=1, **SMALL)  # training's validation
    assert quiet.audio is None and torch.equal(quiet.video, result.video)
    silent = Sampler(plan, plan.components())([PROMPT], seed=1, decode=False, **SMALL)
    assert silent.audio is None and silent.sample_rate is None


def test_a_spec_without_a_decode_is_silent() -> None:
    from ltxc.sampler import Sampler

    video_only = compile_spec(load_spec(TINY_LTX))
    result = Sampler(video_only, video_only.components())([PROMPT], **SMALL)
    assert result.audio is None and result.sample_rate is None


def test_generate_writes_sound(plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan_file = plan.save(tmp_path)
    out, wav = tmp_path / "clip.mp4", tmp_path / "clip.wav"
    code, stdout, err = run_cli(capsys, "run", "generate", "--plan", str(plan_file), "--prompt", PROMPT,
                                "--output", str(out), "--audio-out", str(wav), "--fps", "24", *CLI_SMALL)  # fmt: skip
    assert code == 0, err
    assert str(out) in stdout and str(wav) in stdout
    with av.open(str(out)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert audio.codec_context.name == "aac" and audio.rate == 48000 and audio.channels == 2
        duration = 9 / 24
        assert abs(float(audio.duration * audio.time_base) - duration) <= 1024 / audio.rate
        assert abs(float(video.duration * video.time_base) - duration) < 1e-6
        samples = sum(frame.samples for frame in container.decode(audio))
        assert abs(samples / audio.rate - duration) <= 1024 / audio.rate
    with av.open(str(out)) as container:
        assert len(list(container.decode(video=0))) == 9
    with wave.open(str(wav)) as sound:
        assert sound.getnchannels() == 2 and sound.getframerate() == 48000 and sound.getnframes() > 0


def test_audio_out_needs_a_wav_and_a_sound_decode(
    plan: Plan, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = plan.save(tmp_path)
    code, _, err = run_cli(capsys, "run", "generate", "--plan", str(plan_file), "--prompt", PROMPT,
                           "--output", str(tmp_path / "a.mp4"), "--audio-out", str(tmp_path / "a.mp3"))  # fmt: skip
    assert code != 0 and "--audio-out" in err and ".wav" in err


def test_a_bad_unpack_is_a_compile_problem(tmp_path: Path) -> None:
    from ltxc.errors import ConfigError

    child = tmp_path / "child.toml"
    child.write_text(f'[model]\nname = "child"\nextends = "{TINY_LTX2.resolve().as_posix()}"\n\n'
                     '[streams.audio.decode]\nunpack = "reshape(x, [1, 2])"\n')  # fmt: skip
    with pytest.raises(ConfigError) as info:
        compile_spec(load_spec(child))
    (problem,) = info.value.problems
    assert problem.path == "streams.audio.decode.unpack" and "reshape" in problem.message


@pytest.mark.parametrize(("rate", "seconds"), [(48000, 1.0), (44000, 0.1)])  # trimmed; resampled and padded
def test_mp4_sound_track_has_the_video_duration(tmp_path: Path, rate: int, seconds: float) -> None:
    import numpy as np

    from ltxc.media.write import write_frames

    t = np.arange(int(rate * seconds)) / rate
    sound = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 220 * t)]).astype(np.float32) * 0.5
    frames = np.zeros((12, 32, 32, 3), np.uint8)
    path = write_frames(frames, tmp_path / "clip.mp4", fps=24, audio=sound, sample_rate=rate)
    with av.open(str(path)) as container:
        audio = container.streams.audio[0]
        assert audio.rate == 48000
        assert abs(float(audio.duration * audio.time_base) - 0.5) <= 1024 / audio.rate
