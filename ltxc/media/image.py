"""Read a conditioning image: a still through PIL, or a video's first frame through the PyAV readers, as upright RGB
uint8 at one size, resized to cover it and centre-cropped as preprocessing does (`cover_crop`: area averaging when
shrinking, bicubic when enlarging). Every unusable input raises `MediaError` with a short reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ltxc.media.container import check_file
from ltxc.media.decode import cover_crop, read_frames
from ltxc.media.errors import MediaError
from ltxc.media.probe import VIDEO_EXTENSIONS, probe


def read_image(path: str | os.PathLike[str], size: tuple[int, int]) -> np.ndarray:
    """A still, or a video's first frame, as upright RGB uint8 [H, W, 3] at size = (width, height)."""
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be positive, got {width}x{height}")
    path = os.fspath(path)
    check_file(path)  # not found, a directory, empty, unreadable: one reason each
    if Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        return read_frames(probe(path), [0], size)[0]
    return _still(path, size)


def _still(path: str, size: tuple[int, int]) -> np.ndarray:
    """A still through PIL: upright by its EXIF orientation, RGB (alpha dropped), covered and centre-cropped."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    width, height = size
    try:
        with Image.open(path) as opened:
            picture = ImageOps.exif_transpose(opened).convert("RGB")
    except UnidentifiedImageError:
        raise MediaError("cannot open: not an image PIL can read") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise MediaError(f"cannot open: {error}") from None
    scaled_w, scaled_h, left, top = cover_crop(picture.width, picture.height, width, height)
    if (scaled_w, scaled_h) != picture.size:
        shrinking = scaled_w * scaled_h <= picture.width * picture.height
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
        picture = picture.resize((scaled_w, scaled_h), resample)
    picture = picture.crop((left, top, left + width, top + height))
    return np.ascontiguousarray(np.asarray(picture, dtype=np.uint8))
