"""Resolution and frame-count buckets derived from the geometry, and which bucket a clip goes to.

Sizes are (width, height) in pixels, as users write them (`768x512`); aspects are width / height.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from ltxc.errors import UserError
from ltxc.geometry import Geometry, ShapeError

DEFAULT_ASPECTS: tuple[float, ...] = (1.0, 4 / 3, 3 / 4, 16 / 9, 9 / 16, 3 / 2, 2 / 3)
# Exact aspects are often only reachable far below the budget (16:9 in multiples of 32 within
# 768x512 pixels is 512x288, 37% of it), so a size this close to the aspect counts as a match and
# the largest such size wins; resize-to-cover then crops at most this fraction of one side.
DEFAULT_ASPECT_TOLERANCE = 0.02


def aspect_ratio(aspect: float) -> tuple[int, int]:
    """`aspect` as a fraction p/q with q <= 10000: exact for 16/9 and the like, and small enough for int64."""
    fraction = Fraction(aspect).limit_denominator(10_000)
    return fraction.numerator, fraction.denominator


def aspect_error(width: int, height: int, aspect: float) -> float:
    """How far `width / height` is from `aspect`, as a fraction: 0 exact, 0.02 for 2% wider or narrower."""
    p, q = aspect_ratio(aspect)
    wide, tall = width * q, height * p
    # the larger cross product over the smaller: symmetric (2:1 and 1:2 are equally far from 1:1), and one
    # correctly rounded division of exact integers, so equal ratios tie exactly and numpy agrees bit for bit
    return max(wide, tall) / min(wide, tall) - 1


def best_size(
    geometry: Geometry, pixels: int, aspect: float, tolerance: float = DEFAULT_ASPECT_TOLERANCE
) -> tuple[int, int]:
    """The (width, height) for one aspect: the largest area within `tolerance` of it, else the closest aspect."""
    m = geometry.resolution_multiple
    if pixels < m * m:
        raise ShapeError(f"a budget of {pixels} pixels is below the smallest valid size, {m}x{m} (= {m * m} pixels)")
    if not (math.isfinite(aspect) and 0.01 <= aspect <= 100):
        raise UserError(f"aspect ratio {aspect} must be a number from 0.01 to 100 (width / height)")
    # every width, and per width the few heights that can win: the closest multiples on either side of
    # width / aspect, the largest within tolerance, and the largest within budget (one step around each,
    # so rounding at a boundary cannot hide the winner)
    w = (np.arange(1, pixels // (m * m) + 1) * m)[:, None]
    top = pixels // (w * m)
    guesses = np.hstack([w / (aspect * m), w * (1 + tolerance) / (aspect * m), top])
    centres = np.minimum(guesses, top).astype(np.int64)  # capped first: an extreme aspect must not overflow
    j = np.clip(np.concatenate([centres - 1, centres, centres + 1], axis=1), 1, top)
    w, h = np.broadcast_to(w, j.shape).ravel(), (j * m).ravel()
    p, q = aspect_ratio(aspect)
    wide, tall = w * q, h * p
    error = np.maximum(wide, tall) / np.minimum(wide, tall) - 1  # `aspect_error`, for arrays
    area = w * h
    matched = error <= tolerance
    # a match: the largest area, then the closest aspect; no match: the closest aspect, then the largest area
    first, second = (-area, error) if matched.any() else (error, -area)
    order = np.lexsort((-w, second, first, ~matched))  # lexsort sorts by the last key first; then the wider
    return int(w[order[0]]), int(h[order[0]])


def resolution_buckets(
    geometry: Geometry,
    pixels: int,
    aspects: Sequence[float] = DEFAULT_ASPECTS,
    *,
    tolerance: float = DEFAULT_ASPECT_TOLERANCE,
) -> list[tuple[int, int]]:
    """One valid (width, height) per aspect within `pixels` (see `best_size`), deduplicated and sorted."""
    if not aspects:
        raise UserError("no aspect ratios given for the resolution buckets")
    return sorted({best_size(geometry, pixels, aspect, tolerance) for aspect in aspects})


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect is closest to `width / height` (in log ratio); ties: the larger area, then the first."""
    if width <= 0 or height <= 0:
        raise ShapeError(f"a {width}x{height} frame has no aspect ratio")
    if not buckets:
        raise ValueError("no buckets to choose from")

    def distance(i: int) -> tuple[Fraction, int, int]:
        bw, bh = buckets[i]  # exact: the larger of the two cross products over the smaller
        return Fraction(max(bw * height, bh * width), min(bw * height, bh * width)), -bw * bh, i

    return buckets[min(range(len(buckets)), key=distance)]


def parse_resolution(text: str, geometry: Geometry) -> tuple[int, int]:
    """`"768x512"` (width x height) -> (768, 512), checked against the resolution rule."""
    m = geometry.resolution_multiple
    match = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if match is None:
        raise UserError(f"resolution {text!r} is not WIDTHxHEIGHT in pixels, e.g. {16 * m}x{12 * m}")
    width, height = int(match[1]), int(match[2])
    bad = [(name, v) for name, v in (("width", width), ("height", height)) if v < m or v % m]
    if bad:
        fixes = "; ".join(f"{name} {v} -> {_neighbours(v, m)}" for name, v in bad)
        raise ShapeError(
            f"resolution {width}x{height} does not fit the model: width and height must be multiples "
            f"of {m} pixels ({fixes})"
        )
    return width, height


def _neighbours(value: int, m: int) -> str:
    below = value - value % m
    return f"{m}" if below < m else f"{below} or {below + m}"


def frame_buckets(geometry: Geometry, max_frames: int, explicit: Sequence[int] | None = None) -> list[int]:
    """Frame counts to bucket clips into: every valid count <= `max_frames`, or the valid `explicit` ones."""
    rule = geometry.frame_rule
    if explicit is None:
        counts = rule.valid_counts(max_frames)
    else:
        for frames in explicit:
            rule.check(frames)
        counts = sorted({frames for frames in explicit if frames <= max_frames})  # the cap wins over a request
    if not counts:
        asked = "" if explicit is None else f" among {sorted(set(explicit))}"
        raise ShapeError(
            f"no valid frame count{asked} is <= the maximum of {max_frames} "
            f"(the model takes {rule.describe()} frames, at least {rule.minimum})"
        )
    return counts


def pick_frames(available: int, buckets: Sequence[int]) -> int | None:
    """The largest bucket <= `available` frames, or None when the clip is shorter than every bucket."""
    return max((b for b in buckets if b <= available), default=None)
