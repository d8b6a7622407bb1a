"""Audio preprocessing for the tiny LTX-2.3 spec (docs/audio.md): the log-mel against an independent computation,
the Slaney filterbank against the librosa formula, the sound over exactly the frames' window (timestamps, zero
padding), held-out-style clips through an in-process preprocess (48 kHz stereo AAC, 22.05 kHz mono, 5.1, audio
shorter than the video, Opus in WebM, MP3, no track, a broken audio stream), the cached latents against diffusers'
own encode/pack/normalise computed here, the missing-audio policies, and the batches training reads.

The tiny audio VAE gets non-trivial latents_mean/std (built from config they are 0 and 1, which would hide a
normalisation bug). Run: pytest -q tests/test_audio_preprocess.py (CPU, tiny random weights, a few seconds each).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame
from conftest import TINY_LTX2, run_cli
from diffusers import AutoencoderKLLTX2Audio, LTX2Pipeline
from transformers.audio_utils import spectrogram, window_function

from ltxc.audio import log_mel, mel_filters, to_channels
from ltxc.compiler import compile_spec
from ltxc.data.cache import Cache
from ltxc.data.dataset import CacheDataset, collate
from ltxc.errors import ConfigError
from ltxc.media.audio import read_audio
from ltxc.plan import Plan
from ltxc.preprocess.run import preprocess
from ltxc.preprocess.settings import build_settings
from ltxc.spec import load_spec

FPS = 24
FRAMES = 12  # each clip; preprocessing takes the tiny spec's 9 frames: 0.375 s
TAKEN = 9
LENGTH = round(TAKEN / FPS * 25)  # LTX2Pipeline's audio_num_frames: 9 (the encoder gives 6000 // 640 + 1 = 10)
SAMPLES = round(TAKEN / FPS * 16000)  # 6000
MEAN = torch.linspace(-0.8, 0.6, 128)
STD = torch.linspace(0.4, 2.2, 128)


# -- fixtures and helpers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def audio_statistics() -> Any:
    """Every AutoencoderKLLTX2Audio built in this module carries non-trivial latents_mean / latents_std."""
    original = AutoencoderKLLTX2Audio.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.latents_mean.copy_(MEAN)
        self.latents_std.copy_(STD)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AutoencoderKLLTX2Audio, "__init__", init)
        yield


@pytest.fixture(scope="module")
def plan() -> Plan:
    return compile_spec(load_spec(TINY_LTX2))


def tone(seconds: float, rate: int, channels: int, start: float = 0.0) -> np.ndarray:
    """float32 [channels, S]: channel k a sine at 440 * (k + 1) Hz, in absolute time from `start`."""
    t = start + np.arange(round(seconds * rate)) / rate
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * (k + 1) * t) for k in range(channels)]).astype(np.float32)


def write_clip(
    path: Path,
    *,
    acodec: str | None = "aac",
    rate: int = 48000,
    layout: str = "stereo",
    audio_start: float = 0.0,
    audio_seconds: float | None = None,
    vcodec: str = "libx264",
    frames: int = FRAMES,
) -> Path:
    """A 64x64 clip at 24 fps with a tone track (`acodec` None: no track), written with PyAV."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(vcodec, rate=FPS)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        sound = container.add_stream(acodec, rate=rate, layout=layout) if acodec else None
        for index in range(frames):
            frame = VideoFrame.from_ndarray(np.full((64, 64, 3), index * 20 % 256, np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            seconds = frames / FPS if audio_seconds is None else audio_seconds
            _write_sound(container, sound, tone(seconds, rate, len(av.AudioLayout(layout).channels)), audio_start)
    return path


def _write_sound(container: Any, stream: Any, data: np.ndarray, start: float) -> None:
    context = stream.codec_context
    fmt, rate, size = context.format.name, context.sample_rate, context.frame_size or 1024
    for first in range(0, data.shape[1], size):
        chunk = data[:, first : first + size]
        if fmt.startswith("s16"):
            chunk = (chunk * 32767).astype(np.int16)
        elif fmt.startswith("s32"):
            chunk = (chunk * 2**31 * 0.99).astype(np.int32)
        if not fmt.endswith("p"):  # packed: one row of interleaved samples
            chunk = chunk.T.reshape(1, -1)
        frame = AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=context.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = rate, round(start * rate) + first, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def break_audio(path: Path) -> Path:
    """Overwrite every audio packet's payload with garbage (the video stays intact)."""
    with av.open(str(path)) as container:
        spans = [(p.pos, p.size) for p in container.demux(container.streams.audio[0]) if p.size and p.pos is not None]
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    for pos, size in spans:
        data[pos : pos + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def slaney_filters(n_fft: int, n_mels: int, f_max: float, rate: int) -> np.ndarray:
    """librosa.filters.mel(htk=False, norm="slaney") written out: [n_fft // 2 + 1, n_mels], float64."""

    def to_mel(hz: np.ndarray) -> np.ndarray:
        linear = hz / (200.0 / 3)
        return np.where(hz >= 1000, 15 + np.log(np.maximum(hz, 1e-9) / 1000) / (np.log(6.4) / 27), linear)

    def to_hz(mel: np.ndarray) -> np.ndarray:
        return np.where(mel >= 15, 1000 * np.exp((np.log(6.4) / 27) * (mel - 15)), mel * 200.0 / 3)

    edges = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(f_max)), n_mels + 2))
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lower = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T


