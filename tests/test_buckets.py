"""Property tests for `ltxc.data.buckets`: resolution buckets against a brute-force search over every valid
size within the pixel budget, the nearest-aspect choice, `--resolution` parsing, frame-count buckets
and the frame pick, over geometries with resolution multiples of 8, 16, 32 and 64 and random frame rules.

Run: `pytest -q tests/test_buckets.py` (a few seconds; CPU only).
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ltxc.data.buckets import (
    DEFAULT_ASPECT_TOLERANCE,
    DEFAULT_ASPECTS,
    aspect_error,
    best_size,
    frame_buckets,
    nearest_bucket,
    parse_resolution,
    pick_frames,
    resolution_buckets,
)
from ltxc.errors import UserError
from ltxc.geometry import FrameRule, Geometry, ShapeError

PROPERTY = settings(max_examples=80, deadline=None)
TIE = 1e-12  # log errors closer than this are the same aspect, up to rounding


@st.composite
def geometries(draw: st.DrawFn) -> Geometry:
    multiple = draw(st.integers(1, 16))
    rule = FrameRule(multiple, draw(st.integers(0, multiple - 1)))
    return Geometry(4, 8, 4, rule, draw(st.sampled_from([8, 16, 32, 64])), (1, 1, 1), "tokens")


# small fractions, so |log| distances that tie in exact arithmetic are the only near-ties
simple_aspects = st.sampled_from(DEFAULT_ASPECTS) | st.builds(
    lambda p, q: p / q, st.integers(1, 25), st.integers(1, 25)
)
aspects = simple_aspects | st.floats(0.2, 5.0)
tolerances = st.sampled_from([0.0, DEFAULT_ASPECT_TOLERANCE, 0.05]) | st.floats(0.0, 0.1)


@st.composite
def small_budgets(draw: st.DrawFn) -> tuple[Geometry, int]:
    """A geometry and a budget of at most 40 squares of its multiple: small enough to list every size."""
    geometry = draw(geometries())
    m = geometry.resolution_multiple
    return geometry, draw(st.integers(m * m, 40 * m * m))


def all_sizes(m: int, pixels: int) -> list[tuple[int, int]]:
    """Every (width, height) in multiples of `m` within `pixels`."""
    return [(w, h) for w in range(m, pixels // m + 1, m) for h in range(m, pixels // w + 1, m)]


def log_error(size: tuple[int, int], aspect: float) -> float:
    return abs(math.log(size[0] / size[1]) - math.log(aspect))


# -- resolution buckets -----------------------------------------------------------------------------


@PROPERTY
@given(small_budgets(), simple_aspects)
def test_exact_rule_is_closest_aspect_then_largest_area(budget: tuple[Geometry, int], aspect: float):
    """With no tolerance: the closest aspect of all valid sizes in the budget, and the largest among those."""
    geometry, pixels = budget
    sizes = all_sizes(geometry.resolution_multiple, pixels)
    chosen = best_size(geometry, pixels, aspect, tolerance=0.0)
    assert chosen in sizes
    closest = min(log_error(s, aspect) for s in sizes)
    assert log_error(chosen, aspect) <= closest + TIE
    assert math.prod(chosen) == max(math.prod(s) for s in sizes if log_error(s, aspect) <= closest + TIE)


@PROPERTY
@given(small_budgets(), aspects, tolerances)
def test_tolerant_rule_matches_brute_force(budget: tuple[Geometry, int], aspect: float, tolerance: float):
    """Within tolerance: the largest area (then the closest aspect, then the wider); else the closest aspect."""
    geometry, pixels = budget
    sizes = all_sizes(geometry.resolution_multiple, pixels)
    error = {s: aspect_error(*s, aspect) for s in sizes}
    matched = [s for s in sizes if error[s] <= tolerance]
    if matched:
        expected = min(matched, key=lambda s: (-math.prod(s), error[s], -s[0]))
    else:
        expected = min(sizes, key=lambda s: (error[s], -math.prod(s), -s[0]))
    assert best_size(geometry, pixels, aspect, tolerance) == expected


@PROPERTY
@given(
    st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    st.tuples(st.integers(1, 4000), st.integers(1, 4000)),
    aspects,
)
def test_aspect_error_orders_like_log_distance(a: tuple[int, int], b: tuple[int, int], aspect: float):
    """`aspect_error` avoids logs so numpy and Python agree bit for bit; it must still rank like |log ratio|."""
    assume(abs(log_error(a, aspect) - log_error(b, aspect)) > 1e-9)
    assert (aspect_error(*a, aspect) < aspect_error(*b, aspect)) == (log_error(a, aspect) < log_error(b, aspect))
    assert aspect_error(*a, a[0] / a[1]) == pytest.approx(0, abs=1e-12)


@PROPERTY
@given(geometries(), st.integers(1, 1024 * 1024), st.lists(aspects, min_size=1, max_size=8))
def test_every_bucket_obeys_the_rule_and_the_budget(geometry: Geometry, pixels: int, chosen_aspects: list[float]):
    m = geometry.resolution_multiple
    if pixels < m * m:
        with pytest.raises(ShapeError, match=f"{m}x{m}"):
            resolution_buckets(geometry, pixels, chosen_aspects)
        return
    buckets = resolution_buckets(geometry, pixels, chosen_aspects)
    assert buckets == sorted(set(buckets))
    assert 1 <= len(buckets) <= len(chosen_aspects)
    for width, height in buckets:
        geometry.check_resolution(height, width)  # raises when a size breaks the rule
        assert width * height <= pixels
    assert set(buckets) == {best_size(geometry, pixels, a) for a in chosen_aspects}


def test_default_buckets_fill_the_budget():
    """Pinned: 16:9 in multiples of 32 within 768x512 is 512x288 exactly, or 800x448 within 2%."""
    geometry = Geometry(4, 8, 4, FrameRule(8, 1), 32)
    assert best_size(geometry, 768 * 512, 16 / 9, tolerance=0.0) == (512, 288)
    assert best_size(geometry, 768 * 512, 16 / 9) == (800, 448)
    buckets = resolution_buckets(geometry, 768 * 512)
    assert (768, 512) in buckets and (512, 768) in buckets and (608, 608) in buckets
    assert min(w * h for w, h in buckets) >= 0.85 * 768 * 512


def test_bad_aspects_are_user_errors():
    geometry = Geometry(4, 8, 4, FrameRule(8, 1), 32)
    for bad in (0.0, -1.0, 0.001, 1000.0, math.inf, math.nan):
        with pytest.raises(UserError, match=r"from 0\.01 to 100"):
            resolution_buckets(geometry, 512 * 512, [bad])
    with pytest.raises(UserError, match="no aspect ratios"):
        resolution_buckets(geometry, 512 * 512, [])


# -- nearest bucket ---------------------------------------------------------------------------------


@PROPERTY
@given(
    st.integers(1, 4000),
    st.integers(1, 4000),
    st.lists(st.tuples(st.integers(1, 64), st.integers(1, 64)).map(lambda s: (s[0] * 16, s[1] * 16)), min_size=1),
)
def test_nearest_bucket_is_the_closest_aspect(width: int, height: int, buckets: list[tuple[int, int]]):
    chosen = nearest_bucket(width, height, buckets)
    aspect = width / height
    closest = min(log_error(b, aspect) for b in buckets)
    assert log_error(chosen, aspect) <= closest + TIE
    ties = [b for b in buckets if log_error(b, aspect) <= closest + TIE]
    largest = max(math.prod(b) for b in ties)
    assert chosen == next(b for b in ties if math.prod(b) == largest)  # the larger area, then the first


def test_nearest_bucket_ties():
    assert nearest_bucket(500, 500, [(640, 480), (480, 640)]) == (640, 480)  # equally far: the first
    assert nearest_bucket(500, 500, [(640, 480), (480, 640), (768, 1024)]) == (768, 1024)  # the larger
    assert nearest_bucket(1920, 1080, [(512, 512), (800, 448), (448, 800)]) == (800, 448)
    with pytest.raises(ShapeError):
        nearest_bucket(0, 10, [(32, 32)])


# -- --resolution -----------------------------------------------------------------------------------


@PROPERTY
@given(geometries(), st.integers(1, 64), st.integers(1, 64), st.sampled_from(["x", "X", " x ", "×"]))
def test_parse_resolution_accepts_multiples(geometry: Geometry, i: int, j: int, sep: str):
    m = geometry.resolution_multiple
    assert parse_resolution(f"{i * m}{sep}{j * m}", geometry) == (i * m, j * m)


@PROPERTY
@given(geometries(), st.integers(0, 4096), st.integers(0, 4096))
def test_parse_resolution_rejects_non_multiples(geometry: Geometry, width: int, height: int):
    m = geometry.resolution_multiple
    bad = [v for v in (width, height) if v < m or v % m]
    assume(bad)
    with pytest.raises(ShapeError) as info:
        parse_resolution(f"{width}x{height}", geometry)
    message = str(info.value)
    assert f"multiples of {m} pixels" in message and f"{width}x{height}" in message
    for v in bad:  # the nearest valid sizes on either side
        below = v - v % m
        assert (f"{below} or {below + m}" if below >= m else f"-> {m}") in message


@pytest.mark.parametrize("text", ["768", "768x", "x512", "axb", "768x512x3", "-768x512", "768.0x512", ""])
def test_parse_resolution_rejects_bad_format(text: str):
    geometry = Geometry(4, 8, 4, FrameRule(8, 1), 32)
    with pytest.raises(UserError, match=r"WIDTHxHEIGHT.*512x384"):
        parse_resolution(text, geometry)


# -- frame buckets ----------------------------------------------------------------------------------


@PROPERTY
@given(geometries(), st.integers(0, 300))
def test_default_frame_buckets_are_every_valid_count(geometry: Geometry, max_frames: int):
    rule = geometry.frame_rule
    valid = [n for n in range(1, max_frames + 1) if rule.is_valid(n)]
    if not valid:
        with pytest.raises(ShapeError, match=re.escape(rule.describe())):
            frame_buckets(geometry, max_frames)
        return
    assert frame_buckets(geometry, max_frames) == valid


@PROPERTY
@given(geometries(), st.integers(0, 300), st.lists(st.integers(1, 400), min_size=1, max_size=6))
def test_explicit_frame_buckets_are_checked_and_capped(geometry: Geometry, max_frames: int, explicit: list[int]):
    rule = geometry.frame_rule
    if not all(rule.is_valid(n) for n in explicit):
        with pytest.raises(ShapeError, match="not a valid count"):
            frame_buckets(geometry, max_frames, explicit)
        return
    kept = sorted({n for n in explicit if n <= max_frames})
    if not kept:
        with pytest.raises(ShapeError, match=f"maximum of {max_frames}"):
            frame_buckets(geometry, max_frames, explicit)
        return
    buckets = frame_buckets(geometry, max_frames, explicit)
    assert buckets == kept
    assert all(rule.is_valid(n) and n <= max_frames for n in buckets)


@PROPERTY
@given(st.integers(0, 300), st.lists(st.integers(1, 300), max_size=10))
def test_pick_frames_is_the_largest_that_fits(available: int, buckets: list[int]):
    picked = pick_frames(available, buckets)
    fitting = [b for b in buckets if b <= available]
    if not fitting:
        assert picked is None
        return
    assert picked in buckets and picked <= available
    assert not any(picked < b <= available for b in buckets)
