"""Open media files with PyAV, turning every way a file can be unusable into a MediaError."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

import av
import av.logging
from av.container import InputContainer
from av.video.frame import VideoFrame
from av.video.stream import VideoStream

from ltxc.media.errors import MediaError


def check_file(path: str) -> None:
    """Raise MediaError unless `path` is a non-empty regular file this process can read."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise MediaError("not found") from None
    except OSError as error:
        raise MediaError(f"cannot read: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise MediaError("is a directory")
    if not stat.S_ISREG(info.st_mode):
        raise MediaError("not a regular file")
    if info.st_size == 0:
        raise MediaError("empty file")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except PermissionError:
        raise MediaError("permission denied") from None
    except OSError as error:
        raise MediaError(f"cannot read: {error.strerror}") from None


def ffmpeg_reason(error: Exception) -> str:
    """One line from an FFmpeg error: its message, plus FFmpeg's own log line when it logged one."""
    message = getattr(error, "strerror", None) or str(error)
    log = getattr(error, "log", None)  # (level, component, text) of FFmpeg's last error log line
    if log and log[2].strip() and log[2].strip() not in message:
        message = f"{message} ({log[2].strip()})"
    return message


@contextmanager
def ffmpeg_errors_logged() -> Iterator[None]:
    """Let FFmpeg attach its last error log line to exceptions (PyAV keeps FFmpeg silent by default)."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture():  # capture, so nothing is printed to the user's terminal
            yield
    finally:
        av.logging.set_level(previous)


@contextmanager
def open_input(path: str) -> Iterator[InputContainer]:
    """Open `path` for reading; MediaError("cannot open: ...") if FFmpeg cannot parse it."""
    check_file(path)
    with ffmpeg_errors_logged():
        try:
            container = av.open(path, metadata_errors="ignore")
        except (av.FFmpegError, OSError, UnicodeDecodeError) as error:
            raise MediaError(f"cannot open: {ffmpeg_reason(error)}") from None
    try:
        yield container
    finally:
        container.close()


def video_stream(container: InputContainer) -> VideoStream:
    """The first real video stream (cover art in audio files does not count), else MediaError."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    if container.streams.audio:
        raise MediaError("no video stream (audio only)")
    raise MediaError("no video stream")


def decoded_frames(container: InputContainer, stream: VideoStream) -> Iterator[VideoFrame]:
    """Every frame of `stream` in display order, decoded one packet at a time."""
    for packet in container.demux(stream):
        yield from packet.decode()  # the demuxer's last, empty packet flushes frames held for reordering
