"""A clip's sound over exactly its frames' time window, resampled, as float32 [channels, samples].

The window is `start` seconds after the video's first frame (the frame selection's `start`), `duration`
seconds long (frames / fps). Audio and video are aligned by their streams' timestamps; where the sound starts
later or ends earlier than the window, zeros fill in (counted in `AudioWindow.pad_start` / `pad_end`). The
decode streams: frames before the window are dropped as they come, and nothing after it is decoded, so memory
is flat in the clip's length. Channels stay as the source has them (`names`): mixing is the caller's rule.
"""

from __future__ import annotations

import contextlib
import os
from fractions import Fraction
from typing import Any

import av
import numpy as np
from attrs import frozen

from ltxc.media.container import ffmpeg_errors_logged, ffmpeg_reason, open_input, video_stream
from ltxc.media.errors import MediaError

_SEEK_AFTER = 2.0  # seconds: a window starting later than this is reached by a seek, not a decode from 0


@frozen
class AudioWindow:
    """The sound of one clip's window, at `rate`, in the source's channel layout."""

    samples: np.ndarray  # float32 [channels, round(duration * rate)]
    names: tuple[str, ...]  # PyAV's channel names, e.g. ("FL", "FR")
    rate: int
    codec: str
    source_rate: int
    layout: str
    pad_start: int  # zero samples before the sound begins
    pad_end: int  # zero samples after it ends

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source."""
        return {
            "codec": self.codec,
            "rate": self.source_rate,
            "channels": len(self.names),
            "layout": self.layout,
            "pad_start": self.pad_start,
            "pad_end": self.pad_end,
        }


def read_audio(path: str | os.PathLike[str], start: float, duration: float, rate: int) -> AudioWindow | None:
    """The sound of [start, start + duration) seconds after the first video frame, at `rate`; None when the file
    has no audio stream; MediaError("audio: ...") when its audio cannot be decoded."""
    path = os.fspath(path)
    count = round(duration * rate)
    try:
        with open_input(path) as container, ffmpeg_errors_logged():
            if not container.streams.audio:
                return None
            stream = container.streams.audio[0]
            origin = _start_time(video_stream(container)) if container.streams.video else 0.0
            window = origin + start
            return _decode(container, stream, window, count, rate)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:
        raise MediaError(f"audio: cannot decode ({ffmpeg_reason(error)})") from None


def _start_time(stream: Any) -> float:
    """A stream's first timestamp in seconds (0 where the container does not say)."""
    if stream.start_time is None:
        return 0.0
    return float(stream.start_time * Fraction(stream.time_base))


def _decode(container: Any, stream: Any, window: float, count: int, rate: int) -> AudioWindow:
    """Decode from (at most) the window's start, keeping only the window's samples."""
    context = stream.codec_context
    codec, source_rate = context.codec.canonical_name, int(context.sample_rate or 0)
    layout = context.layout.name if context.layout else f"{context.channels} channels"
    names = tuple(channel.name for channel in context.layout.channels) if context.layout else ()
    if names and all(name == "NONE" for name in names):  # an unspecified layout: FFmpeg's default order
        # a count FFmpeg has no default for stays unnamed: no downmix rule applies, the channels are averaged
        with contextlib.suppress(ValueError, TypeError, av.FFmpegError):
            names = tuple(channel.name for channel in av.AudioLayout(f"{len(names)}c").channels)
    if not source_rate or not names:
        raise MediaError(f"audio: unusable stream ({codec}, {source_rate} Hz, {layout})")
    if window > _SEEK_AFTER:
        container.seek(int((window - 1.0) / Fraction(stream.time_base)), stream=stream, backward=True)
    out = np.zeros((len(names), count), dtype=np.float32)
    resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
    first: float | None = None  # the time of resampled sample 0
    produced = 0  # resampled samples so far
    lowest, highest = count, 0  # the window's samples that the sound covered
    for frame in _frames(container, stream):
        if first is None:
            if frame is _FLUSH:
                break
            if frame.pts is None:
                raise MediaError("audio: frames carry no timestamps")
            first = float(frame.pts * Fraction(frame.time_base))
        offset = round((first - window) * rate)  # window index of resampled sample 0
        for chunk in resampler.resample(None if frame is _FLUSH else frame):
            data = chunk.to_ndarray().reshape(len(names), -1)
            begin = offset + produced
            produced += data.shape[1]
            lo, hi = max(begin, 0), min(begin + data.shape[1], count)
            if lo < hi:
                out[:, lo:hi] = data[:, lo - begin : hi - begin]
                lowest, highest = min(lowest, lo), max(highest, hi)
        if offset + produced >= count:
            break
    if highest <= lowest:  # no sound inside the window at all
        lowest, highest = count, count
    return AudioWindow(out, names, rate, codec, source_rate, layout, lowest, count - highest)


_FLUSH: Any = object()


def _frames(container: Any, stream: Any) -> Any:
    """The stream's decoded frames, then `_FLUSH` (so the resampler hands over what it holds). Packets that
    decode to nothing at all (FFmpeg's decoders drop garbage silently) are a broken stream, not silence."""
    packets = frames = 0
    try:
        for packet in container.demux(stream):
            packets += 1 if packet.size else 0
            for frame in packet.decode():
                frames += 1
                yield frame
    except av.FFmpegError as error:
        raise MediaError(f"audio: decode failed after {frames} frame(s) ({ffmpeg_reason(error)})") from None
    if not frames:  # an empty track cannot be told from one whose packets the demuxer could not even find
        name = stream.codec_context.name
        raise MediaError(f"audio: the {name} stream decodes to nothing ({packets} packet(s); corrupt or empty)")
    yield _FLUSH
