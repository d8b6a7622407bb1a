"""Output writers (ltxc.media.write): every format decodes back, checked with PyAV directly where it matters.

- .mp4 decodes to the same frame count, size and exact frame rate (24, 25, 30, 24000/1001), tagged BT.709,
  with a small mean error on a smooth pattern (H.264 is lossy);
- .gif decodes to the same frame count and size, each frame shown for 1/fps within the format's 10 ms;
- .png of one frame is that frame exactly; of several, a contact sheet whose cells are the frames exactly;
- .safetensors round-trips exactly, fps included;
- uint8 and float, numpy and torch, channels last and first give byte-identical files;
- bad inputs fail with a clear message and leave nothing behind; a successful write leaves no temp file.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from safetensors import safe_open

from ltxc.media import write
from ltxc.media.encode import frame_rate
from ltxc.media.write import contact_sheet, read_frames_file, write_frames

NTSC = Fraction(24000, 1001)


def smooth(count: int = 6, width: int = 64, height: int = 48) -> np.ndarray:
    """uint8 [F, H, W, 3] of slow colour waves, each frame moved on: smooth, so lossy codecs keep it closely."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(count):
        red = 0.5 + 0.3 * np.sin(np.pi * x / width + t / 3)
        green = 0.5 + 0.3 * np.cos(np.pi * y / height - t / 3)
        blue = 0.5 + 0.2 * np.sin(np.pi * (x + y) / (width + height) + t / 2)
        frames.append(np.stack([red, green, blue], axis=-1))
    return np.rint(np.stack(frames) * 255).astype(np.uint8)


