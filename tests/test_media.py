"""ltxc.media on real files: probing, frame choice by time, streaming decode, and every kind of bad input.

Every clip is made here with PyAV (ltxc.media.synthetic): each frame carries its index in a central tile, so
a test reads back *which* source frame it got after resizing, cropping, rotation and lossy compression.

- probe: constant-rate clips at 24/25/30 fps (frame count, times, fps; B-frames arrive reordered), a
  variable-rate clip (times as written), a raw stream without timestamps, images as one-frame media;
- read_frames: resampling 24/25/30 fps to 25 and 24 fps takes the nearest frames in real time, a VFR clip
  stays in real time, repeated indices, rotated clips (90/180/270) come out upright at display size,
  gray / 10-bit / alpha pixel formats give the right RGB, non-square pixels are stretched, memory follows
  the output not the clip;
- bad inputs: empty, random bytes, audio-only, truncated, unreadable (as root: open() made to refuse), a
  directory, missing -> MediaError with distinct reasons, and never another exception type;
- make_sample_dataset: captioned, varied, deterministic.

Run: `pytest -q tests/test_media.py`
"""

from __future__ import annotations

import os
import tracemalloc
from fractions import Fraction
from pathlib import Path

import attrs
import av
import numpy as np
import pytest

from ltxc.media import container as container_module
from ltxc.media import decode as decode_module
from ltxc.media import synthetic
from ltxc.media.decode import read_frames
from ltxc.media.errors import MediaError
from ltxc.media.probe import probe
from ltxc.media.synthetic import pattern, recover_index


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def cfr_clips(media_dir: Path) -> dict[int, Path]:
    """Two-second 160x96 clips at 24, 25 and 30 fps."""
    return {fps: synthetic.write_video(media_dir / f"cfr{fps}.mp4", frames=2 * fps, fps=fps) for fps in (24, 25, 30)}


VFR_TIMES = (0.0, 0.03, 0.07, 0.2, 0.21, 0.33, 0.5, 0.55, 0.62, 0.9, 0.95, 1.2)


@pytest.fixture(scope="module")
def vfr_clip(media_dir: Path) -> Path:
    return synthetic.write_video(media_dir / "vfr.mp4", frames=len(VFR_TIMES), times=VFR_TIMES)


def recovered(frames: np.ndarray) -> list[int]:
    return [recover_index(frame) for frame in frames]


# --- probe -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [24, 25, 30])
def test_probe_constant_frame_rate(cfr_clips: dict[int, Path], fps: int):
    info = probe(cfr_clips[fps])
    assert (info.kind, info.width, info.height, info.rotation) == ("video", 160, 96, 0)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")
    assert len(info.frame_times) == 2 * fps
    assert info.frame_times == pytest.approx([k / fps for k in range(2 * fps)], abs=1e-6)
    assert info.end_time == pytest.approx(2.0, abs=1e-6)
    assert info.avg_fps == pytest.approx(fps, abs=1e-6)
    assert info.available_frames(fps) == 2 * fps


def test_probe_sorts_reordered_packets(cfr_clips: dict[int, Path]):
    """The clips have B-frames, so packets arrive out of display order; probe's times must still ascend."""
    with av.open(str(cfr_clips[25])) as container:
        demuxed = [packet.pts for packet in container.demux(video=0) if packet.size]
    assert demuxed != sorted(demuxed)
    times = probe(cfr_clips[25]).frame_times
    assert list(times) == sorted(times) and len(set(times)) == len(times)


def test_probe_variable_frame_rate(vfr_clip: Path):
    info = probe(vfr_clip)
    assert info.frame_times == pytest.approx(VFR_TIMES, abs=1e-3)  # written in milliseconds
    intervals = np.diff(VFR_TIMES)
    assert info.end_time == pytest.approx(VFR_TIMES[-1] + float(np.median(intervals)), abs=1e-3)
    assert info.avg_fps == pytest.approx(len(VFR_TIMES) / info.end_time)


def test_probe_falls_back_to_decoding_when_packets_have_no_timestamps(media_dir: Path):
    path = synthetic.write_video(media_dir / "raw.h264", frames=10, fps=25)  # elementary stream: no pts
    with av.open(str(path)) as container:
        assert all(packet.pts is None for packet in container.demux(video=0))
    info = probe(path)
    assert info.frame_times == pytest.approx([k / 25 for k in range(10)])
    assert recovered(read_frames(info, [0, 9], (64, 64))) == [0, 9]


