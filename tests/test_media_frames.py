"""Frame policy and resize maths in ltxc.media, checked as properties (no files, no decoding).

- available_frames counts exactly the k >= 0 with start + k/fps < end_time (minus the float tolerance);
- select_frames takes, for each target time start + k/fps, a nearest source frame (no other strictly closer,
  ties to the earlier), and counts repeats; asking past the end raises instead of repeating silently;
- pad_selection repeats the last frame and records how many it added;
- cover_crop scales to cover the target, keeps the aspect ratio within rounding, and crops inside.

Run: `pytest -q tests/test_media_frames.py`
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ltxc.media.decode import cover_crop
from ltxc.media.frames import TOLERANCE, available_frames, pad_selection, select_frames

fps_values = st.sampled_from([1.0, 8.0, 12.5, 23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0]) | st.floats(0.5, 120.0)


@st.composite
def clips(draw: st.DrawFn) -> tuple[list[float], float]:
    """Ascending frame times from 0.0 with irregular gaps (a variable-frame-rate clip), and its end time."""
    gaps = draw(st.lists(st.floats(0.001, 0.5), min_size=0, max_size=60))
    times = [0.0, *itertools.accumulate(gaps)]
    end_time = times[-1] + draw(st.floats(0.001, 0.5))
    return times, end_time


@settings(max_examples=300, deadline=None)
@given(end_time=st.floats(0.0, 100.0), fps=fps_values, start=st.floats(0.0, 50.0))
def test_available_frames_is_exact(end_time: float, fps: float, start: float):
    n = available_frames(end_time, fps=fps, start=start)
    assert n >= 0
    assert all(start + k / fps < end_time - TOLERANCE for k in range(n))
    assert not start + n / fps < end_time - TOLERANCE


@pytest.mark.parametrize(
    ("end_time", "fps", "start", "expected"),
    [
        (1.0, 25, 0.0, 25),
        (2.0, 24, 0.0, 48),
        (1.0, 30, 0.5, 15),
        (0.96, 25, 0.0, 24),
        (1.0, 25, 1.0, 0),
        (0.0, 25, 0, 0),
    ],
)
def test_available_frames_examples(end_time: float, fps: float, start: float, expected: int):
    # 1 s at 25 fps ends at 1.0: frame 25 would start exactly at the end, so it is not there.
    assert available_frames(end_time, fps=fps, start=start) == expected


@settings(max_examples=300, deadline=None)
@given(clip=clips(), fps=fps_values, start_fraction=st.floats(0.0, 1.0), data=st.data())
def test_select_frames_takes_nearest_frames_in_real_time(clip, fps, start_fraction, data):
    times, end_time = clip
    start = start_fraction * end_time
    have = available_frames(end_time, fps=fps, start=start)
    count = data.draw(st.integers(0, min(have, 200)))
    sel = select_frames(times, fps=fps, start=start, count=count, end_time=end_time)

    assert len(sel.indices) == len(sel.times) == len(sel.source_times) == count
    assert sel.times == tuple(start + k / fps for k in range(count))
    assert sel.source_times == tuple(times[i] for i in sel.indices)
    for target, index in zip(sel.times, sel.indices, strict=True):
        distance = abs(times[index] - target)
        assert all(abs(t - target) >= distance - 1e-9 for t in times), "a source frame is strictly nearer"
        if index > 0:  # ties go to the earlier frame
            assert abs(times[index - 1] - target) > distance - 1e-9
    assert list(sel.indices) == sorted(sel.indices)
    assert sel.repeated == sum(1 for a, b in itertools.pairwise(sel.indices) if a == b)
    assert sel.padded == 0


def test_select_frames_resamples_30_to_25_without_changing_speed():
    times = [k / 30 for k in range(60)]
    sel = select_frames(times, fps=25, start=0.0, count=50, end_time=2.0)
    # target k/25 s is source frame 1.2k; 1.2k is never a half, so rounding it is the nearest frame
    assert sel.indices == tuple(round(k * 1.2) for k in range(50))
    assert sel.repeated == 0
    assert sel.source_times[-1] == pytest.approx(59 / 30)


def test_select_frames_breaks_ties_towards_the_earlier_frame():
    sel = select_frames([0.0, 0.1, 0.2], fps=10, start=0.05, count=2)  # targets 0.05 and 0.15: both midway
    assert sel.indices == (0, 1)


def test_select_frames_counts_repeats_when_source_is_slower():
    times = [k / 12 for k in range(12)]  # 12 fps for 1 s, taken at 24 fps: every frame twice
    sel = select_frames(times, fps=24, start=0.0, count=24, end_time=1.0)
    assert sel.indices == tuple(k // 2 for k in range(24))
    assert sel.repeated == 12


def test_select_frames_refuses_to_read_past_the_end():
    times = [k / 25 for k in range(25)]
    with pytest.raises(ValueError, match="clip has 25"):
        select_frames(times, fps=25, start=0.0, count=26, end_time=1.0)


@pytest.mark.parametrize("kwargs", [{"fps": 0.0}, {"fps": -1.0}, {"start": -0.5}, {"count": -1}])
def test_select_frames_rejects_bad_arguments(kwargs):
    args = {"fps": 25.0, "start": 0.0, "count": 3} | kwargs
    with pytest.raises(ValueError):
        select_frames([0.0, 0.04, 0.08], **args)


@given(clip=clips(), fps=fps_values, extra=st.integers(0, 20), data=st.data())
def test_pad_selection_repeats_the_last_frame_and_records_it(clip, fps, extra, data):
    times, end_time = clip
    have = available_frames(end_time, fps=fps)
    count = data.draw(st.integers(1, max(1, min(have, 50))))
    sel = select_frames(times, fps=fps, start=0.0, count=count)
    padded = pad_selection(sel, count + extra)
    assert len(padded.indices) == count + extra
    assert padded.indices[:count] == sel.indices
    assert set(padded.indices[count:]) <= {sel.indices[-1]}
    assert padded.times == tuple(k / fps for k in range(count + extra))
    assert padded.padded == extra
    assert padded.repeated == sel.repeated  # padding is counted apart from repeats


def test_pad_selection_refuses_to_shrink_or_pad_nothing():
    sel = select_frames([0.0, 0.04], fps=25, start=0.0, count=2)
    with pytest.raises(ValueError):
        pad_selection(sel, 1)
    with pytest.raises(ValueError):
        pad_selection(select_frames([0.0], fps=25, start=0.0, count=0), 3)


sides = st.integers(1, 4096)


@settings(max_examples=500)
@given(src_w=sides, src_h=sides, dst_w=sides, dst_h=sides)
def test_cover_crop_covers_keeps_aspect_and_crops_inside(src_w, src_h, dst_w, dst_h):
    scaled_w, scaled_h, left, top = cover_crop(src_w, src_h, dst_w, dst_h)
    assert scaled_w >= dst_w and scaled_h >= dst_h
    assert scaled_w == dst_w or scaled_h == dst_h  # covers tightly: one side fits exactly
    assert left >= 0 and left + dst_w <= scaled_w
    assert top >= 0 and top + dst_h <= scaled_h
    assert abs(left - (scaled_w - dst_w - left)) <= 1 and abs(top - (scaled_h - dst_h - top)) <= 1  # centred
    # aspect kept: the rounded side is off by at most half a pixel (or was raised to the target)
    if scaled_h == dst_h and scaled_w > dst_w:
        assert abs(scaled_w - src_w * dst_h / src_h) <= 0.5 + 1e-9
    if scaled_w == dst_w and scaled_h > dst_h:
        assert abs(scaled_h - src_h * dst_w / src_w) <= 0.5 + 1e-9


def test_cover_crop_examples():
    assert cover_crop(320, 240, 64, 96) == (128, 96, 32, 0)
    assert cover_crop(1920, 1080, 512, 512) == (910, 512, 199, 0)
    assert cover_crop(100, 100, 100, 100) == (100, 100, 0, 0)
    with pytest.raises(ValueError):
        cover_crop(0, 10, 10, 10)
