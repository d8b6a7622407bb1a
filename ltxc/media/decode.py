"""Decode chosen frames of a media file to upright RGB at one output size, streaming.

Frames are decoded in order and dropped at once unless requested; a requested frame is resized and cropped
the moment it is decoded, so memory follows the output, never the clip's length or resolution. Decoding
stops after the last requested frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import av
import numpy as np
from av.video.frame import VideoFrame

from ltxc.media.container import decoded_frames, ffmpeg_errors_logged, ffmpeg_reason, open_input, video_stream
from ltxc.media.errors import MediaError
from ltxc.media.probe import MediaInfo


def cover_crop(src_w: int, src_h: int, dst_w: int, dst_h: int) -> tuple[int, int, int, int]:
    """Scale (w, h) that makes a src_w x src_h picture cover dst_w x dst_h, and the centred crop's left, top."""
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"sizes must be positive, got {src_w}x{src_h} -> {dst_w}x{dst_h}")
    scale = max(dst_w / src_w, dst_h / src_h)
    # max() guards the side that scale was chosen for against rounding a hair below the target
    scaled_w = max(dst_w, round(src_w * scale))
    scaled_h = max(dst_h, round(src_h * scale))
    return scaled_w, scaled_h, (scaled_w - dst_w) // 2, (scaled_h - dst_h) // 2


def read_frames(info: MediaInfo, indices: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """Frames `indices` of `info` as upright RGB uint8 [F, H, W, 3] at size = (width, height), cover + centre crop."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}x{height}")
    count = len(info.frame_times)
    for index in indices:
        if not 0 <= index < count:
            raise ValueError(f"frame index {index} is out of range for {info.path} ({count} frames)")
    out = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    if not indices:
        return out
    wanted: dict[int, list[int]] = {}  # source frame -> output positions (an index may repeat)
    for position, index in enumerate(indices):
        wanted.setdefault(index, []).append(position)
    last = max(wanted)
    index = -1
    with open_input(info.path) as container, ffmpeg_errors_logged():
        stream = video_stream(container)
        stream.thread_type = "AUTO"  # frame + slice threads; output order is unchanged
        try:
            for frame in decoded_frames(container, stream):
                index += 1
                if index in wanted:
                    out[wanted[index]] = to_rgb(frame, info, size)
                if index == last:
                    break
        except (av.FFmpegError, ValueError) as error:  # ValueError: a frame swscale cannot convert
            raise MediaError(f"decode failed at frame {index + 1}: {ffmpeg_reason(error)}") from None
    if index < last:
        after = f"t={info.frame_times[index]:.2f}s" if index >= 0 else "the start"
        raise MediaError(f"truncated: frames after {after} are missing (frame {last} was requested)")
    return out


def to_rgb(frame: VideoFrame, info: MediaInfo, size: tuple[int, int]) -> np.ndarray:
    """One decoded frame as upright RGB uint8 [H, W, 3]: resized to cover `size`, centre-cropped, rotated."""
    width, height = size
    turned = info.rotation in (90, 270)
    # Resize and crop in the stored orientation, then rotate: the target there has its sides swapped.
    target_w, target_h = (height, width) if turned else (width, height)
    shown_w, shown_h = (info.height, info.width) if turned else (info.width, info.height)  # before rotation
    scaled_w, scaled_h, left, top = cover_crop(shown_w, shown_h, target_w, target_h)
    shrinking = scaled_w * scaled_h <= frame.width * frame.height
    rgb = frame.reformat(
        width=scaled_w,
        height=scaled_h,
        format="rgb24",  # also drops alpha and widens gray / narrows 10-bit
        interpolation="AREA" if shrinking else "BICUBIC",
        src_color_range=frame.color_range or None,  # explicit: PyAV's default here has changed across versions
        dst_color_range="JPEG",  # RGB is full range
    ).to_ndarray()
    rgb = rgb[top : top + target_h, left : left + target_w]
    # np.rot90 turns counter-clockwise for positive k; the rotation is clockwise.
    return np.ascontiguousarray(np.rot90(rgb, k=-(info.rotation // 90)))