def test_probe_ignores_an_audio_track(media_dir: Path):
    info = probe(synthetic.write_video(media_dir / "with_audio.mp4", frames=12, fps=24, audio=True))
    assert len(info.frame_times) == 12 and info.avg_fps == pytest.approx(24)


@pytest.mark.parametrize("extension", [".png", ".jpg", ".jpeg", ".webp", ".bmp"])
def test_images_are_one_frame_media(media_dir: Path, extension: str):
    info = probe(synthetic.write_image(media_dir / f"still{extension}", 37, (200, 120)))
    assert (info.kind, info.width, info.height, info.frame_times) == ("image", 200, 120, (0.0,))
    assert (info.end_time, info.avg_fps) == (0.0, 0.0)
    assert info.available_frames(25) == 1
    selection = info.select_frames(25, count=1)
    assert selection.indices == (0,)
    frames = read_frames(info, selection.indices, (96, 64))
    assert frames.shape == (1, 64, 96, 3) and recovered(frames) == [37]


# --- choosing and decoding frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("source_fps", [24, 25, 30])
@pytest.mark.parametrize("target_fps", [25, 24])
def test_frames_at_a_target_fps_are_the_nearest_in_time(cfr_clips: dict[int, Path], source_fps: int, target_fps: int):
    info = probe(cfr_clips[source_fps])
    count = info.available_frames(target_fps)
    assert count == 2 * target_fps  # two seconds, whatever the source rate
    selection = info.select_frames(target_fps, count)
    for k, index in enumerate(selection.indices):  # nearest by time: within half a source frame
        assert abs(index / source_fps - k / target_fps) <= 0.5 / source_fps + 1e-9
    assert selection.repeated == max(0, count - 2 * source_fps)  # 24 -> 25 reuses two frames; others none
    frames = read_frames(info, selection.indices, (64, 96))
    assert frames.shape == (count, 96, 64, 3) and frames.dtype == np.uint8
    assert recovered(frames) == list(selection.indices)


def test_variable_frame_rate_clip_stays_in_real_time(vfr_clip: Path):
    info = probe(vfr_clip)
    selection = info.select_frames(25, info.available_frames(25))
    assert len(selection.indices) == 32  # ends at 1.2 + 0.07 s (the median interval): 0 .. 31/25 s
    for target, index in zip(selection.times, selection.indices, strict=True):
        nearest = min(abs(t - target) for t in VFR_TIMES)
        assert abs(VFR_TIMES[index] - target) == pytest.approx(nearest, abs=2e-3)
    assert recovered(read_frames(info, selection.indices, (80, 48))) == list(selection.indices)


def test_start_time_and_repeated_indices(cfr_clips: dict[int, Path]):
    info = probe(cfr_clips[30])
    selection = info.select_frames(10, 5, start=0.5)  # 0.5, 0.6, ... 0.9 s at 30 fps: frames 15, 18, ... 27
    assert selection.indices == (15, 18, 21, 24, 27)
    frames = read_frames(info, [4, 4, 2], (48, 48))
    assert recovered(frames) == [4, 4, 2]
    assert np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_clips_come_out_upright(media_dir: Path, rotation: int):
    path = synthetic.write_video(media_dir / f"rot{rotation}.mp4", frames=6, fps=25, size=(320, 240), rotation=rotation)
    with av.open(str(path)) as container:  # stored sideways, as a phone stores it
        stored = next(container.decode(video=0))
        assert (stored.width, stored.height) == (320, 240)
    info = probe(path)
    assert info.rotation == rotation
    assert (info.width, info.height) == ((240, 320) if rotation in (90, 270) else (320, 240))
    frames = read_frames(info, [1, 4], (info.width, info.height))
    assert frames.shape == (2, info.height, info.width, 3)
    assert recovered(frames) == [1, 4]
    upright = pattern(4, info.width, info.height).astype(int)
    assert np.abs(frames[1].astype(int) - upright).mean() < 4  # the whole picture, not only the tile
    for wrong in (1, 2, 3):  # and no other orientation comes close
        turned = np.rot90(frames[1], k=wrong).astype(int)
        if turned.shape == upright.shape:
            assert np.abs(turned - upright).mean() > 10
    assert recovered(read_frames(info, [5], (64, 40))) == [5]  # resized and cropped as well