def decode(path: Path) -> tuple[np.ndarray, av.video.stream.VideoStream, list[float]]:
    """(rgb24 frames, the stream, each frame's shown seconds), straight from PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in decoded])
        seconds = [float(frame.duration * frame.time_base) for frame in decoded]
    return frames, stream, seconds


def mean_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


# --- mp4 --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [24, 25, 30, NTSC])
def test_mp4_decodes_to_same_frames_size_and_fps(tmp_path: Path, fps: Fraction) -> None:
    frames = smooth()
    path = write_frames(frames, tmp_path / "out.mp4", fps=fps)
    decoded, stream, seconds = decode(path)
    assert decoded.shape == frames.shape
    assert stream.average_rate == fps  # exact: a Fraction compare, so 23.976... is not "close enough"
    assert seconds == pytest.approx([1 / fps] * len(frames))
    assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
    assert mean_error(decoded, frames) < 2.5
    # each frame is nearest its own source: none dropped, repeated or reordered
    for index, picture in enumerate(decoded):
        errors = [mean_error(picture, source) for source in frames]
        assert int(np.argmin(errors)) == index
    back, back_fps = read_frames_file(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert back_fps == pytest.approx(float(fps), abs=1e-9)
    assert mean_error(back, frames) < 2.5


def test_mp4_says_which_colour_matrix_it_used(tmp_path: Path) -> None:
    path = write_frames(smooth(count=2), tmp_path / "out.mp4", fps=24)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    assert frame.colorspace == 1  # AVCOL_SPC_BT709: the matrix the writer converted with
    assert frame.color_range == av.video.reformatter.ColorRange.MPEG


@pytest.mark.parametrize(
    ("fps", "rate"),
    [(23.976, NTSC), (23.98, NTSC), (29.97, Fraction(30000, 1001)), (59.94, Fraction(60000, 1001)),
     (24.0, Fraction(24)), (12.5, Fraction(25, 2)), (NTSC, NTSC), (30, Fraction(30))],
)  # fmt: skip
def test_frame_rates_are_kept_exactly(fps: float, rate: Fraction) -> None:
    assert frame_rate(fps) == rate


def test_a_float_ntsc_rate_reaches_the_file_exactly(tmp_path: Path) -> None:
    path = write_frames(smooth(count=3), tmp_path / "out.mp4", fps=29.97)
    assert decode(path)[1].average_rate == Fraction(30000, 1001)


# --- gif --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [10, 24, 30])
def test_gif_decodes_to_same_frames_size_and_timing(tmp_path: Path, fps: int) -> None:
    frames = smooth(count=9)
    path = write_frames(frames, tmp_path / "out.gif", fps=fps)
    decoded, stream, seconds = decode(path)
    assert stream.codec_context.name == "gif"
    assert decoded.shape == frames.shape
    assert all(abs(shown - 1 / fps) <= 0.01 + 1e-9 for shown in seconds), seconds  # GIF delays are in 1/100 s
    assert sum(seconds) == pytest.approx(len(frames) / fps, abs=0.01)  # rounding spread, not accumulated
    assert mean_error(decoded, frames) < 7.0  # 255 colours, dithered; a fixed 3-3-2 palette gives 15
    for index, picture in enumerate(decoded):
        assert int(np.argmin([mean_error(picture, source) for source in frames])) == index
    back, back_fps = read_frames_file(path)
    assert back.shape == frames.shape
    assert back_fps == pytest.approx(fps, rel=0.02)


def test_gif_uses_one_palette_for_all_frames(tmp_path: Path) -> None:
    # One palette for the clip: colours cannot flicker between frames, and the whole clip uses at most 256.
    # Per-frame palettes would use up to 256 colours in each frame, far more over six moving frames.
    decoded = decode(write_frames(smooth(), tmp_path / "out.gif", fps=10))[0]
    per_frame = [len(np.unique(frame.reshape(-1, 3), axis=0)) for frame in decoded]
    assert len(np.unique(decoded.reshape(-1, 3), axis=0)) <= 256
    assert min(per_frame) > 64  # and the palette is put to use, not a handful of colours


# --- png and contact sheets -------------------------------------------------------------------------------


def test_png_of_one_frame_is_that_frame_exactly(tmp_path: Path) -> None:
    frames = smooth(count=1, width=33, height=17)  # odd sizes are fine for PNG
    path = write_frames(frames, tmp_path / "out.png", fps=24)
    decoded, stream, _ = decode(path)
    assert stream.codec_context.name == "png"
    assert np.array_equal(decoded, frames)
    back, back_fps = read_frames_file(path)
    assert np.array_equal(back, frames) and back_fps == 0.0


def test_png_of_several_frames_is_a_contact_sheet(tmp_path: Path) -> None:
    frames = smooth(count=5, width=40, height=30)
    path = write_frames(frames, tmp_path / "out.png", fps=24)
    sheet = decode(path)[0][0]
    gap = write.SEPARATOR
    columns = 2  # ceil(sqrt(5 * 30 / 40)) = 2: the sheet comes out about square
    assert sheet.shape == (3 * 30 + 2 * gap, columns * 40 + gap, 3)
    assert np.array_equal(sheet, contact_sheet(frames))
    for index, frame in enumerate(frames):  # left to right, top to bottom, lossless
        top, left = (index // columns) * (30 + gap), (index % columns) * (40 + gap)
        assert np.array_equal(sheet[top : top + 30, left : left + 40], frame)
    assert (sheet[30 : 30 + gap] == write.SEPARATOR_LEVEL).all()  # a separator row
    assert (sheet[2 * (30 + gap) :, 40 + gap :] == write.SEPARATOR_LEVEL).all()  # the empty last cell


@pytest.mark.parametrize(
    ("count", "columns", "grid"),
    [(1, None, (1, 1)), (4, None, (2, 2)), (16, None, (4, 4)), (6, 3, (2, 3)), (7, 7, (1, 7)), (3, 10, (1, 3))],
)
def test_contact_sheet_grid(count: int, columns: int | None, grid: tuple[int, int]) -> None:
    frames = np.zeros((count, 8, 8, 3), np.uint8)
    rows, cols = grid
    gap = write.SEPARATOR
    assert contact_sheet(frames, columns).shape == (rows * 8 + (rows - 1) * gap, cols * 8 + (cols - 1) * gap, 3)


def test_contact_sheet_default_columns_follow_the_aspect() -> None:
    # About square sheets: very wide frames stack in one column, very tall ones sit in one row.
    gap = write.SEPARATOR
    assert contact_sheet(np.zeros((6, 8, 48, 3), np.uint8)).shape[:2] == (6 * 8 + 5 * gap, 48)
    assert contact_sheet(np.zeros((6, 48, 8, 3), np.uint8)).shape[:2] == (48, 6 * 8 + 5 * gap)
    with pytest.raises(ValueError, match="columns must be at least 1"):
        contact_sheet(np.zeros((2, 8, 8, 3), np.uint8), columns=0)


# --- safetensors ------------------------------------------------------------------------------------------


def test_safetensors_round_trips_exactly(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).random((3, 10, 14, 3), dtype=np.float32)  # off the uint8 grid
    path = write_frames(frames, tmp_path / "out.safetensors", fps=NTSC)
    back, fps = read_frames_file(path)
    assert back.dtype == np.float32 and np.array_equal(back, frames)
    assert fps == float(NTSC)
    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata()["fps"] == "24000/1001"
        assert list(handle.keys()) == ["frames"]


# --- inputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".png", ".safetensors"])
def test_uint8_float_numpy_torch_and_layouts_give_the_same_file(tmp_path: Path, suffix: str) -> None:
    frames = smooth(count=4, width=32, height=24)
    unit = frames.astype(np.float32) / 255
    inputs = {
        "uint8": frames,
        "float": unit,
        "torch uint8": torch.from_numpy(frames),
        "torch float channels first": torch.from_numpy(unit).permute(0, 3, 1, 2),  # diffusers' "pt" layout
        "numpy float64 channels first": unit.astype(np.float64).transpose(0, 3, 1, 2),
    }
    written = {name: write_frames(value, tmp_path / f"{name}{suffix}", fps=25) for name, value in inputs.items()}
    written = {name: path.read_bytes() for name, path in written.items()}
    assert len(set(written.values())) == 1, {name: len(data) for name, data in written.items()}


def test_float_frames_are_rounded_not_truncated(tmp_path: Path) -> None:
    frames = np.full((1, 4, 4, 3), 0.999, np.float32)  # 254.7 -> 255, not 254
    back = decode(write_frames(frames, tmp_path / "out.png", fps=1))[0]
    assert (back == 255).all()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((4, 4, 3), np.uint8), r"\[F, H, W, 3\] or \[F, 3, H, W\].*got shape \[4, 4, 3\]"),
        (np.zeros((1, 2, 4, 4, 3), np.uint8), r"got shape \[1, 2, 4, 4, 3\]"),
        (np.zeros((2, 4, 4, 4), np.uint8), r"got shape \[2, 4, 4, 4\]"),
        (np.zeros((0, 4, 4, 3), np.uint8), "no empty axis"),
        (np.zeros((2, 4, 4, 3), np.int16), "uint8 or floating.*int16"),
        (np.full((2, 4, 4, 3), -1.0, np.float32), r"in \[0, 1\].*from -1 to -1.*\(x \+ 1\) / 2"),
        (np.full((2, 4, 4, 3), np.nan, np.float32), r"in \[0, 1\]"),
        (np.full((2, 4, 4, 3), 255.0, np.float32), r"in \[0, 1\].*to 255"),
    ],
)
def test_bad_frames_are_clear_errors(tmp_path: Path, frames: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_frames(frames, tmp_path / "out.png", fps=24)
    assert list(tmp_path.iterdir()) == []


def test_unknown_suffix_names_the_supported_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'out\.webm'.*\.mp4, \.gif, \.png, \.safetensors"):
        write_frames(smooth(count=1), tmp_path / "out.webm", fps=24)
    assert list(tmp_path.iterdir()) == []


def test_odd_sizes_are_refused_for_mp4(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"even width and height, got 33x24"):
        write_frames(smooth(count=2, width=33, height=24), tmp_path / "out.mp4", fps=24)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps", [0, -24, float("nan"), float("inf")])
def test_bad_fps_is_a_clear_error(tmp_path: Path, fps: float) -> None:
    with pytest.raises(ValueError, match="fps must be a positive number"):
        write_frames(smooth(count=1), tmp_path / "out.safetensors", fps=fps)


# --- atomic writes ----------------------------------------------------------------------------------------


def test_writes_leave_only_the_outputs(tmp_path: Path) -> None:
    frames = smooth(count=2, width=16, height=16)
    names = ["a.mp4", "b.gif", "c.png", "d.safetensors", "sub/dir/e.MP4"]
    for name in names:
        write_frames(frames, tmp_path / name, fps=24)
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*") if path.is_file())
    assert written == sorted(names)


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_frames(smooth(count=2), tmp_path / "out.mp4", fps=24)
    before = path.read_bytes()

    def broken(pixels: np.ndarray, tmp: str, rate: Fraction) -> None:
        Path(tmp).write_bytes(b"half a video")
        raise RuntimeError("disk full")

    monkeypatch.setattr(write, "_write_mp4", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_frames(smooth(count=3), path, fps=24)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]
