"""Synthetic media for tests, benchmarks and the bundled demo data: clips whose frames say which they are.

`pattern(index, w, h)` draws a coloured square moving over a gradient, with a 2x2 tile in the centre whose
four gray levels encode the frame index (top-left is a fixed marker, so a picture turned the wrong way is
caught). The tile spans half the shorter side and each level is a flat area, so `recover_index` reads it back
after cover-resize, centre crop, rotation correction, chroma subsampling and lossy compression.

Writers make every kind of input the media package must handle: constant and variable frame rate clips,
rotated clips (display matrix), gray / 10-bit / alpha pixel formats, images, audio-only, random bytes and
truncated files; `make_sample_dataset` writes a small captioned folder.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame
from av.video.reformatter import ColorRange

from ltxc.media.encode import MP4_FAMILY, MP4_OPTIONS, add_video_stream, frame_rate

DIGITS = 15  # levels per quadrant that carry data; level 15 is the top-left marker
MARKER = 15
CAPACITY = DIGITS**3  # distinct frame indices a pattern can carry
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")

Draw = Callable[[int, int, int], np.ndarray]  # (index, width, height) -> uint8 [H, W, 3 or 4]


def _level(digit: int) -> int:
    return 8 + 16 * digit  # 16 gray levels, 16 apart: compression error must reach 8 to flip one


def pattern(
    index: int,
    width: int,
    height: int,
    *,
    color: tuple[int, int, int] = (230, 60, 50),
    background: tuple[int, int, int] = (20, 30, 80),
    direction: str = "left to right",
) -> np.ndarray:
    """Frame `index` of the test pattern as RGB uint8 [height, width, 3]."""
    if not 0 <= index < CAPACITY:
        raise ValueError(f"pattern index must be in [0, {CAPACITY}), got {index}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    shade = np.linspace(0.55, 1.0, height, dtype=np.float32)[:, None, None]
    frame = np.broadcast_to(np.asarray(background, np.float32) * shade, (height, width, 3)).astype(np.uint8)

    side = max(2, min(width, height) // 4)
    along = width if direction in DIRECTIONS[:2] else height
    travel = max(1, along - side)
    offset = (index * max(1, along // 32)) % travel
    if direction in ("right to left", "bottom to top"):
        offset = travel - offset
    if direction in DIRECTIONS[:2]:
        top, left = (height - side) // 3, offset
    else:
        top, left = offset, (width - side) // 3
    frame[top : top + side, left : left + side] = color

    half = max(1, min(width, height) // 4)  # the tile spans half the shorter side
    cx, cy = width // 2, height // 2
    digits = (MARKER, index % DIGITS, index // DIGITS % DIGITS, index // DIGITS**2)
    for digit, (rows, cols) in zip(digits, _quadrants(cy, cx, half), strict=True):
        frame[rows, cols] = _level(digit)
    return frame


def _quadrants(cy: int, cx: int, half: int) -> list[tuple[slice, slice]]:
    """Top-left, top-right, bottom-left, bottom-right squares of side `half` around (cy, cx)."""
    up, down = slice(cy - half, cy), slice(cy, cy + half)
    left, right = slice(cx - half, cx), slice(cx, cx + half)
    return [(up, left), (up, right), (down, left), (down, right)]


def recover_index(frame: np.ndarray) -> int:
    """The frame index `pattern` drew into `frame` (any size/crop that keeps the centre); ValueError if unreadable."""
    height, width = frame.shape[:2]
    gray = frame[..., :3].mean(axis=-1) if frame.ndim == 3 else frame.astype(np.float32)
    shorter = min(width, height)
    # Sample well inside each quadrant: after a cover resize the tile spans at least half the shorter side.
    reach, radius = shorter / 8, max(1, round(shorter / 20))
    digits = []
    for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
        y, x = round(height / 2 + dy * reach), round(width / 2 + dx * reach)
        level = float(np.median(gray[y - radius : y + radius, x - radius : x + radius]))
        digits.append(min(15, max(0, round((level - 8) / 16))))
    if digits[0] != MARKER:
        raise ValueError(f"no upright pattern: top-left level is {digits[0]}, not the marker {MARKER}")
    if MARKER in digits[1:]:
        raise ValueError(f"no upright pattern: marker level found outside the top-left ({digits})")
    return digits[1] + DIGITS * digits[2] + DIGITS**2 * digits[3]


# --- writers ----------------------------------------------------------------------------------------------

_DEFAULT_CODEC = {".mkv": "ffv1", ".webm": "libvpx-vp9", ".avi": "mpeg4"}  # anything else: H.264
_ALPHA_FORMATS = ("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya8", "ya16")


def write_video(
    path: str | os.PathLike[str],
    *,
    frames: int,
    fps: float = 25.0,
    size: tuple[int, int] = (160, 96),
    codec: str | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    times: Sequence[float] | None = None,
    audio: bool = False,
    draw: Draw = pattern,
    tone: float = 440.0,
) -> Path:
    """Write a `frames`-frame clip of `draw` (stored size `size` = (w, h)); `times` gives per-frame seconds (VFR).

    `audio=True` adds a 16 kHz mono AAC track: a sine of `tone` Hz over the clip's duration.

    `rotation` (clockwise degrees, 0/90/180/270) is what a player must turn the stored picture by: the clip
    is drawn upright at the display size and stored turned the other way, like a phone filming portrait.
    """
    path = Path(path)
    width, height = size
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    if times is not None and len(times) != frames:
        raise ValueError(f"times has {len(times)} entries for {frames} frames")
    shown = (height, width) if rotation in (90, 270) else (width, height)
    codec = codec or _DEFAULT_CODEC.get(path.suffix.lower(), "libx264")
    rate = frame_rate(fps)
    # Some codecs need a time base that is the frame rate; explicit times need milliseconds.
    time_base = Fraction(1, 1000) if times is not None else 1 / rate
    options = MP4_OPTIONS if path.suffix.lower() in MP4_FAMILY else {}
    with av.open(str(path), "w", options=options) as container:
        stream = add_video_stream(container, codec, rate=rate, size=size, pix_fmt=pix_fmt, time_base=time_base)
        if pix_fmt.startswith(("gray", "yuvj")):
            # PyAV converts RGB to these at full range; say so in the file, or readers assume limited range
            stream.codec_context.color_range = ColorRange.JPEG
        if rotation:
            stream.set_display_rotation(-rotation)  # PyAV takes the counter-clockwise angle
        sound = container.add_stream("aac", rate=16000, layout="mono") if audio else None
        alpha = pix_fmt.startswith(_ALPHA_FORMATS)
        for index in range(frames):
            picture = draw(index, *shown)
            if alpha and picture.shape[-1] == 3:
                picture = _with_alpha(picture)
            stored = np.ascontiguousarray(np.rot90(picture, k=rotation // 90))  # undo the clockwise display turn
            frame = VideoFrame.from_ndarray(stored, format="rgba" if stored.shape[-1] == 4 else "rgb24")
            frame.pts = round(times[index] * 1000) if times is not None else index
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if sound is not None:
            seconds = (times[-1] + 1 / fps) if times else frames / fps
            _write_tone(container, sound, seconds, tone)
    return path


def _with_alpha(picture: np.ndarray) -> np.ndarray:
    """RGBA: the centre opaque, the surroundings half transparent (the RGB is unchanged)."""
    height, width = picture.shape[:2]
    opacity = np.full((height, width, 1), 128, np.uint8)
    opacity[height // 4 : height - height // 4, width // 4 : width - width // 4] = 255
    return np.concatenate([picture, opacity], axis=-1)


def _write_tone(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float, hz: float = 440.0
) -> None:
    rate = stream.codec_context.sample_rate
    samples = max(1, round(seconds * rate))
    tone = (0.2 * np.sin(2 * np.pi * hz * np.arange(samples) / rate)).astype(np.float32)
    fmt = stream.codec_context.format.name
    data = tone[None]  # mono: one row, planar or packed alike
    if fmt.startswith("s16"):
        data = (data * 32767).astype(np.int16)
    for start in range(0, samples, 1024):  # whole frames of 1024 samples, as AAC wants
        chunk = data[:, start : start + 1024]
        frame = AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout="mono")
        frame.sample_rate, frame.pts = rate, start
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


_IMAGE_CODECS = {".png": ("png", "rgb24"), ".jpg": ("mjpeg", "yuvj444p"), ".jpeg": ("mjpeg", "yuvj444p")}
_IMAGE_CODECS |= {".webp": ("libwebp", "yuv420p"), ".bmp": ("bmp", "bgr24")}


def write_image(path: str | os.PathLike[str], index: int, size: tuple[int, int], *, draw: Draw = pattern) -> Path:
    """Write frame `index` of `draw` at size (w, h) as a png / jpg / webp / bmp image, chosen by extension."""
    path = Path(path)
    if path.suffix.lower() not in _IMAGE_CODECS:
        raise ValueError(f"image extension must be one of {sorted(_IMAGE_CODECS)}, got {path.suffix!r}")
    codec, pix_fmt = _IMAGE_CODECS[path.suffix.lower()]
    width, height = size
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as container:
        stream = container.add_stream(codec, rate=1, options={"qscale": "2"} if codec == "mjpeg" else {})
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "mjpeg":
            stream.codec_context.color_range = ColorRange.JPEG  # full range, as JPEG files are
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(draw(index, width, height)[..., :3]), format="rgb24")
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_audio_only(path: str | os.PathLike[str], seconds: float = 1.0) -> Path:
    """Write a sine tone with no video stream (.wav as PCM, anything else as AAC, e.g. an .mp4 with no picture)."""
    path = Path(path)
    codec = "pcm_s16le" if path.suffix.lower() == ".wav" else "aac"
    with av.open(str(path), "w") as container:
        _write_tone(container, container.add_stream(codec, rate=16000, layout="mono"), seconds)
    return path


def write_corrupt(path: str | os.PathLike[str], size: int = 4096, seed: int = 0) -> Path:
    """Write `size` random bytes (name it .mp4 to imitate a broken video)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def write_truncated(src: str | os.PathLike[str], dst: str | os.PathLike[str], fraction: float = 0.5) -> Path:
    """Copy the first `fraction` of `src`'s bytes to `dst`, like an interrupted download."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


# --- a small captioned dataset ----------------------------------------------------------------------------

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (230, 210, 40),
    "orange": (240, 140, 30),
    "purple": (150, 60, 200),
}
# `make_sample_dataset(sound=True)`: each clip's tone by its colour (Hz), so the caption names the sound too; far
# apart on the mel scale (the peaks fall in Slaney mel bins 4, 11, 23, 35, 47 and 55 of 64 over 0-8 kHz).
TONES = {"red": 250.0, "green": 570.0, "blue": 1130.0, "yellow": 2050.0, "orange": 3500.0, "purple": 5300.0}
BACKGROUNDS = {"dark blue": (20, 30, 80), "dark green": (15, 60, 30), "black": (8, 8, 8), "gray": (90, 90, 90)}
SIZES = ((160, 96), (192, 128), (224, 128), (256, 144), (320, 240), (96, 160), (144, 256))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def make_sample_dataset(
    directory: str | os.PathLike[str],
    clips: int = 16,
    images: int = 4,
    seed: int = 0,
    *,
    distinct: bool = False,
    size: tuple[int, int] | None = None,
    sound: bool = False,
) -> list[Path]:
    """Write `clips` mp4 clips and `images` png/jpg images, each with a sidecar .txt caption; deterministic in `seed`.

    Clips vary in fps (24/25/30), size and aspect (160x96 to 320x240, some portrait) and length (0.5-3 s).
    Colour, background and direction are drawn independently, so captions can repeat.

    `distinct=True`: no two samples share a colour, a background or a direction (so at most 4 samples), so
    every caption names one sample and the samples look as different as the palette allows: what a
    caption -> clip memorisation check needs. `size=(w, h)` gives every sample that stored size (one
    resolution bucket) instead of drawing it. `sound=True` gives every clip a mono AAC track, a sine at its
    colour's `TONES` frequency (so with `distinct=True` every caption names its own tone); the draws and the
    pictures are the same as without it. Without them, the output is what it always was for a seed.
    Returns the media paths, sorted.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if distinct:
        limit = min(len(COLORS), len(BACKGROUNDS), len(DIRECTIONS))
        if clips + images > limit:
            raise ValueError(f"distinct=True makes at most {limit} samples, got {clips} clips + {images} images")
        # one shuffled deck per attribute, dealt without replacement
        decks = [rng.permutation(list(values)) for values in (COLORS, BACKGROUNDS, DIRECTIONS)]
    written = []
    for number in range(clips + images):
        if distinct:
            color, background, direction = (str(deck[number]) for deck in decks)
        else:
            color = str(rng.choice(list(COLORS)))
            background = str(rng.choice(list(BACKGROUNDS)))
            direction = str(rng.choice(DIRECTIONS))
        drawn = SIZES[int(rng.integers(len(SIZES)))]  # drawn even when `size` is given: the same draws follow
        stored = size or drawn
        draw = functools.partial(pattern, color=COLORS[color], background=BACKGROUNDS[background], direction=direction)
        if number < clips:
            fps = int(rng.choice([24, 25, 30]))
            seconds = round(float(rng.uniform(0.5, 3.0)), 1)
            path = write_video(
                directory / f"clip_{number:03d}.mp4",
                frames=round(seconds * fps),
                fps=fps,
                size=stored,
                draw=draw,
                audio=sound,
                tone=TONES[color],
            )
            caption = f"{_article(color)} {color} square moving {direction} on a {background} background"
        else:
            extension = ".png" if number % 2 == 0 else ".jpg"
            path = write_image(directory / f"image_{number - clips:03d}{extension}", number, stored, draw=draw)
            caption = f"{_article(color)} {color} square on a {background} background"
        path.with_suffix(".txt").write_text(caption + "\n", encoding="utf-8")
        written.append(path)
    return sorted(written)
