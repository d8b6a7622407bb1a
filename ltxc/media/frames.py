"""Frame policy maths: which source frames a clip gives at a target frame rate. Pure; no decoding.

Frames are taken at a target rate `fps` from time `start` (seconds): output frame k targets the time
`start + k / fps` and takes the source frame whose presentation time is nearest (ties go to the earlier
frame). Working in time rather than in frame counts keeps variable-frame-rate clips in real time and never
changes a clip's speed.

- `available_frames(end_time, fps=, start=)` counts the k >= 0 with `start + k / fps < end_time`, where
  `end_time` is when the clip's last frame stops showing (MediaInfo.end_time). A target time within
  `TOLERANCE` of `end_time` counts as past the end, so float error never adds a frame.
- `select_frames(frame_times, fps=, start=, count=, end_time=None)` picks the frames. `frame_times` are the
  ascending presentation times of the source frames (MediaInfo.frame_times). With `end_time` given, asking
  for more frames than `available_frames` raises ValueError instead of quietly repeating the last frame.
- `pad_selection(selection, count)` repeats the last frame up to `count`, and records how many it added.

`FrameSelection.repeated` counts output frames that reuse a source frame already taken by the selection
(a source slower than `fps`); `padded` counts the frames `pad_selection` appended. The two never overlap.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from attrs import frozen

TOLERANCE = 1e-6  # seconds; far below any frame interval, far above float error on times of a few hours


@frozen
class FrameSelection:
    """The source frames chosen for each output frame, and the times they stand for."""

    indices: tuple[int, ...]  # source frame index for each output frame
    times: tuple[float, ...]  # target time of each output frame: start + k / fps
    source_times: tuple[float, ...]  # presentation time of the source frame taken
    fps: float
    start: float
    repeated: int  # output frames reusing a source frame the selection already took
    padded: int = 0  # frames appended by pad_selection (the last frame, repeated)


def _check_rate(fps: float, start: float) -> None:
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if not (start >= 0 and math.isfinite(start)):
        raise ValueError(f"start must be a time >= 0 in seconds, got {start}")


def available_frames(end_time: float, *, fps: float, start: float = 0.0) -> int:
    """Number of frames at `fps` from `start` that lie before `end_time` (the k >= 0 with start + k/fps < end)."""
    _check_rate(fps, start)
    limit = end_time - TOLERANCE
    if start >= limit:
        return 0
    count = max(0, math.ceil((limit - start) * fps))
    # The estimate can be one off through float rounding; settle it on the exact predicate.
    while count > 0 and start + (count - 1) / fps >= limit:
        count -= 1
    while start + count / fps < limit:
        count += 1
    return count


def _nearest(frame_times: Sequence[float], time: float) -> int:
    after = bisect.bisect_left(frame_times, time)
    if after == 0:
        return 0
    if after == len(frame_times):
        return after - 1
    before = after - 1
    # Ties (within float error) go to the earlier frame, so the choice never depends on rounding.
    if frame_times[after] - time < time - frame_times[before] - 1e-9:
        return after
    return before


def select_frames(
    frame_times: Sequence[float], *, fps: float, start: float, count: int, end_time: float | None = None
) -> FrameSelection:
    """Take `count` frames at `fps` from `start`, each the source frame nearest its target time."""
    _check_rate(fps, start)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if count and not frame_times:
        raise ValueError("no source frames to select from")
    if end_time is not None and count > (have := available_frames(end_time, fps=fps, start=start)):
        raise ValueError(
            f"asked for {count} frames at {fps:g} fps from t={start:g}s but the clip has {have} "
            f"(it ends at t={end_time:.3f}s); take fewer frames or pad explicitly"
        )
    times = tuple(start + k / fps for k in range(count))
    indices = tuple(_nearest(frame_times, t) for t in times)
    return FrameSelection(
        indices=indices,
        times=times,
        source_times=tuple(frame_times[i] for i in indices),
        fps=fps,
        start=start,
        repeated=len(indices) - len(set(indices)),
    )


def pad_selection(selection: FrameSelection, count: int) -> FrameSelection:
    """Extend `selection` to `count` frames by repeating its last frame; `padded` says how many were added."""
    have = len(selection.indices)
    if count < have:
        raise ValueError(f"cannot pad {have} frames down to {count}")
    if count == have:
        return selection
    if have == 0:
        raise ValueError("cannot pad an empty selection: there is no last frame to repeat")
    extra = count - have
    return FrameSelection(
        indices=selection.indices + (selection.indices[-1],) * extra,
        times=selection.times + tuple(selection.start + k / selection.fps for k in range(have, count)),
        source_times=selection.source_times + (selection.source_times[-1],) * extra,
        fps=selection.fps,
        start=selection.start,
        repeated=selection.repeated,
        padded=selection.padded + extra,
    )