def independent_log_mel(waveform: np.ndarray, rate: int = 16000) -> np.ndarray:
    """transformers' numpy `spectrogram` with the librosa-formula filterbank: [C, T, 64], float64."""
    window = window_function(1024, "hann", periodic=True)
    filters = slaney_filters(1024, 64, 8000.0, rate)
    return np.stack(
        [
            spectrogram(
                channel.astype(np.float64),
                window,
                frame_length=1024,
                hop_length=160,
                fft_length=1024,
                power=1.0,
                center=True,
                pad_mode="reflect",
                mel_filters=filters,
                mel_floor=1e-5,
                log_mel="log",
                dtype=np.float64,
            ).T
            for channel in waveform
        ]
    )


@torch.no_grad()
def diffusers_latents(plan: Plan, waveform: np.ndarray) -> torch.Tensor:
    """diffusers' way: the audio VAE's mode of the log-mel, LTX2Pipeline._pack_audio_latents, then
    _normalize_audio_latents with the VAE's buffers, cut to the pipeline's length: [L, 128]."""
    vae = plan.components()["audio_vae"]
    mel = torch.from_numpy(independent_log_mel(waveform)).to(torch.float32)[None]  # [1, 2, T, 64]
    latents = vae.encode(mel).latent_dist.mode()[:, :, :LENGTH]
    packed = LTX2Pipeline._pack_audio_latents(latents)
    return LTX2Pipeline._normalize_audio_latents(packed, vae.latents_mean, vae.latents_std)[0]


def decode_all(path: Path, layout: str = "stereo") -> np.ndarray:
    """The whole track decoded and resampled to 16 kHz with PyAV in one pass: [channels, S]."""
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=16000)
    chunks = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            chunks += [f.to_ndarray() for f in resampler.resample(frame)]
    chunks += [f.to_ndarray() for f in resampler.resample(None)]
    return np.concatenate(chunks, axis=1)


def run(plan: Plan, data: Path, cache: Path, **settings: Any) -> Any:
    return preprocess(plan, data, cache, build_settings(plan, resolution="64x64", **settings), progress=False)


# -- the spectrogram -----------------------------------------------------------------------------------------------


def test_filterbank_is_slaney(plan: Plan) -> None:
    mel = plan.spec.streams["audio"].source.mel
    ours = mel_filters(mel, 16000).numpy()
    assert ours.shape == (513, 64)
    np.testing.assert_allclose(ours, slaney_filters(1024, 64, 8000.0, 16000), rtol=1e-6, atol=1e-9)


