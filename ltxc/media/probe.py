"""Probe a media file cheaply: size, rotation and every frame's presentation time, without decoding the clip.

Timestamps come from the demuxed packets (sorted, because B-frames arrive in decode order); only the first
frame is decoded, for the rotation and pixel format. Streams without packet timestamps (raw elementary
streams) fall back to one decode pass. Nothing is held but one number per frame.
"""

from __future__ import annotations

import itertools
import os
import statistics
from fractions import Fraction
from typing import Literal

import av
from attrs import frozen
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from ltxc.media import frames
from ltxc.media.container import decoded_frames, ffmpeg_errors_logged, ffmpeg_reason, open_input, video_stream
from ltxc.media.errors import MediaError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})  # probed as one-frame media
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".gif", ".mpg", ".mpeg", ".ts", ".wmv"})


@frozen
class MediaInfo:
    """What a media file holds. Sizes are display sizes (after rotation); times are seconds from frame 0."""

    path: str
    kind: Literal["video", "image"]
    width: int  # display width, after rotation
    height: int
    rotation: int  # clockwise degrees (0/90/180/270) that turn the decoded picture upright
    frame_times: tuple[float, ...]  # presentation time of every frame, display order, first 0.0, ascending
    end_time: float  # last frame time + one frame interval; 0.0 for images
    avg_fps: float  # len(frame_times) / end_time; 0.0 for images
    codec: str
    pix_fmt: str

    def available_frames(self, fps: float, start: float = 0.0) -> int:
        """Frames this media gives at `fps` from `start`; an image is always one frame."""
        if self.kind == "image":
            return 1
        return frames.available_frames(self.end_time, fps=fps, start=start)

    def select_frames(self, fps: float, count: int, start: float = 0.0) -> frames.FrameSelection:
        """`count` frames at `fps` from `start` (see frames.select_frames); an image gives its one frame."""
        if self.kind == "image":
            return frames.select_frames(self.frame_times, fps=fps, start=0.0, count=count, end_time=1 / fps)
        return frames.select_frames(self.frame_times, fps=fps, start=start, count=count, end_time=self.end_time)


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Describe the media file at `path`; MediaError (and no other exception) if it cannot be used."""
    path = os.fspath(path)
    is_image = os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS
    try:
        with open_input(path) as container, ffmpeg_errors_logged():
            stream = video_stream(container)
            times, first = _scan(container, stream, is_image)
            if times is None:  # packets carry no timestamps: decode once to count frames
                times = _decoded_times(path, stream)
            # Read everything from the stream while it is open: it points into the container's memory.
            rotation = _rotation(first, stream)
            width, height = _display_size(first, stream, rotation)
            codec, pix_fmt = stream.codec_context.name, first.format.name
            interval = _frame_interval(times, stream)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, RuntimeError) as error:  # anything PyAV raises on bad files
        raise MediaError(f"cannot read: {ffmpeg_reason(error)}") from None
    if is_image:
        return MediaInfo(path, "image", width, height, rotation, (0.0,), 0.0, 0.0, codec, pix_fmt)
    end_time = times[-1] + interval
    return MediaInfo(path, "video", width, height, rotation, times, end_time, len(times) / end_time, codec, pix_fmt)


def _scan(
    container: InputContainer, stream: VideoStream, is_image: bool
) -> tuple[tuple[float, ...] | None, VideoFrame]:
    """One demux pass: every packet's timestamp, decoding only until the first frame appears."""
    pts: list[int | None] = []
    discarded = 0
    first: VideoFrame | None = None
    decode_error: Exception | None = None
    for packet in container.demux(stream):
        if packet.size and packet.is_discard:  # dropped by an edit list: decoded but never shown
            discarded += 1
        elif packet.size:
            pts.append(packet.pts)
        if first is None and decode_error is None:
            try:
                decoded = packet.decode()  # the final empty packet flushes the decoder
            except av.FFmpegError as error:
                decode_error = error
            else:
                first = decoded[0] if decoded else None
        if is_image and first is not None:
            break
    expected = stream.frames - discarded  # the container's frame count, 0 where it has none
    if not is_image and expected > len(pts) and all(p is not None for p in pts):
        seen = _times(pts, stream)
        last = f"t={seen[-1]:.2f}s" if seen else "the start"
        raise MediaError(f"truncated: {len(pts)} of {expected} frames present, frames after {last} are missing")
    if first is None:
        if not pts:
            raise MediaError("no frames")
        reason = ffmpeg_reason(decode_error) if decode_error else "no picture decoded"
        raise MediaError(f"cannot decode image: {reason}" if is_image else f"decode failed at frame 0: {reason}")
    if is_image:
        return (0.0,), first
    if any(p is None for p in pts):
        return None, first
    return _times(pts, stream), first


def _times(pts: list[int | None], stream: VideoStream) -> tuple[float, ...]:
    """Presentation times in seconds from the first frame, ascending."""
    ordered = sorted(p for p in pts if p is not None)
    if not ordered:
        return ()
    base = Fraction(stream.time_base)
    return tuple(float((p - ordered[0]) * base) for p in ordered)


def _decoded_times(path: str, stream: VideoStream) -> tuple[float, ...]:
    """Frame times from a full decode pass, for streams whose packets have no timestamps."""
    rate = stream.guessed_rate or stream.average_rate
    pts: list[int | None] = []
    with open_input(path) as container:
        video = video_stream(container)
        try:
            for frame in decoded_frames(container, video):
                pts.append(frame.pts)
        except av.FFmpegError as error:
            raise MediaError(f"decode failed at frame {len(pts)}: {ffmpeg_reason(error)}") from None
    if not pts:
        raise MediaError("no frames")
    if all(p is not None for p in pts):
        return _times(pts, stream)
    if not rate:
        raise MediaError("no timestamps and no frame rate")
    return tuple(float(Fraction(k) / Fraction(rate)) for k in range(len(pts)))


def _frame_interval(times: tuple[float, ...], stream: VideoStream) -> float:
    """How long one frame shows: the median interval, else 1 / the stream's frame rate."""
    steps = [b - a for a, b in itertools.pairwise(times) if b > a]
    if steps:
        return statistics.median(steps)
    rate = stream.guessed_rate or stream.average_rate
    return 1 / float(rate) if rate else 0.04  # a single still frame with no rate: show it for 1/25 s


def _rotation(frame: VideoFrame, stream: VideoStream) -> int:
    """Clockwise degrees that turn the decoded picture upright, a multiple of 90."""
    # frame.rotation is the display matrix's counter-clockwise angle; upright needs the opposite turn.
    clockwise = -float(frame.rotation or 0)
    if not clockwise:
        try:  # older muxers wrote the clockwise angle as a 'rotate' tag instead of a display matrix
            clockwise = float(stream.metadata.get("rotate", 0))
        except ValueError:
            clockwise = 0.0
    return round(clockwise / 90) % 4 * 90


def _display_size(frame: VideoFrame, stream: VideoStream, rotation: int) -> tuple[int, int]:
    """Width and height as shown: non-square pixels stretched, then rotated."""
    width, height = frame.width, frame.height
    aspect = stream.sample_aspect_ratio  # None where the file does not say (square pixels)
    if aspect and aspect > 0 and aspect != 1:
        width = max(1, round(width * aspect))
    return (height, width) if rotation in (90, 270) else (width, height)
