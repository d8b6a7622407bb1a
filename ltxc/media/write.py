"""Write generated frames to a file chosen by suffix (.mp4, .gif, .png, .safetensors), atomically; read them back.

Accepted frames: a numpy array or torch tensor, 4-D, either channels last [F, H, W, 3] or channels first
[F, 3, H, W] (what diffusers' output_type="pt" gives per video); a last axis of 3 wins when both could be.
dtype uint8 (0-255) or floating in [0, 1] (a float within 1/255 outside is clipped; further out is an error,
as it means [-1, 1] or unnormalised values). Floats become uint8 by rounding, so a float frame equal to
uint8 / 255 writes the same bytes as the uint8 frame.

- .mp4: H.264 yuv420p, BT.709 limited range (tagged in the file), fps kept exactly (frame_rate: 23.976 means
  24000/1001). yuv420p halves chroma both ways, so width and height must be even: odd sizes are an error,
  not padded, so a file always decodes to the size that was asked for.
- .gif: one palette for the whole clip from FFmpeg's palettegen over every frame (so colours do not flicker
  between frames), applied with paletteuse's default dithering. GIF stores frame delays in hundredths of a
  second; the muxer spreads the rounding (24 fps gives 4, 4, 5, ... hundredths), so the clip keeps its length.
  Players slow down frames under 20 ms, so keep GIFs at 50 fps or less.
- .png: one frame is that frame, lossless; several are a contact sheet (`contact_sheet`), with `audio` a
  spectrogram strip under the frames (`ltxc/audio/spectrogram.py`: time left to right over the whole clip).
- sound: with `audio` (a waveform [channels, samples] float in [-1, 1], mono or stereo) and its `sample_rate`,
  an .mp4 gets an AAC track (FFmpeg's encoder, 192 kb/s) trimmed or zero-padded to the video's duration
  (frames / fps), resampled to 48 kHz first when AAC does not take the rate; `write_wav` writes the waveform
  alone as 16-bit PCM .wav. A .png contact sheet shows it as a spectrogram; .gif and .safetensors ignore it.
- .safetensors: the frames as float32 [F, H, W, 3] in [0, 1] under "frames", and "fps" (a ratio such as
  24000/1001) and any `metadata` given (e.g. generate's settings) in the metadata; exact, for comparing outputs.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler
from av.audio.stream import AudioStream
from av.container import OutputContainer
from av.video.frame import VideoFrame
from av.video.reformatter import ColorPrimaries, ColorRange, ColorTrc
from safetensors import safe_open
from safetensors.numpy import save_file

from ltxc.fileio import atomic_write
from ltxc.media.container import decoded_frames, open_input, video_stream
from ltxc.media.encode import MP4_OPTIONS, add_video_stream, frame_rate

if TYPE_CHECKING:
    import torch

SUFFIXES = (".mp4", ".gif", ".png", ".safetensors")
SEPARATOR = 2  # pixels between contact-sheet cells
SEPARATOR_LEVEL = 40  # dark gray: visible against both black and white frames
_BT709 = 1  # AVCOL_SPC_BT709: the colour matrix tag in the H.264 stream
_LAYOUTS = {1: "mono", 2: "stereo"}
# the rates FFmpeg's AAC encoder takes; another is resampled to 48 kHz
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_AAC_FALLBACK_RATE = 48000
_AAC_BIT_RATE = 192_000


def write_frames(
    frames: np.ndarray | torch.Tensor,
    path: str | Path,
    *,
    fps: float | Fraction,
    metadata: Mapping[str, str] | None = None,
    audio: np.ndarray | torch.Tensor | None = None,
    sample_rate: int | None = None,
) -> Path:
    """Write `frames` to `path` in the format its suffix names (see the module docstring); returns the path.

    `metadata` (strings) goes into a .safetensors file beside "fps"; the other formats carry none. `audio`
    [channels, samples] at `sample_rate` becomes an .mp4's AAC track, and a spectrogram strip under a .png of
    several frames (a .png of one frame stays that frame; .gif and .safetensors ignore it).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"cannot write {path.name!r}: the suffix must be one of {', '.join(SUFFIXES)}")
    rate = frame_rate(fps)
    array = as_frames(frames)
    if suffix == ".safetensors":
        data = to_unit_float(array)
        stored = {**(metadata or {}), "fps": str(rate)}
        return atomic_write(path, lambda tmp: save_file({"frames": data}, tmp, metadata=stored))
    pixels = to_uint8(array)
    if suffix == ".mp4":
        height, width = pixels.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(
                f"cannot write {path.name!r}: .mp4 (H.264 yuv420p) needs an even width and height, got "
                f"{width}x{height}; crop the frames, or write .png, .gif or .safetensors"
            )
        sound = None if audio is None else _sound_for(audio, sample_rate, len(pixels) / rate)
        if sound is None:
            return atomic_write(path, lambda tmp: _write_mp4(pixels, tmp, rate))
        return atomic_write(path, lambda tmp: _write_mp4(pixels, tmp, rate, sound))
    if suffix == ".gif":
        return atomic_write(path, lambda tmp: _write_gif(pixels, tmp, rate))
    sheet = contact_sheet(pixels, audio=audio if len(pixels) > 1 else None, sample_rate=sample_rate)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(_png_bytes(sheet)))


