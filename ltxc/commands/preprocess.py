"""`ltxc run preprocess`: a folder of videos/images + captions -> a resumable latent cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from ltxc.commands.plans import resolve_plan
from ltxc.data.buckets import DEFAULT_ASPECTS
from ltxc.errors import UserError
from ltxc.preprocess.run import Report, format_report, preprocess
from ltxc.preprocess.settings import FramesPolicy, LowFpsPolicy, MissingAudio, MissingCaption, build_settings


def run_preprocess(
    *,
    data: Path,
    cache: Path,
    plan_path: Path | None,
    metadata: Path | None,
    path_key: str,
    caption_key: str,
    missing_caption: MissingCaption,
    fps: float | None,
    start: float,
    max_frames: int | None,
    frame_buckets: Sequence[int] | None,
    frames_policy: FramesPolicy,
    low_fps: LowFpsPolicy,
    resolution: str | None,
    pixels: int | None,
    aspects: Sequence[float] | None,
    tiling: Literal["auto", "on", "off"],
    seed: int,
    workers: int,
    device: str | None,
    overwrite: bool,
    strict: bool,
    missing_audio: MissingAudio = "mask",
) -> int:
    """The whole command; returns the exit code (1 when nothing was cached, or with `strict` and any rejection)."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    plan = resolve_plan(plan_path)
    settings = build_settings(
        plan,
        fps=fps,
        start=start,
        max_frames=max_frames,
        frame_counts=frame_buckets,
        resolution=resolution,
        pixels=pixels,
        aspects=aspects or DEFAULT_ASPECTS,
        frames_policy=frames_policy,
        low_fps=low_fps,
        missing_caption=missing_caption,
        tiling=tiling,
        seed=seed,
        missing_audio=missing_audio,
    )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    report = preprocess(
        plan,
        data,
        cache,
        settings,
        metadata=metadata,
        path_key=path_key,
        caption_key=caption_key,
        workers=workers,
        device=device or (f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"),
        overwrite=overwrite,
    )
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone reports
        return 0
    return _report(report, cache, strict)


def _report(report: Report, cache: Path, strict: bool) -> int:
    """Print the summary table and decide the exit code."""
    print(format_report(report, cache))
    if report.total_cached == 0:
        print(f"nothing was cached: {len(report.rejected)} input(s) rejected (see {cache}/rejected.jsonl)")
        return 1
    if strict and report.rejected:
        print(f"--strict: {len(report.rejected)} input(s) rejected")
        return 1
    return 0