@pytest.mark.parametrize(
    ("name", "pix_fmt", "decoded_as"),
    [
        ("gray.mp4", "gray", "yuvj420p"),  # H.264 4:0:0, full range
        ("gray.mkv", "gray", "gray"),
        ("ten_bit.mp4", "yuv420p10le", "yuv420p10le"),
        ("alpha.mkv", "yuva420p", "yuva420p"),
    ],
)
def test_pixel_formats_decode_to_rgb(media_dir: Path, name: str, pix_fmt: str, decoded_as: str):
    info = probe(synthetic.write_video(media_dir / name, frames=8, fps=25, pix_fmt=pix_fmt))
    assert info.pix_fmt == decoded_as
    frames = read_frames(info, [0, 3, 7], (160, 96))
    assert frames.dtype == np.uint8 and frames.shape == (3, 96, 160, 3)
    assert recovered(frames) == [0, 3, 7]
    reference = pattern(7, 160, 96).astype(int)
    if pix_fmt.startswith("gray"):
        assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])
        luma = reference @ np.array([0.299, 0.587, 0.114])  # BT.601, what the encoder stored
        assert np.abs(frames[2, ..., 0] - luma).mean() < 2  # full range kept: not stretched or squeezed
    else:
        assert np.abs(frames[2].astype(int) - reference).mean() < 4


def test_non_square_pixels_are_shown_stretched(media_dir: Path):
    """A 160x96 picture with 2:1 pixels (anamorphic) displays as 320x96; the tile doubles in width."""
    path = media_dir / "anamorphic.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(pattern(index, 160, 96), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    info = probe(path)
    assert (info.width, info.height) == (320, 96)
    frame = read_frames(info, [2], (320, 96))[0].mean(axis=-1)
    marker = np.abs(frame - 248) < 20  # the top-left quadrant: 24x24 stored pixels
    assert 44 <= marker[36].sum() <= 52 and 20 <= marker[:, 140].sum() <= 28