def test_log_mel_of_a_tone_matches_an_independent_stft(plan: Plan) -> None:
    mel = plan.spec.streams["audio"].source.mel
    wave = tone(0.5, 16000, 2) + 0.01 * np.random.default_rng(1).standard_normal((2, 8000)).astype(np.float32)
    ours = log_mel(torch.from_numpy(wave.astype(np.float64))[None], mel, 16000)[0].numpy()
    expected = independent_log_mel(wave)
    assert ours.shape == expected.shape == (2, 8000 // 160 + 1, 64)
    np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
    # the float32 path preprocessing runs differs only by float32 rounding
    single = log_mel(torch.from_numpy(wave)[None], mel, 16000)[0].numpy()
    np.testing.assert_allclose(single, expected, atol=2e-3, rtol=0)


def test_channel_rules(plan: Plan) -> None:
    rule = plan.spec.streams["audio"].source.waveform
    mono = np.arange(4, dtype=np.float32)[None]
    assert np.array_equal(to_channels(mono, ("FC",), rule)[0], np.stack([mono[0], mono[0]]))
    six = np.stack([np.full(3, float(k + 1), np.float32) for k in range(6)])  # FL=1 FR=2 FC=3 LFE=4 BL=5 BR=6
    mixed, how = to_channels(six, ("FL", "FR", "FC", "LFE", "BL", "BR"), rule)
    assert how == "downmix 6"
    np.testing.assert_allclose(mixed[:, 0], [(1 + 0.707 * 3 + 0.707 * 5) / 2.414, (2 + 0.707 * 3 + 0.707 * 6) / 2.414])
    three = np.stack([np.full(2, float(k), np.float32) for k in (1, 2, 6)])
    averaged, how = to_channels(three, ("FL", "FR", "FC"), rule)
    assert how == "averaged" and np.allclose(averaged, 3.0)


# -- the window ----------------------------------------------------------------------------------------------------


def test_window_is_aligned_by_timestamps_and_zero_padded(tmp_path: Path) -> None:
    """PCM (no codec delay): sound from 0.5 s to 1.0 s; the window [0.25, 0.75) s of 16 kHz samples."""
    clip = write_clip(tmp_path / "late.mkv", acodec="pcm_s16le", rate=44100, audio_start=0.5, audio_seconds=0.5)
    window = read_audio(clip, 0.25, 0.5, 16000)
    assert window is not None and window.samples.shape == (2, 8000)
    assert (window.pad_start, window.pad_end) == (4000, 0)
    assert not window.samples[:, :4000].any()
    expected = tone(0.25, 16000, 2, start=0.0)  # the tone's own time starts where the sound does
    np.testing.assert_allclose(window.samples[:, 4100:7900], expected[:, 100:3900], atol=2e-3)
    ends = read_audio(clip, 0.75, 0.5, 16000)
    assert ends is not None and (ends.pad_start, ends.pad_end) == (0, 4000) and not ends.samples[:, 4000:].any()
    assert read_audio(write_clip(tmp_path / "silent.mp4", acodec=None), 0.0, 0.5, 16000) is None


def test_window_late_in_a_clip_is_reached_by_seeking(tmp_path: Path) -> None:
    """A window 4 s in (past the reader's seek threshold) holds the same samples as a decode from the start."""
    clip = write_clip(tmp_path / "long.mkv", acodec="pcm_s16le", rate=48000, frames=6 * FPS)
    window = read_audio(clip, 4.0, 0.5, 16000)
    assert window is not None and (window.pad_start, window.pad_end) == (0, 0)
    np.testing.assert_allclose(window.samples[:, 100:-100], tone(0.5, 16000, 2, start=4.0)[:, 100:-100], atol=2e-3)
    np.testing.assert_array_equal(window.samples, decode_all(clip)[:, 64000:72000])


# -- preprocessing -------------------------------------------------------------------------------------------------


HELD_OUT = {
    "stereo48k.mp4": {"rate": 48000, "layout": "stereo"},
    "mono22k.mp4": {"rate": 22050, "layout": "mono"},
    "surround.mp4": {"rate": 48000, "layout": "5.1"},
    "short.mp4": {"rate": 48000, "layout": "stereo", "audio_seconds": 0.2},
    "opus.webm": {"acodec": "libopus", "vcodec": "libvpx-vp9", "rate": 48000, "layout": "stereo"},
    "song.mkv": {"acodec": "mp3", "rate": 44100, "layout": "stereo"},
    "silent.mp4": {"acodec": None},
    "broken.mkv": {"acodec": "aac", "rate": 48000, "layout": "stereo"},
}


@pytest.fixture(scope="module")
def held_out(plan: Plan, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = tmp_path_factory.mktemp("held_out")
    for name, options in HELD_OUT.items():
        write_clip(data / name, **options)
        (data / name).with_suffix(".txt").write_text(f"a clip called {name}")
    break_audio(data / "broken.mkv")
    cache = tmp_path_factory.mktemp("held_out_cache")
    report = run(plan, data, cache)
    records = {r["source"]: r for r in Cache(cache).manifest()}
    return {"data": data, "cache": cache, "report": report, "records": records}


def test_held_out_clips_preprocess(held_out: dict[str, Any]) -> None:
    records, cache = held_out["records"], Cache(held_out["cache"])
    assert sorted(records) == sorted(set(HELD_OUT) - {"broken.mkv"})
    for name, record in records.items():
        tensors = cache.load_sample(record["id"])
        assert tensors["audio_latents"].shape == (LENGTH, 128) and tensors["audio_latents"].dtype == torch.float32
        assert record["audio_shape"] == [LENGTH, 128]
        audio = record["audio"]
        assert audio["window"] == [0.0, 0.375] and audio["samples"] == SAMPLES
        if name == "silent.mp4":  # the default policy: zeros, mask 0
            assert audio["missing"] == "mask" and audio["source"] is None
            assert float(tensors["audio_mask"]) == 0.0 and not tensors["audio_latents"].any()
            continue
        assert float(tensors["audio_mask"]) == 1.0 and tensors["audio_latents"].abs().sum() > 0
        assert audio["missing"] is None and audio["length_change"] == -1  # 10 encoder latents, 9 kept
        assert audio["source"]["rate"] == HELD_OUT[name]["rate"]
    sources = {name: records[name]["audio"]["source"] for name in records if name != "silent.mp4"}
    assert sources["surround.mp4"]["channels"] == 6 and records["surround.mp4"]["audio"]["mixed"] == "downmix 6"
    assert records["mono22k.mp4"]["audio"]["mixed"] == "duplicated"
    assert sources["opus.webm"]["codec"] == "opus" and sources["song.mkv"]["codec"] == "mp3"
    assert sources["short.mp4"]["pad_end"] > 2000 and sources["stereo48k.mp4"]["pad_end"] == 0


def test_broken_audio_stream_is_rejected_with_a_reason(held_out: dict[str, Any]) -> None:
    rejected = {r["source"]: r["reason"] for r in Cache(held_out["cache"]).rejected()}
    assert list(rejected) == ["broken.mkv"]
    assert rejected["broken.mkv"].startswith("audio:"), rejected


def test_cached_latents_equal_diffusers_encode(plan: Plan, held_out: dict[str, Any]) -> None:
    record = held_out["records"]["stereo48k.mp4"]
    cached = Cache(held_out["cache"]).load_sample(record["id"])["audio_latents"]
    waveform = decode_all(held_out["data"] / "stereo48k.mp4")[:, :SAMPLES]
    expected = diffusers_latents(plan, waveform)
    assert expected.shape == cached.shape
    torch.testing.assert_close(cached, expected, atol=2e-4, rtol=1e-4)
    # the normaliser is applied (the statistics are not 0 / 1): undoing it gives different numbers
    assert not torch.allclose(cached * STD + MEAN, expected, atol=1e-2)


def test_loader_batches_carry_audio(held_out: dict[str, Any]) -> None:
    dataset = CacheDataset(held_out["cache"])
    assert dataset.audio == {"stream": "audio", "missing_audio": "mask"}
    batch = collate([dataset[i] for i in range(len(dataset))])
    assert batch["audio_latents"].shape == (len(dataset), LENGTH, 128)
    assert batch["audio_mask"].shape == (len(dataset),) and batch["audio_mask"].dtype == torch.float32
    silent = batch["id"].index(held_out["records"]["silent.mp4"]["id"])
    assert batch["audio_mask"].tolist() == [0.0 if i == silent else 1.0 for i in range(len(dataset))]


@pytest.fixture(scope="module")
def silent_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("silent")
    write_clip(data / "quiet.mp4", acodec=None)
    write_clip(data / "loud.mp4")
    return data


def test_missing_audio_drop_rejects_through_the_cli(
    plan: Plan, silent_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = plan.save(tmp_path)
    cache = tmp_path / "cache"
    args = ["--resolution", "64x64", "--missing-caption", "filename", "--missing-audio", "drop"]
    code, _, err = run_cli(capsys, "run", "preprocess", "--plan", str(plan_file), "--data", str(silent_data),
                           "--cache", str(cache), *args)  # fmt: skip
    assert code == 0, err
    (reason,) = [r["reason"] for r in Cache(cache).rejected() if r["source"] == "quiet.mp4"]
    assert reason.startswith("no sound track")
    assert [r["source"] for r in Cache(cache).manifest()] == ["loud.mp4"]
    assert Cache(cache).header()["settings"]["missing_audio"] == "drop"


def test_missing_audio_silence_encodes_zeros(plan: Plan, silent_data: Path, tmp_path: Path) -> None:
    run(plan, silent_data, tmp_path / "cache", missing_caption="filename", missing_audio="silence")
    cache = Cache(tmp_path / "cache")
    (record,) = [r for r in cache.manifest() if r["source"] == "quiet.mp4"]
    assert record["audio"]["missing"] == "silence"
    tensors = cache.load_sample(record["id"])
    assert float(tensors["audio_mask"]) == 1.0
    expected = diffusers_latents(plan, np.zeros((2, SAMPLES), np.float32))
    torch.testing.assert_close(tensors["audio_latents"], expected, atol=2e-4, rtol=1e-4)
    assert cache.header()["audio"]["missing_audio"] == "silence"


def test_audio_source_references_are_checked(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text(
        f'[model]\nname = "bad-audio"\nextends = "{TINY_LTX2.resolve().as_posix()}"\n\n'
        '[streams.audio.source]\nvae = "sound_vae"\nnormalise = { mean = [0.0, 1.0], std = "audio_vae.latents_std" }\n'
    )
    with pytest.raises(ConfigError) as error:
        compile_spec(load_spec(spec))
    text = str(error.value)
    assert "'sound_vae' names no component" in text and "has 2 values; a packed token has 128" in text