def contact_sheet(
    frames: np.ndarray | torch.Tensor,
    columns: int | None = None,
    *,
    audio: np.ndarray | torch.Tensor | None = None,
    sample_rate: int | None = None,
) -> np.ndarray:
    """The frames tiled left to right, top to bottom, as one uint8 [H, W, 3] image with thin separators; with
    `audio` [channels, samples] at `sample_rate`, its spectrogram as a strip under them, the sheet's width."""
    pixels = to_uint8(as_frames(frames))
    count, height, width = pixels.shape[:3]
    if columns is None:
        # About as many columns as make the sheet square: columns * width ~ rows * height.
        columns = math.ceil(math.sqrt(count * height / width))
    if columns < 1:
        raise ValueError(f"columns must be at least 1, got {columns}")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    sheet = np.full(
        (rows * height + (rows - 1) * SEPARATOR, columns * width + (columns - 1) * SEPARATOR, 3),
        SEPARATOR_LEVEL,
        np.uint8,
    )
    for index, frame in enumerate(pixels):
        top, left = (index // columns) * (height + SEPARATOR), (index % columns) * (width + SEPARATOR)
        sheet[top : top + height, left : left + width] = frame
    return sheet if audio is None else _with_spectrogram(sheet, audio, sample_rate)


def _with_spectrogram(sheet: np.ndarray, audio: np.ndarray | torch.Tensor, sample_rate: int | None) -> np.ndarray:
    """The sheet, a separator, and the sound's spectrogram stretched to the sheet's width (1/8 of it tall, 64 to 256
    pixels: readable under a small sheet, not dominating a large one)."""
    from ltxc.audio.spectrogram import spectrogram_image

    if not sample_rate or sample_rate <= 0:
        raise ValueError(f"audio needs a positive sample_rate, got {sample_rate}")
    width = sheet.shape[1]
    strip = spectrogram_image(_waveform(audio), int(sample_rate), size=(min(256, max(64, width // 8)), width))
    separator = np.full((SEPARATOR, width, 3), SEPARATOR_LEVEL, np.uint8)
    return np.concatenate([sheet, separator, strip])


def read_frames_file(path: str | Path) -> tuple[np.ndarray, float]:
    """(frames, fps) of a file: .safetensors exactly (float32 in [0, 1]); .mp4 / .gif / .png decoded to uint8.

    A .png reads as one frame with fps 0.0 (a still has no rate); a .gif's fps comes from its delays, so it is
    only as exact as hundredths of a second allow.
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="numpy") as handle:
            return handle.get_tensor("frames"), float(Fraction(handle.metadata()["fps"]))
    frames, durations = [], []
    with open_input(str(path)) as container:
        stream = video_stream(container)
        for frame in decoded_frames(container, stream):
            rgb = frame.reformat(format="rgb24", src_color_range=frame.color_range or None, dst_color_range="JPEG")
            frames.append(rgb.to_ndarray())
            durations.append((frame.duration or 0) * (frame.time_base or 0))
        if path.suffix.lower() == ".png":
            return np.stack(frames), 0.0
        shown = sum(durations, Fraction(0))
        fps = len(frames) / shown if all(durations) else stream.average_rate
    return np.stack(frames), float(fps)


def as_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """`frames` as a channels-last numpy array [F, H, W, 3], uint8 or float32 in [0, 1] (checked)."""
    if not isinstance(frames, np.ndarray):  # a torch tensor, on any device, in any float dtype (bf16 included)
        tensor = frames.detach().cpu()
        frames = tensor.float().numpy() if tensor.dtype.is_floating_point else tensor.numpy()
    shape = tuple(frames.shape)
    if len(shape) != 4 or 3 not in (shape[-1], shape[1]) or 0 in shape:
        raise ValueError(
            f"frames must be [F, H, W, 3] or [F, 3, H, W] with no empty axis, got shape {list(shape)} "
            "(one image: add a frame axis, e.g. image[None])"
        )
    if shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    if frames.dtype == np.uint8:
        return np.ascontiguousarray(frames)
    if not np.issubdtype(frames.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or floating in [0, 1], got dtype {frames.dtype}")
    frames = np.ascontiguousarray(frames, dtype=np.float32)
    low, high = float(frames.min()), float(frames.max())
    if not (low >= -1 / 255 and high <= 1 + 1 / 255):  # also catches NaN
        raise ValueError(
            f"float frames must be in [0, 1], got values from {low:g} to {high:g} "
            "(from [-1, 1], use (x + 1) / 2 and clamp)"
        )
    return np.clip(frames, 0.0, 1.0)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Channels-last frames from `as_frames` as uint8, floats rounded to the nearest level."""
    if frames.dtype == np.uint8:
        return frames
    return np.rint(frames * 255).astype(np.uint8)


def to_unit_float(frames: np.ndarray) -> np.ndarray:
    """Channels-last frames from `as_frames` as float32 in [0, 1]."""
    if frames.dtype == np.uint8:
        return frames.astype(np.float32) / np.float32(255)
    return frames


def write_wav(audio: np.ndarray | torch.Tensor, path: str | Path, sample_rate: int) -> Path:
    """Write a waveform [channels, samples] float in [-1, 1] (clipped) as 16-bit PCM .wav, atomically."""
    samples = _waveform(audio)
    pcm = np.round(np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").T.tobytes()  # interleaved

    def write(tmp: str) -> None:
        with wave.open(tmp, "wb") as out:
            out.setnchannels(samples.shape[0])
            out.setsampwidth(2)
            out.setframerate(int(sample_rate))
            out.writeframes(pcm)

    return atomic_write(Path(path), write)


def _waveform(audio: np.ndarray | torch.Tensor) -> np.ndarray:
    """A waveform as float32 [channels, samples], mono or stereo."""
    array = audio.detach().float().cpu().numpy() if hasattr(audio, "detach") else np.asarray(audio, np.float32)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[0] not in _LAYOUTS:
        raise ValueError(f"audio must be [channels, samples] with 1 or 2 channels, got shape {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def _sound_for(audio: np.ndarray | torch.Tensor, sample_rate: int | None, duration: Fraction) -> tuple[np.ndarray, int]:
    """The waveform at a rate AAC takes, trimmed or zero-padded to `duration` seconds: (fltp [C, S], rate)."""
    if not sample_rate or sample_rate <= 0:
        raise ValueError(f"audio needs a positive sample_rate, got {sample_rate}")
    samples, rate = _waveform(audio), int(sample_rate)
    if rate not in _AAC_RATES:
        samples, rate = _resample(samples, rate, _AAC_FALLBACK_RATE), _AAC_FALLBACK_RATE
    wanted = round(duration * rate)
    if samples.shape[1] >= wanted:
        return np.ascontiguousarray(samples[:, :wanted]), rate
    return np.pad(samples, ((0, 0), (0, wanted - samples.shape[1]))), rate


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """[C, S] float32 at `rate` -> at `target`, by FFmpeg's resampler."""
    layout = _LAYOUTS[samples.shape[0]]
    resampler = AudioResampler(format="fltp", layout=layout, rate=target)
    frame = AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
    frame.sample_rate = rate
    chunks = [f.to_ndarray() for f in (*resampler.resample(frame), *resampler.resample(None))]
    return np.concatenate(chunks, axis=1) if chunks else np.zeros((samples.shape[0], 0), np.float32)


def _sound_stream(container: OutputContainer, sound: tuple[np.ndarray, int]) -> AudioStream:
    """The container's AAC track (added before anything is muxed: the header is written with the first packet)."""
    samples, rate = sound
    stream = container.add_stream("aac", rate=rate)
    stream.layout, stream.bit_rate = _LAYOUTS[samples.shape[0]], _AAC_BIT_RATE
    return stream


def _encode_sound(container: OutputContainer, stream: AudioStream, sound: tuple[np.ndarray, int]) -> None:
    """Encode the waveform into its AAC track, in the encoder's frame size."""
    samples, rate = sound
    layout = _LAYOUTS[samples.shape[0]]
    size = stream.codec_context.frame_size or 1024
    for start in range(0, samples.shape[1], size):
        frame = AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, start : start + size]), format="fltp",
                                        layout=layout)  # fmt: skip
        frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
        container.mux(stream.encode(frame))
    container.mux(stream.encode(None))


def _write_mp4(pixels: np.ndarray, path: str, rate: Fraction, sound: tuple[np.ndarray, int] | None = None) -> None:
    height, width = pixels.shape[1:3]
    with av.open(path, "w", format="mp4", options=MP4_OPTIONS) as container:
        stream = add_video_stream(container, "libx264", rate=rate, size=(width, height), pix_fmt="yuv420p")
        track = None if sound is None else _sound_stream(container, sound)
        # Convert with the BT.709 matrix ourselves and say so in the stream: untagged files are read as BT.601
        # by some players and BT.709 by others, which shifts the colours.
        context = stream.codec_context
        context.colorspace, context.color_range = _BT709, ColorRange.MPEG
        context.color_primaries, context.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
        for index, picture in enumerate(pixels):
            frame = VideoFrame.from_ndarray(picture, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG"
            )
            frame.pts, frame.time_base = index, context.time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
        if track is not None and sound is not None:
            _encode_sound(container, track, sound)


def _write_gif(pixels: np.ndarray, path: str, rate: Fraction) -> None:
    height, width = pixels.shape[1:3]
    with av.open(path, "w", format="gif") as container:
        stream = add_video_stream(container, "gif", rate=rate, size=(width, height), pix_fmt="pal8")
        for frame in _paletted(pixels, stream.codec_context.time_base):
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _paletted(pixels: np.ndarray, time_base: Fraction) -> list[VideoFrame]:
    """The frames as pal8 with one palette for all: split -> palettegen (every frame) -> paletteuse."""
    height, width = pixels.shape[1:3]
    graph = av.filter.Graph()
    source = graph.add_buffer(width=width, height=height, format="rgb24", time_base=time_base)
    split, generate, use = graph.add("split"), graph.add("palettegen", stats_mode="full"), graph.add("paletteuse")
    sink = graph.add("buffersink")
    source.link_to(split)
    split.link_to(use, 0, 0)
    split.link_to(generate, 1, 0)
    generate.link_to(use, 0, 1)  # the palette is made at the end of the input, so paletteuse waits for it
    use.link_to(sink)
    graph.configure()
    for index, picture in enumerate(pixels):
        frame = VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts, frame.time_base = index, time_base
        source.push(frame)
    source.push(None)
    out = []
    while True:
        try:
            out.append(sink.pull())
        except av.error.EOFError:
            return out


def _png_bytes(image: np.ndarray) -> bytes:
    context = av.CodecContext.create("png", "w")
    context.width, context.height, context.pix_fmt = image.shape[1], image.shape[0], "rgb24"
    context.time_base = Fraction(1, 1)
    frame = VideoFrame.from_ndarray(image, format="rgb24")
    frame.pts = 0
    return b"".join(bytes(packet) for packet in [*context.encode(frame), *context.encode(None)])
