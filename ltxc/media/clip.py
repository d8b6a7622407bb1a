"""Read a conditioning video: a clip's first frames at a frame rate, as upright RGB uint8 at one size.

The frames are chosen in time as preprocessing chooses a target's (`select_frames`: frame k is the source frame
nearest k / fps) and decoded resized to cover the size and centre-cropped (`read_frames`). A clip with fewer
frames than asked for at that rate is refused ("too short"), never padded; every unusable input raises
`MediaError` with a short reason.
"""

from __future__ import annotations

import os

import numpy as np

from ltxc.media.decode import read_frames
from ltxc.media.errors import MediaError
from ltxc.media.probe import probe


def read_clip(path: str | os.PathLike[str], count: int, fps: float, size: tuple[int, int]) -> np.ndarray:
    """The first `count` frames at `fps` of a video (an image is one frame) as RGB uint8 [count, H, W, 3] at
    size = (width, height)."""
    width, height = size
    if width <= 0 or height <= 0 or count <= 0:
        raise ValueError(f"size and count must be positive, got {width}x{height}, {count} frame(s)")
    info = probe(os.fspath(path))  # not found, a directory, unreadable, no video: one reason each
    available = info.available_frames(fps)
    if available < count:
        what = "an image (1 frame)" if info.kind == "image" else f"{available} frame(s) at {fps:g} fps"
        raise MediaError(f"too short: it gives {what}, the video takes {count}")
    return read_frames(info, info.select_frames(fps, count).indices, size)