def test_read_frames_memory_follows_the_output(media_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Nine frames from a 30 s clip: only those nine are converted, and Python-side memory stays small."""
    info = probe(synthetic.write_video(media_dir / "long.mp4", frames=750, fps=25, size=(160, 96)))
    converted: list[int] = []
    real_to_rgb = decode_module.to_rgb
    monkeypatch.setattr(decode_module, "to_rgb", lambda *a: converted.append(1) or real_to_rgb(*a))
    indices = list(range(0, 750, 90))[:9]
    tracemalloc.start()
    frames = read_frames(info, indices, (64, 64))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert recovered(frames) == indices
    assert len(converted) == 9
    # Keeping every decoded frame would take 750 x 160 x 96 x 3 = 35 MB; the output is 110 kB.
    assert peak < frames.nbytes + 2_000_000


def test_read_frames_stops_after_the_last_requested_frame(cfr_clips: dict[int, Path], monkeypatch):
    decoded = 0
    real = decode_module.decoded_frames

    def counting(*args):
        nonlocal decoded
        for frame in real(*args):
            decoded += 1
            yield frame

    monkeypatch.setattr(decode_module, "decoded_frames", counting)
    read_frames(probe(cfr_clips[30]), [2, 5], (32, 32))
    assert decoded == 6


def test_read_frames_rejects_out_of_range_indices(cfr_clips: dict[int, Path]):
    info = probe(cfr_clips[24])
    with pytest.raises(ValueError, match="out of range"):
        read_frames(info, [48], (32, 32))


# --- bad input ---------------------------------------------------------------------------------------------


def _bad_inputs(directory: Path) -> dict[str, tuple[Path, str]]:
    """Each kind of bad input, and a regex its MediaError reason must match."""
    good = synthetic.write_video(directory / "good.mp4", frames=60, fps=25)
    empty = directory / "empty.mp4"
    empty.touch()
    folder = directory / "folder.mp4"
    folder.mkdir()
    text = directory / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 20)
    return {
        "empty": (empty, r"^empty file$"),
        "random bytes": (synthetic.write_corrupt(directory / "noise.mp4"), r"^cannot open: .+"),
        "text as mp4": (text, r"^cannot open: .+"),
        "random bytes as png": (synthetic.write_corrupt(directory / "noise.png", seed=1), r"^cannot decode image: .+"),
        "audio only (mp4)": (synthetic.write_audio_only(directory / "audio.mp4"), r"^no video stream \(audio only\)$"),
        "audio only (wav)": (synthetic.write_audio_only(directory / "audio.wav"), r"^no video stream \(audio only\)$"),
        "truncated": (
            synthetic.write_truncated(good, directory / "cut.mp4", 0.5),
            r"^truncated: \d+ of 60 frames present, frames after t=\d+\.\d\ds are missing$",
        ),
        "directory": (folder, r"^is a directory$"),
        "missing": (directory / "absent.mp4", r"^not found$"),
    }


def test_every_bad_input_is_a_media_error_with_its_reason(tmp_path: Path):
    reasons = {}
    for kind, (path, expected) in _bad_inputs(tmp_path).items():
        with pytest.raises(MediaError, match=expected) as caught:
            probe(path)
        reasons[kind] = str(caught.value)
    prefixes = {reason.split(":")[0] for reason in reasons.values()}  # the reason before any FFmpeg detail
    assert prefixes == {
        "empty file",
        "cannot open",
        "cannot decode image",
        "no video stream (audio only)",
        "truncated",
        "is a directory",
        "not found",
    }


def test_unreadable_file_is_a_media_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = synthetic.write_video(tmp_path / "locked.mp4", frames=5, fps=25)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads through chmod 000: make open() refuse instead
            monkeypatch.setattr(container_module, "open", _refuse, raising=False)
        with pytest.raises(MediaError, match=r"^permission denied$"):
            probe(path)
    finally:
        path.chmod(0o644)


def _refuse(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("extension", [".mp4", ".mkv", ".webm", ".avi", ".mov", ".jpg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_never_raises_anything_but_media_error(tmp_path: Path, extension: str, seed: int):
    path = synthetic.write_corrupt(tmp_path / f"garbage{extension}", size=2000 + 999 * seed, seed=seed)
    with pytest.raises(MediaError):
        probe(path)


def test_file_truncated_after_probing_fails_in_read_frames(tmp_path: Path):
    path = synthetic.write_video(tmp_path / "shrinks.mp4", frames=50, fps=25)
    info = probe(path)
    synthetic.write_truncated(path, tmp_path / "cut.mp4", 0.6)
    (tmp_path / "cut.mp4").replace(path)
    with pytest.raises(MediaError, match=r"^(decode failed at frame \d+|truncated): "):
        read_frames(info, [49], (32, 32))
    assert recovered(read_frames(info, [0, 1], (32, 32))) == [0, 1]  # the frames that are there still read


def test_info_for_a_missing_file_fails_in_read_frames(cfr_clips: dict[int, Path], tmp_path: Path):
    info = probe(cfr_clips[25])
    moved = attrs.evolve(info, path=str(tmp_path / "gone.mp4"))
    with pytest.raises(MediaError, match=r"^not found$"):
        read_frames(moved, [0], (32, 32))


# --- synthetic media ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(160, 96), (96, 160), (33, 17), (320, 240)])
def test_pattern_index_round_trips(width: int, height: int):
    for index in (0, 1, 14, 15, 224, 225, 1000, synthetic.CAPACITY - 1):
        assert recover_index(pattern(index, width, height)) == index
    with pytest.raises(ValueError, match="no upright pattern"):
        recover_index(np.rot90(pattern(5, width, height), k=2))


def test_sample_dataset_is_captioned_varied_and_deterministic(tmp_path: Path):
    first = synthetic.make_sample_dataset(tmp_path / "a", clips=6, images=2, seed=3)
    second = synthetic.make_sample_dataset(tmp_path / "b", clips=6, images=2, seed=3)
    assert [p.name for p in first] == [p.name for p in second]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first, second, strict=True))
    infos = [probe(path) for path in first]
    assert [i.kind for i in infos].count("image") == 2
    videos = [i for i in infos if i.kind == "video"]
    assert all(0.5 <= i.end_time <= 3.0 + 1e-6 and round(i.avg_fps) in (24, 25, 30) for i in videos)
    for path in first:
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert caption.startswith(("a ", "an ")) and " square " in caption
