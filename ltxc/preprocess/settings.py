"""Preprocessing settings: what decides which frames and pixels become a cache record.

They are written into `cache.json`; a cache made with other settings is refused, so a training run never
mixes samples prepared two ways.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs
from attrs import frozen

from ltxc.data.buckets import DEFAULT_ASPECTS, frame_buckets, parse_resolution, resolution_buckets
from ltxc.errors import UserError
from ltxc.geometry import ShapeError
from ltxc.plan import Plan

FramesPolicy = Literal["skip", "pad"]
LowFpsPolicy = Literal["repeat", "skip"]
MissingCaption = Literal["skip", "filename", "empty"]
# a clip without a sound track when the spec declares an audio source (docs/audio.md): reject it, encode silence,
# or cache zero latents with audio_mask = 0 so training leaves its audio out of the loss
MissingAudio = Literal["drop", "silence", "mask"]
TILING_AUTO_PIXELS = 768 * 768  # above this frame area, "auto" tiles the VAE encode to bound memory


@frozen
class PreprocessSettings:
    """Everything that shapes a cache record, besides the spec itself."""

    fps: float
    start: float
    max_frames: int
    frame_buckets: tuple[int, ...]
    resolutions: tuple[tuple[int, int], ...]
    frames_policy: FramesPolicy = "skip"
    low_fps: LowFpsPolicy = "repeat"
    missing_caption: MissingCaption = "skip"
    tiling: Literal["auto", "on", "off"] = "auto"
    seed: int = 0
    missing_audio: MissingAudio | None = None  # None: the spec declares no audio source (and the key stays out)

    def to_json(self) -> dict[str, Any]:
        """As recorded in `cache.json`."""
        return {
            k: [list(v) for v in value] if k == "resolutions" else list(value) if isinstance(value, tuple) else value
            for k, value in attrs.asdict(self, recurse=False).items()
            if not (k == "missing_audio" and value is None)  # a cache without sound reads as it always has
        }

    def tiles(self, width: int, height: int) -> bool:
        """Whether to tile the VAE encode at this frame size."""
        return self.tiling == "on" or (self.tiling == "auto" and width * height > TILING_AUTO_PIXELS)


def build_settings(
    plan: Plan,
    *,
    fps: float | None = None,
    start: float = 0.0,
    max_frames: int | None = None,
    frame_counts: Sequence[int] | None = None,
    resolution: str | None = None,
    pixels: int | None = None,
    aspects: Sequence[float] = DEFAULT_ASPECTS,
    frames_policy: FramesPolicy = "skip",
    low_fps: LowFpsPolicy = "repeat",
    missing_caption: MissingCaption = "skip",
    tiling: Literal["auto", "on", "off"] = "auto",
    seed: int = 0,
    missing_audio: MissingAudio = "mask",
) -> PreprocessSettings:
    """Settings from command-line choices, defaulting to the spec's generation defaults."""
    sampler, geometry = plan.sampler, plan.geometry
    fps = float(fps if fps is not None else sampler.fps)
    if fps <= 0:
        raise UserError(f"--fps must be positive, got {fps:g}")
    if start < 0:
        raise UserError(f"--start must be >= 0 seconds, got {start:g}")
    max_frames = max_frames if max_frames is not None else (sampler.frames or geometry.frame_rule.valid_counts(129)[-1])
    if frame_counts is None:
        # A clip cut down to a single frame is an image in disguise: by default videos keep some motion,
        # so a clip shorter than the second-smallest valid count is "too short" (images stay 1 frame).
        moving = [count for count in geometry.frame_rule.valid_counts(max_frames) if count > 1]
        frame_counts = moving or None  # an image model (one valid count, 1): a video gives its frame at --start
    buckets = frame_buckets(geometry, max_frames, frame_counts)
    if resolution is not None:
        resolutions = [parse_resolution(resolution, geometry)]
    else:
        if pixels is None:
            if not (sampler.width and sampler.height):
                raise UserError("the spec sets no sampler.width/height: pass --pixels or --resolution WxH")
            pixels = sampler.width * sampler.height
        try:
            resolutions = resolution_buckets(geometry, pixels, aspects)
        except ShapeError as exc:
            raise UserError(f"--pixels {pixels}: {exc}") from None
    return PreprocessSettings(
        fps=fps,
        start=float(start),
        max_frames=max_frames,
        frame_buckets=tuple(buckets),
        resolutions=tuple(tuple(r) for r in resolutions),  # type: ignore[misc]
        frames_policy=frames_policy,
        low_fps=low_fps,
        missing_caption=missing_caption,
        tiling=tiling,
        seed=seed,
        missing_audio=missing_audio if any(stream.source for stream in plan.streams.values()) else None,
    )
